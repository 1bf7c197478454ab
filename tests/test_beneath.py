"""beneath: a checked path used with no symbolic link followed, with openat2
and with the component walk used where the kernel lacks it."""

from __future__ import annotations

import errno
import os

import pytest

from xxftp_pyftpdlib import beneath


@pytest.fixture(params=["openat2", "walk"])
def opening(request, monkeypatch):
    if request.param == "walk":
        monkeypatch.setattr(beneath, "_openat2", None)
    elif not beneath.uses_openat2():
        pytest.skip("this kernel has no openat2")
    return request.param


@pytest.fixture
def place(tmp_path):
    """a/f.txt and a/sub/ inside; out/ outside; links to out/ at a folder's and a file's place."""
    (tmp_path / "a" / "sub").mkdir(parents=True)
    (tmp_path / "a" / "f.txt").write_bytes(b"inside")
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "f.txt").write_bytes(b"outside")
    os.symlink(tmp_path / "out", tmp_path / "a" / "link")
    os.symlink(tmp_path / "out" / "f.txt", tmp_path / "a" / "flink")
    return tmp_path


def loops(call, *args) -> None:
    with pytest.raises(OSError) as err:
        call(*args)
    assert err.value.errno == errno.ELOOP, err.value


def test_a_link_anywhere_on_the_path_is_an_error(place, opening):
    a = f"{place}/a"
    assert beneath.lstat(f"{a}/f.txt").st_size == 6
    with open(f"{a}/f.txt", "rb", opener=beneath.opener) as f:
        assert f.name == f"{a}/f.txt" and f.read() == b"inside"
    for path in (f"{a}/link/f.txt", f"{a}/flink", f"{a}/link"):
        loops(beneath.lstat, path)
        loops(beneath.open, path, os.O_RDONLY)
    loops(beneath.open, f"{a}/link/new.txt", os.O_WRONLY | os.O_CREAT)
    loops(beneath.open_folder, f"{a}/link", True)
    loops(beneath.mkdir, f"{a}/link/new")
    loops(beneath.unlink, f"{a}/link/f.txt")
    loops(beneath.rename, f"{a}/link/f.txt", f"{a}/g.txt")
    loops(beneath.rename, f"{a}/f.txt", f"{a}/link/g.txt")
    loops(beneath.chmod, f"{a}/flink", 0o777)
    loops(beneath.utime, f"{a}/link/f.txt", (1, 1))
    assert sorted(os.listdir(place / "out")) == ["f.txt"]
    assert (place / "out" / "f.txt").read_bytes() == b"outside"
    assert os.stat(place / "out" / "f.txt").st_mode & 0o777 != 0o777


def test_operations_on_real_entries(place, opening):
    a = f"{place}/a"
    beneath.mkdir(f"{a}/new")
    beneath.rename(f"{a}/new", f"{a}/sub/moved")
    beneath.utime(f"{a}/sub/moved", (1, 1))
    beneath.chmod(f"{a}/sub/moved", 0o700)
    st = os.stat(place / "a" / "sub" / "moved")
    assert st.st_mtime == 1 and st.st_mode & 0o777 == 0o700
    beneath.rmdir(f"{a}/sub/moved")
    assert beneath.lexists(f"{a}/flink") and not beneath.lexists(f"{a}/nothing")
    assert not beneath.lexists(f"{a}/link/f.txt")
    beneath.unlink(f"{a}/flink")  # the link itself, never what it leads to
    assert (place / "out" / "f.txt").exists()
    fd = beneath.open_folder(a, listable=True)
    try:
        assert sorted(e.name for e in os.scandir(fd)) == ["f.txt", "link", "sub"]
    finally:
        os.close(fd)
    assert beneath.lstat("/").st_ino == os.stat("/").st_ino
