"""A recording stand-in for SkyPilot's SDK, for tests: set ``RH_SKY_SDK=rh_sky.testing:FakeSkyPilot``.

It offers the names of the ``sky`` module that rh-sky uses. ``Task``, ``Resources``, the status
enums and the exceptions are SkyPilot's own classes (they build offline); the SDK calls are checked
against the real functions' signatures, recorded, and answered with request ids that ``get`` and
``stream_and_get`` resolve, as SkyPilot 0.14's client does. Its "cloud" hands out the machines it
was given (a local sshd in rh-sky's tests) and keeps its clusters in a directory
(``RH_SKY_FAKE_DIR``), so an ``rh sky`` subprocess sees the same clusters.

    fake = FakeSkyPilot.create(tmp_path, addresses=["127.0.0.1"], ssh_port=2222, ssh_user="root",
                               private_key="/path/key", runtime_dir=tmp_path / "skylet")
    fake.calls("launch")[0]["task"]     # the launched Task, as SkyPilot's own to_yaml_config()
    fake.fail_next("launch", "ResourcesUnavailableError", "no capacity", leave_status="INIT")
"""

from __future__ import annotations

import builtins
import copy
import inspect
import json
import os
import time
import uuid
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import attrs

from rh_core.support.files import write_atomically

STATE_FILE = "fake-skypilot.json"
DIRECTORY_VARIABLE = "RH_SKY_FAKE_DIR"


@attrs.define
class FakeHandle:
    """The parts of SkyPilot's ``CloudVmRayResourceHandle`` that rh-sky reads."""

    cluster_name: str
    cached_external_ips: list[str]
    cached_internal_ips: list[str]
    cached_external_ssh_ports: list[int]
    ssh_user: str
    launched_nodes: int
    launched_resources: Any
    docker_user: str | None = None


class FakeSkyPilot:
    """See the module docstring. Every instance on the same directory shares one fake cloud."""

    def __init__(self, directory: str | os.PathLike[str] | None = None) -> None:
        import sky
        import sky.exceptions
        from sky.client import sdk

        self.directory = Path(directory or os.environ[DIRECTORY_VARIABLE])
        self._sky, self._real_sdk = sky, sdk
        self.Task, self.Resources = sky.Task, sky.Resources
        self.ClusterStatus, self.StatusRefreshMode = sky.ClusterStatus, sky.StatusRefreshMode
        self.exceptions = sky.exceptions
        runtime_dir = self._state()["cloud"]["runtime_dir"]
        self.skylet = SimpleNamespace(constants=SimpleNamespace(SKY_RUNTIME_DIR=runtime_dir))
        self._answers: dict[str, tuple[bool, Any]] = {}

    @classmethod
    def create(cls, directory: str | os.PathLike[str], *, addresses: list[str], ssh_port: int, ssh_user: str,
               private_key: str | os.PathLike[str], runtime_dir: str | os.PathLike[str]) -> "FakeSkyPilot":
        """A new fake cloud in ``directory`` whose clusters run on ``addresses`` (the first is every
        cluster's head), reached as ``ssh_user`` with ``private_key``; ``runtime_dir`` stands for
        SkyPilot's runtime dir on those machines (its ``.sky/skylet_config.db`` holds the idle timer)."""
        Path(directory).mkdir(parents=True, exist_ok=True)
        state = {"cloud": {"addresses": list(addresses), "ssh_port": ssh_port, "ssh_user": ssh_user,
                           "private_key": str(private_key), "runtime_dir": str(runtime_dir)},
                 "clusters": {}, "failures": {}, "calls": []}
        (Path(directory) / STATE_FILE).write_text(json.dumps(state))
        return cls(directory)

    # --- the fake cloud's state, in a file ---------------------------------------------------------

    def _state(self) -> dict[str, Any]:
        return json.loads((self.directory / STATE_FILE).read_text())

    def _save(self, state: dict[str, Any]) -> None:
        write_atomically(str(self.directory / STATE_FILE), json.dumps(state), 0o644)

    def calls(self, name: str | None = None) -> list[dict[str, Any]]:
        """The SDK calls made so far (all, or those of one function), with their arguments."""
        return [call for call in self._state()["calls"] if name is None or call["call"] == name]

    def launched_task(self, index: int = -1) -> Any:
        """A launched Task rebuilt from its record with SkyPilot's ``Task.from_yaml_config``."""
        return self.Task.from_yaml_config(copy.deepcopy(self.calls("launch")[index]["task"]))

    def fail_next(self, call: str, error: str, message: str, *, leave_status: str | None = None) -> None:
        """Make the next ``call`` (``"launch"``, ``"start"``, ...) fail with ``sky.exceptions.<error>``
        (or a builtin exception such as ``ValueError``),
        leaving its cluster in ``leave_status`` (``"INIT"``, ...) as SkyPilot would."""
        state = self._state()
        state["failures"][call] = {"error": error, "message": message, "leave_status": leave_status}
        self._save(state)

    def set_status(self, cluster_name: str, status: str) -> None:
        """Change a cluster's state behind rh's back, as an autostop or the cloud's console does."""
        state = self._state()
        state["clusters"][cluster_name]["status"] = status
        self._save(state)

    def set_machines(self, *, addresses: list[str] | None = None, ssh_port: int | None = None) -> None:
        """Where machines started from now on are (a restarted VM gets a new address)."""
        state = self._state()
        if addresses is not None:
            state["cloud"]["addresses"] = list(addresses)
        if ssh_port is not None:
            state["cloud"]["ssh_port"] = ssh_port
        self._save(state)

    def cluster(self, cluster_name: str) -> dict[str, Any] | None:
        return self._state()["clusters"].get(cluster_name)

    # --- SkyPilot's SDK --------------------------------------------------------------------------

    def launch(self, *args: Any, **kwargs: Any) -> str:
        arguments = self._called("launch", args, kwargs)
        task = arguments["task"]
        if not isinstance(task, self.Task) or not all(isinstance(r, self.Resources) for r in task.resources):
            raise TypeError(f"sky.launch takes a sky.Task with sky.Resources, not {task!r}")
        name = arguments["cluster_name"]

        def run(state: dict[str, Any]) -> Any:
            cluster = state["clusters"].get(name)
            if cluster is None:
                cluster = state["clusters"][name] = {"task": task.to_yaml_config(), "nodes": task.num_nodes,
                                                     "launched_at": int(time.time())}
            self._bring_up(state, cluster, arguments["idle_minutes_to_autostop"])
            return None, None  # (job id, handle): no job is queued for a task without a run command

        return self._request("launch", name, run)

    def start(self, *args: Any, **kwargs: Any) -> str:
        arguments = self._called("start", args, kwargs)
        name = arguments["cluster_name"]

        def run(state: dict[str, Any]) -> Any:
            self._bring_up(state, self._existing(state, name), arguments["idle_minutes_to_autostop"])

        return self._request("start", name, run)

    def stop(self, *args: Any, **kwargs: Any) -> str:
        name = self._called("stop", args, kwargs)["cluster_name"]

        def run(state: dict[str, Any]) -> Any:
            self._existing(state, name)["status"] = "STOPPED"

        return self._request("stop", name, run)

    def down(self, *args: Any, **kwargs: Any) -> str:
        name = self._called("down", args, kwargs)["cluster_name"]

        def run(state: dict[str, Any]) -> Any:
            self._existing(state, name)
            del state["clusters"][name]

        return self._request("down", name, run)

    def autostop(self, *args: Any, **kwargs: Any) -> str:
        arguments = self._called("autostop", args, kwargs)
        name = arguments["cluster_name"]

        def run(state: dict[str, Any]) -> Any:
            cluster = self._existing(state, name)
            if cluster["status"] != "UP":
                raise self.exceptions.ClusterNotUpError(f"Cluster {name!r} is not up (status {cluster['status']}).")
            cluster["autostop"] = arguments["idle_minutes"] if arguments["idle_minutes"] >= 0 else -1

        return self._request("autostop", name, run)

    def status(self, *args: Any, **kwargs: Any) -> str:
        arguments = self._called("status", args, kwargs)
        names = arguments["cluster_names"]

        def run(state: dict[str, Any]) -> Any:
            return [self._status_record(state, name, cluster, arguments["_include_credentials"])
                    for name, cluster in state["clusters"].items() if names is None or name in names]

        return self._request("status", None, run)

    def get(self, request_id: str) -> Any:
        ok, answer = self._answers.pop(request_id)
        if not ok:
            raise answer
        return answer

    def stream_and_get(self, request_id: str) -> Any:
        print(f"(fake SkyPilot) request {request_id}: done", flush=True)
        return self.get(request_id)

    # --- inside the fake ---------------------------------------------------------------------------

    def _called(self, call: str, args: tuple, kwargs: dict[str, Any]) -> dict[str, Any]:
        """Check a call against SkyPilot's real signature, record it, and return its arguments."""
        bound = inspect.signature(getattr(self._real_sdk, call)).bind(*args, **kwargs)
        bound.apply_defaults()
        arguments = dict(bound.arguments)
        record = {key: (value.to_yaml_config() if isinstance(value, self.Task) else
                        getattr(value, "value", value)) for key, value in arguments.items()}
        state = self._state()
        state["calls"].append({"call": call, **record})
        self._save(state)
        return arguments

    def _request(self, call: str, cluster_name: str | None, run: Any) -> str:
        """Run a call against the fake cloud now and keep its answer for ``get``, as a request id."""
        request_id = f"fake-{call}-{uuid.uuid4().hex[:8]}"
        state = self._state()
        failure = state["failures"].pop(call, None)
        try:
            if failure is not None:
                if failure["leave_status"] and cluster_name:
                    cluster = state["clusters"].setdefault(cluster_name, {"nodes": 1, "launched_at": int(time.time())})
                    cluster["status"] = failure["leave_status"]
                error = getattr(self.exceptions, failure["error"], None) or getattr(builtins, failure["error"])
                raise error(failure["message"])
            answer = (True, run(state))
        except Exception as exc:
            answer = (False, exc)
        self._save(state)
        self._answers[request_id] = answer
        return request_id

    def _existing(self, state: dict[str, Any], name: str) -> dict[str, Any]:
        if name not in state["clusters"]:
            raise self.exceptions.ClusterDoesNotExist(f"Cluster {name!r} does not exist.")
        return state["clusters"][name]

    def _bring_up(self, state: dict[str, Any], cluster: dict[str, Any], autostop: int | None) -> None:
        cloud = state["cloud"]
        if cluster["nodes"] > len(cloud["addresses"]):
            raise self.exceptions.ResourcesUnavailableError(
                f"the fake cloud has {len(cloud['addresses'])} machines, not {cluster['nodes']}")
        cluster.update(status="UP", autostop=-1 if autostop is None else autostop,
                       addresses=cloud["addresses"][:cluster["nodes"]], ssh_port=cloud["ssh_port"])

    def _status_record(self, state: dict[str, Any], name: str, cluster: dict[str, Any], credentials: bool) -> Any:
        from sky.schemas.api.responses import StatusResponse

        cloud = state["cloud"]
        # from_yaml_config consumes the dict it is given: hand it a copy.
        task = self.Task.from_yaml_config(copy.deepcopy(cluster["task"])) if "task" in cluster else None
        resources = next(iter(task.resources)) if task is not None else None
        addresses = cluster.get("addresses") if cluster["status"] == "UP" else None
        handle = FakeHandle(
            cluster_name=name, cached_external_ips=addresses, cached_internal_ips=addresses,
            cached_external_ssh_ports=[cluster.get("ssh_port", 22)] * len(addresses or ()),
            ssh_user=cloud["ssh_user"], launched_nodes=cluster["nodes"], launched_resources=resources,
        )
        record = StatusResponse(
            name=name, launched_at=cluster["launched_at"], handle=handle,
            status=self.ClusterStatus(cluster["status"]), autostop=cluster.get("autostop", -1), to_down=False,
            cluster_hash=f"fake-{name}", cluster_ever_up=True, user_hash="fake", user_name="fake",
            workspace="default", is_managed=False, nodes=cluster["nodes"],
            resources_str=f"{cluster['nodes']}x {resources}" if resources is not None else None,
        )
        if credentials:
            record["credentials"] = {
                "ssh_user": cloud["ssh_user"], "ssh_private_key": "~/.sky/clients/fake/ssh/sky-key",
                "ssh_private_key_content": Path(cloud["private_key"]).read_text(), "ssh_control_name": name,
                "ssh_proxy_command": None,
            }
        return record
