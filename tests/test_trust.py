"""What the server trusts on disk: ledgers and ``.xxftp`` files a user with
a shell could write must not make it act outside a home (over real sockets)."""

from __future__ import annotations

import ftplib
import json
import os

import pytest

from conftest import download, ledger_used, start_logged, stop_logged, store

NOBODY = 65534


def forged_ledger(victim: str, target: str, crash: str = "keep-new", temp: bool = True) -> str:
    """A ledger naming a dead owner's upload whose file is ``victim``."""
    entry = {"host": os.uname().nodename, "pid": 4_000_000, "start": None, "crash": crash, "target": target,
             "temp": victim if temp else None, "old": 0, "ino": os.stat(victim).st_ino, "keys": [],
             "bytes": 0, "written": 0, "since": 0.0, "touched": 0.0, "waiting": False}
    return json.dumps({"used": 0, "intents": [], "pending": {"x": entry}}, sort_keys=True)


@pytest.mark.parametrize("crash", ["keep-new", "delete", "truncate"])
def test_a_forged_ledger_never_touches_a_file_outside_its_tree(tree, start_server, connect, crash):
    alice = tree.user("alice", password="pw", size="10M")
    bob = tree.user("bob", password="bobsecret")
    victim = bob / ".xxftp" / "password"
    before = victim.read_bytes()
    sub = tree.folder("alice/sub")
    tree.xxftp(sub, "size", "10M\n")
    target = str(sub / "stolen.txt") if crash != "truncate" else str(victim)
    tree.xxftp(sub, "ledger", forged_ledger(str(victim), target, crash, temp=crash != "truncate"))
    server = start_server(tree.root)
    ftp = connect(server.port, "alice", "pw")
    assert store(ftp, "/sub/trigger.txt", b"hi").startswith("226")  # settles the ledger of /sub
    assert victim.read_bytes() == before
    assert not (sub / "stolen.txt").exists()
    with pytest.raises(ftplib.error_perm):
        download(ftp, "/sub/stolen.txt")
    assert ledger_used(sub) == 2  # rebuilt by a scan
    bob_ftp = ftplib.FTP()
    bob_ftp.connect("127.0.0.1", server.port, timeout=10)
    try:
        assert bob_ftp.sendcmd("USER bob").startswith("331")
    finally:
        bob_ftp.close()
    assert alice.exists()


def test_a_forged_home_ledger_is_not_settled_at_start(tree, tmp_path):
    alice = tree.user("alice", password="pw", size="10M")
    bob = tree.user("bob", password="bobsecret")
    victim = bob / ".xxftp" / "password"
    before = victim.read_bytes()
    tree.xxftp(alice, "ledger", forged_ledger(str(victim), str(alice / "stolen.txt")))
    proc, port = start_logged(tree.root)
    try:
        ftp = ftplib.FTP()
        ftp.connect("127.0.0.1", port, timeout=10)
        ftp.login("alice", "pw")
        assert ftp.sendcmd("SITE QUOTA").startswith("2")
        ftp.quit()
    finally:
        log = stop_logged(proc)
    assert victim.read_bytes() == before
    assert not (alice / "stolen.txt").exists()
    assert "outside the tree" in log


def test_a_ledger_of_another_user_is_replaced_not_read(tree, start_server, connect):
    alice = tree.user("alice", password="pw", size="10K")
    tree.file("alice/a.bin", b"x" * 1000)
    ledger = tree.xxftp(alice, "ledger", json.dumps({"used": 10240, "intents": [], "pending": {}}))
    os.chown(ledger, NOBODY, NOBODY)  # written by a shell user: it claims the tree is full
    server = start_server(tree.root)
    ftp = connect(server.port, "alice", "pw")
    assert store(ftp, "/b.bin", b"y" * 1000).startswith("226")
    st = os.stat(ledger)
    assert st.st_uid == os.geteuid() and not st.st_mode & 0o022
    assert ledger_used(alice) == 2000


def listing_names(ftp: ftplib.FTP, path: str) -> list[str]:
    return sorted(os.path.basename(name) for name in ftp.nlst(path))


def test_a_mount_declared_by_a_shell_user_is_ignored(tree, start_server, connect, caplog):
    tree.user("alice", password="pw")
    tree.user("bob", password="bobsecret")
    tree.file("bob/secret.txt", b"bob's")
    x = tree.folder("alice/x")
    virtual = tree.xxftp(x, "virtual", "bobhome $root/bob read,write,modify\netc /etc read\n")
    server = start_server(tree.root)
    ftp = connect(server.port, "alice", "pw")
    assert listing_names(ftp, "/x") == ["bobhome", "etc"]  # the server's own user wrote it: honoured
    os.chown(virtual, NOBODY, NOBODY)
    assert listing_names(ftp, "/x") == []
    for path in ("/x/bobhome/secret.txt", "/x/etc/passwd"):
        with pytest.raises(ftplib.error_perm):
            download(ftp, path)
    with pytest.raises(ftplib.error_perm):
        ftp.delete("/x/bobhome/secret.txt")
    assert (tree.root / "bob" / "secret.txt").exists()
    assert "not trusted (owned by uid 65534" in caplog.text


def test_a_writable_xxftp_folder_is_not_trusted(tree, start_server, connect, caplog):
    alice = tree.user("alice", password="pw", permission="read,write")
    server = start_server(tree.root)
    ftp = connect(server.port, "alice", "pw")
    assert store(ftp, "/a.txt", b"a").startswith("226")
    os.chmod(alice / ".xxftp", 0o775)  # the server's own group may write it (a umask of 002)
    assert store(ftp, "/b.txt", b"b").startswith("226")
    os.chown(alice / ".xxftp", -1, NOBODY)  # another group could swap its files
    assert store(ftp, "/c.txt", b"c").startswith("550")  # no rights at all, not full rights
    assert f"writable by group {NOBODY}" in caplog.text
    os.chown(alice / ".xxftp", -1, os.getegid())
    os.chmod(alice / ".xxftp", 0o757)  # anyone could
    assert store(ftp, "/d.txt", b"d").startswith("550")
    assert "writable by others" in caplog.text


def test_a_size_file_of_another_user_refuses_uploads(tree, start_server, connect):
    alice = tree.user("alice", password="pw")
    size = tree.xxftp(tree.folder("alice/sub"), "size", "1M\n")
    os.chown(size, NOBODY, NOBODY)
    server = start_server(tree.root)
    ftp = connect(server.port, "alice", "pw")
    assert store(ftp, "/a.txt", b"a").startswith("226")
    assert store(ftp, "/sub/a.txt", b"a").startswith("552")
    assert alice.exists()


def login_reply(port: int, user: str, password: str) -> str:
    ftp = ftplib.FTP()
    ftp.connect("127.0.0.1", port, timeout=10)
    try:
        reply = ftp.sendcmd(f"USER {user}")
        if reply.startswith("331"):
            try:
                reply = ftp.sendcmd(f"PASS {password}")
            except ftplib.error_perm as err:
                reply = str(err)
        return reply
    finally:
        ftp.close()


def test_an_untrusted_password_file_refuses_the_login(tree, start_server, caplog):
    alice = tree.user("alice", password="pw")
    server = start_server(tree.root)
    assert login_reply(server.port, "alice", "pw").startswith("230")
    os.chown(alice / ".xxftp" / "password", NOBODY, NOBODY)
    assert login_reply(server.port, "alice", "pw").startswith("530")
    assert "not trusted" in caplog.text


def test_an_untrusted_xxftp_folder_without_password_file_refuses_the_login(tree, start_server):
    alice = tree.user("alice", permission="read")
    server = start_server(tree.root)
    assert login_reply(server.port, "alice", "").startswith("230")  # no password file: USER logs in
    os.chown(alice / ".xxftp", NOBODY, NOBODY)  # a user who made their own .xxftp, without a password
    assert login_reply(server.port, "alice", "").startswith("530")


def test_an_untrusted_hosts_file_refuses_the_login(tree, start_server):
    alice = tree.user("alice", password="pw")
    hosts = tree.xxftp(alice, "hosts", "0.0.0.0/0\n")
    server = start_server(tree.root)
    assert login_reply(server.port, "alice", "pw").startswith("230")
    os.chmod(hosts, 0o646)
    assert login_reply(server.port, "alice", "pw").startswith("530")


def test_check_reports_untrusted_configuration(tree):
    import subprocess
    import sys
    alice = tree.user("alice", password="pw")
    os.chmod(alice / ".xxftp" / "password", 0o600)
    x = tree.folder("alice/x")
    os.chown(tree.xxftp(x, "virtual", "etc /etc read\n"), NOBODY, NOBODY)
    out = subprocess.run([sys.executable, "-m", "xxftp_pyftpdlib", "--root", str(tree.root), "check"],
                         capture_output=True, text=True, timeout=60)
    assert "alice/x/.xxftp/virtual:0: not trusted (owned by uid 65534" in out.stdout
    assert out.returncode != 0


def test_stou_meeting_a_busy_file_key_answers_450(tree, start_server, connect):
    """An entry of another host (taken as alive) holding the new file's inode:
    STOU answers 450 like STOR, and the session goes on."""
    alice = tree.user("alice", password="pw", size="10M")
    server = start_server(tree.root)
    ftp = connect(server.port, "alice", "pw")
    assert store(ftp, "/warm", b"x").startswith("226")
    probe = alice / "probe"
    probe.write_bytes(b"")
    st = probe.stat()
    probe.unlink()
    keys = [f"file:{st.st_dev}:{i}" for i in range(max(1, st.st_ino - 2000), st.st_ino + 20000)]
    ledger = alice / ".xxftp" / "ledger"
    state = json.loads(ledger.read_text())
    state["pending"]["held"] = {"host": "another-host", "pid": 1, "start": None, "crash": "delete",
                                "target": str(alice / "zzz"), "temp": None, "old": 0, "ino": 1, "keys": keys,
                                "bytes": 0, "written": 0, "since": 0.0, "touched": 0.0, "waiting": False}
    ledger.write_text(json.dumps(state, sort_keys=True))
    before = sorted(os.listdir(alice))
    assert store(ftp, "", b"y", cmd="STOU").startswith("450")
    assert ftp.sendcmd("NOOP").startswith("200")
    assert sorted(os.listdir(alice)) == before  # the unique name made for it is gone again


def test_a_fifo_swapped_in_after_the_stat_never_blocks_a_download(tree, start_server, connect):
    """A shell user swaps a FIFO with the file being downloaded, over and
    over (RENAME_EXCHANGE): a RETR gets the file or 550, never a server
    stuck in open()."""
    import ctypes
    import threading

    libc = ctypes.CDLL(None, use_errno=True)
    alice = tree.user("alice", password="pw")
    tree.file("alice/f", b"data")
    fifo = alice / "pipe"
    os.mkfifo(fifo)
    server = start_server(tree.root)
    ftp = connect(server.port, "alice", "pw", timeout=5)
    stop = threading.Event()

    def swap() -> None:
        a, b = str(alice / "f").encode(), str(fifo).encode()
        while not stop.is_set():
            libc.renameat2(-100, a, -100, b, 2)  # AT_FDCWD, RENAME_EXCHANGE

    swapper = threading.Thread(target=swap, daemon=True)
    swapper.start()
    replies = set()
    try:
        for _ in range(150):
            try:
                replies.add(download(ftp, "/f") == b"data")
            except ftplib.error_perm as err:
                assert str(err).startswith("550")
                replies.add("550")
    finally:
        stop.set()
        swapper.join(5)
        for _ in range(3):  # unblock a server stuck in open()
            try:
                os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
                os.close(os.open(alice / "f", os.O_WRONLY | os.O_NONBLOCK))
            except OSError:
                pass
    assert "550" in replies
    assert connect(server.port, "alice", "pw", timeout=5).sendcmd("NOOP").startswith("200")


def test_a_fifo_in_place_of_a_file_is_refused_without_blocking(tree, start_server, connect):
    """A FIFO (made by a shell user, or swapped in after the stat) is not
    opened for reading in a blocking way: RETR answers 550 and the server
    goes on serving others."""
    alice = tree.user("alice", password="pw")
    fifo = alice / "pipe"
    os.mkfifo(fifo)
    server = start_server(tree.root)
    ftp = connect(server.port, "alice", "pw", timeout=5)
    try:
        with pytest.raises(ftplib.error_perm, match="^550"):
            download(ftp, "/pipe")
        assert connect(server.port, "alice", "pw", timeout=5).sendcmd("NOOP").startswith("200")
    finally:  # unblock a server stuck in open()
        try:
            os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
        except OSError:
            pass


def test_concurrent_hash_upgrades_write_through_nothing(tree, start_server):
    """Logins upgrading one MD5 hash at once each replace the file whole; a
    link at a guessable temporary name is never written through."""
    import threading

    from xxftp_pyftpdlib import passwords

    alice = tree.user("alice", password="pw")
    victim = tree.root.parent / "victim"
    victim.write_text("untouched\n")
    for pid in {os.getpid(), os.getppid()}:
        os.symlink(victim, alice / ".xxftp" / f".password.tmp{pid}")
    server = start_server(tree.root, concurrency="multi-thread")
    server.server.handler.authorizer.accounts.upgrade_hashes = True
    replies: list[str] = []
    threads = [threading.Thread(target=lambda: replies.append(login_reply(server.port, "alice", "pw")))
               for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert len(replies) == 6 and all(reply.startswith("230") for reply in replies), replies
    assert victim.read_text() == "untouched\n"
    path = alice / ".xxftp" / "password"
    assert not path.is_symlink()
    assert passwords.kind(path.read_text()) == "scrypt" and passwords.verify(path.read_text(), "pw")
    assert sorted(n for n in os.listdir(alice / ".xxftp") if not n.startswith(".password.tmp")) == ["password"]
