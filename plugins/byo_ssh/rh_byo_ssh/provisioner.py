"""The ``byo`` provisioner: machines the user brings, given by address and SSH credentials.

Up means reachable (the transport connects on first use); down means the server and the Ray it
started are stopped. The machines themselves are never touched.
"""

from __future__ import annotations

from typing import Any

from rh_core.errors import ProvisionError, RhError
from rh_core.plugin.interfaces import ClusterInfo, ProvisionRequest

#: ``ssh_creds`` keys (the spec's names) and the ssh transport options they become.
CREDENTIAL_KEYS = {
    "ssh_user": "user",
    "ssh_private_key": "private_key",
    "ssh_port": "port",
    "password": "password",
    "passphrase": "passphrase",
    "known_hosts": "known_hosts",
    "trust_new_host": "trust_new_host",
    "use_agent": "use_agent",
    "connect_timeout": "connect_timeout",
}


def transport_options(creds: dict[str, Any], where: str) -> dict[str, Any]:
    unknown = sorted(set(creds) - set(CREDENTIAL_KEYS))
    if unknown:
        raise RhError(
            f"unknown ssh_creds key(s) {', '.join(unknown)} for {where}; valid keys: {', '.join(CREDENTIAL_KEYS)}"
        )
    options: dict[str, Any] = {CREDENTIAL_KEYS[key]: value for key, value in creds.items()}
    # The transport's errors then name the keys the user wrote, not its own option names.
    options["option_names"] = {option: f"ssh_creds['{key}']" for key, option in CREDENTIAL_KEYS.items()}
    return options


class ByoOptionError(ProvisionError, TypeError):
    """``rh.cluster(ips=...)`` was given a keyword that machines you bring do not take (a
    ``TypeError`` too, as Python's own for an unexpected keyword)."""


#: What ``rh.cluster(ips=...)`` keeps as the spec (``executor`` and the others are the cluster's own).
SPEC_KEYS = ("ips", "ssh_creds")


class ByoProvisioner:
    """Hosts given as ``ips`` (the first is the head) with ``ssh_creds``: one dict for all hosts,
    or a dict per address for hosts that differ."""

    def validate_spec(self, spec: dict[str, Any]) -> dict[str, Any]:
        """Refuse any option beyond ``ips`` and ``ssh_creds``: it would be silently ignored
        (``ssh_port=2222`` would connect to port 22)."""
        options = {key: value for key, value in spec.items() if key not in SPEC_KEYS}
        creds = {key: value for key, value in options.items() if key in CREDENTIAL_KEYS}
        if creds:
            raise ByoOptionError(
                f"rh.cluster() got {', '.join(f'{k}=' for k in creds)} as its own keyword(s); they belong in "
                f"ssh_creds: rh.cluster(ips=[...], ssh_creds={creds!r})")
        if options:
            raise ByoOptionError(
                f"rh.cluster() got unknown keyword(s) {', '.join(sorted(options))}; for machines you bring it takes "
                "name, ips, ssh_creds, executor, executor_options")
        return {"ips": list(spec.get("ips") or ()), "ssh_creds": dict(spec.get("ssh_creds") or {})}

    def up(self, request: ProvisionRequest) -> ClusterInfo:
        name, spec = request.cluster_name, request.spec
        ips = list(spec.get("ips") or ())
        if not ips:
            raise RhError(f"cluster {name!r} has no ips; pass rh.cluster(ips=['10.0.0.1', ...], ssh_creds=...)")
        creds = dict(spec.get("ssh_creds") or {})
        per_host = bool(creds) and all(key in ips for key in creds)
        shared = {} if per_host else transport_options(creds, f"cluster {name!r}")
        host_options = {ip: transport_options(creds[ip], ip) for ip in ips if per_host and ip in creds}
        head_options = {**shared, **host_options.get(ips[0], {})}
        return ClusterInfo(head=ips[0], workers=tuple(ips[1:]), transport="ssh",
                           transport_options=head_options, host_options=host_options)

    def down(self, request: ProvisionRequest) -> None:
        """Nothing to do: the cluster stopped its server before calling this."""

    def status(self, request: ProvisionRequest) -> str:
        """``"up"`` when the head answers over SSH (its server is not started for asking);
        ``"unknown"`` when it does not, or when there is no connection to ask through."""
        if request.head is None:
            return "unknown"
        try:
            (code, _, _), = request.head.run(["true"])
        except Exception:
            return "unknown"
        return "up" if code == 0 else "unknown"
