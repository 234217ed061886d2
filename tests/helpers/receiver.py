"""A real HTTP receiver on loopback for webhook tests: answers from a script, records every request."""
from __future__ import annotations

import base64
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

SECRET = "whsec_" + base64.b64encode(b"tide-test-signing-key-0123456789").decode()  # signs the tests' webhooks


class Receiver:
    """`answers` are the status codes of the first requests in order (then `default`); start()/stop() at will, on
    the same port, to play a receiver that is down for a while."""

    def __init__(self, port: int, answers: list[int] | None = None, default: int = 204,
                 headers: dict[str, str] | None = None) -> None:
        self.port, self.answers, self.default, self.headers = port, list(answers or []), default, headers or {}
        self.received: list[tuple[dict[str, str], bytes, int]] = []
        self.url = f"http://127.0.0.1:{port}/hooks/tide"
        self._server: ThreadingHTTPServer | None = None

    def start(self) -> "Receiver":
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers["Content-Length"]))
                code = receiver.answers.pop(0) if receiver.answers else receiver.default
                receiver.received.append(({k.lower(): v for k, v in self.headers.items()}, body, code))
                self.send_response(code)
                for name, value in receiver.headers.items():
                    self.send_header(name, value)
                if 300 <= code < 400:
                    self.send_header("Location", receiver.url + "/moved")
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args):
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def accepted(self) -> list[tuple[dict[str, str], bytes, int]]:
        return [r for r in self.received if 200 <= r[2] < 300]
