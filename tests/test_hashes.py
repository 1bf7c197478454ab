"""HASH, OPTS HASH, RANG and the X-commands over a real server; the rules of
``hashes`` (spans, names, the cache, the bound on jobs) without one."""

from __future__ import annotations

import ftplib
import hashlib
import os
import select
import socket
import ssl
import time
import zlib

import pytest

from conftest import ResumingFTP_TLS, start_logged, stop_logged, upload, wait_until
from xxftp_pyftpdlib import XxftpTLSHandler, certs, hashes

SIZES = {"empty": 0, "one": 1, "mib": 1 << 20, "big": 50 << 20}
REFERENCE = {
    "SHA-256": lambda data: hashlib.sha256(data).hexdigest(),
    "SHA-512": lambda data: hashlib.sha512(data).hexdigest(),
    "SHA-1": lambda data: hashlib.sha1(data).hexdigest(),
    "MD5": lambda data: hashlib.md5(data).hexdigest(),
    "CRC32": lambda data: f"{zlib.crc32(data):08x}",
}
LEGACY = {name: cmd for cmd, name in hashes.LEGACY.items()}
HUGE = 1 << 30  # a sparse file whose MD5 takes a second or more


def _content(size: int) -> bytes:
    """Bytes that are not all alike (a sum over zeros would hide an offset bug)."""
    block = hashlib.sha512(str(size).encode()).digest() * 2048  # 128 KiB
    return (block * (size // len(block) + 1))[:size]


@pytest.fixture(autouse=True)
def _fine_clock(monkeypatch):
    """This file system keeps times to the nanosecond: a short settling
    time is enough here (the default is for coarse file systems)."""
    monkeypatch.setattr(hashes, "SETTLED", 0.1)


def _settle() -> None:
    """Let a file just written become cacheable (see ``hashes.SETTLED``)."""
    time.sleep(hashes.SETTLED + 0.05)


def _reply(ftp: ftplib.FTP, line: str) -> str:
    try:
        return ftp.sendcmd(line)
    except ftplib.Error as err:
        return str(err)


def _stat(key: str) -> int:
    return hashes.stats()[key]


@pytest.fixture
def served(tree, start_server, connect):
    """(ftp logged in as alice, her home, the server); files of each size in it."""
    home = tree.user("alice")
    for name, size in SIZES.items():
        tree.file(f"alice/{name}.bin", _content(size))
    server = start_server(tree.root)
    assert wait_until(lambda: _stat("in_progress") == 0, 60)  # nothing left of another test
    return connect(server.port, "alice"), home, server


def test_every_algorithm_of_every_size_matches_hashlib_and_zlib(served):
    ftp, home, _ = served
    for name, size in SIZES.items():
        data = _content(size)
        end = max(size - 1, 0)
        for algorithm, reference in REFERENCE.items():
            assert ftp.sendcmd(f"OPTS HASH {algorithm}") == f"200 {algorithm}"
            expected = reference(data)
            assert ftp.sendcmd(f"HASH {name}.bin") == f"213 {algorithm} 0-{end} {expected} /{name}.bin"
            assert ftp.sendcmd(f"{LEGACY[algorithm]} /{name}.bin") == f"213 {expected}"


def test_a_quoted_name_is_taken_without_its_quotes(served, tree):
    ftp, home, _ = served
    tree.file("alice/with space.bin", b"spaced")
    expected = hashlib.sha256(b"spaced").hexdigest()
    assert ftp.sendcmd('HASH "with space.bin"') == f"213 SHA-256 0-5 {expected} /with space.bin"  # as WinSCP sends it
    assert ftp.sendcmd("HASH with space.bin") == f"213 SHA-256 0-5 {expected} /with space.bin"
    assert ftp.sendcmd('XSHA256 "/with space.bin"') == f"213 {expected}"
    assert _reply(ftp, 'XSHA256 "with space.bin').startswith("550 ")


def test_feat_and_opts_hash_follow_the_session(served, connect):
    ftp, _, server = served
    features = ftp.sendcmd("FEAT").splitlines()
    assert " HASH SHA-256*;SHA-512;SHA-1;MD5;CRC32" in features
    assert {" XCRC", " XMD5", " XSHA1", " XSHA256", " XSHA512"} <= set(features)
    assert ftp.sendcmd("OPTS HASH") == "200 SHA-256"
    assert ftp.sendcmd("OPTS HASH sha-1") == "200 SHA-1"
    assert _reply(ftp, "OPTS HASH CRC-37") == "501 Unknown algorithm, current selection not changed."
    assert ftp.sendcmd("OPTS HASH") == "200 SHA-1"
    assert " HASH SHA-256;SHA-512;SHA-1*;MD5;CRC32" in ftp.sendcmd("FEAT").splitlines()
    assert ftp.sendcmd("HASH one.bin").startswith("213 SHA-1 0-0 ")
    other = connect(server.port, "alice")  # the choice is this session's only
    assert other.sendcmd("OPTS HASH") == "200 SHA-256"
    assert other.sendcmd("HASH one.bin").startswith("213 SHA-256 0-0 ")
    assert ftp.sendcmd("OPTS UTF8 ON").startswith("200")  # the other OPTS still pyftpdlib's


def test_rein_forgets_the_hash_choice_and_a_pending_range(served):
    """Like REST, what one login chose is not the next login's."""
    ftp, _, _ = served
    assert ftp.sendcmd("OPTS HASH MD5") == "200 MD5"
    assert ftp.sendcmd("RANG 0 0").startswith("350 ")
    assert ftp.sendcmd("REIN").startswith("230")  # pyftpdlib answers REIN so
    ftp.login("alice", "")
    assert ftp.sendcmd("OPTS HASH") == "200 SHA-256"
    data = _content(SIZES["mib"])
    assert ftp.sendcmd("HASH mib.bin") == f"213 SHA-256 0-{len(data) - 1} {REFERENCE['SHA-256'](data)} /mib.bin"


def test_rang_covers_the_next_hash_only(served):
    ftp, _, _ = served
    data = _content(SIZES["mib"])
    sha = REFERENCE["SHA-256"]
    assert ftp.sendcmd("RANG 0 49").startswith("350 ")
    assert ftp.sendcmd("HASH mib.bin") == f"213 SHA-256 0-49 {sha(data[:50])} /mib.bin"
    whole = f"213 SHA-256 0-{len(data) - 1} {sha(data)} /mib.bin"
    assert ftp.sendcmd("HASH mib.bin") == whole  # used up
    ftp.sendcmd("RANG 1000 1000")
    assert ftp.sendcmd("HASH mib.bin") == f"213 SHA-256 1000-1000 {sha(data[1000:1001])} /mib.bin"
    ftp.sendcmd("RANG 1048000 99999999")  # an end beyond the file is cut to its last byte
    assert ftp.sendcmd("HASH mib.bin") == f"213 SHA-256 1048000-{len(data) - 1} {sha(data[1048000:])} /mib.bin"
    ftp.sendcmd("RANG 0 9")
    assert ftp.sendcmd("RANG 1 0").startswith("350 ")  # the draft's reset
    assert ftp.sendcmd("HASH mib.bin") == whole
    ftp.sendcmd("RANG 2000000 2000001")
    assert _reply(ftp, "HASH mib.bin").startswith("501 RANG starts at byte 2000000, beyond the end")
    assert _reply(ftp, "RANG 9 2").startswith("501 ")
    assert _reply(ftp, "RANG x 2").startswith("501 ")
    assert _reply(ftp, "RANG 1").startswith("501 ")
    assert ftp.sendcmd("HASH mib.bin") == whole
    ftp.sendcmd("RANG 0 9")
    assert _reply(ftp, "HASH missing.bin").startswith("550 ")
    assert ftp.sendcmd("HASH mib.bin") == whole  # a refused HASH used up its RANG
    ftp.sendcmd("RANG 0 1")  # a transfer is never silently whole after RANG
    assert _reply(ftp, "RETR mib.bin").startswith("504 ")
    assert ftp.sendcmd("HASH mib.bin") == whole
    assert ftp.sendcmd("XSHA256 mib.bin") == f"213 {sha(data)}"


def test_refusals_are_the_usual_ones(tree, start_server, connect, tmp_path):
    home = tree.user("alice", virtual="drop $root/drop write\n")
    tree.file("alice/a.bin", b"abc")
    tree.file("alice/.hidden", b"secret")
    tree.file("drop/in.bin", b"not readable here")
    tree.folder("alice/folder")
    outside = tmp_path / "outside.bin"
    outside.write_bytes(b"outside")
    os.symlink(outside, home / "out.bin")
    os.symlink(home / ".hidden", home / "to-hidden")
    server = start_server(tree.root)
    ftp = connect(server.port, "alice")
    assert ftp.sendcmd("HASH a.bin").startswith("213 ")
    for cmd in ("HASH", "XSHA256", "XCRC"):
        refused = _reply(ftp, f"{cmd} drop/in.bin")
        assert refused.startswith("550 ") and "'read'" in refused
        assert _reply(ftp, f"{cmd} .hidden").startswith("550 ")
        assert _reply(ftp, f"{cmd} to-hidden").startswith("550 ")
        assert _reply(ftp, f"{cmd} out.bin").startswith("550 ")
        assert _reply(ftp, f"{cmd} nothing.bin") == "550 No such file or directory: /nothing.bin."
        assert _reply(ftp, f"{cmd} a.bin/x").startswith("550 ")
    assert _reply(ftp, "HASH folder") == "553 Is a directory: /folder."  # the draft's code for a folder
    assert _reply(ftp, "XMD5 folder") == "550 Is a directory: /folder."
    for line in ("HASH", "HASH  ", 'HASH ""', "XSHA1", "RANG"):
        assert _reply(ftp, line) == "501 Syntax error: command needs an argument."
    assert _reply(connect(server.port), "HASH a.bin").startswith("530 ")  # not logged in
    assert ftp.sendcmd("NOOP").startswith("200")


def test_a_second_hash_comes_from_the_cache(served):
    ftp, home, _ = served
    _settle()
    hashed, hits = _stat("hashed_bytes"), _stat("hits")
    first = ftp.sendcmd("HASH big.bin")
    assert _stat("hashed_bytes") == hashed + SIZES["big"]
    assert ftp.sendcmd("HASH big.bin") == first
    assert ftp.sendcmd("XSHA256 big.bin") == "213 " + first.split()[3]
    assert _stat("hashed_bytes") == hashed + SIZES["big"]  # nothing read again
    assert _stat("hits") == hits + 2
    real = str(home / "big.bin")
    assert hashes.cached(real) == hashlib.sha256(_content(SIZES["big"])).hexdigest()
    assert hashes.cached(real, "SHA-256") == hashes.cached(real)
    assert hashes.cached(real, "md5") is None  # never asked: not at hand
    assert hashes.cached(str(home / "mib.bin")) is None
    assert hashes.cached(str(home / "missing")) is None


def test_a_file_changed_in_place_is_hashed_again(served):
    ftp, home, _ = served
    path = home / "mib.bin"
    old = _content(SIZES["mib"])
    _settle()
    assert ftp.sendcmd("HASH mib.bin").split()[3] == hashlib.sha256(old).hexdigest()
    st = path.stat()
    new = bytes(reversed(old))  # the same size, new bytes, a new mtime
    with open(path, "r+b") as f:
        f.write(new)
    _settle()
    assert ftp.sendcmd("HASH mib.bin").split()[3] == hashlib.sha256(new).hexdigest()
    with open(path, "r+b") as f:  # and again, with the old times put back: the ctime tells
        f.write(old)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert path.stat().st_mtime_ns == st.st_mtime_ns and path.stat().st_size == st.st_size
    _settle()
    assert ftp.sendcmd("HASH mib.bin").split()[3] == hashlib.sha256(old).hexdigest()


def test_a_fresh_file_is_answered_but_not_cached(served, monkeypatch):
    ftp, home, _ = served
    monkeypatch.setattr(hashes, "SETTLED", 3600)  # every file is fresh
    upload(ftp, "fresh.bin", b"x" * 100_000)
    hashed = _stat("hashed_bytes")
    for _ in range(2):  # the times of a file changed this instant can't tell a later write
        assert ftp.sendcmd("HASH fresh.bin").split()[3] == hashlib.sha256(b"x" * 100_000).hexdigest()
    assert _stat("hashed_bytes") == hashed + 200_000


def _huge(home) -> str:
    path = home / "huge.bin"
    with open(path, "wb") as f:
        f.truncate(HUGE)  # sparse: no disk used, read as zeros
    return path


def _readable(sock: socket.socket) -> bool:
    return bool(select.select([sock], [], [], 0)[0])


def test_the_loop_serves_others_while_a_big_file_is_hashed(served, connect):
    ftp, home, server = served
    _huge(home)
    hasher = connect(server.port, "alice", timeout=120)
    hasher.sendcmd("OPTS HASH MD5")
    hasher.putcmd("HASH huge.bin")
    hasher.putcmd("NOOP")  # held behind the hash, answered after it
    assert wait_until(lambda: _stat("in_progress") == 1, 5)
    for _ in range(5):
        started = time.monotonic()
        assert ftp.sendcmd("NOOP").startswith("200")
        assert time.monotonic() - started < 0.5
    assert ftp.sendcmd("HASH one.bin").startswith("213 ")  # another worker is free
    assert ftp.retrbinary("RETR mib.bin", lambda _: None).startswith("226")
    assert not _readable(hasher.sock) and _stat("in_progress") == 1  # still hashing all along
    reply = hasher.getresp()
    assert reply.startswith("213 MD5 0-1073741823 ") and reply.endswith(" /huge.bin")
    assert hasher.getresp().startswith("200")  # the held NOOP, in order
    assert reply.split()[3] == "cd573cfaace07e7949bc0c46028904ff"  # MD5 of 1 GiB of zeros


def test_a_client_that_leaves_mid_hash_breaks_nothing(served, connect, caplog):
    ftp, home, server = served
    _huge(home)
    leaver = connect(server.port, "alice")
    leaver.sendcmd("OPTS HASH SHA-1")
    leaver.putcmd("HASH huge.bin")
    assert wait_until(lambda: _stat("in_progress") == 1, 5)
    leaver.sock.close()
    patient = connect(server.port, "alice", timeout=120)
    patient.sendcmd("OPTS HASH SHA-1")
    reply = patient.sendcmd("HASH huge.bin")  # the same job, or its cached result
    assert reply.split()[3] == "2a492f15396a6768bcbca016993f4b4c8b0b5307"  # SHA-1 of 1 GiB of zeros
    assert wait_until(lambda: _stat("in_progress") == 0, 30)
    assert ftp.sendcmd("NOOP").startswith("200")
    assert "Traceback" not in caplog.text and "failed" not in caplog.text


def test_hashes_beyond_the_bound_are_refused_with_450(served, connect, monkeypatch):
    ftp, home, server = served
    _huge(home)
    monkeypatch.setattr(hashes.hasher(), "max_jobs", 1)
    busy = connect(server.port, "alice", timeout=120)
    busy.sendcmd("OPTS HASH MD5")
    busy.putcmd("HASH huge.bin")
    assert wait_until(lambda: _stat("in_progress") == 1, 5)
    refused = _reply(ftp, "XSHA512 mib.bin")
    assert refused == "450 1 hashes are in progress; try again later."
    assert busy.getresp().startswith("213 MD5 ")
    assert ftp.sendcmd("XSHA512 mib.bin") == "213 " + hashlib.sha512(_content(SIZES["mib"])).hexdigest()


def test_a_file_that_changes_while_hashed_is_not_answered(served, connect):
    ftp, home, server = served
    path = _huge(home)
    hasher = connect(server.port, "alice", timeout=120)
    hasher.sendcmd("OPTS HASH MD5")
    hasher.putcmd("HASH huge.bin")
    assert wait_until(lambda: _stat("in_progress") == 1, 5)
    os.truncate(path, HUGE + 1)
    assert _stat("in_progress") == 1, "the hash was done before the file changed: test too weak"
    with pytest.raises(ftplib.error_temp, match="450 /huge.bin: the file changed while it was being hashed"):
        hasher.getresp()
    assert hasher.sendcmd("NOOP").startswith("200")


def test_the_server_stops_at_once_in_the_middle_of_a_long_hash(tree):
    home = tree.user("alice")
    with open(home / "endless.bin", "wb") as f:
        f.truncate(64 << 30)  # sparse: its MD5 would take a minute or more
    proc, port = start_logged(tree.root)
    ftp = ftplib.FTP()
    ftp.connect("127.0.0.1", port, timeout=10)
    ftp.login("alice", "")
    ftp.sendcmd("OPTS HASH MD5")
    ftp.putcmd("HASH endless.bin")
    time.sleep(0.5)
    started = time.monotonic()
    stop_logged(proc)  # exits 0, no traceback
    assert time.monotonic() - started < 10
    ftp.close()


# --- the rules, without a server


def test_names_spans_and_feat():
    assert hashes.algorithm("sha-256") == hashes.algorithm("SHA256") == "SHA-256"
    assert hashes.algorithm("crc32") == "CRC32" and hashes.algorithm("CRC-37") is None
    assert hashes.feat_lines("MD5")[0] == "HASH SHA-256;SHA-512;SHA-1;MD5*;CRC32"
    assert hashes.parse_range("1 0") is None
    assert hashes.parse_range(" 3  7 ") == hashes.Span(3, 7)
    for bad in ("", "1", "1 2 3", "-1 2", "5 4", "١ ٢", "0x1 2"):
        with pytest.raises(ValueError):
            hashes.parse_range(bad)


def test_the_cache_is_bounded_and_shares_running_jobs(tmp_path):
    hasher = hashes.Hasher(workers=1, max_jobs=1, cache_entries=2)
    files = []
    for i in range(3):
        path = tmp_path / f"f{i}"
        path.write_bytes(bytes([i]) * 1000)
        old = time.time() - 10
        os.utime(path, (old, old))
        files.append(path)
    time.sleep(hashes.SETTLED)
    for path in files:
        result = hasher.begin(open(path, "rb"), "MD5")
        assert result.result(10).hex == hashlib.md5(path.read_bytes()).hexdigest()
    assert len(hasher.cache) == 2  # the first one went
    hit = open(files[2], "rb")
    assert isinstance(hasher.begin(hit, "MD5"), hashes.Digest)
    assert hit.closed  # taken over, as when it is hashed
    again = hasher.begin(open(files[0], "rb"), "MD5")
    assert not isinstance(again, hashes.Digest)
    again.result(10)
    empty = tmp_path / "empty"
    empty.write_bytes(b"")
    digest = hasher.begin(open(empty, "rb"), "CRC32", hashes.Span(0, 10)).result(10)
    assert (digest.start, digest.end, digest.hex) == (0, 0, "00000000")
    with pytest.raises(hashes.BadRange):
        hasher.begin(open(empty, "rb"), "CRC32", hashes.Span(1, 10))


def test_remember_fills_the_cache_for_cached(tmp_path):
    path = tmp_path / "up.bin"
    path.write_bytes(b"uploaded")
    hashes.remember(os.stat(path), "sha256", hashlib.sha256(b"uploaded").hexdigest())
    assert hashes.cached(str(path)) == hashlib.sha256(b"uploaded").hexdigest()
    path.write_bytes(b"uploaded again")
    assert hashes.cached(str(path)) is None


@pytest.mark.parametrize("concurrency", ["multi-thread", "multi-proc"])
def test_hash_in_the_other_serving_models(tree, start_server, connect, concurrency):
    tree.user("alice")
    data = _content(SIZES["mib"])
    tree.file("alice/mib.bin", data)
    ftp = connect(start_server(tree.root, concurrency=concurrency).port, "alice")
    ftp.putcmd("HASH mib.bin")
    ftp.putcmd("XMD5 mib.bin")  # held behind the first, answered in order
    assert ftp.getresp() == f"213 SHA-256 0-{len(data) - 1} {hashlib.sha256(data).hexdigest()} /mib.bin"
    assert ftp.getresp() == f"213 {hashlib.md5(data).hexdigest()}"
    assert ftp.sendcmd("NOOP").startswith("200")


def test_hash_over_ftps(tree, start_server, tmp_path):
    tree.user("alice")
    tree.file("alice/a.bin", b"secret bytes")
    cert, key = certs.self_signed(str(tmp_path / "tls"))
    server = start_server(tree.root, handler_base=XxftpTLSHandler, certfile=cert, keyfile=key, ssl_context=None)
    context = ssl.create_default_context()
    context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
    ftp = ResumingFTP_TLS(context=context)
    ftp.connect("127.0.0.1", server.port, timeout=10)
    features = ftp.sendcmd("FEAT").splitlines()
    assert " AUTH TLS" in features and " HASH SHA-256*;SHA-512;SHA-1;MD5;CRC32" in features
    ftp.login("alice", "")
    assert ftp.sendcmd("XCRC a.bin") == f"213 {zlib.crc32(b'secret bytes'):08x}"
    ftp.quit()


def test_two_requests_for_the_same_hash_share_one_job(tmp_path):
    hasher = hashes.Hasher(workers=2, max_jobs=1)
    path = tmp_path / "shared.bin"
    with open(path, "wb") as f:
        f.truncate(256 << 20)
    time.sleep(hashes.SETTLED + 0.05)
    first = hasher.begin(open(path, "rb"), "SHA-512")
    second = hasher.begin(open(path, "rb"), "SHA-512")  # not refused: the bound counts jobs, not requests
    results = [outcome if isinstance(outcome, hashes.Digest) else outcome.result(60) for outcome in (first, second)]
    assert results[0] == results[1]
    assert results[0].hex == hashlib.sha512(bytes(256 << 20)).hexdigest()
    assert hasher.hashed_bytes == 256 << 20


def test_no_descriptor_is_left_open(served):
    ftp, home, _ = served
    _settle()
    ftp.sendcmd("HASH mib.bin")
    ftp.sendcmd("NOOP")
    before = len(os.listdir("/proc/self/fd"))
    for _ in range(20):  # from the cache, hashed, refused
        ftp.sendcmd("HASH mib.bin")
        ftp.sendcmd("XCRC one.bin")
        _reply(ftp, "XMD5 nothing.bin")
        ftp.sendcmd("RANG 5000000 5000001")
        _reply(ftp, "HASH mib.bin")
    assert wait_until(lambda: _stat("in_progress") == 0, 10)
    assert len(os.listdir("/proc/self/fd")) <= before


def test_one_user_cannot_take_every_place_in_the_pool(served, connect, tree):
    """Each user has at most MAX_JOBS_PER_OWNER hashes in progress: a third
    span of alice's is refused, and bob still hashes his file at once."""
    ftp, home, server = served
    _huge(home)
    tree.user("bob")
    tree.file("bob/tiny.bin", b"x")
    hogs = []
    for n in range(hashes.MAX_JOBS_PER_OWNER):
        hog = connect(server.port, "alice", timeout=120)
        hog.sendcmd("OPTS HASH MD5")
        hog.sendcmd(f"RANG {n} {1 << 40}")  # another span each: no job shared
        hog.putcmd("HASH huge.bin")
        hogs.append(hog)
    assert wait_until(lambda: _stat("in_progress") == hashes.MAX_JOBS_PER_OWNER, 5)
    ftp.sendcmd("RANG 7 100000")
    assert _reply(ftp, "HASH huge.bin") == f"450 {hashes.MAX_JOBS_PER_OWNER} hashes of yours are in progress; try again later."
    bob = connect(server.port, "bob")
    assert bob.sendcmd("XCRC tiny.bin") == f"213 {zlib.crc32(b'x'):08x}"
    for hog in hogs:
        assert hog.getresp().startswith("213 MD5 ")



def test_hashing_threads_run_on_idle_cpu_only(served):
    """As the password checks do: hashing a big file never starves them."""
    import threading

    ftp, _, _ = served
    assert ftp.sendcmd("XCRC mib.bin").startswith("213 ")
    threads = [t for t in threading.enumerate() if t.name.startswith("xxftpd-hash-")]
    assert threads and all(os.sched_getscheduler(t.native_id) == os.SCHED_IDLE for t in threads)
