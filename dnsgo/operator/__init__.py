"""
The dnsgo operator: a kopf operator for the ``DNSCluster`` resource
(``dns.dns-go.io/v1alpha1``, deploy/crd/dnsclusters.yaml).

Run it with ``kopf run --standalone -A -m dnsgo.operator`` and
``DNSGO_CLUSTER_NAME`` set, or ``python -m dnsgo.operator --cluster-name
NAME [kopf run options]``; docs/operator.md says what it creates and how
the workers and control planes are placed across clusters.

Importing this package registers the kopf handlers (dnsgo.operator.handlers);
every object is rendered by plain functions of the spec in the other modules.
It needs the ``operator`` extra (``pip install 'dnsgo[operator]'``).
"""
from dnsgo.operator import handlers  # noqa: F401  (registers the kopf handlers)
