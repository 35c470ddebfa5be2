"""The one error tree of rh_core: every error we raise says what went wrong and what to do."""

from __future__ import annotations


class RhError(Exception):
    """Base class of every error rh_core raises on its own behalf."""


# --- one root per plugin kind: a plugin derives its own errors from the root of its kind, so a
# caller can catch "the machines could not be had" without knowing which provider was used.


class ProvisionError(RhError):
    """Provisioners (``byo``, ``sky``, ``gcp-direct``, ...) raise it, and derive their own errors
    from it, when they cannot bring machines up, find them, stop them or change them: the provider
    refused (quota, credentials, capacity), a cluster's options are wrong for it, or it lacks an
    optional capability that was asked for (``keep_warm`` where machines never stop by themselves)."""


class TransportError(RhError):
    """Transports (``ssh``, ...) raise it, and derive their own errors from it, when they cannot
    reach a machine: connecting, authenticating, running a command, syncing files or forwarding a
    port failed."""


class ExecutorError(RhError):
    """Executors (``process``, ``ray``, ...) raise it in the cluster's server, and derive their own
    errors from it, when they cannot run a task: their workers could not start, a worker died
    (:class:`WorkerDiedError`), or they lack what the call asked for (remote instances)."""


class PluginError(RhError):
    """A plugin could not be loaded, or a name did not match any registered plugin."""


class UnknownNameError(PluginError, KeyError):
    """A plugin-provided thing (executor, transport, ...) was asked for by a name nobody registered."""

    def __init__(self, kind: str, name: str, valid: list[str], hint: str = ""):
        self.kind, self.name, self.valid = kind, name, sorted(valid)
        choices = ", ".join(self.valid) or "none are installed"
        super().__init__(f"unknown {kind} {name!r}{'; ' + hint if hint else ''}; valid {kind}s: {choices}")

    def __str__(self) -> str:  # KeyError would quote the whole message
        return self.args[0]


class SerializationError(RhError, TypeError):
    """An argument or result could not be pickled or unpickled."""


class VersionMismatchError(RhError):
    """Client and cluster run different Python (or rh_core) versions."""


class ConnectionLostError(RhError, ConnectionError):
    """The cluster's server stopped answering or died while a call was in flight.

    ``sent`` is False when the request never reached the server (it was gone before the client
    wrote), so sending it again cannot run anything twice."""

    sent: bool = True


class WorkerDiedError(ExecutorError):
    """The worker process running a call exited before returning a result (executors raise it)."""


class InstanceDiedError(WorkerDiedError):
    """The process (or Ray actor) holding a remote instance died, and its state with it: the calls
    it ran fail with this, and so does every later call until the instance is created anew."""


class InstanceNotFoundError(RhError):
    """No remote instance by that name (and incarnation) lives on the cluster: it was released, the
    server restarted, or another was created under its name since the handle was made."""


class StaleCodeError(RhError):
    """The cluster's copy of a function's module is not the source the function was sent with, so
    the call was refused rather than run with other code."""


class CallTimeoutError(RhError, TimeoutError):
    """A call ran longer than its ``timeout`` option; its worker was stopped."""


class ServerStartError(RhError):
    """The cluster server could not be started; the message carries its stderr."""


class RemoteTraceback(Exception):
    """Carries the cluster-side traceback text; chained as ``__cause__`` of a re-raised error."""

    def __init__(self, tb: str):
        self.tb = tb
        super().__init__(tb)

    def __str__(self) -> str:
        return "\n\nTraceback on the cluster:\n" + self.tb.rstrip()


class RemoteError(RhError):
    """Stands in for a remote exception whose type could not be sent back (unpicklable)."""

    def __init__(self, type_name: str, message: str):
        self.type_name = type_name
        super().__init__(f"{type_name}: {message}")


class RemoteExitError(RhError):
    """The function called ``sys.exit`` (or was interrupted) on the cluster. Raised in the caller
    instead of exiting the caller's process; ``code`` is the exit code the function asked for."""

    code: object = None

    @classmethod
    def of(cls, exc: BaseException) -> RemoteExitError:
        if isinstance(exc, SystemExit):
            error = cls(f"the function called sys.exit({exc.code!r}) on the cluster; its worker goes on. "
                        "Return a value or raise an exception to end a call early.")
            error.code = exc.code
        else:
            error = cls(f"the function was interrupted on the cluster ({type(exc).__name__})")
        return error


class ProtocolError(RhError):
    """The server could not serve a request: malformed, unknown operation, or unknown result key."""


class InstallError(RhError):
    """A requirement could not be installed on the cluster; the message names it and carries the
    end of the installing tool's output. Installers (``pip``, ``conda``, ``git``, ...) raise it,
    on the client while preparing a step or on the cluster while installing it."""


class RunCancelledError(RhError):
    """The run was cancelled (``cluster.cancel(key)`` or ``rh cancel``) before it finished."""


class StoreError(RhError):
    """A store could not be used: not configured, unreachable, or access denied. Names the store.
    Store plugins (``directory``, ``s3``, ...) raise it from every method."""


class ResourceNotFoundError(RhError, KeyError):
    """No saved or builtin resource has this name; ``near`` lists the store's closest names."""

    def __init__(self, name: str, where: str, near: list[str]):
        self.name, self.where, self.near = name, where, near
        hint = f"; did you mean {', '.join(near)}?" if near else ""
        super().__init__(f"nothing is saved as {name!r} in {where}{hint}")

    def __str__(self) -> str:  # KeyError would quote the whole message
        return self.args[0]


class ResourceExistsError(RhError):
    """Saving would replace a resource that is already saved under the name."""


class InvalidNameError(RhError, ValueError):
    """A resource name is malformed: empty, a folder, too long, or with characters names may not hold."""


class ResourceFormatError(RhError):
    """A saved resource cannot be read: corrupt, not a resource, or written by a newer rh_core."""


class ConfigError(RhError):
    """The config file cannot be used: unreadable, corrupt, or written for a newer format."""


class ConfigValueError(ConfigError, ValueError):
    """A setting's name is unknown or its value has the wrong type."""


class AuthenticationError(RhError):
    """A request to a cluster server did not carry the cluster's secret."""


class SecretError(RhError):
    """A secret cannot be read, sent or used: no local credentials, a malformed name or value, or a
    secret a function asks for that is not on its cluster. Never carries a secret's value."""


class UntrustedPathError(RhError):
    """A state file or folder (a server's secret, record, lock or socket, or the folder holding
    them) belongs to another user or may be written by others, so it is not used."""
