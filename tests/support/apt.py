"""Install a Debian package the test setup needs (PostgreSQL, Chromium) when the machine lacks it."""

from __future__ import annotations

import os
import shutil
import subprocess


class PackageUnavailable(RuntimeError):
    pass


def apt_install(package: str, why: str) -> None:
    """`apt-get install -y <package>`, as root or through passwordless sudo; a clear error otherwise."""
    if not shutil.which("apt-get"):
        raise PackageUnavailable(f"{why}: {package} is missing and this machine has no apt-get to install it")
    prefix: list[str] = []
    if os.geteuid() != 0:
        if not shutil.which("sudo") or subprocess.run(["sudo", "-n", "true"], capture_output=True).returncode:
            raise PackageUnavailable(
                f"{why}: {package} is missing; install it (apt-get install {package}) or run the tests as root"
            )
        prefix = ["sudo", "-n"]
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for command in (["apt-get", "update", "-q"], ["apt-get", "install", "-y", "-q", package]):
        done = subprocess.run([*prefix, *command], env=env, capture_output=True, text=True)
        if done.returncode:
            tail = (done.stderr or done.stdout).strip().splitlines()[-3:]
            raise PackageUnavailable(f"{why}: `{' '.join(command)}` failed: {' | '.join(tail)}")
