"""XxftpHandler and XxftpTLSHandler: FTPHandler wired to XxftpFS.

What the handler adds to pyftpdlib's: greeting and farewell texts from the
server root as proper multi-line replies, an empty USER meaning
anonymous, and USER alone logging in a user whose home has no password.
Paths, mounts and permissions are the filesystem's business (XxftpFS),
which is why these handlers also work with pyftpdlib's DummyAuthorizer.
"""

from __future__ import annotations

from pyftpdlib.filesystems import FilesystemError
from pyftpdlib.handlers import FTPHandler

from . import banners
from .accounts import canonical_name
from .filesystem import XxftpFS


def _optional_user(cmds: dict) -> dict:
    """pyftpdlib's command table with USER's argument made optional."""
    cmds = dict(cmds)
    cmds["USER"] = dict(cmds["USER"], arg=None)
    return cmds


class XxftpSession:
    """The behaviour shared by the plain and the TLS handler."""

    abstracted_fs = XxftpFS

    def _text(self, method: str, default: str) -> str:
        read = getattr(self.authorizer, method, None)
        return read() if read is not None else default

    def handle(self) -> None:
        self.on_connect()
        if not self._closed and not self._closing:
            self.respond(banners.reply(220, self._text("welcome", self.banner)))

    def ftp_USER(self, line: str) -> None:
        name = canonical_name(line)
        needs_password = getattr(self.authorizer, "needs_password", None)
        if needs_password is None or needs_password(name):
            super().ftp_USER(name)
            return
        if self.authenticated:
            self.flush_account()
        self.username = name
        self.ftp_PASS("")

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
            self.respond(f"550 {err}.")
            return True
        return False

    def ftp_RNFR(self, path: str):
        if self._refused("check_rename_source", path):
            return None
        return super().ftp_RNFR(path)

    def ftp_STOU(self, line: str):
        if not self._restart_position and self._refused("check_unique_upload", line):
            return None
        return super().ftp_STOU(line)

    def ftp_QUIT(self, line: str) -> None:
        default = banners.DEFAULT_GOODBYE
        if self.authenticated:
            default = self.authorizer.get_msg_quit(self.username)
        self.respond(banners.reply(221, self._text("goodbye", default)))
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

    proto_cmds = _optional_user(FTPHandler.proto_cmds)


try:
    from pyftpdlib.handlers import TLS_FTPHandler
except ImportError:  # pyopenssl missing: FTPS unavailable
    TLS_FTPHandler = None

if TLS_FTPHandler is not None:

    class XxftpTLSHandler(XxftpSession, TLS_FTPHandler):
        """TLS_FTPHandler (explicit FTPS) serving an xxftp tree."""

        proto_cmds = _optional_user(TLS_FTPHandler.proto_cmds)

else:  # pragma: no cover
    XxftpTLSHandler = None
