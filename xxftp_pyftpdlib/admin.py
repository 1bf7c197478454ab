"""The admin commands of ``xxftpd`` (plain functions returning exit codes)."""

from __future__ import annotations

import getpass
import os
import shutil
import sys
import tempfile
from typing import TextIO

from . import passwords
from .accounts import USER_NAME, Accounts, canonical_name
from .config import CONFIG_DIR, ConfigStore, Problem, parse_size, parse_virtual, shared_store
from .permissions import Permission
from .ledger import Quotas, shared_quotas
from .quota import figures, human
from .survey import limited_ledgers, trees, users


def _table(rows: list[list[str]]) -> str:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in rows)


def quota(root: str, rescan: str | None, out: TextIO = sys.stdout, err: TextIO = sys.stderr) -> int:
    """``quota``: a table of every quota tree; ``--rescan [USER]`` rebuilds ledgers."""
    store = shared_store(root)
    quotas = shared_quotas(store)
    if rescan not in (None, "*") and rescan not in users(store.server_root):
        print(f"xxftpd: error: no such user {rescan!r}", file=err)
        return 2
    if rescan is not None:
        for info, ledger in limited_ledgers(store, quotas, None if rescan == "*" else rescan):
            bar = _progress(info.label, err)
            used = ledger.rescan(bar)
            if err.isatty():
                err.write("\r\x1b[K")
            print(f"rescanned {info.label}: {human(used)}", file=out)
    rows = [["TREE", "FOLDER", "LIMIT", "USED", "HELD", "FREE", "%"]]
    for info in trees(store):
        ledger = quotas.limited(info.root)
        f = figures(ledger.peek() if ledger is not None else None)  # a report writes nothing
        rows.append([info.label, info.root, f.limit, f.used, f.held, f.free, f.percent])
    print(_table(rows), file=out)
    return 0


def _progress(label: str, err: TextIO):
    if not err.isatty():
        return None

    def show(files: int) -> None:
        err.write(f"\rscanning {label}: {files:,} entries")
        err.flush()

    return show


def reconcile(root: str) -> int:
    """Settle every ledger at start-up (what crashed processes left behind)."""
    store = shared_store(root)
    quotas = shared_quotas(store)
    count = 0
    for folder in [store.server_root] + [info.root for info in trees(store)]:  # the root: unlimited folders' uploads
        ledger = quotas.ledger(folder)
        if ledger.limit != 0 or ledger.exists():
            ledger.usage()
            count += 1
    return count


def _relative(root: str, path: str) -> str:
    return path[len(root) + 1:] if path.startswith(root + "/") else path


def check(root: str, out: TextIO = sys.stdout) -> int:
    """``check``: every problem as ``path:line: message``; exit 1 on errors."""
    from .checks import SAMPLE_MARK, check_tree

    findings = check_tree(root)
    real = os.path.realpath(root)
    for finding in findings:
        p = finding.problem
        suffix = "" if finding.error else " (warning)"
        print(f"{_relative(real, p.path)}:{p.line}: {p.message}{suffix}", file=out)
    errors = sum(f.error for f in findings)
    warnings = len(findings) - errors
    if os.path.lexists(os.path.join(real, SAMPLE_MARK)):  # never silent: a tree copied from the sample keeps it
        print(f"note: {SAMPLE_MARK} marks a demonstration tree whose passwords are published: the modes of its "
              f"password files are not checked (delete {SAMPLE_MARK} for a tree of your own)", file=out)
    print(f"{errors} error(s), {warnings} warning(s)", file=out)
    return 1 if errors else 0


def read_new_password(use_stdin: bool, err: TextIO = sys.stderr) -> str | None:
    """A new password: one line from stdin, or asked twice on a terminal."""
    if use_stdin:
        line = sys.stdin.readline()
        password = line[:-1] if line.endswith("\n") else line
    elif sys.stdin.isatty():
        first = getpass.getpass("New password: ")
        if first != getpass.getpass("Repeat it: "):
            print("xxftpd: error: the passwords differ; nothing changed", file=err)
            return None
        password = first
    else:
        print("xxftpd: error: no terminal to ask for the password; use --stdin", file=err)
        return None
    if not password:
        print("xxftpd: error: empty password refused; nothing changed", file=err)
        return None
    return password


def passwd(root: str, user: str, use_stdin: bool, md5: bool, out: TextIO = sys.stdout,
           err: TextIO = sys.stderr) -> int:
    """``passwd USER``: set a password (modern hash, or legacy MD5 with --md5)."""
    accounts = Accounts(root)
    if canonical_name(user) != user or accounts.home_of(user) is None:
        print(f"xxftpd: error: no such user {user!r}", file=err)
        return 2
    password = read_new_password(use_stdin, err)
    if password is None:
        return 1
    stored = passwords.md5_hex(password) if md5 else passwords.scrypt_hash(password)
    passwords.write(accounts.password_file(user), stored)
    print(f"password of {user} set ({'md5' if md5 else 'scrypt'})", file=out)
    return 0


def totp_secret(root: str, user: str, force: bool, out: TextIO = sys.stdout, err: TextIO = sys.stderr) -> int:
    """``totp USER``: give a user a second factor: a new secret in
    ``.xxftp/totp`` (mode 0600; an existing one only with ``force``), shown
    as an ``otpauth://`` URI and a QR code for an authenticator app."""
    from . import totp, totpstate  # the command alone needs them here
    accounts = Accounts(root)
    if canonical_name(user) != user or accounts.home_of(user) is None:
        print(f"xxftpd: error: no such user {user!r}", file=err)
        return 2
    path = os.path.join(os.path.dirname(accounts.password_file(user)), "totp")
    secret = totp.new_secret()
    try:
        totpstate.write_secret(path, secret, force)
    except FileExistsError:
        print(f"xxftpd: error: {path} exists (--force replaces it)", file=err)
        return 1
    except OSError as err_:
        print(f"xxftpd: error: cannot write {path}: {err_.strerror}", file=err)
        return 1
    uri = totp.uri(secret, user)
    print(f"one-time codes for {user}: log in with PASS <password><code>", file=out)
    print(uri, file=out)
    try:
        import qrcode
    except ImportError:
        print("(no QR code: qrcode is not installed; pip install 'xxftpd[totp]')", file=out)
    else:
        code = qrcode.QRCode(border=2)
        code.add_data(uri)
        code.print_ascii(out=out, invert=True)
    if not totp.available():
        print("xxftpd: warning: pyotp is not installed: the server refuses this user's logins "
              "until it is (pip install 'xxftpd[totp]')", file=err)
    return 0


def adduser(root: str, name: str, quota: str | None, permission: str | None, no_password: bool,
            use_stdin: bool, md5: bool, out: TextIO = sys.stdout, err: TextIO = sys.stderr) -> int:
    """``adduser NAME``: create a home with its .xxftp files, all or nothing."""
    real = os.path.realpath(root)
    if not USER_NAME.fullmatch(name):
        print(f"xxftpd: error: invalid user name {name!r} (use letters, digits and _)", file=err)
        return 2
    home = os.path.join(real, name)
    if os.path.lexists(home):
        print(f"xxftpd: error: {home} already exists", file=err)
        return 2
    files: dict[str, str] = {}
    if quota is not None:
        parsed = parse_size(quota, "--quota")
        if parsed.value is None:
            print(f"xxftpd: error: invalid --quota {quota!r} (bytes, or a number with K, M or G)", file=err)
            return 2
        files["size"] = quota.strip() + "\n"
    if permission is not None:
        perm, unknown = Permission.parse(permission)
        if unknown:
            print(f"xxftpd: error: unknown permission word(s) {', '.join(unknown)} (read, write, modify)", file=err)
            return 2
        files["permission"] = str(perm) + "\n"
    if not no_password:
        password = read_new_password(use_stdin, err)
        if password is None:
            return 1
        files["password"] = (passwords.md5_hex(password) if md5 else passwords.scrypt_hash(password)) + "\n"
    staging = tempfile.mkdtemp(prefix=f".adduser-{name}-", dir=real)
    try:
        os.mkdir(os.path.join(staging, CONFIG_DIR), 0o700)
        for file, text in files.items():
            path = os.path.join(staging, CONFIG_DIR, file)
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600 if file == "password" else 0o644)
            with os.fdopen(fd, "w") as f:
                f.write(text)
        os.chmod(staging, 0o755)
        os.rename(staging, home)  # all at once: no half-made user
    except OSError as error:
        shutil.rmtree(staging, ignore_errors=True)
        print(f"xxftpd: error: cannot create {home}: {error.strerror}", file=err)
        return 1
    print(f"user {name} created in {home}", file=out)
    return 0


def mount(root: str, folder: str, name: str, target: str, permission: str,
          out: TextIO = sys.stdout, err: TextIO = sys.stderr) -> int:
    """``mount FOLDER NAME TARGET PERMISSION``: add a validated mount line."""
    real = os.path.realpath(root)
    where = os.path.realpath(os.path.join(real, folder))
    if not (where + "/").startswith(real + "/") or where == real:
        print(f"xxftpd: error: {folder!r} is not a folder inside the root", file=err)
        return 2
    if not os.path.isdir(where):
        print(f"xxftpd: error: {folder!r} is not a folder", file=err)
        return 2
    path = os.path.join(where, CONFIG_DIR, "virtual")
    line = f"{name} {target} {permission}"
    existing = ""
    if os.path.lexists(path):
        try:
            with open(path, encoding="utf-8", errors="surrogateescape") as f:
                existing = f.read()
        except OSError as error:
            print(f"xxftpd: error: cannot read {path}: {error.strerror}", file=err)
            return 1
    before = parse_virtual(existing, path, where, real)
    after = parse_virtual(existing + ("" if existing.endswith("\n") or not existing else "\n") + line + "\n",
                          path, where, real)
    new_problems = [p for p in after.problems if p not in before.problems]
    if name in before.value:
        new_problems = [Problem(path, 0, f"mount {name!r} already exists in {folder}")]
    if new_problems or name not in after.value:
        why = new_problems[0].message if new_problems else f"cannot add mount {name!r}"
        print(f"xxftpd: error: {why}; nothing changed", file=err)
        return 2
    mount_ = after.value[name]
    resolved = os.path.realpath(mount_.target)
    if not os.path.isdir(resolved):
        print(f"xxftpd: error: target {mount_.target!r} is missing or not a folder; nothing changed", file=err)
        return 2
    if where == resolved or where.startswith(resolved.rstrip("/") + "/"):
        print(f"xxftpd: error: target {mount_.target!r} contains {folder!r} (a loop); nothing changed", file=err)
        return 2
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = path + f".tmp{os.getpid()}"
    with open(tmp, "w", encoding="utf-8", errors="surrogateescape") as f:
        f.write(existing + ("" if existing.endswith("\n") or not existing else "\n") + line + "\n")
    os.replace(tmp, path)
    print(f"mounted {mount_.target} as {name} in {where} ({permission})", file=out)
    return 0


def users_table(root: str, out: TextIO = sys.stdout) -> int:
    """``users``: user, password kind, permission, quota, used, mounts."""
    store = ConfigStore(root)
    quotas = Quotas(store)
    accounts = Accounts(root)
    rows = [["USER", "PASSWORD", "PERMISSION", "QUOTA", "USED", "MOUNTS"]]
    for user in users(store.server_root):
        home = os.path.realpath(os.path.join(store.server_root, user))  # a home may be a link
        path = accounts.password_file(user)
        if not os.path.lexists(path):
            kind = "none (user only)" if user == "anonymous" else "none"
        else:
            try:
                with open(path, encoding="utf-8", errors="replace") as f:
                    kind = passwords.kind(f.read(4096))
            except OSError:
                kind = "unreadable"
        secret = store.totp(home)
        if secret is not None:  # a second factor
            kind += " + totp" if secret else " + totp (invalid)"
        ledger = quotas.limited(home)
        f = figures(ledger.peek() if ledger is not None else None)  # a report writes nothing
        mounts = ", ".join(sorted(store.mounts(home))) or "-"
        rows.append([user, kind, str(store.permission(home)), f.limit, f.used, mounts])
    print(_table(rows), file=out)
    return 0
