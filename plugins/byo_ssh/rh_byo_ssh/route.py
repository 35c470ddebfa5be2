"""Where to connect: the hops to a machine (jump hosts, then the machine) resolved through the ssh
config, and the OpenSSH command lines and config entries that follow the same route with the same keys.
"""

from __future__ import annotations

import dataclasses
import getpass
import math
import os
import re
import shlex
from typing import Any

import paramiko

from rh_byo_ssh.errors import SSHConnectError, SSHError, describe

KEEPALIVE_SECONDS = 15
# AES-GCM first: on machines without AES-NI chacha20 wins, so it stays in the list (RPC-FLOORS.md).
FAST_CIPHERS = "aes128-gcm@openssh.com,chacha20-poly1305@openssh.com,aes256-gcm@openssh.com,aes128-ctr"
MAX_JUMPS = 8


@dataclasses.dataclass(frozen=True)
class Hop:
    """One machine on the way (jump hosts, then the target), resolved through the ssh config."""

    alias: str
    hostname: str
    port: int
    user: str
    keys: tuple[str, ...]
    proxy_command: str | None = None

    @property
    def label(self) -> str:
        where = f"{self.user}@{self.alias}"
        if self.alias != self.hostname or self.port != 22:
            where += f" ({self.hostname}:{self.port})"
        return where

    @property
    def known_hosts_name(self) -> str:
        # The name paramiko and OpenSSH both record a host key under.
        return self.hostname if self.port == 22 else f"[{self.hostname}]:{self.port}"

    @property
    def ssh_destination(self) -> str:
        return f"[{self.hostname}]" if ":" in self.hostname else self.hostname


def load_ssh_config(path: str | os.PathLike[str] | None) -> paramiko.SSHConfig | None:
    """The ssh config at ``path`` (default ``~/.ssh/config``, which may be missing), parsed."""
    explicit = path is not None
    resolved = os.path.expanduser(os.fspath(path) if path is not None else "~/.ssh/config")
    if not os.path.isfile(resolved):
        if explicit:
            raise SSHError(f"ssh config file {resolved} does not exist; pass ssh_config= an existing file or None")
        return None
    try:
        return paramiko.SSHConfig.from_path(resolved)
    except Exception as exc:
        raise SSHError(f"cannot parse the ssh config file {resolved} ({describe(exc)}); fix the file") from exc


def resolve_chain(
    host: str, config: paramiko.SSHConfig | None, *, user: str | None, port: int | None, private_key: str | None
) -> list[Hop]:
    """The hops to ``host``: its ``ProxyJump`` hosts outermost first, then ``host`` itself.

    Explicit ``user``, ``port`` and ``private_key`` win over the config for the target; a jump
    host without keys of its own is tried with ``private_key`` too."""
    resolver = _Resolver(config, host, private_key)
    target = resolver.hop(host, user=user, port=port, keys=private_key)
    target_config = config.lookup(host) if config else {}
    return resolver.jumps(target, target_config, depth=0) + [target]


@dataclasses.dataclass(frozen=True)
class _Resolver:
    config: paramiko.SSHConfig | None
    target_alias: str
    explicit_key: str | None

    def hop(self, spec: str, *, user: str | None = None, port: int | None = None, keys: str | None = None) -> Hop:
        """Resolve ``[user@]alias[:port]`` (or just an alias) through the ssh config."""
        alias = spec
        alias = alias.removeprefix("ssh://")
        if "@" in alias:
            spec_user, alias = alias.rsplit("@", 1)
            user = user or spec_user
        match = re.fullmatch(r"\[(.+)\]:(\d+)|([^:]+):(\d+)", alias)
        if match:
            alias = match.group(1) or match.group(3)
            port = port or int(match.group(2) or match.group(4))
        config = self.config.lookup(alias) if self.config else {}
        hostname = config.get("hostname", alias)
        if keys is not None:
            key_files: tuple[str, ...] = (keys,)
        else:
            found = [os.path.abspath(os.path.expanduser(p)) for p in config.get("identityfile", [])]
            key_files = tuple(p for p in found if os.path.isfile(p))
            if not key_files and self.explicit_key and alias != self.target_alias:
                key_files = (self.explicit_key,)  # jump hosts often take the same key as the target
        proxy_command = config.get("proxycommand")
        if proxy_command and proxy_command.lower() == "none":
            proxy_command = None
        return Hop(
            alias=alias,
            hostname=hostname,
            port=port or int(config.get("port", 22)),
            user=user or config.get("user") or getpass.getuser(),
            keys=key_files,
            proxy_command=proxy_command,
        )

    def jumps(self, hop: Hop, config: dict[str, Any], depth: int) -> list[Hop]:
        """The jump hosts in front of ``hop`` from its ``ProxyJump`` (a comma list), outermost first."""
        jump = str(config.get("proxyjump", "") or "").strip()
        if not jump or jump.lower() == "none":
            return []
        if depth >= MAX_JUMPS:
            raise SSHConnectError(
                f"ssh {hop.label}: more than {MAX_JUMPS} ProxyJump levels; check the ssh config for a loop"
            )
        specs = [part.strip() for part in jump.split(",") if part.strip()]
        first = self.hop(specs[0])
        first_config = self.config.lookup(first.alias) if self.config else {}
        chain = self.jumps(first, first_config, depth + 1) + [first]
        # As in OpenSSH, only the first jump's own ProxyJump counts; the rest follow the list.
        chain += [dataclasses.replace(self.hop(spec), proxy_command=None) for spec in specs[1:]]
        return chain


@dataclasses.dataclass(frozen=True)
class SystemSSHRoute:
    """How the system ``ssh`` client follows a chain of hops the way paramiko does: same user, port,
    keys, known-hosts file, timeout and jump hosts."""

    chain: list[Hop]
    known_hosts: str
    connect_timeout: float
    use_agent: bool

    def ssh_command(self, index: int, *, multiplex: bool = False) -> list[str]:
        """The system ``ssh`` command (without destination) reaching hop ``index`` like paramiko does;
        ``multiplex`` leaves the control-master options to the caller (see
        :class:`rh_byo_ssh.ssh_master.SSHMaster`)."""
        hop = self.chain[index]
        args = [
            "ssh", "-F", "none", "-p", str(hop.port), "-l", hop.user,
            "-o", "BatchMode=yes",
            "-o", "StrictHostKeyChecking=yes",  # paramiko already checked or trusted the key
            "-o", f"UserKnownHostsFile={config_quote(self.known_hosts)}",
            "-o", f"ConnectTimeout={max(1, math.ceil(self.connect_timeout))}",
            "-o", f"ServerAliveInterval={KEEPALIVE_SECONDS}", "-o", "ServerAliveCountMax=4",
            *(() if multiplex else ("-o", "ControlMaster=no", "-o", "ControlPath=none")),
            "-o", "Compression=no", "-o", "LogLevel=ERROR",
            "-c", FAST_CIPHERS,
        ]  # fmt: skip
        for key in hop.keys:
            args += ["-i", key]
        if hop.keys:
            args += ["-o", "IdentitiesOnly=yes"]
        if not self.use_agent:
            args += ["-o", "IdentityAgent=none"]
        proxy = None
        if index > 0:
            # Each jump is an ssh -W through the previous hop, built the same way; "%" is escaped
            # because ssh expands %-tokens in ProxyCommand once per level.
            previous = self.chain[index - 1]
            proxy = shlex.join(
                self.ssh_command(index - 1) + ["-W", f"{hop.ssh_destination}:{hop.port}", previous.ssh_destination]
            )
        elif hop.proxy_command:
            proxy = hop.proxy_command
        if proxy:
            args += ["-o", "ProxyCommand=" + proxy.replace("%", "%%")]
        return args

    def target_command(self) -> list[str]:
        """The system ``ssh`` command (without destination) reaching the machine itself."""
        return self.ssh_command(len(self.chain) - 1)

    def shell_command(self) -> list[str]:
        """``ssh`` to the machine, destination included, for a terminal."""
        return [*self.target_command(), self.chain[-1].ssh_destination]

    def config_entry(self, alias: str) -> str:
        """A ``Host alias`` block for an OpenSSH config file that reaches the machine this way."""
        hop = self.chain[-1]
        lines = [f"Host {alias}", f"  HostName {hop.hostname}", f"  Port {hop.port}", f"  User {hop.user}",
                 f"  UserKnownHostsFile {config_quote(self.known_hosts)}"]
        lines += [f"  IdentityFile {config_quote(key)}" for key in hop.keys]
        if hop.keys:
            lines.append("  IdentitiesOnly yes")
        if len(self.chain) > 1:
            previous = self.chain[-2]
            jump = shlex.join(self.ssh_command(len(self.chain) - 2) + ["-W", "%h:%p", previous.ssh_destination])
            lines.append(f"  ProxyCommand {jump}")
        elif hop.proxy_command:
            lines.append(f"  ProxyCommand {hop.proxy_command}")
        return "\n".join(lines) + "\n"


def config_quote(value: str) -> str:
    # ssh -o values are split on whitespace unless double-quoted.
    return f'"{value}"' if any(ch.isspace() for ch in value) else value
