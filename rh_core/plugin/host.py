"""The plugin host: loads plugins through pluggy and offers one typed method per hook.

The rest of rh_core never touches ``pm.hook``; it asks the host. Environment variables are read
when a host is created, never at import:

* ``RH_DISABLE_PLUGIN_AUTOLOAD=1`` loads only the built-in plugins;
* ``RH_PLUGINS=ray,pip`` loads only the named entry points (an allow-list).
"""

from __future__ import annotations

import difflib
import functools
import importlib
import importlib.metadata
import os
import traceback
from collections.abc import Callable, Collection, Iterator, Mapping
from typing import TYPE_CHECKING, Any

import attrs
import pluggy

from rh_core.plugin import hookspecs
from rh_core.errors import PluginError, UnknownNameError
from rh_core.plugin.interfaces import check_keep_name

if TYPE_CHECKING:
    import click

    from rh_core.clusters.base import Cluster
    from rh_core.plugin.interfaces import InstallerClaim

ENTRY_POINT_GROUP = "rh_core.plugins"
BUILTIN_PLUGINS = ("rh_core.builtin.local_transport", "rh_core.builtin.process_executor",
                   "rh_core.builtin.dir_store", "rh_core.builtin.s3_store", "rh_core.builtin.secret_providers")
KINDS = ("provisioner", "transport", "installer", "executor", "store", "builtin", "cluster_preset",
         "secret_provider")

#: Names that the plugins published with rh_core register, by kind, and the distribution that
#: brings each: asking for one that is not installed says what to ``pip install``. (Only SkyPilot's
#: most used clouds are listed: rh-sky registers every cloud SkyPilot knows.)
KNOWN_NAMES: dict[str, dict[str, str]] = {
    "executor": {"ray": "rh-ray"},
    "transport": {"ssh": "rh-byo-ssh"},
    "provisioner": {"byo": "rh-byo-ssh", "gcp-direct": "rh-gcp",
                    **dict.fromkeys(("sky", "cheapest", "aws", "gcp", "azure", "lambda", "kubernetes", "k8s",
                                     "runpod", "oci", "nebius", "vast", "fluidstack", "paperspace", "cudo", "do",
                                     "ibm", "scp", "vsphere"), "rh-sky")},
    "installer": {"pip": "rh-pip", "reqs": "rh-pip", "local": "rh-pip", "conda": "rh-conda", "git": "rh-git"},
}

#: ``rh.cluster`` keywords that the provisioners published with rh_core claim, and the distribution
#: that brings each: ``rh.cluster(ips=...)`` without it says what to ``pip install``.
KNOWN_CLAIMS: dict[str, str] = {"ips": "rh-byo-ssh"}


def unknown_name_hint(kind: str, name: str, valid: list[str], failed: Mapping[str, PluginInfo]) -> str:
    """What to say about an unknown ``name``: the distribution that brings it (or that it failed to
    load, and why), else the near misses among ``valid``."""
    distribution = KNOWN_NAMES.get(kind, {}).get(name)
    if distribution is not None:
        broken = next((info for info in failed.values() if info.distribution == distribution), None)
        if broken is not None:
            return (f"it comes with {distribution}, which is installed but failed to load ({broken.error}); "
                    f"`rh plugins` shows it")
        return f"it comes with the {distribution} plugin: `pip install {distribution}`"
    near = difflib.get_close_matches(name, valid, n=3, cutoff=0.6)
    said = [f"did you mean {' or '.join(repr(n) for n in near)}?"] if near else []
    if failed:
        said.append(f"the plugin(s) {', '.join(sorted(failed))} failed to load and may be what provides it "
                    "(`rh plugins` says why)")
    return "; ".join(said)


@attrs.frozen(kw_only=True)
class PluginInfo:
    """One row of ``rh plugins``."""

    name: str
    distribution: str | None
    version: str | None
    hooks: tuple[str, ...]
    error: str | None = None


@attrs.define
class Registry:
    """Implementations of one plugin kind by name; ``"module:attr"`` targets import on first use."""

    kind: str
    _targets: dict[str, Any] = attrs.field(factory=dict)
    _owners: dict[str, str] = attrs.field(factory=dict)
    _keeps: dict[str, tuple[str, ...]] = attrs.field(factory=dict)
    _claims: dict[str, str] = attrs.field(factory=dict)  # an rh.cluster keyword -> the provisioner claiming it
    _failed: Mapping[str, PluginInfo] = attrs.field(factory=dict)  # plugins that failed to load, by name

    def unknown(self, name: str, *, called: str | None = None) -> UnknownNameError:
        """The error for a name nobody registered, with what to install or the near misses;
        ``called`` is what the user calls this kind (``"install method"``)."""
        return UnknownNameError(called or self.kind, name, self.names(),
                                unknown_name_hint(self.kind, name, self.names(), self._failed))

    def register(self, name: str, target: Any, *, aliases: tuple[str, ...] = (), keeps: tuple[str, ...] = (),
                 claims_keywords: tuple[str, ...] = (), owner: str = "?") -> None:
        if keeps and self.kind != "executor":
            raise PluginError(f"{owner!r} registers {self.kind} {name!r} with keeps={keeps!r}, which only "
                              "executors declare (what they can keep running across a server restart)")
        for thing in keeps:
            check_keep_name(thing)
        if claims_keywords and self.kind != "provisioner":
            raise PluginError(f"{owner!r} registers {self.kind} {name!r} with claims_keywords={claims_keywords!r}, "
                              "which only provisioners declare (the rh.cluster keywords that choose them)")
        for keyword in claims_keywords:
            if keyword in self._claims:
                raise PluginError(
                    f"rh.cluster's {keyword}= is claimed by both {self._claims[keyword]!r} "
                    f"({self._owners[self._claims[keyword]]!r}) and {name!r} ({owner!r}); uninstall one of them "
                    "or disable it with RH_PLUGINS"
                )
        for key in (name, *aliases):
            if key in self._targets:
                raise PluginError(
                    f"{self.kind} {key!r} is registered by both {self._owners[key]!r} and {owner!r}; "
                    f"uninstall one of them or disable it with RH_PLUGINS"
                )
            self._targets[key] = target
            self._owners[key] = owner
            self._keeps[key] = tuple(keeps)
        self._claims.update(dict.fromkeys(claims_keywords, name))

    def names(self) -> list[str]:
        return sorted(self._targets)

    def owner(self, name: str) -> str:
        """The name of the plugin that registered ``name``."""
        if name not in self._owners:
            raise self.unknown(name)
        return self._owners[name]

    def keeps(self, name: str) -> tuple[str, ...]:
        """What the executor registered as ``name`` can keep running across a server restart
        (``restart_server(keep=...)``), as it declared when it registered; read without importing it."""
        if name not in self._owners:
            raise self.unknown(name)
        return self._keeps[name]

    def claiming(self, keywords: Collection[str]) -> str | None:
        """The name of the provisioner that claims one of ``keywords`` (``rh.cluster``'s keyword
        arguments) when the user names none, as it declared when it registered; None when none does."""
        return next((self._claims[keyword] for keyword in keywords if keyword in self._claims), None)

    def get(self, name: str) -> Any:
        """The implementation registered as ``name``, imported if it was registered as a string."""
        try:
            target = self._targets[name]
        except KeyError:
            raise self.unknown(name) from None
        if isinstance(target, str):
            module_name, _, attr = target.partition(":")
            try:
                target = getattr(importlib.import_module(module_name), attr)
            except ImportError as exc:
                raise PluginError(
                    f"{self.kind} {name!r} needs a module that is not installed ({exc.name}); "
                    f"install the plugin {self._owners[name]!r} with its dependencies"
                ) from exc
            self._targets[name] = target
        return target


class PluginHost:
    """Loads built-in and installed plugins and answers for them; see module docstring."""

    def __init__(self, *, autoload: bool | None = None, allow: list[str] | None = None):
        if autoload is None:
            autoload = os.environ.get("RH_DISABLE_PLUGIN_AUTOLOAD", "") in ("", "0")
        if allow is None and os.environ.get("RH_PLUGINS"):
            allow = [name.strip() for name in os.environ["RH_PLUGINS"].split(",") if name.strip()]
        self._pm = pluggy.PluginManager("rh_core")
        self._pm.add_hookspecs(hookspecs)
        if os.environ.get("RH_TRACE_HOOKS"):
            self._pm.trace.root.setwriter(print)
            self._pm.enable_tracing()
        self._failed: dict[str, PluginInfo] = {}
        self._distributions: dict[str, importlib.metadata.Distribution] = {}
        self._registries: dict[str, Registry] = {}
        for module_name in BUILTIN_PLUGINS:
            self._pm.register(importlib.import_module(module_name), name=module_name.rsplit(".", 1)[1])
        if autoload:
            self._load_entry_points(allow)
        self._pm.check_pending()

    def _load_entry_points(self, allow: list[str] | None) -> None:
        # Each plugin in its own try: one broken plugin is reported, never fatal to the others.
        for entry_point in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
            if allow is not None and entry_point.name not in allow:
                continue
            dist = entry_point.dist
            if self._pm.get_plugin(entry_point.name) is not None or entry_point.name in self._failed:
                continue
            try:
                plugin = entry_point.load()
                self._pm.register(plugin, name=entry_point.name)
                unknown = sorted(caller.name for caller in self._pm.get_hookcallers(plugin) or () if not caller.has_spec())
                if unknown:
                    self._pm.unregister(plugin)
                    raise PluginError(
                        f"implements hooks this rh_core does not have: {', '.join(unknown)}; it may need a newer "
                        f"rh_core (this is {_own_version()}), or the hook names are misspelt"
                    )
                if dist is not None:
                    self._distributions[entry_point.name] = dist
            except Exception as exc:
                error = "".join(traceback.format_exception_only(type(exc), exc)).strip()
                self._failed[entry_point.name] = PluginInfo(
                    name=entry_point.name,
                    distribution=dist.metadata["Name"] if dist else None,
                    version=dist.version if dist else None,
                    hooks=(),
                    error=error,
                )

    def register(self, plugin: object, name: str | None = None) -> None:
        """Register a plugin object by hand (tests, notebooks); registries are rebuilt."""
        self._pm.register(plugin, name=name)
        self._pm.check_pending()
        self._registries.clear()

    # --- introspection -------------------------------------------------------------------------

    def plugins(self) -> list[PluginInfo]:
        """Every loaded plugin with its version and hooks, then every plugin that failed to load."""
        rows = []
        for name, plugin in self._pm.list_name_plugin():
            if plugin is None:
                continue
            dist = self._distributions.get(name)
            hooks = tuple(sorted(caller.name for caller in self._pm.get_hookcallers(plugin) or ()))
            rows.append(
                PluginInfo(
                    name=name,
                    distribution=dist.metadata["Name"] if dist else "rh-core (built in)",
                    version=dist.version if dist else _own_version(),
                    hooks=hooks,
                )
            )
        return rows + list(self._failed.values())

    def distribution_of(self, plugin_name: str) -> str | None:
        """The distribution (``rh-ray``) that installed a plugin; None for built-in plugins."""
        dist = self._distributions.get(plugin_name)
        return dist.metadata["Name"] if dist is not None else None

    # --- the plugin kinds ----------------------------------------------------------------------

    def registry(self, kind: str) -> Registry:
        """All implementations of one plugin kind (``"executor"``, ``"transport"``, ...)."""
        if kind not in KINDS:
            raise UnknownNameError("plugin kind", kind, list(KINDS))
        if kind not in self._registries:
            registry = Registry(kind, failed=self._failed)
            for owner, call in self._each_implementation(f"rh_register_{kind}s"):

                def register(name: str, target: Any, *, aliases=(), keeps=(), claims_keywords=(),
                             _owner=owner) -> None:
                    registry.register(name, target, aliases=tuple(aliases), keeps=tuple(keeps),
                                      claims_keywords=tuple(claims_keywords), owner=_owner)

                call(register=register)
            self._registries[kind] = registry
        return self._registries[kind]

    def executor(self, name: str) -> Callable[..., Any]:
        return self.registry("executor").get(name)

    def transport(self, name: str) -> Callable[..., Any]:
        return self.registry("transport").get(name)

    def provisioner(self, name: str) -> Callable[..., Any]:
        return self.registry("provisioner").get(name)

    def provisioner_claiming(self, keywords: Collection[str]) -> str:
        """The name of the provisioner for a cluster whose ``rh.cluster`` keywords (or saved spec)
        are ``keywords`` and that names no provisioner: the one that claims one of them
        (rh-byo-ssh's ``byo`` claims ``ips``). The core names no provisioner itself."""
        registry = self.registry("provisioner")
        claimed = registry.claiming(keywords)
        if claimed is None:
            wanted = [keyword for keyword in keywords if keyword in KNOWN_CLAIMS]
            hint = (f"`pip install {KNOWN_CLAIMS[wanted[0]]}`, which takes rh.cluster({wanted[0]}=...)" if wanted
                    else "pass provider=NAME")
            raise PluginError(
                f"no installed provisioner takes rh.cluster({', '.join(f'{k}=' for k in keywords) or ''}) without a "
                f"provider: {hint}; the provisioners installed: {', '.join(registry.names()) or 'none'}")
        return claimed

    def installer(self, name: str) -> Callable[..., Any]:
        return self.registry("installer").get(name)

    def secret_provider(self, name: str) -> Callable[..., Any]:
        return self.registry("secret_provider").get(name)

    def claim_requirement(self, requirement: str) -> InstallerClaim:
        claim = self._pm.hook.rh_claim_requirement(requirement=requirement)
        if claim is None:
            raise UnknownNameError("install method", requirement, self.registry("installer").names())
        return claim

    # --- command line and notifications --------------------------------------------------------

    def add_commands(self, cli: click.Group) -> None:
        self._pm.hook.rh_register_commands(cli=cli)

    def cluster_ready(self, cluster: Cluster, info: Mapping[str, Any]) -> None:
        self._pm.hook.rh_cluster_ready(cluster=cluster, info=dict(info))

    def cluster_teardown(self, cluster: Cluster) -> None:
        for _, call in self._each_implementation("rh_cluster_teardown"):
            try:
                call(cluster=cluster)
            except Exception:  # reported, never stops the teardown
                traceback.print_exc()

    def _each_implementation(self, hook_name: str) -> Iterator[tuple[str, Callable[..., Any]]]:
        """Each plugin's implementation of ``hook_name`` on its own, with the plugin's name: for the
        hooks whose callers need to know who answered, or must go on when one plugin fails. Each
        call still goes through pluggy, so ``RH_TRACE_HOOKS`` (and any hook monitor) sees it."""
        implementations = getattr(self._pm.hook, hook_name).get_hookimpls()
        for impl in implementations:
            others = [other.plugin for other in implementations if other.plugin is not impl.plugin]
            yield impl.plugin_name, self._pm.subset_hook_caller(hook_name, remove_plugins=others)


def _own_version() -> str:
    from rh_core import __version__

    return __version__


@functools.cache
def default_host() -> PluginHost:
    """The host the user API uses, created on first use (tests may call ``default_host.cache_clear()``)."""
    return PluginHost()
