"""XxftpHandler and XxftpTLSHandler: FTPHandler wired to XxftpFS.

What the handler adds to pyftpdlib's: greeting and farewell texts from the
server root as proper multi-line replies, an empty USER meaning
anonymous, and USER alone logging in a user whose home has no password.
Paths, mounts and permissions are the filesystem's business (XxftpFS),
which is why these handlers also work with pyftpdlib's DummyAuthorizer.
"""

from __future__ import annotations

import errno
import logging
import math
import re
import stat
import time
from concurrent.futures import Future

from pyftpdlib.authorizers import AuthenticationFailed, AuthorizerError
from pyftpdlib.filesystems import FilesystemError
from pyftpdlib.handlers import FTPHandler

from . import access, banners, hashpool, replies, xferlog
from .accounts import ANONYMOUS, canonical_name
from .datachannel import XxftpDTPHandler
from .filesystem import XxftpFS
from .loopwake import LoopWake
from .quota import LEASE, QuotaExceeded, Usage, usage_text
from .uploads import BROKEN, Upload


_BARE_CONTROLS = re.compile(r"\r(?!\n)|(?<!\r)\n|\x00")


def _escape(match: re.Match) -> str:
    return {"\r": "\\r", "\n": "\\n", "\x00": "\\0"}[match.group()]


def _commands(cmds: dict) -> dict:
    """pyftpdlib's command table, USER's argument optional, SITE QUOTA added."""
    cmds = dict(cmds)
    cmds["USER"] = dict(cmds["USER"], arg=None)
    cmds["SITE QUOTA"] = dict(perm=None, auth=True, arg=None,
                              help="Syntax: SITE QUOTA [<SP> path] (show the quota of a tree).")
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


class XxftpSession:
    """The behaviour shared by the plain and the TLS handler."""

    abstracted_fs = XxftpFS
    active_dtp = XxftpActiveDTP
    upload_mode = "atomic"
    xferlog_path: str | None = None
    allow_from: list = []
    deny_from: list = []
    bans: access.BanList | None = None
    _retr_ftp_path = ""

    def _refusal(self) -> str | None:
        """Why this client may not even be greeted, if it may not."""
        if not access.permitted(self.remote_ip, self.allow_from, self.deny_from):
            return "Connections from your address are not allowed."
        if self.bans is not None:
            left = self.bans.banned_for(self.remote_ip)
            if left:
                return f"Too many failed logins; try again in {math.ceil(left)} seconds."
        return None

    _banned = False

    def handle_auth_failed(self, msg: str, password: str) -> None:
        # Count the failure now, before the delayed 530 lets the client try
        # again (in another thread or process the count must be there first).
        if self.bans is not None and self.bans.failed(self.remote_ip):
            self._banned = True
        self._hold_commands()  # until the delayed 530 is out
        super().handle_auth_failed(msg, password)

    def on_login_failed(self, username: str, password: str) -> None:
        if self._banned:
            self.log(f"address {self.remote_ip} banned for {self.bans.ban_time:g} seconds after failed logins")
            self.close_when_done()
        super().on_login_failed(username, password)
        self._run_held_commands()

    def on_login(self, username: str) -> None:
        if self.bans is not None:
            self.bans.succeeded(self.remote_ip)
        super().on_login(username)

    def ftp_RETR(self, file: str):
        self._retr_ftp_path = self.fs.fs2ftp(file)  # the open file only knows its real path
        return super().ftp_RETR(file)

    def log_transfer(self, cmd, filename, receive, completed, elapsed, bytes) -> None:
        """One info line per transfer with the FTP path, and the xferlog line."""
        # The data channel may end after the control connection (and its fs) is gone.
        fs = self.fs
        path = (fs.fs2ftp(filename) if fs is not None else filename) if receive else self._retr_ftp_path
        result = "ok" if completed else "incomplete"
        self.log(f"{cmd} {path} {result} bytes={bytes} seconds={elapsed}")
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
        super().__init__(conn, server, ioloop)
        if not self.connected:
            return
        refusal = self._refusal()
        if refusal is not None:
            # Refused before the server counts or hands the connection on
            # (to a thread or a process): it sees an unconnected handler.
            try:
                conn.send(f"421 {refusal}\r\n".encode())
            except OSError:
                pass
            self.log(f"connection refused: {refusal}")
            self.close()

    def handle(self) -> None:
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

    def pre_process_command(self, line: str, cmd: str, arg: str) -> None:
        if self._held_commands is not None:  # a PASS is not answered yet
            self._held_commands.append((line, cmd, arg))
            return
        forget = getattr(self.fs, "forget", None)
        if forget is not None:  # resolutions are shared within one command only
            forget()
        super().pre_process_command(line, cmd, arg)

    def process_command(self, cmd: str, *args, **kwargs) -> None:
        """Answer from ``replies.RULES`` a path that is missing, of the
        wrong kind or refused, before the command runs.

        pyftpdlib answers some of these itself with other codes (501 to
        MLSD of a missing folder, which rclone does not read as "not
        found"); one table keeps every command's answer the same.
        """
        reply = self._path_reply(cmd, args[0] if args else "")
        if reply is None:
            super().process_command(cmd, *args, **kwargs)
            return
        if cmd == "RETR":
            self._restart_position = 0  # a refused RETR uses up its REST, as pyftpdlib's own refusal does
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
        self.del_channel()
        self._hold_commands()
        self._login_check = future
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
        if self._held_commands is not None and not self._closed:
            self._idler = self.ioloop.call_later(self.timeout, self.handle_timeout, _errback=self.handle_error)
            return
        super().handle_timeout()

    def _hold_commands(self) -> None:
        """Commands that come before PASS is answered (a client that sends
        several lines at once) wait for that answer, so every reply comes
        in order: a check in a worker thread or the delay of a failed login
        must not let the next line overtake it."""
        if self._held_commands is None:
            self._held_commands = []

    def _run_held_commands(self) -> None:
        held, self._held_commands = self._held_commands, None
        while held and not (self._closed or self._closing):
            self.pre_process_command(*held.pop(0))
            if self._held_commands is not None:  # that one waits for an answer in turn
                self._held_commands[:0] = held
                return

    def _login_verdict(self, done: Future, password: str) -> None:
        """On the loop's thread, once the check is done: answer, read on."""
        if self._login_check is done:
            self._login_check = None
        if self._closed or done.cancelled():
            return
        try:
            self.add_channel()
            if not self._closing:
                self._conclude_login(done.result, password)
        except Exception:
            self.handle_error()

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
    from pyftpdlib.handlers import TLS_FTPHandler

    from .tlschannel import XxftpTLSDTPHandler
except ImportError:  # pyopenssl missing: FTPS unavailable
    TLS_FTPHandler = None

if TLS_FTPHandler is not None:

    class XxftpTLSHandler(XxftpSession, TLS_FTPHandler):
        """TLS_FTPHandler (explicit FTPS) serving an xxftp tree."""

        proto_cmds = _commands(TLS_FTPHandler.proto_cmds)
        dtp_handler = XxftpTLSDTPHandler

else:  # pragma: no cover
    XxftpTLSHandler = None
