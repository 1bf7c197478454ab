"""A folder swapped for a symbolic link while a session works through it.

Another process (a user with shell access to their own home) exchanges
``box`` in alice's home with a symbolic link to a folder outside her home
(or to bob's home) as fast as it can, atomically (``renameat2`` with
``RENAME_EXCHANGE``), while alice's session runs every filesystem command
through ``box``. Whatever the timing, nothing outside is read, listed,
written, created, renamed, removed or changed, and the session stays up.
"""

from __future__ import annotations

import ftplib
import io
import logging
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

MARKER = b"OUTSIDE-MARKER"
SECONDS = 5.0

SWAPPER = r"""
import ctypes, os, sys, time
libc = ctypes.CDLL(None, use_errno=True)
a, b, seconds = os.fsencode(sys.argv[1]), os.fsencode(sys.argv[2]), float(sys.argv[3])
print("ready", flush=True)
sys.stdin.readline()
end = time.monotonic() + seconds
n = 0
while True:
    for _ in range(200):
        if libc.renameat2(-100, a, -100, b, 2) != 0:  # RENAME_EXCHANGE
            raise OSError(ctypes.get_errno(), "renameat2")
        n += 1
    if time.monotonic() >= end and n % 2 == 0:  # an even count: box is the folder again
        break
print(n, flush=True)
"""


def fill(folder: Path, content: bytes) -> None:
    """The names the session works with, in a folder inside or outside."""
    (folder / "f.txt").write_bytes(content)
    (folder / "g.txt").write_bytes(content)
    (folder / "victim.txt").write_bytes(content)
    (folder / "sub").mkdir()
    (folder / "sub" / "deep.txt").write_bytes(content)
    (folder / "d").mkdir()
    (folder / (MARKER.decode() + ".txt")).write_bytes(content) if content == MARKER else None


def snapshot(folder: Path) -> dict[str, tuple]:
    """Names, kinds, bytes, modes and times of everything under ``folder`` (itself included)."""
    found = {}
    for where, dirs, files in os.walk(folder):
        for name in [""] + dirs + files if where == str(folder) else dirs + files:
            path = os.path.join(where, name) if name else where
            st = os.lstat(path)
            data = Path(path).read_bytes() if os.path.isfile(path) and not os.path.islink(path) else None
            found[os.path.relpath(path, folder)] = (st.st_mode, st.st_mtime_ns, st.st_nlink, data)
    return found


def run_commands(ftp: ftplib.FTP, deadline: float, seen: dict[str, int], i: int) -> None:
    """One round of every command through ``box``; refusals are fine, leaks are not."""

    def attempt(name: str, call) -> object:
        try:
            result = call()
        except ftplib.error_perm as err:
            assert str(err)[:1] == "5", err
            seen[name + " refused"] = seen.get(name + " refused", 0) + 1
            return None
        except ftplib.error_temp as err:  # 450: busy, or the data connection was refused
            seen[name + " refused"] = seen.get(name + " refused", 0) + 1
            return err
        seen[name + " ok"] = seen.get(name + " ok", 0) + 1
        return result

    def retr(path: str) -> bytes:
        out = io.BytesIO()
        ftp.retrbinary(f"RETR {path}", out.write)
        return out.getvalue()

    for path in ("box/f.txt", "box/sub/deep.txt"):
        data = attempt("RETR", lambda: retr(path))
        assert data is None or MARKER not in data, f"RETR {path} read outside: {data!r}"
    for command in ("LIST", "NLST", "MLSD"):
        for folder in ("box", "box/sub"):
            lines: list[str] = []
            attempt(command, lambda: ftp.retrlines(f"{command} {folder}", lines.append))
            assert not any(MARKER.decode() in line for line in lines), (command, lines)
    attempt("STOR", lambda: ftp.storbinary(f"STOR box/new-{i}.txt", io.BytesIO(b"alice new")))
    attempt("STOR", lambda: ftp.storbinary("STOR box/g.txt", io.BytesIO(b"alice over")))
    attempt("APPE", lambda: ftp.storbinary("APPE box/g.txt", io.BytesIO(b"+")))
    attempt("STOR", lambda: ftp.storbinary("STOR box/victim.txt", io.BytesIO(b"alice victim")))
    attempt("DELE", lambda: ftp.delete("box/victim.txt"))
    attempt("MKD", lambda: ftp.mkd(f"box/m-{i}"))
    attempt("MKD", lambda: ftp.mkd("box/d"))
    attempt("RMD", lambda: ftp.rmd("box/d"))
    attempt("RNFR+RNTO", lambda: ftp.rename("box/f.txt", "box/f2.txt"))
    attempt("RNFR+RNTO", lambda: ftp.rename("box/f2.txt", "box/f.txt"))
    attempt("RNFR+RNTO", lambda: ftp.rename("box/sub", "box/sub2"))
    attempt("RNFR+RNTO", lambda: ftp.rename("box/sub2", "box/sub"))
    for command in ("SIZE box/f.txt", "MDTM box/f.txt", "MFMT 20000101000000 box/f.txt",
                    "SITE CHMOD 600 box/f.txt", "SITE CHMOD 700 box/sub", "CWD box/sub", "CWD /"):
        attempt(command.split()[0], lambda: ftp.sendcmd(command))
    attempt("STOU", lambda: ftp.storbinary("STOU box/u", io.BytesIO(b"unique")))


@pytest.mark.parametrize("target,opening", [("outside", "openat2"), ("other-home", "openat2"), ("outside", "walk")])
def test_a_folder_swapped_for_a_link_never_reaches_outside(tree, start_server, connect, tmp_path, target, opening,
                                                          caplog, monkeypatch):
    if opening == "walk":  # as on a kernel without openat2 (where there is none, both params walk)
        monkeypatch.setattr("xxftp_pyftpdlib.beneath._openat2", None)
    home = tree.user("alice", password="pw")
    bob = tree.user("bob", password="bobpw")
    outside = tmp_path / "outside" if target == "outside" else bob
    outside.mkdir(exist_ok=True)
    fill(outside, MARKER)
    box = home / "box"
    box.mkdir()
    fill(box, b"alice data")
    alt = home / ".box-alt"  # hidden: the session can't name it
    os.symlink(outside, alt)
    before = snapshot(outside)

    srv = start_server(tree.root)
    ftp = connect(srv.port, "alice", "pw", timeout=30)
    ftp.voidcmd("TYPE I")
    swapper = subprocess.Popen([sys.executable, "-c", SWAPPER, str(box), str(alt), str(SECONDS)],
                               stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    seen: dict[str, int] = {}
    try:
        assert swapper.stdout.readline().strip() == "ready"
        swapper.stdin.write("go\n")
        swapper.stdin.flush()
        deadline = time.monotonic() + SECONDS
        i = 0
        with caplog.at_level(logging.WARNING):
            while time.monotonic() < deadline:
                run_commands(ftp, deadline, seen, i)
                i += 1
        swaps = int(swapper.communicate(timeout=60)[0].strip())
    finally:
        if swapper.poll() is None:
            swapper.kill()
            swapper.wait()
    assert swapper.returncode == 0
    assert box.is_dir() and not box.is_symlink()  # an even number of swaps: as it began
    assert snapshot(outside) == before
    assert ftp.voidcmd("NOOP").startswith("200")  # the session survived every refusal
    assert not [r for r in caplog.records if r.exc_info or "Traceback" in r.getMessage()]
    print(f"\n{target}, {opening}: {swaps} swaps in {SECONDS:g} s ({swaps / SECONDS:,.0f}/s), {i} rounds; "
          f"{sorted(seen.items())}")
    # the race was run: commands got through the folder and were refused through the link
    assert seen.get("RETR ok", 0) > 0 and seen.get("RETR refused", 0) > 0, seen
    assert seen.get("LIST ok", 0) > 0, seen


def folders_held(folder: Path) -> int:
    """Descriptors this process holds on ``folder`` itself."""
    held = 0
    for fd in os.listdir("/proc/self/fd"):
        try:
            held += os.readlink(f"/proc/self/fd/{fd}") == str(folder)
        except OSError:
            continue
    return held


def test_a_listing_holds_its_folder_only_while_it_is_sent(tree, start_server, connect):
    """A listing is read and stat'ed through its folder's descriptor, which
    must not stay open for the rest of an idle session (one per session)."""
    from conftest import wait_until

    home = tree.user("alice", password="pw")
    for n in range(40):
        (home / f"f{n}.txt").write_bytes(b"x")
    ftp = connect(start_server(tree.root).port, "alice", "pw")
    for command in ("LIST", "MLSD", "NLST"):
        lines: list[str] = []
        ftp.retrlines(command, lines.append)
        assert len(lines) == 40
        if command == "NLST":  # names only: nothing tells the listing is used up but the next command
            ftp.voidcmd("NOOP")
        assert wait_until(lambda: folders_held(home) == 0, timeout=5), command


DETERMINISTIC = [
    "RETR box/f.txt", "RETR box/sub/deep.txt", "LIST box", "NLST box", "MLSD box", "LIST box/sub",
    "STOR box/new.txt", "STOR box/g.txt", "APPE box/g.txt", "STOU box/u", "DELE box/victim.txt",
    "MKD box/m", "RMD box/d", "RNFR box/f.txt", "SIZE box/f.txt", "MDTM box/f.txt",
    "MFMT 20000101000000 box/f.txt", "SITE CHMOD 600 box/f.txt", "SITE CHMOD 700 box/sub", "CWD box/sub",
    "MLST box/f.txt", "STAT box",
]


@pytest.mark.parametrize("when", ["resolved", "first-used"])
@pytest.mark.parametrize("command", DETERMINISTIC)
def test_a_swap_right_after_the_check_meets_an_error(tree, start_server, connect, tmp_path, monkeypatch, command,
                                                     when):
    """The same race made certain: the folder becomes a link to an outside
    folder right after the first resolution through it (``resolved``), or
    right after the first filesystem call on a path through it, so the
    command's own operation meets the link (``first-used``)."""
    from xxftp_pyftpdlib import tree as tree_module

    home = tree.user("alice", password="pw")
    outside = tmp_path / "outside"
    outside.mkdir()
    fill(outside, MARKER)
    box = home / "box"
    box.mkdir()
    fill(box, b"alice data")
    held = home / ".box-real"
    before = snapshot(outside)
    armed = []
    resolve = tree_module.Namespace.resolve

    def swap(path: str) -> None:
        if armed and "box" in path.split("/"):
            armed.clear()
            os.rename(box, held)
            os.symlink(outside, box)

    def resolve_then_swap(self, ftp_path: str):
        node = resolve(self, ftp_path)
        swap(ftp_path)
        return node

    if when == "resolved":
        monkeypatch.setattr(tree_module.Namespace, "resolve", resolve_then_swap)
    else:
        from xxftp_pyftpdlib import beneath
        open_path = beneath._open_path

        def use_then_swap(path: str, *args):
            try:
                return open_path(path, *args)
            finally:
                swap(path)

        monkeypatch.setattr(beneath, "_open_path", use_then_swap)
    ftp = connect(start_server(tree.root).port, "alice", "pw")
    ftp.voidcmd("TYPE I")
    verb = command.split()[0]
    armed.append(True)
    got: list[bytes] = []
    try:
        if verb in ("RETR", "LIST", "NLST", "MLSD"):
            ftp.retrbinary(command, got.append)
        elif verb in ("STOR", "APPE", "STOU"):
            ftp.storbinary(command, io.BytesIO(b"alice new"))
        else:
            reply = ftp.sendcmd(command)
            got.append(reply.encode())
    except ftplib.Error as err:
        reply = str(err)
        assert reply.startswith("550") and "symbolic link" in reply, reply
    else:
        # Only a command that had opened what it acts on before the swap may
        # succeed: it then acted on alice's folder (where ``box`` was).
        assert when == "first-used", f"{command} succeeded through the link: {b''.join(got)[:200]!r}"
    assert not armed, "the command never used a path through the folder"
    assert MARKER not in b"".join(got)
    assert snapshot(outside) == before
    assert ftp.voidcmd("NOOP").startswith("200")
