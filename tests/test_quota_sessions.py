"""Quotas and uploads when several sessions act at once, over real sockets.

Rules checked (README "Quotas" and "Upload modes"):

- One writer per file: a second STOR, APPE or REST+STOR of a file while an
  upload writes it is refused at once (450, before any 150), whoever sends
  it; the running upload is unaffected.
- An upload writing in place (APPE, REST+STOR, STOR in ``standard`` mode)
  is charged from the file it writes, not from its path: a rename within
  the tree during the upload is allowed and the renamed file gets every
  byte; DELE of the file during the upload answers 450 and the file stays.
  Renaming files away mid-upload never lets a tree pass its limit.
- An atomic STOR commits into the folder it started in, wherever that
  folder is by then (renamed, or a folder above it renamed); RMD of that
  folder during the upload answers 450.
- A failed APPE cuts the file back to the length it had at its start, and
  never takes bytes another upload was acknowledged for.
- A new file is committed without clobbering: a file that appeared under
  its name meanwhile (outside FTP) turns the upload into an overwrite, which
  a write-only user may not make (550); the other file stays as it was.
- Room reserved ahead by uploads that receive nothing is given back after
  a while: idle uploads do not block another upload.
- A ledger deleted, rescanned or filled with garbage (also before a crash)
  is rebuilt: the server restarts, ``xxftpd quota [--rescan]`` works.
- ``.xxftp/size`` removed mid-upload: the upload goes on unlimited; added
  mid-upload: it applies at the upload's next reservation (552).
- Any valid file name (up to 255 bytes of UTF-8) can be stored in every
  upload mode.
- After all of these: the ledger equals a fresh scan of the tree and no
  upload temporary remains.
"""

from __future__ import annotations

import ftplib
import json
import os
import signal
import subprocess
import sys
import time

import pytest

from conftest import (HOST, UploadInProgress, free_port, ledger_used, run_xxftpd, size, store, temporaries,
                      tree_usage, upload_or_refusal, wait_until)

KiB = 1024
MiB = 1024 * KiB
OLD = b"old content " * 1000  # 12000 bytes
ARRIVAL = 0.2  # seconds for sent bytes to reach a temporary (nothing to watch on the disk)




# --- in-place uploads: charged from the file they write


# kind: (command, whether REST comes first, upload mode, whether the file's old content stays)
IN_PLACE = {
    "APPE": ("APPE", False, "atomic", True),
    "REST+STOR": ("STOR", True, "atomic", True),
    "STOR-standard": ("STOR", False, "standard", False),
}


def begin_in_place(ftp, kind: str, path: str, current: int) -> UploadInProgress:
    cmd, rest, _, _ = IN_PLACE[kind]
    return UploadInProgress(ftp, f"{cmd} {path}", current if rest else None)


def half_way_in_place(tree, start_server, connect, kind: str):
    """alice's in-place upload of ``kind`` into f.bin, 64 KiB in and held;
    returns (home, a second session of alice, the upload, the content the
    file keeps from before, the 64 KiB sent)."""
    home = tree.user("alice", password="pw", size="1M")
    (home / "f.bin").write_bytes(OLD)
    port = start_server(tree.root, upload_mode=IN_PLACE[kind][2]).port
    writer, other = connect(port, "alice", "pw"), connect(port, "alice", "pw")
    start = OLD if IN_PLACE[kind][3] else b""
    part1 = os.urandom(64 * KiB)
    upload = begin_in_place(writer, kind, "f.bin", len(OLD))
    upload.send(part1)
    assert wait_until(lambda: size(home / "f.bin") == len(start) + len(part1))
    return home, other, upload, start, part1


@pytest.mark.parametrize("kind", IN_PLACE)
def test_rename_during_in_place_upload(tree, start_server, connect, kind):
    home, other, upload, start, part1 = half_way_in_place(tree, start_server, connect, kind)
    part2 = os.urandom(64 * KiB)
    assert other.rename("f.bin", "g.bin").startswith("250")
    reply = upload.finish(part2)

    assert reply.startswith("226"), reply
    assert not (home / "f.bin").exists()
    assert (home / "g.bin").read_bytes() == start + part1 + part2
    assert ledger_used(home) == tree_usage(home, tree.root)


@pytest.mark.parametrize("kind", IN_PLACE)
def test_dele_during_in_place_upload_is_refused(tree, start_server, connect, kind):
    home, other, upload, start, part1 = half_way_in_place(tree, start_server, connect, kind)
    part2 = os.urandom(64 * KiB)
    with pytest.raises(ftplib.error_temp, match="^450"):
        other.delete("f.bin")
    reply = upload.finish(part2)

    assert reply.startswith("226"), reply
    assert (home / "f.bin").read_bytes() == start + part1 + part2
    assert ledger_used(home) == tree_usage(home, tree.root)


@pytest.mark.parametrize("kind", IN_PLACE)
def test_in_place_uploads_renamed_away_never_pass_the_limit(tree, start_server, connect, kind):
    """Each round: a small file, an in-place upload of 300 KiB into it, and
    a rename of the file while the upload runs. A 1 MiB tree fills up after
    three rounds; later rounds are refused, and the tree stays within its
    limit with a ledger that matches the disk after every round."""
    limit = 1 * MiB
    home = tree.user("alice", password="pw", size="1M")
    port = start_server(tree.root, upload_mode=IN_PLACE[kind][2]).port
    writer, other = connect(port, "alice", "pw"), connect(port, "alice", "pw")
    part = os.urandom(300 * KiB)
    rounds = []  # (round, bytes on the disk, the ledger's usage)
    for round_ in range(5):
        store(other, "f.bin", b"s" * KiB)  # refused once the tree is full
        current = max(size(home / "f.bin"), 0)
        start = current if IN_PLACE[kind][3] else 0
        try:
            upload = begin_in_place(writer, kind, "f.bin", current)
        except ftplib.Error:
            pass
        else:
            upload.send(part)
            wait_until(lambda: size(home / "f.bin") >= start + len(part) or upload.replied(), timeout=5)
            if (home / "f.bin").exists():
                other.rename("f.bin", f"kept{round_}.bin")
            upload.finish()
        rounds.append((round_, tree_usage(home, tree.root), ledger_used(home)))
    assert [r for r in rounds if r[1] > limit or r[2] != r[1]] == [], rounds
    assert not temporaries(tree.root)


# --- atomic uploads: committed into their folder, wherever it is by then


@pytest.mark.parametrize("folder, renamed, old, new", [
    ("d", "e", "d", "e"),  # the folder itself
    ("p/d", "q/d", "p", "q"),  # a folder above it
])
def test_atomic_upload_commits_into_its_renamed_folder(tree, start_server, connect, folder, renamed, old, new):
    home = tree.user("alice", password="pw", size="1M")
    tree.folder(f"alice/{folder}")
    port = start_server(tree.root).port
    writer, other = connect(port, "alice", "pw"), connect(port, "alice", "pw")
    part1, part2 = os.urandom(64 * KiB), os.urandom(64 * KiB)

    upload = UploadInProgress(writer, f"STOR {folder}/new.bin")
    upload.send(part1)
    time.sleep(ARRIVAL)
    assert other.rename(old, new).startswith("250")
    reply = upload.finish(part2)

    assert reply.startswith("226"), reply
    assert (home / renamed / "new.bin").read_bytes() == part1 + part2
    assert not (home / old).exists()
    assert temporaries(tree.root) == []
    assert ledger_used(home) == tree_usage(home, tree.root)


def test_rmd_of_the_folder_an_upload_commits_into_is_refused(tree, start_server, connect):
    home = tree.user("alice", password="pw", size="1M")
    port = start_server(tree.root).port
    writer, other = connect(port, "alice", "pw"), connect(port, "alice", "pw")
    writer.mkd("n")
    part1, part2 = os.urandom(64 * KiB), os.urandom(64 * KiB)

    upload = UploadInProgress(writer, "STOR n/x.bin")
    upload.send(part1)
    time.sleep(ARRIVAL)
    with pytest.raises(ftplib.error_temp, match="^450"):
        other.rmd("n")
    reply = upload.finish(part2)

    assert reply.startswith("226"), reply
    assert (home / "n/x.bin").read_bytes() == part1 + part2
    assert temporaries(tree.root) == []
    assert ledger_used(home) == tree_usage(home, tree.root)


# --- one writer per file


@pytest.fixture
def team(tree):
    """alice and bob both mount one folder, /team, with a 256 KiB quota."""
    for user in ("alice", "bob"):
        tree.user(user, password="pw", virtual="team $root/team-space read,write,modify\n")
    folder = tree.folder("team-space")
    tree.xxftp(folder, "size", "256K\n")
    return folder


@pytest.mark.parametrize("mode", ["atomic", "standard"])
@pytest.mark.parametrize("cmd, rest", [("APPE", False), ("STOR", False), ("STOR", True)],
                         ids=["APPE", "STOR", "REST+STOR"])
def test_second_upload_to_a_file_being_appended_is_refused(tree, team, start_server, connect, cmd, rest, mode):
    """In ``standard`` mode a STOR writes in place and empties the file:
    refused, it must not have cut anything."""
    (team / "shared.bin").write_bytes(OLD)
    port = start_server(tree.root, upload_mode=mode).port
    alice, bob = connect(port, "alice", "pw"), connect(port, "bob", "pw")
    part1, part2 = os.urandom(32 * KiB), os.urandom(32 * KiB)

    upload = UploadInProgress(alice, "APPE team/shared.bin")
    upload.send(part1)
    assert wait_until(lambda: size(team / "shared.bin") == len(OLD) + len(part1))
    refusal = upload_or_refusal(bob, f"{cmd} team/shared.bin", b"b" * KiB, len(OLD) if rest else None)
    assert refusal.startswith("450") and "another upload" in refusal, refusal
    reply = upload.finish(part2)

    assert reply.startswith("226"), reply
    assert (team / "shared.bin").read_bytes() == OLD + part1 + part2
    assert ledger_used(team) == tree_usage(team, tree.root)


@pytest.mark.parametrize("failure", ["quota", "broken"])
def test_failed_append_cuts_back_only_its_own_bytes(tree, team, start_server, connect, failure):
    (team / "shared.bin").write_bytes(OLD)
    port = start_server(tree.root).port
    alice, bob = connect(port, "alice", "pw"), connect(port, "bob", "pw")
    assert store(bob, "team/shared.bin", b"b" * KiB, "APPE").startswith("226")
    before = OLD + b"b" * KiB

    upload = UploadInProgress(alice, "APPE team/shared.bin")  # the slow one
    upload.send(os.urandom(32 * KiB))
    assert wait_until(lambda: size(team / "shared.bin") == len(before) + 32 * KiB)
    second = upload_or_refusal(bob, "APPE team/shared.bin", b"B" * KiB)  # the fast one
    if failure == "quota":
        upload.send(os.urandom(512 * KiB))  # passes the limit
        reply = upload.finish()
    else:
        reply = upload.abort()  # the data connection is reset

    assert reply.startswith({"quota": "552", "broken": "426"}[failure]), reply
    acknowledged = b"B" * KiB if second.startswith("started, then 226") else b""
    assert (team / "shared.bin").read_bytes() == before + acknowledged, "bytes answered with 226 were cut"
    assert second.startswith("450"), second
    assert ledger_used(team) == tree_usage(team, tree.root)
    assert temporaries(tree.root) == []


# --- commit without clobbering


@pytest.mark.parametrize("route", ["written", "moved"])
def test_write_only_upload_never_replaces_a_file_that_appeared_meanwhile(tree, drop_box, start_server, connect, route):
    port = start_server(tree.root).port
    ftp = connect(port, "anonymous")
    assert store(ftp, "upload/seed.bin", b"s" * (3 * KiB)).startswith("226")
    part1, part2 = os.urandom(64 * KiB), os.urandom(64 * KiB)

    upload = UploadInProgress(ftp, "STOR upload/new.bin")
    upload.send(part1)
    time.sleep(ARRIVAL)
    if route == "written":  # another process writes the name
        appeared = os.urandom(5 * KiB)
        (drop_box / "new.bin").write_bytes(appeared)
    else:  # another process moves a file of the tree onto the name
        appeared = (drop_box / "seed.bin").read_bytes()
        os.rename(drop_box / "seed.bin", drop_box / "new.bin")
    reply = upload.finish(part2)

    assert reply.startswith("550"), reply
    assert (drop_box / "new.bin").read_bytes() == appeared
    assert temporaries(tree.root) == []
    used = tree_usage(drop_box, tree.root)
    if route == "written":  # the ledger does not see a file written outside FTP (README)
        assert ledger_used(drop_box) in (used, used - len(appeared))
    else:
        assert ledger_used(drop_box) == used


def test_second_upload_of_a_new_name_is_refused(tree, drop_box, start_server, connect):
    port = start_server(tree.root).port
    first, second = connect(port, "anonymous"), connect(port, "anonymous")
    part1, part2 = os.urandom(64 * KiB), os.urandom(64 * KiB)

    upload = UploadInProgress(first, "STOR upload/new.bin")
    upload.send(part1)
    time.sleep(ARRIVAL)
    refusal = upload_or_refusal(second, "STOR upload/new.bin", b"x" * KiB)
    assert refusal.startswith("450") and "another upload" in refusal, refusal
    reply = upload.finish(part2)

    assert reply.startswith("226"), reply
    assert (drop_box / "new.bin").read_bytes() == part1 + part2
    assert temporaries(tree.root) == []
    assert ledger_used(drop_box) == tree_usage(drop_box, tree.root)


# --- reservations have leases


def test_idle_uploads_give_back_their_room(tree, drop_box, start_server, connect):
    port = start_server(tree.root).port
    idle = []
    for i in range(45):
        upload = UploadInProgress(connect(port, "anonymous"), f"STOR upload/idle{i}.bin")
        upload.send(b"i")
        idle.append(upload)
    time.sleep(3)
    big = os.urandom(4 * MiB)

    reply = store(connect(port, "anonymous"), "upload/big.bin", big)

    assert reply.startswith("226"), reply
    replies = [upload.finish() for upload in idle]
    assert [r[:3] for r in replies] == ["226"] * len(idle), sorted(set(replies))
    assert (drop_box / "big.bin").read_bytes() == big
    assert all((drop_box / f"idle{i}.bin").read_bytes() == b"i" for i in range(len(idle)))
    assert temporaries(tree.root) == []
    assert ledger_used(drop_box) == tree_usage(drop_box, tree.root) == len(big) + len(idle)


def test_uploads_waiting_for_their_data_connection_give_back_their_room(tree, drop_box, start_server, connect):
    """PASV + STOR and no data connection: the upload is open, and holds
    room ahead, until its lease runs out."""
    port = start_server(tree.root).port
    waiting = []
    for i in range(45):
        ftp = connect(port, "anonymous")
        ftp.voidcmd("TYPE I")
        ftp.sendcmd("PASV")
        assert ftp.sendcmd(f"STOR upload/queued{i}.bin").startswith("150")
        waiting.append(ftp)
    time.sleep(3)
    big = os.urandom(4 * MiB)
    assert store(connect(port, "anonymous"), "upload/big.bin", big).startswith("226")
    for ftp in waiting:
        ftp.close()
    assert wait_until(lambda: ledger_used(drop_box) == tree_usage(drop_box, tree.root) == len(big))
    assert wait_until(lambda: not json.loads((drop_box / ".xxftp" / "ledger").read_text())["pending"])


# --- a broken ledger, and a crash


def admin(root, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "xxftp_pyftpdlib", "--root", str(root), *args],
                          capture_output=True, text=True, timeout=30)


def login(port: int) -> ftplib.FTP:
    ftp = ftplib.FTP()
    ftp.connect(HOST, port, timeout=10)
    ftp.login("alice", "pw")
    return ftp


LEDGERS = {
    "deleted-mid-upload": None,
    "rescanned-mid-upload": None,
    "wrong-usage": '{"used": "x"}',
    "pending-a-list": '{"used": 5, "pending": []}',
    "pending-entry-empty": '{"used": 5, "pending": {"a": {}}}',
    "truncated": '{"used": 5, "pending": {"',
}


@pytest.mark.parametrize("damage", LEDGERS)
def test_broken_ledger_and_a_crash(tree, damage):
    home = tree.user("alice", password="pw", size="10M")
    (home / "old.bin").write_bytes(OLD)
    ledger = home / ".xxftp/ledger"
    port = free_port()
    proc = run_xxftpd("--root", str(tree.root), "--host", HOST, "--port", str(port), wait_for_port=port)
    clients = []
    try:
        clients = [login(port), login(port)]
        held = [UploadInProgress(clients[0], "STOR new.bin"), UploadInProgress(clients[1], "APPE old.bin")]
        for upload in held:
            upload.send(os.urandom(4 * KiB))
        assert wait_until(lambda: size(home / "old.bin") == len(OLD) + 4 * KiB)
        time.sleep(ARRIVAL)
        if damage == "deleted-mid-upload":
            os.remove(ledger)
        elif damage == "rescanned-mid-upload":
            done = admin(tree.root, "quota", "--rescan")
            assert done.returncode == 0 and "Traceback" not in done.stderr, done.stderr
        for upload in held:
            upload.send(os.urandom(4 * KiB))
        assert wait_until(lambda: size(home / "old.bin") == len(OLD) + 8 * KiB)
        time.sleep(ARRIVAL)
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
    finally:
        for ftp in clients:
            ftp.close()
        if proc.poll() is None:
            proc.kill()
        _, stderr = proc.communicate()
    assert "Traceback" not in stderr, stderr
    if LEDGERS[damage] is not None:
        ledger.write_text(LEDGERS[damage])

    port = free_port()
    proc = run_xxftpd("--root", str(tree.root), "--host", HOST, "--port", str(port), wait_for_port=port)
    try:
        ftp = login(port)
        assert store(ftp, "after.bin", b"a" * KiB).startswith("226")
        assert not [n for n in ftp.nlst() if n.startswith(".")]
        ftp.quit()
        assert temporaries(tree.root) == []
        assert ledger_used(home) == tree_usage(home, tree.root)
        shown = admin(tree.root, "quota")
        assert shown.returncode == 0 and "Traceback" not in shown.stderr, shown.stderr
        assert ledger_used(home) == tree_usage(home, tree.root)
        rescanned = admin(tree.root, "quota", "--rescan")
        assert rescanned.returncode == 0 and "Traceback" not in rescanned.stderr, rescanned.stderr
        assert ledger_used(home) == tree_usage(home, tree.root)
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            _, stderr = proc.communicate(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            _, stderr = proc.communicate()
    assert "Traceback" not in stderr, stderr


# --- the size file changed during an upload


def test_size_file_removed_mid_upload(tree, start_server, connect):
    home = tree.user("alice", password="pw", size="1M")
    ftp = connect(start_server(tree.root).port, "alice", "pw")
    part1, part2 = os.urandom(64 * KiB), os.urandom(896 * KiB)  # part2 passes any room reserved ahead

    upload = UploadInProgress(ftp, "STOR big.bin")
    upload.send(part1)
    time.sleep(ARRIVAL)
    os.remove(home / ".xxftp/size")
    reply = upload.finish(part2)

    assert reply.startswith("226"), reply
    assert (home / "big.bin").read_bytes() == part1 + part2
    assert temporaries(tree.root) == []


def test_size_file_added_mid_upload(tree, start_server, connect):
    home = tree.user("alice", password="pw")
    (home / "old.bin").write_bytes(b"o" * (3 * MiB // 2))
    ftp = connect(start_server(tree.root).port, "alice", "pw")

    upload = UploadInProgress(ftp, "STOR big.bin")
    upload.send(os.urandom(64 * KiB))
    time.sleep(ARRIVAL)
    tree.xxftp(home, "size", "1M\n")  # less than the tree holds already
    upload.send(os.urandom(9 * MiB))  # passes any room reserved ahead (at most 8 MiB)
    reply = upload.finish()

    assert reply.startswith("552"), reply
    assert not (home / "big.bin").exists()
    assert temporaries(tree.root) == []
    assert ledger_used(home) == tree_usage(home, tree.root)


# --- long names


def test_longest_utf8_names_in_every_upload_mode(tree, start_server, connect):
    home = tree.user("alice", password="pw", size="1M")
    names = ["\U0001F600" * 60 + ".pdf", "\U0001F600" * 63 + "abc"]
    assert [len(n.encode()) for n in names] == [244, 255]
    data = os.urandom(4 * KiB)
    replies = {}
    for mode in ("atomic", "atomic-resume", "standard"):
        ftp = connect(start_server(tree.root, upload_mode=mode).port, "alice", "pw")
        ftp.mkd(mode)
        for name in names:
            replies[mode, len(name.encode())] = store(ftp, f"{mode}/{name}", data)
    assert {key: reply[:3] for key, reply in replies.items()} == {key: "226" for key in replies}, replies
    for mode in ("atomic", "atomic-resume", "standard"):
        for name in names:
            assert (home / mode / name).read_bytes() == data
    assert temporaries(tree.root) == []
    assert ledger_used(home) == tree_usage(home, tree.root)


# --- one writer per file, whatever serves the sessions


@pytest.mark.parametrize("setup", ["multi-thread", "two-servers", "workers"])
def test_one_writer_per_file_across_threads_and_processes(tree, start_server, setup):
    """The second writer is refused by the tree's ledger, which every thread,
    process and worker serving the root shares."""
    home = tree.user("alice", password="pw")
    (home / "f.bin").write_bytes(OLD)
    procs = []

    def spawn(*extra: str) -> int:
        port = free_port()
        procs.append(run_xxftpd("--root", str(tree.root), "--host", HOST, "--port", str(port), *extra,
                                wait_for_port=port))
        return port

    try:
        if setup == "multi-thread":
            ports = [start_server(tree.root, concurrency="multi-thread").port] * 2
        elif setup == "two-servers":
            ports = [spawn(), spawn()]
        else:
            ports = [spawn("--workers", "2")] * 2
        writer = ftplib.FTP()
        writer.connect(HOST, ports[0], timeout=10)
        writer.login("alice", "pw")
        upload = UploadInProgress(writer, "APPE f.bin")
        upload.send(b"a" * KiB)
        assert wait_until(lambda: size(home / "f.bin") == len(OLD) + KiB)
        # With --workers, a new connection may land on either worker: try several.
        for _ in range(4 if setup == "workers" else 1):
            other = ftplib.FTP()
            other.connect(HOST, ports[1], timeout=10)
            other.login("alice", "pw")
            for cmd in ("STOR f.bin", "APPE f.bin"):
                refusal = upload_or_refusal(other, cmd, b"b" * KiB)
                assert refusal.startswith("450"), refusal
            other.close()
        assert upload.finish(b"a" * KiB).startswith("226")
        writer.close()
        assert (home / "f.bin").read_bytes() == OLD + b"a" * (2 * KiB)
    finally:
        for proc in procs:
            proc.send_signal(signal.SIGTERM)
        for proc in procs:
            proc.communicate(timeout=15)


def test_overwrite_of_a_file_renamed_onto_while_appended_is_refused_at_once(tree, start_server, connect):
    """An APPE writes f.bin; another session renames it to g.bin (allowed:
    the upload follows the file). A STOR of g.bin would replace the file
    being written: 450 before any data, not after the transfer."""
    home = tree.user("alice", password="pw")
    (home / "f.bin").write_bytes(OLD)
    port = start_server(tree.root).port
    writer, other = connect(port, "alice", "pw"), connect(port, "alice", "pw")
    upload = UploadInProgress(writer, "APPE f.bin")
    upload.send(b"a" * KiB)
    assert wait_until(lambda: size(home / "f.bin") == len(OLD) + KiB)
    assert other.rename("f.bin", "g.bin").startswith("250")
    refusal = upload_or_refusal(other, "STOR g.bin", b"x" * KiB)
    assert refusal.startswith("450"), refusal
    assert upload.finish(b"a" * KiB).startswith("226")
    assert (home / "g.bin").read_bytes() == OLD + b"a" * (2 * KiB)
