"""The second factor: time-based one-time codes (RFC 6238) after the password.

Rules that live here:

- A home whose ``.xxftp/totp`` holds a secret logs in with the password
  followed at once by the code, in one PASS (``PASS <password><code>``,
  as SFTPGo does for FTP): the last ``DIGITS`` characters are the code.
- The secret is base32, on the first content line of the file; spaces
  (``JBSW Y3DP ...``), ``=`` padding and letter case are ignored. A
  secret that is not base32 or shorter than ``MIN_BITS`` (RFC 4226's
  floor) is invalid: every login of the home is refused.
- Codes: ``STEP``-second steps from the Unix epoch, HMAC-SHA1, ``DIGITS``
  digits (the settings every authenticator app uses by default). The
  step of the server's clock and ``DRIFT`` step either side are
  accepted: a phone whose clock is 30 s off still logs in.
- A code is usable once: a login is accepted only for a step later than
  the last step accepted for that user (``totpstate`` keeps it); an
  older code after a newer one is refused too.
- Checking a code compares it in constant time against the code of every
  accepted step, whichever matches: a wrong code costs what a right one
  does. A login without a second factor does the same work on a dummy
  secret (``check`` with ``None``).

This module knows nothing of files, sockets or FTP; ``pyotp`` computes
the codes (the ``totp`` extra); without it ``available()`` is False.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import os
import re
from urllib.parse import quote

try:
    import pyotp
except ImportError:  # the optional [totp] extra
    pyotp = None

__all__ = ["DIGITS", "DRIFT", "ISSUER", "MIN_BITS", "STEP", "available", "check", "new_secret",
           "normalize", "split", "uri"]

STEP = 30  # seconds a code lasts
DIGITS = 6
DRIFT = 1  # steps accepted either side of the server's own
MIN_BITS = 128
ISSUER = "xxftpd"
_BASE32 = re.compile(r"[A-Z2-7]+")
_DUMMY = "A" * 32  # the secret a login without a second factor is checked against


def available() -> bool:
    """Whether codes can be checked here (pyotp is installed)."""
    return pyotp is not None


def normalize(text: str) -> str:
    """The canonical form of a secret (upper case, no spaces, no padding);
    ValueError saying what is wrong with it."""
    secret = "".join(text.split()).upper().rstrip("=")
    if not secret:
        raise ValueError("no secret")
    if not _BASE32.fullmatch(secret):
        raise ValueError("the secret is not base32 (letters A-Z and digits 2-7)")
    try:
        raw = base64.b32decode(secret + "=" * (-len(secret) % 8))
    except (binascii.Error, ValueError):
        raise ValueError("the secret is not valid base32 (a length no encoder writes)") from None
    if len(raw) * 8 < MIN_BITS:
        raise ValueError(f"the secret has {len(raw) * 8} bits; at least {MIN_BITS} are needed")
    return secret


def split(password: str) -> tuple[str, str]:
    """(password, code) of a PASS argument that carries a code at its end."""
    if len(password) < DIGITS:
        return password, ""
    return password[:-DIGITS], password[-DIGITS:]


def check(secret: str | None, code: str, now: float) -> int | None:
    """The step ``code`` is the code of (at time ``now``), or None.

    Every accepted step is computed and compared, in constant time,
    whether or not one matched already; ``secret`` None checks against
    a dummy secret and never matches (a login without a second factor
    does the same work). None without pyotp.
    """
    if pyotp is None:
        return None
    otp = pyotp.TOTP(secret or _DUMMY, digits=DIGITS, interval=STEP)
    given = code.encode("utf-8", "surrogateescape")
    current = int(now // STEP)
    found = None
    for step in range(current - DRIFT, current + DRIFT + 1):
        if hmac.compare_digest(otp.generate_otp(step).encode(), given) and found is None:
            found = step
    return found if secret is not None else None


def new_secret() -> str:
    """A fresh secret of 160 bits (RFC 4226's recommendation), base32."""
    return base64.b32encode(os.urandom(20)).decode()


def uri(secret: str, account: str) -> str:
    """The ``otpauth://`` URI authenticator apps read (as a QR code)."""
    label = quote(f"{ISSUER}:{account}", safe=":@")
    return f"otpauth://totp/{label}?secret={secret}&issuer={ISSUER}&algorithm=SHA1&digits={DIGITS}&period={STEP}"
