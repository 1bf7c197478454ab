"""Command lines on the control connection: one line, one reply.

Rules that live here:

- A line ends at CRLF. A line longer than ``MAX_LINE`` bytes is kept to no
  byte beyond the limit (memory stays bounded however long it grows) and,
  when its CRLF comes, is one over-long line: one ``500`` reply, not one
  per 2 KiB as pyftpdlib gives, nor a second reply for its tail.
- Bytes read after ``AUTH TLS`` (or any command that switches the channel
  to TLS) but before the handshake are plaintext an attacker in the
  middle could have added; they are thrown away unread, never executed,
  and the count is logged.

This module knows nothing of sockets, replies or pyftpdlib.
"""

from __future__ import annotations

__all__ = ["MAX_LINE", "TOO_LONG", "LineBuffer"]

MAX_LINE = 2048  # bytes of one command line, without its CRLF (pyftpdlib's limit)
TOO_LONG = "500 Command line too long."


class LineBuffer:
    """The bytes of the command line being received."""

    __slots__ = ("_parts", "_size", "overlong")

    def __init__(self) -> None:
        self._parts: list[bytes] = []
        self._size = 0
        self.overlong = False

    def add(self, data: bytes) -> None:
        """Take bytes of the current line (never its CRLF)."""
        if self.overlong:
            return
        self._size += len(data)
        if self._size > MAX_LINE:
            self._parts = []
            self.overlong = True
        else:
            self._parts.append(data)

    def take(self) -> bytes | None:
        """The finished line (its CRLF came), or None if it was too long; the buffer starts afresh."""
        line = None if self.overlong else b"".join(self._parts)
        self.clear()
        return line

    def clear(self) -> int:
        """Forget the line received so far; how many of its bytes were kept."""
        size = 0 if self.overlong else self._size
        self._parts = []
        self._size = 0
        self.overlong = False
        return size
