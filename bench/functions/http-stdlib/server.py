"""A no-op HTTP server on $PORT built from the standard library alone: every
POST or GET gets 200 and `{}`.

`http.server` as people write it: ThreadingHTTPServer (a thread per
connection, as `python3 -m http.server`) and a BaseHTTPRequestHandler left at
its default protocol, HTTP/1.0, so every response ends its connection. A
proxy in front of it cannot keep connections alive: each request pays a new
TCP connection to the server. Request logging is off, so the benchmark
measures the connections rather than a log line per request.
"""

import os
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class Handler(BaseHTTPRequestHandler):
    def _answer(self):
        length = int(self.headers.get("Content-Length") or 0)
        if length:
            self.rfile.read(length)
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"{}")

    do_POST = do_GET = _answer

    def log_message(self, format, *args):
        pass


class Server(ThreadingHTTPServer):
    request_queue_size = 1024  # listen backlog (the default, 5, drops connections at 32 clients)


if __name__ == "__main__":
    Server(("127.0.0.1", int(os.environ["PORT"])), Handler).serve_forever()
