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


def parse_name(text: str) -> bytes:
    """
    A domain name a person typed (``www.example.com``, with or without the
    final dot; ``.`` is the root) as dotted bytes without the final dot;
    ValueError, saying why, for anything that is not a name.
    """
    if not isinstance(text, str) or not text.strip():
        raise ValueError("a name is required")
    if not text.isascii() or any(c.isspace() or not c.isprintable() for c in text):
        raise ValueError("a name is printable ASCII without spaces")
    name = text.encode("ascii")
    if name != b"." and (name.startswith(b".") or b".." in name):
        raise ValueError("a name has no empty labels")
    wire = dotted_to_wire(name)
    if len(wire) > 255:
        raise ValueError("a name is at most 255 bytes long")
    return name.rstrip(b".")
