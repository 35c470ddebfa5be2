"""Runs tasks inside a worker: loads the function, unpickles arguments, calls, pickles the outcome.

Every executor's workers use this: the process executor's worker processes and Ray tasks alike.
The function's stdout and stderr (and so ``logging`` to them) are sent live to the server's log
endpoint as ``[key, stream, text]``; after a task that printed anything an end-of-logs marker
``[key, b"eof", b""]`` follows, so the server can deliver every line before the result.

A function may fork. A child that returns from the function (or raises, ``sys.exit`` included) into
the runner exits there, before it can touch the worker's link or log socket: only the worker
answers for its task. Output of such children goes to the worker's own stdout and stderr (the
server log), never through the parent's ZeroMQ socket.
"""

from __future__ import annotations

import contextlib
import io
import os
import pickle
import sys
import threading
import traceback
from collections.abc import Callable, Sequence
from typing import Any

import attrs
import zmq

from rh_core import serialize, shm
from rh_core.errors import RemoteError, RemoteExitError, StaleCodeError
from rh_core.plugin_types import Outcome, Task


class LogSender:
    """A PUSH socket to the server's log endpoint, shared by the worker's threads."""

    def __init__(self, endpoint: str | None):
        self._lock = threading.Lock()
        self._socket = None
        if endpoint:
            self._socket = zmq.Context.instance().socket(zmq.PUSH)
            self._socket.setsockopt(zmq.LINGER, 2000)
            self._socket.connect(endpoint)
        self.key: str | None = None
        self.sent = False
        os.register_at_fork(after_in_child=self._forget_in_child)

    def _forget_in_child(self) -> None:
        # A ZeroMQ socket must not be used across fork; the child's lines go to its fallback stream.
        # The socket object is kept (never closed here): closing it would touch the parent's context.
        self.key, self._lock = None, threading.Lock()

    def send(self, stream: str, text: str) -> bool:
        key = self.key
        if key is None or self._socket is None:
            return False
        with self._lock:
            self._socket.send_multipart([key.encode(), stream.encode(), text.encode("utf-8", "replace")])
            self.sent = True
        return True

    def end(self) -> None:
        if self.sent and self._socket is not None and self.key is not None:
            with self._lock:
                self._socket.send_multipart([self.key.encode(), b"eof", b""])
        self.key, self.sent = None, False


class CallOutput(io.TextIOBase):
    """Replaces ``sys.stdout``/``sys.stderr`` in a worker: lines go to the caller while a call runs."""

    def __init__(self, name: str, sender: LogSender, fallback: Any):
        self.name, self._sender, self._fallback = name, sender, fallback
        self._pending = ""

    def writable(self) -> bool:
        return True

    def write(self, text: str) -> int:
        if self._sender.key is None:
            return self._fallback.write(text)
        self._pending += text
        if "\n" in self._pending:
            head, _, self._pending = self._pending.rpartition("\n")
            self._sender.send(self.name, head + "\n")
        return len(text)

    def flush(self) -> None:
        if self._pending:
            pending, self._pending = self._pending, ""
            if not self._sender.send(self.name, pending):
                self._fallback.write(pending)
        self._fallback.flush()

    def fileno(self) -> int:
        return self._fallback.fileno()

    def isatty(self) -> bool:
        return False


class Runner:
    """Holds a worker's function cache and output redirection; ``run`` executes one task."""

    def __init__(self, log_endpoint: str | None):
        self.logs = LogSender(log_endpoint)
        self._pid = os.getpid()
        self._functions: dict[str, Callable] = {}
        self._code_versions: dict[str, str] = {}  # the caller's code directory -> version imported from it
        self._verified: dict[str, str] = {}  # module -> the source digest it was imported with
        self._cwd: str | None = None
        if not isinstance(sys.stdout, CallOutput):
            sys.stdout = CallOutput("stdout", self.logs, sys.stdout)
            sys.stderr = CallOutput("stderr", self.logs, sys.stderr)

    def function(self, header: dict[str, Any], function_frame: Any) -> Callable:
        code = header.get("code")
        if code is not None:
            self._use_code(code)
        fn_id = header["fn_id"]
        fn = self._functions.get(fn_id)
        if fn is None:
            ref = header.get("function_ref")
            if ref is not None:
                fn = self._import(serialize.FunctionRef.from_json(ref), code)
            else:
                fn = serialize.loads_function(function_frame)
            self._functions[fn_id] = fn
        return fn

    def _use_code(self, code: dict[str, Any]) -> None:
        """Make the caller's code importable as it sent it (see :class:`serialize.CodeOnCluster`):
        modules imported from its directory at another version are forgotten first."""
        root, version = code["root"], code["version"]
        if self._code_versions.get(root) != version:
            if not os.path.isdir(root):  # a machine the caller's code has not reached (yet)
                raise StaleCodeError(
                    f"the caller's working directory {root} is not on this machine: the code did not reach it. "
                    "The call was refused, not run"
                )
            if root in self._code_versions:
                _forget_modules_under(root)
                self._functions.clear()
                self._verified.clear()
            self._code_versions[root] = version
        for path in reversed(code["paths"]):
            if path not in sys.path:
                sys.path.insert(0, path)
        if code["cwd"] != self._cwd:
            try:
                os.chdir(code["cwd"])  # relative paths mean what they mean where the caller runs
            except FileNotFoundError:  # a folder that did not travel (ignored by git or .rhignore)
                os.chdir(root)
            self._cwd = code["cwd"]

    def _import(self, ref: serialize.FunctionRef, code: dict[str, Any] | None) -> Callable:
        """Import a function by reference, refusing it when its module's source here is not the
        source the caller sent (``code["digest"]``)."""
        digest = code.get("digest") if code is not None else None
        if digest is None:
            return serialize.load_function(ref)
        if self._verified.get(ref.module) == digest:
            return serialize.load_function(ref)
        sys.modules.pop(ref.module, None)  # imported before, but not checked against this digest
        fn = serialize.load_function(ref)
        file = getattr(sys.modules.get(ref.module), "__file__", None) or ""
        if _digest_or_none(file) != digest:
            # A bytecode cache can outlive an edit that kept the size within the same second;
            # drop it, and the module, and read the source once more.
            import importlib.util

            with contextlib.suppress(OSError, ValueError, NotImplementedError):
                os.unlink(importlib.util.cache_from_source(file))
            sys.modules.pop(ref.module, None)
            fn = serialize.load_function(ref)
        if _digest_or_none(file) != digest:
            sys.modules.pop(ref.module, None)  # never reused: what it holds is not the caller's code
            raise StaleCodeError(
                f"the cluster's copy of module {ref.module} ({file}) is not the source {ref.qualname} was sent "
                "with: it changed after .to(), or this machine holds an older copy. The call was refused, "
                "not run; send the function again with .to(cluster)"
            )
        self._verified[ref.module] = digest
        return fn

    def run(self, task: Task) -> Outcome:
        """Run one task and pickle what came of it; never raises.

        A task's ``variables`` (its secrets) are set in this process's environment before it runs:
        the executor gives such tasks workers that run only tasks with the same variable names, so
        each one replaces the last one's values and no other function sees them."""
        self.logs.key = task.key
        if task.variables:
            os.environ.update(task.variables)
        try:
            outcome = self._run(task)
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            logged = self.logs.sent
            self.logs.end()
        return attrs.evolve(outcome, logged=logged)

    def _run(self, task: Task) -> Outcome:
        http = task.header.get("http")  # a call through an HTTP endpoint (see rh_core.http_calls)
        try:
            fn = self.function(task.header, task.function)
            if http is not None:
                from rh_core import http_calls

                return http_calls.respond(fn, http, task.arguments, self._call)
            resolved: dict[str, Any] = {}

            def resolve_ref(key: str) -> Any:
                if key not in resolved:
                    outcome = task.refs[key]
                    if outcome.status != "ok":
                        raise serialize.loads_exception(outcome.frames)
                    resolved[key] = serialize.loads(outcome.frames)
                return resolved[key]

            received: list[str] = []  # segments of large arguments: what the result does not reuse goes back
            arguments = serialize.loads(task.arguments, resolve_ref, received)
        except StaleCodeError as exc:
            return Outcome(status="stale", frames=serialize.dumps_exception(exc))
        except BaseException as exc:
            if http is not None:  # the function could not be loaded: an HTTP caller reads a 500
                from rh_core import http_calls

                return http_calls.error_response(exc)
            return Outcome(status="err", frames=serialize.dumps_exception(exc))
        if task.header.get("mode") == "map":
            return self._run_map(fn, arguments, task.header.get("shm_prefix"), received)
        try:
            args, kwargs = arguments
            result = self._call(fn, args, kwargs)
        except BaseException as exc:
            return Outcome(status="err", frames=serialize.dumps_exception(exc))
        return _pack_result(result, task.header.get("shm_prefix"), received)

    def _run_map(self, fn: Callable, items: Sequence[tuple[tuple, dict]], shm_prefix: str | None,
                 received: list[str]) -> Outcome:
        results: list[tuple[str, Any]] = []
        for args, kwargs in items:
            try:
                results.append(("ok", self._call(fn, args, kwargs)))
            except BaseException as exc:
                results.append(("err", _picklable_error(exc)))
        return _pack_result(results, shm_prefix, received)

    def _call(self, fn: Callable, args: tuple, kwargs: dict) -> Any:
        """Call the user's function. ``sys.exit`` (or another exit) inside it becomes an error for
        the caller, never an exit of the worker or of the caller's process; a process the function
        forked that comes back here ends at once."""
        try:
            return fn(*args, **kwargs)
        except (SystemExit, KeyboardInterrupt) as exc:
            if os.getpid() == self._pid:
                raise RemoteExitError.of(exc) from None
            raise
        finally:
            if os.getpid() != self._pid:
                _end_forked_child()


def _forget_modules_under(directory: str) -> None:
    """Forget every imported module whose file lies in ``directory``, so the next import reads it again."""
    import importlib

    prefix = os.path.join(directory, "")
    for name, module in list(sys.modules.items()):
        file = getattr(module, "__file__", None)
        if file and file.startswith(prefix):
            del sys.modules[name]
    importlib.invalidate_caches()


def _digest_or_none(path: str) -> str | None:
    try:
        return serialize.source_digest(path)
    except OSError:
        return None


def _end_forked_child() -> None:
    """End a process the user's function forked that returned (or raised) into the runner, with
    the exit code it asked for, before anything of the worker's runs in it."""
    exc = sys.exc_info()[1]
    if exc is None:
        code = 0
    elif isinstance(exc, SystemExit):
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    else:
        code = 1
    with contextlib.suppress(Exception):
        sys.stdout.flush()
        sys.stderr.flush()
    os._exit(code)


def _picklable_error(exc: BaseException) -> tuple[BaseException, str]:
    tb = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    try:
        pickle.dumps(exc)
    except Exception:
        exc = RemoteError(type(exc).__qualname__, str(exc))
    return exc, tb


def _pack_result(result: Any, shm_prefix: str | None = None, received: Sequence[str] = ()) -> Outcome:
    """The ``ok`` outcome of ``result``. With ``shm_prefix`` (the caller alone reads this reply, on
    this machine) large buffers go through shared memory. The segments of ``received`` that the
    result did not reuse go back to whoever reads the result first, on this machine (elsewhere the
    frame names a file that is not there, and is ignored)."""
    try:
        frames = shm.share(serialize.dumps(result, container_depth=3), shm_prefix)
        return Outcome(status="ok", frames=frames + shm.returning(received))
    except Exception as exc:
        error = serialize.SerializationError(
            f"the function returned a {type(result).__name__} that cannot be sent back: {exc}. "
            "Return something picklable, or keep it on the cluster with .remote()."
        )
        return Outcome(status="err", frames=serialize.dumps_exception(error))
