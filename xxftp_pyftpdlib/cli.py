"""``xxftpd``: serve a tree (and, later, the admin commands).

Flags are named like pyftpdlib's own command line where it has one. Bad
input is one ``xxftpd: error: ...`` line on stderr and exit status 2;
a server that can't start is one such line and status 1.
"""

from __future__ import annotations

import argparse
import ipaddress
import logging
import sys

try:
    import tomllib
except ImportError:  # Python 3.10
    import tomli as tomllib

from . import __version__, admin, certs, hooks, statuspage, who
from .jsonlog import FORMATS as LOG_FORMATS, JsonFormatter
from .passive import DEFAULT_SESSION_REUSE, SESSION_REUSE
from .server import ConfigError, Options, check_root, make_server, serve
from .signals import release_stop_signals, stop_on_signals
from .uploads import MODES

LOG_LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING}


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line, no usage dump
        self.exit(2, f"{self.prog}: error: {message}\n")


def _port(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid port {text!r}") from None
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"port {value} out of range 0-65535")
    return value


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid number {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"{value} must not be negative")
    return value


def _port_range(text: str) -> tuple[int, int]:
    low, sep, high = text.partition("-")
    try:
        first, last = int(low), int(high)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid port range {text!r} (expected FROM-TO)") from None
    if not sep or not 1 <= first <= last <= 65535:
        raise argparse.ArgumentTypeError(f"invalid port range {text!r} (expected FROM-TO within 1-65535)")
    return first, last


def _address(text: str) -> str:
    try:
        return str(ipaddress.ip_address(text))
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid IP address {text!r}") from None


def _metrics_address(text: str) -> str:
    try:
        statuspage.parse_address(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None
    return text


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="xxftpd", description="Serve an xxftp folder tree over FTP.")
    p.add_argument("--config", metavar="PATH", help="TOML file setting any of these flags (flags win)")
    p.add_argument("--root", default="./home", help="server root: one folder per user (default ./home)")
    p.add_argument("--host", default=Options.host,
                   help=f"address to listen on (default {Options.host}: every address, IPv4 and IPv6)")
    p.add_argument("--port", type=_port, default=2121, help="port to listen on (default 2121; 0 picks one)")
    p.add_argument("--passive-ports", type=_port_range, metavar="FROM-TO", help="port range for passive data connections")
    p.add_argument("--masquerade-address", type=_address, metavar="IP", help="address announced in PASV replies (behind NAT)")
    p.add_argument("--max-cons", type=_positive, default=500, metavar="N", help="maximum simultaneous connections (default 500)")
    p.add_argument("--max-cons-per-ip", type=_positive, default=Options.max_cons_per_ip, metavar="N",
                   help=f"maximum connections per client address (default {Options.max_cons_per_ip}; 0: no limit)")
    p.add_argument("--max-unauthenticated", type=_positive, default=Options.max_unauthenticated, metavar="N",
                   help=f"maximum connections not logged in yet (default {Options.max_unauthenticated}; 0: no limit)")
    p.add_argument("--max-unauthenticated-per-ip", type=_positive, default=Options.max_unauthenticated_per_ip,
                   metavar="N", help="maximum connections not logged in yet per client address "
                                     f"(default {Options.max_unauthenticated_per_ip}; 0: no limit)")
    p.add_argument("--login-timeout", type=_positive, default=Options.login_timeout, metavar="SECONDS",
                   help=f"time to log in, whatever is sent meanwhile (default {Options.login_timeout}; 0: none)")
    p.add_argument("--timeout", type=_positive, default=120, metavar="SECONDS", help="idle control connection timeout (default 120)")
    p.add_argument("--data-timeout", type=_positive, default=Options.data_timeout, metavar="SECONDS",
                   help=f"abort a transfer that moves no data this long, with 426 (default {Options.data_timeout}; 0: never)")
    p.add_argument("--passive-timeout", type=_positive, default=Options.passive_timeout, metavar="SECONDS",
                   help=f"close a passive port no connection came to (default {Options.passive_timeout}; 0: never)")
    p.add_argument("--concurrency", choices=["async", "multi-thread", "multi-proc"], default="async", help="serving model (default async)")
    p.add_argument("--workers", type=_positive, default=1, metavar="N",
                   help="pre-forked async processes sharing the port (default 1); use the cores")
    p.add_argument("--log-file", metavar="PATH", help="write the log here instead of stderr")
    p.add_argument("--log-level", choices=sorted(LOG_LEVELS), default="info", help="log verbosity (default info)")
    p.add_argument("--log-format", choices=LOG_FORMATS, default="text",
                   help="text (default) or json: one JSON object per line, for log shippers")
    p.add_argument("--xferlog", metavar="PATH", help="also write transfers in the classic xferlog format")
    p.add_argument("--upload-mode", choices=MODES, default="atomic",
                   help="atomic (default): an upload replaces a file only when complete; "
                        "atomic-resume: also keep broken new uploads for resuming; "
                        "standard: write in place like plain pyftpdlib")
    p.add_argument("--ascii-mangling", choices=["off", "on"], default=Options.ascii_mangling,
                   help="on: TYPE A converts line ends (CRLF <-> LF) as RFC 959 says; "
                        "off (default): files move byte for byte whatever the TYPE")
    tls = p.add_argument_group("FTPS (explicit AUTH TLS, implicit TLS)")
    tls.add_argument("--tls", action="store_true", help="offer AUTH TLS (needs --certfile)")
    tls.add_argument("--certfile", metavar="PATH", help="PEM certificate (chain); may also hold the key")
    tls.add_argument("--keyfile", metavar="PATH", help="PEM private key, if not in --certfile")
    tls.add_argument("--tls-control-required", action="store_true", help="refuse USER/PASS before AUTH TLS")
    tls.add_argument("--tls-data-required", action="store_true", help="refuse data transfers without PROT P")
    tls.add_argument("--tls-session-reuse", choices=SESSION_REUSE, default=DEFAULT_SESSION_REUSE,
                     help="required (default): a PROT P data connection must resume the control "
                          "connection's TLS session (TLS 1.2); off: any TLS session")
    tls.add_argument("--tls-implicit", action="store_true",
                     help="implicit FTPS on --port instead: TLS from the first byte (needs --certfile)")
    tls.add_argument("--implicit-port", type=_port, metavar="PORT",
                     help="with --tls: also serve implicit FTPS on PORT (usually 990)")
    tls.add_argument("--tls-client-ca", metavar="PATH",
                     help="ask clients for a certificate signed by this CA (PEM); one listed in a "
                          "user's .xxftp/certs logs that user in")
    acl = p.add_argument_group("access control")
    acl.add_argument("--allow-from", action="append", metavar="CIDR[,CIDR]",
                     help="accept connections only from these networks (repeatable)")
    acl.add_argument("--deny-from", action="append", metavar="CIDR[,CIDR]",
                     help="refuse connections from these networks (repeatable; wins over --allow-from)")
    acl.add_argument("--ban-after", type=_positive, default=0, metavar="N",
                     help="ban an address after N failed logins (default: never)")
    acl.add_argument("--ban-time", type=_positive, default=600, metavar="SECONDS",
                     help="how long a ban lasts (default 600)")
    p.add_argument("--upgrade-hashes", action="store_true",
                   help="rewrite a legacy MD5 password file as scrypt after a successful login")
    p.add_argument("--max-login-checks", type=_positive, default=Options.max_login_checks, metavar="N",
                   help="password checks in progress at once, per process; beyond, a login is answered "
                        f"421 (default {Options.max_login_checks}: 16 per CPU; 0: no limit)")
    hk = p.add_argument_group("event hooks (a command run without a shell; see the README)")
    for event, (argument, _) in hooks.EVENTS.items():
        hk.add_argument(f"--on-{event}", metavar="CMD", help=f"run CMD {argument}")
    hk.add_argument("--hook-concurrency", type=_positive, default=Options.hook_concurrency, metavar="N",
                    help=f"hooks running at once, per process (default {Options.hook_concurrency})")
    hk.add_argument("--hook-timeout", type=_positive, default=Options.hook_timeout, metavar="SECONDS",
                    help=f"kill a hook's process group after this long (default {Options.hook_timeout})")
    mon = p.add_argument_group("metrics and status page (HTTP; needs xxftpd[metrics])")
    mon.add_argument("--metrics", type=_metrics_address, metavar="ADDR:PORT",
                     help="serve Prometheus metrics at /metrics and a live status page at / (default: off)")
    mon.add_argument("--metrics-allow", action="append", metavar="CIDR[,CIDR]",
                     help="networks that may read them (repeatable; default: "
                          f"{', '.join(statuspage.DEFAULT_ALLOW)}); others get 403")
    p.add_argument("--version", action="version", version=f"xxftpd {__version__}")
    commands = p.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    q = commands.add_parser("quota", help="show quota usage; --rescan [USER] rebuilds it from the disk")
    q.add_argument("--rescan", nargs="?", const="*", metavar="USER",
                   help="rebuild the ledgers of USER's trees (all users without USER)")
    pw = commands.add_parser("passwd", help="set a user's password (scrypt; --md5 for xxftp's format)")
    pw.add_argument("user")
    pw.add_argument("--stdin", action="store_true", help="read the password as one line from standard input")
    pw.add_argument("--md5", action="store_true", help="write the legacy MD5 format (xxftp compatible)")
    tp = commands.add_parser("totp", help="give a user one-time codes: a new secret, its URI and QR code")
    tp.add_argument("user")
    tp.add_argument("--force", action="store_true", help="replace an existing secret")
    au = commands.add_parser("adduser", help="create a user's home and .xxftp files")
    au.add_argument("name")
    au.add_argument("--quota", metavar="SIZE", help="byte limit: bytes or a number with K, M or G")
    au.add_argument("--permission", metavar="WORDS", help="e.g. read,write (default: read,write,modify)")
    au.add_argument("--no-password", action="store_true", help="no password file: USER alone logs in")
    au.add_argument("--stdin", action="store_true", help="read the password as one line from standard input")
    au.add_argument("--md5", action="store_true", help="write the legacy MD5 format")
    mo = commands.add_parser("mount", help="add a virtual directory: FOLDER NAME TARGET PERMISSION")
    mo.add_argument("folder", help="folder relative to the root that shows the mount, e.g. alice or alice/docs")
    mo.add_argument("name")
    mo.add_argument("target", help="folder to show; $root means the server root")
    mo.add_argument("permission", help="e.g. read or read,write,modify")
    commands.add_parser("check", help="validate the whole tree; exit 1 on errors")
    commands.add_parser("users", help="a table of the users")
    wh = commands.add_parser("who", help="the sessions open now on the server running on this root")
    wh.add_argument("--json", action="store_true", help="a JSON list, for scripts")
    c = commands.add_parser("cert", help="write a self-signed certificate and key for testing")
    c.add_argument("--self-signed", action="store_true", required=True, help="make a self-signed certificate")
    c.add_argument("--out", required=True, metavar="DIR", help="folder for cert.pem and key.pem")
    c.add_argument("--name", default="localhost", help="host name in the certificate (default localhost)")
    c.add_argument("--days", type=_positive, default=365, help="validity in days (default 365)")
    c.add_argument("--force", action="store_true", help="replace cert.pem and key.pem if they exist")
    return p


LOG_FORMAT = "[%(asctime)s] %(levelname)s %(name)s: %(message)s"


def _setup_logging(level: str, path: str | None, form: str = "text") -> None:
    handler: logging.Handler
    handler = logging.FileHandler(path) if path else logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if form == "json" else logging.Formatter(LOG_FORMAT))
    if form == "json":  # a Python warning is a log line too, not a stray text on stderr
        logging.captureWarnings(True)
    # The format shows no caller, thread or process: don't gather them for
    # every record (the logging HOWTO's "Optimization"; a few lines a login).
    logging._srcfile = None
    logging.logThreads = logging.logProcesses = logging.logMultiprocessing = False
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(LOG_LEVELS[level])


_NOT_IN_CONFIG = {"help", "version", "config", "command"}


def load_config(parser: argparse.ArgumentParser, path: str) -> dict:
    """Serving settings from a TOML file, checked like the flags they stand for."""
    try:
        with open(path, "rb") as f:
            data = tomllib.load(f)
    except OSError as err:
        raise ConfigError(f"cannot read config {path!r}: {err.strerror}") from None
    except tomllib.TOMLDecodeError as err:
        raise ConfigError(f"config {path!r}: {err}") from None
    actions = {a.dest: a for a in parser._actions if a.dest not in _NOT_IN_CONFIG and a.option_strings}
    values = {}
    for key, value in data.items():
        dest = key.replace("-", "_")
        action = actions.get(dest)
        if action is None:
            raise ConfigError(f"config {path!r}: unknown key {key!r}")
        values[dest] = _config_value(action, key, value, path)
    return values


def _config_value(action: argparse.Action, key: str, value, path: str):
    where = f"config {path!r}: key {key!r}"
    if isinstance(action, argparse._StoreTrueAction):
        if not isinstance(value, bool):
            raise ConfigError(f"{where} must be true or false")
        return value
    if action.type is _port_range and isinstance(value, list):
        value = "-".join(str(v) for v in value)
    if isinstance(action, argparse._AppendAction):
        items = value if isinstance(value, list) else [value]
        if not all(isinstance(item, str) for item in items):
            raise ConfigError(f"{where} must be a string or a list of strings")
        return items
    expected = int if action.type in (_port, _positive) else str
    if isinstance(value, bool) or not isinstance(value, expected):
        raise ConfigError(f"{where} must be {'an integer' if expected is int else 'a string'}")
    if action.choices is not None and value not in action.choices:
        raise ConfigError(f"{where} must be one of {', '.join(action.choices)}")
    if action.type is not None:
        try:
            return action.type(str(value))
        except argparse.ArgumentTypeError as err:
            raise ConfigError(f"{where}: {err}") from None
    return value


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.config:
        try:
            parser.set_defaults(**load_config(parser, args.config))
        except ConfigError as err:
            print(f"xxftpd: error: {err}", file=sys.stderr)
            return 2
        args = parser.parse_args(argv)  # flags given on the command line win
    if args.command is not None:
        release_stop_signals()  # not a server: Python's own handling
        return _admin(args)
    options = Options(
        root=args.root, host=args.host, port=args.port, passive_ports=args.passive_ports,
        masquerade_address=args.masquerade_address, max_cons=args.max_cons,
        max_cons_per_ip=args.max_cons_per_ip, max_unauthenticated=args.max_unauthenticated,
        max_unauthenticated_per_ip=args.max_unauthenticated_per_ip, login_timeout=args.login_timeout,
        timeout=args.timeout, data_timeout=args.data_timeout, passive_timeout=args.passive_timeout,
        concurrency=args.concurrency,
        upload_mode=args.upload_mode, ascii_mangling=args.ascii_mangling, tls=args.tls, certfile=args.certfile, keyfile=args.keyfile,
        tls_control_required=args.tls_control_required, tls_data_required=args.tls_data_required,
        tls_session_reuse=args.tls_session_reuse, tls_implicit=args.tls_implicit,
        implicit_port=args.implicit_port, tls_client_ca=args.tls_client_ca, upgrade_hashes=args.upgrade_hashes, xferlog=args.xferlog, allow_from=args.allow_from,
        deny_from=args.deny_from, ban_after=args.ban_after, ban_time=args.ban_time, workers=args.workers,
        max_login_checks=args.max_login_checks,
        on_upload=args.on_upload, on_login=args.on_login, on_delete=args.on_delete,
        hook_concurrency=args.hook_concurrency, hook_timeout=args.hook_timeout,
        metrics=args.metrics, metrics_allow=args.metrics_allow,
    )
    server = None
    try:
        stop_on_signals()  # raises at once for a stop that came during the imports
        try:
            _setup_logging(args.log_level, args.log_file, args.log_format)
        except OSError as err:
            print(f"xxftpd: error: cannot open log file {args.log_file!r}: {err.strerror}", file=sys.stderr)
            return 1
        try:
            server = make_server(options)
        except ConfigError as err:
            print(f"xxftpd: error: {err}", file=sys.stderr)
            return 1
        serve(server, options.workers)
    except KeyboardInterrupt:  # a signal during start-up
        if server is not None:
            server.close_all()
        logging.getLogger("xxftpd").info("xxftpd stopped during start-up")
    return 0


def _admin(args) -> int:
    if args.command == "cert":
        try:
            cert, key = certs.self_signed(args.out, args.name, args.days, force=args.force)
        except certs.AlreadyThere as err:
            print(f"xxftpd: error: {err}; nothing written (--force replaces them)", file=sys.stderr)
            return 1
        except OSError as err:
            print(f"xxftpd: error: cannot write to {args.out!r}: {err.strerror}", file=sys.stderr)
            return 1
        print(f"wrote {cert} and {key}")
        return 0
    try:
        root = check_root(args.root)
    except ConfigError as err:
        print(f"xxftpd: error: {err}", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.WARNING, format="xxftpd: %(levelname)s: %(message)s")
    if args.command == "quota":
        return admin.quota(root, args.rescan)
    if args.command == "passwd":
        return admin.passwd(root, args.user, args.stdin, args.md5)
    if args.command == "totp":
        return admin.totp_secret(root, args.user, args.force)
    if args.command == "adduser":
        return admin.adduser(root, args.name, args.quota, args.permission, args.no_password, args.stdin, args.md5)
    if args.command == "mount":
        return admin.mount(root, args.folder, args.name, args.target, args.permission)
    if args.command == "check":
        return admin.check(root)
    if args.command == "users":
        return admin.users_table(root)
    if args.command == "who":
        return who.main(root, args.json)
    return 2  # pragma: no cover - argparse only accepts known commands


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
