"""Quotas over real sockets: limits during the transfer, rollback,
growth charging, moves, concurrency."""

from __future__ import annotations

import ftplib
import hashlib
import io
import json
import os
import threading

import pytest

from conftest import store, upload
from xxftp_pyftpdlib.config import ConfigStore
from xxftp_pyftpdlib.ledger.scan import scan

KiB = 1024


def usage_on_disk(root, store_root) -> int:
    return scan(str(root), ConfigStore(str(store_root)))


def ledger_used(tree_root) -> int:
    with open(os.path.join(tree_root, ".xxftp", "ledger")) as f:
        return json.load(f)["used"]


def no_temporaries(root) -> bool:
    return not [n for _, _, files in os.walk(root) for n in files if n.startswith(".xxftpd-")]


@pytest.fixture
def limited(tree):
    home = tree.user("alice", password="pw", size="100K",
                     virtual="box $root/box-target read,write,modify\nfree $root/free-target read,write,modify\n")
    tree.xxftp(tree.folder("box-target"), "size", "10K\n")
    tree.folder("free-target")
    return home


def test_exactly_at_the_limit(tree, limited, start_server, connect):
    ftp = connect(start_server(tree.root).port, "alice", "pw")
    upload(ftp, "box/a.bin", b"x" * (10 * KiB))  # exactly the limit passes
    with pytest.raises(ftplib.error_perm, match=r"^552 .*10240 bytes"):
        upload(ftp, "box/b.bin", b"y")  # one more byte fails
    assert not (tree.root / "box-target/b.bin").exists()
    assert ftp.voidcmd("NOOP").startswith("200")  # the session goes on
    ftp.delete("box/a.bin")  # delete frees space at once
    upload(ftp, "box/b.bin", b"y" * (10 * KiB))
    assert no_temporaries(tree.root)


def test_new_file_over_quota_leaves_nothing(tree, limited, start_server, connect):
    ftp = connect(start_server(tree.root).port, "alice", "pw")
    assert store(ftp, "box/big.bin", os.urandom(50 * KiB)).startswith("552")
    assert not (tree.root / "box-target/big.bin").exists()
    assert no_temporaries(tree.root)
    assert ledger_used(tree.root / "box-target") == 0


def test_overwrite_charged_by_growth_and_failed_overwrite_keeps_old(tree, limited, start_server, connect):
    """While an overwrite runs, the old file and the new one are both on the
    disk: the new one needs room for all its bytes. Once it replaces the old
    one, only the difference counts."""
    ftp = connect(start_server(tree.root).port, "alice", "pw")
    upload(ftp, "box/f.bin", os.urandom(8 * KiB))
    old = (tree.root / "box-target/f.bin").read_bytes()
    with pytest.raises(ftplib.error_perm, match="^552"):
        upload(ftp, "box/f.bin", os.urandom(3 * KiB))  # 8 + 3 KiB on the disk at once: over 10 KiB
    assert hashlib.sha256((tree.root / "box-target/f.bin").read_bytes()).digest() == hashlib.sha256(old).digest()
    assert ledger_used(tree.root / "box-target") == 8 * KiB
    upload(ftp, "box/f.bin", b"s" * (2 * KiB))  # 8 + 2 KiB fit; then shrinking frees
    assert ledger_used(tree.root / "box-target") == 2 * KiB
    upload(ftp, "box/f.bin", b"t" * (8 * KiB))  # 2 + 8 KiB fit; charged by its growth
    assert ledger_used(tree.root / "box-target") == 8 * KiB
    assert no_temporaries(tree.root)


def test_appe_and_rest_stor_roll_back(tree, limited, start_server, connect):
    ftp = connect(start_server(tree.root).port, "alice", "pw")
    ftp.voidcmd("TYPE I")
    upload(ftp, "box/g.bin", b"a" * (6 * KiB))
    with pytest.raises(ftplib.error_perm, match="^552"):
        upload(ftp, "box/g.bin", b"b" * (5 * KiB), cmd="APPE")
    assert (tree.root / "box-target/g.bin").read_bytes() == b"a" * (6 * KiB)
    with pytest.raises(ftplib.error_perm, match="^552"):
        ftp.storbinary("STOR box/g.bin", io.BytesIO(b"c" * (5 * KiB)), rest=6 * KiB)
    assert (tree.root / "box-target/g.bin").read_bytes() == b"a" * (6 * KiB)
    upload(ftp, "box/g.bin", b"d" * (4 * KiB), cmd="APPE")  # fits exactly
    assert (tree.root / "box-target/g.bin").stat().st_size == 10 * KiB
    assert ledger_used(tree.root / "box-target") == 10 * KiB


def test_allo_and_site_quota(tree, limited, start_server, connect):
    ftp = connect(start_server(tree.root).port, "alice", "pw")
    ftp.cwd("/box")
    assert ftp.sendcmd("ALLO 10240").startswith("202")
    with pytest.raises(ftplib.error_perm, match="^552"):
        ftp.sendcmd("ALLO 10241")
    upload(ftp, "x.bin", b"x" * (4 * KiB))
    reply = ftp.sendcmd("SITE QUOTA")
    assert reply.startswith("200") and "4.0 KiB used of 10.0 KiB" in reply and "/box" in reply
    assert "No quota" in ftp.sendcmd("SITE QUOTA /free")
    assert "100.0 KiB" in ftp.sendcmd("SITE QUOTA /")
    reply = upload(ftp, "y.bin", b"y" * KiB)
    assert reply.startswith("226") and "5.0 KiB free of 10.0 KiB" in reply


def test_mount_quota_is_independent_of_home(tree, limited, start_server, connect):
    ftp = connect(start_server(tree.root).port, "alice", "pw")
    upload(ftp, "/home.bin", b"h" * (90 * KiB))
    upload(ftp, "box/m.bin", b"m" * (10 * KiB))  # the home is nearly full; the mount is not
    with pytest.raises(ftplib.error_perm, match="^552"):
        upload(ftp, "/more.bin", b"z" * (11 * KiB))
    assert ledger_used(limited) == 90 * KiB
    assert ledger_used(tree.root / "box-target") == 10 * KiB
    upload(ftp, "free/unlimited.bin", b"u" * (200 * KiB))


def test_moves_between_trees(tree, limited, start_server, connect):
    ftp = connect(start_server(tree.root).port, "alice", "pw")
    upload(ftp, "/big.bin", b"b" * (20 * KiB))
    upload(ftp, "/small.bin", b"s" * (3 * KiB))
    with pytest.raises(ftplib.error_perm, match="^552"):
        ftp.rename("/big.bin", "/box/big.bin")  # does not fit: nothing moves
    assert (limited / "big.bin").stat().st_size == 20 * KiB
    assert not (tree.root / "box-target/big.bin").exists()
    ftp.rename("/small.bin", "/box/small.bin")
    assert ledger_used(limited) == 20 * KiB
    assert ledger_used(tree.root / "box-target") == 3 * KiB
    ftp.mkd("/folder")
    upload(ftp, "/folder/in.bin", b"i" * (8 * KiB))
    with pytest.raises(ftplib.error_perm, match="^552"):
        ftp.rename("/folder", "/box/folder")  # 8 KiB + 3 KiB > 10 KiB
    ftp.rename("/box/small.bin", "/free/small.bin")  # out to an unlimited tree frees
    assert ledger_used(tree.root / "box-target") == 0
    ftp.rename("/folder", "/box/folder")
    assert ledger_used(tree.root / "box-target") == 8 * KiB
    assert ledger_used(limited) == 20 * KiB


def test_invalid_quota_file_refuses_uploads(tree, start_server, connect, caplog):
    tree.user("alice", password="pw", size="lots of bytes")
    ftp = connect(start_server(tree.root).port, "alice", "pw")
    for _ in range(3):
        with pytest.raises(ftplib.error_perm, match="^552 .*quota file .*invalid"):
            upload(ftp, "x.bin", b"x")
    assert not (tree.root / "alice/x.bin").exists()
    assert caplog.text.count("invalid size") == 1


@pytest.mark.parametrize("concurrency", ["async", "multi-thread"])
def test_parallel_uploads_never_pass_the_limit(tree, start_server, connect, concurrency):
    tree.user("alice", password="pw", size="1M")
    srv = start_server(tree.root, concurrency=concurrency)
    payloads = {i: os.urandom(300 * KiB) for i in range(8)}
    results: dict[int, str] = {}

    def client(i):
        ftp = connect(srv.port, "alice", "pw")
        results[i] = store(ftp, f"f{i}.bin", payloads[i])

    threads = [threading.Thread(target=client, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    ok = [i for i, r in results.items() if r.startswith("226")]
    assert len(results) == 8
    assert all(r.startswith(("226", "552")) for r in results.values()), results
    assert len(ok) == 3  # 3 x 300 KiB fit in 1 MiB, a 4th does not: exactly 3 complete
    home = tree.root / "alice"
    for i in ok:
        assert (home / f"f{i}.bin").read_bytes() == payloads[i]
    for i in set(results) - set(ok):
        assert not (home / f"f{i}.bin").exists()
    used = usage_on_disk(home, tree.root)
    assert used <= 1024 * KiB
    assert ledger_used(home) == used
    assert no_temporaries(home)


def test_dead_process_leftovers_are_settled_exactly(tree):
    """What a killed process leaves in a ledger is settled by the next reader
    (entries as the earlier ledger format wrote them: no host, no keys)."""
    import subprocess

    from xxftp_pyftpdlib.ledger import Quotas

    home = tree.user("alice", size="1M")
    dead = subprocess.Popen(["true"])
    dead.wait()
    temp = home / ".xxftpd-1.a.bin.part"
    temp.write_bytes(b"t" * 100)
    replaced = home / "replaced.bin"
    replaced.write_bytes(b"r" * 300)  # the replace happened, its charge was not written
    appended = home / "appended.bin"
    appended.write_bytes(b"a" * 50 + b"partial")
    deleted_gone = home / "gone.bin"  # the delete happened; 40 bytes to release
    still_there = home / "kept.bin"
    still_there.write_bytes(b"k" * 10)  # the delete did not happen
    who = {"pid": dead.pid, "start": None}
    state = {
        "used": 1000,
        "pending": {
            "1": {**who, "bytes": 500, "crash": "delete", "target": str(home / "a.bin"), "old": 0,
                  "temp": str(temp), "ino": temp.stat().st_ino, "since": 0},
            "2": {**who, "bytes": 500, "crash": "delete", "target": str(replaced), "old": 200,
                  "temp": str(home / ".xxftpd-2.r.part"), "ino": replaced.stat().st_ino, "since": 0},
            "3": {**who, "bytes": 500, "crash": "truncate", "target": str(appended), "old": 50,
                  "temp": None, "ino": appended.stat().st_ino, "since": 0},
        },
        "intents": [{**who, "delta": -40, "gone": str(deleted_gone)},
                    {**who, "delta": -10, "gone": str(still_there)}],
    }
    (home / ".xxftp/ledger").write_text(json.dumps(state))
    usage = Quotas(ConfigStore(str(tree.root))).limited(str(home)).usage()
    assert usage.reserved == 0
    assert usage.used == 1000 + (300 - 200) - 40
    assert not temp.exists()
    assert appended.read_bytes() == b"a" * 50
    assert still_there.exists()
    assert json.loads((home / ".xxftp/ledger").read_text())["intents"] == []


def test_torn_ledger_is_rebuilt(tree):
    from xxftp_pyftpdlib.ledger import Quotas

    home = tree.user("alice", size="1M")
    tree.file("alice/f.bin", b"f" * 123)
    (home / ".xxftp/ledger").write_text('{"used": 5, "pend')  # a write cut in the middle
    assert Quotas(ConfigStore(str(tree.root))).limited(str(home)).usage().used == 123


def test_stou_is_charged_and_leaves_nothing_when_refused(tree, limited, start_server, connect):
    ftp = connect(start_server(tree.root).port, "alice", "pw")
    ftp.cwd("/box")
    reply = store(ftp, "", b"u" * (4 * KiB), cmd="STOU")
    assert reply.startswith("226") and "6.0 KiB free" in reply
    reply = store(ftp, "", os.urandom(20 * KiB), cmd="STOU")
    assert reply.startswith("552")
    names = [n for n in os.listdir(tree.root / "box-target") if not n.startswith(".")]
    assert len(names) == 1 and (tree.root / "box-target" / names[0]).read_bytes() == b"u" * (4 * KiB)
    assert ledger_used(tree.root / "box-target") == 4 * KiB
    assert no_temporaries(tree.root)


@pytest.mark.parametrize("mode", ["atomic", "atomic-resume", "standard"])
@pytest.mark.parametrize("cmd", ["STOR", "APPE"])
def test_upload_onto_a_folder_is_refused_before_any_data(tree, limited, start_server, connect, mode, cmd):
    (limited / "folder").mkdir()
    (limited / "folder" / "inside.txt").write_bytes(b"kept")
    srv = start_server(tree.root, upload_mode=mode)
    ftp = connect(srv.port, "alice", "pw")
    ftp.voidcmd("TYPE I")
    ftp.sendcmd("PASV")  # a data connection is offered but never used
    with pytest.raises(ftplib.error_perm) as exc:
        ftp.sendcmd(f"{cmd} folder")  # the answer comes before any 150
    assert str(exc.value).startswith("550 ") and "folder" in str(exc.value)
    assert (limited / "folder" / "inside.txt").read_bytes() == b"kept"
    assert no_temporaries(tree.root)
    assert ftp.voidcmd("NOOP").startswith("200")


def test_a_folder_with_its_own_size_file_is_a_tree_of_its_own(tree, start_server, connect):
    """A file counts in the nearest tree at or above it: a subfolder with a
    size file of its own is counted there, and left out of the home's tree."""
    home = tree.user("alice", password="pw", size="100K")
    tree.xxftp(tree.folder("alice/projects"), "size", "10K\n")
    ftp = connect(start_server(tree.root).port, "alice", "pw")
    upload(ftp, "projects/a.bin", b"a" * (8 * KiB))
    with pytest.raises(ftplib.error_perm, match="^552 .*10240 bytes"):
        upload(ftp, "projects/b.bin", b"b" * (3 * KiB))  # the subfolder's limit, not the home's
    upload(ftp, "/h.bin", b"h" * (50 * KiB))
    assert ledger_used(home / "projects") == 8 * KiB == usage_on_disk(home / "projects", tree.root)
    assert ledger_used(home) == 50 * KiB == usage_on_disk(home, tree.root)
    assert "8.0 KiB used of 10.0 KiB" in ftp.sendcmd("SITE QUOTA /projects")
    with pytest.raises(ftplib.error_perm, match="^550 .*quota tree of its own"):
        ftp.rename("/projects", "/moved")
    assert no_temporaries(tree.root)
