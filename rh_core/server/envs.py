"""Environments on the cluster, and the install procedure the server runs in them.

The default environment is the server's own interpreter. A named environment is a venv of its own
under ``<state dir>/envs/<name>``, created on first use from the server's interpreter without pip
(pip installs into it with ``--python``). Its site-packages come first on its ``sys.path``; the
server's site-packages follow, through a ``.pth`` file, so workers there still import rh_core and
its dependencies while the environment's own packages win over the server's.

Every environment keeps a record of what was installed (``installed.json``: identity → what the
user asked for) and serialises installs with a lock file, so a repeated request does no work and two
clients installing at once take turns. Beside the record it keeps the list of distributions the
environment held after its last install (``packages.json``): when one of them has gone since (a
``pip uninstall`` outside rh_core), the record no longer tells the truth and is dropped, so the
next request installs its steps again instead of skipping them.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import subprocess
import sys
import sysconfig
import time
from collections.abc import Callable, Iterator
from typing import Any

import attrs

from rh_core.errors import InstallError
from rh_core.support.files import write_atomically
from rh_core.plugin.interfaces import InstallStep, ReplacesSlots, capability

ENV_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
OUTPUT_TAIL_LINES = 25
PIP_ONLY_ENV = "RH_ENV_WITHOUT_SERVER_SITE"  # set while pip runs in a named environment


def check_name(name: str) -> str:
    if not isinstance(name, str) or not ENV_NAME.match(name) or name in ("default",):
        raise ValueError(
            f"invalid environment name {name!r}: use letters, digits, '.', '_' or '-' (at most 64, "
            "not starting with punctuation, and not 'default', which is the cluster's own environment)"
        )
    return name


@attrs.define(eq=False)
class ClusterEnvironment:
    """An environment on this machine; see the module docstring. Implements
    :class:`rh_core.plugin.interfaces.Environment`."""

    name: str | None
    root: str

    @classmethod
    def open(cls, state_dir: str, name: str | None) -> ClusterEnvironment:
        """The environment ``name`` (``None``: the default one), created if it does not exist yet."""
        root = os.path.join(state_dir, "envs", check_name(name) if name else "default")
        os.makedirs(root, mode=0o700, exist_ok=True)
        env = cls(name=name, root=root)
        if name is not None:
            env._create_venv()
        return env

    # --- what it is ----------------------------------------------------------------------------

    @property
    def venv(self) -> str | None:
        return os.path.join(self.root, "venv") if self.name else None

    @property
    def python(self) -> str:
        return os.path.join(self.venv, "bin", "python") if self.venv else sys.executable

    @property
    def conda_prefix(self) -> str:
        return os.path.join(self.root, "conda")

    @property
    def variables(self) -> dict[str, str]:
        bins = [os.path.join(self.venv, "bin")] if self.venv else [os.path.dirname(sys.executable)]
        variables: dict[str, str] = {}
        if os.path.isdir(os.path.join(self.conda_prefix, "conda-meta")):
            bins.append(os.path.join(self.conda_prefix, "bin"))
            variables["CONDA_PREFIX"] = self.conda_prefix
        if self.venv:
            variables["VIRTUAL_ENV"] = self.venv
        variables["PATH"] = os.pathsep.join([*bins, os.environ.get("PATH", "/usr/bin:/bin")])
        return variables

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "python": self.python, "installed": self.installed()}

    # --- running tools -------------------------------------------------------------------------

    def run(self, argv: list[str], *, step: InstallStep, cwd: str | None = None,
            extra_env: dict[str, str] | None = None, redact: tuple[str, ...] = ()) -> str:
        environment = {**os.environ, **self.variables, **(extra_env or {})}
        done = subprocess.run(argv, cwd=cwd, env=environment, stdin=subprocess.DEVNULL,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, errors="replace")
        output = done.stdout
        for secret in redact:
            if secret:
                output = output.replace(secret, "***")
        if done.returncode != 0:
            tail = "\n".join(output.rstrip().splitlines()[-OUTPUT_TAIL_LINES:])
            tool = os.path.basename(argv[0])
            raise InstallError(
                f"installing {step.requirement!r} into {self.label} failed: {tool} exited with code "
                f"{done.returncode}. Its output ends with:\n{tail}"
            )
        return output

    @property
    def label(self) -> str:
        return f"environment {self.name!r}" if self.name else "the cluster's default environment"

    def pip(self, args: list[str], *, step: InstallStep, cwd: str | None = None) -> str:
        """Run pip (the server's own) against this environment's interpreter."""
        return self.run([sys.executable, "-m", "pip", "--python", self.python, "--disable-pip-version-check",
                         "--no-input", *args], step=step, cwd=cwd, extra_env={PIP_ONLY_ENV: "1"})

    def _create_venv(self) -> None:
        if os.path.exists(os.path.join(self.venv, ".rh-ready")):
            return
        with self.lock():
            if os.path.exists(os.path.join(self.venv, ".rh-ready")):
                return
            subprocess.run([sys.executable, "-m", "venv", "--without-pip", "--clear", self.venv], check=True,
                           stdin=subprocess.DEVNULL, capture_output=True)
            purelib = subprocess.run(
                [self.python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                check=True, capture_output=True, text=True,
            ).stdout.strip()
            server_sites = {sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]}
            with open(os.path.join(purelib, "_rh_core_server_site.pth"), "w") as f:
                # addsitedir appends, after this venv's own site-packages, and reads the .pth files
                # there too (editable installs of rh_core work). pip runs without it (see pip()),
                # so it installs every dependency into the venv instead of counting the server's.
                f.write(f"import os, site; os.environ.get({PIP_ONLY_ENV!r}) or ["
                        + ", ".join(f"site.addsitedir({p!r})" for p in sorted(server_sites)) + "]\n")
            open(os.path.join(self.venv, ".rh-ready"), "w").close()

    # --- the install record --------------------------------------------------------------------

    @property
    def record_path(self) -> str:
        return install_record_path(self.root)

    def installed(self) -> dict[str, dict[str, Any]]:
        try:
            with open(self.record_path) as f:
                return json.load(f)
        except FileNotFoundError:
            return {}

    @property
    def listing_path(self) -> str:
        return os.path.join(self.root, "packages.json")

    def packages(self) -> set[str]:
        """The distributions (and ``.pth`` files) in this environment's site directories, and its
        conda packages, as the file system shows them now: one ``listdir`` per directory."""
        if self.venv:
            paths = sysconfig.get_paths(vars={"base": self.venv, "platbase": self.venv})
        else:
            paths = sysconfig.get_paths()
        directories = {paths["purelib"], paths["platlib"], os.path.join(self.conda_prefix, "conda-meta")}
        found: set[str] = set()
        for directory in directories:
            try:
                entries = os.listdir(directory)
            except OSError:
                continue
            found.update(os.path.join(directory, entry) for entry in entries
                         if entry.endswith((".dist-info", ".egg-info", ".egg-link", ".pth", ".json")))
        return found

    def keep_listing(self) -> None:
        """Remember what the environment holds now, after an install."""
        _write_json(self.listing_path, sorted(self.packages()))

    def forget_record_if_packages_went(self) -> None:
        """Drop the install record when a distribution listed after the last install is gone:
        something outside rh_core removed it, and skipping steps by the record would be wrong."""
        try:
            with open(self.listing_path) as f:
                listed = set(json.load(f))
        except (OSError, ValueError):
            return
        if listed - self.packages():
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.record_path)
            os.unlink(self.listing_path)

    def _record(self, identity: str, step: InstallStep, slot: str | None) -> None:
        """Record an install; an earlier install in the same ``slot`` (another version of the same
        package) is no longer what the environment holds, so its record goes."""
        record = self.installed()
        if slot is not None:
            record = {key: entry for key, entry in record.items() if entry.get("slot") != slot}
        options = {k: v for k, v in step.options.items() if k not in step.secret_options}
        record[identity] = {"method": step.method, "requirement": step.requirement, "options": options,
                            "slot": slot, "installed_at": time.time()}
        _write_json(self.record_path, record)

    @contextlib.contextmanager
    def lock(self) -> Iterator[None]:
        """Held while installing: other threads and processes installing here wait their turn."""
        with open(os.path.join(self.root, ".lock"), "w") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)


def install(env: ClusterEnvironment, steps: list[InstallStep],
            installer_for: Callable[[str], Any]) -> dict[str, list[str]]:
    """Install ``steps`` into ``env`` in order, skipping what its record already holds.

    Every step is resolved (checked) before any is installed, so a bad requirement stops the whole
    request before anything changes. One installer instance serves both calls for its steps (an
    installer may keep what ``resolve`` found for ``install``). Returns the requirements
    ``installed`` and ``skipped``.
    """
    installers = {step.method: installer_for(step.method)() for step in steps}
    done: dict[str, list[str]] = {"installed": [], "skipped": []}
    with env.lock():
        env.forget_record_if_packages_went()
        identities = [installers[step.method].resolve(step, env) for step in steps]
        for step, identity in zip(steps, identities):
            if identity in env.installed():
                done["skipped"].append(step.requirement)
                continue
            installer = installers[step.method]
            installer.install(step, env)
            replaces = capability(installer, ReplacesSlots)
            env._record(identity, step, replaces.slot(step) if replaces is not None else None)
            done["installed"].append(step.requirement)
        if done["installed"] or not os.path.exists(env.listing_path):
            env.keep_listing()
    return done


def install_record_path(root: str) -> str:
    """The install record of the environment whose :attr:`~rh_core.plugin.interfaces.Environment.root`
    is ``root``. Every install that installs something rewrites it (with a new timestamp), so an
    executor that copies environments to other machines can tell a changed one by its hash; it may
    read the file, never write it."""
    return os.path.join(root, "installed.json")


def _write_json(path: str, value: Any) -> None:
    write_atomically(path, json.dumps(value, indent=1, sort_keys=True), 0o600)
