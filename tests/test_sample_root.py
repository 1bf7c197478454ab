"""The example tree works as the README says, with ftplib, curl and lftp."""

from __future__ import annotations

import shutil
import signal
import subprocess
from pathlib import Path

import pytest

from conftest import HOST, download, free_port, run_xxftpd

SAMPLE = Path(__file__).resolve().parent.parent / "sample_root"


@pytest.fixture
def sample(tmp_path):
    root = tmp_path / "sample_root"
    shutil.copytree(SAMPLE, root, ignore=shutil.ignore_patterns("ledger*"))
    port = free_port()
    proc = run_xxftpd("--root", str(root), "--host", HOST, "--port", str(port), wait_for_port=port)
    yield root, port
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=15)
    assert proc.returncode == 0 and "Traceback" not in err


def curl(*args: str) -> subprocess.CompletedProcess:
    assert shutil.which("curl"), "curl is needed (installed by tests/debian-packages.sh)"
    return subprocess.run(["curl", "-sS", *args], capture_output=True, text=True, timeout=30)


def lftp(script: str) -> subprocess.CompletedProcess:
    assert shutil.which("lftp"), "lftp is needed (installed by tests/debian-packages.sh)"
    return subprocess.run(["lftp", "-c", script], capture_output=True, text=True, timeout=60)


def test_each_kind_of_user_with_curl(sample):
    root, port = sample
    url = f"ftp://{HOST}:{port}/"
    anon = curl(url)
    assert anon.returncode == 0 and "README.txt" in anon.stdout and "upload" in anon.stdout
    alice = curl("-u", "alice:wonderland", url)
    assert alice.returncode == 0 and all(n in alice.stdout for n in ("docs", "team", "notes.txt"))
    assert curl("-u", "alice:wrong", url).returncode != 0
    bob = curl("-u", "bob:", url + "hello.txt")
    assert bob.returncode == 0 and "Bob has no password file" in bob.stdout
    assert curl("-u", "alice:wonderland", url + ".xxftp/password").returncode != 0


def test_anonymous_demo_and_alice_mounts_with_lftp(sample, tmp_path):
    root, port = sample
    new = tmp_path / "gift.txt"
    new.write_text("a present\n")
    done = lftp(f"open ftp://anonymous:x@{HOST}:{port}; put {new} -o upload/gift.txt; "
                f"put {new} -o upload/gift.txt")  # the second put would overwrite: refused
    assert done.returncode != 0
    assert (root / "public-upload/gift.txt").read_text() == "a present\n"
    done = lftp(f"open ftp://anonymous:x@{HOST}:{port}; rm upload/gift.txt")
    assert done.returncode != 0 and (root / "public-upload/gift.txt").exists()
    done = lftp(f"open -u alice,wonderland ftp://{HOST}:{port}; cls -1 /docs; put {new} -o /team/g.txt; "
                f"get /docs/manual.txt -o {tmp_path / 'manual.txt'}")
    assert done.returncode == 0, done.stderr
    assert "manual.txt" in done.stdout and (root / "team-space/g.txt").exists()
    assert (tmp_path / "manual.txt").read_text() == (root / "shared-docs/manual.txt").read_text()
    assert lftp(f"open -u alice,wonderland ftp://{HOST}:{port}; put {new} -o /docs/x.txt").returncode != 0


def test_banners_and_ftplib(sample):
    import ftplib

    _, port = sample
    ftp = ftplib.FTP()
    ftp.connect(HOST, port, timeout=10)
    assert "Welcome to the xxftpd sample server" in ftp.getwelcome()
    ftp.login("alice", "wonderland")
    assert download(ftp, "notes.txt").startswith(b"Alice can change")
    assert "quota" in ftp.sendcmd("SITE QUOTA").lower()
    assert "Goodbye" in ftp.quit()
