"""``xxftpd users`` and ``xxftpd quota`` are reports: they leave the tree
exactly as it was (no ledger written or created, no folder made), and
still show the usage, also while a server's upload is held open."""

from __future__ import annotations

import os
import subprocess
import sys

from conftest import UploadInProgress, start_logged, stop_logged


def xxftpd(root, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "xxftp_pyftpdlib", "--root", str(root), *args],
                          capture_output=True, text=True, timeout=60)


def snapshot(root) -> dict[str, tuple]:
    """Every entry under ``root``: (mode, size, mtime_ns, content) — byte for byte."""
    seen = {}
    for folder, dirs, files in os.walk(root):
        for name in dirs + files:
            path = os.path.join(folder, name)
            st = os.lstat(path)
            data = open(path, "rb").read() if os.path.isfile(path) and not os.path.islink(path) else None
            seen[os.path.relpath(path, root)] = (st.st_mode, st.st_size, st.st_mtime_ns, data)
        seen[os.path.relpath(folder, root)] = ("folder", os.lstat(folder).st_mtime_ns)
    return seen


def a_tree(tree):
    tree.user("alice", password="pw", size="1M", virtual="team $root/team read,write\n")
    tree.file("alice/a.bin", b"a" * 3000)
    tree.xxftp(tree.folder("team"), "size", "10K\n")
    tree.file("team/t.bin", b"t" * 1024)
    tree.user("bob")
    tree.user("carol", size="0")


def test_users_and_quota_write_nothing(tree):
    a_tree(tree)
    before = snapshot(tree.root)
    users = xxftpd(tree.root, "users")
    quota = xxftpd(tree.root, "quota")
    assert users.returncode == 0 and quota.returncode == 0, users.stderr + quota.stderr
    assert snapshot(tree.root) == before
    assert not list(tree.root.rglob("ledger"))
    alice = next(line.split() for line in users.stdout.splitlines() if line.startswith("alice"))
    assert alice[3:7] == ["1.0", "MiB", "2.9", "KiB"]
    team = next(line.split() for line in quota.stdout.splitlines() if "team" in line)
    assert team[-1] == "10%" and "1.0" in team


def test_reports_beside_a_running_server(tree):
    a_tree(tree)
    proc, port = start_logged(tree.root)
    try:
        import ftplib
        ftp = ftplib.FTP()
        ftp.connect("127.0.0.1", port, timeout=10)
        ftp.login("alice", "pw")
        upload = UploadInProgress(ftp, "STOR new.bin")
        assert upload.send(b"n" * 5000)
        before = snapshot(tree.root)
        quota = xxftpd(tree.root, "quota")
        users = xxftpd(tree.root, "users")
        assert quota.returncode == 0 and users.returncode == 0
        assert snapshot(tree.root) == before  # the server's ledger, as the server wrote it
        assert upload.finish().startswith("226")
        after = xxftpd(tree.root, "users")
        alice = next(line.split() for line in after.stdout.splitlines() if line.startswith("alice"))
        assert alice[5:7] == ["7.8", "KiB"]  # 3000 + 5000 bytes, read from the server's ledger
        ftp.quit()
    finally:
        stop_logged(proc)
