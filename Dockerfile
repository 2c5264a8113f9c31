# dnsgo container image.  The entrypoint (tap/entrypoint.sh) picks the role
# from its first argument or DNSGO_ROLE: standalone (default), control,
# worker, or check (validate the configuration and exit).
#
# Not built or run on the development machines (they have no Docker engine).
FROM python:3.11-slim-bookworm

WORKDIR /opt/dnsgo
COPY setup.py setup.cfg README.md ./
COPY dnsgo ./dnsgo
COPY twisted ./twisted
COPY tap ./tap
COPY etc ./etc
RUN pip install --no-cache-dir . \
 && python -c "from twisted.plugin import IPlugin, getPlugins; list(getPlugins(IPlugin))" \
 && useradd --system --no-create-home dnsgo

USER dnsgo
EXPOSE 53/udp 53/tcp 8080/tcp 9090/tcp
ENTRYPOINT ["/opt/dnsgo/tap/entrypoint.sh"]
CMD ["standalone"]
