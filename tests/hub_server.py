"""A loopback HTTP server answering the two Hugging Face hub calls a file download makes
(HEAD for metadata, GET for bytes), so the real download code runs without the internet."""

from __future__ import annotations

import hashlib
import threading
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

COMMIT = "a" * 40


@contextmanager
def serve_hub(files: dict[str, bytes]):
    """Serve {"org/name/path/in/repo": bytes} at http://127.0.0.1:PORT/<repo>/resolve/<rev>/<path>.

    Yields (endpoint, request_log)."""
    log: list[tuple[str, str]] = []

    class Handler(BaseHTTPRequestHandler):
        def _lookup(self) -> bytes | None:
            parts = self.path.split("?")[0].strip("/").split("/")
            if len(parts) < 5 or parts[2] != "resolve":
                return None
            return files.get("/".join(parts[:2] + parts[4:]))

        def _headers(self, body: bytes | None) -> None:
            if body is None:
                self.send_response(404)
                self.send_header("X-Error-Code", "EntryNotFound")
                self.send_header("X-Error-Message", "Entry not found")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            self.send_response(200)
            self.send_header("X-Repo-Commit", COMMIT)
            self.send_header("ETag", f'"{hashlib.sha256(body).hexdigest()}"')
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()

        def do_HEAD(self):  # noqa: N802
            log.append(("HEAD", self.path))
            self._headers(self._lookup())

        def do_GET(self):  # noqa: N802
            log.append(("GET", self.path))
            body = self._lookup()
            self._headers(body)
            if body:
                self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", log
    finally:
        server.shutdown()
        server.server_close()
