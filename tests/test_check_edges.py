"""``xxftpd check`` on the edges a newcomer meets: a hosts file that locks a
user out, a ``.xxftp`` that is a file, and the sample tree as shipped."""

from __future__ import annotations

import ftplib
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import HOST

SAMPLE = Path(__file__).resolve().parent.parent / "sample_root"


def check(root) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "xxftp_pyftpdlib", "--root", str(root), "check"],
                          capture_output=True, text=True, timeout=60)


def test_hosts_bad_lines_and_a_file_that_locks_the_user_out(tree, start_server, connect):
    tree.user("alice", password="pw").joinpath(".xxftp/password").chmod(0o600)
    tree.xxftp(tree.root / "alice", "hosts", "# office\n10.0.0.0/8\n10.1.2.300\n")
    tree.user("bob", password="pw").joinpath(".xxftp/password").chmod(0o600)
    tree.xxftp(tree.root / "bob", "hosts", "# only typos\nlocalhost\n127.0.0.1/33\n")
    done = check(tree.root)
    assert done.returncode == 1
    assert done.stdout.splitlines() == [
        "alice/.xxftp/hosts:3: invalid network '10.1.2.300' (CIDR or address): line ignored",
        "bob/.xxftp/hosts:2: invalid network 'localhost' (CIDR or address): line ignored",
        "bob/.xxftp/hosts:3: invalid network '127.0.0.1/33' (CIDR or address): line ignored",
        "bob/.xxftp/hosts:0: no valid network: 'bob' may log in from nowhere",
        "4 error(s), 0 warning(s)",
    ]
    server = start_server(tree.root)  # what the check says is what the server does
    with pytest.raises(ftplib.error_perm):
        connect(server.port, "bob", "pw")


def test_a_valid_hosts_file_is_clean(tree):
    tree.user("alice")
    tree.xxftp(tree.root / "alice", "hosts", "127.0.0.1\n::1\n192.168.0.0/16  # lan\n")
    done = check(tree.root)
    assert (done.returncode, done.stdout) == (0, "0 error(s), 0 warning(s)\n")


def test_an_xxftp_file_instead_of_a_folder(tree, start_server, connect):
    tree.user("alice").joinpath(".xxftp").write_text("password=secret\n")
    tree.folder("shared/sub").joinpath(".xxftp").write_text("")
    tree.user("bob", virtual="s $root/shared read\n")
    done = check(tree.root)
    assert done.returncode == 1
    assert done.stdout.splitlines() == [
        "alice/.xxftp:0: a file, not a folder: the server reads no settings from it (every login of this user "
        "is refused)",
        "shared/sub/.xxftp:0: a file, not a folder: the server reads no settings from it",
        "2 error(s), 0 warning(s)",
    ]
    server = start_server(tree.root)
    ftp = ftplib.FTP()
    ftp.connect(HOST, server.port, timeout=10)
    assert ftp.sendcmd("USER alice").startswith("331")  # not let in at USER with every right
    with pytest.raises(ftplib.error_perm, match="^530"):
        ftp.sendcmd("PASS anything")
    ftp.close()
    assert connect(server.port, "bob").nlst("s") == ["sub"]  # a mount target's .xxftp file: no settings


def test_the_sample_tree_checks_clean_as_git_checks_it_out(tmp_path):
    root = tmp_path / "sample_root"
    shutil.copytree(SAMPLE, root, ignore=shutil.ignore_patterns("ledger*"))
    for password in root.glob("*/.xxftp/password"):
        password.chmod(0o644)  # the only mode git keeps for a file
    done = check(root)
    assert done.returncode == 0 and done.stdout.splitlines() == [
        "note: xxftp.sample marks a demonstration tree whose passwords are published: the modes of its password "
        "files are not checked (delete xxftp.sample for a tree of your own)",  # never silent about it
        "0 error(s), 0 warning(s)",
    ]
    (root / "xxftp.sample").unlink()  # a tree of one's own: the mode matters
    done = check(root)
    assert done.stdout.splitlines() == [
        "alice/.xxftp/password:0: password file mode 0644 lets others read it (use 0600) (warning)",
        "0 error(s), 1 warning(s)",
    ]
