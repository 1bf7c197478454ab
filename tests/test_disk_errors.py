"""Disk full and other write errors: a proper reply naming the cause,
nothing corrupted, the session goes on."""

from __future__ import annotations

import os
import subprocess

import pytest

from conftest import Tree, store, upload

KiB = 1024


@pytest.fixture
def small_disk(tmp_path):
    """A 1 MiB filesystem (tmpfs) holding the server root."""
    mnt = tmp_path / "small"
    mnt.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mnt)],
                          capture_output=True, text=True)
    assert done.returncode == 0, f"cannot mount a tmpfs for this test: {done.stderr}"
    yield Tree(mnt / "root")
    subprocess.run(["umount", "-l", str(mnt)], check=False)


def test_disk_full_answers_452_and_keeps_old_file(small_disk, start_server, connect):
    home = small_disk.user("alice", password="pw")
    old = os.urandom(100 * KiB)
    (home / "keep.bin").write_bytes(old)
    ftp = connect(start_server(small_disk.root).port, "alice", "pw")
    assert store(ftp, "keep.bin", os.urandom(2048 * KiB)).startswith("452 No space left on device")
    assert (home / "keep.bin").read_bytes() == old
    assert store(ftp, "new.bin", os.urandom(2048 * KiB)).startswith("452")
    assert sorted(os.listdir(home)) == [".xxftp", "keep.bin"]
    assert not [n for n in os.listdir(home) if n.startswith(".xxftpd-")]
    assert ftp.voidcmd("NOOP").startswith("200")
    upload(ftp, "small.bin", b"fits")  # space came back with the failed temporaries
    assert (home / "small.bin").read_bytes() == b"fits"


def test_file_size_limit_answers_552(tree, start_server, connect):
    """EFBIG (a per-process file size limit) is 'exceeded storage allocation'."""
    import resource
    import signal

    home = tree.user("alice", password="pw")
    ftp = connect(start_server(tree.root).port, "alice", "pw")
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    previous = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (256 * KiB, hard))
    try:
        assert store(ftp, "big.bin", os.urandom(512 * KiB)).startswith("552 File too large")
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        signal.signal(signal.SIGXFSZ, previous)
    assert not (home / "big.bin").exists()
    assert ftp.voidcmd("NOOP").startswith("200")
