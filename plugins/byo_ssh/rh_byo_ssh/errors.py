"""The errors of the ``ssh`` transport: each message names the host, the user, the cause and the fix.

Kept free of paramiko, so code that only catches these errors does not import it.
"""

from __future__ import annotations

from rh_core.errors import TransportError


class SSHError(TransportError):
    """An SSH operation failed; the message names the host, the user, the cause and what to do."""


class SSHConnectError(SSHError, ConnectionError):
    """The machine could not be reached: unknown name, closed port, timeout, not an SSH server."""


class SSHConnectionLostError(SSHConnectError):
    """The connection dropped while an operation that must not be repeated was running."""


class SSHAuthError(SSHError, PermissionError):
    """The server refused every key (or password) that was tried."""


class SSHHostKeyError(SSHError):
    """The server's host key is unknown (and not trusted) or differs from the recorded one."""


class SSHSyncError(SSHError):
    """A directory could not be synced to the machine."""


class SSHForwardError(SSHError):
    """A local port forward to the machine could not be opened."""


class SystemSSHFailed(Exception):
    """The system ssh/rsync client failed in a way the paramiko path may not: fall back to it.

    Internal to the transport: it never reaches the caller."""


def describe(exc: BaseException) -> str:
    """``Type: message`` of an exception, for the cause part of an error message."""
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
