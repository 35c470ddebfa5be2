"""``rh.cluster(...)``: the one factory of the clusters a user names, whichever kind they are.

Machines you bring (``ips=`` and ``ssh_creds=``), machines a provisioner plugin launches
(``instance_type=`` or ``provider=``), a server reached through its TLS port (``address=``), or a
saved cluster loaded by its name. The cluster classes themselves live in :mod:`rh_core.clusters`.
"""

from __future__ import annotations

from typing import Any, overload

from rh_core.clusters.base import Cluster
from rh_core.clusters.remote import RemoteCluster
from rh_core.plugin.interfaces import ValidatesSpec, capability
from rh_core.support.compat import add_note


@overload
def cluster(name: str | None = None, *, ips: list[str], ssh_creds: dict[str, Any] | None = None,
            executor: str = "process", executor_options: dict[str, Any] | None = None) -> RemoteCluster: ...
@overload
def cluster(name: str | None = None, *, instance_type: str, provider: str | None = None, executor: str = "process",
            executor_options: dict[str, Any] | None = None, **options: Any) -> RemoteCluster: ...
@overload
def cluster(name: str | None = None, *, provider: str, instance_type: str | None = None, executor: str = "process",
            executor_options: dict[str, Any] | None = None, **options: Any) -> RemoteCluster: ...
@overload
def cluster(name: str, *, dryrun: bool = False, store: dict[str, Any] | None = None) -> Cluster: ...
@overload
def cluster(name: str | None = None, *, address: str, tls_fingerprint: str, secret: str = "") -> Cluster: ...


def cluster(
    name: str | None = None,
    *,
    ips: list[str] | None = None,
    ssh_creds: dict[str, Any] | None = None,
    executor: str = "process",
    executor_options: dict[str, Any] | None = None,
    dryrun: bool = False,
    store: dict[str, Any] | None = None,
    instance_type: str | None = None,
    provider: str | None = None,
    **options: Any,
) -> Cluster:
    """A cluster: hosts you bring (``ips`` and ``ssh_creds``), with ``executor`` running the calls.

    ``ssh_creds`` takes ``ssh_user``, ``ssh_private_key``, ``ssh_port``, ``password``,
    ``passphrase``, ``known_hosts`` and ``trust_new_host`` (see the ssh transport).

    A name alone loads a saved cluster (``~/x`` local, ``@/x`` shared, ``^x`` builtin, a bare ``x``
    meaning ``~/x``) and refreshes its status; ``dryrun=True`` only builds the object, connecting
    to nothing. ``store`` replaces the config file's shared store for this call.

    ``instance_type`` or ``provider`` make an on-demand cluster, launched by a provisioner plugin
    when first used (see :func:`on_demand_cluster`); ``^name`` with options overrides a preset's.
    """
    if ips:
        if instance_type is not None or provider is not None:
            raise TypeError("rh.cluster(ips=...) uses the machines you name; instance_type= and provider= launch new "
                            "ones: pass one or the other")
        from rh_core.plugin.host import default_host

        given = {"ips": list(ips), "ssh_creds": dict(ssh_creds or {}), **options}
        claimed = default_host().provisioner_claiming(given)  # the provisioner of machines given by address
        return _checked_cluster(name or f"{claimed}-{ips[0]}", claimed, given, executor, executor_options)
    if "address" in options or "tls_fingerprint" in options:
        from rh_core.clusters.tls import tls_cluster

        return tls_cluster(name or options["address"], options.pop("address"), options.pop("tls_fingerprint", ""),
                           options.pop("secret", ""))
    # (sky plugin work) on-demand clusters: provider= / instance_type= choose a provisioner here.
    preset_with_options = bool(name and name.startswith("^") and (options or executor_options or executor != "process"))
    if instance_type is not None or provider is not None or preset_with_options:
        return on_demand_cluster(name, instance_type=instance_type, provider=provider, executor=executor,
                                 executor_options=executor_options, **options)
    # (names work) a name alone ("~/x", "@/x", "^x") loads a saved or builtin cluster here.
    if name is not None and ssh_creds is None and executor_options is None and set(options) <= {"secret"}:
        from rh_core.errors import ResourceNotFoundError
        from rh_core.names import load_cluster

        try:
            return load_cluster(name, dryrun=dryrun, store=store, secret=options.get("secret"))
        except ResourceNotFoundError as exc:
            add_note(exc, "To make a new cluster: rh.cluster(name=..., ips=['10.0.0.1'], ssh_creds={...}) for machines "
                         "you have, or rh.cluster(name=..., instance_type='A100:1') to launch them.")
            raise
    raise TypeError(
        "rh.cluster needs the hosts to use: rh.cluster(ips=['10.0.0.1'], ssh_creds={'ssh_user': ..., "
        "'ssh_private_key': ...}), or the machines to launch: rh.cluster(name='gpu', instance_type='A100:1'); "
        "use rh.here for this machine"
    )


def on_demand_cluster(
    name: str | None,
    *,
    instance_type: str | None = None,
    provider: str | None = None,
    executor: str = "process",
    executor_options: dict[str, Any] | None = None,
    **options: Any,
) -> RemoteCluster:
    """A cluster whose machines a provisioner launches on first use: ``rh.cluster(name='gpu',
    instance_type='A100:4', provider='gcp', autostop_mins=60, ...)``.

    ``provider`` names a registered provisioner or one of its aliases (rh-sky registers ``"sky"``
    and every cloud SkyPilot knows, ``"gcp"``, ``"aws"``, ...); without one, ``default_provider``
    from the config file, else ``"cheapest"``. The provisioner checks the other options when it has
    a ``validate_spec(spec)`` method. ``name='^preset'`` starts from a cluster preset's options.
    """
    from rh_core.config import current
    from rh_core.plugin.host import default_host

    host = default_host()
    given = {key: value for key, value in {"instance_type": instance_type, "provider": provider, **options}.items()
             if value is not None}
    if name and name.startswith("^"):
        name = name[1:]
        given = {**host.registry("cluster_preset").get(name), **given}
    if not name:
        raise TypeError(
            "an on-demand cluster needs a name, by which its provisioner finds its machines again: "
            "rh.cluster(name='my-gpu', instance_type='A100:1')"
        )
    provider = given.pop("provider", None) or current().default_provider or "cheapest"
    return _checked_cluster(name, provider, {"provider": provider, **given}, executor, executor_options)


def _checked_cluster(name: str, provisioner_name: str, spec: dict[str, Any], executor: str,
                     executor_options: dict[str, Any] | None) -> RemoteCluster:
    """The cluster, once its provisioner has checked and completed ``spec`` (``ValidatesSpec``)."""
    from rh_core.plugin.host import default_host

    provisioner = default_host().provisioner(provisioner_name)()  # an unknown one is named with the valid ones
    validator = capability(provisioner, ValidatesSpec)
    if validator is not None:
        spec = validator.validate_spec(spec)
    return RemoteCluster(name=name, provisioner=provisioner_name, spec=spec, executor=executor,
                         executor_options=dict(executor_options or {}))



#: Where the names of the old module rh_core.cluster (the cluster classes, before they moved to
#: rh_core.clusters) went: they still import from here for one release.
_OLD_NAMES = {
    "LocalCluster": "rh_core.clusters.local", "here": "rh_core.clusters.local",
    "SERVER_START_TIMEOUT": "rh_core.clusters.local",
    "from_config": "rh_core.clusters", "reached_from_here": "rh_core.clusters",
    "Tunnel": "rh_core.clusters.base", "PLAIN_NAME": "rh_core.clusters.base",
    "check_versions": "rh_core.clusters.base", "split_parts": "rh_core.clusters.base",
    "decode_outcome": "rh_core.clusters.base",
    "rh_home": "rh_core.config", "tail": "rh_core.support.processes", "pid_alive": "rh_core.support.processes",
}


def __getattr__(name: str) -> Any:
    import importlib
    import warnings

    module = _OLD_NAMES.get(name)
    if module is None:
        raise AttributeError(f"module 'rh_core.cluster' has no attribute {name!r}")
    warnings.warn(f"rh_core.cluster.{name} is now {module}.{name}; import it from there (the old name goes in "
                  "the next release)", DeprecationWarning, stacklevel=2)
    return getattr(importlib.import_module(module), name)
