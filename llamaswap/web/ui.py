"""
Serves the web UI: the files of C{static/} (installed as
C{llamaswap/static/}), with C{index.html} for any path that names no file.

The files are small and read once, when the resource is built at start-up,
so serving them never reads the disk on the reactor thread.
"""

from __future__ import annotations

import mimetypes
from importlib import resources
from pathlib import Path

from twisted.web.resource import NoResource, Resource

#: The Content-Security-Policy of every file under C{/ui/}: scripts, styles
#: and everything else from llamaswap itself only (no inline script, no
#: inline style attribute, no other origin); images and audio may also be
#: C{data:} or C{blob:} URLs (generated images, speech).
CSP = (
    b"default-src 'self'; script-src 'self'; style-src 'self'; "
    b"img-src 'self' data: blob:; media-src 'self' data: blob:; connect-src 'self'; "
    b"font-src 'self'; object-src 'none'; base-uri 'none'; form-action 'none'; "
    b"frame-ancestors 'none'"
)


def staticPath() -> str:
    """
    @return: the directory of the web UI's files (installed package data,
        or C{static/} beside the package in a source checkout).
    """
    try:
        candidate = resources.files("llamaswap") / "static"
        if candidate.is_dir():
            return str(candidate)
    except (ModuleNotFoundError, FileNotFoundError):
        pass
    return str(Path(__file__).resolve().parent.parent.parent / "static")


def _load(directory: Path) -> dict[str, tuple[bytes, bytes]]:
    files = {}
    if directory.is_dir():
        for path in directory.rglob("*"):
            if path.is_file():
                kind = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
                if kind.startswith("text/") or kind in ("application/javascript",):
                    kind += "; charset=utf-8"
                files[path.relative_to(directory).as_posix()] = (
                    path.read_bytes(), kind.encode("ascii"))
    return files


class UIResource(Resource):
    """
    A single-page app's files: existing files are served as they are, a
    missing path whose last segment looks like a file name is 404, and
    anything else gets C{index.html} so that client-side routes work.

    @param directory: the directory whose files are served.
    """

    isLeaf = True

    def __init__(self, directory: str) -> None:
        super().__init__()
        self.files = _load(Path(directory))

    def render(self, request) -> bytes:
        parts = [p.decode("utf-8", "replace") for p in request.postpath if p]
        name = "/".join(parts)
        found = self.files.get(name)
        if found is None:
            if parts and "." in parts[-1]:
                return NoResource("no such file").render(request)
            found = self.files.get("index.html")
            if found is None:
                return NoResource("the web UI is not installed").render(request)
        body, kind = found
        request.setHeader(b"content-type", kind)
        request.setHeader(b"cache-control", b"no-cache")
        request.setHeader(b"content-security-policy", CSP)
        request.setHeader(b"x-content-type-options", b"nosniff")
        request.setHeader(b"referrer-policy", b"no-referrer")
        return b"" if request.method == b"HEAD" else body
