"""Podman as it works on this kind of machine: no registry, so the Dockerfile's base image
is a stand-in made locally from Debian (mmdebstrap), under the name the Dockerfile pulls.

What this machine needs (seen here with Debian's podman 4.3): the vfs storage driver,
runc with cgroupfs (crun refuses the hybrid cgroups), no default ulimits, and, for pip
inside the build, the host's CA bundle (the package index is reached through it).
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

BASE_IMAGE = "docker.io/library/python:3.11-slim"
BASE_PACKAGES = "python3.11,python3-venv,python-is-python3,ca-certificates"
HOST_CA_BUNDLE = Path("/etc/ssl/certs/ca-certificates.crt")
GLOBAL_OPTIONS = ["--storage-driver", "vfs", "--runtime", "runc", "--cgroup-manager", "cgroupfs"]


def why_podman_cannot_run() -> str | None:
    """None when podman and mmdebstrap are here, else what is missing."""
    missing = [tool for tool in ("podman", "mmdebstrap", "runc") if shutil.which(tool) is None]
    if missing:
        return f"not installed: {', '.join(missing)}"
    return None


class Podman:
    def __init__(self, workdir: Path) -> None:
        workdir.mkdir(parents=True, exist_ok=True)
        self.workdir = workdir
        conf = workdir / "containers.conf"
        conf.write_text("[containers]\ndefault_ulimits = []\n")
        self.env = {**os.environ, "CONTAINERS_CONF": str(conf)}

    def run(
        self, *args: str, timeout: float = 120, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            ["podman", *GLOBAL_OPTIONS, *args],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        if check:
            assert result.returncode == 0, (args, result.stdout[-3000:], result.stderr[-3000:])
        return result

    def ensure_base_image(self) -> None:
        """The stand-in for the Dockerfile's base, made once per machine (podman keeps it)."""
        if self.run("image", "exists", BASE_IMAGE, check=False).returncode == 0:
            return
        rootfs = self.workdir / "rootfs.tar"
        subprocess.run(
            [
                "mmdebstrap",
                "--variant=minbase",
                f"--include={BASE_PACKAGES}",
                "bookworm",
                str(rootfs),
                "http://deb.debian.org/debian",
            ],
            check=True,
            capture_output=True,
            timeout=900,
        )
        self.run("import", str(rootfs), BASE_IMAGE, timeout=300)
        rootfs.unlink()

    def build(self, context: Path, tag: str) -> None:
        """The Dockerfile as it is, with pip pointed at the host's CA bundle."""
        pip_conf = self.workdir / "pip.conf"
        pip_conf.write_text("[global]\ncert = /etc/ssl/certs/host-ca.crt\n")
        self.run(
            "build",
            "--pull=never",
            "--network",
            "host",
            "-v",
            f"{HOST_CA_BUNDLE}:/etc/ssl/certs/host-ca.crt:ro",
            "-v",
            f"{pip_conf}:/etc/pip.conf:ro",
            "-t",
            tag,
            str(context),
            timeout=1200,
        )
