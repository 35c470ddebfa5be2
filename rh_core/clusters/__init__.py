"""Clusters: where functions run, as the client sees them.

``base`` holds what every cluster shares (the connection to its server, calls, logs, keeping
results); ``local`` the embedded cluster on this machine (``rh.here``); ``remote`` clusters that a
provisioner plugin brings up and a transport plugin reaches; ``tls`` clusters reached without SSH.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from rh_core.clusters.base import Cluster


def from_config(config: dict[str, Any]) -> Cluster:
    """Rebuild a cluster from :meth:`Cluster.config` (in another process, say): the one place that
    knows every kind of cluster (each module of a kind is imported only when one is rebuilt)."""
    from rh_core.clusters.base import PLAIN_NAME
    from rh_core.clusters.local import LocalCluster
    from rh_core.support.redact import hide_secrets

    config = dict(config)
    name = config.get("name")
    if not isinstance(name, str) or not PLAIN_NAME.fullmatch(name):
        # Plugins build file names (and cloud resource names) from it: '../x' must not reach them.
        raise ValueError(f"cluster name {name!r} is not a plain name of at most 200 letters, digits, '_', '.' and '-'")
    kind = config.pop("kind", None)
    if kind == "local":
        return LocalCluster(**config)
    if kind == "remote":
        from rh_core.clusters.remote import RemoteCluster

        if "provisioner" not in config:  # saved before records named it: the one claiming its spec's keys
            from rh_core.plugin.host import default_host

            config["provisioner"] = default_host().provisioner_claiming(list(config.get("spec") or {}))
        return RemoteCluster(**config)
    if kind == "tls":
        from rh_core.clusters.tls import TLSCluster

        return TLSCluster(**config)  # without its secret, which is never saved: see TLSCluster.secret
    raise ValueError(f"unknown cluster kind {kind!r} in {hide_secrets(config)}; valid kinds: local, remote, tls")


def reached_from_here(config: dict[str, Any], server: dict[str, Any] | None) -> Cluster:
    """The cluster of ``config`` (see :meth:`Cluster.__reduce__`), as this process reaches it: the
    server on this machine when ``server`` (its state dir, pid and start time) names one that runs
    here, else as :func:`from_config` rebuilds it."""
    from rh_core.clusters.local import LocalCluster

    if server and isinstance(server.get("state_dir"), str):
        here_too = LocalCluster(name=str(config.get("name", "here")), state_dir=server["state_dir"])
        state = here_too.read_state()
        if state is not None and (state.get("pid"), state.get("process_start")) == (server.get("pid"),
                                                                                   server.get("process_start")):
            return here_too
    return from_config(config)
