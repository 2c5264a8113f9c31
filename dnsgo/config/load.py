"""
Loading: YAML text or a file in, a validated :class:`Config` out.

:func:`parse_config` reads the YAML (noting repeated keys), builds every
section with ``${VAR}`` substituted, fills ``upstreams`` from resolv.conf
when the key is absent, then applies the cross-setting rules; it raises
:class:`ConfigError` listing every problem.  :func:`load_config` reads a
file, or gives the embedded default (every setting at its default) for None.
"""
from __future__ import annotations

import os
from collections.abc import Iterator, Mapping

import attrs
import yaml

from dnsgo.config.addresses import DEFAULT_RESOLV_CONF, resolv_conf_nameservers
from dnsgo.config.errors import ConfigError, Problem
from dnsgo.config.kinds import _build, _show
from dnsgo.config.reading import _Reading
from dnsgo.config.rules import _conflicts_beyond
from dnsgo.config.schema import Config


# --------------------------------------------------------------------------
# YAML


class _Mapping(dict):
    """A YAML mapping that remembers its repeated keys (key, line)."""

    duplicates: tuple[tuple[str, int], ...] = ()


class _Loader(yaml.SafeLoader):
    """PyYAML's safe loader, noting repeated keys instead of silently
    keeping the last one."""

    def construct_yaml_map(self, node: yaml.MappingNode) -> Iterator[_Mapping]:
        """Build a mapping as SafeLoader does, recording its repeated keys."""
        data = _Mapping()
        yield data
        seen: set[str] = set()
        duplicates = []
        for key_node, _ in node.value:
            if isinstance(key_node, yaml.ScalarNode) and key_node.tag != "tag:yaml.org,2002:merge":
                if key_node.value in seen:
                    duplicates.append((key_node.value, key_node.start_mark.line + 1))
                seen.add(key_node.value)
        data.update(self.construct_mapping(node))
        data.duplicates = tuple(duplicates)


_Loader.add_constructor("tag:yaml.org,2002:map", _Loader.construct_yaml_map)


def _yaml_problem(error: yaml.YAMLError) -> Problem:
    """Describe a YAML syntax error, with its line and column."""
    mark = getattr(error, "problem_mark", None)
    what = getattr(error, "problem", None) or str(error)
    if mark is None:
        return Problem("<file>", f"invalid YAML: {what}")
    return Problem("<file>", f"invalid YAML at line {mark.line + 1}, column {mark.column + 1}: {what}")


# --------------------------------------------------------------------------
# Entry points


def parse_config(
    text: str,
    source: str = "<string>",
    environ: Mapping[str, str] | None = None,
    resolv_conf: str = DEFAULT_RESOLV_CONF,
) -> Config:
    """
    Parse and validate YAML ``text`` into a Config.

    ``${VAR}``/``${VAR:-default}`` in string values come from ``environ``
    (default ``os.environ``).  When ``upstreams`` is absent the nameservers
    of ``resolv_conf`` are used.  Raises ConfigError listing every problem;
    ``source`` names the text in its report.
    """
    if environ is None:
        environ = os.environ
    try:
        data = yaml.load(text, Loader=_Loader)
    except yaml.YAMLError as error:
        raise ConfigError([_yaml_problem(error)], source) from None
    if data is None:
        data = _Mapping()
    if not isinstance(data, dict):
        raise ConfigError(
            [Problem("<file>", f"the top level must be a mapping of sections (server:, cache:, ...); got {_show(data)}")],
            source,
        )
    reading = _Reading(environ)
    config = _build(Config, data, "", reading)
    if "upstreams" not in data:
        config = attrs.evolve(config, upstreams=resolv_conf_nameservers(resolv_conf))
    problems = reading.problems
    invalid = [problem.path for problem in problems]
    problems.extend(_conflicts_beyond(config, invalid))
    if problems:
        raise ConfigError(problems, source)
    return config


def load_config(
    path: str | None,
    environ: Mapping[str, str] | None = None,
    resolv_conf: str = DEFAULT_RESOLV_CONF,
) -> Config:
    """Read and validate the YAML file at ``path``; None gives the embedded
    default (every setting at its default).  Raises ConfigError."""
    if path is None:
        return parse_config("", "<default>", environ, resolv_conf)
    try:
        with open(path, encoding="utf-8") as file:
            text = file.read()
    except OSError as error:
        raise ConfigError([Problem("<file>", f"cannot read: {error.strerror}")], path) from None
    except UnicodeDecodeError as error:
        raise ConfigError([Problem("<file>", f"is not UTF-8 text ({error.reason} at byte {error.start})")], path) from None
    return parse_config(text, path, environ, resolv_conf)
