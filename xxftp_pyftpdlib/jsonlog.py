"""``--log-format json``: every log line as one JSON object, for log shippers.

Rules that live here:

- A record is one JSON object on one line, whatever it holds (a message
  with newlines, a traceback, bytes that are not UTF-8): ``json.dumps``
  escapes them all. Every record has ``time`` (UTC, ISO 8601 with
  milliseconds), ``level``, ``logger``, ``event`` and ``message``.
- Fields that don't apply to a record are left out, never null. Those a
  session adds: ``session`` (a short id, the same for every line of one
  control connection), ``client`` (its IP address), ``client_port``,
  ``user`` (once given). A command adds ``command``, ``path`` and
  ``code`` (the reply code); a transfer adds ``command``, ``path``,
  ``bytes``, ``seconds``, ``code`` and ``completed``; a hook adds
  ``hook``, ``program``, ``argument`` and its ``status``. A traceback is the ``traceback`` field.
- ``event`` names the kind of record: ``connect``, ``refused`` (a
  connection answered 421 at once), ``disconnect``, ``login``,
  ``login_failed``, ``command``, ``received``, ``reply``, ``transfer``,
  ``hook``; ``log`` for any other line (pyftpdlib's, the server's).
- The text format is unchanged: the fields travel with each record
  (``FIELDS``) and only this formatter reads them.

What this module must not know: sockets, FTP sessions, pyftpdlib (its
handlers fill the fields through ``SessionLog`` in ``handler.py``'s base).
"""

from __future__ import annotations

import json
import logging
import secrets
import time

__all__ = ["FIELDS", "FORMATS", "JsonFormatter", "event_of", "fields", "new_session_id"]

FORMATS = ("text", "json")
FIELDS = "xxftpd_fields"  # the attribute of a LogRecord holding its fields

# pyftpdlib's own session lines, which carry no event: the start of each
# text it logs, and the event it stands for.
_PYFTPDLIB_EVENTS = (
    ("FTP session opened", "connect"),
    ("FTP session closed", "disconnect"),
)
_PYFTPDLIB_LOGINS = ((" logged in.", "login"), (" failed login.", "login_failed"))


def new_session_id() -> str:
    """A short id for one control connection: 8 hex digits, unguessable,
    unique enough across workers to follow one session in a log."""
    return secrets.token_hex(4)


def fields(**values) -> dict:
    """``extra=`` for a logging call: these fields in the JSON line."""
    return {FIELDS: values}


def event_of(message: str) -> str:
    """The event of a session line that pyftpdlib logs as plain text."""
    for start, event in _PYFTPDLIB_EVENTS:
        if message.startswith(start):
            return event
    if message.startswith("USER "):
        for end, event in _PYFTPDLIB_LOGINS:
            if message.endswith(end):
                return event
    return "log"


_in_use = False  # a JsonFormatter exists in this process: sessions attach their fields


def in_use() -> bool:
    """Whether log lines need their fields (only the JSON format shows
    them: the text format is spared building them, a few µs a line)."""
    return _in_use


class JsonFormatter(logging.Formatter):
    """One JSON object per record (see the module's rules)."""

    def __init__(self, *args, **kwargs) -> None:
        global _in_use
        super().__init__(*args, **kwargs)
        _in_use = True

    def format(self, record: logging.LogRecord) -> str:
        extra = getattr(record, FIELDS, None) or {}
        out = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
                    + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "event": extra.get("event", "log"),
        }
        try:
            message = record.getMessage()
        except Exception as err:  # a bad %-format from a caller: still one line
            message = f"{record.msg!r} (unformattable: {err})"
        out["message"] = extra.get("message", message)
        for key, value in extra.items():
            if key not in ("event", "message") and value is not None and value != "":
                out[key] = value
        if record.exc_info:
            out["traceback"] = self.formatException(record.exc_info)
        if record.stack_info:
            out["stack"] = self.formatStack(record.stack_info)
        return json.dumps(out, default=str)  # ASCII: never a line the file cannot encode
