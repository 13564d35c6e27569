"""Serve CloudKitty's own WSGI API (`cloudkitty.wsgi.api`) on 127.0.0.1, a thread a request.

`python cloudkitty_api.py CONFIG_FILE`: prints the port on its last stdout line, then serves
until killed. CloudKitty reads its configuration from the command line, as its API does.
"""

import socketserver
import sys
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server


class ThreadingServer(socketserver.ThreadingMixIn, WSGIServer):
    """Many requests in flight at once, as CloudKitty's mod_wsgi deployment runs them."""

    daemon_threads = True


class QuietHandler(WSGIRequestHandler):
    """No line per request."""

    def log_message(self, format: str, *args: object) -> None:
        """Log nothing."""


def main() -> None:
    """Load the application from the config file and serve it."""
    sys.argv = ["cloudkitty-api", "--config-file", sys.argv[1]]
    from cloudkitty.wsgi.api import application  # it reads sys.argv on import

    server = make_server("127.0.0.1", 0, application, ThreadingServer, QuietHandler)
    print(server.server_port, flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
