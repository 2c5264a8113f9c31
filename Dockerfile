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
USER dnsgo
EXPOSE 53/udp 53/tcp 8080/tcp 9090/tcp
ENTRYPOINT ["/opt/dnsgo/tap/entrypoint.sh"]
CMD ["standalone"]
