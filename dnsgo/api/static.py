"""
The dashboard's static files (``dnsgo/api/dashboard/``, shipped as package
data) and how they are served: a fixed list of files, read once, each with
its own content type and headers that keep the browser to dnsgo's own
origin.

The files carry no data: the page's script asks the user for the bearer
token and reads the API with it, so these routes need no token.
"""
from importlib import resources

import attrs

#: The files of the dashboard, by name: their content types.  Nothing else is served.
DASHBOARD_FILES = {
    "index.html": b"text/html; charset=utf-8",
    "dashboard.js": b"text/javascript; charset=utf-8",
    "dashboard.css": b"text/css; charset=utf-8",
}

#: Headers of every dashboard file: load and connect to this origin only, no
#: inline script or style, no framing (the page holds a flush form), no
#: content sniffing, no Referer leaving the page.
SECURITY_HEADERS = {
    b"Content-Security-Policy": b"default-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'",
    b"X-Content-Type-Options": b"nosniff",
    b"Referrer-Policy": b"no-referrer",
    b"Cache-Control": b"no-cache",
}


@attrs.frozen
class StaticFile:
    """One file to serve: its bytes and content type."""

    body: bytes
    content_type: bytes


@attrs.frozen
class Dashboard:
    """The dashboard's files, read from the package; :meth:`reply` serves one."""

    files: dict

    @classmethod
    def load(cls) -> "Dashboard":
        """Read every file of DASHBOARD_FILES from the installed package (a missing one raises: a broken install)."""
        folder = resources.files("dnsgo.api").joinpath("dashboard")
        return cls({
            name: StaticFile(folder.joinpath(name).read_bytes(), content_type)
            for name, content_type in DASHBOARD_FILES.items()
        })

    def reply(self, request, name: str) -> bytes:
        """Set ``request``'s status and headers for file ``name`` (one of DASHBOARD_FILES) and return its body."""
        served = self.files[name]
        request.setResponseCode(200)
        request.setHeader(b"Content-Type", served.content_type)
        for header, value in SECURITY_HEADERS.items():
            request.setHeader(header, value)
        return served.body
