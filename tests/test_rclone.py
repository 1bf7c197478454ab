"""rclone against the real ``xxftpd`` process, over plain FTP and explicit FTPS.

rclone's FTP library reads only 550 as "not found": it lists a folder
(MLSD) before it writes into it, and makes the folder only after a 550.
These tests sync into folders that do not exist yet, read everything
back byte for byte, and check that refusals (quota 552, permission 550)
reach rclone as failures with the server's reply, leaving nothing behind.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
from pathlib import Path

import pytest

from conftest import XxftpdProcess, hashes, require_programs, temporaries
from xxftp_pyftpdlib import certs

HOST = "127.0.0.1"
KiB = 1024
# Short timeouts and no retries: a failure shows at once, not after minutes.
FAST = ["--retries", "1", "--low-level-retries", "1", "--contimeout", "5s", "--timeout", "20s",
        "--ftp-close-timeout", "10s", "--ftp-shut-timeout", "10s"]
FTPS = ["--ftp-explicit-tls", "--ftp-no-check-certificate"]


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    """alice's home with a read-write mount (team), a read-only one (docs)
    and one with a 64 KiB quota (small), served by one xxftpd over plain
    FTP and one that requires TLS on the control and data connections."""
    require_programs("rclone")
    base = tmp_path_factory.mktemp("rclone")
    root = base / "root"
    home = root / "alice"
    (home / ".xxftp").mkdir(parents=True)
    (home / ".xxftp/password").write_text(hashlib.md5(b"pw").hexdigest() + "\n")
    (home / ".xxftp/virtual").write_text("team $root/team-space read,write,modify\n"
                                         "docs $root/shared-docs read\n"
                                         "small $root/small-space read,write,modify\n")
    (root / "team-space").mkdir()
    (root / "shared-docs").mkdir()
    (root / "shared-docs/manual.txt").write_text("read me\n")
    (root / "small-space/.xxftp").mkdir(parents=True)
    (root / "small-space/.xxftp/size").write_text("64K\n")
    cert, key = certs.self_signed(str(base / "tls"))
    obscured = subprocess.run(["rclone", "obscure", "pw"], capture_output=True, text=True, check=True).stdout.strip()
    config = base / "rclone.conf"
    config.write_text("")
    servers = {}
    try:
        servers["ftp"] = XxftpdProcess(root, HOST, base / "plain.log")
        servers["ftps"] = XxftpdProcess(root, HOST, base / "tls.log", "--tls", "--certfile", cert, "--keyfile", key,
                                        "--tls-control-required", "--tls-data-required")
        yield {"base": base, "root": root, "home": home, "servers": servers, "obscured": obscured, "config": config}
    finally:
        for server in servers.values():
            server.stop()


def rclone(site, server: XxftpdProcess, *args: str, tls: bool = False, timeout: float = 120) -> subprocess.CompletedProcess:
    """Run rclone with the remote ``xx:`` set up through environment variables."""
    env = dict(os.environ, RCLONE_CONFIG_XX_TYPE="ftp", RCLONE_CONFIG_XX_HOST=server.host,
               RCLONE_CONFIG_XX_PORT=str(server.port), RCLONE_CONFIG_XX_USER="alice",
               RCLONE_CONFIG_XX_PASS=site["obscured"])
    command = ["rclone", "--config", str(site["config"]), *FAST, *(FTPS if tls else []), *args]
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=timeout)


def make_source(folder: Path) -> Path:
    """A small tree: three levels of folders, an empty file, a UTF-8 name."""
    files = {
        "top.txt": b"top\n",
        "empty.txt": b"",
        "ünïcødé €.txt": "ünïcødé\n".encode(),
        "a/one.bin": os.urandom(7 * KiB + 1),
        "a/two.bin": os.urandom(3 * KiB),
        "a/b/three.bin": os.urandom(20 * KiB + 5),
        "a/b/c/four.bin": os.urandom(9 * KiB),
        "a/b/c/five.bin": os.urandom(1),
        "d/six.bin": os.urandom(12 * KiB),
        "d/e/seven.bin": os.urandom(5 * KiB + 3),
    }
    for name, data in files.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes(data)
    return folder


def final_stats(stderr: str) -> dict:
    """The last stats block of a run with ``--use-json-log -v``."""
    stats = [json.loads(line)["stats"] for line in stderr.splitlines()
             if line.startswith("{") and '"stats"' in line]
    assert stats, stderr
    return stats[-1]


@pytest.mark.parametrize("kind", ["ftp", "ftps"])
def test_sync_into_a_new_nested_folder_check_copy_back_and_sync_again(site, tmp_path, kind):
    server, tls = site["servers"][kind], kind == "ftps"
    src = make_source(tmp_path / "src")
    remote = f"xx:team/backup-{kind}/2024/daily"  # none of these folders exists yet
    server.mark()
    run = rclone(site, server, "sync", str(src), remote, "--transfers", "4", tls=tls)
    assert run.returncode == 0, run.stderr
    assert hashes(site["root"] / f"team-space/backup-{kind}/2024/daily") == hashes(src)
    sent = server.commands()
    assert sent.count("USER") > 1, "--transfers 4 used one connection"  # uploads really ran side by side
    if tls:
        assert "AUTH" in sent and "PROT" in sent, sent
    # check --download compares the bytes, not only the sizes
    run = rclone(site, server, "check", "--download", str(src), remote, tls=tls)
    assert run.returncode == 0, run.stderr
    assert "0 differences found" in run.stderr, run.stderr
    back = tmp_path / "back"
    run = rclone(site, server, "copy", remote, str(back), "--transfers", "4", tls=tls)
    assert run.returncode == 0, run.stderr
    assert hashes(back) == hashes(src)
    # nothing changed: a second sync copies nothing (sizes and times match)
    server.mark()
    run = rclone(site, server, "sync", str(src), remote, "--transfers", "4", "-v", "--use-json-log", tls=tls)
    assert run.returncode == 0, run.stderr
    stats = final_stats(run.stderr)
    assert stats["transfers"] == 0 and stats["errors"] == 0 and stats["checks"] == len(hashes(src)), stats
    assert not {"STOR", "APPE", "DELE", "RMD", "MKD"} & set(server.commands())
    assert not temporaries(site["root"])


def test_sync_into_an_existing_folder_makes_the_nested_ones_at_the_first_attempt(site, tmp_path):
    server = site["servers"]["ftp"]
    (site["root"] / "team-space/existing").mkdir()
    src = make_source(tmp_path / "src")
    run = rclone(site, server, "sync", str(src), "xx:team/existing", "--transfers", "4")
    assert run.returncode == 0, run.stderr  # with --retries 1 there is no second attempt
    assert hashes(site["root"] / "team-space/existing") == hashes(src)


def test_mkdir_moveto_and_purge(site, tmp_path):
    server = site["servers"]["ftp"]
    team = site["root"] / "team-space"
    run = rclone(site, server, "mkdir", "xx:team/made/a/b/c")
    assert run.returncode == 0, run.stderr
    assert (team / "made/a/b/c").is_dir()
    data = os.urandom(10 * KiB)
    (tmp_path / "f.bin").write_bytes(data)
    run = rclone(site, server, "copyto", str(tmp_path / "f.bin"), "xx:team/made/f.bin")
    assert run.returncode == 0, run.stderr
    server.mark()
    run = rclone(site, server, "moveto", "xx:team/made/f.bin", "xx:team/made/a/b/c/moved.bin")
    assert run.returncode == 0, run.stderr
    assert "RNTO" in server.commands()  # a server-side rename, not a copy and delete
    assert not (team / "made/f.bin").exists()
    assert (team / "made/a/b/c/moved.bin").read_bytes() == data
    run = rclone(site, server, "purge", "xx:team/made")
    assert run.returncode == 0, run.stderr
    assert not (team / "made").exists()
    # purging what is not there is "not found", which rclone reports as such
    run = rclone(site, server, "purge", "xx:team/made")
    assert run.returncode != 0
    assert "directory not found" in run.stderr, run.stderr


def test_an_upload_over_the_quota_fails_with_552_and_leaves_nothing(site, tmp_path):
    server = site["servers"]["ftp"]
    small = site["root"] / "small-space"
    src = tmp_path / "src"
    src.mkdir()
    (src / "big.bin").write_bytes(os.urandom(200 * KiB))  # the tree holds 64 KiB
    run = rclone(site, server, "copy", str(src), "xx:small")
    assert run.returncode != 0, run.stderr
    assert "552 quota exceeded" in run.stderr, run.stderr
    assert sorted(p.name for p in small.iterdir()) == [".xxftp"]
    assert not temporaries(site["root"])
    ftp = server.ftplib()
    try:
        assert ": 0 bytes used of 64.0 KiB" in ftp.sendcmd("SITE QUOTA /small")  # the refused upload is not charged
    finally:
        ftp.quit()


def test_an_upload_into_a_read_only_mount_fails_with_550(site, tmp_path):
    server = site["servers"]["ftp"]
    docs = site["root"] / "shared-docs"
    before = hashes(docs)
    src = tmp_path / "src"
    src.mkdir()
    (src / "new.txt").write_text("new\n")
    run = rclone(site, server, "copy", str(src), "xx:docs")
    assert run.returncode != 0, run.stderr
    assert "550 Permission denied" in run.stderr, run.stderr
    assert hashes(docs) == before


def test_a_remote_made_with_rclone_config_create(site, tmp_path):
    """The README's ``rclone config create`` line gives a working FTPS remote."""
    server = site["servers"]["ftps"]
    config = tmp_path / "rclone.conf"
    run = subprocess.run(["rclone", "--config", str(config), "config", "create", "xxftpd", "ftp",
                          f"host={server.host}", f"port={server.port}", "user=alice", "pass=pw",
                          "explicit_tls=true", "no_check_certificate=true"],
                         capture_output=True, text=True, timeout=30)
    assert run.returncode == 0, run.stderr
    assert "pass = pw" not in config.read_text()  # stored obscured
    run = subprocess.run(["rclone", "--config", str(config), *FAST, "lsf", "xxftpd:docs"],
                         capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stderr
    assert run.stdout.split() == ["manual.txt"]
