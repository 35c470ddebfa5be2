"""The ``sky`` provisioner: machines that SkyPilot launches, restarts, stops and tears down.

After a launch the head and worker addresses, SSH user and key come from SkyPilot's cluster record
and go to the ``ssh`` transport of rh-byo-ssh, so bootstrap, calls, tunnels, ``ssh()`` and
notebooks are the code paths of clusters you bring. The provisioner keeps no state of its own:
SkyPilot's record is the truth, read again on every ``up()`` and ``status()``.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import time
from typing import Any

from rh_core.errors import RhError
from rh_core.plugin.interfaces import ClusterInfo, ProvisionRequest

from rh_sky.skypilot import SkyError, SkyLaunchError, explain, load_skypilot, reason, result
from rh_sky.spec import SkySpec

#: SkyPilot's cluster states as the Provisioner protocol names them. INIT is a launch in progress
#: or a cluster SkyPilot found unhealthy; AUTOSTOPPING is on its way to STOPPED.
STATES = {"UP": "up", "STOPPED": "stopped", "AUTOSTOPPING": "stopped", "INIT": "unknown", "PENDING": "unknown"}

#: Where SkyPilot's skylet keeps its idle timer on the head, below SkyPilot's runtime dir there
#: (``sky/skylet/configs.py`` of SkyPilot 0.14: table ``config``, key ``autostop_last_active_time``).
SKYLET_CONFIG_DB = ".sky/skylet_config.db"

AUTOSTOPPING_WAIT_SECONDS = 600


def local_state_dir(cluster_name: str) -> str:
    """Where this machine keeps a sky cluster's SSH key copy and known_hosts: ``$RH_HOME/sky/<name>``."""
    from rh_core.config import rh_home

    return os.path.join(rh_home(), "sky", cluster_name)


class SkyProvisioner:
    """Launches ``rh.cluster(name=..., instance_type=..., provider=...)`` clusters through SkyPilot.

    :param sky: the SDK to use; default: the ``sky`` module, imported on first use (see
        :func:`rh_sky.skypilot.load_skypilot`).

    Besides ``up``/``down``/``status`` it offers what :class:`rh_core.RemoteCluster` looks for on
    provisioners that have it: ``validate_spec``, ``refreshed_status``, ``autostop_minutes`` and
    ``set_autostop``; and ``stop`` for ``rh sky stop``.
    """

    def __init__(self, sky: Any = None) -> None:
        self._sky = sky

    @property
    def sky(self) -> Any:
        if self._sky is None:
            self._sky = load_skypilot()
        return self._sky

    # --- the cluster's spec ----------------------------------------------------------------------

    def validate_spec(self, spec: dict[str, Any]) -> dict[str, Any]:
        """Check ``rh.cluster``'s options when the cluster is created, and fill in the defaults."""
        return SkySpec.from_options(spec).to_options()

    @staticmethod
    def spec_of(request: ProvisionRequest) -> SkySpec:
        """The cluster's spec, checked again: a saved cluster may come from another version."""
        return SkySpec.from_options(dict(request.spec))

    # --- the Provisioner protocol ----------------------------------------------------------------

    def up(self, request: ProvisionRequest) -> ClusterInfo:
        """Find the cluster up, restart it when stopped, or launch it; then say how to reach it.

        Launches and restarts show SkyPilot's progress. A launch that fails raises with SkyPilot's
        reason and the state it left the cluster in; nothing is recorded as up.
        """
        spec = self.spec_of(request)
        name = request.cluster_name
        record = self._record(name, refresh=self.sky.StatusRefreshMode.AUTO, cloud=spec.cloud)
        state = _sky_state(record)
        if state == "AUTOSTOPPING":
            state = self._wait_until_stopped(name, spec)
        if state is None:
            self._launch(name, spec)
        elif state != "UP":  # STOPPED, or INIT: SkyPilot retries provisioning on start
            self._start(name, spec)
        record = self._record(name, credentials=True, cloud=spec.cloud)
        if _sky_state(record) != "UP":
            raise SkyLaunchError(
                f"SkyPilot reports cluster {name!r} as {_sky_state(record) or 'not existing'} after bringing it up; "
                f"see `rh sky status {name} --refresh` and try again"
            )
        return self._cluster_info(name, record, spec)

    def down(self, request: ProvisionRequest) -> None:
        """Tear the machines down (their disks are deleted); a cluster SkyPilot does not know is already down."""
        name = request.cluster_name
        with self._sdk_errors(name, "tearing down"):
            try:
                result(self.sky, self.sky.down(name), show_progress=True)
            except self.sky.exceptions.ClusterDoesNotExist:
                pass
        shutil.rmtree(local_state_dir(name), ignore_errors=True)

    def status(self, request: ProvisionRequest) -> str:
        """``"up"``, ``"stopped"``, ``"down"`` (SkyPilot has no such cluster) or ``"unknown"``, from
        SkyPilot's record, refreshed from the cloud when the cluster has autostop or spot machines."""
        return _state(self._record(request.cluster_name, refresh=self.sky.StatusRefreshMode.AUTO))

    # --- what RemoteCluster and `rh sky` use when present ----------------------------------------

    def refreshed_status(self, request: ProvisionRequest) -> str:
        """Like :meth:`status`, always asking the cloud (slower, seconds)."""
        return _state(self._record(request.cluster_name, refresh=self.sky.StatusRefreshMode.FORCE))

    def stop(self, request: ProvisionRequest) -> None:
        """Stop the machines, keeping their disks; the next call or ``up()`` restarts them."""
        name = request.cluster_name
        with self._sdk_errors(name, "stopping"):
            result(self.sky, self.sky.stop(name), show_progress=True)

    def autostop_minutes(self, request: ProvisionRequest) -> int:
        """The idle minutes after which SkyPilot stops the running cluster; -1 when it never does."""
        name = request.cluster_name
        record = self._record(name)
        if record is None:
            raise SkyError(f"SkyPilot has no cluster {name!r}; bring it up first with cluster.up()")
        return int(record["autostop"])

    def set_autostop(self, request: ProvisionRequest, minutes: int) -> None:
        """Stop the running cluster after ``minutes`` idle minutes (``-1``: never). Setting it also
        restarts SkyPilot's idle timer."""
        name = request.cluster_name
        with self._sdk_errors(name, "setting autostop of"):
            try:
                result(self.sky, self.sky.autostop(name, int(minutes)))
            except self.sky.exceptions.ClusterNotUpError as exc:
                raise SkyError(
                    f"cluster {name!r} is not up ({reason(exc)}); autostop applies to running machines: "
                    "bring it up with cluster.up() first"
                ) from exc

    # --- SkyPilot's side -------------------------------------------------------------------------

    @contextlib.contextmanager
    def _sdk_errors(self, name: str, doing: str, cloud: str | None = None, *, report_state: bool = False):
        """Turn SkyPilot's exceptions into errors that say what to do; ours pass through."""
        try:
            yield
        except RhError:
            raise
        except Exception as exc:
            after = f" SkyPilot now reports cluster {name!r} as {self._state_left(name)}." if report_state else ""
            raise explain(exc, self.sky, cluster_name=name, doing=doing, cloud=cloud, after=after) from exc

    def _state_left(self, name: str) -> str:
        """The cluster's state after a failure, for the error message (the query may fail too)."""
        try:
            record = self._record(name)
        except Exception as exc:  # the error being reported matters more than this one
            return f"unknown (asking SkyPilot failed: {reason(exc)})"
        return _sky_state(record) or "not existing (nothing is left running)"

    def _record(self, name: str, *, refresh: Any = None, credentials: bool = False, cloud: str | None = None) -> Any:
        """SkyPilot's record of cluster ``name``, or None when it has none."""
        sky = self.sky
        with self._sdk_errors(name, "looking up", cloud):
            request = sky.status([name], refresh=refresh or sky.StatusRefreshMode.NONE, all_users=True,
                                 _include_credentials=credentials)
            records = result(sky, request)
        return next((record for record in records if record["name"] == name), None)

    def _launch(self, name: str, spec: SkySpec) -> None:
        with self._sdk_errors(name, "launching", spec.cloud):
            task = spec.task(self.sky, name)  # SkyPilot judges accelerators, clouds and instance types here
        _forget_host_keys(name)  # new machines: their host keys are new too
        with self._sdk_errors(name, "launching", spec.cloud, report_state=True):
            request = self.sky.launch(task, cluster_name=name, idle_minutes_to_autostop=_autostop_or_none(spec),
                                      retry_until_up=False)
            result(self.sky, request, show_progress=True)

    def _start(self, name: str, spec: SkySpec) -> None:
        with self._sdk_errors(name, "starting", spec.cloud, report_state=True):
            request = self.sky.start(name, idle_minutes_to_autostop=_autostop_or_none(spec), retry_until_up=False)
            result(self.sky, request, show_progress=True)

    def _wait_until_stopped(self, name: str, spec: SkySpec) -> str | None:
        """An autostop is under way: wait for it to finish, so the cluster can be started again."""
        deadline = time.monotonic() + AUTOSTOPPING_WAIT_SECONDS
        while time.monotonic() < deadline:
            state = _sky_state(self._record(name, refresh=self.sky.StatusRefreshMode.FORCE, cloud=spec.cloud))
            if state != "AUTOSTOPPING":
                return state
            time.sleep(10)
        raise SkyLaunchError(
            f"cluster {name!r} has been autostopping for {AUTOSTOPPING_WAIT_SECONDS // 60} minutes; "
            f"check it with `rh sky status {name} --refresh` and the cloud's console"
        )

    # --- how to reach the machines ---------------------------------------------------------------

    def _cluster_info(self, name: str, record: Any, spec: SkySpec) -> ClusterInfo:
        handle = record["handle"]
        credentials = dict(record.get("credentials") or {})
        addresses = list(handle.cached_external_ips or ())
        if not addresses:
            raise SkyError(
                f"SkyPilot's record of cluster {name!r} has no addresses yet; check `rh sky status {name} --refresh`"
            )
        if credentials.get("ssh_proxy_command") or getattr(handle, "docker_user", None):
            raise SkyError(
                f"cluster {name!r} is reached through a proxy or a container (Kubernetes, Slurm or a docker: "
                "image), which the ssh transport does not support yet; use a VM cloud and a machine image"
            )
        ports = list(handle.cached_external_ssh_ports or [22] * len(addresses))
        head, workers = addresses[0], tuple(addresses[1:])
        state_dir = local_state_dir(name)
        os.makedirs(state_dir, mode=0o700, exist_ok=True)
        options = {
            "user": credentials.get("ssh_user") or handle.ssh_user,
            "private_key": self._private_key(name, credentials, state_dir),
            "port": ports[0],
            # SkyPilot's machines are new to this client: trust their key on first contact, per cluster.
            "known_hosts": os.path.join(state_dir, "known_hosts"),
            "trust_new_host": True,
            "use_agent": False,
        }
        host_options = {address: {"port": port} for address, port in zip(workers, ports[1:]) if port != ports[0]}
        resources = getattr(handle, "launched_resources", None)
        return ClusterInfo(
            head=head,
            workers=workers,
            transport="ssh",
            transport_options=options,
            host_options=host_options,
            provider_data={
                "cloud": str(getattr(resources, "cloud", None) or spec.cloud or ""),
                "region": getattr(resources, "region", None) or spec.region,
                "internal_ips": list(handle.cached_internal_ips or ()),
                "idle_timer_db": f"{self.sky.skylet.constants.SKY_RUNTIME_DIR}/{SKYLET_CONFIG_DB}",
                "activity_check_seconds": spec.activity_check_seconds,
            },
        )

    @staticmethod
    def _private_key(name: str, credentials: dict[str, Any], state_dir: str) -> str:
        """The SSH key SkyPilot made for the cluster: its content when the API server sends it (a
        remote API server's key path means nothing here), else its path."""
        content = credentials.get("ssh_private_key_content")
        if content:
            path = os.path.join(state_dir, "ssh-key")
            descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(descriptor, "w") as file:
                file.write(content)
            return path
        path = credentials.get("ssh_private_key")
        if not path:
            raise SkyError(
                f"SkyPilot's record of cluster {name!r} carries no SSH key; check `sky status {name}` and "
                "`sky api info` (the API server shares keys with its own users only)"
            )
        return os.path.expanduser(path)


def _sky_state(record: Any) -> str | None:
    """SkyPilot's status name (``"UP"``, ``"STOPPED"``, ...), or None when there is no record."""
    if record is None:
        return None
    status = record["status"]
    return getattr(status, "value", status)


def _state(record: Any) -> str:
    state = _sky_state(record)
    return "down" if state is None else STATES.get(state, "unknown")


def _autostop_or_none(spec: SkySpec) -> int | None:
    # SkyPilot takes None, not -1, for "no autostop" at launch and start.
    return spec.autostop_mins if spec.autostop_mins >= 0 else None


def _forget_host_keys(name: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(os.path.join(local_state_dir(name), "known_hosts"))
