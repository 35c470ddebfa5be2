"""Hook specifications: the whole contract between rh_core and its plugins.

A plugin is a module (or object) with functions named like the specs below, decorated with
``rh_core.hookimpl``, and exposed through the ``rh_core.plugins`` entry-point group. Every hook is
called with keyword arguments only. Implementations may accept any subset of the arguments.

There are eight plugin kinds, each registered by name through a ``register`` callback:

* provisioners bring machines up and down;
* transports reach a machine: run commands, copy files, open tunnels to its server;
* installers put packages into an environment on a cluster;
* executors decide how calls run on the cluster (worker processes, Ray tasks, ...);
* stores hold saved resources for ``@/`` names (S3, a shared directory, ...);
* builtins are ready-made resources loaded as ``^name``;
* cluster presets are builtin clusters given as ``rh.cluster`` options (``^rh-v100``);
* secret providers read one kind of credentials on the client (``rh.secret("aws")``).

``register(name, target, *, aliases=())`` takes a class or a ``"module:attribute"`` string; a
string is imported only when the implementation is first used, so registering costs nothing.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import pluggy

if TYPE_CHECKING:
    import click

    from rh_core.clusters.base import Cluster
    from rh_core.plugin.interfaces import InstallerClaim

hookspec = pluggy.HookspecMarker("rh_core")

#: Marks a plugin's hook implementations; import it as ``from rh_core import hookimpl``.
hookimpl = pluggy.HookimplMarker("rh_core")

Register = Callable[..., None]


# -------------------------------------------------------------------------------------------------
# Plugin kinds


@hookspec
def rh_register_provisioners(register: Register) -> None:
    """Register provisioners: implementations of :class:`rh_core.plugin.interfaces.Provisioner`.

    Called once when the plugin host first needs a provisioner.

    :param register: call ``register(name, target, aliases=(), claims_keywords=())`` once per
        provisioner. ``claims_keywords`` names the ``rh.cluster`` keywords that choose this
        provisioner when the user names none (rh-byo-ssh: ``claims_keywords=("ips",)``), and the
        saved clusters without a provisioner whose spec has them; one keyword has one claimer.

    The return value is ignored. Registering a name twice raises :class:`PluginError`.
    """


@hookspec
def rh_register_transports(register: Register) -> None:
    """Register transports: implementations of :class:`rh_core.plugin.interfaces.Transport`.

    Called once when the plugin host first needs a transport.

    :param register: call ``register(name, target, aliases=())`` once per transport.

    The return value is ignored. Registering a name twice raises :class:`PluginError`.
    """


@hookspec
def rh_register_installers(register: Register) -> None:
    """Register installers: implementations of :class:`rh_core.plugin.interfaces.Installer`.

    Called once when the plugin host first needs an installer.

    :param register: call ``register(name, target, aliases=())`` once per install method
        (``"pip"``, ``"conda"``, ...).

    The return value is ignored. Registering a name twice raises :class:`PluginError`.
    """


@hookspec
def rh_register_executors(register: Register) -> None:
    """Register executors: implementations of :class:`rh_core.plugin.interfaces.Executor`.

    Called once in the cluster server when it starts, and by clients that list executors.

    :param register: call ``register(name, target, aliases=(), keeps=())`` once per executor.
        ``keeps`` names what the executor can keep running across a server restart, for
        ``cluster.restart_server(keep=...)`` (``keeps=("ray",)``; see
        :func:`rh_core.plugin.interfaces.keep_marker`). It is read on the client without importing
        ``target``.

    The return value is ignored. Registering a name twice raises :class:`PluginError`.
    """


@hookspec(firstresult=True)
def rh_claim_requirement(requirement: str) -> InstallerClaim | None:
    """Claim a requirement string such as ``"numpy>=2"`` or ``"conda:hello"`` for an installer.

    Called once per requirement string passed to ``reqs=``. Plugins that do not recognise the
    string return ``None``; a catch-all claimer should be marked ``trylast=True``.

    :param requirement: the string exactly as the user wrote it.

    Stops at the first non-``None`` result, an :class:`InstallerClaim`. May raise
    :class:`ValueError` with a message for the user when the string is theirs but malformed.
    """


# -------------------------------------------------------------------------------------------------
# Command line


@hookspec
def rh_register_commands(cli: click.Group) -> None:
    """Add commands or command groups to the ``rh`` command line.

    Called once when ``rh`` starts, before arguments are parsed. Import heavy dependencies inside
    the commands, not here: ``rh --help`` must stay fast.

    :param cli: the top-level ``click.Group``; call ``cli.add_command(...)`` or use ``@cli.command()``.

    The return value is ignored.
    """


# -------------------------------------------------------------------------------------------------
# Notifications


@hookspec
def rh_cluster_ready(cluster: Cluster, info: dict[str, Any]) -> None:
    """Called on the client each time a cluster's server has been reached and found healthy.

    :param cluster: the cluster that is ready.
    :param info: what the server reported about itself (version, executor, parallelism, pid).

    The return value is ignored. Exceptions propagate to the caller that brought the cluster up.
    """


@hookspec
def rh_cluster_teardown(cluster: Cluster) -> None:
    """Called on the client after a cluster's server has stopped (or was found not running), and
    before its machines go down: stop what the plugin started beside the server, which must not
    outlive it even when the server was killed or crashed.

    :param cluster: the cluster going down.

    The return value is ignored. Exceptions are reported and do not stop the teardown.
    """


# -------------------------------------------------------------------------------------------------
# Names: shared stores and builtins (rh_core.names)


@hookspec
def rh_register_stores(register: Register) -> None:
    """Register store backends for ``@/`` names: implementations of :class:`rh_core.names.Store`.

    Called once when the plugin host first needs a store. The config file's ``store.backend``
    chooses one by name; the other ``store.*`` settings are passed to it as keyword arguments.
    Built in: ``s3`` (boto3, any S3-compatible endpoint) and ``dir`` (a shared directory).

    :param register: call ``register(name, target, aliases=())`` once per backend.

    The return value is ignored. Registering a name twice raises :class:`PluginError`.
    """


@hookspec
def rh_register_builtins(register: Register) -> None:
    """Register builtin resources, loaded as ``^name`` (``rh.cluster(name='^rh-cpu')``).

    Called once when the plugin host first needs a builtin.

    :param register: call ``register(name, target, aliases=())`` once per builtin. ``target`` is a
        zero-argument callable returning a :class:`~rh_core.Cluster` or :class:`~rh_core.Function`
        (called on every load, connecting to nothing), a cluster to copy, a saved-resource record
        (``{"kind": "cluster", "cluster": {...config...}}``), or a ``"module:attribute"`` string
        naming one of these.

    The return value is ignored. Registering a name twice raises :class:`PluginError`.
    """



# -------------------------------------------------------------------------------------------------
# Cluster presets (rh-sky's builtin on-demand clusters)


@hookspec
def rh_register_cluster_presets(register: Register) -> None:
    """Register cluster presets: builtin clusters given as ``rh.cluster`` keyword arguments, loaded
    as ``rh.cluster(name='^NAME')`` (beside the builtins of :func:`rh_register_builtins`).

    Called once when the plugin host first resolves a ``^name`` or lists the builtins.

    :param register: call ``register(name, options, aliases=())`` once per preset; ``options`` is
        a JSON-safe dict of ``rh.cluster`` keyword arguments such as ``{"instance_type": "V100:1"}``.
        ``^NAME`` loads ``rh.cluster(name=NAME, **options)``; keyword arguments passed next to
        ``^NAME`` override the preset's.

    The return value is ignored. Registering a name twice raises :class:`PluginError`.
    """


# -------------------------------------------------------------------------------------------------
# Secrets (rh_core.secrets)


@hookspec
def rh_register_secret_providers(register: Register) -> None:
    """Register secret providers: implementations of :class:`rh_core.plugin.interfaces.SecretProvider`,
    loaded as ``rh.secret(NAME)`` and named in ``cluster.sync_secrets([NAME])`` and
    ``.to(cluster, secrets=[NAME])``. Built in: ``aws``, ``gcp`` and ``huggingface``.

    Called once when the plugin host first needs a secret provider.

    :param register: call ``register(name, target, aliases=())`` once per provider.

    The return value is ignored. Registering a name twice raises :class:`PluginError`.
    """
