"""Users: who exists, where their home is, and how they log in.

Rules that live here:

- A user exists iff ``ROOT/<name>/`` is a folder and ``<name>`` matches
  ``[A-Za-z0-9_]+``; anything else (dots, slashes, spaces) is no user.
- ``anonymous`` (and an empty name) is the user of ``ROOT/anonymous/``.
  It accepts any password, unless its home holds a password file, which
  is then checked like any other user's.
- A home with ``.xxftp/password`` needs that password; a home without one
  logs in right after USER (xxftp behaviour).
- An unknown user is never told apart from a wrong password, and costs
  the same work (one modern hash) to refuse.
- With ``upgrade_hashes``, a legacy MD5 file is rewritten in the modern
  format after a successful login.
- A password file that can't be read refuses the login, and says why in
  the log.
"""

from __future__ import annotations

import logging
import os
import re
from typing import NamedTuple

from . import passwords
from .config import CONFIG_DIR

log = logging.getLogger("xxftpd.accounts")

USER_NAME = re.compile(r"[A-Za-z0-9_]+")
ANONYMOUS = "anonymous"


def canonical_name(name: str) -> str:
    """The account a USER argument means (an empty one means anonymous)."""
    return name or ANONYMOUS


class Login(NamedTuple):
    """The outcome of a login attempt."""

    ok: bool
    home: str | None = None
    reason: str = ""  # for the log only, never for the client


class Accounts:
    """The users of one server root.

    Password files are read through a small cache validated by ``stat``
    (one ``stat`` per check while a file is unchanged; an edit or a new
    file is seen at the next login). A file that can't be read is never
    cached: every login it refuses is logged.
    """

    def __init__(self, root: str, upgrade_hashes: bool = False) -> None:
        self.root = os.path.realpath(root)
        self.upgrade_hashes = upgrade_hashes
        self._prefix = self.root.rstrip("/") + "/"
        self._hashes: dict[str, tuple[tuple[int, ...], str]] = {}

    def home_of(self, name: str) -> str | None:
        """The home folder of ``name``, or None if there is no such user."""
        name = canonical_name(name)
        if not USER_NAME.fullmatch(name):
            return None
        home = self._prefix + name
        return home if os.path.isdir(home) else None

    def password_file(self, name: str) -> str:
        return f"{self._prefix}{canonical_name(name)}/{CONFIG_DIR}/password"

    def _stored(self, path: str) -> str | None:
        """The stored hash at ``path``; None if there is no file; OSError if unreadable."""
        try:
            st = os.stat(path)
        except (FileNotFoundError, NotADirectoryError):
            return None if not os.path.islink(path) else self._read(path)  # a dangling link is unreadable
        key = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)
        hit = self._hashes.get(path)
        if hit is not None and hit[0] == key:
            return hit[1]
        stored = self._read(path)
        if len(self._hashes) > 100_000:
            self._hashes.clear()
        self._hashes[path] = (key, stored)
        return stored

    @staticmethod
    def _read(path: str) -> str:
        with open(path, encoding="utf-8", errors="replace") as f:
            return f.read(4096)

    def needs_password(self, name: str) -> bool:
        """False only for an existing user whose home has no password file.

        Unknown users answer True so they get 331 like everybody else.
        """
        name = canonical_name(name)
        if name == ANONYMOUS or not USER_NAME.fullmatch(name):
            return True
        if os.path.lexists(self.password_file(name)):
            return True  # (and the home exists)
        return self.home_of(name) is None

    def _account(self, name: str, path: str) -> tuple[str | None, str | None]:
        """(home, stored hash) of a user whose password file would be
        ``path``; (None, None) if there is no such user.

        OSError if the password file can't be read. A password file that
        exists implies its home, which then needs no check of its own.
        """
        if not USER_NAME.fullmatch(name):
            return None, None
        stored = self._stored(path)
        if stored is not None:
            return self._prefix + name, stored
        return self.home_of(name), None

    def login(self, name: str, password: str, quick: bool = False) -> Login | None:
        """The verdict on a login. With ``quick``, None instead of a check
        that takes real time (a modern hash, an unknown user, an upgrade),
        so that the caller can run it off the event loop."""
        name = canonical_name(name)
        path = self.password_file(name)
        try:
            home, stored = self._account(name, path)
        except OSError as err:
            log.error("%s: cannot read password file: %s; login refused", path, err.strerror)
            return Login(False, reason=f"unreadable password file {path}")
        if home is None:
            if quick:
                return None
            passwords.waste_time(password)  # the same work as a real check
            return Login(False, reason="no such user")
        if stored is None:
            return Login(True, home)
        found = passwords.kind(stored)
        if quick and (found != "md5" or self.upgrade_hashes):
            return None
        if found == "unknown":
            log.error("%s: unrecognised password format; login refused", path)
        if passwords.verify(stored, password):
            if self.upgrade_hashes and found == "md5":
                self._upgrade(path, password)
            return Login(True, home)
        return Login(False, reason="wrong password")

    def _upgrade(self, path: str, password: str) -> None:
        try:
            passwords.write(path, passwords.scrypt_hash(password))
        except OSError as err:
            log.warning("%s: cannot upgrade the password hash: %s", path, err.strerror)
        else:
            log.info("%s: password hash upgraded from MD5 to scrypt", path)
