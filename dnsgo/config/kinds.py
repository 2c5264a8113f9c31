"""
Kinds: how one raw YAML value is parsed and checked, and how settings are
declared with them.

A kind (:class:`_Kind` and its subclasses: strings, integers, numbers,
booleans, choices, durations, addresses, networks, lists and nested
sections) turns a raw value into its typed form or records a problem at the
value's path.  :func:`_setting` and :func:`_section` declare an attrs field
carrying its kind and a description; :func:`_build` is the one generic
builder that walks those declarations to make a section from a YAML mapping.
"""
from __future__ import annotations

import difflib
import ipaddress
import math
import re
from collections.abc import Mapping
from typing import Any

import attrs

from dnsgo.config.addresses import Address, IPNetwork, parse_address
from dnsgo.config.durations import EXAMPLES as _DURATION_EXAMPLES
from dnsgo.config.durations import parse_duration
from dnsgo.config.interpolate import _SKIP, _interpolate, _Interpolated
from dnsgo.config.reading import _Reading

# --------------------------------------------------------------------------
# Parsing one value

_BAD = object()  # a value that failed; its problem is already recorded


class _Invalid(ValueError):
    """A raw value is not acceptable; the message is for people."""


class _Kind:
    """Base of the kinds: parse a raw value, recording problems under a path."""

    def parse(self, raw: object, path: str, reading: _Reading) -> Any:
        """Return the parsed value, or _BAD after recording a problem."""
        if raw is _SKIP:
            return _BAD
        try:
            return self.convert(raw)
        except _Invalid as invalid:
            reading.add(path, str(invalid))
            return _BAD

    def convert(self, raw: object) -> Any:
        """Return the parsed value or raise _Invalid."""
        raise NotImplementedError


def _show(raw: object) -> str:
    """Describe a raw YAML value for an error message."""
    if raw is None:
        return "null"
    if isinstance(raw, bool):
        return f"{'true' if raw else 'false'} (a boolean)"
    if isinstance(raw, int):
        return f"an integer ({raw})"
    if isinstance(raw, float):
        return f"a number ({raw:g})"
    if isinstance(raw, str):
        shown = raw if len(raw) <= 40 else raw[:37] + "..."
        return f"a string ({shown!r})"
    if isinstance(raw, Mapping):
        return "a mapping"
    if isinstance(raw, (list, tuple)):
        return "a list"
    return f"a {type(raw).__name__}"


def _check_range(value: float, minimum: float | None, maximum: float | None, unit: str = "") -> None:
    """Raise _Invalid when ``value`` is outside ``minimum..maximum``."""
    low_ok = minimum is None or value >= minimum
    high_ok = maximum is None or value <= maximum
    if low_ok and high_ok:
        return

    def show(number: float) -> str:
        return (f"{number:g}" if isinstance(number, float) else str(number)) + unit

    if minimum is not None and maximum is not None:
        raise _Invalid(f"must be between {show(minimum)} and {show(maximum)}; got {show(value)}")
    if minimum is not None:
        raise _Invalid(f"must be at least {show(minimum)}; got {show(value)}")
    raise _Invalid(f"must be at most {show(maximum)}; got {show(value)}")


def _suggest(word: str, options: tuple[str, ...] | list[str]) -> str | None:
    """Return the option ``word`` was most likely meant to be, if any."""

    def squash(text: str) -> str:
        return text.replace("_", "").replace("-", "").lower()

    for option in options:
        if squash(option) == squash(word):
            return option
    close = difflib.get_close_matches(word.lower(), [o.lower() for o in options], n=1, cutoff=0.6)
    if close:
        return next(o for o in options if o.lower() == close[0])
    return None


@attrs.frozen
class _Integer(_Kind):
    """A whole number (a YAML integer; not a boolean), within a range."""

    minimum: int | None = None
    maximum: int | None = None
    power_of_two: bool = False

    def convert(self, raw: object) -> int:
        if isinstance(raw, _Interpolated):
            raw = _number_from_text(raw, int)
        if isinstance(raw, bool) or not isinstance(raw, int):
            raise _Invalid(f"must be an integer; got {_show(raw)}")
        _check_range(raw, self.minimum, self.maximum)
        if self.power_of_two and raw & (raw - 1):
            lower = 1 << (raw.bit_length() - 1)
            raise _Invalid(
                f"must be a power of two; got {raw} (nearest: {lower} or {lower * 2})"
            )
        return raw


@attrs.frozen
class _Number(_Kind):
    """A real number (integer or float; not a boolean), within a range."""

    minimum: float | None = None
    maximum: float | None = None

    def convert(self, raw: object) -> float:
        if isinstance(raw, _Interpolated):
            raw = _number_from_text(raw, float)
        if isinstance(raw, bool) or not isinstance(raw, (int, float)):
            raise _Invalid(f"must be a number; got {_show(raw)}")
        if not math.isfinite(raw):
            raise _Invalid("must be a finite number")
        _check_range(raw, self.minimum, self.maximum)
        return float(raw)


def _number_from_text(text: str, kind: type) -> object:
    """Turn a substituted string into a number when it spells one."""
    try:
        return kind(text.strip())
    except ValueError:
        return str(text)


@attrs.frozen
class _Duration(_Kind):
    """A duration: seconds as a number, or a string such as ``500ms``."""

    maximum: float | None = None
    positive: bool = False

    def convert(self, raw: object) -> float:
        try:
            seconds = parse_duration(raw)
        except TypeError:
            raise _Invalid(
                f"must be a duration such as {_DURATION_EXAMPLES}; got {_show(raw)}"
            ) from None
        except ValueError as error:
            raise _Invalid(str(error)) from None
        if self.positive and seconds <= 0:
            raise _Invalid(f"must be longer than 0s; got {raw!r}")
        try:
            _check_range(seconds, None, self.maximum, unit="s")
        except _Invalid as invalid:
            if isinstance(raw, (int, float)) and not isinstance(raw, bool):
                raise _Invalid(f"{invalid} (a plain number means seconds; write e.g. '500ms')") from None
            raise
        return seconds


_TRUE_WORDS = frozenset({"true", "yes", "on", "1"})
_FALSE_WORDS = frozenset({"false", "no", "off", "0"})


@attrs.frozen
class _Boolean(_Kind):
    """true or false (YAML booleans; from ${VAR} also yes/no/on/off/1/0)."""

    def convert(self, raw: object) -> bool:
        if isinstance(raw, _Interpolated):
            word = raw.strip().lower()
            if word in _TRUE_WORDS or word in _FALSE_WORDS:
                return word in _TRUE_WORDS
        if not isinstance(raw, bool):
            raise _Invalid(f"must be true or false; got {_show(raw)}")
        return raw


@attrs.frozen
class _String(_Kind):
    """A string; quote numbers in YAML to make them strings."""

    non_empty: bool = False

    def convert(self, raw: object) -> str:
        if not isinstance(raw, str):
            hint = " (put it in quotes)" if isinstance(raw, (int, float)) else ""
            raise _Invalid(f"must be a string; got {_show(raw)}{hint}")
        if self.non_empty and not raw:
            raise _Invalid("must not be empty")
        return str(raw)


@attrs.frozen
class _Choice(_Kind):
    """One string out of a fixed set."""

    options: tuple[str, ...]

    def convert(self, raw: object) -> str:
        listed = ", ".join(f"'{o}'" for o in self.options)
        if not isinstance(raw, str):
            raise _Invalid(f"must be one of {listed}; got {_show(raw)}")
        if raw in self.options:
            return str(raw)
        guess = _suggest(raw, self.options)
        hint = f"; did you mean '{guess}'?" if guess else ""
        raise _Invalid(f"must be one of {listed}; got {raw!r}{hint}")


@attrs.frozen
class _AddressKind(_Kind):
    """An address string; see parse_address for the flags."""

    default_port: int | None = None
    ip_only: bool = False
    listen: bool = False
    why: str = ""

    def convert(self, raw: object) -> Address:
        if isinstance(raw, Address):
            raw = str(raw)
        if not isinstance(raw, str):
            raise _Invalid(f"must be an address string such as '127.0.0.1:53'; got {_show(raw)}")
        try:
            return parse_address(
                raw, default_port=self.default_port, ip_only=self.ip_only, listen=self.listen
            )
        except ValueError as error:
            message = str(error)
            if self.why and "not a name" in message:
                message += f" ({self.why})"
            raise _Invalid(message) from None


@attrs.frozen
class _Network(_Kind):
    """An IP network in CIDR form; a bare address means a single host."""

    def convert(self, raw: object) -> IPNetwork:
        if isinstance(raw, (ipaddress.IPv4Network, ipaddress.IPv6Network)):
            return raw
        if not isinstance(raw, str):
            raise _Invalid(f"must be a network such as '10.0.0.0/8'; got {_show(raw)}")
        text = raw.strip()
        try:
            return ipaddress.ip_network(text)
        except ValueError:
            pass
        try:
            loose = ipaddress.ip_network(text, strict=False)
        except ValueError:
            raise _Invalid(
                f"{raw!r} is not a network such as '10.0.0.0/8' or '2001:db8::/32'"
            ) from None
        raise _Invalid(f"{raw!r} has host bits set; did you mean '{loose}'?")


@attrs.frozen
class _ListOf(_Kind):
    """A list of values of one kind, kept as a tuple.  A string is split at
    commas and white space, so one ${VAR} can hold a whole list."""

    item: _Kind
    min_items: int = 0
    noun: str = "entry"

    def parse(self, raw: object, path: str, reading: _Reading) -> Any:
        if raw is _SKIP:
            return _BAD
        if isinstance(raw, str):
            items: list | tuple = [word for word in re.split(r"[\s,]+", raw) if word]
        elif isinstance(raw, (list, tuple)):
            items = raw
        else:
            reading.add(path, f"must be a list; got {_show(raw)}")
            return _BAD
        if len(items) < self.min_items:
            reading.add(path, f"must list at least {self.min_items} {self.noun}")
            return _BAD
        values: list = []
        failed = False
        for index, item in enumerate(items):
            where = f"{path}[{index}]"
            value = self.item.parse(item, where, reading)
            if value is _BAD:
                failed = True
            elif value in values:
                reading.add(where, f"repeats {path}[{values.index(value)}] ({value})")
                failed = True
            else:
                values.append(value)
        return _BAD if failed else tuple(values)


@attrs.frozen
class _Section(_Kind):
    """A nested mapping described by another attrs class; null means defaults."""

    cls: type

    def parse(self, raw: object, path: str, reading: _Reading) -> Any:
        if raw is _SKIP:
            return _BAD
        if isinstance(raw, self.cls):
            return raw
        if raw is None:
            raw = {}
        if not isinstance(raw, Mapping):
            reading.add(path, f"must be a mapping of settings; got {_show(raw)}")
            return _BAD
        return _build(self.cls, raw, path, reading)


# --------------------------------------------------------------------------
# Building a section from a mapping


def _join(path: str, key: str) -> str:
    """Append a key to a dotted path."""
    return f"{path}.{key}" if path else key


def _build(cls: type, raw: Mapping, path: str, reading: _Reading) -> Any:
    """Build ``cls`` from a mapping, substituting ${VAR} in its values and
    recording a problem for each unknown key and bad value; those settings
    keep their defaults so that checking goes on and reports everything."""
    fields = {field.name: field for field in attrs.fields(cls)}
    for key, line in getattr(raw, "duplicates", ()):
        reading.add(_join(path, key), f"appears twice (again on line {line})")
    values: dict[str, Any] = {}
    for key, value in raw.items():
        where = _join(path, str(key))
        field = fields.get(key) if isinstance(key, str) else None
        if field is None:
            reading.add(where, _unknown_key(str(key), tuple(fields)))
            continue
        kind = field.metadata["kind"]
        if value is None and not isinstance(kind, _Section):
            reading.add(where, "has no value; give one or remove the key to keep the default")
            continue
        if not isinstance(kind, _Section):
            value = _interpolate(value, where, reading)
        parsed = kind.parse(value, where, reading)
        if parsed is not _BAD:
            values[key] = parsed
    return cls(**values)


def _unknown_key(key: str, known: tuple[str, ...]) -> str:
    """The message for a key the section does not have."""
    guess = _suggest(key, known)
    if guess:
        return f"unknown key; did you mean '{guess}'?"
    return "unknown key; expected one of: " + ", ".join(known)


# --------------------------------------------------------------------------
# Declaring settings


def _validator(kind: _Kind):
    """An attrs validator that applies ``kind`` to a value given in its
    parsed form, so classes built by hand are checked like loaded ones."""

    def validate(instance: object, attribute: attrs.Attribute, value: object) -> None:
        reading = _Reading(environ={})
        parsed = kind.parse(value, attribute.name, reading)
        if reading.problems:
            raise ValueError(str(reading.problems[0]))
        if parsed != value:
            raise ValueError(f"{attribute.name}: must be given parsed, as {type(parsed).__name__}")

    return validate


def _setting(kind: _Kind, default: Any = attrs.NOTHING, *, factory: Any = None,
             doc: str, secret: bool = False) -> Any:
    """Declare one setting: its kind, default, description, and whether its
    value must stay out of repr()."""
    if factory is not None:
        default = attrs.Factory(factory)
    return attrs.field(
        default=default,
        validator=_validator(kind),
        repr=not secret,
        metadata={"kind": kind, "doc": doc},
    )


def _section(cls: type, doc: str) -> Any:
    """Declare a nested section with all its defaults."""
    return _setting(_Section(cls), factory=cls, doc=doc)
