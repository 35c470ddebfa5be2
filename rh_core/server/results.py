"""Results of ``.remote()`` calls kept on the cluster's disk, so they outlive a server restart.

Each finished result is written to ``<state dir>/results/<key>.out`` (owner-only): one JSON line
(status, frame sizes, when it finished) and then its frames, exactly the bytes the server would send.
The folder has a size limit (a result that would pass it stays in memory only, and the server log
says so) and an expiry: results older than it are deleted, from disk and memory, when the server
starts and every hour.
"""

from __future__ import annotations

import json
import os
import time
from typing import Any

from rh_core.support.files import write_atomically
from rh_core.plugin.interfaces import Outcome

DEFAULT_MAX_MB = 2048
DEFAULT_DAYS = 7.0
DEFAULT_MEMORY_MB = 256  # kept results that are on disk too stay in memory within this much


class SpilledResults:
    def __init__(self, directory: str, max_bytes: int, max_age_seconds: float):
        self.directory = directory
        self.max_bytes = max_bytes
        self.max_age_seconds = max_age_seconds
        self._used: int | None = None  # bytes in the folder, counted once and then kept up to date

    def _path(self, key: str) -> str:
        return os.path.join(self.directory, key.replace("/", "_") + ".out")

    def used_bytes(self) -> int:
        if self._used is None:
            try:
                self._used = sum(entry.stat().st_size for entry in os.scandir(self.directory)
                                 if entry.name.endswith(".out"))
            except FileNotFoundError:
                self._used = 0
        return self._used

    def save(self, key: str, outcome: Outcome) -> str | None:
        """Write a finished outcome; returns why it was not kept on disk, or None when it was."""
        buffers = [memoryview(getattr(frame, "buffer", frame)).cast("B") for frame in outcome.frames]
        header = json.dumps({"status": outcome.status, "sizes": [len(b) for b in buffers],
                             "finished_at": time.time()}).encode() + b"\n"
        size = len(header) + sum(len(b) for b in buffers)
        if self.used_bytes() + size > self.max_bytes:
            return (f"result {key} ({size} bytes) is not kept on disk: that would pass the results limit of "
                    f"{self.max_bytes // 2**20} MiB; it is held in memory until released")
        os.makedirs(self.directory, mode=0o700, exist_ok=True)
        path = self._path(key)
        write_atomically(path, [header, *buffers], 0o600)
        self._used = self.used_bytes() + size
        return None

    def load(self, key: str) -> Outcome | None:
        try:
            with open(self._path(key), "rb") as f:
                header = json.loads(f.readline())
                frames = [f.read(size) for size in header["sizes"]]
        except FileNotFoundError:
            return None
        return Outcome(status=header["status"], frames=frames)

    def has(self, key: str) -> bool:
        return os.path.exists(self._path(key))

    def delete(self, key: str) -> None:
        path = self._path(key)
        try:
            size = os.path.getsize(path)
            os.unlink(path)
        except FileNotFoundError:
            return
        if self._used is not None:
            self._used -= size

    def keys(self) -> list[str]:
        try:
            return sorted(entry.name[: -len(".out")] for entry in os.scandir(self.directory)
                          if entry.name.endswith(".out"))
        except FileNotFoundError:
            return []

    def expire(self, now: float | None = None) -> list[str]:
        """Delete results older than the expiry; returns their keys."""
        cutoff = (now or time.time()) - self.max_age_seconds
        expired = []
        for key in self.keys():
            try:
                if os.stat(self._path(key)).st_mtime < cutoff:
                    self.delete(key)
                    expired.append(key)
            except FileNotFoundError:
                pass
        return expired

    def describe(self) -> dict[str, Any]:
        return {"results_dir": self.directory, "results_max_mb": self.max_bytes // 2**20,
                "results_days": self.max_age_seconds / 86400}
