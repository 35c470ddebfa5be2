"""The wire protocol's messages as typed classes: the one place their fields are named and checked.

A call travels as a :class:`CallRequest` (client to server, a JSON envelope plus frames), becomes a
:class:`Task` whose ``header`` is a :class:`CallHeader` (server to executor,
and to the worker over a link as a plain tuple), and comes back as a ``done`` message and then a
``result`` reply whose :class:`ResultParts` say which frames belong to which outcome. Log lines and
a generator's items go from the worker to the server as :class:`LogMessage` frames. Every other
operation a client sends has a request class in :data:`OPS`.

Each class has ``to_wire()`` and ``from_wire()``. What a server reads from a client is hostile until
checked: ``from_wire`` refuses a wrong type, an oversize value, a value not allowed and a field it
does not know with a :class:`~rh_core.errors.ProtocolError` naming the field. What a worker reads
from its own server (``from_link``) is trusted and only unpacked: that is the hot path.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any, ClassVar

import attrs

from rh_core.errors import ProtocolError, SecretError

Frames = Sequence[Any]  # bytes-like frames: a pickle stream followed by its out-of-band buffers


@attrs.frozen(kw_only=True)
class Task:
    """One unit of work for an executor: call a function once, or over a chunk of map items.

    ``header`` is what a runner needs to know of the call (a :class:`CallHeader`);
    ``function`` is the cloudpickled function (empty when it goes by reference); ``arguments`` the
    pickled ``(args, kwargs)`` or list of them for a map chunk; ``refs`` the already computed
    values of every ``Ref`` the arguments mention, as ``{key: Outcome}``. A method call on a remote
    instance has ``header.instance`` (an :class:`InstanceTarget` naming the method).
    """

    key: str
    header: CallHeader
    function: Any
    arguments: Frames
    refs: dict[str, Outcome] = attrs.field(factory=dict)
    options: dict[str, Any] = attrs.field(factory=dict)
    env: str | None = None  # the environment to run in; None: the cluster's default one
    #: Environment variables of the secrets the function was sent with (``secrets=[...]``): run the
    #: task only in a process that has them and that runs no task without the same variable names.
    #: Never shown in a repr or a log.
    variables: dict[str, str] = attrs.field(factory=dict, repr=False)


@attrs.frozen(kw_only=True)
class Outcome:
    """What running a task produced: ``ok`` with the pickled result, or ``err`` with the pickled
    exception and its traceback; ``stale`` is an ``err`` whose call was refused before it ran because
    the machine's copy of the code was not the caller's (an executor may copy the code there again
    and retry it). The server never unpickles any of them."""

    status: str  # "ok" | "err" | "stale"
    frames: Frames
    logged: bool = False  # the runner sent log lines; the server waits for their end marker
    #: What the call wrote to stdout and stderr and had not sent live: a short call's output travels
    #: with its result, in one message, rather than line by line beside it.
    output: tuple[OutputLine, ...] = ()
    #: For an ``err`` the server made itself (a timeout, a cancel, an executor failure): the
    #: exception's type name and message, for readers that must not unpickle (HTTP endpoints).
    error: tuple[str, str] | None = None

#: How a call runs: a plain call, ``.remote()``, ``enqueue``, a ``map`` or creating a remote instance.
CALL_MODES = ("call", "remote", "enqueue", "map", "create")
#: The options of a call (``Function.options``): what they mean is documented there.
CALL_OPTIONS = ("timeout", "stream_logs", "num_cpus", "num_gpus", "resources", "memory", "cancel_on_interrupt",
                "progress")
#: What came of one call: its result, its error, or a refusal because the cluster's code was stale.
OUTCOME_STATUSES = ("ok", "err", "stale")
#: Fields of every request envelope that belong to the framing, not to the operation.
ENVELOPE_FIELDS = frozenset({"id", "op", "auth", "pieces"})
#: What a run key (``ref.key``) looks like. The server refuses any other: a key becomes a file name on
#: the cluster (its logs, its kept result), and ``/`` separates a map's run key from its chunk's number.
RUN_KEY = re.compile(r"[A-Za-z0-9_.-]{1,128}")
#: The key of one task: a run key, or a map chunk's (``KEY/3``).
TASK_KEY = re.compile(r"[A-Za-z0-9_.-]{1,128}(/[0-9]{1,9})?")
#: Names of remote instances (``rh.module(...).to(cluster, name=...)``).
NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:-]{0,199}")

NAME_MAX = 256  # an id, an environment's or a secret's name, a method, a caller's run key
TEXT_MAX = 4096  # a path, a module or qualified name
LIST_MAX = 100_000  # refs, secrets, keys, a map's chunks


# -------------------------------------------------------------------------------------------------
# Checking what arrives


def _shown(value: Any) -> str:
    """A value as an error quotes it: a hostile one may be huge, so only its start."""
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def refused(message: str, field: str, expected: str, value: Any) -> ProtocolError:
    """The error for a field that is not what the protocol allows: names the message and the field."""
    return ProtocolError(f"malformed {message}: {field!r} must be {expected}, got {_shown(value)}")


def check_run_key(key: Any) -> str:
    """``key`` when it is a run key (:data:`RUN_KEY`); else a ProtocolError naming it."""
    if not isinstance(key, str) or not RUN_KEY.fullmatch(key):
        raise ProtocolError(f"{str(key)[:80]!r} is not a run key: run keys are up to 128 letters, digits, '_', '.' "
                            f"and '-' (as ref.key shows them)")
    return key


def _only_known(data: Any, known: frozenset[str], message: str) -> dict:
    if not isinstance(data, dict):
        raise ProtocolError(f"malformed {message}: it must be an object, got {_shown(data)}")
    if not data.keys() <= known:
        unknown = data.keys() - known
        raise ProtocolError(f"malformed {message}: unknown field {min(unknown)!r}; it holds only "
                            f"{', '.join(sorted(known - ENVELOPE_FIELDS))}")
    return data


def _text(data: dict, field: str, message: str, limit: int = NAME_MAX, *, optional: bool = False,
          empty: bool = False) -> str | None:
    value = data.get(field)
    if value is None and optional:
        return None
    if not isinstance(value, str) or len(value) > limit or not (value or empty):
        kind = "a string" if empty else "a non-empty string"
        raise refused(message, field, f"{kind} of at most {limit} characters" + (" or null" if optional else ""),
                      value)
    return value


def _texts(data: dict, field: str, message: str, what: str, check: Callable[[Any], Any] | None = None,
           ) -> tuple[str, ...]:
    value = data.get(field)
    if value is None:
        return ()
    if (not isinstance(value, list) or len(value) > LIST_MAX
            or not all(isinstance(v, str) and 0 < len(v) <= NAME_MAX for v in value)):
        raise refused(message, field, f"a list of {what}", value)
    if check is not None:
        for item in value:
            check(item)
    return tuple(value)


def _flag(data: dict, field: str, message: str) -> bool:
    value = data.get(field, False)
    if type(value) is not bool:
        raise refused(message, field, "true or false", value)
    return value


def _count(value: Any) -> bool:
    return type(value) is int and value >= 0


def _count_or_none(value: Any) -> bool:
    return value is None or _count(value)


CACHE_MAX = 4096  # distinct parts kept by :class:`_Parts`; beyond, it starts afresh


class _Parts:
    """The parts of calls (a function's reference, where its code is, an instance) that were seen
    before, by value. Every call of a function carries the same ones: checking and building them
    once, not on each call, keeps the protocol's checks off the hot path. A value is kept only after
    it passed its checks, and looked up by a tuple of strings, integers and None, which nothing of
    another type equals."""

    __slots__ = ("_kept",)

    def __init__(self) -> None:
        self._kept: dict[tuple, Any] = {}

    def get(self, key: tuple) -> Any:
        try:
            return self._kept.get(key)
        except TypeError:  # an unhashable value (a list, an object) is no part seen before
            return None

    def keep(self, key: tuple, part: Any) -> Any:
        if len(self._kept) >= CACHE_MAX:
            self._kept.clear()
        self._kept[key] = part
        return part


# -------------------------------------------------------------------------------------------------
# The parts of a call request


@attrs.frozen(kw_only=True, cache_hash=True)
class FunctionRef:
    """How a worker finds a function: a module and qualified name, and the path to import from."""

    FIELDS: ClassVar[frozenset[str]] = frozenset({"module", "qualname", "path"})

    module: str
    qualname: str
    path: str | None = None  # a sys.path entry on the cluster, or None when installed there
    # Sent with every call: made into its wire form once.
    _wire: dict = attrs.field(init=False, eq=False, repr=False, default=attrs.Factory(
        lambda self: {"module": self.module, "qualname": self.qualname, "path": self.path}, takes_self=True))

    def to_wire(self) -> dict:
        return self._wire

    def to_link(self) -> tuple:
        return (self.module, self.qualname, self.path)

    @classmethod
    def from_wire(cls, data: Any, message: str = "function_ref") -> FunctionRef:
        key = (data.get("module"), data.get("qualname"), data.get("path")) if type(data) is dict else None
        seen = _SEEN.get(key) if key is not None and data.keys() == cls.FIELDS else None
        if type(seen) is cls:
            return seen
        _only_known(data, cls.FIELDS, message)
        return _SEEN.keep(key, cls(module=_text(data, "module", message, TEXT_MAX),
                                   qualname=_text(data, "qualname", message, TEXT_MAX),
                                   path=_text(data, "path", message, TEXT_MAX, optional=True)))

    @classmethod
    def from_link(cls, data: tuple) -> FunctionRef:
        return cls(module=data[0], qualname=data[1], path=data[2])


@attrs.frozen(kw_only=True, cache_hash=True)
class CodeOnCluster:
    """Where the caller's code lives on the cluster, and which version of it a call was sent with.

    ``root`` is the working directory synced there (or the caller's own, on its own machine) and
    ``version`` changes whenever one of its files does: a worker that imported modules from
    ``root`` at another version forgets them and imports them again. ``paths`` are the caller's
    ``sys.path`` entries inside the working directory, mapped there, and ``cwd`` the caller's
    current directory, mapped there too. For a function sent by reference, ``digest`` is the
    SHA-256 of its ``module``'s source as the caller read it: a worker that finds other source there
    refuses the call (:class:`~rh_core.errors.StaleCodeError`) instead of running other code.
    """

    FIELDS: ClassVar[frozenset[str]] = frozenset({"root", "version", "paths", "cwd", "module", "digest"})

    root: str
    version: str
    paths: tuple[str, ...]
    cwd: str
    module: str | None = None
    digest: str | None = None
    _wire: dict = attrs.field(init=False, eq=False, repr=False, default=attrs.Factory(
        lambda self: {"root": self.root, "version": self.version, "paths": list(self.paths), "cwd": self.cwd,
                      "module": self.module, "digest": self.digest}, takes_self=True))

    def to_wire(self) -> dict:
        return self._wire

    def to_link(self) -> tuple:
        return (self.root, self.version, self.paths, self.cwd, self.module, self.digest)

    @classmethod
    def from_wire(cls, data: Any, message: str = "code") -> CodeOnCluster:
        key = None
        if type(data) is dict and type(data.get("paths")) is list and data.keys() == cls.FIELDS:
            key = (data["root"], data["version"], tuple(data["paths"]), data["cwd"], data["module"], data["digest"])
            seen = _SEEN.get(key)
            if type(seen) is cls:
                return seen
        _only_known(data, cls.FIELDS, message)
        paths = data.get("paths")
        if (not isinstance(paths, list) or not paths or len(paths) > 1000
                or not all(isinstance(p, str) and 0 < len(p) <= TEXT_MAX for p in paths)):
            raise refused(message, "paths", "a non-empty list of paths", paths)
        code = cls(root=_text(data, "root", message, TEXT_MAX), version=_text(data, "version", message),
                   paths=tuple(paths), cwd=_text(data, "cwd", message, TEXT_MAX),
                   module=_text(data, "module", message, TEXT_MAX, optional=True),
                   digest=_text(data, "digest", message, optional=True))
        return code if key is None else _SEEN.keep(key, code)

    @classmethod
    def from_link(cls, data: tuple) -> CodeOnCluster:
        return cls(root=data[0], version=data[1], paths=data[2], cwd=data[3], module=data[4], digest=data[5])


@attrs.frozen(kw_only=True, cache_hash=True)
class InstanceTarget:
    """The remote instance (``rh.module``) a call is about: to create one, its ``name``, ``id`` (this
    incarnation), ``max_concurrency`` and ``class_name``; to call a method of it, ``name``, ``id``
    and ``method``."""

    FIELDS: ClassVar[frozenset[str]] = frozenset({"name", "id", "method", "max_concurrency", "class"})

    name: str
    id: str
    method: str | None = None
    max_concurrency: int = 1
    class_name: str | None = None
    _wire: dict = attrs.field(init=False, eq=False, repr=False, default=attrs.Factory(
        lambda self: self._make_wire(), takes_self=True))

    def _make_wire(self) -> dict:
        if self.method is not None:
            return {"name": self.name, "id": self.id, "method": self.method}
        return {"name": self.name, "id": self.id, "max_concurrency": self.max_concurrency, "class": self.class_name}

    def to_wire(self) -> dict:
        return self._wire

    def to_link(self) -> tuple:
        return (self.name, self.id, self.method, self.max_concurrency, self.class_name)

    @classmethod
    def from_wire(cls, data: Any, mode: str, message: str = "call request") -> InstanceTarget:
        """Check the ``instance`` field of a call request of ``mode``: ``create`` makes one, any
        other mode calls a method of one."""
        where = f"{message}'s instance"
        _only_known(data, cls.FIELDS, where)
        name = data.get("name")
        if not isinstance(name, str) or not NAME_PATTERN.fullmatch(name):
            raise refused(where, "name", f"an instance name ({NAME_PATTERN.pattern})", name)
        instance_id = _text(data, "id", where)
        if mode != "create":
            if "max_concurrency" in data or "class" in data:
                raise refused(where, "max_concurrency" if "max_concurrency" in data else "class",
                              "absent from a method call", data.get("max_concurrency", data.get("class")))
            return cls(name=name, id=instance_id, method=_text(data, "method", where))
        if "method" in data:
            raise refused(where, "method", "absent when the instance is created", data["method"])
        concurrency = data.get("max_concurrency")
        if type(concurrency) is not int or not 1 <= concurrency <= 10_000:
            raise refused(where, "max_concurrency", "a positive integer (at most 10000)", concurrency)
        return cls(name=name, id=instance_id, max_concurrency=concurrency,
                   class_name=_text(data, "class", where, TEXT_MAX, optional=True))

    @classmethod
    def from_link(cls, data: tuple) -> InstanceTarget:
        name, instance_id, method, max_concurrency, class_name = data
        return cls(name=name, id=instance_id, method=method, max_concurrency=max_concurrency, class_name=class_name)


_SEEN = _Parts()  # parts of call requests that passed their checks
_FROM_LINK = _Parts()  # headers of the tasks a worker was given
_HEADERS = _Parts()  # headers of the tasks a server made


# -------------------------------------------------------------------------------------------------
# A call: client -> server


@attrs.frozen(kw_only=True)
class CallRequest:
    """One call of a function (the ``call`` operation), as a client sends it with its frames: the
    pickled function first when it goes by value (``n_fn``), then the pickled arguments (for a
    ``map``, ``chunks`` says how many frames each chunk of items has).

    ``refs`` are the run keys of results the arguments mention, ``caller`` the run key of the call
    this one is made from (a function calling its cluster), ``stream`` asks for a generator's items
    one by one, ``shm`` for large results through shared memory (a client on the server's machine).
    """

    FIELDS: ClassVar[frozenset[str]] = frozenset({
        "key", "mode", "fn_id", "n_fn", "function_ref", "code", "refs", "options", "env", "secrets", "instance",
        "caller", "stream", "shm", "chunks"}) | ENVELOPE_FIELDS
    #: What an HTTP endpoint keeps of the call it serves; its calls get their own key and mode.
    SERVED_FIELDS: ClassVar[frozenset[str]] = frozenset({
        "fn_id", "n_fn", "function_ref", "code", "options", "env", "secrets", "instance"})
    OP: ClassVar[str] = "call"
    MESSAGE: ClassVar[str] = "call request"

    key: str
    mode: str
    fn_id: str
    n_fn: int = 0  # 1 when the function travels by value, as the first frame
    function_ref: FunctionRef | None = None
    code: CodeOnCluster | None = None
    refs: tuple[str, ...] = ()
    options: dict[str, Any] = attrs.field(factory=dict)
    env: str | None = None
    secrets: tuple[str, ...] = ()
    instance: InstanceTarget | None = None
    caller: str | None = None
    stream: bool = False
    shm: bool = False
    chunks: tuple[int, ...] | None = None

    def to_wire(self) -> dict[str, Any]:
        wire: dict[str, Any] = {
            "key": self.key, "mode": self.mode, "fn_id": self.fn_id, "n_fn": self.n_fn,
            "function_ref": None if self.function_ref is None else self.function_ref._wire,
            "code": None if self.code is None else self.code._wire,
            "refs": list(self.refs), "options": self.options,
        }
        if self.env is not None:
            wire["env"] = self.env
        if self.secrets:
            wire["secrets"] = list(self.secrets)
        if self.instance is not None:
            wire["instance"] = self.instance._wire
        if self.caller is not None:
            wire["caller"] = self.caller
        if self.stream:
            wire["stream"] = True
        if self.shm:
            wire["shm"] = True
        if self.chunks is not None:
            wire["chunks"] = list(self.chunks)
        return wire

    def served_wire(self) -> dict[str, Any]:
        """What an endpoint serving this call keeps (:data:`SERVED_FIELDS`)."""
        return {k: v for k, v in self.to_wire().items() if k in self.SERVED_FIELDS}

    @classmethod
    def from_wire(cls, data: Any, frame_count: int, message: str = MESSAGE) -> CallRequest:
        """Check a call request that came with ``frame_count`` frames; a hostile one is refused
        with a :class:`ProtocolError` naming the field, and never reaches the executor."""
        # Every call passes here: fields that are absent (or empty) cost one lookup each.
        _only_known(data, cls.FIELDS, message)
        get = data.get
        key = get("key")
        if type(key) is not str or not RUN_KEY.fullmatch(key):
            raise refused(message, "key", "a run key (up to 128 letters, digits, '_', '.' and '-')", key)
        mode = get("mode")
        if mode not in CALL_MODES:
            raise refused(message, "mode", f"one of {', '.join(CALL_MODES)}", mode)
        fn_id = get("fn_id")
        if type(fn_id) is not str or len(fn_id) > TEXT_MAX:
            raise refused(message, "fn_id", f"a string of at most {TEXT_MAX} characters", fn_id)
        n_fn = get("n_fn")
        if type(n_fn) is not int or n_fn not in (0, 1) or n_fn > frame_count:
            raise refused(message, "n_fn", f"0 or 1 (and at most the {frame_count} frames sent)", n_fn)
        function_ref = get("function_ref")
        if function_ref is not None:
            function_ref = FunctionRef.from_wire(function_ref, f"{message}'s function_ref")
        code = get("code")
        if code is not None:
            code = CodeOnCluster.from_wire(code, f"{message}'s code")
        options = get("options")
        if options is None or (type(options) is dict and not options):
            options = {}
        else:
            options = _call_options(options, message)
        refs = get("refs")
        refs = () if refs is None or (type(refs) is list and not refs) else _keys(data, "refs", message)
        env = get("env")
        if env is not None and (type(env) is not str or not 0 < len(env) <= NAME_MAX):
            raise refused(message, "env", f"an environment's name (at most {NAME_MAX} characters) or null", env)
        secrets = get("secrets")
        secrets = () if secrets is None else _texts(data, "secrets", message, "secret names")
        instance = get("instance")
        if instance is not None or mode == "create":
            instance = InstanceTarget.from_wire(instance, mode, message)
        caller = get("caller")
        if caller is not None and (type(caller) is not str or not TASK_KEY.fullmatch(caller)):
            raise refused(message, "caller", "the key of the call (or map chunk: KEY/N) that makes this one", caller)
        stream = get("stream", False)
        if type(stream) is not bool:
            raise refused(message, "stream", "true or false", stream)
        shm = get("shm", False)
        if type(shm) is not bool:
            raise refused(message, "shm", "true or false", shm)
        chunks = get("chunks")
        if mode == "map":
            if (type(chunks) is not list or not chunks or len(chunks) > LIST_MAX
                    or not all(_count(c) for c in chunks) or sum(chunks) != frame_count - n_fn):
                raise refused(message, "chunks", "the frame counts of the map's chunks, adding up to the argument "
                              "frames sent", chunks)
            chunks = tuple(chunks)
        elif chunks is not None:
            raise refused(message, "chunks", "absent from a call that is no map", chunks)
        return cls(key=key, mode=mode, fn_id=fn_id, n_fn=n_fn, function_ref=function_ref, code=code, refs=refs,
                   options=options, env=env, secrets=secrets, instance=instance, caller=caller, stream=stream,
                   shm=shm, chunks=chunks)

    @classmethod
    def served(cls, data: Any, name: str, frame_count: int) -> CallRequest:
        """The call an endpoint ``name`` serves (:data:`SERVED_FIELDS` of a call request), checked as
        a call of its own with ``frame_count`` frames."""
        message = "serve request's call"
        _only_known(data, cls.SERVED_FIELDS, message)
        return cls.from_wire({**data, "key": name, "mode": "call"}, frame_count, message)


def _call_options(options: Any, message: str) -> dict[str, Any]:
    _only_known(options, frozenset(CALL_OPTIONS), f"{message}'s options")
    timeout = options.get("timeout")
    if timeout is not None and (type(timeout) not in (int, float) or not 0 < timeout < 10**9):
        raise refused(f"{message}'s options", "timeout", "a positive number of seconds", timeout)
    return options


# -------------------------------------------------------------------------------------------------
# A call's header: server -> executor -> worker


@attrs.frozen(kw_only=True)
class CallHeader:
    """What a worker's runner needs to know of a call beside its frames (``Task.header``): which
    function (``fn_id``, cached by it; ``function_ref`` when it goes by reference), where the
    caller's ``code`` is, the call's ``mode``, the shared-memory prefix its large results may use,
    whether its generator's items ``stream``, the ``instance`` it is about, and for a call through
    an HTTP endpoint the request's ``http`` details (see :mod:`rh_core.worker.http_calls`)."""

    fn_id: str
    mode: str
    function_ref: FunctionRef | None = None
    code: CodeOnCluster | None = None
    shm_prefix: str | None = None
    stream: bool = False
    instance: InstanceTarget | None = None
    http: dict[str, Any] | None = None
    # Sent to a worker with every call: made into plain data once.
    _link: tuple = attrs.field(init=False, eq=False, repr=False, default=attrs.Factory(
        lambda self: self._make_link(), takes_self=True))

    @classmethod
    def of(cls, request: CallRequest, shm_prefix: str | None = None) -> CallHeader:
        """The header of a checked call request's task; the calls of one function share one."""
        shm_prefix = shm_prefix if request.shm else None
        key = (request.fn_id, request.mode, request.function_ref, request.code, shm_prefix, request.stream,
               request.instance)
        seen = _HEADERS.get(key)
        if seen is not None:
            return seen
        return _HEADERS.keep(key, cls(fn_id=request.fn_id, mode=request.mode, function_ref=request.function_ref,
                                      code=request.code, shm_prefix=shm_prefix, stream=request.stream,
                                      instance=request.instance))

    def _make_link(self) -> tuple:
        return (self.fn_id, self.mode, None if self.function_ref is None else self.function_ref.to_link(),
                None if self.code is None else self.code.to_link(), self.shm_prefix, self.stream,
                None if self.instance is None else self.instance.to_link(), self.http)

    def to_link(self) -> tuple:
        """Plain data for a worker's link (which carries no classes)."""
        return self._link

    @classmethod
    def from_link(cls, data: tuple) -> CallHeader:
        seen = _FROM_LINK.get(data)  # a worker runs the same function's calls over and over
        if seen is not None:
            return seen
        fn_id, mode, function_ref, code, shm_prefix, stream, instance, http = data
        header = cls(fn_id=fn_id, mode=mode, function_ref=function_ref and FunctionRef.from_link(function_ref),
                     code=code and CodeOnCluster.from_link(code), shm_prefix=shm_prefix, stream=stream,
                     instance=instance and InstanceTarget.from_link(instance), http=http)
        return header if http is not None else _FROM_LINK.keep(data, header)


# -------------------------------------------------------------------------------------------------
# Server <-> worker, over a link (rh_core.wire.link.Link: tuples of plain data)

READY = ("ready",)


def task_to_link(task: Task, frame: Callable[[Any], Any]) -> tuple:
    """The message that gives a worker ``task``; ``frame`` wraps each buffer for the link."""
    refs = [(key, outcome.status, [frame(f) for f in outcome.frames]) for key, outcome in task.refs.items()]
    return ("task", task.key, task.header.to_link(), frame(task.function or b""), [frame(f) for f in task.arguments],
            refs, task.variables)


def task_from_link(message: tuple) -> Task:
    _, key, header, function, arguments, refs, variables = message
    return Task(key=key, header=CallHeader.from_link(header), function=function, arguments=arguments,
                refs={ref_key: Outcome(status=status, frames=frames) for ref_key, status, frames in refs},
                variables=variables)


def done_to_link(key: str, outcome: Outcome, frame: Callable[[Any], Any]) -> tuple:
    """The message a worker answers a task with: what came of it."""
    return ("done", key, outcome.status, outcome.logged, [frame(f) for f in outcome.frames],
            [line.to_link() for line in outcome.output])


def done_from_link(message: tuple) -> tuple[str, Outcome]:
    _, key, status, logged, frames, output = message
    return key, Outcome(status=status, frames=frames, logged=logged,
                        output=tuple(OutputLine.from_link(line) for line in output))


def cancel_to_link(key: str) -> tuple:
    """Ask an instance's worker to stop call ``key``; it answers :func:`cancelled_to_link`."""
    return ("cancel", key)


def cancelled_to_link(key: str, stopped: bool) -> tuple:
    return ("cancel", key, stopped)


# -------------------------------------------------------------------------------------------------
# Worker -> server: log lines and a generator's items (ZeroMQ frames to the log endpoint)

ITEM = b"item"  # the stream of a generator's item: its pickled frames follow
EOF = b"eof"  # the end of a call's output: the server may deliver its result


def log_frames(key: str, line: OutputLine) -> list[bytes]:
    frames = [key.encode(), line.stream.encode(), line.text]
    return frames if line.item is None else [*frames, b"%d" % line.item]


def item_frames(key: str, frames: Sequence[Any]) -> list[Any]:
    return [key.encode(), ITEM, *frames]


def eof_frames(key: str) -> list[bytes]:
    return [key.encode(), EOF, b""]


@attrs.frozen
class LogMessage:
    """One message to the log endpoint: ``stream`` is ``stdout``/``stderr`` (``parts`` holds the
    text, then the map item that wrote it, when a map item did), :data:`ITEM` (``parts`` are the
    item's frames) or :data:`EOF`."""

    key: str
    stream: bytes
    parts: Sequence[Any]

    @classmethod
    def from_wire(cls, frames: Sequence[Any]) -> LogMessage:
        if len(frames) < 2:
            raise ProtocolError(f"malformed log message: {len(frames)} frames, not [key, stream, ...]")
        return cls(bytes(frames[0]).decode("utf-8", "replace"), bytes(frames[1]), frames[2:])

    def line(self) -> OutputLine:
        """The output line a ``stdout``/``stderr`` message carries."""
        text = bytes(self.parts[0]) if self.parts else b""
        item = int(bytes(self.parts[1])) if len(self.parts) > 1 else None
        return OutputLine(self.stream.decode(), text, item)


@attrs.frozen
class OutputLine:
    """Text a call wrote: one or more whole lines (or the unfinished end of its output) of one
    ``stream`` (``stdout``/``stderr``; ``progress`` for a map's progress marks). For a ``map``,
    ``item`` is the item that wrote it, counted within its chunk, and ``chunk`` that chunk (set by
    the server as it replies: a worker knows only its own chunk)."""

    stream: str
    text: bytes
    item: int | None = None
    chunk: int | None = None

    def to_link(self) -> tuple:
        return self.stream, self.text, self.item

    @classmethod
    def from_link(cls, data: tuple) -> OutputLine:
        return cls(*data)

    def fields(self) -> dict[str, Any]:
        """The fields of the ``log`` reply that carries it to a client (its text is the frame)."""
        fields: dict[str, Any] = {"stream": self.stream}
        if self.item is not None:
            fields["item"] = self.item
        if self.chunk is not None:
            fields["chunk"] = self.chunk
        return fields

    @classmethod
    def from_reply(cls, fields: Mapping[str, Any], text: Any) -> OutputLine:
        """A line from a ``log`` reply's fields and frame, or from a ``result`` reply's ``output``."""
        stream, item, chunk = fields.get("stream"), fields.get("item"), fields.get("chunk")
        if not (isinstance(stream, str) and _count_or_none(item) and _count_or_none(chunk)):
            raise refused("log reply", "stream", "a stream name, and counts for item and chunk", fields)
        return cls(stream, bytes(text), item, chunk)


def output_to_reply(outcomes: Sequence[Outcome]) -> tuple[list[dict[str, Any]], list[bytes]]:
    """The output lines a ``result`` reply carries before its outcomes' frames: their fields (the
    reply's ``output``) and their texts (its first frames). A map's chunks are counted in order."""
    fields: list[dict[str, Any]] = []
    texts: list[bytes] = []
    chunked = len(outcomes) > 1
    for chunk, outcome in enumerate(outcomes):
        for line in outcome.output:
            fields.append(attrs.evolve(line, chunk=chunk).fields() if chunked else line.fields())
            texts.append(line.text)
    return fields, texts


def output_from_reply(fields: Any, frames: Sequence[Any]) -> tuple[list[OutputLine], Sequence[Any]]:
    """The output lines of a ``result`` reply (see :func:`output_to_reply`) and the frames after them."""
    if not isinstance(fields, list) or len(fields) > len(frames):
        raise refused("result reply", "output", "a list of line fields, one per leading frame", fields)
    return [OutputLine.from_reply(line, text) for line, text in zip(fields, frames)], frames[len(fields):]


# -------------------------------------------------------------------------------------------------
# Server -> client: the result of calls


@attrs.frozen
class ResultParts:
    """The ``parts`` of a ``result`` reply: the status of each outcome it carries and how many of
    the reply's frames are that outcome's, in order."""

    parts: tuple[tuple[str, int], ...]

    @classmethod
    def of(cls, outcomes: Sequence[Outcome]) -> ResultParts:
        return cls(tuple((o.status, len(o.frames)) for o in outcomes))

    def to_wire(self) -> dict[str, Any]:
        return {"parts": [list(part) for part in self.parts]}

    @classmethod
    def from_wire(cls, header: Any, frame_count: int) -> ResultParts:
        parts = header.get("parts") if isinstance(header, dict) else None
        if (not isinstance(parts, list)
                or not all(isinstance(p, list) and len(p) == 2 and p[0] in OUTCOME_STATUSES and _count(p[1])
                           for p in parts)
                or sum(p[1] for p in parts) != frame_count):
            raise refused("result reply", "parts", f"[status, frame count] pairs adding up to the {frame_count} "
                          "frames sent", parts)
        return cls(tuple((status, count) for status, count in parts))

    def split(self, frames: Sequence[Any]) -> Iterator[tuple[str, Sequence[Any]]]:
        """``(status, frames)`` of each outcome."""
        start = 0
        for status, count in self.parts:
            yield status, frames[start:start + count]
            start += count


@attrs.frozen
class Failure:
    """A ``fail`` reply: the request was refused or failed; ``type`` names the error class (one of
    :mod:`rh_core.errors`, or ``TimeoutError``/``KeyError``) and ``message`` says why."""

    type: str
    message: str

    def to_wire(self) -> dict[str, str]:
        return {"type": self.type, "message": self.message}

    @classmethod
    def from_wire(cls, header: Any) -> Failure:
        error_type = header.get("type") if isinstance(header, dict) else None
        message = header.get("message") if isinstance(header, dict) else None
        return cls(error_type if isinstance(error_type, str) else "RhError",
                   message if isinstance(message, str) else f"the server failed the request: {_shown(header)}")


# -------------------------------------------------------------------------------------------------
# The other operations a client sends


_OPS: dict[str, type[OpRequest]] = {}


def _keys(data: dict, field: str, message: str) -> tuple[str, ...]:
    value = data.get(field)
    if type(value) is not list or len(value) > LIST_MAX:
        raise refused(message, field, "a list of run keys", value)
    return tuple(map(_run_key_in(message, field), value))  # each one's error says what a run key is


def _key(data: dict, field: str, message: str) -> str:
    return _run_key_in(message, field)(data.get(field))


def _run_key_in(message: str, field: str) -> Callable[[Any], str]:
    """A check of the run keys of ``field``, naming it."""
    def check(key: Any) -> str:
        if isinstance(key, str) and RUN_KEY.fullmatch(key):
            return key
        try:
            return check_run_key(key)
        except ProtocolError as exc:
            raise ProtocolError(f"malformed {message}: {field!r}: {exc}") from None
    return check


def _timeout(data: dict, field: str, message: str) -> float | None:
    value = data.get(field)
    if value is not None and (type(value) not in (int, float) or not 0 <= value < 10**9):
        raise refused(message, field, "a number of seconds or null", value)
    return value


def _object(data: dict, field: str, message: str) -> dict | None:
    value = data.get(field)
    if value is not None and not isinstance(value, dict):
        raise refused(message, field, "an object", value)
    return value


def _objects(data: dict, field: str, message: str) -> list:
    value = data.get(field)
    if not isinstance(value, list) or len(value) > LIST_MAX or not all(isinstance(v, dict) for v in value):
        raise refused(message, field, "a list of objects", value)
    return value


def _name(data: dict, field: str, message: str) -> str | None:
    return _text(data, field, message, optional=True)


def _python(data: dict, field: str, message: str) -> str | None:
    return _text(data, field, message, 32, optional=True)


#: How each kind of field of an operation is checked: ``(data, field, message) -> value``.
_CHECKS: dict[str, Callable[[dict, str, str], Any]] = {
    "keys": _keys, "key": _key, "timeout": _timeout, "flag": _flag, "name": _name, "object": _object,
    "objects": _objects, "names": lambda d, f, m: _texts(d, f, m, "names"), "python": _python,
}


def _field(check: str, default: Any = None) -> Any:
    return attrs.field(default=default, metadata={"check": check})


class OpRequest:
    """Base of the requests of operations other than ``call``: ``OP`` names the operation, and each
    field's ``check`` metadata how it is checked (see :data:`_CHECKS`)."""

    __slots__ = ()
    OP: ClassVar[str]

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        _OPS[cls.OP] = cls

    def to_wire(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in attrs.fields(type(self))}

    def __repr__(self) -> str:
        fields = ", ".join(f"{name}={value!r}" for name, value in self.to_wire().items())
        return f"{type(self).__name__}({fields})"

    def __eq__(self, other: object) -> bool:
        return type(self) is type(other) and self.to_wire() == other.to_wire()  # type: ignore[attr-defined]

    __hash__ = None  # type: ignore[assignment]

    @classmethod
    def from_wire(cls, data: Any) -> OpRequest:
        message = f"{cls.OP} request"
        fields = attrs.fields(cls)
        _only_known(data, frozenset(f.name for f in fields) | ENVELOPE_FIELDS, message)
        values = {}
        for f in fields:
            if f.name in data or f.default is attrs.NOTHING:
                values[f.name] = _CHECKS[f.metadata["check"]](data, f.name, message)
        return cls(**values)


#: The class decorator of every operation's request. attrs compiles the methods it makes for each
#: class, which every process that imports this module pays for (a server at start, a client at its
#: first call): these get only their ``__init__`` that way, and share the base class's other methods.
_op_request = attrs.frozen(kw_only=True, repr=False, eq=False, getstate_setstate=False, match_args=False)


@_op_request
class GetRequest(OpRequest):
    OP = "get"
    keys: tuple[str, ...] = _field("keys", attrs.NOTHING)
    timeout: float | None = _field("timeout")


@_op_request
class LogsRequest(OpRequest):
    OP = "logs"
    key: str = _field("key", attrs.NOTHING)
    follow: bool = _field("flag", False)


@_op_request
class ReleaseInstanceRequest(OpRequest):
    OP = "release_instance"
    name: str | None = _field("name")
    instance_id: str | None = _field("name")


@_op_request
class InstallRequest(OpRequest):
    OP = "install"
    env: str | None = _field("name")
    steps: list[dict] = _field("objects", attrs.NOTHING)


@_op_request
class ServeRequest(OpRequest):
    """Serve a call as an HTTP endpoint; ``call`` holds :data:`CallRequest.SERVED_FIELDS`."""

    OP = "serve"
    name: str | None = _field("name")
    public: bool = _field("flag", False)
    call: dict | None = _field("object")


def _one_field(op: str, field: str, annotation: str, check: str, default: Any = None) -> type[OpRequest]:
    """The request of an operation with one field, checked by ``check`` (see :data:`_CHECKS`)."""
    name = "".join(word.title() for word in op.split("_")) + "Request"
    return _op_request(type(name, (OpRequest,), {
        "OP": op, "__annotations__": {field: annotation}, field: _field(check, default)}))


def _bare(op: str) -> type[OpRequest]:
    """The request of an operation with no fields."""
    name = "".join(word.title() for word in op.split("_")) + "Request"
    return _op_request(type(name, (OpRequest,), {"OP": op}))


PingRequest = _one_field("ping", "python", "str | None", "python")  # the client's major.minor
# The server says what a run key is for a key the user chose, so that one is only a string here.
PutRequest = _one_field("put", "key", "str", "name", attrs.NOTHING)
StatusRequest = _one_field("status", "keys", "tuple[str, ...]", "keys", attrs.NOTHING)
ReleaseRequest = _one_field("release", "keys", "tuple[str, ...]", "keys", attrs.NOTHING)
CancelRequest = _one_field("cancel", "key", "str", "key", attrs.NOTHING)
# A secret's name and contents, checked where a secret is made (rh.secret) and again where the
# cluster's server stores one (rh_core.server.secret_store).
SECRET_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
ENV_VARIABLE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def check_secret_name(name: Any) -> str:
    """``name`` when it can name a secret; else a SecretError saying what a name may hold."""
    if not isinstance(name, str) or not SECRET_NAME.match(name):
        raise SecretError(f"invalid secret name {name!r}: use letters, digits, '.', '_' or '-' (at most 64, not "
                          "starting with punctuation)")
    return name


def check_secret_contents(name: str, values: Any, files: Any) -> None:
    """Refuse values that are not ``{VARIABLE_NAME: str}`` and files that are not ``{"~/path": str}``,
    naming the key at fault but never a value."""
    if not isinstance(values, Mapping):
        raise SecretError(f"secret {name!r}: values must be a dict of environment variable names to strings")
    for key, value in values.items():
        if not isinstance(key, str) or not ENV_VARIABLE.match(key):
            raise SecretError(f"secret {name!r}: {key!r} is not an environment variable name (letters, digits and "
                              "'_', not starting with a digit)")
        if not isinstance(value, str):
            raise SecretError(f"secret {name!r}: the value of {key} must be a string, not {type(value).__name__}")
    if not isinstance(files, Mapping):
        raise SecretError(f"secret {name!r}: files must be a dict of paths under '~/' to their text")
    for path, text in files.items():
        if not isinstance(path, str) or not path.startswith("~/") or ".." in path.split("/"):
            raise SecretError(f"secret {name!r}: file {path!r} must be a path under the home directory ('~/...', "
                              "without '..')")
        if not isinstance(text, str):
            raise SecretError(f"secret {name!r}: the text of {path} must be a string")


DeleteSecretsRequest = _one_field("delete_secrets", "names", "tuple[str, ...]", "names", attrs.NOTHING)
RunAppRequest = _one_field("run_app", "app", "dict | None", "object")  # an app's record (rh_core.server.app_host)
HttpTokenRequest = _one_field("http_token", "rotate", "bool", "flag", False)
UnserveRequest = _one_field("unserve", "name", "str | None", "name")
RemoveAppRequest = _one_field("remove_app", "name", "str | None", "name")
AppLogsRequest = _one_field("app_logs", "name", "str | None", "name")
CancelAllRequest = _bare("cancel_all")
InstancesRequest = _bare("instances")
RunsRequest = _bare("runs")
ShutdownRequest = _bare("shutdown")
SecretsRequest = _bare("secrets")
SyncSecretsRequest = _bare("sync_secrets")  # the secrets travel as one JSON frame
EndpointsRequest = _bare("endpoints")
AppsRequest = _bare("apps")

#: Every operation other than ``call``, by name, to its request class.
OPS: dict[str, type[OpRequest]] = _OPS


def request_of(op: Any, data: dict) -> OpRequest:
    """The checked request of operation ``op`` (not ``call``)."""
    cls = OPS.get(op) if isinstance(op, str) else None
    if cls is None:
        raise ProtocolError(f"unknown operation {_shown(op)}")
    return cls.from_wire(data)
