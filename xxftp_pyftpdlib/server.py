"""Build and run a configured xxftpd server from plain options.

The command line (``cli``) and tests both go through ``Options`` ->
``make_server`` -> ``serve``, so what the tests start is what users run.
"""

from __future__ import annotations

import errno
import logging
import os
import signal
import threading
from dataclasses import dataclass

from pyftpdlib.ioloop import IOLoop, _read, _write
from pyftpdlib.servers import FTPServer, ThreadedFTPServer

from . import access, ftps, hashpool, hooks, metrics, status, statuspage, xferlog
from .admin import reconcile
from .authorizer import XxftpAuthorizer
from .addresses import ALL
from .certs import CertificateError, check_ca, check_pair
from .admission import Limits
from .listener import REFUSAL, Admitting, Listener, listen_on, raise_open_files_limit
from .workers import serve_workers
from .handler import XxftpHandler, XxftpTLSHandler
from .datachannel import DATA_TIMEOUT
from .passive import DEFAULT_SESSION_REUSE, SESSION_REUSE, WINDOW
from .quotaview import QuotaView
from .signals import SignalWake, stop_on_signals
from .userboard import Board

log = logging.getLogger("xxftpd")

class SafeIOLoop(IOLoop):
    """The platform IO loop, dispatching each event only to the channel that
    owned its fd when the batch of events was read.

    pyftpdlib looks the channel up by fd number at dispatch time: when a
    socket closes in the middle of a batch and a new connection reuses its
    fd, the old socket's event (a hang-up, a read) went to the new
    connection, which was then reset or closed under load.
    """

    if hasattr(IOLoop, "_poller") or hasattr(IOLoop, "_ERROR"):

        def poll(self, timeout):
            if timeout is None:
                timeout = -1
            try:
                events = self._poller.poll(timeout)
            except InterruptedError:
                return
            owners = self.socket_map.get
            # With several events, note each fd's owner before any runs.
            snapshot = [owners(fd) for fd, _ in events] if len(events) > 1 else None
            for i, (fd, event) in enumerate(events):
                inst = owners(fd)
                if inst is None or (snapshot is not None and snapshot[i] is not inst):
                    continue  # closed, or its fd now belongs to someone else
                if event & self._ERROR and not event & self.READ:
                    inst.handle_close()
                else:
                    if event & self.READ and inst.readable():
                        _read(inst)
                    if event & self.WRITE and inst.writable():
                        _write(inst)


class AsyncServer(Admitting, Listener, FTPServer):
    """pyftpdlib's async server, where --max-cons counts client connections.

    pyftpdlib compares the IO loop's map (which holds the listening socket
    and data channels too) with the limit, so one client short.
    """

    def _accept_new_cons(self) -> bool:
        if self.admitted_now():
            return True
        return len(self.ip_map) <= self.max_cons  # ip_map already holds the new client


class ThreadedServer(Admitting, Listener, ThreadedFTPServer):
    """A thread per connection, with this server's own exit flag and lock.

    pyftpdlib keeps both on the class, so closing one server also stopped
    the workers of any other (or later) server of the process.
    """

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._exit = threading.Event()
        self._lock = threading.Lock()

    def _accept_new_cons(self) -> bool:
        if self.admitted_now():
            return True
        # pyftpdlib lets max_cons + 1 threads run ("<=" on the running ones)
        return len(self.ip_map) <= self.max_cons

    def _loop(self, handler):
        """A session's thread; one that can't run (no descriptor left for
        its IO loop) answers 421 and closes, instead of leaving its client
        greeted and then unheard."""
        try:
            return super()._loop(handler)
        except OSError as err:
            if err.errno not in (errno.EMFILE, errno.ENFILE):
                raise
            log.warning("%s:%s closed: %s", handler.remote_ip, handler.remote_port, err.strerror or err)
            try:
                handler.socket.send(REFUSAL)
            except OSError:
                pass
            handler.close()


try:
    from pyftpdlib.servers import MultiprocessFTPServer
except ImportError:  # pragma: no cover - platforms without fork
    MultiprocessFTPServer = None
else:

    class MultiprocessServer(Admitting, Listener, MultiprocessFTPServer):
        """One process per connection, where a signal to one connection's
        process ends that connection only.

        pyftpdlib's children inherit the parent's handlers, and an
        interrupt in any child sets the exit flag that all of them share,
        so one SIGTERM ended every session. Here a child dies of SIGTERM
        alone, and leaves SIGINT (a terminal's Ctrl-C) to the parent,
        which then terminates every child as it shuts down.
        """

        def __init__(self, *args, **kwargs) -> None:
            super().__init__(*args, **kwargs)
            self._exit = self._mp_context.Event()  # this server's own, as above
            self._lock = self._mp_context.Lock()
            self._parent_pid = os.getpid()

        def _accept_new_cons(self) -> bool:
            if os.getpid() != self._parent_pid:  # asked by a connection's process (PASV)
                return super()._accept_new_cons()
            if self.admitted_now():
                return True
            # the new client has no process yet: strictly fewer running ones
            self._refresh_tasks()
            return len(self._active_tasks) < self.max_cons

        places_across_processes = True

        def _start_task(self, *args, **kwargs):
            task = super()._start_task(*args, **kwargs)
            place = getattr(kwargs["args"][0], "place", None)
            if place is not None:  # the table follows the connection's process
                place.alive = task.is_alive
                place.wake = lambda: task.pid and os.kill(task.pid, signal.SIGUSR1)
            return task

        def _loop(self, handler):
            if hasattr(handler, "counted_here"):  # this process serves the connection from now on
                handler.counted_here()
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            signal.signal(signal.SIGINT, signal.SIG_IGN)
            signal.signal(signal.SIGUSR1, lambda signum, frame: handler.leave_soon())
            root = status.adopt(handler)  # this process answers `xxftpd who` for its session
            try:
                return super()._loop(handler)
            finally:
                if handler.hooks is not None:  # its hooks end with it, not cut off
                    handler.hooks.drain()
                if root is not None:
                    status.withdraw(root)

    MultiprocessFTPServer = MultiprocessServer

try:  # TLS 1.0 and 1.1 are off by default: safe defaults
    from OpenSSL import SSL

    _NO_OLD_TLS = SSL.OP_NO_TLSv1 | SSL.OP_NO_TLSv1_1
except ImportError:  # pragma: no cover
    _NO_OLD_TLS = 0

SERVERS = {"async": AsyncServer, "multi-thread": ThreadedServer, "multi-proc": MultiprocessFTPServer}


class ConfigError(Exception):
    """A setting that can't work; the message is one line for the user."""


@dataclass
class Options:
    root: str = "./home"
    host: str = ALL  # every address, IPv4 and IPv6 (a dual-stack socket; IPv4 only without IPv6)
    port: int = 2121
    passive_ports: tuple[int, int] | None = None
    masquerade_address: str | None = None
    max_cons: int = 500
    max_cons_per_ip: int = 32
    max_unauthenticated: int = 50
    max_unauthenticated_per_ip: int = 16
    login_timeout: int = 30
    timeout: int = 120
    data_timeout: int = DATA_TIMEOUT  # seconds a transfer may move no byte (0: no limit)
    passive_timeout: int = WINDOW  # seconds a passive listener waits for its connection (0: no limit)
    concurrency: str = "async"
    upload_mode: str = "atomic"
    ascii_mangling: str = "off"  # "on": TYPE A converts line ends (RFC 959); "off": byte for byte
    tls: bool = False
    certfile: str | None = None
    keyfile: str | None = None
    tls_control_required: bool = False
    tls_data_required: bool = False
    tls_session_reuse: str = DEFAULT_SESSION_REUSE
    tls_implicit: bool = False  # TLS from the first byte on --port (implicit FTPS)
    implicit_port: int | None = None  # an implicit-TLS listener beside an explicit (--tls) server
    tls_client_ca: str | None = None  # ask for client certificates signed by this CA
    upgrade_hashes: bool = False
    xferlog: str | None = None
    allow_from: list[str] | None = None
    deny_from: list[str] | None = None
    ban_after: int = 0
    ban_time: int = 600
    workers: int = 1
    max_login_checks: int = hashpool.MAX_CHECKS  # password checks in progress at once, per process (0: no limit)
    on_upload: str | None = None  # hook commands (see hooks.py)
    on_login: str | None = None
    on_delete: str | None = None
    hook_concurrency: int = hooks.CONCURRENCY  # hooks running at once, per process
    hook_timeout: int = hooks.TIMEOUT  # seconds before a hook's process group is killed
    metrics: str | None = None  # ADDR:PORT of the metrics and status page (off by default)
    metrics_allow: list[str] | None = None  # networks that may read them (None: statuspage.DEFAULT_ALLOW)


def check_root(root: str) -> str:
    """The real path of a usable server root, or ConfigError."""
    real = os.path.realpath(root)
    if not os.path.isdir(real):
        raise ConfigError(f"root {root!r} is not a folder")
    if not os.access(real, os.R_OK | os.X_OK):
        raise ConfigError(f"root {root!r} is not readable")
    return real


def make_handler(options: Options, base: type | None = None) -> type:
    """A handler class carrying this server's settings (not a global patch)."""
    base = base or (XxftpTLSHandler if options.tls or options.tls_implicit else XxftpHandler)
    attrs = {
        "authorizer": XxftpAuthorizer(check_root(options.root), upgrade_hashes=options.upgrade_hashes),
        "timeout": options.timeout,
        "upload_mode": options.upload_mode,
        "ascii_mangling": options.ascii_mangling == "on",
        "xferlog_path": options.xferlog,
        "login_checks": hashpool.LoginChecks(options.max_login_checks),
        "limits_board": Board(),  # before any fork: every worker and session process shares it
        "masquerade_address": options.masquerade_address,
        "passive_ports": range(options.passive_ports[0], options.passive_ports[1] + 1)
        if options.passive_ports else None,
        # this server's own data channel classes: two servers in a process never share timeouts
        "dtp_handler": type("Configured" + base.dtp_handler.__name__, (base.dtp_handler,),
                            {"timeout": options.data_timeout}),
        "passive_dtp": type("Configured" + base.passive_dtp.__name__, (base.passive_dtp,),
                            {"timeout": options.passive_timeout}),
    }
    try:
        attrs["allow_from"] = access.networks(options.allow_from)
        attrs["deny_from"] = access.networks(options.deny_from)
    except ValueError as err:
        raise ConfigError(f"invalid network: {err}") from None
    if options.metrics:
        attrs["metrics"] = _metrics(options, attrs["authorizer"].root)
    if options.ban_after:
        shared = options.concurrency == "multi-proc" or options.workers > 1
        attrs["bans"] = (access.BanList.shared if shared else access.BanList)(options.ban_after, options.ban_time)
    attrs["hooks"] = _hooks(options)
    if options.xferlog:
        try:
            xferlog.append(options.xferlog, "")
        except OSError as err:
            raise ConfigError(f"cannot write xferlog {options.xferlog!r}: {err.strerror}") from None
    if options.tls_session_reuse not in SESSION_REUSE:
        raise ConfigError(f"--tls-session-reuse must be one of {', '.join(SESSION_REUSE)}")
    tls_mode(options)
    if options.tls or options.tls_implicit:
        if XxftpTLSHandler is None:
            raise ConfigError("FTPS needs pyOpenSSL, which is not installed")
        if not options.certfile:
            raise ConfigError(f"{'--tls-implicit' if options.tls_implicit else '--tls'} needs --certfile")
        try:
            check_pair(options.certfile, options.keyfile)
        except CertificateError as err:
            raise ConfigError(str(err)) from None
        attrs.update(
            certfile=options.certfile, keyfile=options.keyfile or options.certfile, ssl_context=None,
            tls_control_required=options.tls_control_required, tls_data_required=options.tls_data_required,
            tls_session_reuse=options.tls_session_reuse,
            ssl_options=XxftpTLSHandler.ssl_options | _NO_OLD_TLS,
        )
    elif (options.tls_control_required or options.tls_data_required or options.certfile
          or options.tls_session_reuse != DEFAULT_SESSION_REUSE):
        raise ConfigError("TLS options need --tls")
    handler = type("Configured" + base.__name__, (base,), attrs)
    if options.tls_client_ca:
        try:
            check_ca(options.tls_client_ca)
        except CertificateError as err:
            raise ConfigError(str(err)) from None
        handler = ftps.with_client_certificates(handler, options.tls_client_ca)
    return ftps.implicit_handler(handler) if options.tls_implicit else handler


def tls_mode(options: Options) -> None:
    """ConfigError unless the FTPS flags combine: ``--tls`` (explicit on
    --port), ``--tls-implicit`` (implicit on --port), ``--tls
    --implicit-port P`` (both, implicit on P); client CAs need one of them."""
    if options.tls and options.tls_implicit:
        raise ConfigError("--tls and --tls-implicit exclude each other: for both, use --tls with --implicit-port")
    if options.implicit_port is not None and not options.tls:
        raise ConfigError("--implicit-port adds an implicit-TLS port to an explicit one: it needs --tls")
    if options.tls_client_ca and not (options.tls or options.tls_implicit):
        raise ConfigError("--tls-client-ca needs --tls or --tls-implicit")


def _hooks(options: Options) -> hooks.HookRunner | None:
    """The server's hook runner, None without hooks; ConfigError for a bad command."""
    commands = {}
    for event in hooks.EVENTS:
        text = getattr(options, f"on_{event}")
        if text:
            try:
                commands[event] = hooks.parse_command(text)
            except ValueError as err:
                raise ConfigError(f"--on-{event}: {err}") from None
    if not commands:
        return None
    if options.hook_concurrency < 1 or options.hook_timeout < 1:
        raise ConfigError("--hook-concurrency and --hook-timeout must be at least 1")
    return hooks.HookRunner(commands, options.hook_concurrency, options.hook_timeout)


def make_server(options: Options, handler: type | None = None):
    """A listening server; ConfigError if it can't listen."""
    cls = SERVERS.get(options.concurrency)
    if cls is None:
        raise ConfigError(f"concurrency {options.concurrency!r} is not available here")
    if options.workers < 1:
        raise ConfigError("--workers must be at least 1")
    if options.workers > 1 and options.concurrency != "async":
        raise ConfigError("--workers forks async servers: use it with --concurrency async")
    handler = handler or make_handler(options)
    warning = raise_open_files_limit(options.max_cons if options.concurrency != "multi-proc" else 0)
    if warning:  # a process per session (multi-proc) needs few descriptors in each
        log.warning("%s", warning)
    settled = reconcile(handler.authorizer.root)  # before clients can connect
    log.debug("%d quota ledger(s) checked", settled)
    try:  # its own IO loop, not pyftpdlib's process-wide instance: servers stay independent
        server = cls(listen_on(options.host, options.port), handler, ioloop=SafeIOLoop())
    except OSError as err:
        raise ConfigError(f"cannot listen on {options.host}:{options.port}: {err.strerror or err}") from None
    server.max_cons = options.max_cons
    server.limits = Limits(options.max_cons, options.max_cons_per_ip, options.max_unauthenticated,
                           options.max_unauthenticated_per_ip, options.login_timeout)
    server.max_cons_per_ip = 0  # counted by the admission table, which may displace strangers
    if options.implicit_port is not None:
        try:
            address = listen_on(options.host, options.implicit_port)
            server.extra_listeners = [ftps.ImplicitListener(server, address, ftps.implicit_handler(handler))]
        except OSError as err:
            server.close()
            raise ConfigError(f"cannot listen on {options.host}:{options.implicit_port}: "
                              f"{err.strerror or err}") from None
    if options.metrics:
        try:
            server.status_page = _status_server(options, handler)
        except ConfigError:
            server.close_all()
            raise
    return server


def _metrics(options: Options, root: str) -> metrics.Recorder:
    """The figures of a server with ``--metrics`` (ConfigError without prometheus_client)."""
    try:
        statuspage.parse_address(options.metrics)
        import prometheus_client  # noqa: F401
    except ValueError as err:
        raise ConfigError(str(err)) from None
    except ImportError:
        raise ConfigError("--metrics needs prometheus_client: pip install 'xxftpd[metrics]'") from None
    return metrics.Metrics(shared=options.concurrency == "multi-proc" or options.workers > 1,
                           quotas=QuotaView(root))


def _status_server(options: Options, handler: type) -> statuspage.StatusServer:
    """The bound (not yet serving) HTTP server of ``--metrics``; ConfigError if it can't listen."""
    recorder = handler.metrics
    recorder.bans = handler.bans
    try:
        allow = access.networks(options.metrics_allow or list(statuspage.DEFAULT_ALLOW))
    except ValueError as err:
        raise ConfigError(f"invalid network in --metrics-allow: {err}") from None
    host, port = statuspage.parse_address(options.metrics)
    try:
        return statuspage.StatusServer((host, port), allow, recorder, handler.authorizer.root, recorder.quotas)
    except OSError as err:
        recorder.close()
        raise ConfigError(f"cannot listen for metrics on {host}:{port}: {err.strerror or err}") from None


def _thread_failed(args) -> None:
    """A worker thread died (pyftpdlib's thread model can race its own
    shutdown): one clear log line; the traceback only at debug level."""
    if args.exc_type is SystemExit:
        return
    log.error("worker thread %s stopped: %s: %s", getattr(args.thread, "name", "?"),
              args.exc_type.__name__, args.exc_value)
    log.debug("worker thread failure", exc_info=(args.exc_type, args.exc_value, args.exc_traceback))


def serve(server, workers: int = 1) -> None:
    """Serve until SIGINT or SIGTERM, then close every connection."""
    stop_on_signals()
    threading.excepthook = _thread_failed
    host, port = server.address[:2]
    host = f"[{host}]" if ":" in host else host  # [::]:2121, every address on both stacks
    extra = f" with {workers} worker processes" if workers > 1 else ""
    log.info("xxftpd listening on %s:%s, serving %s%s", host, port, server.handler.authorizer.root, extra)
    for listener in getattr(server, "extra_listeners", ()):
        log.info("xxftpd listening on %s:%s (implicit TLS)", *listener.address)
    status.publish(server.handler.authorizer.root)  # what `xxftpd who` asks
    page = getattr(server, "status_page", None)
    if page is not None:
        page.start()
    try:
        if workers > 1:
            serve_workers(server, workers)
        else:
            SignalWake(server.ioloop)  # closed with the loop
            server.serve_forever()  # closes every connection itself
    finally:
        if page is not None:
            page.stop()
            server.handler.metrics.close()
        if server.handler.bans is not None:
            server.handler.bans.close()
        if workers > 1:
            server.close()
        status.withdraw(server.handler.authorizer.root, sweep=True)
    log.info("xxftpd stopped")
