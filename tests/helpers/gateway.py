"""An agent's gateway that knows nothing of Lazarus: `GET /health` answers 200 with its pid.

    python gateway.py PORT PIDFILE [HITS]      serve; each request appends a line to HITS
    python gateway.py PORT PIDFILE --wedged    accept connections and never answer
"""

from __future__ import annotations

import http.server
import json
import os
import socket
import sys
import time


def main() -> None:
    port, pidfile = int(sys.argv[1]), sys.argv[2]
    extra = sys.argv[3] if len(sys.argv) > 3 else ""
    if extra == "--wedged":
        listener = socket.create_server(("127.0.0.1", port), reuse_port=False)
        _announce(pidfile)
        held = []
        while True:
            conn, _ = listener.accept()
            held.append(conn)  # accepted, never read, never answered
    hits = extra

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - the stdlib's name
            if hits:
                with open(hits, "a") as f:
                    f.write(f"{time.time()}\n")
            ok = self.path == "/health"
            body = json.dumps({"pid": os.getpid(), "ok": ok}).encode()
            self.send_response(200 if ok else 404)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:
            pass

    http.server.ThreadingHTTPServer.allow_reuse_address = True
    server = http.server.ThreadingHTTPServer(("127.0.0.1", port), Handler)
    _announce(pidfile)
    server.serve_forever()


def _announce(pidfile: str) -> None:
    tmp = f"{pidfile}.tmp"
    with open(tmp, "w") as f:
        f.write(str(os.getpid()))
    os.replace(tmp, pidfile)


if __name__ == "__main__":
    main()
