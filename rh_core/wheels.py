"""Wheels of the client's own rh_core and plugins, so a cluster runs exactly the client's code.

The wheelhouse holds our distributions (built from the source tree for editable installs, or
repacked from the installed files otherwise) and the wheels of their dependencies, so a cluster
installs everything with ``pip install --no-index`` and needs no package index.
"""

from __future__ import annotations

import base64
import hashlib
import importlib.metadata
import json
import os
import subprocess
import sys
import zipfile

import attrs

from rh_core.errors import RhError


WHEELHOUSE_FORMAT = "2"  # bumped when what a wheelhouse holds changes (2: pip's wheel)


@attrs.frozen(kw_only=True)
class Wheelhouse:
    path: str
    requirements: tuple[str, ...]  # e.g. ("rh-core==0.1.0", "rh-ray==0.1.0")
    build_id: str  # changes whenever any shipped distribution's code changes
    pip_wheel: str  # the file name of pip's wheel in ``path``: a new venv runs pip straight from it


def _installed(name: str) -> importlib.metadata.Distribution:
    """The installed distribution ``name``, preferring a real install over a stray ``*.egg-info``
    in the current directory (a source checkout has one, and it comes first on sys.path)."""
    candidates = list(importlib.metadata.distributions(name=name))
    if not candidates:
        raise RhError(f"{name} is not installed here, so it cannot be shipped to the cluster; pip install it")
    for dist in candidates:
        if dist.read_text("direct_url.json") or dist.read_text("RECORD"):
            return dist
    return candidates[0]


def _editable_source(dist: importlib.metadata.Distribution) -> str | None:
    text = dist.read_text("direct_url.json")
    if not text:
        return None
    info = json.loads(text)
    if info.get("dir_info", {}).get("editable") and info.get("url", "").startswith("file://"):
        return info["url"][len("file://"):]
    return None


def _fingerprint(dist: importlib.metadata.Distribution) -> str:
    """Name, version and, for an editable install, the sizes and mtimes of its package's files.

    Only the import package (``rh_ray/`` for rh-ray) and the project file count: other projects in
    the same checkout, tests and what a wheel build writes must not change it.
    """
    digest = hashlib.sha256(f"{dist.metadata['Name']}=={dist.version}".encode())
    source = _editable_source(dist)
    if source is None:
        return digest.hexdigest()
    package = dist.metadata["Name"].replace("-", "_")
    paths = [os.path.join(source, "pyproject.toml"), os.path.join(source, "setup.py")]
    for root, dirs, files in os.walk(os.path.join(source, package)):
        dirs[:] = sorted(d for d in dirs if d != "__pycache__")
        paths += [os.path.join(root, name) for name in sorted(files) if not name.endswith(".pyc")]
    for path in paths:
        if os.path.exists(path):
            stat = os.stat(path)
            digest.update(f"{os.path.relpath(path, source)}:{stat.st_size}:{stat.st_mtime_ns}".encode())
    return digest.hexdigest()


def _repack(dist: importlib.metadata.Distribution, directory: str) -> None:
    """Write an installed (non-editable) distribution back out as a wheel from its RECORD."""
    name = dist.metadata["Name"].replace("-", "_")
    wheel_path = os.path.join(directory, f"{name}-{dist.version}-py3-none-any.whl")
    record_lines = []
    with zipfile.ZipFile(wheel_path, "w", zipfile.ZIP_DEFLATED) as wheel:
        for file in dist.files or ():
            path = str(file)
            if path.endswith(("RECORD", "WHEEL")) or "__pycache__" in path or path.startswith(".."):
                continue
            data = file.locate().read_bytes()
            wheel.writestr(path, data)
            digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
            record_lines.append(f"{path},sha256={digest},{len(data)}")
        wheel_metadata = b"Wheel-Version: 1.0\nGenerator: rh_core\nRoot-Is-Purelib: true\nTag: py3-none-any\n"
        wheel_file = f"{name}-{dist.version}.dist-info/WHEEL"
        wheel.writestr(wheel_file, wheel_metadata)
        digest = base64.urlsafe_b64encode(hashlib.sha256(wheel_metadata).digest()).rstrip(b"=").decode()
        record_lines.append(f"{wheel_file},sha256={digest},{len(wheel_metadata)}")
        record = f"{name}-{dist.version}.dist-info/RECORD"
        wheel.writestr(record, "\n".join(record_lines + [f"{record},,"]) + "\n")


def build_wheelhouse(distribution_names: list[str], cache_root: str) -> Wheelhouse:
    """Wheels for the named installed distributions and all their dependencies, cached by content."""
    dists = [_installed(name) for name in distribution_names]
    fingerprints = WHEELHOUSE_FORMAT + "".join(_fingerprint(d) for d in dists)
    build_id = hashlib.sha256(fingerprints.encode()).hexdigest()[:16]
    requirements = tuple(f"{d.metadata['Name']}=={d.version}" for d in dists)
    path = os.path.join(cache_root, build_id)
    done_marker = os.path.join(path, ".complete")
    if os.path.exists(done_marker):
        return Wheelhouse(path=path, requirements=requirements, build_id=build_id, pip_wheel=_pip_wheel_in(path))
    os.makedirs(path, exist_ok=True)
    # pip's own wheel too: a new venv made without pip (skipping ensurepip's separate pip run, and
    # working where a distribution leaves ensurepip out) installs pip and everything else in one run.
    targets = [f"pip=={importlib.metadata.version('pip')}"]
    for dist in dists:
        source = _editable_source(dist)
        if source is not None:
            targets.append(source)
        else:
            _repack(dist, path)
            targets.append(f"{dist.metadata['Name']}=={dist.version}")
    command = [sys.executable, "-m", "pip", "wheel", "--quiet", "--wheel-dir", path, "--find-links", path, *targets]
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        raise RhError(
            f"could not build the wheels the cluster needs ({' '.join(requirements)}): "
            f"`{' '.join(command)}` failed:\n{done.stderr[-3000:]}"
        )
    open(done_marker, "w").close()
    return Wheelhouse(path=path, requirements=requirements, build_id=build_id, pip_wheel=_pip_wheel_in(path))


def _pip_wheel_in(path: str) -> str:
    (name,) = [name for name in os.listdir(path) if name.startswith("pip-") and name.endswith(".whl")]
    return name
