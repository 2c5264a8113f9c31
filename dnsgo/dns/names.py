"""
Names between the two forms dnsgo handles: wire format (length-prefixed
labels, as in packets and L1 keys) and the dotted bytes twisted.names uses.
"""


def wire_to_dotted(qname: bytes) -> bytes:
    """
    Turn an uncompressed wire-format name into the dotted bytes twisted.names
    uses (``b'www.example.com'``; the root is ``b''``).
    """
    labels = []
    i = 0
    length = qname[0] if qname else 0
    while length:
        labels.append(qname[i + 1 : i + 1 + length])
        i += 1 + length
        length = qname[i]
    return b".".join(labels)


def dotted_to_wire(name: bytes) -> bytes:
    """Turn dotted bytes (``b'www.example.com.'`` or without the dot) into wire format."""
    out = bytearray()
    for label in name.rstrip(b".").split(b".") if name.strip(b".") else []:
        if not 0 < len(label) < 64:
            raise ValueError(f"bad label in {name!r}")
        out.append(len(label))
        out += label
    out.append(0)
    return bytes(out)
