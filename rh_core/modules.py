"""Remote classes: ``rh.module(MyModel).to(cluster, name="llm")``, whose instances live on the cluster,
each in a process of its own (on Ray: an actor), and are called as if they were local.

    Model = rh.module(MyModel).to(gpu, name="llm")
    m = Model(path="...")          # the constructor runs once, on the cluster
    m.generate(x); m.generate.remote(x); m.generate.map(xs); await m.generate.acall(x)
    m.config                        # plain attributes are read from the cluster
    m.release()                     # ends it (so does the cluster's server stopping)

A class goes to the cluster as a function does (by reference from a module, by value from
``__main__``). Calling the module gets or creates the instance named ``name``: one that lives there
is reached as it is, from any process, without running the constructor again.
"""

from __future__ import annotations

import inspect
import os
import types
from typing import Any, Generic, TypeVar

import attrs

from rh_core.clusters.base import Cluster, decode_outcome, split_parts
from rh_core.errors import RhError
from rh_core.function import Function, _Shipped, function
from rh_core.wire.messages import NAME_PATTERN, InstanceTarget, ReleaseInstanceRequest

T = TypeVar("T")


def _check_name(name: str) -> str:
    if not isinstance(name, str) or not NAME_PATTERN.fullmatch(name):
        raise ValueError(f"instance name {name!r} is not usable: it must match {NAME_PATTERN.pattern} "
                         "(letters, digits, _ . : -; no slashes), e.g. 'llm' or 'model-1'")
    return name


@attrs.frozen(kw_only=True)
class Module(Generic[T]):
    """A class bound (or not yet) to a cluster. Create with :func:`module`, place with ``.to()``;
    calling it returns the :class:`RemoteInstance` of that name on the cluster, made if need be."""

    cls: type[T]
    name: str | None = None  # the instance's name on the cluster; None: a new instance per call
    max_concurrency: int = 1
    _constructor: Function | None = attrs.field(default=None, alias="constructor", repr=False)

    @property
    def system(self) -> Cluster | None:
        return self._constructor.system if self._constructor is not None else None

    def to(self, system: Cluster, *, name: str | None = None, reqs: list[Any] | None = None,
           env: Any = None) -> Module[T]:
        """Send the class to ``system`` (with ``reqs``, into ``env``, as :meth:`Function.to` does);
        its instance will be called ``name`` there, and found by that name from other processes."""
        name = _check_name(name) if name is not None else self.name
        constructor = function(self.cls, name=name or self.cls.__name__).to(system, reqs=reqs, env=env)
        return attrs.evolve(self, name=name, constructor=constructor)

    def options(self, **options: Any) -> Module[T]:
        """A copy whose instances are made with these call options (see :meth:`Function.options`):
        ``num_cpus``, ``num_gpus``, ``resources`` and ``memory`` reserve what a Ray actor holds for
        its life; ``timeout``, ``stream_logs`` and ``cancel_on_interrupt`` apply to the constructor
        and are the defaults of the instance's method calls."""
        if self._constructor is None:
            raise RhError(f"class {self.cls.__qualname__!r} is not on a cluster yet: call .to(cluster) before .options()")
        return attrs.evolve(self, constructor=self._constructor.options(**options))

    def __call__(self, *args: Any, **kwargs: Any) -> RemoteInstance[T]:
        """The instance ``name`` on the cluster: the one that lives there, whatever ``args`` say, or a
        new one made with ``cls(*args, **kwargs)`` there (its output shows with ``stream_logs=True``).
        A constructor that raises raises here, and nothing is kept."""
        constructor = self._constructor
        if constructor is None or constructor.system is None:
            raise RhError(f"class {self.cls.__qualname__!r} is not on a cluster yet: use "
                          "rh.module(cls).to(cluster, name=...) first")
        name = self.name or f"{self.cls.__name__}-{os.urandom(4).hex()}"
        target = InstanceTarget(name=name, id=os.urandom(8).hex(), max_concurrency=self.max_concurrency,
                                class_name=f"{self.cls.__module__}.{self.cls.__qualname__}")
        options = constructor._take_call_options(kwargs)
        reply = attrs.evolve(constructor, instance=target)._request("create", args, kwargs, options)
        if reply.kind != "info":
            ((status, frames),) = split_parts(reply)
            decode_outcome(status, frames)  # raises the constructor's error
            raise RhError(f"the server made no instance {name!r} and gave no reason")
        return RemoteInstance(self, name, reply.header["instance_id"])

    def __repr__(self) -> str:
        where = self.system.name if self.system is not None else "not sent"
        return f"<Module {self.cls.__qualname__} as {self.name or '(unnamed)'} on {where}>"


class RemoteInstance(Generic[T]):
    """An instance of a class that lives on a cluster. Its methods are :class:`Function` objects
    (``m.generate(x)``, ``.remote``, ``.map``, ``await .acall``, generators stream), run by the
    instance one at a time unless the module says ``max_concurrency``; any other attribute is read
    from the instance there (``m.config``). ``release()``, ``method(name)``, ``instance_name`` and
    ``instance_id`` are rh's own: reach a method of the same name with ``m.method("release")``.

    The handle names one incarnation of the instance: if the instance's process died, or another
    instance was created under its name, calls say so (:class:`~rh_core.errors.InstanceDiedError`,
    :class:`~rh_core.errors.InstanceNotFoundError`) rather than reach other state.
    """

    __slots__ = ("_module", "_name", "_id", "_methods")

    def __init__(self, module: Module[T], name: str, instance_id: str):
        self._module, self._name, self._id = module, name, instance_id
        self._methods: dict[str, Function] = {}

    @property
    def instance_name(self) -> str:
        return self._name

    @property
    def instance_id(self) -> str:
        """This incarnation of the instance: a new one each time it is created under its name."""
        return self._id

    def method(self, name: str) -> Function:
        """The instance's method ``name``, as a function bound to it."""
        fn = self._methods.get(name)
        if fn is None:
            constructor = self._module._constructor
            assert constructor is not None and constructor._shipped is not None
            shipped = constructor._shipped
            fn = Function(
                fn=getattr(self._module.cls, name, None) or _attribute,  # its signature: generator? stream_logs?
                name=f"{self._name}.{name}", system=constructor.system, env=constructor.env,
                call_options=constructor.call_options,
                # One gate per instance (its max_concurrency); the class's code digest for a staleness check.
                shipped=_Shipped(f"instance:{self._id}", None, None, shipped.code),
                instance=InstanceTarget(name=self._name, id=self._id, method=name),
            )
            self._methods[name] = fn
        return fn

    def __getattr__(self, attribute: str) -> Any:
        if attribute.startswith("__") and attribute.endswith("__"):
            raise AttributeError(attribute)  # pickle, copy and friends ask for these: not the instance's
        if _is_method(self._module.cls, attribute):
            return self.method(attribute)
        return self.method("__getattribute__")(attribute)

    def release(self) -> bool:
        """End the instance on the cluster (its process stops). False when it was gone already."""
        system = self._module.system
        assert system is not None
        return bool(system.send(ReleaseInstanceRequest(name=self._name, instance_id=self._id)).header["released"])

    def __reduce__(self) -> tuple:
        return RemoteInstance, (self._module, self._name, self._id)

    def __repr__(self) -> str:
        system = self._module.system
        return f"<RemoteInstance {self._name} of {self._module.cls.__qualname__} on {system.name if system else '?'}>"


def _is_method(cls: type, attribute: str) -> bool:
    """Whether ``attribute`` of instances of ``cls`` is a method (else it is read as data: instance
    attributes, class data, properties)."""
    try:
        member = inspect.getattr_static(cls, attribute)
    except AttributeError:
        return False  # set on the instance (in __init__, say): data
    return isinstance(member, (types.FunctionType, staticmethod, classmethod)) or (
        callable(member) and not hasattr(member, "__get__"))


def _attribute(name: str) -> Any:  # pragma: no cover - stands in for a method the client's class lacks
    """Reads an attribute of the instance on the cluster."""


def module(cls: type[T], *, name: str | None = None, max_concurrency: int = 1) -> Module[T]:
    """Wrap a class so its instances live on a cluster (``.to(cluster, name=...)``, then call it).

    ``max_concurrency``: how many method calls of one instance may run at once (default 1: one at a
    time, in arrival order); async methods share the instance's event loop, plain ones run in threads.
    """
    if not isinstance(cls, type):
        raise TypeError(f"rh.module takes a class, got {type(cls).__name__}; for a function use rh.function")
    if not isinstance(max_concurrency, int) or isinstance(max_concurrency, bool) or max_concurrency < 1:
        raise ValueError(f"max_concurrency must be a positive integer, got {max_concurrency!r}")
    return Module(cls=cls, name=_check_name(name) if name is not None else None, max_concurrency=max_concurrency)
