"""Showing report.html: in the desktop's browser, or, on a machine without one, served on loopback to a browser
elsewhere (through an SSH tunnel, say)."""

from __future__ import annotations

import functools
import threading
import webbrowser
from collections.abc import Callable
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from exporter.errors import HeadpruneError

PAGE = "report.html"


class _PageHandler(SimpleHTTPRequestHandler):
    """Serves report.html (at / too) and nothing else: the folder's journal and JSON stay private."""

    def send_head(self):
        if self.path.split("?", 1)[0] not in ("/", f"/{PAGE}"):
            self.send_error(404, "only the report page is served")
            return None
        self.path = f"/{PAGE}"
        return super().send_head()

    def log_message(self, format, *args):  # noqa: A002  (the base class's signature)
        pass


class ReportServer:
    """Serves one report folder over HTTP on ``host``:``port`` (0: a free port) from a background thread."""

    def __init__(self, folder: Path, host: str = "127.0.0.1", port: int = 0):
        handler = functools.partial(_PageHandler, directory=str(folder))
        try:
            self.httpd = ThreadingHTTPServer((host, port), handler)
        except OSError as error:
            raise HeadpruneError(
                f"cannot serve the report on {host}:{port} ({error.strerror})",
                "choose another --port, or 0 for a free one",
            ) from error
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        """Returns the address of report.html."""
        host, port = self.httpd.server_address[:2]
        return f"http://{host}:{port}/{PAGE}"

    def stop(self) -> None:
        """Stops serving and closes the socket."""
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join()


def report_page(folder: str | Path) -> Path:
    """Returns the path of ``folder``'s report.html; raises HeadpruneError when it has none."""
    page = Path(folder) / PAGE
    if not page.is_file():
        raise HeadpruneError(f"'{folder}' has no {PAGE}", f"render it first: headprune report {folder}")
    return page


def open_report(
    folder: str | Path, *, host: str = "127.0.0.1", port: int = 0, browser: Callable[[str], bool] | None = None
) -> ReportServer | None:
    """Opens ``folder``'s report.html in ``browser`` (the desktop's default); returns None when a browser took it, or else a started
    ReportServer for it (a machine with no browser: a terminal, a server)."""
    page = report_page(folder)
    if (browser or webbrowser.open)(page.resolve().as_uri()):
        return None
    return ReportServer(page.parent, host, port)
