"""Where a run came from, captured once at init: git, Python and packages, host, OS, CPU, GPUs,
command line, environment name, user. Every probe is best-effort with a short timeout."""

from __future__ import annotations

import getpass
import os
import platform
import re
import shutil
import socket
import subprocess
import sys
from functools import lru_cache

from runstream.v1 import types_pb2

_CREDENTIALS = re.compile(r"(?<=://)[^/@\s]+@")


def _run(cmd: list[str], cwd: str | None = None, timeout: float = 3.0) -> str | None:
    try:
        out = subprocess.run(cmd, cwd=cwd, capture_output=True, timeout=timeout, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.decode(errors="replace") if out.returncode == 0 else None


def strip_credentials(url: str) -> str:
    """https://user:token@host/repo -> https://host/repo."""
    return _CREDENTIALS.sub("", url)


def git_info(cwd: str | None = None, max_diff_bytes: int = 256 * 1024) -> dict:
    if shutil.which("git") is None:
        return {}
    commit = _run(["git", "rev-parse", "HEAD"], cwd)
    if commit is None:
        return {}
    info = {"git_commit": commit.strip()}
    branch = _run(["git", "rev-parse", "--abbrev-ref", "HEAD"], cwd)
    info["git_branch"] = (branch or "").strip()
    status = _run(["git", "status", "--porcelain", "--untracked-files=no"], cwd)
    info["git_dirty"] = bool(status and status.strip())
    if info["git_dirty"]:
        diff = _run(["git", "diff", "HEAD"], cwd, timeout=5.0) or ""
        raw = diff.encode()
        if len(raw) > max_diff_bytes:
            diff = (
                raw[:max_diff_bytes].decode(errors="ignore") + f"\n... [truncated: {len(raw)} bytes in all]\n"
            )
        info["git_diff"] = diff
    remote = _run(["git", "remote", "get-url", "origin"], cwd)
    info["git_remote"] = strip_credentials((remote or "").strip())
    return info


@lru_cache(maxsize=1)
def packages() -> dict[str, str]:
    from importlib import metadata

    out: dict[str, str] = {}
    for dist in metadata.distributions():
        name = dist.metadata["Name"] if dist.metadata else None
        if name:
            out[name] = dist.version or ""
    return out


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


@lru_cache(maxsize=1)
def gpu_models() -> tuple[str, ...]:
    if shutil.which("nvidia-smi") is None:
        return ()
    out = _run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"], timeout=5.0)
    return tuple(line.strip() for line in (out or "").splitlines() if line.strip())


def env_name() -> str:
    if os.environ.get("CONDA_DEFAULT_ENV"):
        return os.environ["CONDA_DEFAULT_ENV"]
    if os.environ.get("VIRTUAL_ENV"):
        return os.path.basename(os.environ["VIRTUAL_ENV"].rstrip("/"))
    if sys.prefix != sys.base_prefix:
        return os.path.basename(sys.prefix.rstrip("/"))
    return ""


def user_name() -> str:
    try:
        return getpass.getuser()
    except Exception:
        return os.environ.get("USER", "")


def capture(
    *, full: bool, with_packages: bool, max_diff_bytes: int, world_size: int, seeds: dict
) -> types_pb2.RunContext:
    ctx = types_pb2.RunContext(
        python_version=platform.python_version(),
        host=socket.gethostname(),
        os=platform.platform(),
        command=list(sys.argv),
        env_name=env_name(),
        user=user_name(),
        world_size=world_size,
    )
    for key, value in seeds.items():
        ctx.seeds[key] = value
    if not full:
        return ctx
    ctx.cpu = cpu_model()
    ctx.gpus.extend(gpu_models())
    for key, value in git_info(max_diff_bytes=max_diff_bytes).items():
        setattr(ctx, key, value)
    if with_packages:
        ctx.packages.update(packages())
    return ctx
