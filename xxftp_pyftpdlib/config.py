"""The ``.xxftp`` files of a folder, parsed into values.

Rules that live here:

- Every folder may hold a ``.xxftp/`` folder with small text files:
  ``permission`` (a home's permission), ``virtual`` (mounts declared in
  that folder), ``size`` (the byte limit of a tree), ``password`` (a
  home's password hash, read by ``passwords``/``accounts``), ``certs``
  (client certificates that log a user in; rules in ``clientcerts``) and
  ``totp`` (a home's second-factor secret, see ``totp``).
- A ``totp`` file is a secret: one readable by group or others is
  ignored like an untrusted one (its home's logins are refused), as
  OpenSSH refuses a private key others may read.
- ``virtual`` holds one mount a line, ``NAME TARGET PERMISSION``. ``$root``
  in TARGET means the server root; a relative TARGET is relative to the
  folder that declares the mount. Blank lines and ``#`` comments are
  ignored. A malformed line is reported and skipped; the others still work.
- Bad content never raises out of this module: each problem becomes a
  ``Problem`` (``path:line: message``), logged once per version of the
  file, and the value falls back to the safe side (fewer rights, no mount,
  an invalid quota that refuses uploads).
- Parsed files are cached by path and stat identity, so an unchanged file
  costs one ``stat`` and an edited one is read again on its next use.
- The files that shape a session's tree (``permission``, ``virtual``,
  ``size``) are read through ``beneath``, at the real paths resolution
  gives: no symbolic link is followed on the way (a ``.xxftp`` folder or
  file that is a link is unreadable, which falls back to the safe side),
  and the identity cached with what was read is that of the file read.
  ``hosts``, ``certs`` and banners are read by their path (checked at login, and the
  home named there may be a link).
- Only the server's user or root may write the configuration (as
  OpenSSH's StrictModes): a ``.xxftp`` folder or file owned by anyone
  else, or writable by others or by a group other than root's or the
  server's, is not trusted. Its files are
  read as unreadable ones (the safe side: no rights, no mount, no host,
  uploads refused; ``accounts`` refuses the login), and the log says why
  once per version.
"""

from __future__ import annotations

import logging
import os
import re
import stat
import threading
from dataclasses import dataclass, field
from typing import Callable, Generic, TypeVar

from . import beneath
from . import totp as totp_rules
from .access import parse_hosts
from .permissions import FULL, NONE, Permission

log = logging.getLogger("xxftpd.config")

CONFIG_DIR = ".xxftp"
MOUNT_NAME = re.compile(r"[^/\x00-\x1f\x7f]+")

T = TypeVar("T")


@dataclass(frozen=True)
class Problem:
    """One thing wrong with a configuration file, in compiler style."""

    path: str
    line: int  # 0 when the problem is the file as a whole
    message: str

    def __str__(self) -> str:
        return f"{self.path}:{self.line}: {self.message}"


@dataclass(frozen=True)
class Mount:
    """One line of a ``virtual`` file: NAME shows TARGET with PERMISSION."""

    name: str
    target: str  # absolute, normalised; may not exist (checked on use)
    permission: Permission
    source: str  # "path:line" of the declaring line, for messages


@dataclass(frozen=True)
class Parsed(Generic[T]):
    value: T
    problems: tuple[Problem, ...] = field(default=())


# --- parsers (pure functions of text)


def _content_lines(text: str):
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if line and not line.startswith("#"):
            yield number, line


def parse_permission(text: str, path: str) -> Parsed[Permission]:
    """The first content line is the permission; unknown words are dropped."""
    for number, line in _content_lines(text):
        permission, unknown = Permission.parse(line)
        problems = tuple(
            Problem(path, number, f"unknown permission word {w!r} ignored")
            for w in unknown
        )
        return Parsed(permission, problems)
    return Parsed(NONE, (Problem(path, 0, "empty permission file: no rights"),))


def parse_virtual(text: str, path: str, folder: str, server_root: str) -> Parsed[dict[str, Mount]]:
    """Parse mount lines; each bad line is skipped with a Problem."""
    mounts: dict[str, Mount] = {}
    problems: list[Problem] = []
    for number, line in _content_lines(text):
        fields = line.split()
        where = f"{path}:{number}"
        if len(fields) != 3:
            problems.append(Problem(path, number, f"expected 'NAME TARGET PERMISSION', got {len(fields)} field(s)"))
            continue
        name, target, words = fields
        if name in (".", "..") or name.startswith(".") or not MOUNT_NAME.fullmatch(name):
            problems.append(Problem(path, number, f"invalid mount name {name!r} (no '/', no leading '.')"))
            continue
        permission, unknown = Permission.parse(words)
        if unknown:
            problems.append(Problem(path, number, f"unknown permission word(s) {', '.join(map(repr, unknown))}"))
            continue
        if name in mounts:
            problems.append(Problem(path, number, f"mount {name!r} declared twice; the first line wins"))
            continue
        target = target.replace("$root", server_root)
        target = os.path.normpath(os.path.join(folder, target))
        mounts[name] = Mount(name, target, permission, where)
    return Parsed(mounts, tuple(problems))


_SIZE = re.compile(r"(\d+)\s*([kmg]?)(?:i?b)?", re.IGNORECASE)
_UNITS = {"": 1, "k": 1024, "m": 1024**2, "g": 1024**3}


def parse_size(text: str, path: str) -> Parsed[int | None]:
    """A byte limit: ``1048576``, ``512K``, ``10M``, ``2G``; 0 means unlimited.

    ``None`` means the file is invalid: uploads into the tree are refused.
    """
    lines = list(_content_lines(text))
    if not lines:
        return Parsed(0)
    number, line = lines[0]
    match = _SIZE.fullmatch(line)
    if not match or len(match.group(1).lstrip("0")) > 20:  # past any disk (and int()'s limits)
        return Parsed(None, (Problem(path, number, f"invalid size {line!r} (bytes, or a number with K, M or G)"),))
    return Parsed(int(match.group(1)) * _UNITS[match.group(2).lower()])


def parse_totp(text: str, path: str) -> Parsed[str]:
    """A second-factor secret in canonical base32; "" if invalid (every
    login of the home is then refused)."""
    for number, line in _content_lines(text):
        try:
            return Parsed(totp_rules.normalize(line))
        except ValueError as err:
            return Parsed("", (Problem(path, number, f"{err}: every login is refused"),))
    return Parsed("", (Problem(path, 0, "empty totp file: every login is refused"),))


# --- who may write the configuration


TRUSTED = ("owned by root or the server's user and writable by no one else "
           "(by its group only if that is root's or the server's)")


def distrust(st: os.stat_result) -> str | None:
    """Why a ``.xxftp`` folder or file of this ``lstat`` is not trusted
    (None: it is). A user who could write it could give themselves any
    rights, mounts or password. Writable by its group is fine when that
    group is root's or the server's own (a umask of 002 with a group per
    user makes every file so); by others, never."""
    if st.st_uid not in (0, os.geteuid()):
        return f"owned by uid {st.st_uid}, neither root nor the server's user"
    if stat.S_ISLNK(st.st_mode):
        return None
    if st.st_mode & 0o002:
        return "writable by others"
    if st.st_mode & 0o020 and st.st_gid not in (0, os.getegid()):
        return f"writable by group {st.st_gid}, neither root's nor the server's"
    return None


def distrust_folder(st: os.stat_result) -> str | None:
    """``distrust`` for the ``lstat`` of a ``.xxftp`` folder (a link is not trusted)."""
    return "a symbolic link" if stat.S_ISLNK(st.st_mode) else distrust(st)


# --- the cache


def _identity(st: os.stat_result) -> tuple[int, ...]:
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


class ConfigStore:
    """Reads ``.xxftp`` files through a cache validated by ``stat``.

    One store serves every session of a process; it is safe to share
    between threads (a lost race parses a file twice, nothing worse).
    """

    def __init__(self, server_root: str) -> None:
        self.server_root = os.path.realpath(server_root)
        self._cache: dict[str, tuple[tuple[int, ...], Parsed]] = {}
        self._lock = threading.Lock()
        self._reported: set[tuple] = set()
        self._folders: dict[str, tuple[tuple[int, int], str]] = {}

    def _load(self, path: str, parse: Callable[[str], Parsed[T]], missing: T, unreadable: T,
              bound: bool = True, private: bool = False) -> T:
        folder = os.path.dirname(path)
        try:
            why = distrust_folder(os.lstat(folder))
        except (FileNotFoundError, NotADirectoryError):
            return missing
        except OSError:
            why = None  # reading the file says what is wrong
        if why:
            self.report_once(("distrust", folder, why), f"{folder}:0: not trusted ({why}): its files are ignored")
            return unreadable
        try:
            st = os.stat(path)
        except (FileNotFoundError, NotADirectoryError):
            return missing
        except OSError as err:
            self.report_once(("stat", path), f"{path}:0: cannot stat: {err.strerror}")
            return unreadable
        key = _identity(st)
        hit = self._cache.get(path)
        if hit is not None and hit[0] == key:  # the very file that was read (``key`` is of what was read)
            return hit[1].value
        not_regular: Parsed = Parsed(unreadable, (Problem(path, 0, "not a regular file"),))
        if not stat.S_ISREG(st.st_mode):
            parsed = not_regular
        else:
            opener = beneath.opener if bound else None
            try:
                with open(path, encoding="utf-8", errors="surrogateescape", opener=opener) as f:
                    read = os.fstat(f.fileno())  # what was opened may differ from what was stat'ed
                    text = f.read(65536) if stat.S_ISREG(read.st_mode) else None
            except OSError as err:
                parsed = Parsed(unreadable, (Problem(path, 0, f"cannot read: {err.strerror}"),))
            else:
                key = _identity(read)
                why = distrust(read) or (private and read.st_mode & 0o077 and
                                         f"mode {stat.S_IMODE(read.st_mode):04o} lets others read it; use 0600")
                if why:
                    parsed = Parsed(unreadable, (Problem(path, 0, f"not trusted ({why}): ignored"),))
                else:
                    parsed = parse(text) if text is not None else not_regular
        for problem in parsed.problems:
            log.warning("%s", problem)
        with self._lock:
            self._cache[path] = (key, parsed)
        return parsed.value

    def report_once(self, key: tuple, message: str) -> None:
        """Log a problem found while *using* a file, once per file version."""
        with self._lock:
            if key in self._reported:
                return
            if len(self._reported) > 10000:
                self._reported.clear()
            self._reported.add(key)
        log.warning("%s", message)

    def real_folder(self, path: str) -> str | None:
        """``realpath(path)`` if ``path`` leads to a folder, else None.

        Kept while ``path`` still leads to the same folder (device and
        inode): walking a mount target's path at every crossing was most of
        the time of a deep CWD. A folder reached by a new path keeps its old
        real path only if it is the very same folder.
        """
        try:
            st = os.stat(path)
        except (OSError, ValueError):
            return None
        if not stat.S_ISDIR(st.st_mode):
            return None
        key = (st.st_dev, st.st_ino)
        hit = self._folders.get(path)
        if hit is not None and hit[0] == key:
            return hit[1]
        try:
            real = os.path.realpath(path)
        except OSError:  # a link on the path changed while it was read
            return None
        with self._lock:
            self._folders[path] = (key, real)
        return real

    def version(self, path: str) -> tuple[int, ...] | None:
        hit = self._cache.get(path)
        return hit[0] if hit else None

    # --- the files

    def permission(self, folder: str) -> Permission:
        """A home's permission; all rights without a file, none if unreadable."""
        path = f"{folder}/{CONFIG_DIR}/permission"
        return self._load(path, lambda text: parse_permission(text, path), FULL, NONE)

    def mounts(self, folder: str) -> dict[str, Mount]:
        """Mounts declared in ``folder`` (name -> Mount); empty if none."""
        path = f"{folder}/{CONFIG_DIR}/virtual"
        return self._load(
            path, lambda text: parse_virtual(text, path, folder, self.server_root), {}, {}
        )

    def hosts(self, home: str) -> tuple | None:
        """Networks a user may log in from; None without a hosts file."""
        path = f"{home}/{CONFIG_DIR}/hosts"
        return self._load(path, lambda text: parse_hosts(text, path), None, (), bound=False)

    def certs(self, home: str):
        """A home's ``.xxftp/certs`` rule (``clientcerts``); None without a
        file; ``clientcerts.UNREADABLE`` (nobody logs in) if it can't be read."""
        from .clientcerts import UNREADABLE, parse_certs
        path = f"{home}/{CONFIG_DIR}/certs"
        return self._load(path, lambda text: parse_certs(text, path), None, UNREADABLE, bound=False)

    def totp(self, home: str) -> str | None:
        """A home's second-factor secret; None without a totp file, ""
        if it is invalid, unreadable or not trusted (logins refused)."""
        path = f"{home}/{CONFIG_DIR}/totp"
        return self._load(path, lambda text: parse_totp(text, path), None, "", bound=False, private=True)

    def text(self, path: str) -> str | None:
        """A small text file (a banner), or None if missing or unreadable.

        Banners are usually absent, and ``os.access`` says so without the
        exception of a failed ``stat`` (read at every connection). A banner
        is no rule: "cannot tell" may read as "absent".
        """
        if not os.access(path, os.F_OK):
            return None
        return self._load(path, lambda text: Parsed(text), None, None, bound=False)

    def user_limits(self, home: str):
        """A user's ``userlimits.UserLimits``: none without a file, None if
        the file is invalid or not trusted (logins refused)."""
        from .userlimits import NO_LIMITS, parse_limits  # userlimits builds on this module

        path = f"{home}/{CONFIG_DIR}/limits"
        return self._load(path, lambda text: parse_limits(text, path), NO_LIMITS, None, bound=False)

    def has_size(self, folder: str) -> bool:
        """True if ``folder`` holds a size file (of any content): it is a quota tree."""
        return beneath.lexists(f"{folder}/{CONFIG_DIR}/size")

    def size_limit(self, folder: str) -> int | None:
        """A tree's byte limit: 0 unlimited, None invalid (refuse uploads)."""
        path = f"{folder}/{CONFIG_DIR}/size"
        return self._load(path, lambda text: parse_size(text, path), 0, None)


_stores: dict[str, ConfigStore] = {}
_stores_lock = threading.Lock()


def shared_store(server_root: str) -> ConfigStore:
    """The process-wide store of a server root, shared by all its sessions."""
    store = _stores.get(server_root)  # a session starts here: skip realpath when we can
    if store is not None:
        return store
    key = os.path.realpath(server_root)
    with _stores_lock:
        store = _stores.get(key)
        if store is None:
            store = _stores[key] = ConfigStore(key)
        _stores[server_root] = store
        return store
