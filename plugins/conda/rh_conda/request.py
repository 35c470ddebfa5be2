"""What a conda requirement asks for: one match spec and the channels to look in, parsed on the
client from ``conda:[CHANNEL::]SPEC`` and the package's ``channels`` option.

Channels, searched in order: the ``CHANNEL::`` of the requirement (that package must come from it,
as in conda), then ``channels=[...]`` of ``rh.package``; without that option the defaults: the
client's ``RH_CONDA_CHANNELS`` environment variable (comma-separated), else ``conda_channels`` in
the config file (``~/.rh/config.yaml``: a list, or comma-separated text), else ``conda-forge``.
A channel is a name (``conda-forge``), a URL (``https://...``, ``file:///...``) or a local path,
which becomes a ``file://`` URL: it must then be a path that exists on the cluster too.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from typing import Any

import attrs

from rh_core.errors import InstallError

DEFAULT_CHANNELS = ("conda-forge",)
CHANNELS_VARIABLE = "RH_CONDA_CHANNELS"


class SolveFailed(Exception):
    """A conda solver found no solution, or could not read a channel; the message is the solver's."""


@attrs.frozen(kw_only=True)
class CondaRequest:
    """One package to install: ``spec`` is a conda match spec without a channel (``numpy >=2``),
    ``channel`` the channel it must come from (or None), ``channels`` every channel to search
    (``channel`` first)."""

    spec: str
    channel: str | None
    channels: tuple[str, ...]

    @property
    def channel_spec(self) -> str:
        """The spec as conda writes it, with its channel: ``conda-forge::numpy >=2``."""
        return f"{self.channel}::{self.spec}" if self.channel else self.spec

    def to_options(self) -> dict[str, Any]:
        return {"channel": self.channel, "channels": list(self.channels)}

    @classmethod
    def from_step(cls, spec: str, options: Mapping[str, Any]) -> CondaRequest:
        return cls(spec=spec, channel=options.get("channel"), channels=tuple(options["channels"]))


def normalize_channel(channel: str) -> str:
    """A channel name or URL as given; a local path as an absolute ``file://`` URL."""
    channel = channel.strip()
    if not channel:
        raise InstallError("an empty conda channel was given; name a channel (conda-forge), a URL or a folder")
    if "://" in channel:
        return channel.rstrip("/")
    if channel.startswith(("/", ".", "~")):
        return "file://" + os.path.abspath(os.path.expanduser(channel))
    return channel


def default_channels(environ: Mapping[str, str] | None = None,
                     configured: str | list[str] | None = None) -> tuple[str, ...]:
    """``RH_CONDA_CHANNELS`` when set, else ``configured`` (by default: ``conda_channels`` of the
    config file), else conda-forge."""
    value = (os.environ if environ is None else environ).get(CHANNELS_VARIABLE, "")
    if not value.strip():
        value = configured_channels() if configured is None else configured
    listed = tuple(normalize_channel(c) for c in _split(value) if c.strip())
    return listed or DEFAULT_CHANNELS


def configured_channels() -> str | list[str] | None:
    """``conda_channels`` of the user's config file, if it is set there."""
    from rh_core import config

    value = config.current().get("conda_channels")
    if value is not None and not isinstance(value, (str, list)):
        raise InstallError(f"conda_channels in {config.config_path()} must be a list of channels or comma-separated "
                           f"text, not {value!r}")
    return value


def _split(value: str | list[str] | None) -> list[str]:
    if not value:
        return []
    return value.split(",") if isinstance(value, str) else [str(channel) for channel in value]


def _unique(channels: Iterable[str]) -> tuple[str, ...]:
    return tuple(dict.fromkeys(channels))


def parse(requirement: str, options: Mapping[str, Any], environ: Mapping[str, str] | None = None,
          configured: str | list[str] | None = None) -> CondaRequest:
    """Parse ``[CHANNEL::]SPEC`` and the ``channels`` option; raise InstallError for a spec conda
    would not accept, naming the requirement."""
    channel_part, separator, spec = requirement.strip().rpartition("::")
    channel = normalize_channel(channel_part) if separator else None
    spec = spec.strip()
    _check_spec(spec, requirement)
    listed = options.get("channels")
    if listed is None:
        others = default_channels(environ, configured)
    elif isinstance(listed, str) or not isinstance(listed, (list, tuple)):
        raise InstallError(f"channels= of conda package {requirement!r} must be a list of channel names or URLs, "
                           f"not {listed!r}")
    else:
        others = tuple(normalize_channel(c) for c in listed)
    return CondaRequest(spec=spec, channel=channel, channels=_unique([*([channel] if channel else []), *others]))


def _check_spec(spec: str, requirement: str) -> None:
    from rattler import (
        MatchSpec,  # imported when used: the plugin module must load without it
    )

    try:
        MatchSpec(spec)
    except Exception as exc:  # rattler raises its own InvalidMatchSpecError
        raise InstallError(
            f"conda requirement {requirement!r} is not a valid match spec ({exc}); write it like "
            "'numpy', 'numpy>=2', 'numpy=2.1=py311_0' or 'conda-forge::numpy'"
        ) from exc


def env_label(env: Any) -> str:
    """How messages name an environment."""
    return f"environment {env.name!r}" if env.name else "the cluster's default environment"


def package_name(spec: str) -> str:
    """The normalized package name a match spec is about."""
    from rattler import MatchSpec

    return MatchSpec(spec).name.normalized
