"""``xxftpd check``: every problem of a server tree, as ``path:line: message``.

Rules that live here (on top of the parsers' own problems):

- A folder directly under the root whose name is not a valid user name is
  not a user; that is only reported when it looks like an attempt at one
  (it holds a ``.xxftp/`` folder).
- A home's ``certs`` file (client certificates, ``clientcerts``) must
  hold only fingerprints, comments and ``and-password``.
- A password file must be in a known format and not readable by group or
  others; a password file that is not a regular file is an error. A root
  holding ``xxftp.sample`` is a demonstration whose passwords are
  published (git keeps no mode but 644 and 755): its password files are
  not reported for their mode.
- A home's ``hosts`` file: each malformed line is an error, and a file
  with no valid line is one too (it locks the user out).
- A ``.xxftp`` that is not a folder is an error: the server finds none of
  its files (no password: USER alone logs in; every right).
- Mount targets must exist and be folders, must not contain the folder
  that declares them (a loop), and must not lie in a hidden folder.
- A symbolic link in a home or a mount target that leads to a hidden name
  inside it (``settings -> .xxftp``) is reported: the server refuses it.
- Every ``.xxftp/`` folder of a home or of a reachable mount target is
  checked, at any depth.
- A ``totp`` file must hold a valid secret (``totp.normalize``) and be
  readable by its owner only (the server refuses it otherwise); one on a
  machine without pyotp is an error too (its user can't log in).
- A home's ``limits`` file must parse (``userlimits``): an invalid one
  refuses the user's logins. One in any other folder is ignored (warned).
- A ``.xxftp`` folder or file the server does not trust (``config.distrust``:
  owned by another user than root or the server's, or writable by group or
  others) is an error: the server ignores it (and refuses the logins of its
  home, for a password file or a home's folder).
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass

from . import passwords, totp
from .accounts import USER_NAME
from .access import parse_hosts
from .clientcerts import parse_certs
from .config import (CONFIG_DIR, TRUSTED, ConfigStore, Problem, distrust, distrust_folder, parse_permission, parse_size,
                     parse_totp, parse_virtual)
from .tree import hidden_below, hidden_target
from .userlimits import parse_limits

SAMPLE_MARK = "xxftp.sample"  # in a root: a demonstration tree, its passwords published


@dataclass(frozen=True)
class Finding:
    problem: Problem
    error: bool  # False: a warning

    def __str__(self) -> str:
        return f"{self.problem}{'' if self.error else ' (warning)'}"


def _read(path: str) -> str | None:
    try:
        with open(path, encoding="utf-8", errors="surrogateescape") as f:
            return f.read(65536)
    except OSError:
        return None


def check_tree(root: str) -> list[Finding]:
    root = os.path.realpath(root)
    store = ConfigStore(root)
    findings: list[Finding] = []

    def error(path: str, line: int, message: str, is_error: bool = True) -> None:
        findings.append(Finding(Problem(path, line, message), is_error))

    try:
        names = sorted(os.listdir(root))
    except OSError as err:
        error(root, 0, f"cannot list the root: {err.strerror}")
        return findings
    pending: list[str] = []
    configured_non_users: list[str] = []
    sample = SAMPLE_MARK in names
    for name in names:
        home = os.path.join(root, name)
        if not os.path.isdir(home) or name.startswith("."):
            continue
        if not USER_NAME.fullmatch(name):
            if os.path.isdir(os.path.join(home, CONFIG_DIR)):
                configured_non_users.append(home)
            continue
        _check_password(os.path.join(home, CONFIG_DIR, "password"), error, modes=not sample)
        _check_limits(os.path.join(home, CONFIG_DIR, "limits"), error)
        _check_certs(os.path.join(home, CONFIG_DIR, "certs"), error)
        _check_hosts(os.path.join(home, CONFIG_DIR, "hosts"), name, error)
        _check_totp(os.path.join(home, CONFIG_DIR, "totp"), error)
        pending.append(home)
    seen: set[str] = set()
    while pending:
        tree = os.path.realpath(pending.pop(0))
        if tree in seen:
            continue
        seen.add(tree)
        for folder, dirs, files in os.walk(tree):
            _check_links(folder, dirs + files, tree, error)
            if CONFIG_DIR in files:
                home = os.path.dirname(folder) == root and USER_NAME.fullmatch(os.path.basename(folder))
                error(os.path.join(folder, CONFIG_DIR), 0, "a file, not a folder: the server reads no settings "
                      "from it" + (" (every login of this user is refused)" if home else ""))
            if CONFIG_DIR in dirs:
                pending.extend(_check_folder(folder, root, store, error))
            dirs[:] = sorted(d for d in dirs if not d.startswith("."))
    for folder in configured_non_users:
        if os.path.realpath(folder) not in seen:
            error(folder, 0, f"{os.path.basename(folder)!r} has a .xxftp folder but is neither a user "
                             "(names are [A-Za-z0-9_]+) nor a mount target", False)
    return findings


def _check_links(folder: str, names: list[str], tree: str, error) -> None:
    """Report the links among ``names`` that lead to a hidden name of ``tree``."""
    for name in sorted(names):
        if name.startswith("."):
            continue
        path = os.path.join(folder, name)
        if not os.path.islink(path):
            continue
        real = os.path.realpath(path)
        if (real == tree or real.startswith(tree.rstrip("/") + "/")) and hidden_below(real, tree):
            error(path, 0, f"symbolic link {name!r} leads to a hidden name ({os.path.relpath(real, tree)}): "
                           "refused", False)


def _check_hosts(path: str, user: str, error) -> None:
    if not os.path.lexists(path):
        return
    text = _read(path)
    if text is None:
        error(path, 0, f"unreadable hosts file: {user!r} may log in from nowhere")
        return
    parsed = parse_hosts(text, path)
    for problem in parsed.problems:
        error(problem.path, problem.line, f"{problem.message}: line ignored")
    if not parsed.value:
        error(path, 0, f"no valid network: {user!r} may log in from nowhere")


def _check_password(path: str, error, modes: bool = True) -> None:
    if not os.path.lexists(path):
        return
    try:
        st = os.stat(path)
    except OSError as err:
        error(path, 0, f"cannot stat password file: {err.strerror}")
        return
    if not stat.S_ISREG(st.st_mode):
        error(path, 0, "password file is not a regular file: every login is refused")
        return
    text = _read(path)
    if text is None:
        error(path, 0, "password file is unreadable: every login is refused")
    elif passwords.kind(text) == "unknown":
        error(path, 1, "password file is in no known format (MD5 hex or $scrypt$): every login is refused")
    if modes and st.st_mode & 0o077:
        error(path, 0, f"password file mode {stat.S_IMODE(st.st_mode):04o} lets others read it (use 0600)", False)


def _check_limits(path: str, error) -> None:
    if not os.path.lexists(path):
        return
    text = _read(path)
    if text is None:
        error(path, 0, "unreadable limits file: every login of the user is refused")
        return
    for problem in parse_limits(text, path).problems:
        error(problem.path, problem.line, problem.message)


def _check_certs(path: str, error) -> None:
    if not os.path.lexists(path):
        return
    text = _read(path) if os.path.isfile(path) else None
    if text is None:
        error(path, 0, "certs file is unreadable or not a regular file: every login of this user is refused")
        return
    for problem in parse_certs(text, path).problems:
        error(problem.path, problem.line, problem.message)


def _check_totp(path: str, error) -> None:
    if not os.path.lexists(path):
        return
    try:
        st = os.stat(path)
    except OSError as err:
        error(path, 0, f"cannot stat totp file: {err.strerror}")
        return
    text = _read(path) if stat.S_ISREG(st.st_mode) else None
    if text is None:
        error(path, 0, "totp file is unreadable or not a regular file: every login is refused")
        return
    for problem in parse_totp(text, path).problems:
        error(problem.path, problem.line, problem.message)
    if st.st_mode & 0o077:
        error(path, 0, f"totp file mode {stat.S_IMODE(st.st_mode):04o} lets others read the secret: "
                       "the server ignores it and refuses every login (use 0600)")
    if not totp.available():
        error(path, 0, "one-time codes need pyotp, which is not installed (pip install 'xxftpd[totp]'): "
                       "every login is refused")


def _trusted(config: str, error) -> bool:
    """Report the .xxftp folder ``config`` or its files if the server does
    not trust them; False if it ignores the folder as a whole."""
    try:
        why = distrust_folder(os.lstat(config))
    except OSError:
        return True
    if why:
        error(config, 0, f"not trusted ({why}): the server ignores its files; it must be {TRUSTED}")
        return False
    for name in ("password", "permission", "size", "virtual", "hosts", "ledger", "limits", "certs", "totp", "totp.used"):
        path = os.path.join(config, name)
        try:
            why = distrust(os.stat(path))
        except OSError:
            continue
        if why:
            error(path, 0, f"not trusted ({why}): ignored; it must be {TRUSTED}")
    return True


def _check_folder(folder: str, root: str, store: ConfigStore, error) -> list[str]:
    """Check one folder's .xxftp files; returns the mount targets to visit."""
    config = os.path.join(folder, CONFIG_DIR)
    if not _trusted(config, error):
        return []
    limits = os.path.join(config, "limits")
    real = os.path.realpath(folder)
    home = os.path.dirname(real) == root and USER_NAME.fullmatch(os.path.basename(real))
    if not home and os.path.lexists(limits):
        error(limits, 0, "limits apply to a user: only a home's limits file is read; this one is ignored", False)
    for name, parse in (("permission", parse_permission), ("size", parse_size)):
        path = os.path.join(config, name)
        text = _read(path) if os.path.lexists(path) else None
        if os.path.lexists(path) and text is None:
            error(path, 0, f"unreadable {name} file")
        elif text is not None:
            for problem in parse(text, path).problems:
                error(problem.path, problem.line, problem.message)
    path = os.path.join(config, "virtual")
    if not os.path.lexists(path):
        return []
    text = _read(path)
    if text is None:
        error(path, 0, "unreadable virtual file")
        return []
    parsed = parse_virtual(text, path, folder, root)
    for problem in parsed.problems:
        error(problem.path, problem.line, problem.message)
    targets = []
    real_folder = os.path.realpath(folder)
    for mount in parsed.value.values():
        line = int(mount.source.rsplit(":", 1)[1])
        target = os.path.realpath(mount.target)
        if not os.path.isdir(target):
            error(path, line, f"mount {mount.name!r}: target {mount.target!r} is missing or not a folder")
        elif hidden_target(target, root):
            error(path, line, f"mount {mount.name!r}: target {mount.target!r} lies in a hidden folder: refused")
        elif real_folder == target or real_folder.startswith(target.rstrip("/") + "/"):
            error(path, line, f"mount {mount.name!r}: target {mount.target!r} contains the folder "
                              "that declares it (a loop): refused")
        else:
            targets.append(target)
    return targets
