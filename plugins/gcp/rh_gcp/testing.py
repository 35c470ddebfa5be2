"""A local stand-in for the handful of Compute API endpoints rh-gcp uses, and for the metadata
server its idle watcher asks, for tests: the real ``google-cloud-compute`` client talks to it over
plain HTTP.

Instances it creates get their addresses from a list you give (loopback sshd test hosts), and the
public key in their ``ssh-keys`` metadata is appended to an ``authorized_keys`` file, as GCE's
guest agent would install it. Every request is recorded; failures can be queued per operation.
Nothing here needs Google credentials: use ``google.auth.credentials.AnonymousCredentials()``.
"""

from __future__ import annotations

import http.server
import itertools
import json
import re
import threading
import urllib.parse
from pathlib import Path
from typing import Any

import attrs

_ZONE_PATH = re.compile(r"^/compute/v1/projects/(?P<project>[^/]+)/zones/(?P<zone>[^/]+)/(?P<rest>.*)$")
_FILTER = re.compile(r'^labels\.(?P<key>[-\w]+)\s*=\s*"?(?P<value>[^"]*)"?$')


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
    """

    addresses: list[str]
    authorized_keys: Path | None = None
    projects: tuple[str, ...] = ("test-project",)
    instances: dict[tuple[str, str, str], dict[str, Any]] = attrs.field(factory=dict)
    operations: dict[str, dict[str, Any]] = attrs.field(factory=dict)
    requests: list[Request] = attrs.field(factory=list)
    _failures: dict[str, list[tuple[int, str, str]]] = attrs.field(factory=dict)
    _operation_failures: dict[str, list[tuple[str, str]]] = attrs.field(factory=dict)
    _ids: Any = attrs.field(factory=itertools.count)
    _lock: threading.Lock = attrs.field(factory=threading.Lock)
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
        return self

    def stop(self) -> None:
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
        """Change an instance's state as the cloud might (a Spot preemption: ``TERMINATED``)."""
        instance = self.instance(name)
        assert instance is not None, f"no instance {name}"
        instance["status"] = status

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
        handler.send_response(status)
        handler.send_header("Content-Type", "text/plain" if isinstance(payload, str) else "application/json")
        handler.send_header("Content-Length", str(len(data)))
        handler.end_headers()
        handler.wfile.write(data)

    def _answer(self, method: str, path: str, query: dict[str, str], body: Any) -> tuple[int, Any]:
        if path.startswith("/computeMetadata/v1/"):
            return self._metadata(path.removeprefix("/computeMetadata/v1/"))
        action = _action(method, path)
        if self._failures.get(action):
            status, message, reason = self._failures[action].pop(0)
            return status, {"error": {"code": status, "message": message,
                                      "errors": [{"message": message, "domain": "global", "reason": reason}]}}
        match = _ZONE_PATH.match(path)
        if match is None:
            return 404, {"error": {"code": 404, "message": f"stand-in: no route {method} {path}"}}
        project, zone, rest = match["project"], match["zone"], match["rest"]
        if project not in self.projects:
            return 404, {"error": {"code": 404, "message": f"The resource 'projects/{project}' was not found",
                                   "errors": [{"reason": "notFound", "message": "not found"}]}}
        parts = rest.split("/")
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
            return self._operate("stop", instance, then=lambda: instance.update(status="TERMINATED"))
        if verb == "start":
            instance["status"] = "STAGING"
            return self._operate("start", instance, then=lambda: instance.update(status="RUNNING"))
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
        instance = {
            **body,
            "id": str(next(self._ids)),
            "status": "PROVISIONING",
            "zone": f"projects/{project}/zones/{zone}",
            "metadata": {**body.get("metadata", {}), "fingerprint": f"fp{next(self._ids)}"},
            "networkInterfaces": [{"networkIP": f"10.128.0.{number + 2}",
                                   "accessConfigs": [{"natIP": address, "type": "ONE_TO_ONE_NAT"}]}],
        }
        self.instances[(project, zone, name)] = instance

        def created() -> None:
            instance["status"] = "RUNNING"
            keys = {item["key"]: item["value"] for item in instance["metadata"].get("items", [])}
            if self.authorized_keys is not None and "ssh-keys" in keys:
                _, _, public_key = keys["ssh-keys"].partition(":")
                with open(self.authorized_keys, "a") as file:
                    file.write(public_key.strip() + "\n")

        def failed() -> None:
            self.instances.pop((project, zone, name), None)

        return self._operate("insert", instance, then=created, on_error=failed)

    def _operate(self, action: str, instance: dict[str, Any], then: Any, on_error: Any = None) -> tuple[int, Any]:
        """A zone operation that is RUNNING until someone waits for or gets it."""
        name = f"operation-{next(self._ids)}"
        failure = self._operation_failures.get(action, [None]).pop(0) if self._operation_failures.get(action) else None
        self.operations[name] = {"name": name, "status": "RUNNING", "operationType": action,
                                 "targetLink": instance.get("name"), "_then": then, "_failure": failure,
                                 "_on_error": on_error}
        return 200, _public(self.operations[name])

    def _operation(self, name: str, wait: bool) -> tuple[int, Any]:
        operation = self.operations.get(name)
        if operation is None:
            return 404, {"error": {"code": 404, "message": f"operation {name} not found"}}
        if operation["status"] != "DONE":
            operation["status"] = "DONE"
            if operation["_failure"]:
                code, message = operation["_failure"]
                operation["error"] = {"errors": [{"code": code, "message": message}]}
                operation["httpErrorStatusCode"] = 403 if "QUOTA" in code else 400
                if operation["_on_error"]:
                    operation["_on_error"]()
            else:
                operation["_then"]()
        return 200, _public(operation)

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


def _matches(instance: dict[str, Any], expression: str) -> bool:
    if not expression:
        return True
    match = _FILTER.match(expression.strip())
    assert match, f"the stand-in understands only 'labels.KEY = \"VALUE\"' filters, not {expression!r}"
    return instance.get("labels", {}).get(match["key"]) == match["value"]


def _action(method: str, path: str) -> str:
    """``insert``, ``list``, ``get``, ``delete``, ``stop``, ``start``, ``setMetadata``, ``operation`` or ``metadata``."""
    if path.startswith("/computeMetadata/"):
        return "metadata"
    rest = path.split("/zones/", 1)[-1].split("/")[1:]
    if rest[:1] == ["operations"]:
        return "operation"
    if rest == ["instances"]:
        return "list" if method == "GET" else "insert"
    if len(rest) == 2:
        return "get" if method == "GET" else "delete"
    return rest[2] if len(rest) > 2 else "?"
