"""Plain pyftpdlib server used as the baseline by ``bench/run.py``.

One user, ``alice`` / ``pw``, with all permissions (``elradfmwMT``) on
``--home``. Async ``FTPServer``, stock ``FTPHandler`` and
``DummyAuthorizer``; logging is set up like ``xxftpd``'s default (INFO
to stderr, same format) so that both servers pay the same logging cost.
With ``--tls``, the stock ``TLS_FTPHandler`` (explicit FTPS: AUTH TLS,
PROT P) with the given certificate and key, TLS not required.

    python3 bench/plain_server.py --home DIR --host 127.0.0.1 --port N [--max-cons N]
                                  [--tls --certfile PEM --keyfile PEM]
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys

from pyftpdlib.authorizers import DummyAuthorizer
from pyftpdlib.handlers import FTPHandler
from pyftpdlib.servers import FTPServer

try:
    from pyftpdlib.handlers import TLS_FTPHandler
except ImportError:  # pyopenssl missing
    TLS_FTPHandler = None


def _interrupt(signum, frame):
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="plain pyftpdlib baseline server")
    p.add_argument("--home", required=True, help="home folder of user alice")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--max-cons", type=int, default=500, help="maximum simultaneous connections (default 500, as xxftpd)")
    p.add_argument("--tls", action="store_true", help="explicit FTPS with TLS_FTPHandler")
    p.add_argument("--certfile", help="PEM certificate (with --tls)")
    p.add_argument("--keyfile", help="PEM private key (with --tls; default: --certfile)")
    args = p.parse_args(argv)
    if args.tls and (TLS_FTPHandler is None or not args.certfile):
        p.error("--tls needs pyopenssl and --certfile")

    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("[%(asctime)s] %(levelname)s %(name)s: %(message)s"))
    logging.getLogger().handlers[:] = [handler]
    logging.getLogger().setLevel(logging.INFO)

    authorizer = DummyAuthorizer()
    authorizer.add_user("alice", "pw", args.home, perm="elradfmwMT")

    class Handler(TLS_FTPHandler if args.tls else FTPHandler):
        pass

    Handler.authorizer = authorizer
    if args.tls:
        Handler.certfile = args.certfile
        Handler.keyfile = args.keyfile or args.certfile
        try:
            Handler.get_ssl_context()  # a bad certificate or key fails here, not at the first AUTH
        except Exception as err:
            print(f"plain_server: error: unusable certificate/key: {err!r}", file=sys.stderr)
            return 1
    try:
        server = FTPServer((args.host, args.port), Handler)
    except OSError as err:
        print(f"plain_server: error: cannot listen on {args.host}:{args.port}: {err.strerror or err}",
              file=sys.stderr)
        return 1
    server.max_cons = args.max_cons
    signal.signal(signal.SIGTERM, _interrupt)
    signal.signal(signal.SIGINT, _interrupt)
    server.serve_forever()
    return 0


if __name__ == "__main__":
    sys.exit(main())
