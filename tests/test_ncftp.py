"""ncftp (ncftpput, ncftpget) against the real ``xxftpd`` process: recursive
upload into folders that do not exist yet and recursive download, compared
byte for byte, with nested folders and a UTF-8 file name."""

from __future__ import annotations

import hashlib
import os
import subprocess
from pathlib import Path

import pytest

from conftest import XxftpdProcess, hashes, require_programs, temporaries

HOST = "127.0.0.1"
KiB = 1024


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    require_programs("ncftpput", "ncftpget")
    base = tmp_path_factory.mktemp("ncftp")
    root = base / "root"
    home = root / "alice"
    (home / ".xxftp").mkdir(parents=True)
    (home / ".xxftp/password").write_text(hashlib.md5(b"pw").hexdigest() + "\n")
    (home / ".xxftp/virtual").write_text("docs $root/shared-docs read\n")
    (root / "shared-docs").mkdir()
    (root / "shared-docs/manual.txt").write_text("read me\n")
    server = XxftpdProcess(root, HOST, base / "xxftpd.log")
    try:
        yield {"root": root, "home": home, "server": server, "base": base}
    finally:
        server.stop()


def ncftp(site, program: str, options: list[str], *paths: str) -> subprocess.CompletedProcess:
    """Run an ncftp program logged in as alice (options go before the host,
    paths after it); its ~/.ncftp goes in a temporary HOME."""
    server = site["server"]
    env = dict(os.environ, HOME=str(site["base"]))
    return subprocess.run([program, "-u", "alice", "-p", "pw", "-P", str(server.port), "-t", "15", *options,
                           server.host, *paths], env=env, capture_output=True, timeout=90)


def make_tree(folder: Path) -> Path:
    files = {
        "top.txt": b"top\n",
        "ünïcødé €.txt": "ünïcødé\n".encode(),
        "a/one.bin": os.urandom(40 * KiB + 3),
        "a/b/two.bin": os.urandom(700 * KiB),
        "a/b/c/ünï.bin": os.urandom(5 * KiB),
        "d/three.bin": os.urandom(1),
    }
    for name, data in files.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes(data)
    return folder


def test_put_and_get_a_tree_recursively(site, tmp_path):
    src = make_tree(tmp_path / "tree")
    # -m: make the remote folder (and its parents) first; none exists yet
    run = ncftp(site, "ncftpput", ["-R", "-m"], "/backup/2024", str(src))
    assert run.returncode == 0, run.stderr.decode(errors="replace")
    assert hashes(site["home"] / "backup/2024/tree") == hashes(src)
    down = tmp_path / "down"
    down.mkdir()
    run = ncftp(site, "ncftpget", ["-R"], str(down), "/backup/2024/tree")
    assert run.returncode == 0, run.stderr.decode(errors="replace")
    assert hashes(down / "tree") == hashes(src)
    assert not temporaries(site["root"])


def test_put_into_a_read_only_mount_fails(site, tmp_path):
    src = make_tree(tmp_path / "tree")
    before = hashes(site["root"] / "shared-docs")
    run = ncftp(site, "ncftpput", ["-R"], "/docs", str(src))
    assert run.returncode != 0
    assert b"Permission denied" in run.stderr, run.stderr
    assert hashes(site["root"] / "shared-docs") == before


def test_get_of_a_missing_folder_fails(site, tmp_path):
    run = ncftp(site, "ncftpget", ["-R"], str(tmp_path), "/no/such/folder")
    assert run.returncode != 0
    assert b"No such file or directory" in run.stderr, run.stderr
    assert list(tmp_path.iterdir()) == []
