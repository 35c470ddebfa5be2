"""A local stand-in for the handful of Compute API endpoints rh-gcp uses, and for the metadata
server its idle watcher asks, for tests: the real ``google-cloud-compute`` client talks to it over
plain HTTP.

Instances it creates get their addresses from a list you give (loopback sshd test hosts), and the
public key in their ``ssh-keys`` metadata is appended to an ``authorized_keys`` file, as GCE's
guest agent would install it. With :class:`LoopbackHost` objects for those addresses, an instance
is a machine: while none at an address runs, its host is powered off (every process started
through it is killed and SSH is refused), and starting an instance powers it on again. Every
request is recorded; failures can be queued per operation; :meth:`ComputeStandIn.preempt` takes a
Spot VM away as Compute Engine does. Nothing here needs Google credentials: use
``google.auth.credentials.AnonymousCredentials()``.
"""

from __future__ import annotations

import http.server
import itertools
import json
import os
import random
import re
import socket
import subprocess
import sys
import threading
import time
import urllib.parse
from pathlib import Path
from typing import Any, Protocol

import attrs

from rh_core.support.processes import LaunchError, launch, stop_process

_ZONE_PATH = re.compile(r"^/compute/v1/projects/(?P<project>[^/]+)/zones/(?P<zone>[^/]+)/(?P<rest>.*)$")
_GLOBAL_PATH = re.compile(r"^/compute/v1/projects/(?P<project>[^/]+)/global/(?P<rest>.*)$")
#: ``FIELD = "VALUE"`` (FIELD may be dotted: ``labels.rh-cluster``, ``operationType``), or
#: ``labels.KEY:*`` (the label is present).
_FILTER = re.compile(r'^(?P<field>[-\w.]+)\s*(?:=\s*"?(?P<value>[^"]*)"?|:\s*(?P<any>\*))$')

#: Instance states in which the machine behind an instance is powered on.
POWERED = ("RUNNING", "STOPPING", "SUSPENDING")


class Host(Protocol):
    """A test machine the stand-in powers on and off with the instances at its address."""

    @property
    def running(self) -> bool: ...

    def start(self) -> None: ...

    def stop(self) -> None: ...


# Runs as the "machine's" init: a child subreaper, so every process that came in through its sshd
# (SSH sessions, servers that detached with setsid, the idle watcher) stays its descendant; SIGTERM
# kills them all, as powering off a VM does, and reaps them (this box's PID 1 reaps nothing).
_HOST_INIT = r"""
import ctypes, os, signal, subprocess, sys, time
ctypes.CDLL(None).prctl(36, 1, 0, 0, 0)  # PR_SET_CHILD_SUBREAPER
subprocess.Popen(sys.argv[1:], stdin=subprocess.DEVNULL)
me = os.getpid()
def descendants():
    children = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if fields[0] != "Z":
            children.setdefault(int(fields[1]), []).append(int(entry))
    found, todo = [], [me]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found
def reap():
    while True:
        try:
            if os.waitpid(-1, os.WNOHANG)[0] == 0:
                return
        except ChildProcessError:
            return
def power_off(*_):
    for _ in range(200):
        pids = descendants()
        if not pids:
            break
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        time.sleep(0.02)
        reap()
    reap()
    os._exit(0)
signal.signal(signal.SIGTERM, power_off)
while True:
    try:
        os.wait()
    except ChildProcessError:
        time.sleep(0.5)
"""


def free_port_on(addresses: list[str], low: int = 20000, high: int = 32000) -> int:
    """A TCP port free on every one of ``addresses``, below the kernel's ephemeral range, so that
    no outgoing connection takes it while a host that listens there is powered off."""
    for _ in range(200):
        port = random.randint(low, high)
        probes = []
        try:
            for address in addresses:
                probe = socket.socket()
                probes.append(probe)
                probe.bind((address, port))
            return port
        except OSError:
            continue
        finally:
            for probe in probes:
                probe.close()
    raise RuntimeError(f"no port between {low} and {high} is free on {addresses}")


@attrs.define
class LoopbackHost:
    """A test machine at ``address``: an sshd listening on ``address:port`` under an init process of
    its own (see ``_HOST_INIT``). :meth:`stop` ends every process that came in through it and leaves
    the port refusing connections, :meth:`start` brings sshd back with the same host key.

    :param directory: where its sshd_config, pid file and log go.
    """

    address: str
    port: int
    directory: Path
    host_key: Path
    authorized_keys: Path
    _process: subprocess.Popen | None = attrs.field(default=None, init=False)

    @property
    def log(self) -> Path:
        return self.directory / f"sshd-{self.address}.log"

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def start(self) -> None:
        from rh_core.testing.sshd import SSHD, sshd_config

        if self.running:
            return
        config = self.directory / f"sshd-{self.address}.config"
        config.write_text(sshd_config(port=self.port, listen=self.address, host_key=self.host_key,
                                      pid_file=self.directory / f"sshd-{self.address}.pid",
                                      authorized_keys=self.authorized_keys))
        os.makedirs("/run/sshd", exist_ok=True)  # sshd refuses to start without its privilege-separation dir

        def listening(_: subprocess.Popen) -> bool:
            try:
                socket.create_connection((self.address, self.port), timeout=0.5).close()
                return True
            except OSError:
                return False

        try:
            self._process = launch([sys.executable, "-c", _HOST_INIT, SSHD, "-D", "-f", str(config), "-E", str(self.log)],
                                   str(self.directory / f"init-{self.address}.log"), ready=listening, timeout=15)
        except LaunchError as exc:
            self._process = exc.process
            self.stop()
            log = self.log.read_text(errors="replace") if self.log.exists() else ""
            raise RuntimeError(f"sshd of test host {self.address}:{self.port} did not start:\n{log}") from None

    def stop(self) -> None:
        process, self._process = self._process, None
        if process is not None and stop_process(process, grace=20):
            # Its descendants are then orphans of PID 1: name it rather than hang.
            raise RuntimeError(f"test host {self.address} did not power off within 20 s")


@attrs.frozen(kw_only=True)
class Request:
    method: str
    path: str
    query: dict[str, str]
    body: dict[str, Any] | None
    authorization: str | None


@attrs.define
class ComputeStandIn:
    """The fake Compute API; :meth:`start` it, point ``api_endpoint`` at :attr:`endpoint`.

    :param addresses: external addresses of new instances: the first for ``*-head``, the N+1st for
        ``*-worker-N`` (reused cyclically when there are fewer).
    :param authorized_keys: where the ``ssh-keys`` metadata of new instances is appended.
    :param projects: the projects that exist; others answer 404 as the API does.
    :param hosts: the machines at those addresses (:class:`LoopbackHost`), powered on while an
        instance at their address is RUNNING (or STOPPING), off otherwise; without them instances
        change state only on paper.
    :param networks: the VPC networks of every project.
    :param firewalls: firewall rules by ``(project, name)``, as :meth:`add_firewall` makes them.
    :param operation_seconds: how long an operation runs before it finishes by itself, as the
        cloud's do (it finishes at once when a client waits for it or gets it); None: never by itself.
    """

    addresses: list[str]
    authorized_keys: Path | None = None
    projects: tuple[str, ...] = ("test-project",)
    hosts: dict[str, Host] = attrs.field(factory=dict)
    networks: tuple[str, ...] = ("default",)
    firewalls: dict[tuple[str, str], dict[str, Any]] = attrs.field(factory=dict)
    operation_seconds: float | None = 1.0
    instances: dict[tuple[str, str, str], dict[str, Any]] = attrs.field(factory=dict)
    operations: dict[str, dict[str, Any]] = attrs.field(factory=dict)
    requests: list[Request] = attrs.field(factory=list)
    _failures: dict[str, list[tuple[int, str, str]]] = attrs.field(factory=dict)
    _operation_failures: dict[str, list[tuple[str, str]]] = attrs.field(factory=dict)
    _ids: Any = attrs.field(factory=itertools.count)
    _lock: threading.RLock = attrs.field(factory=threading.RLock)
    _timers: list[threading.Timer] = attrs.field(factory=list)
    _server: http.server.ThreadingHTTPServer | None = None

    # --- control from tests ------------------------------------------------------------------------

    def start(self) -> ComputeStandIn:
        stand_in = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                stand_in._handle(self)

            do_POST = do_DELETE = do_GET

            def log_message(self, *args: Any) -> None:
                pass

        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        with self._lock:
            self._power_hosts()  # no instances yet: every host is off
        return self

    def stop(self) -> None:
        """Stop answering; hosts stay as they are (a session's hosts outlive each test's stand-in)."""
        with self._lock:
            for timer in self._timers:
                timer.cancel()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()

    @property
    def endpoint(self) -> str:
        assert self._server is not None, "start() the stand-in first"
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    @property
    def metadata_url(self) -> str:
        """The metadata server's base URL, answering for the first head instance."""
        return f"{self.endpoint}/computeMetadata/v1"

    def fail_next(self, action: str, status: int, message: str, reason: str = "") -> None:
        """Answer the next ``action`` request (``insert``, ``get``, ``list``, ``start``, ...) with an
        HTTP error, as the API does: ``{"error": {"code", "message", "errors": [{"reason"}]}}``."""
        self._failures.setdefault(action, []).append((status, message, reason))

    def fail_next_operation(self, action: str, code: str, message: str) -> None:
        """Accept the next ``action`` request, and let its operation end DONE with this error."""
        self._operation_failures.setdefault(action, []).append((code, message))

    def calls(self, action: str) -> list[Request]:
        """Recorded requests of one ``action``."""
        return [request for request in self.requests if _action(request.method, request.path) == action]

    def instance(self, name: str) -> dict[str, Any] | None:
        return next((item for key, item in self.instances.items() if key[2] == name), None)

    def set_status(self, name: str, status: str) -> None:
        """Change an instance's state as the cloud might; its host follows."""
        with self._lock:
            instance = self.instance(name)
            assert instance is not None, f"no instance {name}"
            instance["status"] = status
            self._power_hosts()

    def preempt(self, name: str) -> str:
        """Preempt a Spot VM as Compute Engine does with ``instanceTerminationAction: STOP``: a
        ``compute.instances.preempted`` operation by ``system`` in the zone, the instance TERMINATED
        with its ``lastStopTimestamp``, and its host powered off, all at once (the cloud gives the guest
        up to 30 s of STOPPING first). Returns the operation's name."""
        with self._lock:
            key = next(key for key in self.instances if key[2] == name)
            instance = self.instances[key]
            assert instance.get("scheduling", {}).get("provisioningModel") == "SPOT", f"{name} is not a Spot VM"
            now = _timestamp()
            operation = f"operation-{next(self._ids)}-preempted"
            self.operations[operation] = {
                "name": operation, "kind": "compute#operation", "operationType": "compute.instances.preempted",
                "status": "DONE", "statusMessage": "Instance was preempted.", "user": "system", "progress": 100,
                "zone": instance["zone"], "targetLink": self._link(key), "targetId": instance["id"],
                "insertTime": now, "startTime": now, "endTime": now,
                "_then": lambda: None, "_failure": None, "_on_error": None}
            instance.update(status="TERMINATED", lastStopTimestamp=now)
            self._power_hosts()
            return operation

    def add_firewall(self, name: str, *, project: str = "test-project", network: str = "default",
                     ports: tuple[str, ...] = ("22",), target_tags: tuple[str, ...] = (),
                     source_ranges: tuple[str, ...] = ("0.0.0.0/0",)) -> None:
        """A firewall rule that exists before the test (the console's ``default-allow-ssh``, say)."""
        self.firewalls[(project, name)] = {
            "name": name, "network": f"{self.endpoint}/compute/v1/projects/{project}/global/networks/{network}",
            "direction": "INGRESS", "priority": 1000, "sourceRanges": list(source_ranges),
            "allowed": [{"IPProtocol": "tcp", "ports": list(ports)}],
            **({"targetTags": list(target_tags)} if target_tags else {})}

    def set_metadata_item(self, name: str, key: str, value: str) -> None:
        instance = self.instance(name)
        assert instance is not None, f"no instance {name}"
        items = [item for item in instance["metadata"]["items"] if item["key"] != key]
        instance["metadata"]["items"] = [*items, {"key": key, "value": value}]

    # --- HTTP -----------------------------------------------------------------------------------

    def _handle(self, handler: http.server.BaseHTTPRequestHandler) -> None:
        url = urllib.parse.urlsplit(handler.path)
        length = int(handler.headers.get("Content-Length") or 0)
        raw = handler.rfile.read(length) if length else b""
        body = json.loads(raw) if raw.strip() else None
        query = dict(urllib.parse.parse_qsl(url.query))
        with self._lock:
            self.requests.append(Request(method=handler.command, path=url.path, query=query, body=body,
                                         authorization=handler.headers.get("Authorization")))
            status, payload = self._answer(handler.command, url.path, query, body)
        data = payload.encode() if isinstance(payload, str) else json.dumps(payload).encode()
        try:
            handler.send_response(status)
            handler.send_header("Content-Type", "text/plain" if isinstance(payload, str) else "application/json")
            handler.send_header("Content-Length", str(len(data)))
            handler.end_headers()
            handler.wfile.write(data)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the asker went away (an idle watcher on a host that was just powered off)

    def _answer(self, method: str, path: str, query: dict[str, str], body: Any) -> tuple[int, Any]:
        if path.startswith("/computeMetadata/v1/"):
            return self._metadata(path.removeprefix("/computeMetadata/v1/"))
        action = _action(method, path)
        if self._failures.get(action):
            status, message, reason = self._failures[action].pop(0)
            return status, {"error": {"code": status, "message": message,
                                      "errors": [{"message": message, "domain": "global", "reason": reason}]}}
        global_match = _GLOBAL_PATH.match(path)
        if global_match is not None:
            if global_match["project"] not in self.projects:
                return _project_not_found(global_match["project"])
            return self._global(method, global_match["project"], global_match["rest"].split("/"), query, body)
        match = _ZONE_PATH.match(path)
        if match is None:
            return 404, {"error": {"code": 404, "message": f"stand-in: no route {method} {path}"}}
        project, zone, rest = match["project"], match["zone"], match["rest"]
        if project not in self.projects:
            return _project_not_found(project)
        parts = rest.split("/")
        if rest == "operations" and method == "GET":
            zone_link = f"projects/{project}/zones/{zone}"
            return 200, {"items": [_public(operation) for operation in self.operations.values()
                                   if operation.get("zone", "").endswith(zone_link)
                                   and _matches(operation, query.get("filter", ""))]}
        if parts[0] == "operations":
            return self._operation(parts[1], wait=len(parts) > 2)
        if rest == "instances" and method == "GET":
            return 200, {"items": [item for (p, z, _), item in self.instances.items()
                                   if (p, z) == (project, zone) and _matches(item, query.get("filter", ""))]}
        if rest == "instances" and method == "POST":
            return self._insert(project, zone, body)
        key = (project, zone, parts[1])
        instance = self.instances.get(key)
        if instance is None:
            return 404, {"error": {"code": 404, "errors": [{"reason": "notFound", "message": "not found"}],
                                   "message": f"The resource 'projects/{project}/zones/{zone}/instances/{parts[1]}' "
                                              "was not found"}}
        if len(parts) == 2 and method == "GET":
            return 200, instance
        if len(parts) == 2 and method == "DELETE":
            return self._operate("delete", instance, then=lambda: self.instances.pop(key, None))
        verb = parts[2]
        if verb == "stop":
            instance["status"] = "STOPPING"
            return self._operate("stop", instance,
                                 then=lambda: instance.update(status="TERMINATED", lastStopTimestamp=_timestamp()))
        if verb == "start":
            if instance["status"] not in ("TERMINATED", "STOPPED"):
                return 400, {"error": {"code": 400, "message": f"The resource '{self._link(key)}' is not ready",
                                       "errors": [{"reason": "resourceNotReady"}]}}
            instance["status"] = "STAGING"
            return self._operate("start", instance,
                                 then=lambda: instance.update(status="RUNNING", lastStartTimestamp=_timestamp()))
        if verb == "setMetadata":
            if body.get("fingerprint") != instance["metadata"]["fingerprint"]:
                return 412, {"error": {"code": 412, "message": "Supplied fingerprint does not match current metadata "
                                                               "fingerprint.", "errors": [{"reason": "conditionNotMet"}]}}
            instance["metadata"] = {"items": body.get("items", []), "fingerprint": f"fp{next(self._ids)}"}
            return self._operate("setMetadata", instance, then=lambda: None)
        return 404, {"error": {"code": 404, "message": f"stand-in: no route {method} {path}"}}

    def _insert(self, project: str, zone: str, body: dict[str, Any]) -> tuple[int, Any]:
        name = body["name"]
        if (project, zone, name) in self.instances:
            return 409, {"error": {"code": 409, "message": f"The resource '{name}' already exists",
                                   "errors": [{"reason": "alreadyExists"}]}}
        # The head gets the first address, worker N the N+1st: the same machine after a re-create.
        number = 0 if name.endswith("-head") else int(name.rsplit("-", 1)[1])
        address = self.addresses[number % len(self.addresses)]
        network = body.get("networkInterfaces", [{}])[0].get("network", "global/networks/default")
        if network.rsplit("/", 1)[-1] not in self.networks:
            return 400, {"error": {"code": 400, "errors": [{"reason": "invalid"}],
                                   "message": f"Invalid value for field 'resource.networkInterfaces[0].network': "
                                              f"'{network}'. The referenced network resource cannot be found."}}
        instance = {
            **body,
            "id": str(next(self._ids)),
            "status": "PROVISIONING",
            "zone": f"projects/{project}/zones/{zone}",
            "metadata": {**body.get("metadata", {}), "fingerprint": f"fp{next(self._ids)}"},
            "networkInterfaces": [{"network": f"{self.endpoint}/compute/v1/projects/{project}/global/networks/"
                                              f"{network.rsplit('/', 1)[-1]}",
                                   "networkIP": f"10.128.0.{number + 2}",
                                   "accessConfigs": [{"natIP": address, "type": "ONE_TO_ONE_NAT"}]}],
        }
        self.instances[(project, zone, name)] = instance

        def created() -> None:
            instance.update(status="RUNNING", lastStartTimestamp=_timestamp())
            keys = {item["key"]: item["value"] for item in instance["metadata"].get("items", [])}
            if self.authorized_keys is not None and "ssh-keys" in keys:
                _, _, public_key = keys["ssh-keys"].partition(":")
                with open(self.authorized_keys, "a") as file:
                    file.write(public_key.strip() + "\n")

        def failed() -> None:
            self.instances.pop((project, zone, name), None)

        return self._operate("insert", instance, then=created, on_error=failed)

    def _operate(self, action: str, instance: dict[str, Any], then: Any, on_error: Any = None,
                 scope: str | None = None) -> tuple[int, Any]:
        """An operation that is RUNNING until someone waits for or gets it, or ``operation_seconds`` pass."""
        name = f"operation-{next(self._ids)}"
        failure = self._operation_failures.get(action, [None]).pop(0) if self._operation_failures.get(action) else None
        target = (f"{self.endpoint}/compute/v1/{scope}" if scope else
                  f"{self.endpoint}/compute/v1/{instance['zone']}/instances/{instance['name']}")
        self.operations[name] = {"name": name, "status": "RUNNING", "operationType": action,
                                 "insertTime": _timestamp(), "targetLink": target,
                                 **({} if scope else {"zone": instance["zone"]}),
                                 "_then": then, "_failure": failure, "_on_error": on_error}
        if self.operation_seconds is not None:
            timer = threading.Timer(self.operation_seconds, self._finish_by_itself, args=(name,))
            timer.daemon = True
            self._timers.append(timer)
            timer.start()
        return 200, _public(self.operations[name])

    def _finish_by_itself(self, name: str) -> None:
        with self._lock:
            self._operation(name, wait=False)

    def _operation(self, name: str, wait: bool) -> tuple[int, Any]:
        operation = self.operations.get(name)
        if operation is None:
            return 404, {"error": {"code": 404, "message": f"operation {name} not found"}}
        if operation["status"] != "DONE":
            operation.update(status="DONE", endTime=_timestamp())
            if operation["_failure"]:
                code, message = operation["_failure"]
                operation["error"] = {"errors": [{"code": code, "message": message}]}
                operation["httpErrorStatusCode"] = 403 if "QUOTA" in code else 400
                if operation["_on_error"]:
                    operation["_on_error"]()
            else:
                operation["_then"]()
            self._power_hosts()
        return 200, _public(operation)

    def _power_hosts(self) -> None:
        """Power each host on while an instance at its address runs, off otherwise."""
        powered = {_address(instance) for instance in self.instances.values() if instance["status"] in POWERED}
        for address, host in self.hosts.items():
            if address in powered and not host.running:
                host.start()
            elif address not in powered and host.running:
                host.stop()

    def _link(self, key: tuple[str, str, str]) -> str:
        project, zone, name = key
        return f"{self.endpoint}/compute/v1/projects/{project}/zones/{zone}/instances/{name}"

    # --- global resources: networks, firewall rules, global operations ---------------------------

    def _global(self, method: str, project: str, parts: list[str], query: dict[str, str],
                body: Any) -> tuple[int, Any]:
        kind = parts[0]
        if kind == "operations" and len(parts) >= 2:
            return self._operation(parts[1], wait=len(parts) > 2)
        if kind == "networks" and len(parts) == 1 and method == "GET":
            return 200, {"items": [{"name": name, "selfLink": f"{self.endpoint}/compute/v1/projects/{project}/global/"
                                                              f"networks/{name}"} for name in self.networks]}
        if kind == "networks" and len(parts) == 2 and method == "GET":
            if parts[1] not in self.networks:
                return 404, {"error": {"code": 404, "errors": [{"reason": "notFound", "message": "not found"}],
                                       "message": f"The resource 'projects/{project}/global/networks/{parts[1]}' "
                                                  "was not found"}}
            return 200, {"name": parts[1], "selfLink": f"{self.endpoint}/compute/v1/projects/{project}/global/networks/"
                                                       f"{parts[1]}", "autoCreateSubnetworks": True}
        if kind == "firewalls" and len(parts) == 1 and method == "GET":
            return 200, {"items": [rule for (p, _), rule in self.firewalls.items()
                                   if p == project and _matches(rule, query.get("filter", ""))]}
        if kind == "firewalls" and len(parts) == 1 and method == "POST":
            key = (project, body["name"])
            if key in self.firewalls:
                return 409, {"error": {"code": 409, "errors": [{"reason": "alreadyExists"}],
                                       "message": f"The resource 'projects/{project}/global/firewalls/{body['name']}' "
                                                  "already exists"}}
            network = body.get("network", "global/networks/default").rsplit("/", 1)[-1]
            if network not in self.networks:
                return 400, {"error": {"code": 400, "errors": [{"reason": "invalid"}],
                                       "message": f"Invalid value for field 'resource.network': '{body.get('network')}'. "
                                                  "The referenced network resource cannot be found."}}
            rule = {**body, "id": str(next(self._ids)),
                    "network": f"{self.endpoint}/compute/v1/projects/{project}/global/networks/{network}"}
            return self._operate("firewalls.insert", rule, scope=f"projects/{project}/global/firewalls/{body['name']}",
                                 then=lambda: self.firewalls.__setitem__(key, rule))
        if kind == "firewalls" and len(parts) == 2:
            rule = self.firewalls.get((project, parts[1]))
            if rule is None:
                return 404, {"error": {"code": 404, "errors": [{"reason": "notFound", "message": "not found"}],
                                       "message": f"The resource 'projects/{project}/global/firewalls/{parts[1]}' "
                                                  "was not found"}}
            if method == "GET":
                return 200, rule
            if method == "DELETE":
                return self._operate("firewalls.delete", rule, scope=f"projects/{project}/global/firewalls/{parts[1]}",
                                     then=lambda: self.firewalls.pop((project, parts[1]), None))
        return 404, {"error": {"code": 404, "message": f"stand-in: no route {method} global/{'/'.join(parts)}"}}

    def _metadata(self, path: str) -> tuple[int, Any]:
        if path == "instance/service-accounts/default/token":
            return 200, {"access_token": "stand-in-token", "expires_in": 3600, "token_type": "Bearer"}
        head = next((item for key, item in self.instances.items() if key[2].endswith("-head")), None)
        if head is None or not path.startswith("instance/attributes/"):
            return 404, "not found"
        items = {item["key"]: item["value"] for item in head["metadata"].get("items", [])}
        key = path.removeprefix("instance/attributes/")
        return (200, items[key]) if key in items else (404, "not found")


def _public(operation: dict[str, Any]) -> dict[str, Any]:
    return {key: value for key, value in operation.items() if not key.startswith("_")}


def _timestamp() -> str:
    """Now, as the Compute API writes times (RFC 3339 in milliseconds, with the UTC offset)."""
    now = time.time()
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(now)) + f".{int(now * 1000) % 1000:03d}-00:00"


def _address(instance: dict[str, Any]) -> str:
    return instance["networkInterfaces"][0]["accessConfigs"][0]["natIP"]


def _project_not_found(project: str) -> tuple[int, Any]:
    return 404, {"error": {"code": 404, "message": f"The resource 'projects/{project}' was not found",
                           "errors": [{"reason": "notFound", "message": "not found"}]}}


def _matches(item: dict[str, Any], expression: str) -> bool:
    """Whether ``item`` passes one filter term: ``labels.KEY = "VALUE"``, ``labels.KEY:*``, ``FIELD = "VALUE"``."""
    if not expression:
        return True
    match = _FILTER.match(expression.strip())
    assert match, f"the stand-in understands only 'FIELD = \"VALUE\"' and 'labels.KEY:*' filters, not {expression!r}"
    value: Any = item
    for part in match["field"].split(".", 1) if match["field"].startswith("labels.") else [match["field"]]:
        value = value.get(part) if isinstance(value, dict) else None
    return value is not None if match["any"] else value == match["value"]


def _action(method: str, path: str) -> str:
    """``insert``, ``list``, ``get``, ``delete``, ``stop``, ``start``, ``setMetadata``, ``operation``,
    ``operations.list``, ``metadata``, or ``KIND.VERB`` for global resources (``firewalls.insert``,
    ``firewalls.list``, ``firewalls.get``, ``firewalls.delete``, ``networks.get``)."""
    if path.startswith("/computeMetadata/"):
        return "metadata"
    if "/global/" in path:
        kind, *name = path.split("/global/", 1)[1].split("/")
        if kind == "operations":
            return "operation"
        return f"{kind}.{'get' if method == 'GET' else 'delete'}" if name else \
               f"{kind}.{'list' if method == 'GET' else 'insert'}"
    rest = path.split("/zones/", 1)[-1].split("/")[1:]
    if rest == ["operations"]:
        return "operations.list"
    if rest[:1] == ["operations"]:
        return "operation"
    if rest == ["instances"]:
        return "list" if method == "GET" else "insert"
    if len(rest) == 2:
        return "get" if method == "GET" else "delete"
    return rest[2] if len(rest) > 2 else "?"
