"""``--metrics ADDR:PORT``: the HTTP server of the metrics and the status page.

Rules that live here:

- One small HTTP server per xxftpd, in a thread of the process that
  started it (the supervisor with ``--workers``, the parent with
  ``multi-proc``): never on an FTP event loop. It serves ``/metrics``
  (Prometheus' text format), ``/`` (the live status page) and
  ``/status.json`` (what the page shows). Read-only: GET and HEAD only.
- Every request comes from a network of ``--metrics-allow`` (default:
  loopback only) or is answered 403, whatever its path. At most
  ``MAX_CLIENTS`` connections are served at once, each for at most a
  few seconds of silence: more are closed unanswered.
- It binds at start-up (a port in use is one error line, exit 1) and
  stops with the server; a forked child closes its copy of the socket,
  so no worker ever holds the port.
- The page is one self-contained HTML file (``status.html``: no
  framework, nothing fetched from elsewhere): it shows the state it was
  served with at once, then fetches ``/status.json`` every
  ``REFRESH_MS``. It puts every figure in the page as text, never as
  markup (paths and commands come from clients).

This module knows nothing of FTP: figures come from ``metrics``, trees
from ``quotaview``, sessions from ``who`` (an empty list where that
module is missing).
"""

from __future__ import annotations

import ipaddress
import json
import logging
import os
import socket
import socketserver
import sys
import threading
import time
import weakref
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import resources

from . import __version__, access

__all__ = ["DEFAULT_ALLOW", "REFRESH_MS", "parse_address", "StatusServer"]

log = logging.getLogger("xxftpd")

DEFAULT_ALLOW = ("127.0.0.0/8", "::1")
REFRESH_MS = 1500
MAX_CLIENTS = 32  # connections served at once; more are closed at once (a thread each)

try:
    from .who import NoServer, sessions as _sessions
except ImportError:  # the session table is not part of this build
    class NoServer(Exception):  # type: ignore[no-redef]
        pass

    def _sessions(root: str) -> list[dict]:
        return []


def parse_address(text: str) -> tuple[str, int]:
    """``127.0.0.1:9121``, ``[::1]:9121`` or ``9121`` (loopback) as (host,
    port); ValueError saying what is wrong."""
    host, sep, port = text.rpartition(":")
    if not sep:
        host, port = "127.0.0.1", text
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    try:
        number = int(port)
    except ValueError:
        raise ValueError(f"invalid metrics address {text!r} (expected ADDR:PORT)") from None
    if not 0 <= number <= 65535:
        raise ValueError(f"port {number} out of range 0-65535")
    if host:
        try:
            ipaddress.ip_address(host)
        except ValueError:
            raise ValueError(f"invalid metrics address {text!r} (expected an IP address)") from None
    return host or "0.0.0.0", number


_live: weakref.WeakSet = weakref.WeakSet()


def _close_in_child() -> None:
    for server in list(_live):
        try:
            server.socket.close()
        except OSError:
            pass


os.register_at_fork(after_in_child=_close_in_child)


class _HTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 64

    def __init__(self, address: tuple[str, int], app: "StatusServer") -> None:
        self.address_family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET
        self.app = app
        self._slots = threading.BoundedSemaphore(MAX_CLIENTS)
        super().__init__(address, _Handler)

    def process_request(self, request, client_address) -> None:
        if not self._slots.acquire(blocking=False):  # slow or many clients can't take every thread
            self.shutdown_request(request)
            return
        try:
            super().process_request(request, client_address)
        except BaseException:
            self._slots.release()
            raise

    def process_request_thread(self, request, client_address) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._slots.release()

    def handle_error(self, request, client_address) -> None:
        """A client gone mid-answer (socketserver would print a traceback): one debug line."""
        err = sys.exc_info()[1]
        log.debug("status client %s: %s: %s", client_address[0], type(err).__name__, err)

    def server_bind(self) -> None:
        # HTTPServer.server_bind looks the host's name up (getfqdn): slow and useless here
        socketserver.TCPServer.server_bind(self)
        self.server_name, self.server_port = self.server_address[:2]


class _Handler(BaseHTTPRequestHandler):
    server_version = f"xxftpd/{__version__}"
    sys_version = ""  # no Python version in the Server header
    protocol_version = "HTTP/1.1"
    timeout = 5  # a client that sends nothing holds a thread this long at most

    def parse_request(self) -> bool:
        if not super().parse_request():
            return False
        if not self.server.app.allowed(self.client_address[0]):
            self.close_connection = True
            self._send(403, b"Forbidden: this address may not read the status of this server.\n",
                       "text/plain; charset=utf-8")
            return False
        return True

    def do_GET(self) -> None:
        self._route(body=True)

    def do_HEAD(self) -> None:
        self._route(body=False)

    def _route(self, body: bool) -> None:
        app = self.server.app
        path = self.path.split("?", 1)[0]
        try:
            if path == "/metrics":
                data, kind = app.metrics.exposition()
            elif path == "/status.json":
                data, kind = json.dumps(app.status()).encode(), "application/json"
            elif path in ("/", "/index.html"):
                data, kind = app.page(), "text/html; charset=utf-8"
            else:
                self._send(404, b"Not found.\n", "text/plain; charset=utf-8", body)
                return
        except Exception as err:  # one line in the log, a 500 to the client, the server goes on
            log.error("status page %r failed: %s: %s", path[:200], type(err).__name__, err)
            log.debug("status page failure", exc_info=True)
            self._send(500, b"Internal error; see the server's log.\n", "text/plain; charset=utf-8", body)
            return
        self._send(200, data, kind, body)

    def _send(self, code: int, data: bytes, kind: str, body: bool = True) -> None:
        self.send_response(code)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(data)))
        self.send_header("Cache-Control", "no-store")
        self.send_header("X-Content-Type-Options", "nosniff")
        if kind.startswith("text/html"):
            self.send_header("Content-Security-Policy",
                             "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; "
                             "connect-src 'self'; img-src 'self' data:")
        self.end_headers()
        if body:
            self.wfile.write(data)

    def log_message(self, format: str, *args) -> None:
        log.debug("status %s: %r", self.client_address[0], (format % args)[:300])


class StatusServer:
    """The metrics and status HTTP server of one xxftpd (see the module's rules).

    ``metrics``: a ``metrics.Metrics``; ``root``: the server root;
    ``quotas``: a ``quotaview.QuotaView``; ``allow``: networks that may ask.
    """

    def __init__(self, address: tuple[str, int], allow: list, metrics, root: str, quotas) -> None:
        self.allow = allow
        self.metrics = metrics
        self.root = root
        self.quotas = quotas
        self.started = time.time()
        self._reported: set[str] = set()
        self.httpd = _HTTPServer(address, self)  # OSError if it can't listen
        self.address = self.httpd.server_address[:2]
        _live.add(self.httpd)
        self._thread: threading.Thread | None = None

    def allowed(self, ip: str) -> bool:
        try:
            return access.matches(ip, self.allow)
        except ValueError:
            return False

    def status(self) -> dict:
        """What the page shows: sessions, transfers, quota trees."""
        try:
            sessions = _sessions(self.root)
        except NoServer:  # starting or stopping: no process answers yet
            sessions = []
        except Exception as err:  # an unsafe state folder, say: the page goes on without them
            message = f"status page: sessions not read: {err}"
            if message not in self._reported:  # once, not at every refresh of every viewer
                self._reported.add(message)
                log.warning("%s", message)
            sessions = []
        return {
            "version": __version__,
            "time": time.time(),
            "started": self.started,
            "root": self.root,
            "sessions": sessions,
            "quotas": [tree.as_dict() for tree in self.quotas.trees()],
        }

    def page(self) -> bytes:
        template = resources.files(__package__).joinpath("status.html").read_text(encoding="utf-8")
        state = json.dumps(self.status()).replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")
        return (template.replace("{{STATE}}", state).replace("{{REFRESH_MS}}", str(REFRESH_MS))
                .replace("{{VERSION}}", __version__)).encode()

    def start(self) -> None:
        self._thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.25},
                                        name="xxftpd-status", daemon=True)
        self._thread.start()
        host, port = self.address
        log.info("metrics and status page on http://%s:%s/", f"[{host}]" if ":" in host else host, port)

    def stop(self) -> None:
        if self._thread is not None:
            self.httpd.shutdown()
            self._thread.join(5)
            self._thread = None
        self.httpd.server_close()
        _live.discard(self.httpd)
