"""Tiny Python distributions for installer tests, built without any build backend or index."""

from __future__ import annotations

import base64
import hashlib
import os
import zipfile


def build_wheel(directory: str, name: str, version: str, source: str | None = None,
                requires: tuple[str, ...] = ()) -> str:
    """Write ``<name>-<version>-py3-none-any.whl`` into ``directory``: one module named like the
    distribution (``-`` → ``_``) holding ``source`` (default: ``VERSION = "<version>"``). Returns its path."""
    module = name.replace("-", "_")
    dist_info = f"{module}-{version}.dist-info"
    metadata = f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n" + "".join(
        f"Requires-Dist: {requirement}\n" for requirement in requires)
    files = {
        f"{module}.py": source if source is not None else f'VERSION = "{version}"\n',
        f"{dist_info}/METADATA": metadata,
        f"{dist_info}/WHEEL": "Wheel-Version: 1.0\nGenerator: rh_core.testing\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
    }
    os.makedirs(directory, exist_ok=True)
    path = os.path.join(directory, f"{module}-{version}-py3-none-any.whl")
    record = []
    with zipfile.ZipFile(path, "w") as wheel:
        for arcname, text in files.items():
            data = text.encode()
            wheel.writestr(arcname, data)
            digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
            record.append(f"{arcname},sha256={digest},{len(data)}")
        record.append(f"{dist_info}/RECORD,,")
        wheel.writestr(f"{dist_info}/RECORD", "\n".join(record) + "\n")
    return path


def write_project(directory: str, name: str, version: str, source: str | None = None) -> str:
    """A minimal setuptools project (``pyproject.toml`` + one module) in ``directory``."""
    module = name.replace("-", "_")
    os.makedirs(directory, exist_ok=True)
    with open(os.path.join(directory, "pyproject.toml"), "w") as f:
        f.write(f'[build-system]\nrequires = ["setuptools>=61"]\nbuild-backend = "setuptools.build_meta"\n\n'
                f'[project]\nname = "{name}"\nversion = "{version}"\n\n'
                f'[tool.setuptools]\npy-modules = ["{module}"]\n')
    with open(os.path.join(directory, f"{module}.py"), "w") as f:
        f.write(source if source is not None else f'VERSION = "{version}"\n')
    return directory
