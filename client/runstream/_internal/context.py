"""Where a run came from, captured once at init: git, Python and packages, host, OS, CPU, GPUs,
command line, environment name, user. Every probe is best-effort with a short timeout."""

from __future__ import annotations

import functools
import getpass
import os
import platform
import re
import shutil
import socket
import stat
import subprocess
import sys
import threading
import time

from runstream.v1 import types_pb2

from .environ import ENVIRON

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
    """The repository's commit, branch, dirty flag + diff and remote, through a short-lived cache
    (GIT_CACHE_S): a sweep that starts runs back to back in one process would otherwise fork `git`
    four times per run (~13 ms of a 16 ms init, issue 11). A commit, checkout or `git add` in
    between is seen at once (HEAD and index are part of the cache key); an edit to a tracked file
    that is not staged shows up in the dirty flag and diff after at most GIT_CACHE_S."""
    where = os.path.abspath(cwd or os.getcwd())
    key = (where, max_diff_bytes, _git_signature(where))
    now = time.monotonic()
    hit = _git_cached(key, now)
    if hit is not None:
        return hit
    with _GIT_RUN_LOCK[0]:  # one thread runs git; threads that missed meanwhile take its answer
        hit = _git_cached((*key[:2], _git_signature(where)), now)  # signed anew: git may have run
        if hit is not None:
            return hit
        info = _git_info_now(cwd, max_diff_bytes)
        with _GIT_CACHE_LOCK:  # signed after git ran: `git status` may refresh (rewrite) the index
            _GIT_CACHE[key[:2]] = (_git_signature(where), now, info)
    return dict(info)


def _git_cached(key: tuple, now: float) -> dict | None:
    with _GIT_CACHE_LOCK:
        hit = _GIT_CACHE.get(key[:2])
        if hit is not None and hit[0] == key[2] and now - hit[1] < GIT_CACHE_S:
            return dict(hit[2])
    return None


GIT_CACHE_S = 5.0
_GIT_CACHE: dict[tuple[str, int], tuple[tuple, float, dict]] = {}
_GIT_CACHE_LOCK = threading.Lock()
_GIT_RUN_LOCK = [threading.Lock()]  # in a list: a forked child gets a fresh one (it may be held)
os.register_at_fork(after_in_child=lambda: _GIT_RUN_LOCK.__setitem__(0, threading.Lock()))


def _git_signature(where: str) -> tuple:
    """(mtime, size) of HEAD, index and the branch HEAD names, in the nearest .git above `where`:
    a stat each, so a commit or checkout invalidates the cache without running git. HEAD (and a
    worktree's .git file) is read again only when its stat changed: each system call here is paid
    by every init, and under a busy GIL by a wait for it (W3: ~0.1 ms of client CPU per run)."""
    path = where
    while True:
        dot_git = os.path.join(path, ".git")
        try:
            st = os.stat(dot_git)
            break
        except OSError:
            parent = os.path.dirname(path)
            if parent == path:
                return ()
            path = parent
    if stat.S_ISREG(st.st_mode):  # a worktree or submodule: "gitdir: <path>"
        try:
            dot_git = os.path.join(path, _read_small(dot_git, st).split(":", 1)[1].strip())
        except (OSError, IndexError):
            return ()
    head = os.path.join(dot_git, "HEAD")
    try:
        head_st = os.stat(head)
        ref = _read_small(head, head_st).strip()
    except OSError:
        return ()
    out = [(head_st.st_mtime_ns, head_st.st_size)]
    files = [os.path.join(dot_git, "index")]
    if ref.startswith("ref: "):
        files.append(os.path.join(dot_git, ref[5:]))
    for name in files:
        try:
            st = os.stat(name)
            out.append((st.st_mtime_ns, st.st_size))
        except OSError:
            out.append(None)
    return tuple(out)


def _read_small(path: str, st: os.stat_result) -> str:
    """A small file's text, read again only when its stat (inode, size, mtime) changed."""
    key = (st.st_ino, st.st_size, st.st_mtime_ns)
    hit = _SMALL_FILES.get(path)
    if hit is not None and hit[0] == key:
        return hit[1]
    with open(path) as f:
        text = f.read()
    if len(_SMALL_FILES) > 64:
        _SMALL_FILES.clear()
    _SMALL_FILES[path] = (key, text)
    return text


_SMALL_FILES: dict[str, tuple[tuple, str]] = {}


def _git_info_now(cwd: str | None, max_diff_bytes: int) -> dict:
    if shutil.which("git") is None:
        return {}
    heads = _run(["git", "rev-parse", "HEAD", "--abbrev-ref", "HEAD"], cwd)
    if heads is None:
        return {}
    commit, _, branch = heads.strip().partition("\n")
    info = {"git_commit": commit.strip(), "git_branch": branch.strip()}
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


def _once(probe):
    """A probe without arguments, run once per process by one thread (lru_cache lets every thread
    that misses run it: 4 threads starting their first runs at once read the package metadata 4
    times, ~0.45 s before any of them logged)."""
    locks = [threading.Lock()]
    result: list = []

    @functools.wraps(probe)
    def once():
        if not result:
            with locks[0]:
                if not result:
                    result.append(probe())
        return result[0]

    # a child forked while another thread ran the probe would wait on its lock forever
    os.register_at_fork(after_in_child=lambda: locks.__setitem__(0, threading.Lock()))
    return once


@_once
def packages() -> dict[str, str]:
    """Installed distributions, name -> version, read from each one's metadata header (Name and
    Version, first occurrence, as `dist.metadata[...]` answers them) without the email parser that
    `dist.metadata` and `dist.version` each run over the whole file: 11 ms instead of 66 ms for
    116 distributions, paid by the first init of every process."""
    from importlib import metadata

    out: dict[str, str] = {}
    for dist in metadata.distributions():
        text = dist.read_text("METADATA") or dist.read_text("PKG-INFO") or ""
        fields: dict[str, str] = {}
        for line in text.split("\n\n", 1)[0].splitlines():  # the header ends at the first blank line
            name, sep, value = line.partition(":")
            if sep and not line[:1].isspace():  # an indented line continues the field above
                fields.setdefault(name.strip().lower(), value.strip())
        if fields.get("name"):
            out[fields["name"]] = fields.get("version", "")
    return out


@_once  # read once per process: it was /proc/cpuinfo on every init
def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


@_once
def gpu_models() -> tuple[str, ...]:
    if shutil.which("nvidia-smi") is None:
        return ()
    out = _run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"], timeout=5.0)
    return tuple(line.strip() for line in (out or "").splitlines() if line.strip())


def env_name() -> str:
    conda = ENVIRON.get("CONDA_DEFAULT_ENV")
    if conda:
        return conda
    venv = ENVIRON.get("VIRTUAL_ENV")
    if venv:
        return os.path.basename(venv.rstrip("/"))
    if sys.prefix != sys.base_prefix:
        return os.path.basename(sys.prefix.rstrip("/"))
    return ""


@_once
def user_name() -> str:
    try:
        return getpass.getuser()
    except Exception:
        return os.environ.get("USER", "")


def capture(
    *,
    full: bool,
    with_packages: bool,
    max_diff_bytes: int,
    world_size: int,
    seeds: dict,
    into: types_pb2.RunContext | None = None,
) -> types_pb2.RunContext:
    """The run's context, written into `into` (a RunStart's own field: no copy) or a new message."""
    ctx = types_pb2.RunContext() if into is None else into
    ctx.MergeFrom(_process_context(full, with_packages))
    ctx.command.extend(sys.argv)
    ctx.env_name = env_name()
    ctx.world_size = world_size
    for key, value in seeds.items():
        ctx.seeds[key] = value
    if full:
        for key, value in git_info(max_diff_bytes=max_diff_bytes).items():
            setattr(ctx, key, value)
    return ctx


@functools.lru_cache(maxsize=4)
def _process_context(full: bool, with_packages: bool) -> types_pb2.RunContext:
    """What stays the same for the process's runs, built once and merged into each run's context
    in C (filling the packages map from Python was ~9 us of a ~23 us capture). Never modified."""
    ctx = types_pb2.RunContext(
        python_version=platform.python_version(),
        host=socket.gethostname(),
        os=platform.platform(),
        user=user_name(),
    )
    if full:
        ctx.cpu = cpu_model()
        ctx.gpus.extend(gpu_models())
        if with_packages:
            ctx.packages.update(packages())
    return ctx
