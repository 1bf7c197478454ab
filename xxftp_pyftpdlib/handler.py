"""XxftpHandler and XxftpTLSHandler: FTPHandler wired to XxftpFS.

What the handler adds to pyftpdlib's: greeting and farewell texts from the
server root as proper multi-line replies, an empty USER meaning
anonymous, and USER alone logging in a user whose home has no password;
one reply per command line (rules in ``lines``); passive listeners held
to ``passive``'s rules; for FTPS, nothing received with AUTH TLS run
before the handshake and data connections bound to the control
connection's TLS session (``tlschannel``). On our servers each session
holds a place in the admission table (``admission``): it says when it
logs in or out, and leaves with a 421 when told to (displaced, or out of
time to log in). HASH, RANG and the X-commands hash files in worker
threads, the session waiting for its reply (rules in ``hashes``). Its
log lines carry their fields (``sessionlog``), and each login, committed
upload and deletion is handed to the hooks (``hooks``). Paths, mounts
and permissions are the filesystem's business (XxftpFS), which is why
these handlers also work with pyftpdlib's DummyAuthorizer.
"""

from __future__ import annotations

import errno
import itertools
import logging
import math
import os
import re
import socket
import stat
import time
from concurrent.futures import Future

from pyftpdlib.authorizers import AuthenticationFailed, AuthorizerError
from pyftpdlib.exceptions import _FileReadWriteError
from pyftpdlib.filesystems import FilesystemError
from pyftpdlib.handlers import FTPHandler
from pyftpdlib.utils import strerror

from . import access, addresses, banners, hashes, hashpool, hooks, limiting, lines, metrics, replies, xferlog
from .accounts import ANONYMOUS, canonical_name
from .admission import Place
from .datachannel import XxftpDTPHandler
from .filesystem import FolderLines, XxftpFS
from .listing import SORTED_UP_TO
from .loopwake import LoopWake
from .passive import DEFAULT_SESSION_REUSE, PassiveUnavailable, XxftpPassiveDTP
from .quota import LEASE, QuotaExceeded, Usage, usage_text
from .sessionlog import SessionLog
from .status import Watched
from .uploads import BROKEN, Upload


_HASH_COMMANDS = ("HASH", "RANG", *hashes.LEGACY)
NOT_RUN_AFTER_FAILED_LOGIN = "530 Not run: the login sent before this command failed."
_BARE_CONTROLS = re.compile(r"\r(?!\n)|(?<!\r)\n|\x00")


def _escape(match: re.Match) -> str:
    return {"\r": "\\r", "\n": "\\n", "\x00": "\\0"}[match.group()]


def _commands(cmds: dict) -> dict:
    """pyftpdlib's command table, USER's argument optional, SITE QUOTA added."""
    cmds = dict(cmds)
    cmds["USER"] = dict(cmds["USER"], arg=None)
    cmds["SITE QUOTA"] = dict(perm=None, auth=True, arg=None,
                              help="Syntax: SITE QUOTA [<SP> path] (show the quota of a tree).")
    cmds["HASH"] = dict(perm="r", auth=True, arg=None,
                        help="Syntax: HASH <SP> file-name (hash of a file; OPTS HASH chooses the algorithm).")
    for cmd, name in hashes.LEGACY.items():
        cmds[cmd] = dict(perm="r", auth=True, arg=None, help=f"Syntax: {cmd} <SP> file-name ({name} of a file).")
    cmds["RANG"] = dict(perm=None, auth=True, arg=None,
                        help="Syntax: RANG <SP> start <SP> end (bytes the next HASH covers; RANG 1 0: all).")
    return cmds


class XxftpActiveDTP(FTPHandler.active_dtp):
    """pyftpdlib's ActiveDTP, which only ever unregisters its own fd.

    It hands its socket to the data channel once connected, yet the
    session keeps it and closes it later (next PORT, PASV, ABOR, logout).
    pyftpdlib's close unregisters the fd *number* it once had, which by
    then may belong to another connection: that one would never hear from
    the loop again.
    """

    def del_channel(self, map=None) -> None:
        if self._fileno is not None and self.ioloop.socket_map.get(self._fileno) is self:
            super().del_channel(map)


class SlicedProducer:
    """Hands a channel a folder's listing one slice per call of ``more()``.

    A channel asks once per turn of the IO loop that finds its socket
    writable, and sends what it gets before it asks again: a slice of
    ``CHUNKS_PER_SLICE`` chunks (64 ``ls -l`` or MLSD lines, 512 names:
    about 0.3 ms of work) is all a listing takes from the loop per turn,
    whatever the folder's size. Another session's NOOP waits for about
    half a slice. Each turn costs the loop about 40 µs of its own: against
    320 lines a turn (pyftpdlib's producer over chunks of 16 lines), slices
    of 4 chunks cost 4-8% more CPU per listing, and of 2 chunks about 15%
    (for a NOOP waiting half as long).
    """

    CHUNKS_PER_SLICE = 4

    def __init__(self, lines: FolderLines) -> None:
        self.lines = lines

    def more(self) -> bytes:
        try:
            data = b"".join(itertools.islice(self.lines, self.CHUNKS_PER_SLICE))
        except OSError as err:  # the folder could not be read on: the transfer fails (and says why)
            self.lines.close()
            raise _FileReadWriteError(err) from err
        if not data:
            self.lines.close()
        return data


class XxftpSession(SessionLog, Watched):
    """The behaviour shared by the plain and the TLS handler (and what
    ``xxftpd who`` shows of it: ``status.Watched``)."""

    abstracted_fs = XxftpFS
    active_dtp = XxftpActiveDTP
    passive_dtp = XxftpPassiveDTP
    upload_mode = "atomic"
    xferlog_path: str | None = None
    allow_from: list = []
    deny_from: list = []
    bans: access.BanList | None = None
    hooks: hooks.HookRunner | None = None
    _retr_ftp_path = ""
    ascii_mangling = False  # TYPE A converts line ends only when on (see datachannel)
    metrics: metrics.Recorder = metrics.OFF  # a server's own, from make_handler (--metrics)
    password_kind = "none"  # of the last login checked (set by the authorizer), for the metrics
    _counted_in = 0  # the process whose metrics count this connection as open
    _counted_user: str | None = None
    _counted_tls = False

    def _refusal(self) -> str | None:
        """Why this client may not even be greeted, if it may not."""
        if not access.permitted(self.remote_ip, self.allow_from, self.deny_from):
            self.metrics.refused("address")
            return "Connections from your address are not allowed."
        if self.bans is not None:
            left = self.bans.banned_for(self.remote_ip)
            if left:
                self.metrics.refused("banned")
                return f"Too many failed logins; try again in {math.ceil(left)} seconds."
        return None

    _banned = False

    def handle_auth_failed(self, msg: str, password: str) -> None:
        # Count the failure now, before the delayed 530 lets the client try
        # again (in another thread or process the count must be there first).
        if self.bans is not None and self.bans.failed(self.remote_ip, refused_in=self.auth_failed_timeout):
            self._banned = True
        self.metrics.login(False, self.password_kind)
        self._hold_commands()  # until the delayed 530 is out
        super().handle_auth_failed(msg, password)

    def on_login_failed(self, username: str, password: str) -> None:
        if self._banned:
            self.log(f"address {self.remote_ip} banned for {self.bans.ban_time:g} seconds after failed logins")
            self.close_when_done()
        super().on_login_failed(username, password)
        self._refuse_held_commands()

    def _refuse_held_commands(self) -> None:
        """Lines sent behind a PASS that failed are answered, in order, and
        not run: a client may not pipeline password guesses past the
        failed-login delay and the limit of attempts (pyftpdlib counts
        them as its delayed 530s go out)."""
        self._holding = False
        held, self._held_commands = self._held_commands, None
        if not held:
            return
        for _ in held:
            self.respond(NOT_RUN_AFTER_FAILED_LOGIN)
        self.log(f"{len(held)} command(s) sent behind a failed PASS answered, not run")

    limits_board = None  # userboard.Board: users' limits (a server's own, from make_handler)
    limits_member: limiting.Member | None = None  # this session's place on it, once logged in

    def handle_auth_success(self, home: str, password: str, msg_login: str) -> None:
        refusal = limiting.join(self, home)  # the user's .xxftp/limits
        if refusal is not None:
            self.respond(f"421 {refusal}")
            self.close_when_done()
            return
        if self.place is not None:  # before the 230 leaves: the client may connect again at once
            self.place.logged_in()
        super().handle_auth_success(home, password, msg_login)

    def on_login(self, username: str) -> None:
        if self.bans is not None:
            self.bans.succeeded(self.remote_ip)
        self.metrics.login(True, self.password_kind)
        self._session_ended()
        self._counted_user = username
        self.metrics.session_started(username)
        if self.hooks is not None:
            self.hooks.submit("login", username, USER=username, CLIENT=self.remote_ip)
        super().on_login(username)

    # --- hooks (rules in ``hooks``): queued, never waited for

    def on_upload_committed(self, upload: Upload) -> None:
        """The data channel committed ``upload`` (a whole transfer)."""
        if self.hooks is None or not self.hooks.wants("upload") or upload.committed is None:
            return
        real, size = upload.committed
        fs = self.fs
        self.hooks.submit("upload", real, USER=self.username, CLIENT=self.remote_ip, SIZE=size,
                          FTP_PATH=fs.fs2ftp(upload.name) if fs is not None else None,
                          SHA256=hashes.cached(real))

    def ftp_DELE(self, path: str):
        real = None
        if self.hooks is not None and self.hooks.wants("delete"):
            try:
                real = self.fs.resolve(path).real
            except Exception:  # DELE meets the same refusal and answers it
                real = None
        result = super().ftp_DELE(path)
        if result is not None and real is not None:
            self.hooks.submit("delete", real, USER=self.username, CLIENT=self.remote_ip,
                              FTP_PATH=self.fs.fs2ftp(path))
        return result

    def _session_ended(self) -> None:
        if self._counted_user is not None:
            self.metrics.session_ended(self._counted_user)
            self._counted_user = None

    def counted_here(self) -> None:
        """Count this connection as open in this process from now on (it
        was greeted in another: ``multi-proc`` hands it to a new process)."""
        if self.metrics.enabled and not self._closed:
            self._counted_in = os.getpid()
            self.metrics.opened()

    def _uncount(self) -> None:
        """The connection's open figures (connection, session, TLS) end,
        in the process that counted them."""
        if not self._counted_in or self._closed:
            return
        if self._counted_in == os.getpid():
            self._session_ended()
            if self._counted_tls:
                self.metrics.tls_ended()
            self.metrics.closed()
        self._counted_in = 0
        self._counted_user, self._counted_tls = None, False

    def ftp_RETR(self, file: str):
        self._retr_ftp_path = self.fs.fs2ftp(file)  # the open file only knows its real path
        return super().ftp_RETR(file)

    def log_transfer(self, cmd, filename, receive, completed, elapsed, bytes) -> None:
        """One info line per transfer with the FTP path, and the xferlog line."""
        # The data channel may end after the control connection (and its fs) is gone.
        fs = self.fs
        path = (fs.fs2ftp(filename) if fs is not None else filename) if receive else self._retr_ftp_path
        result = "ok" if completed else "incomplete"
        code = self.last_reply_code if (self.last_reply_code or 0) >= 200 else None  # not the 150
        self.log(f"{cmd} {path} {result} bytes={bytes} seconds={elapsed}", event="transfer", command=cmd,
                 path=path, bytes=bytes, seconds=elapsed, completed=bool(completed), code=code)
        if self.metrics.enabled:  # the data channel has sent the transfer's final reply already
            self.metrics.transfer(receive, completed, bytes, elapsed, code if code is not None and code >= 400 else 426)
        if self.xferlog_path:
            try:
                xferlog.append(self.xferlog_path, xferlog.line(
                    time.time(), elapsed, self.remote_ip, bytes, path, self._current_type == "i", receive,
                    self.username, self.username == ANONYMOUS, self.password, completed))
            except OSError as err:
                logging.getLogger("xxftpd").error("cannot write xferlog %s: %s", self.xferlog_path, err.strerror)

    def _text(self, method: str, default: str) -> str:
        read = getattr(self.authorizer, method, None)
        return read() if read is not None else default

    def __init__(self, conn, server, ioloop=None) -> None:
        self._line = lines.LineBuffer()
        super().__init__(conn, server, ioloop)
        if not self.connected:
            return
        self.metrics.connection()
        self._raw_socket = conn  # a TLS session wraps it later; shutdown() must reach the socket
        refusal = self._refusal() or self._take_place(server)
        if refusal is not None:
            # Refused before the server counts or hands the connection on
            # (to a thread or a process): it sees an unconnected handler.
            try:
                if self._may_reply():
                    conn.send(f"421 {refusal}\r\n".encode())
            except OSError:
                pass
            self.log(f"connection refused: {refusal}", event="refused", code=421)
            self.close()

    def _may_reply(self) -> bool:
        """Whether a reply can reach the client now (implicit TLS: not
        before its handshake, where clear text would be a broken record)."""
        return True

    @property
    def remote_ip(self) -> str:
        return self.__dict__.get("remote_ip", "")

    @remote_ip.setter
    def remote_ip(self, ip: str) -> None:
        # An IPv4 client of a dual-stack socket is IPv4 from its first log
        # line on (rules in ``addresses``); kept in __dict__, which
        # pyftpdlib's log prefix is formatted from.
        self.__dict__["remote_ip"] = addresses.plain(ip) if ip else ip

    # --- the admission table's place (see admission.py): who may stay

    place: Place | None = None

    def _take_place(self, server) -> str | None:
        """Ask the server for a place (our servers keep an admission
        table; pyftpdlib's own have none): why not, if refused."""
        admit = getattr(server, "admit", None)
        if admit is None:
            return None
        self.place, refusal = admit(self.remote_ip)
        if self.place is not None:
            self.place.wake = self.leave_soon
        else:
            self.metrics.refused("limit")
        return refusal

    def leave_soon(self) -> None:
        """Told to leave (displaced, or out of time to log in), maybe from
        another thread: end the reading side, so that the session's own
        loop closes it (``close`` says why)."""
        try:
            self._raw_socket.shutdown(socket.SHUT_RD)
        except OSError:
            pass

    def _leave_place(self) -> None:
        place = self.place
        if place is None or self._closed:
            return
        reason = place.leaving
        if reason is not None:
            self.log(f"closing: {reason}")
            try:
                if self._may_reply():
                    self.socket.send(f"421 {reason}\r\n".encode())
            except Exception:  # best effort: the socket may be half shut or mid-handshake
                pass
        if place.alive is None:  # else the process that accepted it forgets it when this one ends
            place.left()

    def handle_max_cons(self) -> None:
        self.metrics.refused("max_cons")
        super().handle_max_cons()

    def flush_account(self) -> None:
        was_logged_in = self.authenticated
        limiting.leave(self)
        self._session_ended()
        super().flush_account()
        self._hash_range = None  # REIN or a new USER: the next user's HASH starts afresh, as REST does
        self.__dict__.pop("hash_algorithm", None)
        if was_logged_in and self.place is not None:
            self.place.logged_out()

    def handle(self) -> None:
        self.counted_here()
        self.on_connect()
        if not self._closed and not self._closing:
            self.respond(banners.reply(220, self._text("welcome", self.banner)))

    _refusal_code: int | None = None

    def run_as_current_user(self, function, *args, **kwargs):
        """pyftpdlib answers every refusal of the filesystem with 550; a
        refusal that carries its own code (450 busy, 552 quota) keeps it:
        the code is noted here and put on the 550 reply that follows."""
        try:
            return super().run_as_current_user(function, *args, **kwargs)
        except FilesystemError as err:
            self._refusal_code = getattr(err, "code", None)
            raise

    def respond(self, resp: str, logfun=None) -> None:
        """Never echo a bare CR, LF or NUL from a client's line: it could
        forge a reply line (``NOOP x\n226 ...``). Our own multi-line replies
        join their lines with CRLF, which is kept."""
        code, self._refusal_code = self._refusal_code, None
        if code is not None and resp.startswith(("550 ", "450 ")):  # 450: pyftpdlib's STOU refusals
            resp = f"{code} {resp[4:]}"
        if "\n" in resp or "\r" in resp or "\x00" in resp:
            resp = _BARE_CONTROLS.sub(_escape, resp)
        if logfun is None:
            super().respond(resp)
        else:
            super().respond(resp, logfun=logfun)

    # --- command lines (rules in ``lines``)

    def collect_incoming_data(self, data: bytes) -> None:
        self._line.add(data)

    def found_terminator(self) -> None:
        line = self._line.take()
        if line is None:
            self.respond_w_warning(lines.TOO_LONG)
            return
        self._in_buffer = [line]  # what pyftpdlib's found_terminator reads the line from
        self._in_buffer_len = len(line)
        super().found_terminator()

    def discard_unread(self, why: str) -> None:
        """Throw away every byte received but not yet executed (after a
        command that switches the channel to TLS), and log how many."""
        count = len(self.ac_in_buffer) + self._line.clear() + self._drop_held_commands()
        self.ac_in_buffer = b""
        if count:
            self.log(f"discarded {count} bytes received after {why} before the TLS handshake",
                     logfun=logging.getLogger("pyftpdlib").warning)

    # --- passive data connections (rules in ``passive``)

    def ftp_PASV(self, line: str) -> None:
        if addresses.is_ipv6(self.remote_ip) and not self.masquerade_address:
            self.respond(addresses.PASV_ON_IPV6)
            return
        self._open_passive(super().ftp_PASV, line)

    def ftp_EPSV(self, line: str) -> None:
        self._open_passive(super().ftp_EPSV, line)

    def _open_passive(self, command, line: str) -> None:
        try:
            command(line)
        except (PassiveUnavailable, OSError) as err:
            why = str(err) if isinstance(err, PassiveUnavailable) else (err.strerror or str(err))
            self.log(f"no passive listener: {why}", logfun=logging.getLogger("pyftpdlib").warning)
            self.respond(f"425 Can't open data connection: {why}.")

    def data_needs_resumption(self) -> bool:
        """Whether a data connection must resume this session's TLS session."""
        return False

    # --- active data connections: the unspecified address is the client's own (``addresses``)

    def ftp_EPRT(self, line: str) -> None:
        super().ftp_EPRT(addresses.eprt_argument(line, self.remote_ip))

    def ftp_PORT(self, line: str) -> None:
        super().ftp_PORT(addresses.port_argument(line, self.remote_ip))

    def passive_failed(self, reply: str) -> bool:
        """The passive listener gave up: a transfer command waiting for its
        data connection gets ``reply`` (its file closed, an upload rolled
        back). False if no command was waiting (nothing is answered)."""
        out, queued = self._out_dtp_queue, self._in_dtp_queue
        if out is None and queued is None:
            return False
        self._out_dtp_queue = None
        if out is not None and out[2] is not None:
            out[2].close()
        self._drop_queued_upload()
        if self._in_dtp_queue is not None:  # a queued upload of a foreign filesystem
            self._in_dtp_queue[0].close()
            self._in_dtp_queue = None
        self.respond(reply, logfun=logging.getLogger("pyftpdlib").warning)
        return True

    def pre_process_command(self, line: str, cmd: str, arg: str, from_queue: bool = False) -> None:
        if self._held_commands is not None and not from_queue:  # a PASS is not answered yet
            self._held_commands.append((line, cmd, arg))
            return
        forget = getattr(self.fs, "forget", None)
        if forget is not None:  # resolutions are shared within one command only
            forget()
        if cmd in _HASH_COMMANDS:  # their argument is optional to pyftpdlib, which then answers 530 before 501
            arg = hashes.unquote(arg) if cmd != "RANG" else arg
            if not arg.strip() and self.authenticated:
                self.respond("501 Syntax error: command needs an argument.")
                return
        super().pre_process_command(line, cmd, arg)

    def process_command(self, cmd: str, *args, **kwargs) -> None:
        """Answer from ``replies.RULES`` a path that is missing, of the
        wrong kind or refused, before the command runs.

        pyftpdlib answers some of these itself with other codes (501 to
        MLSD of a missing folder, which rclone does not read as "not
        found"); one table keeps every command's answer the same.
        """
        if self._hash_range is not None and cmd in ("RETR", "STOR", "APPE", "STOU"):
            self._hash_range = None  # RANG is for HASH: never a silently whole transfer
            self.respond("504 RANG is supported for HASH only; the range is reset.")
            return
        reply = self._path_reply(cmd, args[0] if args else "")
        if reply is None:
            super().process_command(cmd, *args, **kwargs)
            return
        if cmd == "RETR":
            self._restart_position = 0  # a refused RETR uses up its REST, as pyftpdlib's own refusal does
        if cmd == "HASH":
            self._hash_range = None  # and a refused HASH its RANG
        code, text = reply
        self.respond(f"{code} {text}")
        self.log_cmd(cmd, args[0], code, text)

    def _path_reply(self, cmd: str, arg: str) -> tuple[int, str] | None:
        """The table's reply to ``cmd`` on ``arg``, or None to let it run."""
        if cmd not in replies.RULES or not self.authenticated or self.fs is None:
            return None  # before login only a bare STAT gets here, and it names no path
        # pyftpdlib hands commands with a permission a filesystem path; the
        # others (SITE QUOTA) get the FTP path the client sent.
        path = arg if self.proto_cmds[cmd]["perm"] else self.fs.ftp2fs(arg or self.fs.cwd)
        try:
            mode = self.fs.stat(path).st_mode
        except FilesystemError as err:
            return replies.answer(cmd, replies.Kind.REFUSED, self.fs.fs2ftp(path), str(err))
        except OSError as err:
            if err.errno not in (errno.ENOENT, errno.ENOTDIR):
                return None  # the command meets the same error and names it
            kind = replies.Kind.MISSING
        else:
            kind = (replies.Kind.FOLDER if stat.S_ISDIR(mode) else
                    replies.Kind.FILE if stat.S_ISREG(mode) else replies.Kind.OTHER)
        return replies.answer(cmd, kind, self.fs.fs2ftp(path))

    def ftp_USER(self, line: str) -> None:
        needs_password = getattr(self.authorizer, "needs_password", None)
        if needs_password is None:  # a foreign authorizer: pyftpdlib's rules
            if not line:
                self.respond("501 Syntax error: command needs an argument.")
                return
            super().ftp_USER(line)
            return
        name = canonical_name(line)  # an empty USER means anonymous
        if needs_password(name):
            super().ftp_USER(name)
            return
        if self.authenticated:
            self.flush_account()
        self.username = name
        self.ftp_PASS("")

    login_checks = hashpool.LoginChecks()  # a server's own, from make_handler
    _login_check: Future | None = None

    def ftp_PASS(self, line: str):
        """Check passwords in a worker thread, woken up when it is done.

        The session stops reading commands until the verdict arrives; the
        event loop (and every transfer on it) neither waits for the hash
        nor looks at the session meanwhile: the finished check hands its
        verdict to the loop (``LoopWake``). Every login that needs a
        password, a real user's or an unknown one's, takes this same path
        and the same work (see ``Accounts.login``). Beyond
        ``login_checks.limit`` checks in progress a login is answered 421
        at once, before anything about the user is looked up.
        """
        check = getattr(self.authorizer, "check_login", None)
        if self.authenticated or not self.username or check is None:
            return super().ftp_PASS(line)
        username = self.username
        open_login = getattr(self.authorizer, "open_login", None)
        if open_login is not None and self._conclude_login(lambda: open_login(username, self), line):
            return None
        future = self.login_checks.submit(check, username, line, self)
        if future is None:
            self.respond("421 Too many logins in progress; try again later.")
            self.log(f"login of {username!r} refused: {self.login_checks.limit} password checks in progress")
            self.close_when_done()
            return None
        self.metrics.login_check(future)
        self.del_channel()
        self._hold_commands()
        self._login_check = future
        if self.place is not None:  # not to be displaced while its password is checked
            self.place.checking = True
        wake = LoopWake.expect(self.ioloop)
        future.add_done_callback(lambda done: wake.call(self._login_verdict, done, line))
        return None

    def _conclude_login(self, outcome, password: str) -> bool:
        """pyftpdlib's end of PASS, given how the check came out; False if
        ``outcome`` gave no verdict (a password must be checked)."""
        try:
            verdict = outcome()
        except (AuthenticationFailed, AuthorizerError) as err:
            self.handle_auth_failed(str(err), password)
            return True
        except Exception as err:  # a check that broke (a file it could not read, memory): refused
            logging.getLogger("xxftpd.auth").error("login of %r refused: the check failed: %s: %s",
                                                  self.username, type(err).__name__, err)
            self.handle_auth_failed("Authentication failed.", password)
            return True
        if verdict is None:
            return False
        home, msg_login = verdict
        self.handle_auth_success(home, password, msg_login)
        self._run_held_commands()
        return True

    _held_commands: list[tuple[str, str, str]] | None = None

    def handle_timeout(self) -> None:
        """A client waiting for the answer to its PASS is not idle: the
        idle clock starts again (a check may take seconds on busy cores)."""
        if self._holding and not self._closed:
            self._idler = self.ioloop.call_later(self.timeout, self.handle_timeout, _errback=self.handle_error)
            return
        super().handle_timeout()

    def _hold_commands(self) -> None:
        """Commands that come before PASS is answered (a client that sends
        several lines at once) wait for that answer, so every reply comes
        in order: a check in a worker thread or the delay of a failed login
        must not let the next line overtake it."""
        self._holding = True
        if self._held_commands is None:
            self._held_commands = []

    _holding = False

    def _run_held_commands(self) -> None:
        """Run the held lines in order, from the session's own queue: a
        command may empty it (AUTH TLS discards what came with it) or hold
        the rest again (another PASS)."""
        self._holding = False
        held = self._held_commands
        while held and not (self._closed or self._closing or self._holding):
            self.pre_process_command(*held.pop(0), from_queue=True)
        if not self._holding:
            self._held_commands = None

    def _drop_held_commands(self) -> int:
        """Forget the lines held behind a PASS; their size in bytes."""
        held = self._held_commands or []
        size = sum(len(line) + 2 for line, _, _ in held)
        held.clear()  # in place: a run of the queue may be going on
        return size

    def _login_verdict(self, done: Future, password: str) -> None:
        """On the loop's thread, once the check is done: answer, read on."""
        if self._login_check is done:
            self._login_check = None
        if self.place is not None:
            self.place.checking = False
        if self._closed or done.cancelled():
            return
        try:
            self.add_channel()
            if self.place is not None and self.place.leaving:
                self.close()  # displaced or out of time meanwhile: no login (close says why)
            elif not self._closing:
                self._conclude_login(done.result, password)
        except Exception:
            self.handle_error()

    # --- listings: a folder is read, stat'ed and formatted a slice per
    # turn of the IO loop (pyftpdlib reads and sorts it whole first).

    def ftp_LIST(self, path: str):
        return self._list_folder("LIST", path)

    def ftp_NLST(self, path: str):
        return self._list_folder("NLST", path)

    def ftp_MLSD(self, path: str):
        return self._list_folder("MLSD", path)

    def _folder_lines(self, cmd: str, path: str) -> FolderLines | None:
        """The lines of the folder ``path`` (None: not a folder, or a
        filesystem that lists the pyftpdlib way)."""
        folder_lines = getattr(self.fs, "folder_lines", None)
        if folder_lines is None or not self.fs.isdir(path):
            return None
        kind = "MLSD" if cmd == "MLSD" else "NLST" if cmd == "NLST" else "LIST"
        extra = (self.authorizer.get_perms(self.username), self._current_facts) if kind == "MLSD" else ()
        return self.run_as_current_user(folder_lines, path, kind, *extra)

    def _list_folder(self, cmd: str, path: str):
        try:
            lines = self._folder_lines(cmd, path)
        except (OSError, FilesystemError) as err:
            self.respond(f"550 {strerror(err)}.")
            return None
        self.metrics.listing(cmd)
        if lines is None:  # a file: pyftpdlib lists that one entry
            return getattr(super(), f"ftp_{cmd}")(path)
        self.push_dtp_data(SlicedProducer(lines), isproducer=True, cmd=cmd)
        return path

    def ftp_STAT(self, path: str):
        """STAT of a folder: its ``ls -l`` lines over the control connection,
        up to ``SORTED_UP_TO`` entries; a bigger folder is refused (a client
        could ask for it again and again without reading the replies)."""
        if not path:
            return super().ftp_STAT(path)
        try:
            lines = self._folder_lines("STAT", path)
        except (OSError, FilesystemError) as err:
            self.respond(f"550 {strerror(err)}.")
            return None
        if lines is None:
            return super().ftp_STAT(path)
        ftp_path = self.fs.fs2ftp(path)
        if not lines.whole:
            lines.close()
            self.respond(f"550 {ftp_path} has more than {SORTED_UP_TO} entries: too many for STAT; "
                         "list it with LIST, NLST or MLSD.")
            return None
        self.push(f'213-Status of "{ftp_path}":\r\n')
        self.push_with_producer(SlicedProducer(lines))
        self.respond("213 End of status.")
        return path

    def _refused(self, check: str, *args) -> bool:
        """Run the filesystem's pre-check ``check``; answer 550 if it refuses.

        pyftpdlib only meets some refusals late (RNFR's at RNTO) or with the
        wrong code (STOU's as 450); these checks answer them up front.
        """
        method = getattr(self.fs, check, None)
        if method is None:
            return False
        try:
            method(*args)
        except FilesystemError as err:
            self.respond(f"{getattr(err, 'code', 550)} {err}.")
            return True
        return False

    def ftp_RNFR(self, path: str):
        # The home itself is refused by pyftpdlib, with its own reply.
        is_home = self.fs.realpath(path) == self.fs.realpath(self.fs.root)
        if not is_home and self._refused("check_rename_source", path):
            return None
        return super().ftp_RNFR(path)

    def ftp_STOU(self, line: str):
        if not self._restart_position and self._refused("check_unique_upload", line):
            return None
        result = super().ftp_STOU(line)
        self._lease_queued_upload()
        return result

    def ftp_STOR(self, file: str, mode: str = "w"):
        result = super().ftp_STOR(file, mode)
        self._lease_queued_upload()
        return result

    def _lease_queued_upload(self) -> None:
        """An upload waiting for its data connection holds room ahead like a
        running one: if no connection comes within a lease, it gives it back
        (the data channel keeps the lease once it runs)."""
        queued = self._in_dtp_queue
        if queued is not None and isinstance(queued[0], Upload):
            self.ioloop.call_later(LEASE, self._queued_lease, queued[0], _errback=self.handle_error)

    def _queued_lease(self, upload: Upload) -> None:
        queued = getattr(self, "_in_dtp_queue", None)
        if queued is not None and queued[0] is upload:
            upload.idle()

    def ftp_ALLO(self, line: str) -> None:
        """ALLO n: 552 at once if n bytes can't fit the current tree."""
        size = line.split()[0] if line.split() else ""
        if not (size.isascii() and size.isdigit()):
            # No byte count to check (str.isdigit alone takes "²", which int()
            # refuses): pyftpdlib's reply, ALLO being advisory.
            super().ftp_ALLO(line)
            return
        usage = self._usage(self.fs.ftp2fs(self.fs.cwd))
        if usage is not None and (usage.limit is None or int(size) > usage.free):
            self.respond(f"552 {QuotaExceeded(usage.limit, usage.free)}.")
            return
        self.respond("202 No storage allocation necessary.")

    def ftp_SITE_QUOTA(self, line: str) -> None:
        path = self.fs.ftp2fs(line or self.fs.cwd)
        try:
            node, usage = self.fs.quota_usage(path)
        except (OSError, FilesystemError) as err:
            self.respond(f"550 {getattr(err, 'strerror', None) or err}.")
            return
        top = node.area.top
        if usage is None:
            self.respond(f"200 No quota on {top}.")
        else:
            self.respond(f"200 Quota of {top}: {usage_text(usage)}.")

    # --- hashes of files (rules in ``hashes``; the replies in ``replies``)

    hash_algorithm = hashes.DEFAULT  # this session's choice (OPTS HASH)
    _hash_range: hashes.Span | None = None  # set by RANG for the next HASH

    def ftp_HASH(self, path: str):
        span, self._hash_range = self._hash_range, None
        return self._hash("HASH", path, self.hash_algorithm, span)

    def ftp_XSHA256(self, path: str):
        return self._hash("XSHA256", path, "SHA-256")

    def ftp_XSHA512(self, path: str):
        return self._hash("XSHA512", path, "SHA-512")

    def ftp_XSHA1(self, path: str):
        return self._hash("XSHA1", path, "SHA-1")

    def ftp_XMD5(self, path: str):
        return self._hash("XMD5", path, "MD5")

    def ftp_XCRC(self, path: str):
        return self._hash("XCRC", path, "CRC32")

    def _hash(self, cmd: str, path: str, name: str, span: hashes.Span | None = None):
        """Answer the hash of a file: from the cache at once, else once a
        worker thread has read it. Meanwhile the session reads no command
        (as while a password is checked) and the loop serves the others;
        the finished hash hands its reply to the loop (``LoopWake``)."""
        try:  # opened as RETR opens it: resolution, 'read' permission, no link followed
            file = self.run_as_current_user(self.fs.open, path, "rb")
        except (OSError, FilesystemError) as err:
            self.respond(f"550 {strerror(err)}.")
            return None
        ftp_path = self.fs.fs2ftp(path)
        try:
            outcome = hashes.hasher().begin(file, name, span, owner=self.username or "")
        except hashes.Busy as err:
            self.respond(f"450 {err}.")
            return None
        except hashes.BadRange as err:
            self.respond(f"501 {err}.")
            return None
        except OSError as err:
            self.respond(f"550 {strerror(err)}.")
            return None
        if isinstance(outcome, hashes.Digest):
            self.respond(replies.digest(cmd, outcome.algorithm, outcome.start, outcome.end, outcome.hex, ftp_path))
            return path
        self.del_channel()
        self._hold_commands()
        wake = LoopWake.expect(self.ioloop)
        outcome.add_done_callback(lambda done: wake.call(self._hash_done, done, cmd, ftp_path))
        return path

    def _hash_done(self, done: Future, cmd: str, ftp_path: str) -> None:
        """On the loop's thread, once the hash is done: answer, read on."""
        if self._closed:
            return  # the client left meanwhile; the hash is cached all the same
        try:
            self.add_channel()
            if self.place is not None and self.place.leaving:
                self.close()  # displaced meanwhile (close says why)
                return
            if self._closing:
                return
            error = done.exception()
            if error is None:
                digest = done.result()
                reply = replies.digest(cmd, digest.algorithm, digest.start, digest.end, digest.hex, ftp_path)
            elif isinstance(error, hashes.Changed):
                reply = f"450 {ftp_path}: {error}."
            elif isinstance(error, OSError):
                reply = f"550 {ftp_path}: {strerror(error)}."
            else:
                raise error
            self.respond(reply)
            self.log_cmd(cmd, ftp_path, int(reply[:3]), reply[4:])  # pyftpdlib logs only replies sent at once
            self._run_held_commands()
        except Exception:
            self.handle_error()

    def ftp_RANG(self, line: str) -> None:
        try:
            self._hash_range = span = hashes.parse_range(line)
        except ValueError as err:
            self._hash_range = None
            self.respond(f"501 {err}; the range is reset.")
            return
        if span is None:
            self.respond("350 Range reset: HASH covers whole files.")
        else:
            self.respond(f"350 Restarting at {span.start}. End byte range at {span.end}, for the next HASH.")

    def ftp_OPTS(self, line: str):
        words = line.split()
        if not words or words[0].upper() != "HASH":
            return super().ftp_OPTS(line)
        name = hashes.algorithm(words[1]) if len(words) == 2 else None
        if len(words) == 1:
            self.respond(f"200 {self.hash_algorithm}")
        elif name is None:
            self.respond("501 Unknown algorithm, current selection not changed.")
        else:
            self.hash_algorithm = name
            self.respond(f"200 {name}")
        return None

    def ftp_FEAT(self, line: str):
        extra = self._extra_feats  # pyftpdlib's list of lines to add
        self._extra_feats = [*extra, *hashes.feat_lines(self.hash_algorithm)]
        try:
            return super().ftp_FEAT(line)
        finally:
            self._extra_feats = extra

    def _usage(self, path: str) -> Usage | None:
        try:
            return self.fs.quota_usage(path)[1]
        except (OSError, FilesystemError):
            return None

    def _drop_queued_upload(self) -> None:
        """An upload queued for a data connection that never came: roll back."""
        queued = getattr(self, "_in_dtp_queue", None)
        if queued is not None and isinstance(queued[0], Upload):
            self._in_dtp_queue = None
            queued[0].finish(False, BROKEN)

    def ftp_ABOR(self, line: str):
        # pyftpdlib keeps the queued upload: a later data connection would
        # still fill it, and it would hold its file and room till logout.
        self._drop_queued_upload()
        return super().ftp_ABOR(line)

    def close(self) -> None:
        self._drop_queued_upload()
        self._leave_place()
        limiting.leave(self)
        self._uncount()
        if self._login_check is not None:
            self._login_check.cancel()  # not hashed yet: it never will be
        super().close()

    def ftp_QUIT(self, line: str) -> None:
        if self.authenticated:
            text = self.authorizer.get_msg_quit(self.username)
        else:
            text = self._text("goodbye", banners.DEFAULT_GOODBYE)
        self.respond(banners.reply(221, text))
        # As pyftpdlib: let a running transfer finish, then close.
        if self.data_channel:
            self._quit_pending = True
            self.del_channel()
        else:
            self._shutdown_connecting_dtp()
            self.close_when_done()
        if self.authenticated and self.username:
            self.on_logout(self.username)


class XxftpHandler(XxftpSession, FTPHandler):
    """FTPHandler serving an xxftp tree."""

    proto_cmds = _commands(FTPHandler.proto_cmds)
    dtp_handler = XxftpDTPHandler


try:
    from OpenSSL import SSL
    from pyftpdlib.handlers import TLS_FTPHandler

    from . import tlschannel
    from .tlschannel import XxftpTLSDTPHandler
except ImportError:  # pyopenssl missing: FTPS unavailable
    TLS_FTPHandler = None


def _tls_commands(cmds: dict) -> dict:
    cmds = _commands(cmds)
    cmds["CCC"] = dict(perm=None, auth=False, arg=False,
                       help="Syntax: CCC (clear the control channel; refused).")
    return cmds


if TLS_FTPHandler is not None:

    class XxftpTLSHandler(XxftpSession, TLS_FTPHandler):
        """TLS_FTPHandler (explicit FTPS) serving an xxftp tree.

        Adds to pyftpdlib's: nothing received with AUTH TLS is executed
        before the handshake; protected data connections must resume the
        control connection's TLS session (``tls_session_reuse``, see
        tlschannel); PBSZ checks its number; PROT C is refused when data
        must be protected; CCC is refused.
        """

        proto_cmds = _tls_commands(TLS_FTPHandler.proto_cmds)
        dtp_handler = XxftpTLSDTPHandler
        tls_session_reuse = DEFAULT_SESSION_REUSE

        @classmethod
        def get_ssl_context(cls):
            context = super().get_ssl_context()
            if cls.__dict__.get("_hardened_context") is not context:  # made here or handed in: once each
                tlschannel.harden(context, cls.tls_session_reuse)
                cls._hardened_context = context
            return context

        def data_needs_resumption(self) -> bool:
            return bool(self._prot) and self.tls_session_reuse == "required"

        def handle_ssl_established(self) -> None:
            if self.metrics.enabled and not self._counted_tls:
                self._counted_tls = True
                self.metrics.tls_started()
            super().handle_ssl_established()

        def recv(self, buffer_size: int) -> bytes:
            try:
                return super().recv(buffer_size)
            except SSL.Error as err:  # pyftpdlib's recv has dealt with want-read/write and closes
                self._tls_failed(err)
                return b""

        def send(self, data) -> int:
            try:
                return super().send(data)
            except SSL.Error as err:
                self._tls_failed(err)
                return 0

        def _tls_failed(self, err: SSL.Error) -> None:
            """A TLS alert or protocol error (a refused renegotiation, a
            forged record): the channel can't go on. One log line, no
            traceback, no TLS shutdown on a broken session."""
            self.log(f"TLS error on the control connection: {tlschannel.error_text(err)}; closing",
                     logfun=logging.getLogger("pyftpdlib").warning)
            self._error = True
            self.close()

        def ftp_AUTH(self, line: str) -> None:
            plain = not isinstance(self.socket, SSL.Connection)
            super().ftp_AUTH(line)
            if plain and self._ssl_requested:
                self.discard_unread("AUTH")

        def ftp_PBSZ(self, line: str) -> None:
            size = line.strip()
            if isinstance(self.socket, SSL.Connection) and not (
                    size.isascii() and size.isdigit() and int(size) <= 0xFFFFFFFF):
                self.respond("501 PBSZ needs a decimal number below 2**32 (use 0).")
                return
            super().ftp_PBSZ(line)

        def ftp_PROT(self, line: str) -> None:
            if (line.upper() == "C" and self.tls_data_required and self._pbsz
                    and isinstance(self.socket, SSL.Connection)):
                self.respond("534 PROT C refused: data connections must be protected (PROT P).")
                return
            super().ftp_PROT(line)

        def ftp_CCC(self, line: str) -> None:
            self.respond("534 CCC refused: the control connection stays protected.")

else:  # pragma: no cover
    XxftpTLSHandler = None
