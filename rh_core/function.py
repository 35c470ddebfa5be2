"""Functions: ordinary Python functions sent to a cluster and called as if they were local."""

from __future__ import annotations

import contextlib
import inspect
import os
import sys
from collections.abc import (
    AsyncIterator,
    Callable,
    Generator,
    Iterable,
    Iterator,
    Sequence,
)
from typing import TYPE_CHECKING, Any, Generic, ParamSpec, TypeVar

import attrs

from rh_core.client import progress
from rh_core.client.connection import Reply
from rh_core.client.output import CallOutputShown
from rh_core.clusters.base import Cluster, decode_outcome, split_parts
from rh_core.clusters.ref import Ref, new_run_key
from rh_core.errors import RhError
from rh_core.support.compat import add_note
from rh_core.support.workdir import working_directory
from rh_core.wire import serialize, shm
from rh_core.wire.messages import (
    CALL_OPTIONS,
    CallRequest,
    CodeOnCluster,
    FunctionRef,
    InstanceTarget,
    ServeRequest,
)

if TYPE_CHECKING:
    from rh_core.secrets import Secret

P = ParamSpec("P")
R = TypeVar("R")

CHUNKS_PER_WORKER = 4


class broadcast:
    """Wrap a ``map`` keyword value so it is passed whole to every item, even a list of the map's length."""

    __slots__ = ("value",)

    def __init__(self, value: Any):
        self.value = value


@attrs.frozen
class _Shipped:
    """How the function travels: by reference (``function_ref``) or by value (``pickled``), and
    where the code it imports lives on the cluster (``code``; None when the cluster takes no files,
    or the function comes from an installed package)."""

    fn_id: str
    function_ref: FunctionRef | None
    pickled: bytes | None
    code: CodeOnCluster | None = None


@attrs.frozen(kw_only=True)
class Function(Generic[P, R]):
    """A function bound (or not yet) to a cluster. Create with :func:`function`, place with ``.to()``."""

    fn: Callable[P, R]
    name: str
    system: Cluster | None = None
    env: str | None = None  # the named environment on the cluster it runs in
    secrets: tuple[str, ...] = ()  # names of the cluster's secrets whose variables its calls get
    call_options: dict[str, Any] = attrs.field(factory=dict)
    _shipped: _Shipped | None = attrs.field(default=None, alias="shipped", repr=False)
    # A method of a remote instance (rh_core.modules), or the instance to create; its calls go there.
    _instance: InstanceTarget | None = attrs.field(default=None, alias="instance", repr=False)
    # Read from fn's signature; given when fn is a stand-in (a handle to a function sent elsewhere).
    _takes_stream_logs: bool = attrs.field(
        default=attrs.Factory(lambda self: _has_parameter(self.fn, "stream_logs"), takes_self=True),
        alias="takes_stream_logs", repr=False,
    )
    # A generator function (plain or async): calls stream its items back as they are produced.
    _streams: bool = attrs.field(
        default=attrs.Factory(lambda self: _is_generator_function(self.fn), takes_self=True),
        alias="streams", repr=False,
    )

    # --- placing -------------------------------------------------------------------------------

    def to(self, system: Cluster, *, reqs: list[Any] | None = None, env: Any = None,
           secrets: Sequence[Secret | str] = ()) -> Function[P, R]:
        """Send the function to ``system``: its server comes up if needed, ``reqs`` are installed
        (into ``env``, a named environment of its own, when given) and the code is shipped.

        ``secrets`` (``rh.secret(...)`` objects, provider names such as ``"aws"``, or names of
        secrets already on the cluster) are sent as :meth:`Cluster.sync_secrets` does, and the
        function's calls run with their values as environment variables; calls of other functions
        never see them.

        Importable functions go by reference, with the working directory (git root) synced to the
        cluster; functions from ``__main__``, notebooks, lambdas and closures go by value. Without
        ``reqs``, the working directory's ``requirements.txt`` is installed when it has one.
        Installing is skipped for what the environment already holds.
        """
        from rh_core.packages import env_name, install_packages
        from rh_core.secrets import send_secrets

        system.connection()
        if reqs is None:
            default = os.path.join(working_directory(), "requirements.txt")
            reqs = [f"reqs:{default}"] if os.path.isfile(default) else []
        if reqs or env is not None:
            install_packages(system, reqs, env)
        names = send_secrets(system, secrets) if secrets else ()
        return attrs.evolve(self, system=system, env=env_name(env), secrets=names, shipped=_ship(self.fn, system))

    def options(self, **options: Any) -> Function[P, R]:
        """A copy whose calls use these options: ``timeout`` (s), ``stream_logs``, ``num_cpus``,
        ``num_gpus``, ``resources``, ``memory`` (these four reach executors that schedule, like Ray),
        ``cancel_on_interrupt`` (default True: Ctrl-C on a waiting call cancels its run on the
        cluster; False keeps it running, and says how to fetch or cancel it), and ``progress``
        (``map``/``starmap``: a progress bar on stderr, advanced as chunks of items finish)."""
        unknown = sorted(set(options) - set(CALL_OPTIONS))
        if unknown:
            raise TypeError(f"unknown call option(s) {', '.join(unknown)}; valid options: {', '.join(CALL_OPTIONS)}")
        return attrs.evolve(self, call_options={**self.call_options, **options})

    # --- calling -------------------------------------------------------------------------------

    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> R:
        """Run on the cluster and return the result (locally when not sent anywhere).

        An ``async def`` function is awaited on the cluster. A generator function (plain or async)
        returns an iterator whose items come from the cluster as the generator yields them there;
        leaving the loop early cancels the run (``cancel_on_interrupt=False``: it runs on)."""
        options = self._take_call_options(kwargs)
        if self.system is None:
            return self.fn(*args, **kwargs)
        if self._streams:
            return self._stream(args, kwargs, options)  # type: ignore[return-value]
        return self._call("call", args, kwargs, options)

    def remote(self, *args: P.args, **kwargs: P.kwargs) -> Ref[R]:
        """Start the call and return a :class:`Ref` at once; the result stays on the cluster."""
        options = self._take_call_options(kwargs)
        return self._call("remote", args, kwargs, options)

    def enqueue(self, *args: P.args, **kwargs: P.kwargs) -> R:
        """Like calling, but calls of this function run one at a time, in arrival order."""
        options = self._take_call_options(kwargs)
        return self._call("enqueue", args, kwargs, options)

    def acall(self, *args: P.args, **kwargs: P.kwargs) -> Any:
        """Call from asyncio: ``await f.acall(x)`` runs on the caller's event loop, without a thread
        (many calls at once share one connection); cancelling the awaiting task cancels the run on
        the cluster, unless ``cancel_on_interrupt=False``. For a generator function (plain or
        async), ``async for item in f.acall(x)``."""
        if self.system is None and (inspect.iscoroutinefunction(self.fn) or inspect.isasyncgenfunction(self.fn)):
            return self.fn(*args, **kwargs)  # not sent anywhere: the function's own coroutine or generator
        options = self._take_call_options(kwargs)
        if self.system is None:
            return _value_now(self.fn, args, kwargs)
        if self._streams:
            return self._astream(args, kwargs, options)
        return self._acall(args, kwargs, options)

    async def _astream(self, args: tuple, kwargs: dict, options: dict[str, Any]) -> AsyncIterator[Any]:
        """A generator's items as the cluster yields them, read on the caller's event loop; leaving
        the loop early (or cancelling the task) cancels the run, as for a plain loop."""
        system, _ = self._placed()
        request, frames = self._sendable("call", args, kwargs, options, stream=True)
        connection = await system.async_connection()
        replies = connection.stream(request.OP, request.to_wire(), frames, on_log=self._output_shown(system, request.key))
        try:
            async for reply in replies:
                if reply.kind != "item":
                    ((status, result_frames),) = split_parts(reply)
                    decode_outcome(status, result_frames)  # raises the generator's error, if it failed
                    return
                yield serialize.loads(reply.frames)
        except BaseException as stop:
            if isinstance(stop, GeneratorExit) and options.get("cancel_on_interrupt", True):
                system.cancel_soon(request.key)
            _cancel_if_cancelled(stop, system, request.key, options)
            raise
        finally:
            await replies.aclose()

    async def amap(self, *iterables: Iterable[Any], return_exceptions: bool = False, **kwargs: Any) -> list[R]:
        """:meth:`map` from asyncio, on the caller's event loop (cancelling cancels the whole map)."""
        options = self._take_call_options(kwargs)
        return await self._amap(_map_items(iterables, kwargs), return_exceptions, options)

    async def astarmap(self, arg_tuples: Iterable[Iterable[Any]], return_exceptions: bool = False,
                       **kwargs: Any) -> list[R]:
        """:meth:`starmap` from asyncio."""
        options = self._take_call_options(kwargs)
        return await self._amap(_starmap_items(arg_tuples, kwargs), return_exceptions, options)

    def map(self, *iterables: Iterable[Any], return_exceptions: bool = False, **kwargs: Any) -> list[R]:
        """Call once per item of the zipped ``iterables``, in parallel; results in input order.

        A keyword whose value is a list or tuple of the map's length gives one value per item;
        any other value, or one wrapped in :class:`broadcast`, goes whole to every item.
        """
        options = self._take_call_options(kwargs)
        return self._map(_map_items(iterables, kwargs), return_exceptions, options)

    def starmap(self, arg_tuples: Iterable[Iterable[Any]], return_exceptions: bool = False, **kwargs: Any) -> list[R]:
        """Like :meth:`map` with each item's positional arguments given as a tuple; ``kwargs`` go to every item."""
        options = self._take_call_options(kwargs)
        return self._map(_starmap_items(arg_tuples, kwargs), return_exceptions, options)

    # --- internals -----------------------------------------------------------------------------

    def _take_call_options(self, kwargs: dict[str, Any]) -> dict[str, Any]:
        """Call options given as keywords (``stream_logs=False``), unless the function takes that
        name; ``stream_logs`` defaults to the config file's (the server shows output unless told not to)."""
        options = dict(self.call_options)
        if "stream_logs" in kwargs and not self._takes_stream_logs:
            options["stream_logs"] = kwargs.pop("stream_logs")
        if "stream_logs" not in options and not _config().stream_logs:
            options["stream_logs"] = False
        return options

    def _output_shown(self, system: Cluster, run_key: str, item_starts: Sequence[int] = ()) -> CallOutputShown:
        """Where the output of call ``run_key`` goes as it arrives: our own streams, marked as the cluster's."""
        return CallOutputShown(system.name, run_key, item_starts=item_starts, marked=lambda: _config().output_prefix)

    def _placed(self) -> tuple[Cluster, _Shipped]:
        if self.system is None or self._shipped is None:
            raise RhError(f"function {self.name!r} is not on a cluster yet: use rh.function(fn).to(rh.here) first")
        return self.system, self._shipped

    def _call_request(self, mode: str, refs: list[Ref], options: dict[str, Any], *, stream: bool = False,
                      chunks: tuple[int, ...] | None = None, shm_prefix: str | None = None) -> tuple[CallRequest, list]:
        """The request of one call of this function, and the frames of the function that go before
        its arguments; ``shm_prefix``: the cluster's (:meth:`_share`), when it is this machine."""
        system, shipped = self._placed()
        _refuse_refs_of_other_clusters(refs, system, self.name)
        request = CallRequest(
            key=new_run_key(self.name), mode=mode, fn_id=shipped.fn_id, n_fn=0 if shipped.pickled is None else 1,
            function_ref=shipped.function_ref, code=shipped.code, refs=tuple(sorted({ref.key for ref in refs})),
            options=options, env=self.env, secrets=self.secrets, instance=self._instance, caller=_calling_run(),
            # Large results through shared memory, except for .remote(): a kept result may be fetched more than once.
            stream=stream, shm=shm_prefix is not None and mode != "remote", chunks=chunks,
        )
        return request, ([] if shipped.pickled is None else [shipped.pickled])

    def _call(self, mode: str, args: tuple, kwargs: dict, options: dict[str, Any]) -> Any:
        return self._result_of(self._request(mode, args, kwargs, options))

    def _result_of(self, reply: Reply) -> Any:
        if reply.kind == "ack":
            return Ref(reply.header["key"], self.system)
        ((status, frames),) = split_parts(reply)
        return decode_outcome(status, frames)

    def _request(self, mode: str, args: tuple, kwargs: dict, options: dict[str, Any]) -> Reply:
        """Send one call (``mode``: call, remote, enqueue, create) and return the server's reply."""
        system, _ = self._placed()
        request, frames = self._sendable(mode, args, kwargs, options)
        with _interruptible(system, request.key, options):
            return system.send(request, frames, check_after=_check_after(options),
                               on_log=self._output_shown(system, request.key))

    def _sendable(self, mode: str, args: tuple, kwargs: dict, options: dict[str, Any],
                  stream: bool = False) -> tuple[CallRequest, list]:
        """The request of one call and the frames that go with it: the function's, then the
        arguments' (``stream``: a generator whose items the caller reads one by one)."""
        system, _ = self._placed()
        refs: list[Ref] = []
        arguments = serialize.dumps_arguments(args, kwargs, refs)
        prefix = system.shm_prefix
        request, function_frames = self._call_request(mode, refs, options, stream=stream, shm_prefix=prefix)
        return request, [*function_frames, *self._share(prefix, arguments)]

    async def _acall(self, args: tuple, kwargs: dict, options: dict[str, Any]) -> Any:
        system, _ = self._placed()
        request, frames = self._sendable("call", args, kwargs, options)
        try:
            reply = await system.asend(request, frames, on_log=self._output_shown(system, request.key))
        except BaseException as stop:
            _cancel_if_cancelled(stop, system, request.key, options)
            raise
        return self._result_of(reply)

    @staticmethod
    def _share(prefix: str | None, frames: list) -> list:
        """Move large buffers to shared memory when the cluster is this machine (its ``prefix``; the
        request asks the same of the result). Segments the last results came in go back with these
        frames, for the worker to reuse."""
        if prefix is None:
            return frames
        return shm.share(frames, prefix) + shm.due_returns()

    def _stream(self, args: tuple, kwargs: dict, options: dict[str, Any]) -> Iterator[Any]:
        """Start streaming a generator's items: the arguments are checked now (an unpicklable one is
        named at once), the call is made when the first item is asked for, as a generator's body runs."""
        refs: list[Ref] = []
        arguments = serialize.dumps_arguments(args, kwargs, refs)
        prefix = self._placed()[0].shm_prefix
        request, function_frames = self._call_request("call", refs, options, stream=True, shm_prefix=prefix)
        return self._stream_items(request, function_frames, arguments, prefix, options)

    def _stream_items(self, request: CallRequest, function_frames: list, arguments: list, shm_prefix: str | None,
                      options: dict[str, Any]) -> Generator[Any, None, Any]:
        system, _ = self._placed()
        arguments = self._share(shm_prefix, arguments)
        replies = system.stream("call", request.to_wire(), [*function_frames, *arguments],
                                check_after=_check_after(options), on_log=self._output_shown(system, request.key))
        with _interruptible(system, request.key, options), contextlib.closing(replies):
            while True:
                try:
                    reply = next(replies)
                except StopIteration as end:
                    final = end.value
                    break
                yield serialize.loads(reply.frames)
        ((status, frames),) = split_parts(final)
        return decode_outcome(status, frames)  # what the generator returned, or its error

    def _map(self, items: list[tuple[tuple, dict]], return_exceptions: bool, options: dict[str, Any]) -> list[Any]:
        if not items:
            return []
        system, _ = self._placed()
        request, frames, chunks = self._map_sendable(items, options)
        output = self._output_shown(system, request.key, item_starts=_starts(chunks))
        with _interruptible(system, request.key, options), progress.items_done(
                len(items), [len(chunk) for chunk in chunks], output, show=bool(options.get("progress"))) as on_log:
            reply = system.send(request, frames, check_after=_check_after(options), on_log=on_log)
        return self._map_results(reply, chunks, len(items), return_exceptions)

    async def _amap(self, items: list[tuple[tuple, dict]], return_exceptions: bool,
                    options: dict[str, Any]) -> list[Any]:
        if not items:
            return []
        system, _ = self._placed()
        request, frames, chunks = self._map_sendable(items, options)
        output = self._output_shown(system, request.key, item_starts=_starts(chunks))
        with progress.items_done(len(items), [len(chunk) for chunk in chunks], output,
                                 show=bool(options.get("progress"))) as on_log:
            try:
                reply = await system.asend(request, frames, on_log=on_log)
            except BaseException as stop:
                _cancel_if_cancelled(stop, system, request.key, options)
                raise
        return self._map_results(reply, chunks, len(items), return_exceptions)

    def _map_sendable(self, items: list[tuple[tuple, dict]],
                      options: dict[str, Any]) -> tuple[CallRequest, list, list[list[tuple[tuple, dict]]]]:
        """A map's request, its frames, and its items in the chunks the workers take."""
        system, _ = self._placed()
        chunk_count = min(len(items), max(1, system.parallelism * CHUNKS_PER_WORKER))
        bounds = [round(i * len(items) / chunk_count) for i in range(chunk_count + 1)]
        chunks = [items[bounds[i] : bounds[i + 1]] for i in range(chunk_count)]
        refs: list[Ref] = []
        chunk_frames = [serialize.dumps_arguments_chunk(chunk, refs, bounds[i]) for i, chunk in enumerate(chunks)]
        prefix = system.shm_prefix
        chunk_frames = [self._share(prefix, frames) for frames in chunk_frames]
        request, function_frames = self._call_request("map", refs, options, shm_prefix=prefix,
                                                      chunks=tuple(len(frames) for frames in chunk_frames))
        return request, [*function_frames, *(f for frames in chunk_frames for f in frames)], chunks

    def _map_results(self, reply: Reply, chunks: list[list[tuple[tuple, dict]]], count: int,
                     return_exceptions: bool) -> list[Any]:
        """The items' results in input order, from a map's reply; the first error raised unless
        ``return_exceptions`` (then it takes its item's place)."""
        results: list[Any] = []
        for (status, frames), chunk in zip(split_parts(reply), chunks):
            if status == "ok":
                item_outcomes = decode_outcome(status, frames)
            else:  # the whole chunk failed, e.g. its worker died
                error = serialize.loads_exception(frames)
                item_outcomes = [("err", (error, "")) for _ in chunk]
            for item_status, value in item_outcomes:
                if item_status == "ok":
                    results.append(value)
                    continue
                exc, tb = value
                if tb and exc.__cause__ is None:
                    exc.__cause__ = serialize.RemoteTraceback(tb)
                index = len(results)
                if not return_exceptions:
                    add_note(exc, f"(raised by map item {index} of {count})")
                    raise exc
                results.append(exc)
        return results

    # --- HTTP (rh_core.server.http_door) ---------------------------------------------------------------

    def endpoint(self, name: str | None = None, *, public: bool = False) -> str:
        """Serve the function over HTTP on its cluster, as ``POST /<name>`` (default: its name), and
        return the URL that reaches it from here (see :meth:`http_url`).

        A JSON object in the body is the keyword arguments, an array the positional ones; the result
        comes back as JSON, or as raw bytes when it is ``bytes``; a body sent as
        ``application/octet-stream`` is passed as one ``bytes`` argument. Callers send the cluster's
        token (``Authorization: Bearer`` :meth:`Cluster.http_token`) unless ``public=True``. Errors
        come back with a 4xx or 5xx status, and the remote traceback for callers with the token.
        Calls run like any other call (this function's ``options()``, environment and secrets), and
        the endpoint stays served across server restarts until :meth:`Cluster.remove_endpoint`.
        """
        system, _ = self._placed()
        name = name or self.name
        call, function_frames = self._call_request("call", [], {k: v for k, v in self.call_options.items()
                                                              if k != "stream_logs"})
        request = ServeRequest(name=name, public=public, call=call.served_wire())
        reply = system.send(request, function_frames)
        if "missing" in reply.header:  # the server's Python has no HTTP library yet: an ordinary install
            from rh_core.packages import install_packages

            install_packages(system, [reply.header["missing"]])
            reply = system.send(request, function_frames)
            if "missing" in reply.header:
                raise RhError(f"{reply.header['missing']} was installed on cluster {system.name!r} but its server "
                              "cannot import it; see the server's log")
        return system.http_url(name)

    def http_url(self, name: str | None = None) -> str:
        """The URL of this function's endpoint (``name``: the one it was served as, default its name),
        reachable from this machine: the cluster's HTTP port itself for a cluster on this machine,
        else a tunnel through the cluster's transport (SSH) or its TLS door, open while this process
        lives. ``curl -H "Authorization: Bearer $TOKEN" -d '{"x": 1}' URL`` calls it."""
        system, _ = self._placed()
        return system.http_url(name or self.name)

    # --- conveniences -------------------------------------------------------------------------

    def ssh(self) -> int:
        """An interactive shell on the head machine of the function's cluster."""
        system, _ = self._placed()
        return system.ssh()

    def notebook(self, port: int = 8888, **options: Any) -> Any:
        """JupyterLab on the function's cluster, in the function's environment (see :meth:`Cluster.notebook`)."""
        system, _ = self._placed()
        return system.notebook(port, env=options.pop("env", self.env), **options)

    def __repr__(self) -> str:
        where = self.system.name if self.system is not None else "not sent"
        return f"<Function {self.name} on {where}>"

    def __reduce__(self) -> tuple:
        """Passed as an argument (to a function on a cluster, say), a function sent to a cluster
        arrives as a handle to the same function there: calling it calls it on that cluster, which
        may be the one the receiver runs on (see :meth:`Cluster.__reduce__`). What travels is how
        to reach it, never the connection; the code itself is not needed where the handle lands."""
        if self.system is None or self._shipped is None:
            return _unplaced, (self.fn, self.name, self.call_options)
        fields = {"fn": _SentElsewhere(self.name, self.system.name), "name": self.name, "system": self.system,
                  "env": self.env, "secrets": self.secrets, "call_options": self.call_options, "shipped": self._shipped,
                  "instance": self._instance, "takes_stream_logs": self._takes_stream_logs, "streams": self._streams}
        return _handle, (fields,)

    # --- names (rh_core.names) -----------------------------------------------------------------

    def save(self, name: str | None = None, *, overwrite: bool = False,
             store: dict[str, Any] | None = None) -> Function[P, R]:
        """Save under ``name`` (``~/x``, ``@/team/x``; default ``~/<its name>``) how to find this
        function's code and its cluster, so ``rh.function(name=...)`` rebuilds it elsewhere.

        The function must be importable by reference (top level of a module file). Unless its
        module is installed, its working directory is archived into the store beside the record.
        Saving over an existing name needs ``overwrite=True``; ``store`` replaces the config
        file's shared store for this call.
        """
        from rh_core.names import save

        save(self, name, overwrite=overwrite, store=store)
        return self

    def to_with_code_from(self, system: Cluster, code_dir: str, import_root: str) -> Function[P, R]:
        """Like :meth:`to`, for a function whose code was fetched into ``code_dir`` (a saved
        function's working directory) rather than found in this process's working directory:
        ``code_dir`` is synced to the cluster, and the function is imported there from the synced
        counterpart of ``import_root``."""
        system.connection()
        module, qualname = self.fn.__module__, self.fn.__qualname__
        code = _code_on_cluster(system, code_dir, [import_root], code_dir, module)
        if code is None:
            raise RhError(f"cluster {system.name!r} takes no files, so the saved function {self.name!r} cannot "
                          "be imported there; load it with dryrun=True and send it with .to() to travel by value")
        reference = FunctionRef(module=module, qualname=qualname, path=code.paths[0])
        return attrs.evolve(self, system=system, shipped=_Shipped(f"{module}:{qualname}", reference, None, code))


class _SentElsewhere:
    """Stands in for the code of a function that a handle calls on its cluster (:meth:`Function.__reduce__`)."""

    def __init__(self, name: str, cluster: str):
        self.__name__, self._cluster = name, cluster

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        raise RhError(f"{self.__name__!r} is a handle to a function on cluster {self._cluster!r}; its code is not "
                      "here. Call the handle itself, which runs it there")


def _handle(fields: dict[str, Any]) -> Function:
    return Function(**fields)


def _unplaced(fn: Callable, name: str, call_options: dict[str, Any]) -> Function:
    return Function(fn=fn, name=name, call_options=call_options)


def function(fn: Callable[P, R] | None = None, *, name: str | None = None, system: Cluster | None = None,
             dryrun: bool = False, store: dict[str, Any] | None = None) -> Function[P, R]:
    """Wrap ``fn``; with ``system`` it is sent there at once (same as ``.to(system)``).

    Without ``fn``, ``name`` loads a saved function (``~/x``, ``@/team/x``, ``^x``) and places it
    on ``system``, else on the cluster it was saved with; ``dryrun=True`` loads it unplaced.
    ``store`` replaces the config file's shared store for this call.
    """
    if fn is None and name is not None:
        from rh_core.names import load_function

        return load_function(name, dryrun=dryrun, system=system, store=store)
    if not callable(fn):
        raise TypeError(f"rh.function takes a function (or name= of a saved one), got {type(fn).__name__}")
    wrapped = Function(fn=fn, name=name or getattr(fn, "__name__", "function").replace("<lambda>", "lambda"))
    return wrapped.to(system) if system is not None else wrapped


# -------------------------------------------------------------------------------------------------
# Shipping code


def _installed_roots() -> set[str]:
    import site
    import sysconfig

    roots = set(site.getsitepackages()) | {site.getusersitepackages()}
    roots |= {sysconfig.get_paths()[key] for key in ("stdlib", "platstdlib", "purelib", "platlib")}
    return {os.path.realpath(root) for root in roots}


def _ship(fn: Callable, system: Cluster) -> _Shipped:
    """Decide how ``fn`` travels to ``system``, syncing the working directory when its code (or
    code that a function sent by value imports) lives there."""
    root = serialize.module_root(fn.__module__) if serialize.is_importable_by_reference(fn) else None
    if root is not None and os.path.realpath(root) in _installed_roots():
        module, qualname = fn.__module__, fn.__qualname__
        return _Shipped(f"{module}:{qualname}", FunctionRef(module=module, qualname=qualname), None)
    workdir = os.path.realpath(working_directory())
    if root is not None and _inside(os.path.realpath(root), workdir):
        module, qualname = fn.__module__, fn.__qualname__
        code = _code_on_cluster(system, workdir, [root, *sys.path], os.getcwd(), module)
        if code is not None:  # None: the cluster takes no files; send the code by value
            reference = FunctionRef(module=module, qualname=qualname, path=code.paths[0])
            return _Shipped(f"{module}:{qualname}", reference, None, code)
    import hashlib

    system.check_by_value(f"function {getattr(fn, '__qualname__', fn)!r}")
    pickled = serialize.dumps_function(fn)
    # Functions from __main__ or a notebook import the user's modules too: the directory travels.
    code = _code_on_cluster(system, workdir, sys.path, os.getcwd())
    return _Shipped(f"pickled:{hashlib.sha1(pickled).hexdigest()}", None, pickled, code)


def _code_on_cluster(system: Cluster, local_root: str, import_paths: list[str], cwd: str,
                     module: str | None = None) -> CodeOnCluster | None:
    """Sync ``local_root`` to ``system`` and say where its code is there: the ``import_paths`` and
    ``cwd`` that lie inside it, mapped to the copy, and for a function sent by reference the digest
    of its ``module``'s source. None when the cluster takes no files."""
    synced = system.sync_working_directory(local_root)
    if synced is None:
        return None
    remote_root, version = synced

    def there(path: str) -> str:
        return os.path.normpath(os.path.join(remote_root, os.path.relpath(path, local_root)))

    paths: list[str] = []
    for entry in import_paths:
        real = os.path.realpath(entry or os.getcwd())  # "" on sys.path: the current directory
        if _inside(real, local_root) and there(real) not in paths:
            paths.append(there(real))
    real_cwd = os.path.realpath(cwd)
    digest = None
    if module is not None:
        digest = serialize.source_digest(sys.modules[module].__file__)
    return CodeOnCluster(root=remote_root, version=version, paths=tuple(paths) or (remote_root,),
                                   cwd=there(real_cwd) if _inside(real_cwd, local_root) else remote_root,
                                   module=module, digest=digest)


def _inside(path: str, directory: str) -> bool:
    return path == directory or path.startswith(directory + os.sep)


def _calling_run() -> str | None:
    """The run this call is made from when the caller is itself a function on a worker (only
    workers load :mod:`rh_core.worker.runner`): a server that runs both lends the caller's worker, which
    waits meanwhile, so a pool of callers cannot deadlock waiting for their callees."""
    runner = sys.modules.get("rh_core.worker.runner")
    return runner.current_call_key() if runner is not None else None


def _refuse_refs_of_other_clusters(refs: list[Ref], system: Cluster, function_name: str) -> None:
    """A ref's value lives on the cluster that made it: another cluster's server cannot resolve it."""
    for ref in refs:
        if ref.cluster is not None and ref.cluster is not system and ref.cluster.config() != system.config():
            raise RhError(
                f"{ref!r} holds a result on cluster {ref.cluster.name!r}, but {function_name!r} runs on cluster "
                f"{system.name!r}: a ref is resolved only by the cluster that made it. Pass its value instead "
                f"(ref.result()), or send {function_name!r} to {ref.cluster.name!r}."
            )


@contextlib.contextmanager
def _interruptible(system: Cluster, key: str, options: dict[str, Any]) -> Iterator[None]:
    """Ctrl-C while waiting for run ``key`` cancels the run on the cluster (what the user meant:
    stop it), unless the call said ``cancel_on_interrupt=False``; then the run goes on, and the
    user is told how to reach it. Leaving a generator's items early (``GeneratorExit``) is the same."""
    try:
        yield
    except (KeyboardInterrupt, GeneratorExit) as stop:
        if options.get("cancel_on_interrupt", True):
            with contextlib.suppress(Exception):  # finished meanwhile, or never reached the server
                system.cancel(key)
        elif isinstance(stop, KeyboardInterrupt):
            sys.stderr.write(f"rh: run {key} goes on on cluster {system.name!r}: cluster.get({key!r}) fetches its "
                             f"result, `rh cancel {system.name} {key}` stops it\n")
        raise


def _cancel_if_cancelled(stop: BaseException, system: Cluster, key: str, options: dict[str, Any]) -> None:
    """An asyncio task cancelled while it awaits run ``key`` cancels the run on the cluster (what
    cancelling meant), unless the call said ``cancel_on_interrupt=False``."""
    import asyncio

    if isinstance(stop, asyncio.CancelledError) and options.get("cancel_on_interrupt", True):
        system.cancel_soon(key)


def _map_items(iterables: Sequence[Iterable[Any]], kwargs: dict[str, Any]) -> list[tuple[tuple, dict]]:
    """``map``'s items: the zipped iterables, with each keyword's value per item (a list or tuple of
    the map's length) or whole to every item (any other value, or one wrapped in :class:`broadcast`)."""
    columns = [list(iterable) for iterable in iterables]
    if not columns:
        raise TypeError("map needs at least one iterable of positional arguments; use starmap for tuples")
    count = min(len(column) for column in columns)
    per_item = {k: v for k, v in kwargs.items() if isinstance(v, (list, tuple)) and len(v) == count}
    shared = {k: (v.value if isinstance(v, broadcast) else v) for k, v in kwargs.items() if k not in per_item}
    return [(tuple(column[i] for column in columns), {**shared, **{k: v[i] for k, v in per_item.items()}})
            for i in range(count)]


def _starmap_items(arg_tuples: Iterable[Iterable[Any]], kwargs: dict[str, Any]) -> list[tuple[tuple, dict]]:
    shared = {k: (v.value if isinstance(v, broadcast) else v) for k, v in kwargs.items()}
    return [(tuple(args), shared) for args in arg_tuples]


def _starts(chunks: Sequence[Sequence[Any]]) -> list[int]:
    """The index of each chunk's first item among all of them."""
    starts, total = [], 0
    for chunk in chunks:
        starts.append(total)
        total += len(chunk)
    return starts


async def _value_now(fn: Callable, args: tuple, kwargs: dict) -> Any:
    """A function not sent anywhere, called from ``acall``: run here, as calling it would."""
    return fn(*args, **kwargs)


def _config() -> Any:
    from rh_core.config import current

    return current()


def _check_after(options: dict[str, Any]) -> float:
    """When a call waiting for its reply first makes sure the server still answers: soon after its
    timeout, by which the server should have reported it, or at the usual heartbeat."""
    from rh_core.client.connection import HEARTBEAT_SECONDS

    timeout = options.get("timeout")
    return float(timeout) + 2.0 if timeout else HEARTBEAT_SECONDS


def _is_generator_function(fn: Callable) -> bool:
    return inspect.isgeneratorfunction(fn) or inspect.isasyncgenfunction(fn)


def _has_parameter(fn: Callable, name: str) -> bool:
    try:
        return name in inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return False
