"""The ``pyfile`` installer: copies one Python file into an environment's site-packages."""

from __future__ import annotations

import hashlib
import os
from typing import Any

from rh_core.errors import InstallError
from rh_core.plugin.interfaces import Environment, InstallerClaim, InstallStep

#: Run by the environment's own Python: compile the file (a syntax error fails the install before
#: anything is written), then write it where that interpreter imports modules from.
_INSTALL = """
import sys, sysconfig
name, source = sys.argv[1], open(sys.argv[2]).read()
compile(source, name, "exec")
target = sysconfig.get_paths()["purelib"] + "/" + name
with open(target, "w") as f:
    f.write(source)
print(target)
"""


class PyFileInstaller:
    """``pyfile:PATH``: the file's text travels in the step (fine for small helper modules)."""

    def prepare(self, cluster: Any, claim: InstallerClaim) -> InstallStep:
        path = os.path.abspath(os.path.expanduser(claim.spec))
        if not path.endswith(".py"):
            raise InstallError(f"pyfile:{claim.spec}: a pyfile requirement names a .py file, e.g. 'pyfile:./helpers.py'")
        try:
            with open(path) as file:
                source = file.read()
        except OSError as exc:
            raise InstallError(f"pyfile:{claim.spec}: cannot read {path} ({exc.strerror})") from exc
        return InstallStep(method="pyfile", spec=os.path.basename(path), requirement=f"pyfile:{claim.spec}",
                           options={"source": source})

    def resolve(self, step: InstallStep, env: Environment) -> str:
        digest = hashlib.sha256(step.options["source"].encode()).hexdigest()[:16]
        return f"{step.spec}@{digest}"

    def install(self, step: InstallStep, env: Environment) -> None:
        os.makedirs(env.root, exist_ok=True)
        source_file = os.path.join(env.root, f"pyfile-{step.spec}")
        with open(source_file, "w") as file:
            file.write(step.options["source"])
        try:
            env.run([env.python, "-c", _INSTALL, step.spec, source_file], step=step)
        finally:
            os.unlink(source_file)

    def slot(self, step: InstallStep) -> str:
        return f"pyfile:{step.spec}"  # a new version of the file replaces the old one
