"""The built-in ``dir`` store: saved resources as files in a directory (the local ``~/`` store, or a
shared filesystem for ``@/``)."""

from __future__ import annotations

import errno
import os

from rh_core import hookimpl
from rh_core.support.files import write_atomically
from rh_core.errors import StoreError


@hookimpl
def rh_register_stores(register):
    register("dir", DirectoryStore)


class DirectoryStore:
    """Keys are relative paths under ``path``; writes are atomic (a temporary file with an
    unpredictable name renamed over), and no link inside ``path`` is followed.

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

    def _parts(self, key: str) -> list[str]:
        parts = key.split("/")
        if any(part in ("", ".", "..") for part in parts):
            raise StoreError(f"{key!r} is not a key of {self.describe()}: keys are relative paths without '.' or '..'")
        return parts

    def _open_folder(self, parts: list[str], *, create: bool) -> int:
        """A descriptor of the folder ``parts`` below the root, walked one part at a time without
        following links: in a shared folder anyone with write access could plant a link to a folder
        of yours, and a write or delete would then land there."""
        folder = os.open(self._root(), os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            for part in parts:
                made = False
                if create:
                    try:
                        os.mkdir(part, self._folder_mode, dir_fd=folder)
                        made = True
                    except FileExistsError:
                        pass
                try:
                    child = os.open(part, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=folder)
                except OSError as exc:
                    if exc.errno in (errno.ELOOP, errno.ENOTDIR):
                        raise self._planted(part) from None
                    raise
                if made:
                    os.fchmod(child, self._folder_mode)  # mkdir's mode is filtered by the umask
                os.close(folder)
                folder = child
        except BaseException:
            os.close(folder)
            raise
        return folder

    def _planted(self, part: str) -> StoreError:
        return StoreError(f"{part!r} in {self.path} is a symbolic link or not a folder: rh does not follow links in a "
                          f"store (whoever planted it could redirect your writes); remove it, or ask who made it")

    def read(self, key: str) -> bytes | None:
        *folders, name = self._parts(key)
        try:
            folder = self._open_folder(folders, create=False)
            try:
                fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=folder)
            finally:
                os.close(folder)
        except (FileNotFoundError, NotADirectoryError):
            return None
        except PermissionError as exc:
            raise StoreError(f"access to {self.location(key)} was denied ({exc.strerror}); "
                             f"ask the directory's owner for read access") from exc
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                raise self._planted(key) from None
            raise StoreError(f"could not read {self.location(key)}: {exc.strerror}") from exc
        with os.fdopen(fd, "rb") as file:
            return file.read()

    def write(self, key: str, data: bytes) -> None:
        *folders, name = self._parts(key)
        target = self.location(key)
        try:
            folder = self._open_folder(folders, create=True)
            try:
                write_atomically(name, data, self._file_mode, dir_fd=folder)
            finally:
                os.close(folder)
        except PermissionError as exc:
            raise StoreError(f"writing {target} was denied ({exc.strerror}); ask the directory's owner for write access") from exc
        except OSError as exc:
            raise StoreError(f"could not write {target}: {exc.strerror}") from exc

    def delete(self, key: str) -> bool:
        *folders, name = self._parts(key)
        try:
            folder = self._open_folder(folders, create=False)
            try:
                os.unlink(name, dir_fd=folder)  # a link is removed, never followed
            finally:
                os.close(folder)
        except (FileNotFoundError, NotADirectoryError):
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
                if name.endswith(".tmp"):  # being written, or left by a crash
                    continue
                key = os.path.relpath(os.path.join(top, name), root).replace(os.sep, "/")
                if key.startswith(prefix):
                    found.append(key)
        return sorted(found)

    def _walk_error(self, error: OSError) -> None:
        if isinstance(error, PermissionError):
            raise StoreError(f"listing {error.filename} was denied ({error.strerror})") from error
