"""The built-in ``dir`` store: saved resources as files in a directory (the local ``~/`` store, or a
shared filesystem for ``@/``)."""

from __future__ import annotations

import os

from rh_core import hookimpl
from rh_core.names import StoreError


@hookimpl
def rh_register_stores(register):
    register("dir", DirectoryStore)


class DirectoryStore:
    """Keys are relative paths under ``path``; writes are atomic (a temporary file renamed over).

    ``private=True`` (the local store) keeps everything owner-only (files 0600, folders 0700) and
    creates ``path`` when missing. A shared store is readable by the directory's group (files
    0640, folders 0750) and must already exist: a missing directory usually means the shared
    filesystem is not mounted, which is reported rather than papered over.
    """

    def __init__(self, *, path: str, private: bool = False):
        self.path = os.path.abspath(os.path.expanduser(path))
        self.private = private
        self._file_mode = 0o600 if private else 0o640
        self._folder_mode = 0o700 if private else 0o750

    def describe(self) -> str:
        return f"directory {self.path}"

    def location(self, key: str) -> str:
        return os.path.join(self.path, key)

    def _root(self) -> str:
        if not os.path.isdir(self.path):
            if not self.private:
                raise StoreError(
                    f"the store directory {self.path} does not exist (is the shared filesystem mounted?); "
                    f"create it, or point store.path at the right directory (`rh config set store.path DIR`)"
                )
            os.makedirs(self.path, mode=self._folder_mode, exist_ok=True)
        return self.path

    def read(self, key: str) -> bytes | None:
        try:
            with open(os.path.join(self._root(), key), "rb") as file:
                return file.read()
        except (FileNotFoundError, NotADirectoryError):
            return None
        except PermissionError as exc:
            raise StoreError(f"access to {self.location(key)} was denied ({exc.strerror}); "
                             f"ask the directory's owner for read access") from exc

    def write(self, key: str, data: bytes) -> None:
        target = os.path.join(self._root(), key)
        try:
            self._make_folders(os.path.dirname(target))
            temporary = f"{target}.{os.getpid()}.tmp"
            descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, self._file_mode)
            with os.fdopen(descriptor, "wb") as file:
                file.write(data)
            os.replace(temporary, target)
        except PermissionError as exc:
            raise StoreError(f"writing {target} was denied ({exc.strerror}); ask the directory's owner for write access") from exc
        except OSError as exc:
            raise StoreError(f"could not write {target}: {exc.strerror}") from exc

    def _make_folders(self, folder: str) -> None:
        missing = []
        while not os.path.isdir(folder):
            missing.append(folder)
            folder = os.path.dirname(folder)
        for path in reversed(missing):
            os.mkdir(path, self._folder_mode)
            os.chmod(path, self._folder_mode)  # mkdir's mode is filtered by the umask

    def delete(self, key: str) -> bool:
        try:
            os.unlink(os.path.join(self._root(), key))
        except FileNotFoundError:
            return False
        except PermissionError as exc:
            raise StoreError(f"deleting {self.location(key)} was denied ({exc.strerror})") from exc
        return True

    def keys(self, prefix: str = "") -> list[str]:
        root = self._root()
        start = os.path.join(root, os.path.dirname(prefix))
        found = []
        for top, folders, files in os.walk(start, onerror=self._walk_error):
            folders.sort()
            for name in files:
                if name.endswith(".tmp"):
                    continue
                key = os.path.relpath(os.path.join(top, name), root).replace(os.sep, "/")
                if key.startswith(prefix):
                    found.append(key)
        return sorted(found)

    def _walk_error(self, error: OSError) -> None:
        if isinstance(error, PermissionError):
            raise StoreError(f"listing {error.filename} was denied ({error.strerror})") from error
