"""The plugin's hooks: register the ``pyfile`` installer.

No ``rh_claim_requirement`` hook is needed: rh_core itself routes a requirement written
``METHOD:SPEC`` to the installer registered as METHOD, so ``"pyfile:./helpers.py"`` comes here.
"""

from __future__ import annotations

from collections.abc import Callable

from rh_core import hookimpl


@hookimpl
def rh_register_installers(register: Callable[..., None]) -> None:
    # A "module:attribute" string: the installer module is imported only when first used.
    register("pyfile", "rh_example_pyfile.installer:PyFileInstaller")
