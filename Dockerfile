# dnsgo container image.  The entrypoint (tap/entrypoint.sh) picks the role
# from its first argument or DNSGO_ROLE: standalone (default), control,
# worker, or check (validate the configuration and exit).
#
# Not built or run on the development machines (they have no Docker engine).
FROM python:3.11-slim-bookworm

WORKDIR /opt/dnsgo
# The sources are built into site-packages and removed: nothing may import
# dnsgo or its twistd plugin (twisted/plugins/dnsgo_plugin.py) from a copy
# in the working directory, which `python -c` (as the workers run) puts
# first on sys.path.  From /, the plugin check below sees only the install:
# it fails the build when the package ships no `twistd dnsgo`, and, run as
# root, writes the plugin cache the dnsgo user could not.
COPY setup.py setup.cfg README.md /tmp/dnsgo-src/
COPY dnsgo /tmp/dnsgo-src/dnsgo
COPY twisted /tmp/dnsgo-src/twisted
RUN pip install --no-cache-dir /tmp/dnsgo-src \
 && rm -rf /tmp/dnsgo-src \
 && cd / \
 && python -c "from twisted.plugin import IPlugin, getPlugins; list(getPlugins(IPlugin))" \
 && twistd dnsgo --help > /dev/null \
 && useradd --system --no-create-home --uid 10001 dnsgo
COPY tap ./tap
COPY etc ./etc

# uid 10001: what the operator's pods run as (runAsUser), docs/operator.md.
# Not root, so port 53 needs CAP_NET_BIND_SERVICE: `docker run --cap-add
# NET_BIND_SERVICE` (or a sysctl net.ipv4.ip_unprivileged_port_start=53),
# or listen on 5353 and map 53 to it, as the operator's pods do.
USER dnsgo
EXPOSE 53/udp 53/tcp 8080/tcp 9090/tcp
# tap/healthcheck.py: the API's /api/health for a control plane, a DNS
# reply on DNSGO_DNS_PORT (53) for a standalone server or a worker.
HEALTHCHECK --interval=30s --timeout=5s --start-period=20s --retries=3 \
    CMD ["python", "/opt/dnsgo/tap/healthcheck.py"]
ENTRYPOINT ["/opt/dnsgo/tap/entrypoint.sh"]
CMD ["standalone"]
