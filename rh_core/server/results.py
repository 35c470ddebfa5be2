"""Results the cluster server keeps by key, in memory (:class:`KeptResults`) and on its disk
(:class:`SpilledResults`), so they outlive their caller and a server restart.

Each finished result is written to ``<state dir>/results/<key>.out`` (owner-only): one JSON line
(status, frame sizes, when it finished) and then its frames, exactly the bytes the server would send.
The folder has a size limit (a result that would pass it stays in memory only, and the server log
says so) and an expiry: results older than it are deleted, from disk and memory, when the server
starts and every hour.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import json
import os
import sys
import time
from collections.abc import Callable
from typing import Any

from rh_core.errors import ProtocolError
from rh_core.plugin.interfaces import Outcome
from rh_core.support.files import write_atomically

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


class KeptResults:
    """The results the server keeps by key until they are released or expire: those of
    ``.remote()`` calls (kept from the start, so a ``get`` waits for them), of calls whose caller
    left, and objects sent with ``cluster.put``.

    It owns the futures of those results in memory, their copies on disk (``spilled``), the one
    thread that writes, reads and deletes those copies (in order: a 100 MiB result must not stall
    the event loop, and a release queued after a save deletes what it wrote), the memory budget
    beyond which results that are on disk leave memory (oldest first: unfetched results must not
    grow the server without bound), and the hourly expiry.

    The server hands it its event loop and ``running_call(key)``: the future of the call with that
    key while it runs or waits, None otherwise, so that asking for a result waits for its call.
    """

    def __init__(self, spilled: SpilledResults, memory_budget: int, loop: asyncio.AbstractEventLoop,
                 running_call: Callable[[str], asyncio.Future[Outcome] | None]):
        self._spilled = spilled
        self._memory_budget = memory_budget
        self._loop = loop
        self._running_call = running_call
        self._disk = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="rh-results")
        self._results: dict[str, asyncio.Future[Outcome]] = {}
        self._saved_in_memory: collections.OrderedDict[str, int] = collections.OrderedDict()  # key -> bytes

    def hold(self, key: str, result: asyncio.Future[Outcome]) -> None:
        """Keep the outcome ``result`` will have under ``key``, on disk too once it is done."""
        self._replace(key, result)
        result.add_done_callback(lambda done: self._spill(key, done))

    def keep(self, key: str, outcome: Outcome) -> None:
        """Keep a finished outcome under ``key``."""
        kept = self._loop.create_future()
        kept.set_result(outcome)
        self._replace(key, kept)
        self._spill(key, kept)  # now, not a loop step later: its writing is queued before any reply

    def _replace(self, key: str, result: asyncio.Future[Outcome]) -> None:
        # What was kept under this key before leaves the memory budget's books with it, lest the
        # budget evict the new result for the old one's size.
        self._saved_in_memory.pop(key, None)
        self._results[key] = result

    async def outcome(self, key: str) -> Outcome:
        """The outcome kept under ``key``, once its call has finished; raises :class:`ProtocolError`
        when there is none."""
        future = self._results.get(key)
        if future is None:  # a call still running: wait for it
            future = self._running_call(key)
        if future is None:
            spilled = await self._loop.run_in_executor(self._disk, self._spilled.load, key)
            if spilled is not None:
                return spilled
            raise ProtocolError(
                f"no result with key {key!r} on this cluster: it was released, or the server restarted "
                "since the call was made. Call the function again."
            )
        return await asyncio.shield(future)

    def has(self, key: str) -> bool:
        """Whether a result is kept under ``key`` (in memory, finished or not, or on disk)."""
        return key in self._results or self._spilled.has(key)

    def state(self, key: str) -> str:
        """``done``, ``running`` (kept from its start and not finished) or ``unknown``."""
        future = self._results.get(key)
        if future is None:
            return "done" if self._spilled.has(key) else "unknown"
        return "done" if future.done() else "running"

    def finished_keys(self) -> list[str]:
        return sorted({key for key, future in self._results.items() if future.done()} | set(self._spilled.keys()))

    async def release(self, key: str) -> None:
        """Forget the result under ``key``, in memory and on disk."""
        self._results.pop(key, None)
        self._saved_in_memory.pop(key, None)
        await self._loop.run_in_executor(self._disk, self._spilled.delete, key)

    def expire(self) -> None:
        """Delete the results older than the expiry, now and every hour after."""
        def expired(done: concurrent.futures.Future) -> None:
            for key in done.result():
                self._results.pop(key, None)

        self._disk.submit(self._spilled.expire).add_done_callback(
            lambda done: self._loop.call_soon_threadsafe(expired, done))
        self._loop.call_later(3600, self.expire)

    def describe(self) -> dict[str, Any]:
        bytes_in_memory = sum(_outcome_bytes(future.result()) for future in self._results.values() if future.done())
        return {**self._spilled.describe(), "results_in_memory_bytes": bytes_in_memory}

    async def close(self) -> None:
        """Wait until the results being written have reached the disk."""
        await asyncio.to_thread(self._disk.shutdown)

    def _spill(self, key: str, final: asyncio.Future[Outcome]) -> None:
        """Keep a finished result on disk too (in the results thread), so it outlives a restart;
        once there, memory holds it only within the memory budget."""
        if self._results.get(key) is not final:  # released meanwhile
            return
        saving = self._loop.run_in_executor(self._disk, self._save, key, final.result())
        saving.add_done_callback(lambda saved: saved.result() and self._saved(key, final))

    def _save(self, key: str, outcome: Outcome) -> bool:
        try:
            why_not = self._spilled.save(key, outcome)
        except OSError as exc:  # a full disk must not cost the result: it stays in memory
            why_not = f"result {key} is not kept on disk: {exc}"
        if why_not:
            sys.stderr.write(f"rh server: {why_not}\n")
        return why_not is None

    def _saved(self, key: str, final: asyncio.Future[Outcome]) -> None:
        """``key`` is on disk: beyond the memory budget, the oldest results on disk leave memory
        (:meth:`outcome` reads them from disk when asked)."""
        if self._results.get(key) is not final:
            return
        self._saved_in_memory[key] = _outcome_bytes(final.result())
        total = sum(self._saved_in_memory.values())
        while total > self._memory_budget and self._saved_in_memory:
            oldest, size = self._saved_in_memory.popitem(last=False)
            self._results.pop(oldest, None)
            total -= size


def _outcome_bytes(outcome: Outcome) -> int:
    return sum(memoryview(getattr(frame, "buffer", frame)).nbytes for frame in outcome.frames)
