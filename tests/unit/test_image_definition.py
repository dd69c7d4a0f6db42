"""The image's definition stays consistent without building it (tests/integration/test_image_smoke.py
runs a built one): the lock pins, with hashes, every requirement of runstream[server,dashboard] at
a version its specifier allows, and leaves chDB out; the Dockerfile and scripts/build_image.sh
install the same Debian packages from the same lock, for the same user, venv and entrypoint."""

from __future__ import annotations

import re
import tomllib

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

from tests import ROOT

IMAGE = ROOT / "helm" / "runstream" / "image"
LOCK = IMAGE / "requirements.txt"
DOCKERFILE = IMAGE / "Dockerfile"
SCRIPT = ROOT / "scripts" / "build_image.sh"
EXTRAS = ("server", "dashboard")


def _image_requirements() -> list[Requirement]:
    """The base dependencies and those of EXTRAS, with runstream[...] self-references expanded."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    extras, todo, out = set(), list(EXTRAS), [Requirement(r) for r in project["dependencies"]]
    while todo:
        extra = todo.pop()
        if extra in extras:
            continue
        extras.add(extra)
        for line in project["optional-dependencies"][extra]:
            req = Requirement(line)
            if canonicalize_name(req.name) == "runstream":
                todo.extend(req.extras)
            else:
                out.append(req)
    return out


def _lock() -> dict[str, tuple[Version, int]]:
    """name -> (pinned version, number of hashes)."""
    pins: dict[str, tuple[Version, int]] = {}
    name = None
    for line in LOCK.read_text().splitlines():
        m = re.match(r"^([A-Za-z0-9_.\-]+)==([^\s;\\]+)", line)
        if m:
            name = canonicalize_name(m.group(1))
            pins[name] = (Version(m.group(2)), 0)
        elif name and "--hash=sha256:" in line:
            version, hashes = pins[name]
            pins[name] = (version, hashes + 1)
    return pins


def test_the_lock_pins_every_image_requirement_with_hashes_and_no_chdb():
    pins = _lock()
    assert len(pins) > 20  # the parser read the file
    for req in _image_requirements():
        name = canonicalize_name(req.name)
        assert name in pins, f"{req} is not in {LOCK.name}: run bash scripts/build_image.sh lock"
        assert req.specifier.contains(pins[name][0], prereleases=True), (
            f"{LOCK.name} pins {name}=={pins[name][0]}, outside {req}: run bash scripts/build_image.sh lock"
        )
    assert all(hashes > 0 for _, hashes in pins.values()), [n for n, (_, h) in pins.items() if not h]
    assert "chdb" not in pins and "runstream" not in pins


def _script_var(name: str) -> str:
    m = re.search(rf"^{name}=(.+)$", SCRIPT.read_text(), re.M)
    assert m, f"{name}= not found in {SCRIPT.name}"
    return m.group(1)


def test_the_dockerfile_and_the_build_script_make_the_same_image():
    docker = DOCKERFILE.read_text()
    script = SCRIPT.read_text()
    script_packages = set(_script_var("BASE_PACKAGES").split(","))
    installs = re.findall(r"apt-get install -y --no-install-recommends ([^\\&\n]+)", docker)
    assert installs and all(set(i.split()) == script_packages for i in installs), (installs, script_packages)
    suite = _script_var("SUITE")
    tag = re.search(r"^ARG DEBIAN_TAG=(\S+)$", docker, re.M).group(1)
    assert suite == "bookworm" and re.fullmatch(r"12\.\d+-slim", tag), tag  # bookworm is Debian 12
    assert "--require-hashes" in docker and "helm/runstream/image/requirements.txt" in docker
    assert (
        "--require-hashes" in script and _script_var("LOCK") == "$ROOT/helm/runstream/image/requirements.txt"
    )
    assert "!helm/runstream/image/requirements.txt" in (IMAGE / "Dockerfile.dockerignore").read_text()
    assert "chdb" not in docker.lower().replace("without chdb", "")
    assert _script_var("EXTRAS") == "(" + " ".join(EXTRAS) + ")"
    for both in ("python3 -m venv /opt/runstream", "--uid 10001 --gid 10001", "--gid 10001 runstream"):
        assert both in docker and both in script, both
    assert 'ENTRYPOINT ["runstream"]' in docker and "--config.entrypoint runstream" in script
    assert "USER 10001:10001" in docker and "--config.user 10001:10001" in script
    assert "HOME=/tmp" in docker and "--config.env HOME=/tmp" in script
