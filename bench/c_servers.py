#!/usr/bin/env python3
"""Optional comparison: plain pyftpdlib against the C FTP servers.

    python3 bench/c_servers.py [--repeat N] [--only NAME[,NAME]]
                               [--servers vsftpd,proftpd,pure-ftpd] [--quick]
                               [--prefix DIR] [--tmpdir DIR] [--json PATH] [--keep]

Runs plain pyftpdlib (``bench/plain_server.py``) and each C server that is
found (vsftpd, ProFTPD, Pure-FTPd; the others are skipped with a note) as
child processes on 127.0.0.1, all serving one home folder, and measures
them with the client of ``bench/run.py``. Rounds are interleaved; the
table gives medians and the ratio of each server to pyftpdlib. Needs root
(the C servers switch to the user ``benchftp``, created if missing). See
the last section of bench/README.md.
"""

from __future__ import annotations

import argparse
import ftplib
import json
import os
import pwd
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

from run import (  # noqa: E402  (bench/run.py: the client every server is measured with)
    CHUNK, HOST, MiB, RECV_BUF, Ctrl, ServerError, batch, close_all, cpu_seconds, fig_stor, free_port, listing,
    log, login_bursts, machine_info, make_big_file, make_flat, median, process_tree, pss_mib, raise_nofile,
    retr_rate, session,
)

PLAIN_USER, PLAIN_PASSWORD = "alice", "pw"  # fixed in plain_server.py
C_USER, C_PASSWORD = "benchftp", "pw"  # a system user: vsftpd needs one; its uid for the others
SALT = "benchftpd"  # a fixed salt: the same SHA-512 crypt hash for every C server
DEFAULT_PREFIX = "/opt/c-ftpd/root"  # where the .deb packages are unpacked (see the README)
C_SERVERS = ("vsftpd", "proftpd", "pure-ftpd")
BINARIES = {"vsftpd": "usr/sbin/vsftpd", "proftpd": "usr/sbin/proftpd", "pure-ftpd": "usr/sbin/pure-ftpd"}
BURST = 32  # logins started at a time


@dataclass(frozen=True)
class Sizes:
    big_mib: int  # STOR/RETR file
    list_files: int  # files in the listed folder
    logins: int  # connect+login, with QUIT and held
    conc: int  # concurrent transfers
    conc_mib: int  # ... of files of this size
    transfers: int = 3  # STOR/RETR per round (median taken)
    list_iters: int = 5  # LIST per round (median taken)
    burst: int = BURST  # read by run.login_bursts


FULL = Sizes(big_mib=200, list_files=10_000, logins=500, conc=100, conc_mib=10)
QUICK = Sizes(big_mib=16, list_files=500, logins=100, conc=20, conc_mib=1, transfers=2, list_iters=2)


# --------------------------------------------------------------------------
# servers


@dataclass
class FtpServer:
    """One server under test: a foreground child process in its own
    process group; ``command(port, tag)`` gives its argv (writing its
    configuration for that port first, if it has one). ``tag`` names the
    instance (``main``, ``fresh``): two instances of one server can run at
    once, each with its own configuration, pid and scoreboard files."""

    name: str
    command: Callable[[int, str], list[str]]
    user: str
    password: str
    log_path: Path
    version: str = ""
    tag: str = "main"
    port: int = 0
    proc: subprocess.Popen | None = field(default=None, repr=False)

    @property
    def label(self) -> str:  # what run.login_bursts and run.batch print
        return self.name

    @property
    def pid(self) -> int:
        if self.proc is None:
            raise ServerError(f"{self.name} is not running")
        return self.proc.pid

    def log_tail(self, lines: int = 15) -> str:
        try:
            text = self.log_path.read_text(errors="replace").splitlines()
        except OSError:
            return "    (no log)"
        return "\n".join("    " + line for line in text[-lines:]) or "    (empty log)"

    def start(self, timeout: float = 30) -> None:
        """Start on a free port; return once a login works."""
        for attempt in range(3):
            self.port = free_port()
            argv = self.command(self.port, self.tag)
            with open(self.log_path, "ab") as logf:
                self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=logf, stderr=subprocess.STDOUT,
                                             start_new_session=True)
            if self._wait_ready(argv, timeout):
                return
            if "in use" not in self.log_tail() or attempt == 2:
                raise ServerError(f"{self.name} exited with status {self.proc.returncode} at start-up\n"
                                  f"  command: {' '.join(argv)}\n  log:\n{self.log_tail()}")

    def _wait_ready(self, argv: list[str], timeout: float) -> bool:
        """True once a login works, False if the process ended first."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                return False
            try:
                ftp = ftplib.FTP()
                ftp.connect(HOST, self.port, timeout=5)
            except OSError:
                time.sleep(0.05)
                continue
            try:
                ftp.login(self.user, self.password)
                ftp.quit()
            except (*ftplib.all_errors, EOFError) as err:
                self.stop()
                raise ServerError(f"{self.name} started but login as {self.user} failed: {err}\n"
                                  f"  command: {' '.join(argv)}\n  log:\n{self.log_tail()}") from None
            return True
        self.stop()
        raise ServerError(f"{self.name} did not accept logins within {timeout:.0f} s\n"
                          f"  command: {' '.join(argv)}\n  log:\n{self.log_tail()}")

    def twin(self, tag: str) -> FtpServer:
        """Another instance of the same server (not started)."""
        log_path = self.log_path.with_name(f"{self.name}-{tag}.log")
        return FtpServer(self.name, self.command, self.user, self.password, log_path, self.version, tag)

    def check_alive(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            raise ServerError(f"{self.name} is no longer running\n  log:\n{self.log_tail()}")

    def stop(self) -> None:
        """SIGTERM to the server's process group and to its process tree
        (the per-client processes); once the server has exited (or after
        10 s), SIGKILL to any of them still there."""
        proc, self.proc = self.proc, None
        if proc is None:
            return
        tree = process_tree(proc.pid) if proc.poll() is None else []
        _signal_all(proc.pid, tree, signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            pass
        _signal_all(proc.pid, [p for p in tree if _alive(p)], signal.SIGKILL)
        proc.wait(10)


def _alive(pid: int) -> bool:
    return os.path.exists(f"/proc/{pid}")


def _signal_all(pgid: int, pids: list[int], sig: int) -> None:
    """``sig`` to the process group ``pgid`` and to each of ``pids``."""
    for send, target in [(os.killpg, pgid)] + [(os.kill, p) for p in pids]:
        try:
            send(target, sig)
        except (ProcessLookupError, PermissionError):
            pass


def tool_version(argv: list[str]) -> str:
    """The first version number (``1.2.3``) that ``argv`` prints, or ''.

    One pipe is its stdin, stdout and stderr: ``vsftpd -v`` writes to fd 0.
    """
    r, w = os.pipe()
    with os.fdopen(r, "rb") as out:
        try:
            subprocess.run(argv, stdin=w, stdout=w, stderr=w, timeout=10)
        except (OSError, subprocess.TimeoutExpired):
            return ""
        finally:
            os.close(w)
        text = out.read().decode(errors="replace")
    found = re.search(r"\d+(?:\.\d+)+", text)
    return found.group(0) if found else ""


def find_binary(name: str, prefixes: list[Path]) -> Path | None:
    for prefix in prefixes:
        path = prefix / BINARIES[name]
        if path.is_file() and os.access(path, os.X_OK):
            return path
    return None


# --------------------------------------------------------------------------
# set-up: the user, the data, the configurations


def sha512_crypt(password: str) -> str:
    """A ``$6$`` (SHA-512 crypt, 5,000 rounds) hash, as /etc/shadow has by default."""
    done = subprocess.run(["openssl", "passwd", "-6", "-salt", SALT, "-stdin"], input=password + "\n",
                          capture_output=True, text=True, check=True)
    return done.stdout.strip()


def ensure_user(pw_hash: str) -> pwd.struct_passwd:
    """The system user ``benchftp`` (made if missing), with ``C_PASSWORD``
    as its password. Its home is ``/`` (vsftpd changes to the home before
    it goes to ``local_root``, so it must exist; nothing is created)."""
    try:
        entry = pwd.getpwnam(C_USER)
    except KeyError:
        log(f"creating the system user {C_USER} (useradd; remove with: userdel {C_USER})")
        subprocess.run(["useradd", "--no-create-home", "--home-dir", "/", "--shell", "/bin/sh",
                        "--comment", "FTP benchmark", C_USER], check=True)
        entry = pwd.getpwnam(C_USER)
    if not os.path.isdir(entry.pw_dir):
        subprocess.run(["usermod", "--home", "/", C_USER], check=True)
        entry = pwd.getpwnam(C_USER)
    subprocess.run(["chpasswd", "-e"], input=f"{C_USER}:{pw_hash}\n", text=True, check=True)
    return entry


def build_home(base: Path, sz: Sizes, need: set[str], owner: pwd.struct_passwd | None) -> Path:
    """``base/home``: big.bin, list/ (``sz.list_files`` files), conc/ (hard
    links of one ``sz.conc_mib`` MiB file), up/ (uploads); the folders the
    servers write to belong to ``owner``."""
    chunk = os.urandom(CHUNK)
    home = base / "home"
    home.mkdir(mode=0o755)
    make_big_file(home / "big.bin", sz.big_mib * MiB, chunk)
    make_flat(home / "list", sz.list_files if "list" in need else 0, b"y" * 100)
    (home / "conc").mkdir(mode=0o755)
    (home / "up").mkdir(mode=0o755)
    if "conc" in need:
        src = base / "src-conc.bin"
        make_big_file(src, sz.conc_mib * MiB, chunk)
        for i in range(sz.conc):
            os.link(src, home / "conc" / f"f{i:03d}.bin")
    if owner is not None:
        for folder in (home, home / "up"):
            os.chown(folder, owner.pw_uid, owner.pw_gid)
    return home


def vsftpd_command(binary: Path, etc: Path, home: Path, empty: Path) -> Callable[[int, str], list[str]]:
    """vsftpd, standalone in the foreground; local user benchftp (PAM),
    chrooted to ``home``; the rest are vsftpd's defaults (sendfile on)."""
    def command(port: int, tag: str) -> list[str]:
        conf = etc / f"vsftpd-{tag}.conf"
        conf.write_text("\n".join([
            "listen=YES", "listen_ipv6=NO", f"listen_address={HOST}", f"listen_port={port}", "background=NO",
            "anonymous_enable=NO", "local_enable=YES", "write_enable=YES", "local_umask=022",
            f"local_root={home}", "chroot_local_user=YES", "allow_writeable_chroot=YES",
            f"secure_chroot_dir={empty}", "pam_service_name=vsftpd", "userlist_enable=NO",
            "xferlog_enable=NO", "max_clients=0", "max_per_ip=0", "",
        ]))
        return [str(binary), str(conf)]
    return command


def proftpd_command(binary: Path, etc: Path, home: Path, pw_hash: str,
                    owner: pwd.struct_passwd) -> Callable[[int, str], list[str]]:
    """ProFTPD, standalone with ``-n``; virtual user benchftp from an
    ``AuthUserFile`` (benchftp's uid), chrooted to ``home``. Each instance
    has its own scoreboard (ProFTPD removes it when it stops)."""
    passwd = etc / "proftpd.passwd"
    passwd.write_text(f"{C_USER}:{pw_hash}:{owner.pw_uid}:{owner.pw_gid}::{home}:/bin/sh\n")
    passwd.chmod(0o600)
    group = etc / "proftpd.group"
    group.write_text(f"{C_USER}:x:{owner.pw_gid}:\n")
    group.chmod(0o600)

    def command(port: int, tag: str) -> list[str]:
        conf = etc / f"proftpd-{tag}.conf"
        conf.write_text("\n".join([
            'ServerName "bench"', "ServerType standalone", "DefaultServer on", "UseIPv6 off",
            f"DefaultAddress {HOST}", "SocketBindTight on", f"Port {port}",
            "User nobody", "Group nogroup", "MaxInstances 2000", "Umask 022", "AllowOverwrite on",
            f"PidFile {etc}/proftpd-{tag}.pid", f"ScoreboardFile {etc}/proftpd-{tag}.scoreboard",
            "AuthOrder mod_auth_file.c", f"AuthUserFile {passwd}", f"AuthGroupFile {group}",
            "RequireValidShell off", "DefaultRoot ~",
            "UseReverseDNS off", "DelayEngine off", "WtmpLog off", "TransferLog NONE", "",
        ]))
        return [str(binary), "-n", "-c", str(conf)]
    return command


def pureftpd_command(binary: Path, etc: Path, home: Path, pw_hash: str,
                     owner: pwd.struct_passwd) -> Callable[[int, str], list[str]]:
    """Pure-FTPd in the foreground; virtual user benchftp in a PureDB
    (benchftp's uid, chrooted to ``home``), no anonymous logins, up to
    2,000 clients (the default is 50) from one address."""
    passwd = etc / "pureftpd.passwd"
    passwd.write_text(f"{C_USER}:{pw_hash}:{owner.pw_uid}:{owner.pw_gid}::{home}/./::::::::::::\n")
    passwd.chmod(0o600)
    pdb = etc / "pureftpd.pdb"
    pure_pw = binary.parent.parent / "bin" / "pure-pw"
    done = subprocess.run([str(pure_pw), "mkdb", str(pdb), "-f", str(passwd)], capture_output=True, text=True)
    if done.returncode:
        raise ServerError(f"pure-pw mkdb failed: {(done.stderr or done.stdout).strip()}")

    def command(port: int, tag: str) -> list[str]:
        return [str(binary), "-S", f"{HOST},{port}", "-l", f"puredb:{pdb}", "-E", "-A", "-H",
                "-c", "2000", "-C", "2000"]
    return command


def make_servers(names: list[str], prefixes: list[Path], base: Path, home: Path,
                 owner: pwd.struct_passwd | None, pw_hash: str) -> list[FtpServer]:
    """pyftpdlib and the chosen C servers that are found (a note for the others)."""
    logs, etc = base / "logs", base / "etc"
    plain = [sys.executable, str(HERE / "plain_server.py"), "--home", str(home), "--host", HOST,
             "--max-cons", "2000"]
    servers = [FtpServer("pyftpdlib", lambda port, tag: plain + ["--port", str(port)], PLAIN_USER, PLAIN_PASSWORD,
                         logs / "pyftpdlib.log", version=_pyftpdlib_version())]
    for name in names:
        binary = find_binary(name, prefixes)
        if binary is None:
            where = ", ".join(str(p / BINARIES[name]) for p in prefixes)
            log(f"note: {name} is not installed (looked for {where}); skipped")
            continue
        if owner is None:
            log(f"note: {name} skipped: the C servers need root (they switch to the user {C_USER})")
            continue
        if name == "vsftpd":
            empty = base / "empty"  # vsftpd's secure_chroot_dir: empty, root's, not writable by others
            empty.mkdir(mode=0o755, exist_ok=True)
            command = vsftpd_command(binary, etc, home, empty)
        elif name == "proftpd":
            command = proftpd_command(binary, etc, home, pw_hash, owner)
        else:
            command = pureftpd_command(binary, etc, home, pw_hash, owner)
        version = tool_version([str(binary), "--help" if name == "pure-ftpd" else "-v"])
        servers.append(FtpServer(name, command, C_USER, C_PASSWORD, logs / f"{name}.log", version=version))
    return servers


def _pyftpdlib_version() -> str:
    try:
        from importlib.metadata import version
        return version("pyftpdlib")
    except Exception:
        return ""


# --------------------------------------------------------------------------
# the figures: each runs one round on one server and returns {key: value}


def fig_retr(srv: FtpServer, ctx: dict) -> dict:
    sz: Sizes = ctx["sizes"]
    ftp = session(srv)
    try:
        rates = [retr_rate(ftp, srv.name, "/big.bin", sz.big_mib * MiB, ctx["recv_buf"])
                 for _ in range(sz.transfers)]
    finally:
        ftp.close()
    return {"retr": median(rates)}


def fig_list(srv: FtpServer, ctx: dict) -> dict:
    sz: Sizes = ctx["sizes"]
    times = []
    ftp = session(srv)
    try:
        for _ in range(sz.list_iters):
            secs, data = listing(ftp, "LIST /list", ctx["list_buf"])
            times.append(secs)
            names = data.count(b".txt\r\n")  # not counting a "total" line, if any
            if names != sz.list_files:
                raise RuntimeError(f"{srv.name}: LIST gave {names} file names, expected {sz.list_files}")
    finally:
        ftp.close()
    return {"list": median(times) * 1e3}


def fig_logins(srv: FtpServer, ctx: dict) -> dict:
    """connect+login+QUIT, in bursts (each starts when the previous one is done)."""
    secs, _ = login_bursts(srv, ctx, ctx["sizes"].logins, srv.user, srv.password, keep=False)
    return {"logins": secs}


def fig_held(srv: FtpServer, ctx: dict) -> dict:
    """On a second instance, started for this figure and stopped after it:
    its memory, then connect+login of ``sz.logins`` clients kept
    connected, and its memory with them. (The main instance is spared the
    held logins: ProFTPD's scoreboard keeps a slot for every session it
    has had at once, and each new session scans it.)"""
    fresh = srv.twin("fresh")
    fresh.start()
    try:
        out = _held(fresh, ctx)
        fresh.check_alive()
    finally:
        fresh.stop()
    return out


def _held(srv: FtpServer, ctx: dict) -> dict:
    n = ctx["sizes"].logins
    out = {"pss_idle": pss_mib(srv.pid)}
    secs, held = login_bursts(srv, ctx, n, srv.user, srv.password)
    try:
        time.sleep(0.2)  # the per-client processes have finished setting up the sessions
        out.update(held=secs, pss_held=pss_mib(srv.pid))
    finally:
        close_all(held)
    out["pss_per_client"] = (out["pss_held"] - out["pss_idle"]) * 1024 / n
    return out


def fig_conc(srv: FtpServer, ctx: dict) -> dict:
    """``sz.conc`` sessions (logged in first, not timed): a batch of
    concurrent RETRs, then one of STORs of new files (checked, deleted)."""
    sz: Sizes = ctx["sizes"]
    n, size = sz.conc, sz.conc_mib * MiB
    _, ctrls = login_bursts(srv, ctx, n, srv.user, srv.password)
    try:
        for ctrl in ctrls:
            ctrl.expect("TYPE I", 200)
        retr_secs, retr_cpu = batch(srv, ctrls, "RETR", [f"/conc/f{i:03d}.bin" for i in range(n)], size,
                                    ctx["chunk"], ctx["recv_buf"])
        names = [f"/up/{srv.name}_{ctx['round']}_{i:03d}.bin" for i in range(n)]
        stor_secs, stor_cpu = batch(srv, ctrls, "STOR", names, size, ctx["chunk"], ctx["recv_buf"])
        _check_and_delete(srv, ctrls[0], names, size)
    finally:
        close_all(ctrls)
    # *_client_cpu: the share of the batch the client thread was on a CPU (JSON only)
    return {"conc_retr": retr_secs, "conc_stor": stor_secs,
            "conc_retr_client_cpu": retr_cpu, "conc_stor_client_cpu": stor_cpu}


def _check_and_delete(srv: FtpServer, ctrl: Ctrl, names: list[str], size: int) -> None:
    for name in names:
        got = int(ctrl.expect(f"SIZE {name}", 213).split()[1])
        if got != size:
            raise RuntimeError(f"{srv.name}: concurrent STOR {name}: server has {got} bytes, sent {size}")
        ctrl.expect(f"DELE {name}", 250)


FIGURES: dict[str, Callable[[FtpServer, dict], dict]] = {
    # conc before logins: ProFTPD's logins then see the same scoreboard (100 slots) in every round
    "stor": fig_stor, "retr": fig_retr, "list": fig_list, "conc": fig_conc, "logins": fig_logins, "held": fig_held,
}


@dataclass(frozen=True)
class Row:
    key: str
    title: str
    unit: str
    fmt: str


def rows_for(sz: Sizes) -> list[Row]:
    n, c = sz.logins, sz.conc
    return [
        Row("stor", f"STOR {sz.big_mib} MiB, single stream", "MiB/s", ".0f"),
        Row("retr", f"RETR {sz.big_mib} MiB, single stream", "MiB/s", ".0f"),
        Row("list", f"LIST of {sz.list_files:,} files", "ms", ".1f"),
        Row("logins", f"{n} connect+login+QUIT (bursts of {sz.burst})", "s", ".3f"),
        Row("held", f"{n} connect+login, all kept connected (bursts of {sz.burst})", "s", ".3f"),
        Row("pss_idle", "server memory (PSS, process tree), fresh, no client", "MiB", ".1f"),
        Row("pss_held", f"server memory (PSS, process tree), {n} clients logged in", "MiB", ".1f"),
        Row("pss_per_client", "memory per logged-in client", "KiB", ".0f"),
        Row("conc_retr", f"{c} concurrent RETR of {sz.conc_mib} MiB, whole batch", "s", ".2f"),
        Row("conc_stor", f"{c} concurrent STOR of {sz.conc_mib} MiB, whole batch", "s", ".2f"),
    ]


# --------------------------------------------------------------------------
# report


def table(results: dict[str, dict[str, list[float]]], names: list[str], rows: list[Row]) -> str:
    """Markdown: one column per server, and after each C server its ratio
    to pyftpdlib."""
    base = names[0]
    head = ["figure", base] + [h for name in names[1:] for h in (name, f"{name}/{base}")]
    out = ["| " + " | ".join(head) + " |", "|---" + "|---:" * (len(head) - 1) + "|"]
    for row in rows:
        meds = {n: median(results[n][row.key]) for n in names if results[n].get(row.key)}
        if not meds:
            continue
        cells = [row.title, _cell(meds.get(base), row)]
        for name in names[1:]:
            value = meds.get(name)
            ratio = value / meds[base] if value is not None and meds.get(base) else None
            cells += [_cell(value, row), f"{ratio:.2f}" if ratio is not None else "–"]
        out.append("| " + " | ".join(cells) + " |")
    return "\n".join(out)


def _cell(value: float | None, row: Row) -> str:
    return "–" if value is None else f"{value:{row.fmt}} {row.unit}"


def run_rounds(servers: list[FtpServer], figures: list[str], ctx: dict, repeat: int) -> dict:
    """Every figure on every server, round by round; the server that goes
    first moves one place each round. Returns {server: {key: [values]}}."""
    results: dict[str, dict[str, list[float]]] = {srv.name: {} for srv in servers}
    for rnd in range(repeat):
        ctx["round"] = rnd
        shift = rnd % len(servers)
        order = servers[shift:] + servers[:shift]
        for name in figures:
            for srv in order:
                t0 = time.monotonic()
                try:
                    values = FIGURES[name](srv, ctx)
                except (RuntimeError, EOFError, OSError, ftplib.Error) as err:
                    raise ServerError(f"figure {name!r} failed on {srv.name}: {err!r}\n"
                                      f"  server log:\n{srv.log_tail()}") from err
                srv.check_alive()
                for key, value in values.items():
                    results[srv.name].setdefault(key, []).append(value)
                log(f"round {rnd + 1}/{repeat} {name:6s} {srv.name:9s} {time.monotonic() - t0:6.2f} s  "
                    + "  ".join(f"{k}={v:.4g}" for k, v in values.items()))
    return results


def check_space(folder: Path, sz: Sizes) -> None:
    need = (3 * sz.big_mib + (sz.conc + 1) * sz.conc_mib + 256) * MiB
    free = shutil.disk_usage(folder).free
    if free < need:
        raise SystemExit(f"c_servers: error: {folder} has {free / MiB:.0f} MiB free, "
                         f"the run needs about {need / MiB:.0f} MiB (use --tmpdir or --quick)")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="plain pyftpdlib vs the C FTP servers (vsftpd, ProFTPD, Pure-FTPd).")
    p.add_argument("--repeat", type=int, default=3, metavar="N", help="rounds (default 3); medians are reported")
    p.add_argument("--only", metavar="NAME[,NAME]", help=f"only these figures: {', '.join(FIGURES)}")
    p.add_argument("--servers", default=",".join(C_SERVERS), metavar="NAME[,NAME]",
                   help=f"C servers to compare (default: {','.join(C_SERVERS)}); '' for none")
    p.add_argument("--quick", action="store_true", help="small sizes, for a smoke run")
    p.add_argument("--prefix", action="append", default=[], metavar="DIR",
                   help=f"where to look for usr/sbin/<server> besides / (default also {DEFAULT_PREFIX})")
    p.add_argument("--tmpdir", metavar="DIR", help="where to build the data (default: the system temp folder)")
    p.add_argument("--json", metavar="PATH", help="also write the results as JSON to PATH")
    p.add_argument("--keep", action="store_true", help="keep the data folder, configurations and logs")
    args = p.parse_args(argv)
    if args.repeat < 1:
        p.error("--repeat must be at least 1")
    args.figures = list(FIGURES)
    if args.only is not None:
        wanted = [w.strip() for w in args.only.split(",") if w.strip()]
        if not wanted or any(w not in FIGURES for w in wanted):
            p.error(f"--only: choose from {', '.join(FIGURES)}")
        args.figures = [f for f in FIGURES if f in wanted]
    args.names = [s.strip() for s in args.servers.split(",") if s.strip()]
    unknown = [s for s in args.names if s not in C_SERVERS]
    if unknown:
        p.error(f"--servers: unknown {', '.join(unknown)}; choose from {', '.join(C_SERVERS)}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    sz = QUICK if args.quick else FULL
    prefixes = [Path("/")] + [Path(p) for p in args.prefix or [DEFAULT_PREFIX]]
    started, load_before, cpu_before = time.monotonic(), os.getloadavg()[0], cpu_seconds()
    raise_nofile(2 * sz.logins + 512)  # the servers, started later, inherit it
    base_dir = Path(args.tmpdir or tempfile.gettempdir())
    check_space(base_dir, sz)
    base = Path(tempfile.mkdtemp(prefix="c-ftpd-bench-", dir=base_dir))
    base.chmod(0o755)  # the C servers' sessions run as benchftp and must reach base/home
    for sub in ("etc", "logs"):
        (base / sub).mkdir(mode=0o755)
    servers: list[FtpServer] = []
    pool = ThreadPoolExecutor(max_workers=sz.burst, thread_name_prefix="client")
    try:
        pw_hash = sha512_crypt(C_PASSWORD)
        owner = ensure_user(pw_hash) if args.names and os.geteuid() == 0 else None
        log(f"building data in {base} ...")
        home = build_home(base, sz, set(args.figures), owner)
        servers = make_servers(args.names, prefixes, base, home, owner, pw_hash)
        for srv in servers:
            srv.start()
            log(f"{srv.name} {srv.version} listening on {HOST}:{srv.port} (pid {srv.pid})")
        warm = threading.Barrier(sz.burst)  # the client's login threads, made before any figure
        for future in [pool.submit(warm.wait) for _ in range(sz.burst)]:
            future.result()
        ctx = {"sizes": sz, "pool": pool, "chunk": memoryview(os.urandom(CHUNK)),
               "recv_buf": bytearray(RECV_BUF), "list_buf": bytearray(4 * MiB)}
        results = run_rounds(servers, args.figures, ctx, args.repeat)
    finally:
        pool.shutdown(wait=False, cancel_futures=True)
        for srv in servers:
            srv.stop()
        if args.keep:
            log(f"data, configurations and logs kept in {base}")
        else:
            shutil.rmtree(base, ignore_errors=True)
    report(args, sz, servers, results, started, load_before, cpu_before)
    return 0


def report(args: argparse.Namespace, sz: Sizes, servers: list[FtpServer], results: dict, started: float,
           load_before: float, cpu_before: tuple[float, float, float]) -> None:
    elapsed = time.monotonic() - started
    cpu_after = cpu_seconds()
    other = max(0.0, (cpu_after[0] - cpu_before[0]) - (cpu_after[1] - cpu_before[1]))
    info = machine_info()
    names = [srv.name for srv in servers]
    rows = rows_for(sz)
    print()
    print(table(results, names, rows))
    print()
    print(f"machine: {info['nproc']} CPUs ({info['cpu']}), Linux {info['kernel']}, Python {info['python']}; "
          + ", ".join(f"{srv.name} {srv.version}" for srv in servers)
          + f"; {'quick' if args.quick else 'full'} sizes, median of {args.repeat} round(s); "
          f"load average {load_before:.2f} at start, {os.getloadavg()[0]:.2f} at end; run took {elapsed:.0f} s; "
          f"other processes used about {other:.0f} CPU-seconds meanwhile")
    if args.json:
        doc = {"machine": info, "servers": {srv.name: srv.version for srv in servers}, "quick": args.quick,
               "repeat": args.repeat, "elapsed_s": elapsed, "loadavg_1min_start": load_before,
               "figures": [{"key": r.key, "figure": r.title, "unit": r.unit} for r in rows], "raw": results}
        Path(args.json).write_text(json.dumps(doc, indent=2) + "\n")


def _terminated(signum, frame):
    raise KeyboardInterrupt  # unwinds through the clean-up


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, _terminated)
    try:
        sys.exit(main())
    except (ServerError, subprocess.CalledProcessError) as err:
        print(f"c_servers: error: {err}", file=sys.stderr)
        sys.exit(1)
    except KeyboardInterrupt:
        print("c_servers: interrupted", file=sys.stderr)
        sys.exit(130)
