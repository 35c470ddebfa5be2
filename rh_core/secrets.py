"""Secrets: credentials sent to a cluster, as files where the provider's tools look and as
environment variables of the functions sent with them.

``rh.secret("aws")`` reads a provider's usual local credentials (providers are plugins, see
:func:`rh_core.plugin.hookspecs.rh_register_secret_providers`); ``rh.secret(name="openai",
values={"OPENAI_API_KEY": ...})`` makes a custom one. A secret's values travel only in requests to
the cluster's server (authenticated, through SSH or TLS), and are never part of a repr, a log or a
saved record.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

import attrs

from rh_core.errors import SecretError
from rh_core.wire.messages import check_secret_contents as check_contents
from rh_core.wire.messages import check_secret_name as check_name

if TYPE_CHECKING:
    from rh_core.clusters.base import Cluster
    from rh_core.plugin.host import PluginHost

@attrs.frozen(kw_only=True, repr=False)
class Secret:
    """Credentials to send to a cluster: ``values`` become environment variables of functions sent
    with the secret, ``files`` (``{"~/.aws/credentials": text}``) are written owner-only on the
    cluster by :meth:`rh_core.Cluster.sync_secrets`. The repr names the variables and files, never
    their contents."""

    name: str = attrs.field(validator=lambda _, __, value: check_name(value))
    provider: str | None = None
    values: dict[str, str] = attrs.field(factory=dict)
    files: dict[str, str] = attrs.field(factory=dict)

    def __attrs_post_init__(self) -> None:
        check_contents(self.name, self.values, self.files)

    def __repr__(self) -> str:
        kind = f"from {self.provider}" if self.provider else "custom"
        parts = [f"variables {', '.join(sorted(self.values))}" if self.values else "",
                 f"files {', '.join(sorted(self.files))}" if self.files else ""]
        return f"<Secret {self.name} ({kind}): {'; '.join(filter(None, parts)) or 'empty'}>"

    def to_wire(self) -> dict[str, Any]:
        """What the cluster's server stores: the only place the values leave this process."""
        return {"name": self.name, "provider": self.provider, "values": dict(self.values), "files": dict(self.files)}


def secret(provider: str | None = None, *, name: str | None = None, values: Mapping[str, str] | None = None,
           host: PluginHost | None = None) -> Secret:
    """A secret: ``rh.secret("aws")`` reads a provider's credentials from this machine now (its
    files or environment variables; ``name=`` stores it under another name); ``rh.secret(name=
    "openai", values={"OPENAI_API_KEY": ...})`` is a custom one, whose values functions get as
    environment variables. ``rh plugins`` lists the providers (built in: aws, gcp, huggingface)."""
    if provider is None:
        if name is None or values is None:
            raise SecretError("rh.secret needs a provider (rh.secret('aws'); `rh plugins` lists them) or a custom "
                              "secret's name and values: rh.secret(name='openai', values={'OPENAI_API_KEY': ...})")
        return Secret(name=name, values=dict(values))
    if values is not None:
        raise SecretError(f"rh.secret({provider!r}) reads the {provider} credentials of this machine; for values of "
                          f"your own, leave the provider out: rh.secret(name={name or provider!r}, values={{...}})")
    if host is None:
        from rh_core.plugin.host import default_host

        host = default_host()
    contents = host.secret_provider(provider)().read()
    return Secret(name=name or provider, provider=provider, values=dict(contents.values), files=dict(contents.files))


def resolve(secrets: Iterable[Secret | str], host: PluginHost | None = None) -> tuple[list[Secret], list[str]]:
    """Split secrets given as objects or names into those to send (objects, and provider names,
    read here now) and the names of secrets expected on the cluster already (any other name)."""
    if isinstance(secrets, (str, Secret)):
        raise SecretError("secrets are given as a list: secrets=['aws'] or secrets=[rh.secret(...)]")
    if host is None:
        from rh_core.plugin.host import default_host

        host = default_host()
    providers = host.registry("secret_provider").names()
    to_send: list[Secret] = []
    on_cluster: list[str] = []
    for item in secrets:
        if isinstance(item, str) and item in providers:
            item = secret(item, host=host)
        if isinstance(item, str):
            on_cluster.append(check_name(item))
        elif isinstance(item, Secret):
            to_send.append(item)
        else:
            raise SecretError(f"a secret is a name or an rh.secret(...), not {type(item).__name__}")
    names = [s.name for s in to_send] + on_cluster
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise SecretError(f"secret name(s) {', '.join(twice)} given twice; rename one with rh.secret(..., name=...)")
    return to_send, on_cluster


def names_of(secrets: Iterable[Secret | str]) -> list[str]:
    """The names of secrets given as objects or names (to delete them: nothing is read)."""
    if isinstance(secrets, (str, Secret)):
        raise SecretError("secrets are given as a list: ['aws'] or [rh.secret(...)]")
    return [check_name(item.name if isinstance(item, Secret) else item) for item in secrets]


def send_secrets(system: Cluster, secrets: Iterable[Secret | str]) -> tuple[str, ...]:
    """What ``.to(cluster, secrets=[...])`` does: send the secrets given as objects or provider
    names, check that the others are on the cluster already; their names."""
    to_send, expected = resolve(secrets, system.host)
    if to_send:
        system.sync_secrets(to_send)
    if expected:
        there = {item["name"] for item in system.secrets()}
        missing = [name for name in expected if name not in there]
        if missing:
            raise SecretError(
                f"secret(s) {', '.join(map(repr, missing))} are not on cluster {system.name!r} and no provider has "
                f"that name: pass the rh.secret(name=..., values={{...}}) object itself, or send it first with "
                f"cluster.sync_secrets([...])")
    return tuple(item.name for item in to_send) + tuple(expected)
