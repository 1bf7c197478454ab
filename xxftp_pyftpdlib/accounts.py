"""Users: who exists, where their home is, and how they log in.

Rules that live here:

- A user exists iff ``ROOT/<name>/`` is a folder and ``<name>`` matches
  ``[A-Za-z0-9_]+``; anything else (dots, slashes, spaces) is no user.
- ``anonymous`` (and an empty name) is the user of ``ROOT/anonymous/``.
  It accepts any password, unless its home holds a password file, which
  is then checked like any other user's.
- A home with ``.xxftp/password`` needs that password; a home without one
  logs in right after USER (xxftp behaviour, visible to anyone: 230 at
  USER instead of 331).
- An unknown user is never told apart from a wrong password: USER answers
  331 to both, and every login that needs a check (a password file of any
  format, readable or not, or no such user) costs the same work, done by
  ``login`` (``passwords.check``): one modern hash when the tree holds a
  modern hash (or hashes are upgraded), else one MD5. What the tree holds
  is read from every home's password file at the first login and again
  at the first login ``RESCAN`` seconds after, and any modern hash a login
  reads counts at once. Only a login that needs no password
  (``open_login``) is decided without it.
- With ``upgrade_hashes``, a legacy MD5 file is rewritten in the modern
  format after a successful login.
- A password file that can't be read refuses the login, and says why in
  the log. So does one not trusted (``config.distrust``: owned by
  someone other than root or the server's user, or writable by others,
  or in such a ``.xxftp`` folder), and such a folder without a password
  file: a user who could write it must not choose their own password or
  none. A ``.xxftp`` that is a file, not a folder, refuses every login
  of its home too.
- A home with ``.xxftp/totp`` also needs a one-time code (``totp``):
  ``PASS <password><code>``. The code is checked in the same check as
  the password, and every login that needs a check does the same code
  work (on a dummy secret without a totp file): an unknown user, a wrong
  password and a wrong code take the same time. A code is recorded as
  used (``totpstate``) only once both password and code are right and
  the caller's other rules (``.xxftp/hosts``, ``.xxftp/certs``) let the
  login in: a refused login never spends a code. A
  home with a totp file needs a password even without a password file
  (then PASS is the code alone).
"""

from __future__ import annotations

import errno
import logging
import math
import os
import re
import stat
import time
from typing import Callable, NamedTuple

from . import passwords, totp, totpstate
from .config import CONFIG_DIR, distrust, distrust_folder, shared_store

log = logging.getLogger("xxftpd.accounts")

USER_NAME = re.compile(r"[A-Za-z0-9_]+")
ANONYMOUS = "anonymous"
RESCAN = 60.0  # seconds between two looks at the formats of the tree's password files


def canonical_name(name: str) -> str:
    """The account a USER argument means (an empty one means anonymous)."""
    return name or ANONYMOUS


class Login(NamedTuple):
    """The outcome of a login attempt."""

    ok: bool
    home: str | None = None
    reason: str = ""  # for the log only, never for the client
    kind: str = "none"  # of the password file: none, md5, scrypt, unknown; no_user, error (metrics)


def _check_folder(path: str) -> None:
    """PermissionError if the ``.xxftp`` folder of ``path`` exists and is
    not trusted, or is not a folder (its settings, password included,
    would all be missing: USER alone would log in with every right)."""
    try:
        st = os.lstat(os.path.dirname(path))
    except OSError:
        return
    if not stat.S_ISDIR(st.st_mode):
        raise PermissionError(errno.ENOTDIR, f"{CONFIG_DIR} is not a folder")
    why = distrust_folder(st)
    if why:
        raise PermissionError(errno.EPERM, f"its folder is not trusted ({why})")


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
        self._modern = upgrade_hashes
        self._surveyed = -math.inf

    def _modern_hashes(self) -> bool:
        """Whether the tree holds a modern hash: what a check must cost."""
        now = time.monotonic()
        if now - self._surveyed >= RESCAN:
            self._surveyed = now
            self._modern = self.upgrade_hashes or self._any_modern()
        return self._modern

    def _any_modern(self) -> bool:
        """True if any home's password file holds a modern hash."""
        try:
            entries = list(os.scandir(self.root))
        except OSError:
            return True  # can't tell: the safe cost
        for entry in entries:
            if not USER_NAME.fullmatch(entry.name):
                continue
            try:
                stored = self._stored(self.password_file(entry.name))
            except OSError:
                continue
            if stored is not None and passwords.kind(stored) == "scrypt":
                return True
        return False

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
        """The stored hash at ``path``; None if there is no file; OSError if
        unreadable or not trusted."""
        _check_folder(path)
        try:
            st = os.stat(path)
        except (FileNotFoundError, NotADirectoryError):
            return None if not os.path.islink(path) else self._read(path)  # a dangling link is unreadable
        why = distrust(st)
        if why:
            raise PermissionError(errno.EPERM, f"not trusted ({why})")
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

    def _open_home(self, name: str) -> str | None:
        """The home of ``name`` if it certainly has no password file.

        A password file that can't even be looked at (a folder on its
        path that can't be searched) counts as one: the check refuses it
        and says why.
        """
        if not USER_NAME.fullmatch(name):
            return None
        path = self.password_file(name)
        try:
            os.lstat(path)
        except (FileNotFoundError, NotADirectoryError):
            try:
                _check_folder(path)
            except OSError:
                return None  # an untrusted .xxftp folder: ``login`` refuses and says why
            if os.path.lexists(os.path.join(os.path.dirname(path), "totp")):
                return None  # the code is its password
            return self.home_of(name)
        except OSError:
            return None
        return None

    def needs_password(self, name: str) -> bool:
        """False only for an existing user whose home has no password file.

        Unknown users answer True so they get 331 like everybody else.
        """
        name = canonical_name(name)
        return name == ANONYMOUS or self._open_home(name) is None

    def open_login(self, name: str) -> Login | None:
        """The verdict on a login that needs no password (a home without
        a password file: ``anonymous``, or a user whom USER alone logs in);
        None if a password must be checked: ``login``, off the event loop.

        It asks only whether a password file is there, which costs the
        same for a real user as for an unknown one.
        """
        home = self._open_home(canonical_name(name))
        return Login(True, home) if home is not None else None

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

    def login(self, name: str, password: str, refusal: Callable[[str], str | None] | None = None) -> Login:
        """The verdict on a login: its password (``_password_login``) and,
        for a home with a totp file, its one-time code, with the same code
        work for every login (see the rules above). ``refusal(home)``, the
        caller's other rules, is asked before a right code is spent: a
        login it refuses leaves the code unused."""
        name = canonical_name(name)
        config_dir = f"{self._prefix}{name}/{CONFIG_DIR}"
        secret = shared_store(self.root).totp(self._prefix + name) if USER_NAME.fullmatch(name) else None
        code = ""
        if secret is not None:
            password, code = totp.split(password)
        verdict = self._password_login(name, password)
        step = totp.check(secret or None, code, time.time())  # whatever the verdict: the same work
        if not verdict.ok or secret is None:
            return verdict
        if not secret:
            return Login(False, reason=f"invalid or untrusted {config_dir}/totp (see the log)")
        if not totp.available():
            return Login(False, reason="its .xxftp/totp needs pyotp to check one-time codes, "
                                       "which is not installed (pip install 'xxftpd[totp]')")
        if step is None:
            return Login(False, reason="wrong one-time code")
        why = refusal(verdict.home) if refusal is not None else None
        if why:
            return Login(False, reason=why, kind=verdict.kind)
        try:
            fresh = totpstate.record(config_dir, step)
        except OSError as err:
            log.error("%s/%s: cannot record the one-time code as used: %s; login refused",
                      config_dir, totpstate.USED, err.strerror or err)
            return Login(False, reason="one-time code not recorded")
        return verdict if fresh else Login(False, reason="one-time code already used")

    def _password_login(self, name: str, password: str) -> Login:
        """The verdict on a login's password, at the cost of one modern hash
        whenever a password is checked, whoever asks (see ``passwords.check``)."""
        path = self.password_file(name)
        modern = self._modern_hashes()
        try:
            home, stored = self._account(name, path)
        except OSError as err:
            log.error("%s: cannot read password file: %s; login refused", path, err.strerror)
            passwords.check(None, password, modern)
            return Login(False, reason=f"password file {path} unreadable: {err.strerror}", kind="error")
        if home is None:
            passwords.check(None, password, modern)
            return Login(False, reason="no such user", kind="no_user")
        if stored is None:
            return Login(True, home)  # no password file (any more)
        found = passwords.kind(stored)
        if found == "scrypt":
            self._modern = True  # from now on every check costs one
        elif found == "unknown":
            log.error("%s: unrecognised password format; login refused", path)
        if passwords.check(stored, password, modern):
            if self.upgrade_hashes and found == "md5":
                self._upgrade(path, password)
            return Login(True, home, kind=found)
        if found == "unknown":  # the log says why; the client is answered as for any wrong password
            return Login(False, reason=f"password file {path} in no known format", kind=found)
        return Login(False, reason="wrong password", kind=found)

    def _upgrade(self, path: str, password: str) -> None:
        try:
            passwords.write(path, passwords.scrypt_hash(password))
        except OSError as err:
            log.warning("%s: cannot upgrade the password hash: %s", path, err.strerror)
        else:
            log.info("%s: password hash upgraded from MD5 to scrypt", path)
