"""Which clients may query: the ``server.allow`` networks."""
import ipaddress


class ClientFilter:
    """
    Decides whether a client address may use the server.

    Decisions are remembered per address string (bounded), so the hot path
    costs one dict lookup.
    """

    def __init__(self, networks, *, memo_limit: int = 65536) -> None:
        self._networks = tuple(ipaddress.ip_network(n) for n in networks)
        self._memo: dict[str, bool] = {}
        self._memo_limit = memo_limit

    def allowed(self, host: str) -> bool:
        """True when ``host`` lies in one of the allowed networks."""
        try:
            return self._memo[host]
        except KeyError:
            pass
        verdict = self._decide(host)
        if len(self._memo) >= self._memo_limit:
            self._memo.clear()
        self._memo[host] = verdict
        return verdict

    def _decide(self, host: str) -> bool:
        try:
            addr = ipaddress.ip_address(host.split("%", 1)[0])
        except ValueError:
            return False
        if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped:
            addr = addr.ipv4_mapped
        return any(addr in net for net in self._networks if net.version == addr.version)
