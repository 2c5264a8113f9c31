"""End-to-end tests: whole dnsgo processes or servers, real sockets on 127.0.0.1, real redis-server, dig and dnspython as clients."""
