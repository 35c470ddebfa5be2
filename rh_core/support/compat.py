"""What Python 3.11 added that rh_core uses, for the 3.10 that clusters may run (Ubuntu 22.04).
Delete each piece, and use the standard one, once the floor is 3.11."""

from __future__ import annotations

import hashlib
from typing import IO


def add_note(exc: BaseException, note: str) -> None:
    """``exc.add_note(note)``; on 3.10 the note is kept in ``__notes__`` as 3.11 does (tracebacks
    printed by 3.10 do not show it)."""
    if hasattr(exc, "add_note"):
        exc.add_note(note)
    else:
        exc.__notes__ = [*getattr(exc, "__notes__", ()), note]  # type: ignore[attr-defined]


def file_digest(file: IO[bytes], name: str) -> hashlib._Hash:
    """``hashlib.file_digest(file, name)``."""
    if hasattr(hashlib, "file_digest"):
        return hashlib.file_digest(file, name)
    digest = hashlib.new(name)
    for chunk in iter(lambda: file.read(1 << 20), b""):
        digest.update(chunk)
    return digest
