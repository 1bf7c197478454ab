"""Uploads spliced socket -> pipe -> file: the pipe (shared by a thread's
uploads) is always left empty, and a filesystem that can't be spliced
into still gets every byte."""

from __future__ import annotations

import errno
import hashlib
import os

import pytest

from conftest import download, upload, wait_until
from xxftp_pyftpdlib import uploads
from xxftp_pyftpdlib.config import ConfigStore
from xxftp_pyftpdlib.ledger import Quotas
from xxftp_pyftpdlib.quota import QuotaExceeded
from xxftp_pyftpdlib.uploads import Upload

pytestmark = pytest.mark.skipif(not hasattr(os, "splice"), reason="os.splice is Linux-only")


@pytest.fixture
def pipe():
    r, w = os.pipe2(os.O_NONBLOCK)
    yield r, w
    os.close(r)
    os.close(w)


def _empty(fd: int) -> bool:
    try:
        return os.read(fd, 1) == b""
    except BlockingIOError:
        return True


def _limited_tree(tmp_path, limit: str):
    tree = tmp_path / "t"
    (tree / ".xxftp").mkdir(parents=True)
    (tree / ".xxftp" / "size").write_text(limit)
    return tree, Quotas(ConfigStore(str(tmp_path))).ledger(str(tree))


def test_spliced_bytes_land_in_the_file(tmp_path, pipe):
    r, w = pipe
    tree, ledger = _limited_tree(tmp_path, "1M\n")
    up = Upload(str(tree / "f.bin"), "/f.bin", "wb", "atomic", ledger)
    assert up.can_splice
    chunks = [os.urandom(n) for n in (1, 4096, 60000)]
    for chunk in chunks:
        os.write(w, chunk)
        up.write_from_pipe(r, len(chunk))
    assert _empty(r)
    up.finish(True)
    assert (tree / "f.bin").read_bytes() == b"".join(chunks)


def test_a_refused_chunk_is_dropped_from_the_pipe(tmp_path, pipe):
    r, w = pipe
    tree, ledger = _limited_tree(tmp_path, "1000\n")
    up = Upload(str(tree / "f.bin"), "/f.bin", "wb", "atomic", ledger)
    os.write(w, b"x" * 1001)
    with pytest.raises(QuotaExceeded):
        up.write_from_pipe(r, 1001)
    assert _empty(r)  # the next upload of this thread starts clean
    up.finish(False, uploads.QUOTA)
    assert not (tree / "f.bin").exists()


def test_a_filesystem_without_splice_gets_the_bytes_copied(tmp_path, pipe, monkeypatch):
    r, w = pipe
    tree, ledger = _limited_tree(tmp_path, "1M\n")
    up = Upload(str(tree / "f.bin"), "/f.bin", "wb", "atomic", ledger)
    real_splice = os.splice

    def no_splice_into_files(src, dst, count, *args, **kwargs):
        if dst == up.fileno():
            raise OSError(errno.EINVAL, "Invalid argument")
        return real_splice(src, dst, count, *args, **kwargs)

    monkeypatch.setattr(uploads.os, "splice", no_splice_into_files)
    data = os.urandom(5000)
    os.write(w, data)
    up.write_from_pipe(r, len(data))
    assert _empty(r) and not up.can_splice  # copies from now on
    up.finish(True)
    assert (tree / "f.bin").read_bytes() == data


def test_appends_are_not_spliced(tmp_path):
    tree, ledger = _limited_tree(tmp_path, "1M\n")
    (tree / "f.bin").write_bytes(b"old")
    up = Upload(str(tree / "f.bin"), "/f.bin", "ab", "atomic", ledger)
    assert not up.can_splice  # Linux refuses to splice into O_APPEND files
    up.finish(False)


def test_uploads_of_every_kind_through_the_server(tree, start_server, connect):
    """STOR (spliced), APPE (copied), then STOR again, one after another on
    one thread's pipe, each byte-exact."""
    home = tree.user("alice", password="pw", size="10M")
    srv = start_server(tree.root)
    ftp = connect(srv.port, "alice", "pw")
    first, second = os.urandom(3 * 1024 * 1024 + 7), os.urandom(100_000)
    upload(ftp, "a.bin", first)
    upload(ftp, "a.bin", second, cmd="APPE")
    assert hashlib.sha256(download(ftp, "a.bin")).digest() == hashlib.sha256(first + second).digest()
    upload(ftp, "b.bin", second)
    assert download(ftp, "b.bin") == second
    assert (home / "a.bin").stat().st_size == len(first) + len(second)


def test_threaded_server_closes_each_thread_s_pipe(tree, start_server, connect):
    """A thread per connection means a pipe per thread: gone with the thread."""
    tree.user("alice", password="pw")
    srv = start_server(tree.root, concurrency="multi-thread")

    def fds() -> int:
        return len(os.listdir("/proc/self/fd"))

    before = fds()
    for i in range(20):
        ftp = connect(srv.port, "alice", "pw")
        upload(ftp, f"f{i}.bin", os.urandom(200_000))
        ftp.quit()
    assert wait_until(lambda: fds() <= before, 10), f"{fds() - before} descriptors left open"
