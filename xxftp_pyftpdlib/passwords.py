"""Password hashes as stored in ``<home>/.xxftp/password``.

Rules that live here:

- Two formats are accepted. The legacy xxftp one is the MD5 hex digest of
  the password, matched ignoring surrounding whitespace and letter case.
  The modern one is self-describing and salted:
  ``$scrypt$ln=14,r=8,p=1$<salt>$<hash>`` (base64, ``hashlib.scrypt``).
- New hashes are written in the modern format; MD5 only on request, for
  xxftp compatibility.
- Every comparison of secrets is constant-time (``hmac.compare_digest``).
- Content in no known format matches no password; scrypt parameters
  outside sane bounds are refused rather than computed.
- A login's check (``check``) costs one modern hash of the default
  parameters whatever is stored: an MD5 digest, content in no known
  format, a hash that can't be decoded, or nothing at all (no such user,
  a file that can't be read). Its time tells nothing of what was stored.
  A scrypt hash written with other parameters costs what they say
  (``passwd`` writes the defaults only).
"""

from __future__ import annotations

import base64
import binascii
import functools
import hashlib
import hmac
import os
import re
import tempfile

_MD5_HEX = re.compile(r"[0-9a-f]{32}")
_SCRYPT = re.compile(r"\$scrypt\$ln=(\d{1,2}),r=(\d{1,2}),p=(\d{1,2})\$([A-Za-z0-9+/=]+)\$([A-Za-z0-9+/=]+)")
LN, R, P = 14, 8, 1  # 16 MiB and ~50 ms per hash on a 2-core machine
_MAXMEM = 256 * 1024 * 1024


def _encode(password: str) -> bytes:
    # Command lines are decoded with surrogateescape: give back the bytes.
    return password.encode("utf-8", "surrogateescape")


@functools.lru_cache(maxsize=1024)
def kind(stored: str) -> str:
    """The format of a stored hash: ``md5``, ``scrypt`` or ``unknown``
    (remembered: every login asks, and the stored hashes are few)."""
    text = stored.strip()
    if _MD5_HEX.fullmatch(text.lower()):
        return "md5"
    match = _SCRYPT.fullmatch(text)
    if match:
        ln, r, p = (int(g) for g in match.groups()[:3])
        # sane bounds, and within the memory one check may use (128 * r * 2**ln bytes)
        if 1 <= ln <= 20 and 1 <= r <= 32 and 1 <= p <= 16 and 129 * r * (1 << ln) <= _MAXMEM:
            return "scrypt"
    return "unknown"


def _scrypt(password: str, salt: bytes, ln: int, r: int, p: int, size: int) -> bytes:
    return hashlib.scrypt(_encode(password), salt=salt, n=1 << ln, r=r, p=p, maxmem=_MAXMEM, dklen=size)


def _verify_scrypt(text: str, password: str) -> bool | None:
    """True or False for a hash in the modern format; None if it can't be
    computed (bad base64, a length or parameters the library refuses)."""
    ln, r, p, salt64, hash64 = _SCRYPT.fullmatch(text).groups()
    try:
        salt, expected = base64.b64decode(salt64), base64.b64decode(hash64)
    except (binascii.Error, ValueError):
        return None
    if not 16 <= len(expected) <= 64:
        return None
    try:
        actual = _scrypt(password, salt, int(ln), int(r), int(p), len(expected))
    except (ValueError, MemoryError):  # parameters the library refuses after all
        return None
    return hmac.compare_digest(expected, actual)


def _verify_md5(text: str, password: str) -> bool:
    actual = hashlib.md5(_encode(password)).hexdigest().encode()
    return hmac.compare_digest(text.lower().encode(), actual)


def verify(stored: str, password: str) -> bool:
    """True if ``password`` matches the stored hash (an MD5 one at once:
    for logins, see ``check``)."""
    text = stored.strip()
    found = kind(text)
    if found == "md5":
        return _verify_md5(text, password)
    if found == "scrypt":
        return bool(_verify_scrypt(text, password))
    return False


def check(stored: str | None, password: str, modern: bool = True) -> bool:
    """``verify`` at one fixed cost, whatever ``stored`` is (None: there is
    nothing to check against, the login is refused).

    The time a login takes must not tell a real user from an unknown one,
    nor one password format from another. ``modern``: the tree holds a
    modern hash, and every path does the work of one scrypt of the default
    parameters (a stored scrypt hash is that work); else every path does
    the work of one MD5 (a tree of xxftp's legacy hashes stays as fast as
    it was). A scrypt hash is always checked as such.
    """
    text = stored.strip() if stored is not None else ""
    found = kind(text) if stored is not None else "unknown"
    if found == "scrypt":
        matched = _verify_scrypt(text, password)
        if matched is not None:
            return matched
        waste_time(password)
        return False
    if modern:
        waste_time(password)
    # the same MD5 and compare for every path; against a non-digest, never equal
    return _verify_md5(text if found == "md5" else "-" * 32, password) and found == "md5"


def waste_time(password: str) -> None:
    """The work of one modern check, for answers that must not be faster."""
    _scrypt(password, b"\0" * 16, LN, R, P, 32)


def scrypt_hash(password: str) -> str:
    """The modern format of ``password``, with a fresh salt."""
    salt = os.urandom(16)
    digest = _scrypt(password, salt, LN, R, P, 32)
    b64 = lambda data: base64.b64encode(data).decode()  # noqa: E731
    return f"$scrypt$ln={LN},r={R},p={P}${b64(salt)}${b64(digest)}"


def md5_hex(password: str) -> str:
    """The legacy xxftp format of ``password``."""
    return hashlib.md5(_encode(password)).hexdigest()


def write(path: str, stored: str, replace: bool = True) -> None:
    """Write a password file (or another small secret) atomically, mode 0600.

    The temporary is a new file of a unique name (``O_EXCL``, no link
    followed): logins upgrading the same hash at once, in threads or
    processes, each replace the file whole, and nothing already at a
    guessed name is written through. ``replace`` False: FileExistsError
    rather than replace a file already there (the new one is linked in).
    """
    folder = os.path.dirname(path)
    os.makedirs(folder, mode=0o700, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", suffix=".tmp", dir=folder)
    try:
        try:
            os.write(fd, (stored + "\n").encode())
            os.fchmod(fd, 0o600)
            os.fsync(fd)
        finally:
            os.close(fd)
        if replace:
            os.replace(tmp, path)
        else:
            os.link(tmp, path)
            os.unlink(tmp)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
