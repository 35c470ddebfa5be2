"""Turning functions, arguments, results and exceptions into wire frames and back.

This is the only module that touches cloudpickle. Objects are pickled with protocol 5; buffers of
at least ``OUT_OF_BAND_MIN`` bytes (large ``bytes``, ``bytearray``, NumPy arrays) travel as separate
frames, so they are never copied into the pickle stream.
"""

from __future__ import annotations

import contextvars
import importlib
import os
import pickle
import sys
import traceback
from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING, Any

from rh_core.errors import RemoteError, RemoteTraceback, SerializationError

if TYPE_CHECKING:
    from rh_core.wire.messages import FunctionRef

OUT_OF_BAND_MIN = 64 * 1024
Buffer = bytes | memoryview | pickle.PickleBuffer


def python_version() -> str:
    """The ``major.minor`` Python version; client and cluster must agree on it."""
    return f"{sys.version_info.major}.{sys.version_info.minor}"


def _bytes_from_buffer(buffer: memoryview | bytes) -> bytes:
    # A buffer that is a bytes object (rh_core.wire.shm reads segments into bytes), or a memoryview of a
    # whole one, is the result, with no copy.
    if type(buffer) is bytes:
        return buffer
    if isinstance(buffer, memoryview) and type(buffer.obj) is bytes and buffer.nbytes == len(buffer.obj):
        return buffer.obj
    from rh_core.wire.heap import bytes_from

    return bytes_from(buffer)


class _LargeBytes:
    """Wraps a large ``bytes`` so pickle sends it out of band (pickle never does so for ``bytes``)."""

    __slots__ = ("data",)

    def __init__(self, data: bytes):
        self.data = data

    def __reduce_ex__(self, protocol):
        return _bytes_from_buffer, (pickle.PickleBuffer(self.data),)


def _lift_large_bytes(obj: Any, depth: int = 2) -> Any:
    """Wrap large ``bytes`` found at the top of ``obj`` or one or two container levels down."""
    if type(obj) is bytes:
        return _LargeBytes(obj) if len(obj) >= OUT_OF_BAND_MIN else obj
    if depth == 0:
        return obj
    if type(obj) in (tuple, list):
        lifted = [_lift_large_bytes(item, depth - 1) for item in obj]
        if any(a is not b for a, b in zip(lifted, obj)):
            return type(obj)(lifted)
    elif type(obj) is dict:
        lifted_values = {k: _lift_large_bytes(v, depth - 1) for k, v in obj.items()}
        if any(lifted_values[k] is not v for k, v in obj.items()):
            return lifted_values
    return obj


_SCALARS = frozenset({int, float, bool, str, type(None)})
_SMALL_PLAIN_MAX_ITEMS = 16


def _is_small_plain_data(obj: Any, depth: int) -> bool:
    """Whether ``obj`` is a few scalars (and small ``bytes``), up to ``depth`` small tuples, lists and
    dicts deep: the standard pickler handles such data exactly as cloudpickle does, much faster."""
    kind = type(obj)
    if kind in _SCALARS:
        return True
    if kind is bytes:
        return len(obj) < OUT_OF_BAND_MIN
    if depth == 0:
        return False
    if kind is tuple or kind is list:
        return len(obj) <= _SMALL_PLAIN_MAX_ITEMS and all(_is_small_plain_data(item, depth - 1) for item in obj)
    if kind is dict:
        return len(obj) <= _SMALL_PLAIN_MAX_ITEMS and all(
            type(k) is str and _is_small_plain_data(v, depth - 1) for k, v in obj.items())
    return False


# Refs found while pickling are collected here; refs met while unpickling are resolved from here.
_refs_seen: contextvars.ContextVar[list[Any] | None] = contextvars.ContextVar("rh_refs", default=None)
_ref_resolver: contextvars.ContextVar[Callable[[str], Any] | None] = contextvars.ContextVar(
    "rh_ref_resolver", default=None
)


def reduce_ref(ref: Any) -> tuple:
    """``Ref.__reduce__``: record the ref for the cluster to resolve, and pickle it by key."""
    seen = _refs_seen.get()
    if seen is not None:
        seen.append(ref)
    return _load_ref, (ref.key, type(ref))


def _load_ref(key: str, ref_type: type) -> Any:
    resolve = _ref_resolver.get()
    return resolve(key) if resolve is not None else ref_type._from_key(key)


def dumps(obj: Any, refs: list[Any] | None = None, *, container_depth: int = 2) -> list[Buffer]:
    """Pickle ``obj`` into frames: the pickle stream first, then its out-of-band buffers.

    ``Ref`` objects found inside ``obj`` are appended to ``refs``; the cluster resolves their keys
    to their values before the function runs. Large ``bytes`` up to ``container_depth``
    levels of lists, tuples and dicts down also travel out of band.
    """
    if _is_small_plain_data(obj, container_depth):
        return [pickle.dumps(obj, protocol=5)]  # ~1 µs where cloudpickle takes ~12
    buffers: list[Buffer] = []

    def keep_large(buf: pickle.PickleBuffer) -> bool:
        if buf.raw().nbytes >= OUT_OF_BAND_MIN:
            buffers.append(buf)
            return False  # out of band
        return True  # small: inline in the stream

    import cloudpickle

    token = _refs_seen.set(refs)
    try:
        stream = cloudpickle.dumps(_lift_large_bytes(obj, container_depth), protocol=5, buffer_callback=keep_large)
    finally:
        _refs_seen.reset(token)
    return [stream, *buffers]


def loads(frames: Sequence[Buffer], resolve_ref: Callable[[str], Any] | None = None,
          received: list[str] | None = None) -> Any:
    """Inverse of :func:`dumps`; ``resolve_ref`` turns a ref key found inside into its value, and
    ``received`` collects the shared-memory segments taken over (see :mod:`rh_core.wire.shm`)."""
    if len(frames) == 1 and resolve_ref is None and _ref_resolver.get() is None:
        return pickle.loads(frames[0])  # the common case: no buffers, no refs to resolve
    from rh_core.wire import shm

    buffers = []
    for frame in frames[1:]:
        if shm.is_descriptor(frame):
            buffers.append(shm.attach(frame, received))
        elif shm.is_return(frame):
            shm.take_back(frame)  # a segment handed back for reuse; no buffer of this value
        else:
            buffers.append(frame)
    token = _ref_resolver.set(resolve_ref)
    try:
        return pickle.loads(frames[0], buffers=buffers)
    finally:
        _ref_resolver.reset(token)


def dumps_arguments(args: tuple, kwargs: dict, refs: list[Any]) -> list[Buffer]:
    """Pickle call arguments; when one cannot be pickled, say which one before anything is sent."""
    try:
        return dumps((args, kwargs), refs)
    except Exception as exc:
        named = [(f"positional argument {i}", a) for i, a in enumerate(args)]
        named += [(f"keyword argument {k!r}", v) for k, v in kwargs.items()]
        for label, value in named:
            try:
                dumps(value, [])
            except Exception as inner:
                raise SerializationError(
                    f"{label} of type {type(value).__name__} cannot be sent to the cluster: {inner}. "
                    "Pass something picklable instead (for a file or socket, pass its path or address)."
                ) from exc
        raise SerializationError(f"the call's arguments cannot be pickled: {exc}") from exc


def dumps_arguments_chunk(items: list[tuple[tuple, dict]], refs: list[Any], offset: int) -> list[Buffer]:
    """Pickle a chunk of map items; when one cannot be pickled, name its index and argument."""
    try:
        return dumps(items, refs, container_depth=4)  # items -> (args, kwargs) -> args -> value
    except Exception:
        for index, (args, kwargs) in enumerate(items):
            try:
                dumps_arguments(args, kwargs, [])
            except SerializationError as exc:
                raise SerializationError(f"map item {offset + index}: {exc}") from exc.__cause__
        raise


# ---------------------------------------------------------------------------------------------
# Functions: by reference when importable from the synced working directory or an installed
# package, by value (cloudpickle) otherwise.


def source_digest(path: str) -> str:
    """The SHA-256 of a source file, as :attr:`rh_core.wire.messages.CodeOnCluster.digest` holds it."""
    import hashlib

    with open(path, "rb") as source:
        return hashlib.sha256(source.read()).hexdigest()


def module_root(module_name: str) -> str | None:
    """The sys.path entry a module was imported from, or None if it has no file."""
    module = sys.modules.get(module_name)
    file = getattr(module, "__file__", None)
    if not file:
        return None
    path = os.path.abspath(file)
    depth = module_name.count(".") + 1
    if os.path.basename(path) == "__init__.py":
        depth += 1
    for _ in range(depth):
        path = os.path.dirname(path)
    return path


def is_importable_by_reference(fn: Callable) -> bool:
    """True when a worker can import ``fn`` by name (not __main__, not a lambda or closure)."""
    qualname = getattr(fn, "__qualname__", "")
    module = getattr(fn, "__module__", None)
    return bool(module) and module != "__main__" and "<" not in qualname and module in sys.modules


def load_function(ref: FunctionRef) -> Callable:
    """Import a function by reference (worker side)."""
    if ref.path and ref.path not in sys.path:
        sys.path.insert(0, ref.path)
    obj: Any = importlib.import_module(ref.module)
    for part in ref.qualname.split("."):
        obj = getattr(obj, part)
    return obj


def dumps_function(fn: Callable) -> bytes:
    """Pickle a function by value, including its module's code when the module is not ``__main__``
    (cloudpickle would otherwise refer to a module the cluster cannot import)."""
    import cloudpickle

    module = sys.modules.get(getattr(fn, "__module__", "") or "")
    register = module is not None and module.__name__ != "__main__" and module.__name__ not in _by_value_modules()
    try:
        if register:
            cloudpickle.register_pickle_by_value(module)
        try:
            return cloudpickle.dumps(fn, protocol=5)
        finally:
            if register:
                cloudpickle.unregister_pickle_by_value(module)
    except Exception as exc:
        raise SerializationError(
            f"function {getattr(fn, '__qualname__', fn)!r} cannot be pickled: {exc}. "
            "Move it to a module in your working directory so it is sent by reference."
        ) from exc


def _by_value_modules() -> set[str]:
    from cloudpickle import cloudpickle as implementation

    return set(getattr(implementation, "_PICKLE_BY_VALUE_MODULES", ()))


def loads_function(data: bytes | memoryview) -> Callable:
    return pickle.loads(data)  # cloudpickle output is plain pickle; loading needs only cloudpickle installed


# ---------------------------------------------------------------------------------------------
# Outcomes: what a worker sends back for one call.


def dumps_exception(exc: BaseException) -> list[Buffer]:
    """Pickle an exception together with its formatted traceback; never fails."""
    tb = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    try:
        return dumps((exc, tb))
    except Exception:
        return dumps((RemoteError(type(exc).__qualname__, str(exc)), tb))


def loads_exception(frames: Sequence[Buffer]) -> BaseException:
    """Rebuild a remote exception with the remote traceback chained as its cause."""
    try:
        exc, tb = loads(frames)
    except Exception as err:  # the type exists only on the cluster
        exc, tb = RemoteError("exception", f"(could not be rebuilt here: {err})"), ""
    exc.__cause__ = RemoteTraceback(tb)
    return exc


def iter_parts(frames: Sequence[Buffer], counts: Iterable[int]):
    """Split a flat list of frames into consecutive parts of the given sizes."""
    start = 0
    for n in counts:
        yield frames[start : start + n]
        start += n
