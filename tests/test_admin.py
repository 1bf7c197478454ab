"""The admin commands of xxftpd, run as the real command."""

from __future__ import annotations

import os
import stat
import subprocess
import sys

from xxftp_pyftpdlib import passwords


def xxftpd(root, *args, stdin=""):
    return subprocess.run([sys.executable, "-m", "xxftp_pyftpdlib", "--root", str(root), *args],
                          capture_output=True, text=True, timeout=60, input=stdin)


def test_adduser_creates_everything_or_nothing(tree):
    tree.root.mkdir(parents=True, exist_ok=True)
    done = xxftpd(tree.root, "adduser", "carol", "--quota", "10M", "--permission", "read,write", "--stdin",
                  stdin="pw\n")
    assert done.returncode == 0, done.stderr
    config = tree.root / "carol/.xxftp"
    assert (config / "size").read_text() == "10M\n"
    assert (config / "permission").read_text() == "read,write\n"
    assert passwords.verify((config / "password").read_text(), "pw")
    assert stat.S_IMODE((config / "password").stat().st_mode) == 0o600
    for args in (["adduser", "carol", "--no-password"], ["adduser", "bad.name", "--no-password"],
                 ["adduser", "dave", "--quota", "lots", "--no-password"],
                 ["adduser", "dave", "--permission", "read,fly", "--no-password"],
                 ["adduser", "dave", "--stdin"]):
        done = xxftpd(tree.root, *args, stdin="\n")
        assert done.returncode != 0 and done.stderr.startswith("xxftpd: error:"), (args, done.stderr)
        assert "Traceback" not in done.stderr
    assert sorted(os.listdir(tree.root)) == ["carol"]  # nothing half-made
    done = xxftpd(tree.root, "adduser", "erin", "--no-password")
    assert done.returncode == 0 and not (tree.root / "erin/.xxftp/password").exists()


def test_mount_validates_before_writing(tree):
    tree.user("alice")
    tree.folder("shared")
    assert xxftpd(tree.root, "mount", "alice", "docs", "$root/shared", "read").returncode == 0
    virtual = tree.root / "alice/.xxftp/virtual"
    assert virtual.read_text() == "docs $root/shared read\n"
    for args, needle in ((["alice", "docs", "$root/shared", "read"], "already"),
                         (["alice", "loop", "$root/alice", "read"], "loop"),
                         (["alice", "gone", "/no/such/folder", "read"], "missing"),
                         (["alice", "x", "$root/shared", "read,fly"], "unknown permission"),
                         (["alice", ".hidden", "$root/shared", "read"], "invalid mount name"),
                         (["../..", "x", "$root/shared", "read"], "inside the root"),
                         (["nobody", "x", "$root/shared", "read"], "not a folder")):
        done = xxftpd(tree.root, "mount", *args)
        assert done.returncode != 0 and needle in done.stderr, (args, done.stderr)
    assert virtual.read_text() == "docs $root/shared read\n"


def test_check_golden_output(tree):
    home = tree.user("alice", password="pw", permission="read,fly", size="lots",
                     virtual="ok $root/shared read\nbroken\nloop $root/alice read\ngone $root/none read\n")
    (home / ".xxftp/password").chmod(0o644)
    tree.folder("shared")
    tree.xxftp(tree.folder("shared/sub"), "virtual", "x y z w\n")
    bob = tree.user("bob")
    tree.xxftp(bob, "password", "not a hash\n").chmod(0o600)
    tree.xxftp(tree.folder("stray-folder"), "permission", "read\n")
    tree.user("carol", password="pw").joinpath(".xxftp/password").chmod(0o600)
    done = xxftpd(tree.root, "check")
    assert done.returncode == 1
    assert done.stdout.splitlines() == [
        "alice/.xxftp/password:0: password file mode 0644 lets others read it (use 0600) (warning)",
        "bob/.xxftp/password:1: password file is in no known format (MD5 hex or $scrypt$): every login is refused",
        "alice/.xxftp/permission:1: unknown permission word 'fly' ignored",
        "alice/.xxftp/size:1: invalid size 'lots' (bytes, or a number with K, M or G)",
        "alice/.xxftp/virtual:2: expected 'NAME TARGET PERMISSION', got 1 field(s)",
        "alice/.xxftp/virtual:3: mount 'loop': target '" + str(tree.root) + "/alice' contains the folder "
        "that declares it (a loop): refused",
        "alice/.xxftp/virtual:4: mount 'gone': target '" + str(tree.root) + "/none' is missing or not a folder",
        "shared/sub/.xxftp/virtual:1: expected 'NAME TARGET PERMISSION', got 4 field(s)",
        "stray-folder:0: 'stray-folder' has a .xxftp folder but is neither a user (names are [A-Za-z0-9_]+) "
        "nor a mount target (warning)",
        "7 error(s), 2 warning(s)",
    ]
    clean = tree.root.parent / "clean"
    (clean / "dave").mkdir(parents=True)
    done = xxftpd(clean, "check")
    assert done.returncode == 0 and done.stdout == "0 error(s), 0 warning(s)\n"


def test_users_table(tree):
    tree.user("alice", password="pw", permission="read", size="1M", virtual="docs $root/d read\n")
    tree.folder("d")
    tree.file("alice/f.bin", b"x" * 1024)
    tree.user("bob")
    tree.user("anonymous")
    done = xxftpd(tree.root, "users")
    assert done.returncode == 0
    rows = [line.split() for line in done.stdout.splitlines()]
    assert rows[0] == ["USER", "PASSWORD", "PERMISSION", "QUOTA", "USED", "MOUNTS"]
    assert rows[1][:6] == ["alice", "md5", "read", "1.0", "MiB", "1.0"]
    assert rows[1][-1] == "docs"
    assert rows[3][:3] == ["bob", "none", "read,write,modify"]


def test_quota_table_and_rescan(tree):
    home = tree.user("alice", size="10K")
    tree.file("alice/a.bin", b"a" * 2048)
    done = xxftpd(tree.root, "quota")
    assert done.returncode == 0
    assert [line.split() for line in done.stdout.splitlines()][1] == ["alice", str(home), "10.0", "KiB", "2.0", "KiB", "0", "bytes", "8.0", "KiB", "20%"]
    assert not (home / ".xxftp/ledger").exists()  # a report writes no ledger: --rescan does
    assert "rescanned alice: 2.0 KiB" in xxftpd(tree.root, "quota", "--rescan", "alice").stdout
    tree.file("alice/outside-ftp.bin", b"b" * 4096)  # a change the ledger can't see
    assert "2.0 KiB" in xxftpd(tree.root, "quota").stdout
    done = xxftpd(tree.root, "quota", "--rescan", "alice")
    assert done.returncode == 0 and "rescanned alice: 6.0 KiB" in done.stdout
    assert "6.0 KiB" in xxftpd(tree.root, "quota").stdout
    bad = xxftpd(tree.root, "quota", "--rescan", "nobody")
    assert bad.returncode != 0 and "no such user" in bad.stderr
