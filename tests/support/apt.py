"""Install a Debian package the test setup needs (PostgreSQL, Chromium) when the machine lacks it."""

from __future__ import annotations

import fcntl
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

# Parallel test workers (pytest-xdist) may each find the package missing at the same moment; apt
# allows one install at a time, so they queue on this lock and the later ones find it installed.
_LOCK = Path(tempfile.gettempdir()) / "funnelsync-tests-apt.lock"


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
    # Wait for a dpkg lock held by anything else on the machine instead of failing at once.
    wait = ["-o", "DPkg::Lock::Timeout=600"]
    lock = os.open(_LOCK, os.O_RDONLY | os.O_CREAT, 0o666)  # read-only: any user can share it
    try:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if _installed(package):  # another worker installed it while this one waited
            return
        for command in (
            ["apt-get", *wait, "update", "-q"],
            ["apt-get", *wait, "install", "-y", "-q", package],
        ):
            done = subprocess.run([*prefix, *command], env=env, capture_output=True, text=True)
            if done.returncode:
                tail = (done.stderr or done.stdout).strip().splitlines()[-3:]
                raise PackageUnavailable(f"{why}: `{' '.join(command)}` failed: {' | '.join(tail)}")
    finally:
        os.close(lock)  # releases the lock


def _installed(package: str) -> bool:
    status = subprocess.run(
        ["dpkg-query", "-W", "-f", "${Status}", package], capture_output=True, text=True
    ).stdout
    return status.endswith(" installed")
