"""The cluster's side of secrets: kept owner-only in the server's state directory, their files
written where the provider's tools look, their variables handed to the calls that ask for them.

``<state dir>/secrets/<name>.json`` (0600, in a 0700 directory) holds a secret's values and the
files it wrote, so ``delete`` removes exactly those. Nothing here logs or reports a value: errors
and descriptions name secrets, variables and paths only.
"""

from __future__ import annotations

import contextlib
import json
import os
from typing import Any

from rh_core.errors import SecretError
from rh_core.wire.messages import check_secret_contents as check_contents
from rh_core.wire.messages import check_secret_name as check_name


class SecretStore:
    def __init__(self, state_dir: str):
        self.directory = os.path.join(state_dir, "secrets")
        self._variables: dict[str, dict[str, str]] = {}  # name -> values, read once
        self._load()

    def _path(self, name: str) -> str:
        return os.path.join(self.directory, f"{check_name(name)}.json")

    def _load(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            for entry in os.scandir(self.directory):
                if entry.name.endswith(".json"):
                    with contextlib.suppress(OSError, ValueError, KeyError):
                        with open(entry.path) as f:
                            self._variables[entry.name[:-5]] = dict(json.load(f)["values"])

    def put(self, secrets: list[dict[str, Any]]) -> list[str]:
        """Store each secret (replacing one of the same name, and the files it wrote) and write its files."""
        for item in secrets:
            if not isinstance(item, dict):
                raise SecretError("malformed secrets request: each secret is an object")
            name = check_name(item.get("name"))
            values, files = item.get("values", {}), item.get("files", {})
            check_contents(name, values, files)
        os.makedirs(self.directory, mode=0o700, exist_ok=True)
        os.chmod(self.directory, 0o700)
        for item in secrets:
            name = item["name"]
            for path, text in item.get("files", {}).items():
                self._write_file(path, text)
            for stale in set(self._files_of(name)) - set(item.get("files", {})):
                self._remove_file(stale)
            record = {"name": name, "provider": item.get("provider"), "values": item.get("values", {}),
                      "files": sorted(item.get("files", {}))}
            _write_private(self._path(name), json.dumps(record))
            self._variables[name] = dict(record["values"])
        return [item["name"] for item in secrets]

    def delete(self, names: list[str]) -> list[str]:
        """Remove secrets and the files they wrote; the names that were there."""
        removed = []
        for name in names:
            path = self._path(name)
            if not os.path.exists(path):
                continue
            for file in self._files_of(name):
                self._remove_file(file)
            os.unlink(path)
            self._variables.pop(name, None)
            removed.append(name)
        return removed

    def variables(self, names: list[str]) -> dict[str, str]:
        """The environment variables of secrets ``names``, later ones winning."""
        merged: dict[str, str] = {}
        for name in names:
            values = self._variables.get(name)
            if values is None:
                raise SecretError(
                    f"secret {name!r} is not on this cluster (deleted, or never sent): send it again with "
                    f"cluster.sync_secrets([...]) or .to(cluster, secrets=[...])")
            merged.update(values)
        return merged

    def describe(self) -> list[dict[str, Any]]:
        """Each secret's name, provider, variable names and files: never a value."""
        described = []
        for name in sorted(self._variables):
            with contextlib.suppress(OSError, ValueError):
                with open(self._path(name)) as f:
                    record = json.load(f)
                described.append({"name": name, "provider": record.get("provider"),
                                  "variables": sorted(record.get("values", {})), "files": record.get("files", [])})
        return described

    def _files_of(self, name: str) -> list[str]:
        try:
            with open(self._path(name)) as f:
                return list(json.load(f).get("files", []))
        except (OSError, ValueError):
            return []

    @staticmethod
    def _write_file(path: str, text: str) -> None:
        """Write ``~/...`` owner-only; directories made for it are owner-only too."""
        target = os.path.expanduser(path)
        os.makedirs(os.path.dirname(target), mode=0o700, exist_ok=True)
        _write_private(target, text)

    @staticmethod
    def _remove_file(path: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(os.path.expanduser(path))


def _write_private(path: str, text: str) -> None:
    """Replace ``path`` with ``text``, readable by the owner only from the first byte on."""
    temporary = f"{path}.{os.getpid()}.tmp"
    with contextlib.suppress(FileNotFoundError):
        os.unlink(temporary)
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.replace(temporary, path)
