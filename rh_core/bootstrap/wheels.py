"""Wheels for a cluster's own platform: the client's exact rh_core and plugins, and their dependencies
resolved on the client for the cluster's OS, architecture, libc and Python.

Our own distributions become pure-Python wheels (built from the source tree for editable installs,
repacked from the installed files otherwise). Their dependencies, and any requirements a user ships
to a cluster without index access, are resolved in two steps, each by the tool that gets it right:

- **uv resolves** (``uv pip compile --python-version --python-platform``): it evaluates environment
  markers for the *cluster's* Python. pip's ``--python-version`` only filters wheel tags and keeps
  judging markers by the client's interpreter, so a 3.11 client resolving for a 3.10 cluster left out
  ``typing-extensions``, which cryptography needs below 3.11 (the 3.10 host test showed it).
- **pip downloads** exactly that list (``pip download --no-deps --platform ... --only-binary=:all:``)
  into a pool of wheels per platform, with pip's own index settings and cache, and copies it out.
"""

from __future__ import annotations

import base64
import contextlib
import fcntl
import hashlib
import importlib.metadata
import json
import logging
import os
import platform as platform_module
import shutil
import subprocess
import sys
import tempfile
import threading
import zipfile
from collections.abc import Iterator, Sequence

import attrs

from rh_core.errors import RhError

logger = logging.getLogger(__name__)

WHEELHOUSE_FORMAT = "3"  # bumped when what a wheelhouse holds changes (3: resolved per platform)
#: The oldest Python a cluster can run rh_core's server on.
MIN_CLUSTER_PYTHON = (3, 10)
#: Dependencies a cluster gets in the client's version: functions and arguments pickled by value are
#: only read back by the same cloudpickle. Other dependencies are the newest the cluster's platform
#: has wheels of (pinning every one to the client's made pip backtrack for minutes where an old
#: platform lacks one version).
ALWAYS_PINNED = ("cloudpickle",)
# The oldest glibc of each architecture's manylinux wheels, and the old names of some tags (PEP 600).
_MANYLINUX_FLOOR = {"x86_64": 5, "i686": 5}
_MANYLINUX_ALIASES = {5: "manylinux1", 12: "manylinux2010", 17: "manylinux2014"}


class WheelhouseError(RhError):
    """Wheels for a cluster's platform could not be resolved on this machine."""


@attrs.frozen(kw_only=True)
class Platform:
    """What a wheel must fit to install on a machine: OS, architecture, C library and Python."""

    system: str  # platform.system(): "Linux"
    machine: str  # platform.machine(): "x86_64", "aarch64"
    libc: str  # "glibc", "musl", or "" when unknown
    libc_version: str  # "2.31" (glibc), "1.2" (musl)
    python: str  # "3.10"
    implementation: str = "cp"  # wheel tag prefix: "cp" for CPython, "pp" for PyPy

    @classmethod
    def here(cls) -> Platform:
        """This process's platform."""
        libc, version = _libc_here()
        return cls(system=platform_module.system(), machine=platform_module.machine(), libc=libc,
                   libc_version=version, python="%d.%d" % sys.version_info[:2],
                   implementation="pp" if sys.implementation.name == "pypy" else "cp")

    @classmethod
    def from_probe(cls, probe: dict) -> Platform:
        """From what the bootstrap probe printed on a machine (see :mod:`rh_core.bootstrap.scripts.platform`)."""
        return cls(system=probe["system"], machine=probe["machine"], libc=probe.get("libc") or "",
                   libc_version=probe.get("libc_version") or "", python=probe["python"],
                   implementation=probe.get("implementation", "cp"))

    @property
    def tag(self) -> str:
        """A short name for caches: ``cp310-glibc2.31-x86_64``."""
        libc = f"{self.libc}{self.libc_version}" if self.libc else self.system.lower()
        return f"{self.implementation}{self.python.replace('.', '')}-{libc}-{self.machine}"

    def describe(self) -> str:
        name = "CPython" if self.implementation == "cp" else "PyPy"
        libc = f", {self.libc} {self.libc_version}" if self.libc else ""
        return f"{self.system} {self.machine}{libc}, {name} {self.python}"

    def pip_platforms(self) -> list[str]:
        """Every ``--platform`` tag a wheel for this machine may carry, newest first.

        pip expands only the legacy ``manylinux2014``-style names itself, so the whole ladder is
        written out: a glibc 2.31 machine takes ``manylinux_2_31`` down to ``manylinux_2_5`` wheels.
        """
        if self.system != "Linux":
            raise WheelhouseError(
                f"the cluster machine runs {self.describe()}; rh_core's cluster runtime is built for Linux "
                "machines only: use a Linux host")
        arch = self.machine
        major, minor = _version_pair(self.libc_version)
        tags: list[str] = []
        if self.libc == "glibc" and major == 2:
            for glibc_minor in range(minor, _MANYLINUX_FLOOR.get(arch, 17) - 1, -1):
                tags.append(f"manylinux_2_{glibc_minor}_{arch}")
                alias = _MANYLINUX_ALIASES.get(glibc_minor)
                if alias and (glibc_minor == 17 or arch in _MANYLINUX_FLOOR):
                    tags.append(f"{alias}_{arch}")
        elif self.libc == "musl" and major == 1:
            tags += [f"musllinux_1_{musl_minor}_{arch}" for musl_minor in range(minor, 0, -1)]
        else:
            raise WheelhouseError(
                f"cannot tell which C library the cluster machine ({self.describe()}) has, so no binary "
                "wheel can be chosen for it; install glibc's `getconf` there or use a glibc or musl Linux")
        return tags

    def uv_platform(self) -> str:
        """uv's ``--python-platform`` for this machine: the newest glibc target uv knows that is not
        newer than the machine's (uv knows manylinux 2.17, 2.28 and 2.31 to 2.40)."""
        self.pip_platforms()  # refuses what is not Linux with a known libc
        if self.machine not in ("x86_64", "aarch64"):
            raise WheelhouseError(
                f"wheels for {self.describe()} cannot be resolved here (uv resolves for x86_64 and aarch64 Linux "
                "only); install rh_core on that machine yourself, or use an x86_64 or aarch64 machine")
        if self.libc == "musl":
            return f"{self.machine}-unknown-linux-musl"
        minor = _version_pair(self.libc_version)[1]
        known = [m for m in (17, 28, *range(31, 41)) if m <= minor]
        if not known:
            raise WheelhouseError(f"{self.describe()}: glibc {self.libc_version} is older than any wheel tag "
                                  "(manylinux2014 needs glibc 2.17); use a newer machine image")
        return f"{self.machine}-manylinux_2_{known[-1]}"

    def pip_arguments(self) -> list[str]:
        """``pip download`` options that make pip choose wheels for this platform, not the client's."""
        args = ["--only-binary=:all:", "--python-version", self.python, "--implementation", self.implementation]
        for tag in self.pip_platforms():
            args += ["--platform", tag]
        return args


def _libc_here() -> tuple[str, str]:
    from rh_core.bootstrap.scripts.platform import rh_platform

    found = rh_platform()
    return found["libc"], found["libc_version"]


def _version_pair(text: str) -> tuple[int, int]:
    try:
        major, minor = text.split(".")[:2]
        return int(major), int(minor)
    except ValueError:
        return 0, 0


# -------------------------------------------------------------------------------------------------
# Our own distributions


@attrs.frozen(kw_only=True)
class Wheelhouse:
    """A folder of wheels that installs our distributions on one platform with ``pip --no-index``."""

    path: str
    requirements: tuple[str, ...]  # e.g. ("rh-core==0.1.0", "rh-ray==0.1.0")
    build_id: str  # changes whenever any shipped distribution's code changes
    pip_wheel: str  # the file name of pip's wheel in ``path``: a new venv runs pip straight from it
    platform: Platform


@attrs.frozen(kw_only=True)
class OwnWheels:
    """Pure-Python wheels of our distributions, built once per :attr:`build_id`."""

    path: str
    files: tuple[str, ...]  # wheel file names in ``path``
    requirements: tuple[str, ...]
    build_id: str


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


def build_own_wheels(distribution_names: Sequence[str], cache: str) -> OwnWheels:
    """Pure-Python wheels of the named installed distributions (no dependencies), cached by content."""
    dists = [_installed(name) for name in distribution_names]
    fingerprints = WHEELHOUSE_FORMAT + "".join(_fingerprint(d) for d in dists)
    build_id = hashlib.sha256(fingerprints.encode()).hexdigest()[:16]
    requirements = tuple(f"{d.metadata['Name']}=={d.version}" for d in dists)
    path = os.path.join(cache, build_id, "own")
    with _exclusive(path):
        _build_own(dists, path, requirements)
    files = tuple(sorted(name for name in os.listdir(path) if name.endswith(".whl")))
    return OwnWheels(path=path, files=files, requirements=requirements, build_id=build_id)


def _build_own(dists: list[importlib.metadata.Distribution], path: str, requirements: tuple[str, ...]) -> None:
    if not os.path.exists(os.path.join(path, ".complete")):
        shutil.rmtree(path, ignore_errors=True)
        os.makedirs(path)
        sources = []
        for dist in dists:
            source = _editable_source(dist)
            if source is None:
                _repack(dist, path)
            else:
                sources.append(source)
        if sources:
            command = [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--wheel-dir", path, *sources]
            _run_tool(command, f"building the wheels of {', '.join(requirements)}")
        open(os.path.join(path, ".complete"), "w").close()


@contextlib.contextmanager
def _exclusive(path: str) -> Iterator[None]:
    """Hold ``path + ".lock"``: one process or thread at a time fills ``path`` (several clusters
    brought up at once share the same wheels)."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with _THREAD_LOCK, open(path + ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


_THREAD_LOCK = threading.RLock()  # flock does not exclude threads of one process sharing the file's lock


# -------------------------------------------------------------------------------------------------
# Resolving for a platform


def client_pins(names: Sequence[str]) -> list[str]:
    """``name==version`` of those of ``names`` installed here, as constraints for a cluster."""
    pins = []
    for name in names:
        with contextlib.suppress(importlib.metadata.PackageNotFoundError):
            pins.append(f"{name}=={importlib.metadata.version(name)}")
    return pins


def resolve_for_platform(requirements: Sequence[str], platform: Platform, dest: str, pool: str, *, what: str,
                         constraints: Sequence[str] = (), cwd: str | None = None) -> None:
    """Resolve ``requirements`` (lines of a requirements file: names, wheel paths, ``-r FILE``) and
    all their dependencies for ``platform``, and put exactly those wheels into ``dest``, by way of
    ``pool``, a folder of wheels kept for the platform: what it holds is not downloaded again."""
    os.makedirs(pool, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="rh-resolve-") as scratch:
        wanted = os.path.join(scratch, "requirements.in")
        with open(wanted, "w") as file:
            file.write("\n".join(requirements) + "\n")
        pinned_constraints = os.path.join(scratch, "constraints.txt")
        with open(pinned_constraints, "w") as file:
            file.write("\n".join(constraints) + "\n")
        pinned = os.path.join(scratch, "pinned.txt")
        compile_command = [_uv(), "pip", "compile", wanted, "--output-file", pinned, "--quiet", "--no-header",
                           "--no-annotate", "--python-version", platform.python, "--python-platform",
                           platform.uv_platform(), "--only-binary", ":all:", "--constraint", pinned_constraints,
                           "--find-links", pool]
        offline = subprocess.run([*compile_command, "--offline"], capture_output=True, text=True, cwd=cwd)
        if offline.returncode != 0:  # something is in neither the pool nor uv's cache: ask the index
            _run_tool(compile_command, f"{what} for {platform.describe()}", cwd=cwd)
        download = [sys.executable, "-m", "pip", "download", "--quiet", "--disable-pip-version-check", "--no-deps",
                    *platform.pip_arguments(), "--find-links", pool, "--requirement", pinned]
        from_pool = subprocess.run([*download, "--no-index", "--dest", dest], capture_output=True, text=True, cwd=cwd)
        if from_pool.returncode != 0:
            _run_tool([*download, "--dest", pool], f"downloading the wheels {what} needs for {platform.describe()}",
                      cwd=cwd)
            _run_tool([*download, "--no-index", "--dest", dest], f"{what}: copying wheels", cwd=cwd)


def _uv() -> str:
    """The uv executable: the ``uv`` distribution's (a dependency of rh-byo-ssh), else one on the PATH."""
    try:
        from uv import find_uv_bin

        return find_uv_bin()
    except (ImportError, FileNotFoundError):
        pass
    found = shutil.which("uv")
    if found is None:
        raise WheelhouseError("resolving wheels for a cluster's platform needs uv: `pip install uv`")
    return found


def resolve_wheelhouse(distribution_names: Sequence[str], platform: Platform, cache: str) -> Wheelhouse:
    """Our distributions and all their dependencies as wheels for ``platform``, pip's own included.
    Cached per build and platform; dependency wheels are kept across builds in a pool per platform."""
    own = build_own_wheels(distribution_names, cache)
    path = os.path.join(cache, own.build_id, platform.tag)
    with _exclusive(path):
        if not os.path.exists(os.path.join(path, ".complete")):
            _resolve(own, platform, path, os.path.join(cache, "pool", platform.tag))
    return Wheelhouse(path=path, requirements=own.requirements, build_id=own.build_id,
                      pip_wheel=_pip_wheel_in(path), platform=platform)


def _resolve(own: OwnWheels, platform: Platform, path: str, pool: str) -> None:
    """Fill ``path`` with our wheels, pip's, and every dependency's for ``platform``, by way of ``pool``."""
    targets = [os.path.join(own.path, name) for name in own.files]
    targets.append(f"pip=={importlib.metadata.version('pip')}")
    staging = tempfile.mkdtemp(dir=os.path.dirname(path), prefix=".staging-")
    try:
        resolve_for_platform(targets, platform, staging, pool, constraints=client_pins(ALWAYS_PINNED),
                             what=f"resolving the wheels of {', '.join(own.requirements)}")
        for name in own.files:  # copies of our wheels in the pool would shadow a later build's
            with contextlib.suppress(FileNotFoundError):
                os.unlink(os.path.join(pool, name))
        open(os.path.join(staging, ".complete"), "w").close()
        shutil.rmtree(path, ignore_errors=True)
        os.replace(staging, path)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


# -------------------------------------------------------------------------------------------------
# uv for the cluster machine


@attrs.frozen(kw_only=True)
class UvWheel:
    """uv's wheel for a cluster machine: the bootstrap takes the ``uv`` executable out of it there
    and installs with it, a Rust program that unpacks ~25 wheels in a fraction of pip's CPU time."""

    path: str  # a folder holding this wheel only, kept apart from the wheelhouses (see wheelhouse_with_uv)
    file: str  # the wheel's file name in ``path``
    version: str  # the client's uv version, the one our install commands are written against

    @property
    def member(self) -> str:
        """The executable's name inside the wheel."""
        return f"uv-{self.version}.data/scripts/uv"


#: Why no uv wheel could be had, per (version, machine): asked once per process, not per bring-up.
_NO_UV_WHEEL: dict[tuple[str, str], str] = {}


def uv_version() -> str:
    """The version of the uv that resolves wheels here (:func:`_uv`): the cluster gets the same one."""
    with contextlib.suppress(importlib.metadata.PackageNotFoundError):
        return importlib.metadata.version("uv")
    said = subprocess.run([_uv(), "--version"], check=False, capture_output=True, text=True).stdout.split()
    return said[1] if len(said) > 1 else ""


def fetch_uv_wheel(platform: Platform, cache: str) -> UvWheel:
    """The wheel of this client's uv for ``platform``'s machine, downloaded with pip (its index
    settings and cache) once per uv version and machine kind and kept under ``cache/uv``.

    :raises WheelhouseError: when there is none (no wheel for that architecture or C library, a uv
        version that is not on the index, no index reachable); the bootstrap installs with pip then.
    """
    version = uv_version()
    libc = f"{platform.libc}{platform.libc_version}" if platform.libc else platform.system.lower()
    key = (version, f"{libc}-{platform.machine}")
    if not version:
        raise WheelhouseError("the uv used here reports no version, so no wheel of it can be fetched")
    if key in _NO_UV_WHEEL:
        raise WheelhouseError(_NO_UV_WHEEL[key])
    path = os.path.join(cache, "uv", version, key[1])  # uv's wheels are py3-none: no Python in the key
    with _exclusive(path):
        if not os.path.exists(os.path.join(path, ".complete")):
            shutil.rmtree(path, ignore_errors=True)
            os.makedirs(path)
            download = [sys.executable, "-m", "pip", "download", "--quiet", "--disable-pip-version-check", "--no-deps",
                        *platform.pip_arguments(), "--dest", path, f"uv=={version}"]
            done = subprocess.run(download, check=False, capture_output=True, text=True)
            if done.returncode != 0:
                said = [line for line in done.stderr.splitlines() if line.strip() and not line.startswith("WARNING:")]
                _NO_UV_WHEEL[key] = f"pip download uv=={version} for {platform.describe()}: {' '.join(said)[-500:]}"
                raise WheelhouseError(_NO_UV_WHEEL[key])
            open(os.path.join(path, ".complete"), "w").close()
    (file,) = [name for name in os.listdir(path) if name.endswith(".whl")]
    return UvWheel(path=path, file=file, version=version)


def wheelhouse_with_uv(wheelhouse: Wheelhouse, uv: UvWheel) -> str:
    """A folder of hard links to the wheelhouse's wheels and uv's, for a machine that has no uv of
    this version yet: one sync carries both (a second one costs another SSH connection, ~0.2 s)."""
    path = f"{wheelhouse.path}+uv-{uv.version}"
    with _exclusive(path):
        if not os.path.exists(os.path.join(path, ".complete")):
            staging = tempfile.mkdtemp(dir=os.path.dirname(path), prefix=".staging-")
            try:
                sources = [os.path.join(wheelhouse.path, name) for name in os.listdir(wheelhouse.path)
                           if name.endswith(".whl")]
                for source in [*sources, os.path.join(uv.path, uv.file)]:
                    _link_or_copy(source, os.path.join(staging, os.path.basename(source)))
                open(os.path.join(staging, ".complete"), "w").close()
                shutil.rmtree(path, ignore_errors=True)
                os.replace(staging, path)
            finally:
                shutil.rmtree(staging, ignore_errors=True)
    return path


def _link_or_copy(source: str, destination: str) -> None:
    try:
        os.link(source, destination)
    except OSError:  # a file system without hard links
        shutil.copy2(source, destination)


def cache_root() -> str:
    """Where wheels resolved for clusters are kept: ``$RH_HOME/wheels``."""
    from rh_core.support.paths import rh_home

    return os.path.join(rh_home(), "wheels")


def resolve_requirements(lines: Sequence[str], platform: Platform, *, digest: str = "", cwd: str | None = None) -> str:
    """A folder holding wheels for ``platform`` of requirement ``lines`` (as in a requirements file,
    ``-r FILE`` included) and all their dependencies, for a cluster that reaches no index: it installs
    them with ``pip install --no-index --find-links``. Cached by the lines, ``digest`` (of the files
    they name) and the platform."""
    key = hashlib.sha256("\0".join([platform.tag, digest, *lines]).encode()).hexdigest()[:16]
    path = os.path.join(cache_root(), "reqs", key)
    with _exclusive(path):
        if not os.path.exists(os.path.join(path, ".complete")):
            os.makedirs(os.path.dirname(path), exist_ok=True)
            staging = tempfile.mkdtemp(dir=os.path.dirname(path), prefix=".staging-")
            try:
                resolve_for_platform(lines, platform, staging, os.path.join(cache_root(), "pool", platform.tag),
                                     constraints=client_pins(ALWAYS_PINNED), cwd=cwd,
                                     what=f"resolving {' '.join(lines)}")
                open(os.path.join(staging, ".complete"), "w").close()
                os.replace(staging, path)
            finally:
                shutil.rmtree(staging, ignore_errors=True)
    return path


def _run_tool(command: list[str], what: str, cwd: str | None = None) -> None:
    done = subprocess.run(command, capture_output=True, text=True, cwd=cwd)
    if done.returncode != 0:
        # pip's warnings (an unreachable extra index, say) are noise next to the error that matters.
        said = "\n".join(line for line in done.stderr.splitlines() if line.strip() and not line.startswith("WARNING:"))
        said = said[-3000:]
        tool = "uv" if command[0] != sys.executable else "pip"
        raise WheelhouseError(f"{what} failed; {tool} said:\n{said}")


def _pip_wheel_in(path: str) -> str:
    (name,) = [name for name in os.listdir(path) if name.startswith("pip-") and name.endswith(".whl")]
    return name
