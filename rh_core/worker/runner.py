"""Runs tasks inside a worker: loads the function, unpickles arguments, calls, pickles the outcome.

Every executor's workers use this: the process executor's worker processes and Ray tasks alike.
The function's stdout and stderr (and so ``logging`` to them) travel with its result, or live
when the call runs on (see :mod:`rh_core.worker.output`); so do the items of a generator whose
caller streams them. ``async def`` functions are awaited on an event loop the runner keeps.

A function may fork. A child that returns from the function (or raises, ``sys.exit`` included) into
the runner exits there, before it can touch the worker's link or log socket: only the worker
answers for its task.
"""

from __future__ import annotations

import contextlib
import os
import pickle
import sys
import threading
import traceback
import types
from collections.abc import Awaitable, Callable, Iterator, Sequence
from typing import Any

import attrs

from rh_core.errors import (
    InstanceNotFoundError,
    RemoteError,
    RemoteExitError,
    RunCancelledError,
    StaleCodeError,
)
from rh_core.plugin.interfaces import Outcome, Task
from rh_core.wire import serialize, shm
from rh_core.wire.messages import CallHeader, CodeOnCluster, FunctionRef, InstanceTarget
from rh_core.worker.output import CallOutput, CallOutputs, call_key


def current_call_key() -> str | None:
    """The run key of the call this thread or task runs on a worker (None elsewhere): a call it
    makes to its own cluster names it, so the executor can lend the cluster another worker."""
    return call_key.get()


class Runner:
    """Holds a worker's function cache and output redirection; ``run`` executes one task."""

    def __init__(self, log_endpoint: str | None):
        self.output = CallOutputs(log_endpoint)
        self._pid = os.getpid()
        self._functions: dict[str, Callable] = {}
        self._code_versions: dict[str, str] = {}  # the caller's code directory -> version imported from it
        self._verified: dict[str, str] = {}  # module -> the source digest it was imported with
        self._cwd: str | None = None
        self._loop: Any = None  # an asyncio loop, made when a coroutine first needs one
        # A runner of a remote instance (a worker of its own) holds it, and runs its coroutines on
        # a loop of its own in a thread of its own, so that calls running at once share it.
        self.instance: Any = None
        self._instance_name = ""
        self._instance_digest: str | None = None  # the source digest of the class's module at creation
        self._instance_loop: Any = None
        self._awaiting: dict[str, Any] = {}  # call key -> its coroutine on that loop
        self._streaming: set[str] = set()  # calls sending a generator's items now
        self._stopping: set[str] = set()  # ... of which these stop before the next item
        if not isinstance(sys.stdout, CallOutput):
            sys.stdout = CallOutput("stdout", self.output, sys.stdout)
            sys.stderr = CallOutput("stderr", self.output, sys.stderr)

    def function(self, header: CallHeader, function_frame: Any) -> Callable:
        instance = header.instance
        if instance is not None and header.mode != "create":
            return self._method(instance, header.code)
        code = header.code
        if code is not None:
            self._use_code(code)
        fn_id = header.fn_id
        fn = self._functions.get(fn_id)
        if fn is None:
            ref = header.function_ref
            if ref is not None:
                fn = self._import(ref, code)
            else:
                fn = serialize.loads_function(function_frame)
            self._functions[fn_id] = fn
        return fn

    def _use_code(self, code: CodeOnCluster) -> None:
        """Make the caller's code importable as it sent it (see :class:`~rh_core.wire.messages.CodeOnCluster`):
        modules imported from its directory at another version are forgotten first."""
        root, version = code.root, code.version
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
        for path in reversed(code.paths):
            if path not in sys.path:
                sys.path.insert(0, path)
        if code.cwd != self._cwd:
            try:
                os.chdir(code.cwd)  # relative paths mean what they mean where the caller runs
            except FileNotFoundError:  # a folder that did not travel (ignored by git or .rhignore)
                os.chdir(root)
            self._cwd = code.cwd

    def _import(self, ref: FunctionRef, code: CodeOnCluster | None) -> Callable:
        """Import a function by reference, refusing it when its module's source here is not the
        source the caller sent (``code.digest``)."""
        digest = code.digest if code is not None else None
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
        token = self.output.begin(task.key)
        if task.variables:
            os.environ.update(task.variables)
        try:
            outcome = self._run(task)
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            logged, output = self.output.end(task.key, token)
        return attrs.evolve(outcome, logged=logged, output=output) if logged or output else outcome

    def _run(self, task: Task) -> Outcome:
        http = task.header.http  # a call through an HTTP endpoint (see rh_core.worker.http_calls)
        try:
            fn = self.function(task.header, task.function)
            if http is not None:
                from rh_core.worker import http_calls

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
            # "stale": the code may be copied there again and the call retried; not so an instance's.
            stale = "err" if task.header.instance is not None else "stale"
            return Outcome(status=stale, frames=serialize.dumps_exception(exc))
        except BaseException as exc:
            if http is not None:  # the function could not be loaded: an HTTP caller reads a 500
                from rh_core.worker import http_calls

                return http_calls.error_response(exc)
            return Outcome(status="err", frames=serialize.dumps_exception(exc))
        mode = task.header.mode
        if mode == "map":
            return self._run_map(fn, arguments, task.header.shm_prefix, received)
        if mode == "create":
            return self._create(fn, arguments, task.header)
        try:
            args, kwargs = arguments
            result = self._call(fn, args, kwargs)
            if isinstance(result, _GENERATORS):
                if task.header.stream:
                    result = self._stream(result)
                else:  # nobody reads items one by one (.remote(), enqueue): they come back as a list
                    result = self._drain(result)
        except BaseException as exc:
            return Outcome(status="err", frames=serialize.dumps_exception(exc))
        return _pack_result(result, task.header.shm_prefix, received)

    def _run_map(self, fn: Callable, items: Sequence[tuple[tuple, dict]], shm_prefix: str | None,
                 received: list[str]) -> Outcome:
        results: list[tuple[str, Any]] = []
        for index, (args, kwargs) in enumerate(items):
            self.output.at_item(index)
            try:
                result = self._call(fn, args, kwargs)
                results.append(("ok", self._drain(result) if isinstance(result, _GENERATORS) else result))
            except BaseException as exc:
                results.append(("err", _picklable_error(exc)))
        return _pack_result(results, shm_prefix, received)

    def _call(self, fn: Callable, args: tuple, kwargs: dict) -> Any:
        """Call the user's function; a coroutine it returns (``async def``) is awaited here.
        ``sys.exit`` (or another exit) inside it becomes an error for the caller, never an exit of
        the worker or of the caller's process; a process the function forked that comes back here
        ends at once. (The hot path: the same rule as :meth:`_user_code`, written out.)"""
        try:
            result = fn(*args, **kwargs)
            if type(result) is types.CoroutineType:
                result = self._await(result)
            return result
        except (SystemExit, KeyboardInterrupt) as exc:
            self._raise_exit_of(exc)
            raise
        finally:
            self._end_if_forked()

    def _end_if_forked(self) -> None:
        """The user's code returned or raised in a child it forked (a library's fork without exec):
        that child ends here, rather than go on as a second worker."""
        if os.getpid() != self._pid:
            _end_forked_child()

    def _raise_exit_of(self, exc: BaseException) -> None:
        """``sys.exit()`` or Ctrl-C in the user's code, in the worker itself: a RemoteExitError for
        the caller. In a child the code forked, the exception goes on and ends that child."""
        if os.getpid() == self._pid:
            raise RemoteExitError.of(exc) from None

    @contextlib.contextmanager
    def _user_code(self) -> Iterator[None]:
        """Around the user's code that runs outside :meth:`_call` (a generator's body): the same rule."""
        try:
            yield
        except (SystemExit, KeyboardInterrupt) as exc:
            self._raise_exit_of(exc)
            raise
        finally:
            self._end_if_forked()

    def _await(self, awaitable: Awaitable[Any]) -> Any:
        """Run an awaitable of the user's to its end on this runner's event loop (one per runner,
        kept between calls, so what a call leaves on it, a client session say, serves the next).
        An instance's runs on the instance's loop, where :meth:`cancel` can stop it."""
        if self.instance is not None:
            return self._await_on_instance_loop(awaitable)
        if self._loop is None:
            import asyncio  # here: a worker that never meets a coroutine starts without it

            self._loop = asyncio.new_event_loop()
        return self._loop.run_until_complete(awaitable)

    def _stream(self, generator: Any) -> Any:
        """Send each item a generator yields to the caller as it comes (see :meth:`CallOutputs.send_item`);
        return what a plain generator returns at its end."""
        key = self.output.current() or ""
        self._streaming.add(key)
        try:
            return self._send_items(key, generator)
        finally:
            self._streaming.discard(key)
            self._stopping.discard(key)

    def _send_items(self, key: str, generator: Any) -> Any:
        index = 0
        while True:
            if key in self._stopping:
                _close(generator, self._await)
                raise RunCancelledError(f"run {key} was cancelled after {index} items")
            with self._user_code():
                try:
                    if isinstance(generator, types.AsyncGeneratorType):
                        item = self._await(generator.__anext__())
                    else:
                        item = next(generator)
                except (StopIteration, StopAsyncIteration) as end:
                    return getattr(end, "value", None)
            try:
                frames = serialize.dumps(item, container_depth=3)
            except Exception as exc:
                _close(generator, self._await)
                raise serialize.SerializationError(
                    f"item {index} the generator yielded, a {type(item).__name__}, cannot be sent back: {exc}. "
                    "Yield something picklable."
                ) from exc
            self.output.send_item(frames)
            index += 1

    def _drain(self, generator: Any) -> list[Any]:
        """Every item of a generator, as a list."""
        with self._user_code():
            if isinstance(generator, types.AsyncGeneratorType):
                return self._await(_collect(generator))
            return list(generator)


    # --- remote instances ----------------------------------------------------------------------

    def _create(self, cls: Callable, arguments: Any, header: CallHeader) -> Outcome:
        """Run the constructor of a remote instance; this runner holds the instance from then on."""
        try:
            args, kwargs = arguments
            instance = self._call(cls, args, kwargs)
        except BaseException as exc:
            return Outcome(status="err", frames=serialize.dumps_exception(exc))
        self.instance, self._instance_name = instance, header.instance.name
        self._instance_digest = header.code.digest if header.code is not None else None
        return _pack_result(None)

    def _method(self, instance: InstanceTarget, code: CodeOnCluster | None) -> Callable:
        """The bound method a call on the instance names. The instance keeps running its class as it
        was when it was made: a caller that sent other source for the class's module is refused."""
        if self.instance is None:
            raise InstanceNotFoundError(f"this worker holds no instance {instance.name!r}")
        digest = code.digest if code is not None else None
        if digest is not None and self._instance_digest is not None and digest != self._instance_digest:
            raise StaleCodeError(
                f"instance {self._instance_name!r} runs {type(self.instance).__qualname__} as module "
                f"{code.module if code else '?'} was when it was created, and the caller's copy of that "
                "module has changed since. The call was refused, not run; release the instance (m.release()) "
                "and create it anew to run the new code"
            )
        return getattr(self.instance, instance.method)

    def _await_on_instance_loop(self, awaitable: Awaitable[Any]) -> Any:
        import asyncio
        import concurrent.futures

        if self._instance_loop is None:
            loop = asyncio.new_event_loop()
            threading.Thread(target=loop.run_forever, name="rh-instance-loop", daemon=True).start()
            self._instance_loop = loop
        key = self.output.current()
        future = asyncio.run_coroutine_threadsafe(_as_call(key, awaitable), self._instance_loop)
        if key is not None:
            self._awaiting[key] = future
        try:
            return future.result()
        except concurrent.futures.CancelledError:
            raise RunCancelledError(f"run {key} was cancelled") from None
        finally:
            if key is not None:
                self._awaiting.pop(key, None)

    def cancel(self, key: str) -> bool:
        """Stop call ``key`` of an instance where that leaves the instance as it is: a coroutine is
        cancelled on the instance's loop, a generator stops before its next item. False when the
        call runs the user's code in a plain method, which only ending the process stops (or when
        it is not running here)."""
        stoppable = False
        if key in self._streaming:
            self._stopping.add(key)
            stoppable = True
        future = self._awaiting.get(key)
        if future is not None:
            future.cancel()
            stoppable = True
        return stoppable


async def _as_call(key: str | None, awaitable: Awaitable[Any]) -> Any:
    """Await a call's coroutine on an instance's loop: its output is the call's (the task it runs in
    has a context of its own), and an exit inside it is the caller's error, as in :meth:`Runner._call`."""
    call_key.set(key)
    try:
        return await awaitable
    except (SystemExit, KeyboardInterrupt) as exc:
        raise RemoteExitError.of(exc) from None


_GENERATORS = (types.GeneratorType, types.AsyncGeneratorType)


async def _collect(generator: Any) -> list[Any]:
    return [item async for item in generator]


def _close(generator: Any, run: Callable[[Awaitable[Any]], Any]) -> None:
    """Close a generator the caller will not read on (its ``finally`` blocks run)."""
    with contextlib.suppress(Exception):
        if isinstance(generator, types.AsyncGeneratorType):
            run(generator.aclose())
        else:
            generator.close()


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
