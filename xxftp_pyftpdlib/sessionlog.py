"""SessionLog: pyftpdlib's session logging, with the fields of each line.

pyftpdlib logs a session's lines as text behind an ``ip:port-[user]``
prefix. This mixin logs the very same text, and hands each record the
fields ``jsonlog`` writes in JSON mode: the session's id, client and
user, the event, and for a reply, command or transfer its code, command
and path. It overrides pyftpdlib's public logging wrappers (``log``,
``logline``, ``logerror``, ``log_cmd``) with their own text, and
``respond`` to know the code of the reply being logged.

What it must not know: the JSON format (``jsonlog``), the tree, uploads.
"""

from __future__ import annotations

import logging

from . import jsonlog
from .jsonlog import event_of, fields, new_session_id

__all__ = ["SessionLog"]

logger = logging.getLogger("pyftpdlib")


class SessionLog:
    """Mixed in before pyftpdlib's FTPHandler (see the module's opening)."""

    _replying: int | None = None  # the code of the reply being sent, while it is logged
    _login_tried: str | None = None  # the user name of the last failed login (pyftpdlib forgets it)
    last_reply_code: int | None = None  # the code of the last reply sent

    @property
    def session_id(self) -> str:
        """A short id, the same for every line of this control connection."""
        sid = self.__dict__.get("_session_id")
        if sid is None:
            sid = self.__dict__["_session_id"] = new_session_id()
        return sid

    def log(self, msg: str, logfun=logger.info, **values) -> None:
        """pyftpdlib's line (prefix and text) with its fields (when a JSON
        log shows them)."""
        prefix = self.log_prefix % self.__dict__
        if not jsonlog.in_use():
            logfun(f"{prefix} {msg}")
            return
        if "event" not in values:
            values["event"] = "reply" if self._replying is not None else event_of(msg)
        if self._replying is not None:
            values.setdefault("code", self._replying)
        elif values["event"] in ("login", "login_failed"):  # logged right after its 230 or 530
            values.setdefault("code", self.last_reply_code)
        line = dict(message=msg, session=self.session_id, client=getattr(self, "remote_ip", None),
                    client_port=getattr(self, "remote_port", None),
                    user=getattr(self, "username", None) or
                    (self._login_tried if values["event"] == "login_failed" else None))
        line.update(values)
        logfun(f"{prefix} {msg}", extra=fields(**line))

    def handle_auth_failed(self, msg: str, password: str) -> None:
        self._login_tried = self.username
        super().handle_auth_failed(msg, password)

    def logline(self, msg: str, logfun=logger.debug) -> None:
        if logger.isEnabledFor(logging.DEBUG):
            self.log(msg, logfun, **({"event": "received"} if msg.startswith("<-") else {}))

    def logerror(self, msg: str) -> None:
        self.log(msg, logger.error)

    def respond(self, resp: str, logfun=logger.debug) -> None:
        code = resp[:3]
        self._replying = int(code) if code.isdigit() else None
        try:
            super().respond(resp, logfun=logfun)
        finally:
            self.last_reply_code, self._replying = self._replying, None

    def log_cmd(self, cmd: str, arg: str, respcode: int, respstr: str) -> None:
        """pyftpdlib's line for the commands it logs at info, with the
        command, its FTP path and the reply code as fields."""
        if cmd not in self.log_cmds_list or logger.isEnabledFor(logging.DEBUG):
            return
        line = f"{cmd.strip()} {arg.strip()} {respcode}"
        if str(respcode)[0] in ("4", "5"):
            line += f" {respstr!r}"
        self.log(line, event="command", command=cmd, path=self.ftp_path_of(cmd, arg), code=respcode)

    def ftp_path_of(self, cmd: str, arg: str) -> str:
        """The FTP path a logged command named (pyftpdlib hands commands
        with a permission the real path)."""
        fs = getattr(self, "fs", None)
        if fs is None or not self.proto_cmds.get(cmd, {}).get("perm") or not arg.startswith("/"):
            return arg
        try:
            return fs.fs2ftp(arg)
        except Exception:  # a path outside the tree is logged as given
            return arg
