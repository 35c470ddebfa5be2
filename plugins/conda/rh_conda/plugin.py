"""Hook implementations of rh-conda: the ``conda`` installer (``conda:numpy``,
``conda:conda-forge::numpy>=2``, ``rh.package(name=..., install_method='conda', channels=[...])``)."""

from __future__ import annotations

from rh_core import hookimpl


@hookimpl
def rh_register_installers(register):
    register("conda", "rh_conda.installer:CondaInstaller")
