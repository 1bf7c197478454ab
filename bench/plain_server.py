"""Plain pyftpdlib server used as the baseline by ``bench/run.py``.

One user, ``alice`` / ``pw``, with all permissions (``elradfmwMT``) on
``--home``. Async ``FTPServer``, stock ``FTPHandler`` and
``DummyAuthorizer``; logging is set up like ``xxftpd``'s default (INFO
to stderr, same format) so that both servers pay the same logging cost.

    python3 bench/plain_server.py --home DIR --host 127.0.0.1 --port N
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys

from pyftpdlib.authorizers import DummyAuthorizer
from pyftpdlib.handlers import FTPHandler
from pyftpdlib.servers import FTPServer


def _interrupt(signum, frame):
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="plain pyftpdlib baseline server")
    p.add_argument("--home", required=True, help="home folder of user alice")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, required=True)
    args = p.parse_args(argv)

    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("[%(asctime)s] %(levelname)s %(name)s: %(message)s"))
    logging.getLogger().handlers[:] = [handler]
    logging.getLogger().setLevel(logging.INFO)

    authorizer = DummyAuthorizer()
    authorizer.add_user("alice", "pw", args.home, perm="elradfmwMT")

    class Handler(FTPHandler):
        pass

    Handler.authorizer = authorizer
    try:
        server = FTPServer((args.host, args.port), Handler)
    except OSError as err:
        print(f"plain_server: error: cannot listen on {args.host}:{args.port}: {err.strerror or err}",
              file=sys.stderr)
        return 1
    server.max_cons = 500  # as xxftpd's default
    signal.signal(signal.SIGTERM, _interrupt)
    signal.signal(signal.SIGINT, _interrupt)
    server.serve_forever()
    return 0


if __name__ == "__main__":
    sys.exit(main())
