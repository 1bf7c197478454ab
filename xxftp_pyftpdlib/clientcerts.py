"""Client certificates as a way to log in: the ``.xxftp/certs`` rules.

Rules that live here:

- A home's ``.xxftp/certs`` lists SHA-256 fingerprints of client
  certificates, one a line: 64 hex digits, with or without colons
  between the bytes, in any case. Blank lines and ``#`` comments are
  ignored. A line ``and-password`` makes the certificate a second
  factor: a listed certificate AND the password are needed.
- Without ``and-password``, a listed certificate logs the user in alone
  (``CERTIFICATE``: ``232`` at USER, no PASS); the password still works
  on its own too.
- With ``and-password``, a login needs the password and a listed
  certificate; without one it is refused whatever the password
  (``REFUSED``).
- A certificate not listed for the user gives nothing: the usual login
  (``PASSWORD``). A certificate listed for alice gives nothing to bob.
- A malformed line is reported and skipped; because the skipped line may
  have been a mistyped ``and-password``, the file then also demands the
  password (a certificate alone never logs in on a file with a bad
  line). A file that can't be read or is not trusted (``UNREADABLE``)
  lets nobody in: neither the certificate alone nor the password alone.
- Fingerprints are compared in constant time, with every listed one.

This module knows nothing of TLS connections, sockets or pyftpdlib: it is
handed the fingerprint of the certificate the control connection
presented (already verified against ``--tls-client-ca``), or None.
"""

from __future__ import annotations

import enum
import hashlib
import hmac
import re
from dataclasses import dataclass

__all__ = ["AND_PASSWORD", "CertRule", "NO_RULE", "UNREADABLE", "Way", "fingerprint", "parse_certs",
           "parse_fingerprint", "way"]

AND_PASSWORD = "and-password"
_HEX = re.compile(r"[0-9a-f]{64}")
_COLONS = re.compile(r"[0-9a-f]{2}(?::[0-9a-f]{2}){31}")


@dataclass(frozen=True)
class CertRule:
    """What a ``certs`` file says: the listed fingerprints (32 bytes each)
    and whether the password is needed as well."""

    fingerprints: tuple[bytes, ...] = ()
    and_password: bool = False


NO_RULE = None  # a home without a certs file: logins as usual
UNREADABLE = CertRule((), and_password=True)  # the safe side: nobody logs in


class Way(enum.Enum):
    """How a user may log in, given the certificate presented."""

    CERTIFICATE = "the certificate alone"
    PASSWORD = "the password, as usual"
    REFUSED = "refused: a listed certificate and the password are needed"


def fingerprint(der: bytes) -> bytes:
    """The SHA-256 fingerprint of a certificate in DER form."""
    return hashlib.sha256(der).digest()


def parse_fingerprint(text: str) -> bytes | None:
    """32 bytes from ``AB:CD:...`` or ``abcd...`` (any case); None if malformed."""
    text = text.strip().lower()
    if _COLONS.fullmatch(text):
        text = text.replace(":", "")
    return bytes.fromhex(text) if _HEX.fullmatch(text) else None


def parse_certs(text: str, path: str):
    """The ``CertRule`` of a certs file, with a Problem per bad line."""
    from .config import Parsed, Problem  # config imports nothing from here

    found: list[bytes] = []
    and_password = False
    problems = []
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        if line.lower() == AND_PASSWORD:
            and_password = True
            continue
        value = parse_fingerprint(line)
        if value is None:
            problems.append(Problem(path, number, f"not a SHA-256 fingerprint nor {AND_PASSWORD!r}: {line[:80]!r} "
                                                  "(skipped; the password is needed as well)"))
        elif value not in found:
            found.append(value)
    return Parsed(CertRule(tuple(found), and_password or bool(problems)), tuple(problems))


def _listed(rule: CertRule, presented: bytes | None) -> bool:
    """Whether ``presented`` is among the listed fingerprints: compared with
    each of them, in constant time, without stopping at a match."""
    if presented is None:
        return False
    hit = False
    for listed in rule.fingerprints:
        hit |= hmac.compare_digest(listed, presented)
    return hit


def way(rule: CertRule | None, presented: bytes | None) -> Way:
    """How a user with ``rule`` (None: no certs file) may log in, given the
    fingerprint of the certificate presented (None: none)."""
    if rule is None:
        return Way.PASSWORD
    listed = _listed(rule, presented)
    if rule.and_password:
        return Way.PASSWORD if listed else Way.REFUSED
    return Way.CERTIFICATE if listed else Way.PASSWORD
