"""Attacks on the quota rules with several sessions and several routes to a folder."""

from __future__ import annotations

import ftplib
import os
import stat as stat_mod
import time

import pytest

from conftest import UploadInProgress, ledger_used, open_file_bytes, size, store, tree_usage, upload_or_refusal, wait_until
from xxftp_pyftpdlib.config import ConfigStore

KiB = 1024
MiB = 1024 * KiB
OLD = b"old content " * 1000  # 12000 bytes
ARRIVAL = 0.2




def disk_bytes(folder) -> int:
    total = 0
    for d, dirs, files in os.walk(folder):
        dirs[:] = [x for x in dirs if x != ".xxftp"]
        for n in files:
            total += os.lstat(os.path.join(d, n)).st_size
    return total


# --- overlapping mounts: one folder, two trees


@pytest.fixture
def overlap(tree):
    """alice mounts /team (256 KiB quota); bob mounts only its sub-folder, /sub."""
    team = tree.folder("team-space")
    tree.folder("team-space/sub")
    tree.xxftp(team, "size", "256K\n")
    tree.user("alice", password="pw", virtual="team $root/team-space read,write,modify\n")
    tree.user("bob", password="pw", virtual="sub $root/team-space/sub read,write,modify\n")
    return team


def test_two_appends_through_overlapping_mounts(tree, overlap, start_server, connect):
    (overlap / "sub/shared.bin").write_bytes(OLD)
    port = start_server(tree.root).port
    alice, bob = connect(port, "alice", "pw"), connect(port, "bob", "pw")
    upload = UploadInProgress(alice, "APPE team/sub/shared.bin")
    upload.send(os.urandom(32 * KiB))
    assert wait_until(lambda: size(overlap / "sub/shared.bin") == len(OLD) + 32 * KiB)
    second = upload_or_refusal(bob, "APPE sub/shared.bin", b"B" * KiB)
    reply = upload.abort()  # alice's upload breaks: cut back to where it began

    assert reply.startswith("426"), reply
    acknowledged = b"B" * KiB if second.startswith("started, then 226") else b""
    assert (overlap / "sub/shared.bin").read_bytes() == OLD + acknowledged, "bytes answered with 226 were cut"
    assert second.startswith("450"), second


def test_uploads_through_a_mount_of_a_subfolder_count_in_the_tree(tree, overlap, start_server, connect):
    port = start_server(tree.root).port
    bob = connect(port, "bob", "pw")
    reply = store(bob, "sub/big.bin", os.urandom(512 * KiB))
    assert disk_bytes(overlap) <= 256 * KiB, reply


# --- room held by uploads whose data connection never comes


def test_uploads_waiting_for_their_data_connection_hold_no_room(tree, drop_box, start_server, connect):
    port = start_server(tree.root).port
    for i in range(8):  # STOR accepted (150), the data connection never opened
        ftp = connect(port, "anonymous")
        ftp.voidcmd("TYPE I")
        ftp.sendcmd("PASV")
        assert ftp.sendcmd(f"STOR upload/idle{i}.bin").startswith("150")
    time.sleep(3)
    big = os.urandom(4 * MiB)

    reply = store(connect(port, "anonymous"), "upload/big.bin", big)

    assert reply.startswith("226"), reply
    assert (drop_box / "big.bin").read_bytes() == big


# --- temporaries count on the disk


def test_overwrite_temporary_never_passes_the_limit_on_disk(tree, start_server, connect):
    """A full tree: its one file is replaced by an atomic STOR. While the
    new content arrives, the old file and the temporary are both on the
    disk, so the temporary needs room for all its bytes: here there is none,
    and the old file stays."""
    home = tree.user("alice", password="pw", size="1M")
    (home / "f.bin").write_bytes(b"o" * (960 * KiB))
    ftp = connect(start_server(tree.root).port, "alice", "pw")

    upload = UploadInProgress(ftp, "STOR f.bin")
    upload.send(os.urandom(960 * KiB))
    time.sleep(ARRIVAL)
    on_disk = disk_bytes(home) + open_file_bytes(os.getpid(), home)
    reply = upload.finish()

    assert reply.startswith("552"), reply
    assert on_disk <= 1 * MiB, f"{on_disk} bytes on the disk of a 1 MiB tree during the upload"
    assert (home / "f.bin").read_bytes() == b"o" * (960 * KiB)


# --- a ledger rebuilt by another process while an upload runs


@pytest.fixture
def second_server(tree):
    from conftest import free_port, run_xxftpd
    procs = []

    def start():
        port = free_port()
        procs.append(run_xxftpd("--root", str(tree.root), "--host", "127.0.0.1", "--port", str(port),
                                wait_for_port=port))
        return port

    yield start
    for proc in procs:
        proc.terminate()
        try:
            proc.communicate(timeout=10)
        except Exception:
            proc.kill()


def _half_way_append_and_a_rebuild_elsewhere(tree, start_server, connect, second_server):
    """alice APPEs f.bin through server A; the ledger is deleted and server B
    (another process on the same root) rebuilds it while the upload runs."""
    home = tree.user("alice", password="pw", size="1M")
    (home / "f.bin").write_bytes(OLD)
    port_a = start_server(tree.root).port
    port_b = second_server()
    a, b = connect(port_a, "alice", "pw"), connect(port_b, "alice", "pw")
    assert store(a, "seed.bin", b"s").startswith("226")

    upload = UploadInProgress(a, "APPE f.bin")
    upload.send(os.urandom(64 * KiB))
    assert wait_until(lambda: size(home / "f.bin") == len(OLD) + 64 * KiB)
    os.remove(home / ".xxftp/ledger")  # allowed at any time (rebuilt by a scan)
    assert b.sendcmd("SITE QUOTA").startswith("200")  # the other process rebuilds it now
    return home, b, upload


def test_ledger_rebuilt_by_another_process_mid_append_never_undercounts(tree, start_server, connect, second_server):
    """The process that rebuilds a deleted ledger can't know another
    process's running upload: its scan counts the bytes that upload wrote so
    far, which the upload charges again when it ends. A deleted ledger may
    so count too much (never too little) until a rescan."""
    home, b, upload = _half_way_append_and_a_rebuild_elsewhere(tree, start_server, connect, second_server)
    reply = upload.finish(os.urandom(64 * KiB))

    assert reply.startswith("226"), reply
    assert size(home / "f.bin") == len(OLD) + 128 * KiB
    assert tree_usage(home, tree.root) <= ledger_used(home) <= tree_usage(home, tree.root) + 64 * KiB
    assert b.sendcmd("SITE QUOTA").startswith("200")
    from xxftp_pyftpdlib.ledger import Quotas
    assert Quotas(ConfigStore(str(tree.root))).ledger(str(home)).rescan() == tree_usage(home, tree.root)
    assert ledger_used(home) == tree_usage(home, tree.root)


def test_ledger_rebuilt_by_another_process_mid_append_keeps_one_writer(tree, start_server, connect, second_server):
    home, b, upload = _half_way_append_and_a_rebuild_elsewhere(tree, start_server, connect, second_server)
    second = upload_or_refusal(b, "APPE f.bin", b"B" * KiB)
    reply = upload.finish(os.urandom(64 * KiB))

    assert reply.startswith("226"), reply
    assert second.startswith("450"), second


# --- an overwrite whose old file is renamed away before it commits


def test_overwrite_whose_old_file_was_renamed_away_respects_the_limit(tree, start_server, connect):
    home = tree.user("alice", password="pw", size="1M")
    (home / "f.bin").write_bytes(b"o" * (960 * KiB))
    port = start_server(tree.root).port
    writer, other = connect(port, "alice", "pw"), connect(port, "alice", "pw")

    upload = UploadInProgress(writer, "STOR f.bin")  # an atomic overwrite: charged for its growth only
    upload.send(os.urandom(960 * KiB))
    time.sleep(ARRIVAL)
    assert other.rename("f.bin", "g.bin").startswith("250")  # within the tree: allowed
    reply = upload.finish()

    assert tree_usage(home, tree.root) <= 1 * MiB, reply
    assert reply.startswith("552"), reply
    assert ledger_used(home) == tree_usage(home, tree.root)


# --- folders deeper than PATH_MAX


def test_a_folder_moved_into_a_quota_tree_counts_its_deepest_files(tree, start_server, connect):
    """alice fills a deep folder in her own (unlimited) home, makes its
    real path longer than PATH_MAX by renaming its top, then moves it into
    a 1 MiB tree."""
    home = tree.user("alice", password="pw", virtual="box $root/box read,write,modify\n")
    box = tree.folder("box")
    tree.xxftp(box, "size", "1M\n")
    ftp = connect(start_server(tree.root).port, "alice", "pw")
    part = "d" * 200
    depth = (4000 - len(str(home))) // (len(part) + 1)
    ftp.mkd("top")
    ftp.cwd("top")
    for _ in range(depth):
        ftp.mkd(part)
        ftp.cwd(part)
    assert store(ftp, "big.bin", os.urandom(2 * MiB)).startswith("226")
    ftp.cwd("/")
    ftp.rename("top", "t" * 250)  # the big file's real path is now over 4096 bytes

    ftp.sendcmd(f"RNFR {'t' * 250}")
    try:
        reply = ftp.sendcmd(f"RNTO box/{'t' * 250}")
    except ftplib.Error as err:
        reply = str(err)

    assert deep_bytes(box) <= 1 * MiB, reply
    assert reply.startswith("552"), reply


def deep_bytes(folder) -> int:
    """Bytes of the files under ``folder``, walked by descriptors (no PATH_MAX)."""
    def walk(fd: int) -> int:
        total = 0
        for name in os.listdir(fd):
            if name == ".xxftp":
                continue
            st = os.lstat(name, dir_fd=fd)
            if stat_mod.S_ISDIR(st.st_mode):
                sub = os.open(name, os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd)
                try:
                    total += walk(sub)
                finally:
                    os.close(sub)
            elif stat_mod.S_ISREG(st.st_mode):
                total += st.st_size
        return total
    top = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        return walk(top)
    finally:
        os.close(top)


# --- one file, two trees: a hard link


def test_appends_to_one_file_hard_linked_into_two_homes_are_refused(tree, start_server, connect):
    """One file with a name in each home: appending through either would
    change the other home's file too (and its tree, uncounted)."""
    tree.user("alice", password="pw", size="1M")
    tree.user("bob", password="pw", size="1M")
    shared = tree.file("alice/shared.bin", OLD)
    os.link(shared, tree.root / "bob/shared.bin")
    port = start_server(tree.root).port
    alice, bob = connect(port, "alice", "pw"), connect(port, "bob", "pw")

    for ftp in (alice, bob):
        refusal = upload_or_refusal(ftp, "APPE shared.bin", b"B" * KiB)
        assert refusal.startswith("550") and "hard links" in refusal, refusal
    assert shared.read_bytes() == OLD


# --- the ledger of an unlimited tree deleted during an upload


def test_dele_of_a_file_being_appended_after_its_ledger_was_deleted(tree, start_server, connect):
    home = tree.user("alice", password="pw")  # no limit: the server root's ledger keeps its running uploads
    (home / "f.bin").write_bytes(OLD)
    port = start_server(tree.root).port
    writer, other = connect(port, "alice", "pw"), connect(port, "alice", "pw")

    upload = UploadInProgress(writer, "APPE f.bin")
    upload.send(os.urandom(32 * KiB))
    assert wait_until(lambda: size(home / "f.bin") == len(OLD) + 32 * KiB)
    os.remove(tree.root / ".xxftp/ledger")  # where uploads with no quota above them are kept
    try:
        refusal = other.delete("f.bin")
    except ftplib.Error as err:
        refusal = str(err)
    reply = upload.finish(os.urandom(32 * KiB))

    assert refusal.startswith("450"), refusal
    assert reply.startswith("226"), reply
    assert size(home / "f.bin") == len(OLD) + 64 * KiB


# --- ABOR before the data connection


def test_abor_before_the_data_connection_ends_the_upload(tree, start_server, connect):
    home = tree.user("alice", password="pw", size="1M")
    ftp = connect(start_server(tree.root).port, "alice", "pw")
    ftp.voidcmd("TYPE I")
    ftp.sendcmd("PASV")
    assert ftp.sendcmd("STOR a.bin").startswith("150")
    assert ftp.sendcmd("ABOR").startswith("2")

    reply = store(ftp, "a.bin", b"a" * KiB)

    assert reply.startswith("226"), reply
    assert (home / "a.bin").read_bytes() == b"a" * KiB


# --- DELE measures the file before it takes the ledger's lock


def test_dele_racing_an_overwrite_commit_frees_what_it_removes(tree, start_server, connect):
    """An atomic overwrite commits while a DELE of the same name waits for the
    ledger (held here, as a slow ledger operation of another session would):
    the DELE must free the size of the file it removes, not of the one it saw."""
    import fcntl
    import threading

    home = tree.user("alice", password="pw", size="2M")
    port = start_server(tree.root, concurrency="multi-thread").port
    writer, deleter = connect(port, "alice", "pw"), connect(port, "alice", "pw")
    assert store(writer, "keep.bin", b"k" * (700 * KiB)).startswith("226")
    results = []
    for _ in range(5):
        assert store(writer, "a.bin", b"o" * (600 * KiB)).startswith("226")
        upload = UploadInProgress(writer, "STOR a.bin")  # replaces 600 KiB by 10 KiB
        upload.send(b"n" * (10 * KiB))
        time.sleep(ARRIVAL)
        lock = os.open(home / ".xxftp/ledger", os.O_RDWR)
        fcntl.flock(lock, fcntl.LOCK_EX)
        upload.conn.close()  # the commit waits for the lock
        time.sleep(ARRIVAL)
        dele = []
        thread = threading.Thread(target=lambda: dele.append(_reply(deleter.delete, "a.bin")))
        thread.start()  # DELE sees the old 600 KiB file, then waits for the lock
        time.sleep(ARRIVAL)
        os.close(lock)
        reply = upload._reply()
        thread.join(10)
        results.append((reply[:3], dele[0][:3], ledger_used(home), tree_usage(home, tree.root)))
        if dele[0].startswith("250"):
            break
    assert all(used == scanned for _, _, used, scanned in results), results


def _reply(command, *args) -> str:
    try:
        return command(*args)
    except ftplib.Error as err:
        return str(err)
