"""
The Markdown table of a run: one row per measurement, one column per server,
and the ratio dnsgo ÷ unbound.
"""
from dataclasses import dataclass


@dataclass(frozen=True)
class Metric:
    """One row of the table: the key in the results, its label and format."""

    key: str
    label: str
    digits: int = 0


def metrics(latency_qps: int) -> tuple[Metric, ...]:
    """Every row the table can have, in order."""
    return (
        Metric("hit_qps", "hit: queries/s at max load"),
        Metric("hit_avg_ms", "hit: mean latency at max load (ms)", 3),
        Metric("hit_p50_ms", f"hit: p50 latency at {latency_qps} q/s (ms)", 3),
        Metric("hit_p99_ms", f"hit: p99 latency at {latency_qps} q/s (ms)", 3),
        Metric("hit_lost_pct", "hit: lost queries (%)", 2),
        Metric("hit_cpu_pct", "hit: server CPU busy (%)", 0),
        Metric("hit_sys_pct", "hit: server CPU in the kernel (%)", 0),
        Metric("hit_upstream", "hit: upstream queries while measuring"),
        Metric("miss_qps", "miss: queries/s, each name asked once"),
        Metric("miss_avg_ms", "miss: mean latency at max load (ms)", 3),
        Metric("miss_lost_pct", "miss: lost queries (%)", 2),
        Metric("miss_cpu_pct", "miss: server CPU busy (%)", 0),
        Metric("miss_sys_pct", "miss: server CPU in the kernel (%)", 0),
        Metric("zipf_hit_pct", "zipf: hit rate (%) = 1 - upstream/client", 2),
        Metric("zipf_ideal_pct", "zipf: ideal hit rate of the trace sent (%)", 2),
        Metric("zipf_qps", "zipf: queries/s"),
        Metric("zipf_lost_pct", "zipf: lost queries (%)", 2),
        Metric("zipf_cpu_pct", "zipf: server CPU busy (%)", 0),
        Metric("zipf_sys_pct", "zipf: server CPU in the kernel (%)", 0),
        Metric("zipf_servfail", "zipf: SERVFAIL answers"),
        Metric("rss_start_mib", "RSS at start, empty (MiB)", 1),
        Metric("rss_zipf_mib", "RSS after zipf (MiB)", 1),
        Metric("rss_miss_mib", "RSS after miss, full caches (MiB)", 1),
    )


def _cell(value, digits: int) -> str:
    """Format one value; text (such as a failure note) passes through."""
    if value is None:
        return "–"
    if isinstance(value, str):
        return value
    return f"{value:,.{digits}f}"


def table(results: dict[str, dict], servers: list[str], latency_qps: int) -> str:
    """The Markdown table of ``results`` ({server: {key: value}}) with a
    dnsgo ÷ unbound column when both servers ran."""
    with_ratio = "dnsgo" in servers and "unbound" in servers
    header = ["scenario", *servers] + (["dnsgo ÷ unbound"] if with_ratio else [])
    lines = ["| " + " | ".join(header) + " |",
             "|" + "|".join(["---"] + ["---:"] * (len(header) - 1)) + "|"]
    for metric in metrics(latency_qps):
        values = [results.get(server, {}).get(metric.key) for server in servers]
        if all(value is None for value in values):
            continue
        row = [metric.label, *(_cell(value, metric.digits) for value in values)]
        if with_ratio:
            row.append(_ratio(results["dnsgo"].get(metric.key), results["unbound"].get(metric.key)))
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


def _ratio(top, bottom) -> str:
    """top ÷ bottom to two decimals, or a dash when either is missing or zero."""
    if not isinstance(top, (int, float)) or not isinstance(bottom, (int, float)) or not bottom:
        return "–"
    return f"{top / bottom:.2f}"
