"""The 220 greeting and the 221 farewell, from files in the server root.

Rules that live here:

- ``ROOT/xxftp.welcome`` is the text of the 220 greeting and
  ``ROOT/xxftp.goodbye`` the text of the 221 reply to QUIT. They are read
  again for every connection, so an edit needs no restart.
- A missing, empty or unreadable file gives the default text.
- Multi-line text becomes an RFC 959 multi-line reply: every line but the
  last as ``CODE-text``, the last as ``CODE text``.
"""

from __future__ import annotations

import functools
import logging

from .config import shared_store

log = logging.getLogger("xxftpd.banners")

WELCOME = "xxftp.welcome"
GOODBYE = "xxftp.goodbye"
DEFAULT_WELCOME = "xxftpd ready."
DEFAULT_GOODBYE = "Goodbye."
MAX_BYTES = 16 * 1024


def read_text(root: str, name: str, default: str) -> str:
    """The banner text of ``ROOT/name``, or ``default``.

    Read through the root's stat-validated cache: one ``stat`` per
    connection while the file is unchanged, a fresh read once it is edited.
    """
    raw = shared_store(root).text(f"{root}/{name}")
    if raw is None:
        return default
    data = raw.encode("utf-8", "surrogateescape")[:MAX_BYTES]
    text = data.decode("utf-8", "replace").replace("\r", "").strip("\n")
    return text if text.strip() else default


@functools.lru_cache(maxsize=64)  # the same few banners, for every connection
def reply(code: int, text: str) -> str:
    """``text`` as a complete (possibly multi-line) reply, without final CRLF."""
    lines = [line.replace("\x00", "") for line in text.split("\n")] or [""]
    head = [f"{code}-{line}" for line in lines[:-1]]
    return "\r\n".join(head + [f"{code} {lines[-1]}"])
