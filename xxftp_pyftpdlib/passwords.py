"""Password hashes as stored in ``<home>/.xxftp/password``.

Rules that live here:

- The legacy xxftp format is the MD5 hex digest of the password. It is
  matched ignoring surrounding whitespace and letter case.
- Every comparison of secrets is constant-time (``hmac.compare_digest``).
- A file whose content is no known format matches no password.
"""

from __future__ import annotations

import hashlib
import hmac
import re

_MD5_HEX = re.compile(r"[0-9a-f]{32}")


def _encode(password: str) -> bytes:
    # Command lines are decoded with surrogateescape: give back the bytes.
    return password.encode("utf-8", "surrogateescape")


def kind(stored: str) -> str:
    """The format of a stored hash: ``md5`` or ``unknown``."""
    return "md5" if _MD5_HEX.fullmatch(stored.strip().lower()) else "unknown"


def verify(stored: str, password: str) -> bool:
    """True if ``password`` matches the stored hash."""
    expected = stored.strip().lower()
    actual = hashlib.md5(_encode(password)).hexdigest()
    if kind(expected) != "md5":
        # Same work as a real check, then no match.
        hmac.compare_digest(actual.encode(), actual.encode())
        return False
    return hmac.compare_digest(expected.encode(), actual.encode())


def md5_hex(password: str) -> str:
    """The legacy xxftp format of ``password``."""
    return hashlib.md5(_encode(password)).hexdigest()
