"""Real FTP clients (lftp, curl, wget) against the real ``xxftpd`` process,
on IPv4 and IPv6 loopback, with every way of opening a data connection
(PASV, EPSV, PORT, EPRT).

Transfers are compared by SHA-256 with their sources; the server's debug
log shows which data-connection command each client really used. Quota
and permission refusals must reach every client as a failure (a non-zero
exit status) and leave nothing behind.
"""

from __future__ import annotations

import hashlib
import io
import os
import re
import subprocess
from pathlib import Path

import pytest

from conftest import XxftpdProcess as Server
from conftest import hashes, require_programs, sha, temporaries

KiB = 1024
MiB = 1024 * KiB
HOSTS = ["127.0.0.1", "::1"]
TOOLS = ("lftp", "curl", "wget")


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A tree with data to fetch, a read-only, a write-only and a small-quota
    mount, served by one xxftpd on 127.0.0.1 and one on ::1."""
    require_programs(*TOOLS)
    base = tmp_path_factory.mktemp("clients")
    root = base / "root"
    home = root / "alice"
    (home / ".xxftp").mkdir(parents=True)
    (home / ".xxftp/password").write_text(hashlib.md5(b"pw").hexdigest() + "\n")
    (home / ".xxftp/size").write_text("256M\n")
    (home / ".xxftp/virtual").write_text(
        "docs $root/shared-docs read\nbox $root/box-target read,write,modify\ndrop $root/drop-target write\n")
    data = home / "data"
    (data / "sub/deeper").mkdir(parents=True)
    (data / "a.bin").write_bytes(os.urandom(700 * KiB))
    (data / "sub/b.bin").write_bytes(os.urandom(300 * KiB))
    (data / "sub/deeper/c.bin").write_bytes(os.urandom(1200 * KiB + 17))
    (data / "empty.txt").write_bytes(b"")
    (data / ".xxftp").mkdir()
    (data / ".xxftp/virtual").write_text("manuals $root/shared-docs read\n")  # a mount inside the tree
    docs = root / "shared-docs"
    (docs / "guides").mkdir(parents=True)
    (docs / "manual.bin").write_bytes(os.urandom(400 * KiB))
    (docs / "guides/guide.txt").write_text("guide\n" * 1000)
    (root / "box-target/.xxftp").mkdir(parents=True)
    (root / "box-target/.xxftp/size").write_text("512K\n")
    (root / "drop-target").mkdir()
    (root / "drop-target/dropped.bin").write_bytes(os.urandom(10 * KiB))
    servers = {}
    try:
        for host in HOSTS:
            servers[host] = Server(root, host, base / f"xxftpd-{'v6' if ':' in host else 'v4'}.log")
        yield {"base": base, "root": root, "home": home, "data": data, "docs": docs, "servers": servers}
    finally:
        for server in servers.values():
            server.stop()


@pytest.fixture(params=HOSTS, ids=["ipv4", "ipv6"])
def server(request, world) -> Server:
    srv = world["servers"][request.param]
    srv.mark()
    return srv


@pytest.fixture
def work(tmp_path) -> Path:
    return tmp_path


def expected_data_tree(world) -> dict[str, str]:
    """What a recursive download of /data must give: its files plus the mount's."""
    found = {k: v for k, v in hashes(world["data"]).items() if not k.startswith(".xxftp")}
    found.update({f"manuals/{k}": v for k, v in hashes(world["docs"]).items()})
    return found


def tag(server: Server) -> str:
    return "v6" if ":" in server.host else "v4"


# --- lftp


def lftp(server: Server, script: str, cwd: Path, passive: bool = True, timeout: float = 90) -> subprocess.CompletedProcess:
    settings = ("set cmd:fail-exit yes; set net:max-retries 1; set net:reconnect-interval-base 1; "
                "set net:timeout 15; set ftp:ssl-allow no; set xfer:clobber on; "
                f"set ftp:passive-mode {'on' if passive else 'off'}; ")
    return subprocess.run(["lftp", "-c", settings + f"open -u alice,pw {server.url}; " + script],
                          cwd=cwd, capture_output=True, text=True, timeout=timeout)


def data_commands(server: Server) -> set[str]:
    return set(server.commands()) & {"PASV", "EPSV", "PORT", "EPRT"}


# lftp 4.9.2 in active mode on the IPv6 loopback sends "EPRT |2|::|port|" (it
# leaves its data socket unbound on loopback interfaces): the unspecified
# address means the control connection's (see addresses.py).
@pytest.mark.parametrize("host, passive", [("127.0.0.1", True), ("127.0.0.1", False), ("::1", True), ("::1", False)],
                         ids=["ipv4-passive", "ipv4-active", "ipv6-passive", "ipv6-active"])
def test_lftp_ls_put_get(world, work, host, passive):
    server = world["servers"][host]
    server.mark()
    src = work / "src.bin"
    src.write_bytes(os.urandom(1536 * KiB + 3))
    name = f"lftp-{tag(server)}-{'pasv' if passive else 'port'}.bin"
    run = lftp(server, f"put {src} -o {name}; ls; get {name} -o {work / 'back.bin'}", work, passive)
    assert run.returncode == 0, run.stderr
    assert name in run.stdout and "data" in run.stdout and "docs" in run.stdout
    assert ".xxftp" not in run.stdout
    assert sha((world["home"] / name).read_bytes()) == sha(src.read_bytes())
    assert sha((work / "back.bin").read_bytes()) == sha(src.read_bytes())
    # the data connections were really made the way asked for
    want = {("v4", True): "PASV", ("v4", False): "PORT", ("v6", True): "EPSV", ("v6", False): "EPRT"}
    assert data_commands(server) == {want[tag(server), passive]}


@pytest.mark.parametrize("parallel", [1, 4], ids=["serial", "parallel4"])
def test_lftp_mirror_both_ways(server, world, work, parallel):
    """mirror, then mirror -R into a new folder; with --parallel=4 lftp runs
    four connections at once (folders made while files go up beside them)."""
    down = work / "down"
    run = lftp(server, f"mirror --parallel={parallel} data {down}", work)
    assert run.returncode == 0, run.stderr
    assert hashes(down) == expected_data_tree(world)
    # upload it again with mirror -R, plus new files, into a new folder
    (down / "sub/new.bin").write_bytes(os.urandom(900 * KiB))
    for n in range(6):
        (down / f"sub/deeper/more/m{n}.bin").parent.mkdir(parents=True, exist_ok=True)
        (down / f"sub/deeper/more/m{n}.bin").write_bytes(os.urandom(50 * KiB + n))
    target = f"mirrored-{tag(server)}-{parallel}"
    server.mark()
    run = lftp(server, f"mirror -R --parallel={parallel} {down} {target}", work)
    assert run.returncode == 0, run.stderr
    assert hashes(world["home"] / target) == hashes(down)
    assert not temporaries(world["root"])
    logins = server.commands().count("USER")
    assert (logins > 1) if parallel > 1 else (logins == 1), logins


def test_lftp_get_and_put_resume(server, world, work):
    content = os.urandom(2 * MiB + 123)
    name = f"resume-lftp-{tag(server)}.bin"
    (world["home"] / name).write_bytes(content)
    local = work / "partial.bin"
    local.write_bytes(content[:800 * KiB])
    server.mark()
    run = lftp(server, f"get -c {name} -o {local}", work)
    assert run.returncode == 0, run.stderr
    assert sha(local.read_bytes()) == sha(content)
    assert "REST" in server.commands()  # resumed, not downloaded again
    # put -c: the server holds the first part (sent by FTP, so the quota counts it)
    remote = f"resume-up-lftp-{tag(server)}.bin"
    ftp = server.ftplib()
    ftp.storbinary(f"STOR {remote}", io.BytesIO(content[:700 * KiB]))
    ftp.quit()
    full = work / "full.bin"
    full.write_bytes(content)
    server.mark()
    run = lftp(server, f"put -c {full} -o {remote}", work)
    assert run.returncode == 0, run.stderr
    assert sha((world["home"] / remote).read_bytes()) == sha(content)
    sent = server.commands()
    assert "REST" in sent or "APPE" in sent, sent


def test_lftp_sees_refusals_as_errors(server, world, work):
    big = work / "big.bin"
    big.write_bytes(os.urandom(MiB))
    small = work / "small.bin"
    small.write_bytes(b"small")
    box, docs = world["root"] / "box-target", world["docs"]
    before = hashes(docs)
    cases = {
        "upload into a read-only mount": f"put {small} -o docs/x-{tag(server)}.bin",
        "upload over quota": f"put {big} -o box/big-{tag(server)}.bin",
        "download of the hidden password file": f"get .xxftp/password -o {work / 'pw'}",
        "download from a write-only mount": f"get drop/dropped.bin -o {work / 'dropped.bin'}",
        "mkdir in a read-only mount": "mkdir docs/newdir",
        "delete in a read-only mount": "rm docs/manual.bin",
    }
    for what, script in cases.items():
        run = lftp(server, script, work)
        assert run.returncode != 0, f"lftp: {what} exited 0: {run.stdout} {run.stderr}"
        assert re.search(r"\b55[0-3]\b", run.stderr), (what, run.stderr)
    assert not (work / "pw").exists() or (work / "pw").stat().st_size == 0
    assert not (work / "dropped.bin").exists() or (work / "dropped.bin").stat().st_size == 0
    assert [p.name for p in box.iterdir() if p.name != ".xxftp"] == []
    assert hashes(docs) == before
    assert not temporaries(world["root"])


# --- curl


def curl(server: Server, *args: str, timeout: float = 90) -> subprocess.CompletedProcess:
    return subprocess.run(["curl", "-sS", "-g", "--connect-timeout", "15", "--max-time", "80",
                           "-u", "alice:pw", *args], capture_output=True, timeout=timeout)


CURL_MODES = {
    "epsv": (["--ftp-pasv"], "EPSV"),
    "pasv": (["--ftp-pasv", "--disable-epsv"], "PASV"),
    "eprt": (["--ftp-port", "-"], "EPRT"),
    "port": (["--ftp-port", "-", "--disable-eprt"], "PORT"),
}


@pytest.mark.parametrize("host, mode", [("127.0.0.1", m) for m in CURL_MODES] + [("::1", "epsv"), ("::1", "eprt")],
                         ids=[f"ipv4-{m}" for m in CURL_MODES] + ["ipv6-epsv", "ipv6-eprt"])
def test_curl_list_upload_download(world, work, host, mode):
    server = world["servers"][host]
    server.mark()
    flags, command = CURL_MODES[mode]
    src = work / "src.bin"
    src.write_bytes(os.urandom(1 * MiB + 999))
    name = f"curl-{tag(server)}-{mode}.bin"
    run = curl(server, *flags, "-T", str(src), f"{server.url}/{name}")
    assert run.returncode == 0, run.stderr
    assert sha((world["home"] / name).read_bytes()) == sha(src.read_bytes())
    run = curl(server, *flags, f"{server.url}/")
    assert run.returncode == 0, run.stderr
    listing = run.stdout.decode()
    assert name in listing and " docs" in listing and ".xxftp" not in listing
    run = curl(server, *flags, "-o", str(work / "back.bin"), f"{server.url}/{name}")
    assert run.returncode == 0, run.stderr
    assert sha((work / "back.bin").read_bytes()) == sha(src.read_bytes())
    assert data_commands(server) == {command}


def test_curl_resume_both_ways(server, world, work):
    content = os.urandom(3 * MiB + 5)
    name = f"resume-curl-{tag(server)}.bin"
    (world["home"] / name).write_bytes(content)
    local = work / "partial.bin"
    local.write_bytes(content[:MiB])
    server.mark()
    run = curl(server, "-C", "-", "-o", str(local), f"{server.url}/{name}")
    assert run.returncode == 0, run.stderr
    assert sha(local.read_bytes()) == sha(content)
    assert "REST" in server.commands()
    remote = f"resume-up-curl-{tag(server)}.bin"
    ftp = server.ftplib()
    ftp.storbinary(f"STOR {remote}", io.BytesIO(content[:1234 * KiB]))
    ftp.quit()
    full = work / "full.bin"
    full.write_bytes(content)
    server.mark()
    run = curl(server, "-C", "-", "-T", str(full), f"{server.url}/{remote}")
    assert run.returncode == 0, run.stderr
    assert sha((world["home"] / remote).read_bytes()) == sha(content)
    assert "APPE" in server.commands()


def test_curl_sees_refusals_as_errors(server, world, work):
    big = work / "big.bin"
    big.write_bytes(os.urandom(MiB))
    small = work / "small.bin"
    small.write_bytes(b"small")
    box, docs = world["root"] / "box-target", world["docs"]
    before = hashes(docs)
    cases = {
        "upload into a read-only mount": ["-T", str(small), f"{server.url}/docs/x-{tag(server)}.bin"],
        "upload over quota": ["-T", str(big), f"{server.url}/box/big-{tag(server)}.bin"],
        "upload over quota, active": ["--ftp-port", "-", "-T", str(big), f"{server.url}/box/big2-{tag(server)}.bin"],
        "download of the hidden password file": ["-o", str(work / "pw"), f"{server.url}/.xxftp/password"],
        "download from a write-only mount": ["-o", str(work / "dropped.bin"), f"{server.url}/drop/dropped.bin"],
        "listing of a hidden folder": [f"{server.url}/.xxftp/"],
    }
    for what, args in cases.items():
        run = curl(server, *args)
        assert run.returncode != 0, f"curl: {what} exited 0: {run.stderr!r}"
        assert run.returncode not in (6, 7, 28), f"curl: {what} failed for a wrong reason: {run.stderr!r}"
    assert not (work / "pw").exists() or (work / "pw").stat().st_size == 0
    assert not (work / "dropped.bin").exists() or (work / "dropped.bin").stat().st_size == 0
    assert [p.name for p in box.iterdir() if p.name != ".xxftp"] == []
    assert hashes(docs) == before
    assert not temporaries(world["root"])


# --- wget


def wget(server: Server, path: str, cwd: Path, *args: str) -> subprocess.CompletedProcess:
    host = f"[{server.host}]" if ":" in server.host else server.host
    return subprocess.run(["wget", "-nv", "--tries=1", "--timeout=15", *args,
                           f"ftp://alice:pw@{host}:{server.port}/{path}"],
                          cwd=cwd, capture_output=True, text=True, timeout=90)


@pytest.mark.parametrize("passive", [True, False], ids=["passive", "active"])
def test_wget_recursive_download_with_a_mount(server, world, work, passive):
    flags = ["-r", "-nH", "--cut-dirs=1", "-P", str(work / "got")] + ([] if passive else ["--no-passive-ftp"])
    run = wget(server, "data/", work, *flags)
    assert run.returncode == 0, run.stderr
    assert hashes(work / "got") == expected_data_tree(world)
    want = {("v4", True): {"PASV", "EPSV"}, ("v4", False): {"PORT", "EPRT"},
            ("v6", True): {"EPSV"}, ("v6", False): {"EPRT"}}[tag(server), passive]
    used = data_commands(server)
    assert used and used <= want, used


def test_wget_sees_refusals_as_errors(server, world, work):
    for what, path in {"hidden password file": ".xxftp/password", "write-only mount": "drop/dropped.bin",
                       "hidden folder": ".xxftp/", "escape": "../../etc/passwd"}.items():
        run = wget(server, path, work)
        assert run.returncode == 8, f"wget: {what}: status {run.returncode}: {run.stderr}"  # 8: server error
    assert [p.name for p in work.iterdir()] == []

