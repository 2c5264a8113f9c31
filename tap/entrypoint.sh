#!/bin/sh
# Container entrypoint: run dnsgo in the role given as the first argument or
# in DNSGO_ROLE (standalone | control | worker | check).
#   DNSGO_CONFIG            configuration file (default /etc/dns-go/config.yaml
#                           when it exists, else the embedded default)
#   CONTROL_PLANE_ADDRESS   host:port of the control plane (worker role)
set -eu

role="${1:-${DNSGO_ROLE:-standalone}}"
[ $# -gt 0 ] && shift
# For tap/healthcheck.py, which the container runs apart from this process.
echo "$role" > "${TMPDIR:-/tmp}/dnsgo-role" 2>/dev/null || true

config="${DNSGO_CONFIG:-/etc/dns-go/config.yaml}"
if [ -f "$config" ]; then
    cfg="--config=$config"
else
    cfg=""
fi

case "$role" in
    standalone)
        exec twistd --nodaemon --pidfile= dnsgo $cfg "$@" ;;
    control)
        exec twistd --nodaemon --pidfile= dnsgo control $cfg "$@" ;;
    worker)
        exec twistd --nodaemon --pidfile= dnsgo worker $cfg "$@" ;;
    check)
        exec twistd dnsgo --check-config $cfg ;;
    *)
        echo "dnsgo entrypoint: unknown role '$role' (standalone, control, worker, check)" >&2
        exit 2 ;;
esac
