"""deploy/: the systemd unit passes ``systemd-analyze verify`` and keeps its
hardening; the Dockerfile installs exactly as the README says."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

TOP = Path(__file__).resolve().parent.parent
UNIT = TOP / "deploy" / "xxftpd.service"
DOCKERFILE = TOP / "deploy" / "Dockerfile"


def _service_keys(text: str) -> dict[str, list[str]]:
    keys: dict[str, list[str]] = {}
    section = None
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("["):
            section = line
        elif section == "[Service]":
            key, _, value = line.partition("=")
            keys.setdefault(key, []).append(value)
    return keys


def test_unit_is_hardened():
    keys = _service_keys(UNIT.read_text())
    wanted = {"User": "xxftpd", "ProtectSystem": "strict", "ReadWritePaths": "/srv/ftp", "NoNewPrivileges": "yes",
              "AmbientCapabilities": "CAP_NET_BIND_SERVICE", "CapabilityBoundingSet": "CAP_NET_BIND_SERVICE",
              "PrivateTmp": "yes", "ProtectHome": "yes", "SystemCallFilter": "@system-service",
              "RestrictAddressFamilies": "AF_INET AF_INET6 AF_UNIX"}
    for key, value in wanted.items():
        assert keys.get(key) == [value], (key, keys.get(key))
    assert "ExecReload" not in keys  # the server has no SIGHUP handler: a reload would stop it
    assert "DynamicUser" not in keys
    assert keys["ExecStart"][0].startswith("/usr/local/bin/xxftpd ")


def test_unit_passes_systemd_analyze_verify(tmp_path):
    tool = shutil.which("systemd-analyze")
    assert tool, "systemd-analyze is needed: install the Debian package 'systemd'"
    # verify checks that ExecStart's program exists: a stand-in at a path of its own
    program = tmp_path / "xxftpd"
    program.write_text("#!/bin/sh\nexit 0\n")
    program.chmod(0o755)
    unit = tmp_path / "xxftpd.service"
    text = UNIT.read_text()
    unit.write_text(text.replace("/usr/local/bin/xxftpd", str(program)))
    result = subprocess.run([tool, "verify", "--man=no", str(unit)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and not result.stderr.strip(), result.stderr  # a warning is a failure too
    # and it does see a mistake
    unit.write_text(text.replace("/usr/local/bin/xxftpd", str(program)).replace("NoNewPrivileges", "NoNewPriv"))
    result = subprocess.run([tool, "verify", "--man=no", str(unit)], capture_output=True, text=True, timeout=60)
    assert "Unknown key" in result.stderr


def _readme_install() -> str:
    """The install part of the README's first command."""
    text = (TOP / "README.md").read_text()
    block = re.search(r"```sh\n(.*?)\n", text).group(1)
    return block.split("&&")[0].strip()


def test_dockerfile_installs_as_the_readme_says():
    install = _readme_install()
    assert install.startswith("python3 -m pip install ")
    lines = DOCKERFILE.read_text().splitlines()
    assert lines[[i for i, line in enumerate(lines) if not line.startswith("#")][0]] == "FROM python:3.11-slim"
    installs = [line[len("RUN "):] for line in lines if line.startswith("RUN ") and "pip" in line]
    assert installs == [install]


def test_dockerfile_runs_unprivileged_with_a_volume_and_passive_ports():
    text = DOCKERFILE.read_text()
    user = re.findall(r"^USER (\S+)$", text, re.M)
    assert user == ["xxftpd"]
    assert re.search(r"^VOLUME /srv/ftp$", text, re.M)
    expose = re.search(r"^EXPOSE (\d+) (\d+)-(\d+)$", text, re.M)
    assert expose, text
    port, low, high = expose.groups()
    entry = re.search(r"^ENTRYPOINT (.*)$", text, re.M).group(1)
    assert f'"--port", "{port}"' in entry and f'"--passive-ports", "{low}-{high}"' in entry
    assert '"--root", "/srv/ftp"' in entry
