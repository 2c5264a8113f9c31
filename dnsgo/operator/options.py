"""
The operator's own settings, from its environment (kopf has no command-line
options for an operator's settings; ``python -m dnsgo.operator
--cluster-name NAME`` sets ``DNSGO_CLUSTER_NAME`` and runs kopf).

=================================  ===========================================================
``DNSGO_CLUSTER_NAME``             the cluster this operator runs in (its placements' clusterRef)
``DNSGO_IMAGE``                    the dnsgo image when a DNSCluster names none
``DNSGO_OPERATOR_STATUS_INTERVAL`` seconds between status refreshes (default 15)
``DNSGO_OPERATOR_CONTROL_URL``     the control-plane API's URL, with ``{name}`` and ``{namespace}``
                                   (default ``http://{name}-control.{namespace}.svc:8080``)
=================================  ===========================================================
"""
from __future__ import annotations

from collections.abc import Mapping

import attrs

from dnsgo.operator.control_api import DEFAULT_URL

DEFAULT_INTERVAL = 15.0


class OptionsError(ValueError):
    """An environment variable of the operator has a value it cannot use."""


@attrs.frozen
class OperatorOptions:
    """How this operator runs."""

    cluster_name: str = ""
    image: str = ""
    control_url: str = DEFAULT_URL
    status_interval: float = DEFAULT_INTERVAL


def status_interval(environ: Mapping[str, str]) -> float:
    """``DNSGO_OPERATOR_STATUS_INTERVAL`` as seconds (0.1 to 3600); OptionsError otherwise."""
    text = environ.get("DNSGO_OPERATOR_STATUS_INTERVAL", "")
    if not text:
        return DEFAULT_INTERVAL
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0.1 <= value <= 3600:
        raise OptionsError(f"DNSGO_OPERATOR_STATUS_INTERVAL: must be seconds between 0.1 and 3600; got {text!r}")
    return value


def from_environ(environ: Mapping[str, str]) -> OperatorOptions:
    """The :class:`OperatorOptions` the environment gives; OptionsError naming the variable when one is bad."""
    url = environ.get("DNSGO_OPERATOR_CONTROL_URL", "") or DEFAULT_URL
    try:
        url.format(name="x", namespace="y")
    except (KeyError, IndexError, ValueError):
        raise OptionsError(f"DNSGO_OPERATOR_CONTROL_URL: only {{name}} and {{namespace}} may be used; got {url!r}") from None
    return OperatorOptions(
        cluster_name=environ.get("DNSGO_CLUSTER_NAME", "").strip(),
        image=environ.get("DNSGO_IMAGE", "").strip(),
        control_url=url,
        status_interval=status_interval(environ),
    )
