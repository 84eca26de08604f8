"""Docker engine and test image for the docker-runtime tests (see scripts/dockerd.sh and DEVELOPERS.md)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.integration.conftest import REPO_ROOT

IMAGE = "drainctl-test:base"


def docker(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["docker", *args], capture_output=True, text=True, timeout=timeout, check=False)


def require_docker() -> None:
    """Skip (with the reason) when no Docker engine answers — but fail under CI, where
    scripts/setup.sh starts the engine: a silent skip there would hide a broken setup."""
    def unavailable(reason: str) -> None:
        message = f"no Docker engine: {reason}; run `bash scripts/dockerd.sh` as root"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)

    try:
        info = docker("info", timeout=20)
    except (FileNotFoundError, subprocess.TimeoutExpired) as exc:
        unavailable(f"`docker info` failed ({exc})")
        return
    if info.returncode != 0:
        unavailable(f"`docker info` failed ({info.stderr.strip()[-300:]})")
    if docker("image", "inspect", IMAGE).returncode != 0:
        # The engine answers, so this only imports the image.
        subprocess.run(["bash", str(REPO_ROOT / "scripts" / "dockerd.sh")], check=True, timeout=120)


def host_binds() -> tuple[str, ...]:
    """Read-only binds giving an empty image the host's userland, Python and this repo, at the same paths."""
    roots: list[Path] = [Path(d) for d in ("/usr", "/etc", "/bin", "/sbin", "/lib", "/lib64")
                         if Path(d).is_dir() and not Path(d).is_symlink()]
    for extra in (Path(sys.base_prefix).resolve(), Path(sys.prefix).resolve(), REPO_ROOT.resolve()):
        if not any(extra == r or r in extra.parents for r in roots):
            roots = [r for r in roots if extra not in r.parents] + [extra]
    return tuple(f"{r}:{r}:ro" for r in roots)
