"""
``${VAR}`` substitution in string values, done after YAML parsing:
``${VAR}``, ``${VAR:-default}`` (the default also when VAR is empty) and
``$$`` for a literal dollar.  A substituted string is marked
(:class:`_Interpolated`) so that it may stand for a number or a boolean; a
value whose substitution failed becomes ``_SKIP``, its problem recorded.
"""
from __future__ import annotations

import re

from dnsgo.config.reading import _Reading

_SKIP = object()  # a value whose ${VAR} could not be substituted (reported)


class _Interpolated(str):
    """A string that came from ${VAR} substitution, and so may stand for a
    number or a boolean."""


_REFERENCE = re.compile(r"\$(?:(?P<dollar>\$)|\{(?P<body>[^}]*)\}|(?P<open>\{))")
_VARIABLE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")


def _interpolate(node: object, path: str, reading: _Reading) -> object:
    """Substitute ${VAR} in a string value, or in the strings of a list
    (only one level deep: no setting holds nested lists)."""
    if isinstance(node, list):
        return [
            _substitute(item, f"{path}[{index}]", reading) if isinstance(item, str) else item
            for index, item in enumerate(node)
        ]
    if isinstance(node, str):
        return _substitute(node, path, reading)
    return node


def _substitute(text: str, path: str, reading: _Reading) -> object:
    """Expand ``${VAR}``, ``${VAR:-default}`` and ``$$`` in one string; a lone
    ``$`` stays as it is."""
    if "$" not in text:
        return text
    errors: list[str] = []
    substituted = False

    def expand(match: re.Match) -> str:
        nonlocal substituted
        if match.group("dollar"):
            return "$"
        if match.group("open"):
            errors.append("'${' without '}' (write '$$' for a literal dollar)")
            return ""
        body = match.group("body")
        name, has_default, default = body.partition(":-")
        if not _VARIABLE.match(name):
            errors.append(f"'${{{body}}}' is not ${{NAME}} or ${{NAME:-default}}")
            return ""
        substituted = True
        value = reading.environ.get(name)
        if value:
            return value
        if has_default:
            return default
        if value is None:
            errors.append(f"environment variable {name} is not set (write ${{{name}:-default}} for a default)")
            return ""
        return value

    result = _REFERENCE.sub(expand, text)
    for error in errors:
        reading.add(path, error)
    if errors:
        return _SKIP
    return _Interpolated(result) if substituted else result
