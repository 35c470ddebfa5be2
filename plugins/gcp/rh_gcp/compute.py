"""The Compute API as this plugin uses it: instances and zone operations of one project and zone,
and the project's networks, firewall rules and global operations.

Google's client libraries are imported here, when a ``gcp-direct`` cluster first talks to the API,
and every error they raise leaves as a :class:`GCPError` naming the resource, the cause as the API
gave it, and what to do.
"""

from __future__ import annotations

import contextlib
import datetime
import time
from collections.abc import Iterator
from typing import Any

from rh_core.errors import ProvisionError

SCOPES = ["https://www.googleapis.com/auth/cloud-platform"]
OPERATION_TIMEOUT_SECONDS = 600


class GCPError(ProvisionError):
    """The Compute API refused or failed a request; the message carries its own reason."""


class GCPCredentialsError(GCPError, PermissionError):
    """No Google Cloud credentials were found, or they may not do what was asked."""


class GCPQuotaError(GCPError):
    """A quota of the project, or the zone's capacity, is exhausted."""


def parse_time(text: str) -> datetime.datetime:
    """A Compute API timestamp (RFC 3339, with its UTC offset); the epoch for an empty one."""
    if not text:
        return datetime.datetime.fromtimestamp(0, datetime.timezone.utc)
    # Python 3.10 reads no "Z" suffix (3.11 does).
    return datetime.datetime.fromisoformat(text[:-1] + "+00:00" if text.endswith("Z") else text)


def load_credentials() -> tuple[Any, str | None]:
    """Application-default credentials and their project (``google.auth.default``)."""
    import google.auth
    from google.auth.exceptions import DefaultCredentialsError

    try:
        return google.auth.default(scopes=SCOPES)
    except DefaultCredentialsError as exc:
        raise GCPCredentialsError(
            f"no Google Cloud credentials found ({exc}); run `gcloud auth application-default login`, "
            "or set GOOGLE_APPLICATION_CREDENTIALS to a service account key file"
        ) from exc


#: Compute API error reasons (``error.errors[].reason``, or an operation's ``error.errors[].code``)
#: that mean "not enough quota or capacity"; the advice differs from other failures.
QUOTA_REASONS = ("QUOTA_EXCEEDED", "ZONE_RESOURCE_POOL_EXHAUSTED", "ZONE_RESOURCE_POOL_EXHAUSTED_WITH_DETAILS",
                 "rateLimitExceeded", "quotaExceeded")


def _advice(status: int | None, text: str, zone: str, project: str) -> tuple[type[GCPError], str]:
    if any(reason in text for reason in QUOTA_REASONS):
        return GCPQuotaError, (f"ask for more quota in project {project!r} (console: IAM & Admin > Quotas), "
                               "or try another zone or machine type")
    if status in (401, 403):
        return GCPCredentialsError, (f"check that the credentials may use the Compute API in project {project!r} "
                                     "(role Compute Instance Admin) and that the API is enabled there")
    if "acceleratorTypes" in text or "accelerator" in text.lower():
        return GCPError, (f"zone {zone!r} may not offer that accelerator; `gcloud compute accelerator-types list "
                          f"--filter=zone:{zone}` lists the ones it has")
    if status == 404 and f"projects/{project}" in text and "instances/" not in text:
        return GCPError, f"check that project {project!r} exists and that the Compute API is enabled in it"
    return GCPError, "see the cause above"


class ComputeAPI:
    """Instances of ``project`` in ``zone``, through the REST client of ``google-cloud-compute``.

    :param credentials: ``google.auth`` credentials; default: :func:`load_credentials`.
    :param api_endpoint: another endpoint than ``https://compute.googleapis.com`` (``http://`` works).
    """

    def __init__(self, *, project: str | None, zone: str, credentials: Any = None,
                 api_endpoint: str | None = None) -> None:
        from google.cloud import compute_v1

        found_project = None
        if credentials is None:
            credentials, found_project = load_credentials()
        project = project or found_project
        if not project:
            raise GCPError(
                "no Google Cloud project given and the credentials name none; pass rh.cluster(..., project='my-proj') "
                "or run `gcloud config set project my-proj`"
            )
        self.project, self.zone = project, zone
        self.compute = compute_v1
        options = {"api_endpoint": api_endpoint} if api_endpoint else None
        self.instances = compute_v1.InstancesClient(credentials=credentials, transport="rest", client_options=options)
        self.operations = compute_v1.ZoneOperationsClient(credentials=credentials, transport="rest",
                                                          client_options=options)
        self.global_operations = compute_v1.GlobalOperationsClient(credentials=credentials, transport="rest",
                                                                   client_options=options)
        self.networks = compute_v1.NetworksClient(credentials=credentials, transport="rest", client_options=options)
        self.firewalls = compute_v1.FirewallsClient(credentials=credentials, transport="rest", client_options=options)

    # --- errors -----------------------------------------------------------------------------------

    @contextlib.contextmanager
    def errors(self, doing: str) -> Iterator[None]:
        """Turn the client's exceptions into :class:`GCPError`; ``doing`` says what was asked
        (``"creating instance g1-head"``)."""
        from google.api_core import exceptions as api_exceptions

        try:
            yield
        except api_exceptions.GoogleAPICallError as exc:
            reasons = " ".join(str(getattr(error, "get", lambda *_: "")("reason", "")) for error in exc.errors or ())
            text = f"{exc.message} {reasons}"
            kind, advice = _advice(exc.code, text, self.zone, self.project)
            raise kind(f"{doing} in project {self.project!r}, zone {self.zone!r} failed: "
                       f"{exc.code} {exc.message}; {advice}") from exc
        except api_exceptions.GoogleAPIError as exc:  # transport errors, retries given up
            raise GCPError(f"{doing} in project {self.project!r}, zone {self.zone!r} failed: {exc}") from exc

    # --- operations -------------------------------------------------------------------------------

    def wait(self, operation: Any, doing: str, timeout: float = OPERATION_TIMEOUT_SECONDS) -> None:
        """Wait until a zone (or, for firewall rules, global) operation is done; raise with its own
        error when it failed."""
        deadline = time.monotonic() + timeout
        while operation.status != self.compute.Operation.Status.DONE:
            if time.monotonic() > deadline:
                raise GCPError(f"{doing} did not finish within {timeout:.0f} s (operation {operation.name}); "
                               "check it in the Cloud console")
            with self.errors(doing):
                # wait() returns when the operation is done or after about two minutes, whichever is first.
                if operation.zone:
                    operation = self.operations.wait(project=self.project, zone=self.zone, operation=operation.name)
                else:
                    operation = self.global_operations.wait(project=self.project, operation=operation.name)
        if operation.error and operation.error.errors:
            text = "; ".join(f"{error.code}: {error.message}" for error in operation.error.errors)
            kind, advice = _advice(operation.http_error_status_code or None, text, self.zone, self.project)
            raise kind(f"{doing} in project {self.project!r}, zone {self.zone!r} failed: {text}; {advice}")

    # --- instances --------------------------------------------------------------------------------

    def list(self, label_filter: str) -> list[Any]:
        with self.errors(f"listing instances ({label_filter})"):
            request = self.compute.ListInstancesRequest(project=self.project, zone=self.zone, filter=label_filter)
            return list(self.instances.list(request=request))

    def get(self, name: str) -> Any | None:
        from google.api_core.exceptions import NotFound

        with self.errors(f"looking up instance {name}"):
            try:
                return self.instances.get(project=self.project, zone=self.zone, instance=name)
            except NotFound:
                return None

    def insert(self, instance: Any) -> Any:
        """Start creating ``instance``; returns the operation (see :meth:`wait`)."""
        with self.errors(f"creating instance {instance.name}"):
            return self.instances.insert_unary(project=self.project, zone=self.zone, instance_resource=instance)

    def start(self, name: str) -> Any:
        with self.errors(f"starting instance {name}"):
            return self.instances.start_unary(project=self.project, zone=self.zone, instance=name)

    def stop(self, name: str) -> Any:
        with self.errors(f"stopping instance {name}"):
            return self.instances.stop_unary(project=self.project, zone=self.zone, instance=name)

    def delete(self, name: str) -> Any | None:
        """Start deleting ``name``; None when it does not exist."""
        from google.api_core.exceptions import NotFound

        with self.errors(f"deleting instance {name}"):
            try:
                return self.instances.delete_unary(project=self.project, zone=self.zone, instance=name)
            except NotFound:
                return None

    def preemptions(self) -> dict[str, Any]:
        """The latest ``compute.instances.preempted`` operation of each instance of the zone that
        Compute Engine preempted, by instance name (the zone keeps operations for some days)."""
        with self.errors("listing the zone's preemptions"):
            request = self.compute.ListZoneOperationsRequest(project=self.project, zone=self.zone,
                                                             filter='operationType = "compute.instances.preempted"')
            found: dict[str, Any] = {}
            for operation in self.operations.list(request=request):
                name = operation.target_link.rsplit("/", 1)[-1]
                if name not in found or parse_time(operation.insert_time) > parse_time(found[name].insert_time):
                    found[name] = operation
            return found

    def set_metadata(self, instance: Any, items: dict[str, str]) -> Any:
        """Set metadata ``items`` on ``instance`` (as :meth:`get` returned it), keeping its other items."""
        merged = {item.key: item.value for item in instance.metadata.items}
        merged.update(items)
        metadata = self.compute.Metadata(
            fingerprint=instance.metadata.fingerprint,
            items=[self.compute.Items(key=key, value=value) for key, value in merged.items()],
        )
        with self.errors(f"setting metadata of instance {instance.name}"):
            return self.instances.set_metadata_unary(project=self.project, zone=self.zone, instance=instance.name,
                                                     metadata_resource=metadata)

    # --- networks and firewall rules (global) ------------------------------------------------------

    def network_names(self) -> list[str]:
        with self.errors("listing networks"):
            return [network.name for network in self.networks.list(project=self.project)]

    def has_network(self, name: str) -> bool:
        from google.api_core.exceptions import NotFound

        with self.errors(f"looking up network {name}"):
            try:
                self.networks.get(project=self.project, network=name)
                return True
            except NotFound:
                return False

    def list_firewalls(self) -> list[Any]:
        with self.errors("listing firewall rules"):
            return list(self.firewalls.list(project=self.project))

    def insert_firewall(self, rule: Any) -> Any | None:
        """Start creating firewall ``rule``; None when a rule of that name exists already."""
        from google.api_core.exceptions import Conflict

        with self.errors(f"creating firewall rule {rule.name}"):
            try:
                return self.firewalls.insert_unary(project=self.project, firewall_resource=rule)
            except Conflict:
                return None
