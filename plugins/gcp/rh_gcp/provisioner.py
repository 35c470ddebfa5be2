"""The ``gcp-direct`` provisioner: Compute Engine instances created, started, stopped and deleted
through the Compute API, then reached with the ``ssh`` transport of rh-byo-ssh.

The provisioner keeps no state of its own: the instances labelled ``rh-cluster=<name>`` in the
spec's project and zone are the cluster, read again on every ``up()`` and ``status()``. The only
local files are this machine's SSH key (``$RH_HOME/gcp/keys``) and each cluster's known_hosts.

SSH has to reach the instances: when the network has no firewall rule letting ``ssh_port`` in from
anywhere, ``up()`` creates one for instances with the network tag ``rh-gcp-ssh-PORT``, once per
network and port. It is left in place when clusters go down, on purpose: it admits traffic only to
instances carrying that tag, which exist only while an rh cluster runs, and deleting it when "the
last" cluster goes would race with a cluster that another client (or zone) is launching behind it
at that moment, which this client cannot see without listing every zone of the project.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import socket
import subprocess
import time
from typing import Any

from rh_core.support.compat import add_note
from rh_core.plugin.interfaces import ClusterInfo, ProvisionRequest

from rh_gcp.compute import ComputeAPI, GCPCredentialsError, GCPError, parse_time
from rh_gcp.spec import GCPSpec, GCPSpecError, check_cluster_name, instance_names

#: Compute Engine instance states as the Provisioner protocol names them.
RUNNING = {"RUNNING"}
STARTING = {"PROVISIONING", "STAGING", "REPAIRING"}
STOPPED = {"STOPPING", "STOPPED", "TERMINATED", "SUSPENDING", "SUSPENDED"}

CLUSTER_LABEL = "rh-cluster"
#: Everywhere: what the firewall rule rh-gcp creates lets in, and what "a rule lets SSH in" means.
ANYWHERE = "0.0.0.0/0"
AUTOSTOP_KEYS = ("rh-autostop-mins", "rh-autostop-action")
READY_TIMEOUT_SECONDS = 600


def state_dir(*parts: str) -> str:
    """``$RH_HOME/gcp/...`` on this machine."""
    from rh_core.config import rh_home

    return os.path.join(rh_home(), "gcp", *parts)


def ssh_key() -> tuple[str, str]:
    """This machine's key for gcp-direct instances, made on first use: ``(private key path, public key)``."""
    directory = state_dir("keys")
    os.makedirs(directory, mode=0o700, exist_ok=True)
    os.chmod(directory, 0o700)
    path = os.path.join(directory, "id_ed25519")
    if not os.path.exists(path):
        if shutil.which("ssh-keygen") is None:
            raise GCPError("making an SSH key for gcp-direct instances needs ssh-keygen; install OpenSSH's client "
                           "(e.g. `apt-get install openssh-client`)")
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "rh-gcp", "-f", path], check=True)
    os.chmod(path, 0o600)
    with open(path + ".pub") as file:
        return path, file.read().strip()


class GCPProvisioner:
    """Launches ``rh.cluster(name=..., provider='gcp-direct', zone=..., ...)`` clusters.

    :param credentials: ``google.auth`` credentials; default: the application-default ones.

    Besides ``up``/``down``/``status`` it has what :class:`rh_core.RemoteCluster` uses when present:
    ``validate_spec``, ``refreshed_status``, ``stop``, ``autostop_minutes`` and ``set_autostop``.
    """

    def __init__(self, credentials: Any = None) -> None:
        self._credentials = credentials

    # --- the cluster's spec ----------------------------------------------------------------------

    def validate_spec(self, spec: dict[str, Any]) -> dict[str, Any]:
        """Check ``rh.cluster``'s options when the cluster object is made; fill in defaults."""
        return GCPSpec.from_options(spec).to_options()

    @staticmethod
    def spec_of(request: ProvisionRequest) -> GCPSpec:
        return GCPSpec.from_options(dict(request.spec))

    def api(self, spec: GCPSpec) -> ComputeAPI:
        return ComputeAPI(project=spec.project, zone=spec.zone, credentials=self._credentials,
                          api_endpoint=spec.api_endpoint)

    # --- the Provisioner protocol ----------------------------------------------------------------

    def up(self, request: ProvisionRequest) -> ClusterInfo:
        """Find the instances running, start stopped ones, create missing ones; wait for their SSH
        port; say how to reach them. Instances this call created are deleted again when it fails."""
        spec, name = self.spec_of(request), check_cluster_name(request.cluster_name)
        api = self.api(spec)
        private_key, public_key = ssh_key()
        found = {instance.name: instance for instance in self._instances(api, name)}
        expected = instance_names(name, spec.num_nodes)
        if any(found.get(instance_name) is None or found[instance_name].status not in RUNNING
               for instance_name in expected):
            self._check_network(api, spec)
            if spec.create_firewall_rule:
                self.ensure_ssh_firewall(api, spec)
        created: list[str] = []
        try:
            operations = []
            for instance_name, role in zip(instance_names(name, spec.num_nodes), self._roles(spec)):
                instance = found.get(instance_name)
                if instance is None:
                    if not created and not found:
                        _forget_host_keys(name)  # new machines have new host keys
                    operations.append((api.insert(self._instance(api, spec, name, instance_name, role, public_key)),
                                       f"creating instance {instance_name}"))
                    created.append(instance_name)
                elif instance.status in STOPPED:
                    self._wait_while(api, instance_name, {"STOPPING", "SUSPENDING"})
                    operations.append((api.start(instance_name), f"starting instance {instance_name}"))
            for operation, doing in operations:
                api.wait(operation, doing)
            instances = [self._wait_running(api, instance_name) for instance_name in instance_names(name, spec.num_nodes)]
            addresses = [self._address(instance, spec) for instance in instances]
            for address in addresses:
                _wait_for_port(address, spec.ssh_port)
        except BaseException as exc:
            if created:
                self._clean_up(api, created, exc)
            raise
        return ClusterInfo(
            head=addresses[0],
            workers=tuple(addresses[1:]),
            transport="ssh",
            transport_options={
                "user": spec.ssh_user,
                "private_key": private_key,
                "port": spec.ssh_port,
                # New instances are new to this client: trust their host key on first contact, per cluster.
                "known_hosts": state_dir("clusters", name, "known_hosts"),
                "trust_new_host": True,
                "use_agent": False,
            },
            provider_data={
                "project": api.project,
                "zone": spec.zone,
                "instances": [instance.name for instance in instances],
                "internal_ips": [instance.network_interfaces[0].network_i_p for instance in instances],
                "api_endpoint": spec.api_endpoint,
            },
        )

    def down(self, request: ProvisionRequest) -> None:
        """Delete the cluster's instances and their boot disks; a cluster without instances is down."""
        spec = self.spec_of(request)
        api = self.api(spec)
        operations = [(api.delete(instance.name), f"deleting instance {instance.name}")
                      for instance in self._instances(api, request.cluster_name)]
        for operation, doing in operations:
            if operation is not None:
                api.wait(operation, doing)
        shutil.rmtree(state_dir("clusters", request.cluster_name), ignore_errors=True)

    def status(self, request: ProvisionRequest) -> str:
        """``"up"`` (every instance running), ``"stopped"`` (every instance stopped or stopping,
        a preempted Spot VM among them), ``"down"`` (none exists) or ``"unknown"`` (anything else)."""
        spec = self.spec_of(request)
        states = {instance.name: instance.status for instance in self._instances(self.api(spec), request.cluster_name)}
        if not states:
            return "down"
        expected = instance_names(request.cluster_name, spec.num_nodes)
        if all(states.get(name) in RUNNING for name in expected):
            return "up"
        if all(state in STOPPED for state in states.values()):
            return "stopped"
        return "unknown"

    # --- what RemoteCluster uses when present ----------------------------------------------------

    def refreshed_status(self, request: ProvisionRequest) -> str:
        """The same as :meth:`status`: it always asks the API."""
        return self.status(request)

    def stop(self, request: ProvisionRequest) -> None:
        """Stop the instances, keeping their disks; the next call or ``up()`` starts them again."""
        api = self.api(self.spec_of(request))
        operations = [(api.stop(instance.name), f"stopping instance {instance.name}")
                      for instance in self._instances(api, request.cluster_name) if instance.status not in STOPPED]
        for operation, doing in operations:
            api.wait(operation, doing)

    def autostop_minutes(self, request: ProvisionRequest) -> float:
        """The idle minutes after which the head's server stops the cluster (-1: never), as the
        head instance's metadata has it now."""
        api = self.api(self.spec_of(request))
        head = self._head(api, request.cluster_name)
        items = {item.key: item.value for item in head.metadata.items}
        return float(items.get(AUTOSTOP_KEYS[0], -1))

    def set_autostop(self, request: ProvisionRequest, minutes: float) -> None:
        """Change the running cluster's idle minutes (-1: never) in the head's metadata, where the
        idle watcher on the head reads it; a later launch uses the spec's ``autostop_mins`` again."""
        spec = self.spec_of(request)
        if minutes != -1 and minutes < 1:
            raise GCPSpecError(f"autostop of cluster {request.cluster_name!r}: {minutes} minutes must be -1 (never) or "
                               "at least 1 (see autostop_mins)")
        api = self.api(spec)
        head = self._head(api, request.cluster_name)
        api.wait(api.set_metadata(head, {AUTOSTOP_KEYS[0]: _minutes(minutes)}),
                 f"setting autostop of instance {head.name}")

    def explain_lost(self, request: ProvisionRequest) -> str | None:
        """Why the cluster's server may have gone, as the Compute API reports it: which instances
        are not running, and whether Compute Engine preempted them, stopped them or they were
        deleted. None when every instance runs (then the cause lies elsewhere: the network, sshd)."""
        spec = self.spec_of(request)
        api = self.api(spec)
        found = {instance.name: instance for instance in self._instances(api, request.cluster_name)}
        gone = [name for name in instance_names(request.cluster_name, spec.num_nodes)
                if found.get(name) is None or found[name].status not in RUNNING]
        if not gone:
            return None
        preemptions = api.preemptions() if any(name in found for name in gone) else {}
        reports = []
        for name in gone:
            instance = found.get(name)
            operation = preemptions.get(name)
            if instance is None:
                reports.append(f"instance {name} no longer exists (it was deleted)")
            elif operation is not None and (not instance.last_start_timestamp or parse_time(operation.insert_time)
                                            > parse_time(instance.last_start_timestamp)):
                reports.append(f"instance {name} (a Spot VM) was preempted by Compute Engine at "
                               f"{operation.end_time or operation.insert_time} (operation {operation.name}: "
                               f"{operation.status_message or operation.operation_type}) and is {instance.status}")
            else:
                since = f" since {instance.last_stop_timestamp}" if instance.last_stop_timestamp else ""
                reports.append(f"instance {name} is {instance.status}{since} (stopped through the API: its "
                               "autostop, cluster.stop(), the console or gcloud)")
        return (f"the Compute API reports for project {api.project!r}, zone {api.zone!r}: " + "; ".join(reports)
                + "; cluster.up(), or the next call, starts the cluster again")

    # --- network and firewall --------------------------------------------------------------------

    @staticmethod
    def _check_network(api: ComputeAPI, spec: GCPSpec) -> None:
        if not api.has_network(spec.network):
            try:
                known = ", ".join(api.network_names()) or "none"
            except GCPError:
                known = "unknown"
            raise GCPError(
                f"network {spec.network!r} does not exist in project {api.project!r} (its networks: {known}); pass "
                f"rh.cluster(..., network=NAME) with one of them, or create it with `gcloud compute networks create "
                f"{spec.network} --subnet-mode=auto --project {api.project}`")

    def ensure_ssh_firewall(self, api: ComputeAPI, spec: GCPSpec) -> str | None:
        """Make sure SSH reaches instances tagged :func:`ssh_tag` on the spec's network: nothing to do
        when a rule already lets ``ssh_port`` in from anywhere, else create rh-gcp's rule (a rule of that
        name made meanwhile by another client counts). Returns the name of the rule created, if any."""
        tag = ssh_tag(spec.ssh_port)
        try:
            rules = api.list_firewalls()
            if any(_admits(rule, spec.network, spec.ssh_port, tag) for rule in rules):
                return None
            compute = api.compute
            name = firewall_rule_name(spec.network, spec.ssh_port)
            rule = compute.Firewall(
                name=name,
                network=f"projects/{api.project}/global/networks/{spec.network}",
                direction="INGRESS",
                priority=1000,
                source_ranges=[ANYWHERE],
                target_tags=[tag],
                allowed=[compute.Allowed(I_p_protocol="tcp", ports=[str(spec.ssh_port)])],
                description=f"rh-gcp: SSH (tcp:{spec.ssh_port}) to instances tagged {tag}, for rh_core clusters",
            )
            operation = api.insert_firewall(rule)
            if operation is not None:
                api.wait(operation, f"creating firewall rule {name}")
            return name
        except GCPCredentialsError as exc:
            raise GCPCredentialsError(
                f"{exc}. Opening SSH (tcp:{spec.ssh_port}) to the instances needs compute.firewalls.list and "
                f"compute.firewalls.create (role Compute Security Admin); or open the port on network "
                f"{spec.network!r} yourself and pass rh.cluster(..., create_firewall_rule=False)") from exc

    # --- instances -------------------------------------------------------------------------------

    @staticmethod
    def _instances(api: ComputeAPI, name: str) -> list[Any]:
        return api.list(f'labels.{CLUSTER_LABEL} = "{name}"')

    def _head(self, api: ComputeAPI, name: str) -> Any:
        head = api.get(instance_names(name, 1)[0])
        if head is None:
            raise GCPError(f"cluster {name!r} has no head instance in project {api.project!r}, zone {api.zone!r}; "
                           "bring it up with cluster.up() first")
        return head

    @staticmethod
    def _roles(spec: GCPSpec) -> list[str]:
        return ["head"] + ["worker"] * (spec.num_nodes - 1)

    @staticmethod
    def _instance(api: ComputeAPI, spec: GCPSpec, cluster_name: str, name: str, role: str, public_key: str) -> Any:
        compute = api.compute
        zone = spec.zone
        scheduling = compute.Scheduling()
        if spec.use_spot:
            # Preempted Spot VMs are stopped, not deleted: status() reports "stopped" and the next
            # call starts them again with their disks.
            scheduling = compute.Scheduling(provisioning_model="SPOT", instance_termination_action="STOP")
        accelerators = []
        if spec.accelerators:
            accelerators = [compute.AcceleratorConfig(
                accelerator_type=f"zones/{zone}/acceleratorTypes/{spec.accelerator_name}",
                accelerator_count=spec.accelerator_count)]
            scheduling.on_host_maintenance = "TERMINATE"  # GPUs cannot live-migrate
        metadata = {
            "ssh-keys": f"{spec.ssh_user}:{public_key}",
            AUTOSTOP_KEYS[0]: _minutes(spec.autostop_mins),
            AUTOSTOP_KEYS[1]: spec.autostop_action,
        }
        return compute.Instance(
            name=name,
            machine_type=f"zones/{zone}/machineTypes/{spec.instance_type}",
            labels={CLUSTER_LABEL: cluster_name, "rh-role": role},
            metadata=compute.Metadata(items=[compute.Items(key=k, value=v) for k, v in metadata.items()]),
            disks=[compute.AttachedDisk(
                boot=True, auto_delete=True,
                initialize_params=compute.AttachedDiskInitializeParams(source_image=spec.image_id,
                                                                        disk_size_gb=spec.disk_size_gb))],
            tags=compute.Tags(items=[ssh_tag(spec.ssh_port)]),
            network_interfaces=[compute.NetworkInterface(
                network=f"global/networks/{spec.network}",
                access_configs=[] if spec.use_internal_ips else [
                    compute.AccessConfig(name="External NAT", type_="ONE_TO_ONE_NAT")])],
            guest_accelerators=accelerators,
            scheduling=scheduling,
            # The head's idle watcher stops or deletes the cluster with the instance's own account.
            service_accounts=[compute.ServiceAccount(email="default",
                                                     scopes=["https://www.googleapis.com/auth/compute"])],
        )

    @staticmethod
    def _wait_while(api: ComputeAPI, name: str, states: set[str]) -> Any:
        deadline = time.monotonic() + READY_TIMEOUT_SECONDS
        while True:
            instance = api.get(name)
            if instance is None or instance.status not in states:
                return instance
            if time.monotonic() > deadline:
                raise GCPError(f"instance {name} stayed {instance.status} for {READY_TIMEOUT_SECONDS} s")
            time.sleep(2)

    def _wait_running(self, api: ComputeAPI, name: str) -> Any:
        instance = self._wait_while(api, name, STARTING)
        if instance is None:
            raise GCPError(f"instance {name} disappeared while starting (a Spot VM preempted at once?); "
                           "call cluster.up() again")
        if instance.status not in RUNNING:
            raise GCPError(f"instance {name} is {instance.status} instead of RUNNING after it was started: "
                           f"{instance.status_message or 'the API gave no reason'}; "
                           "for Spot VMs, the zone may have no spare capacity now")
        return instance

    @staticmethod
    def _address(instance: Any, spec: GCPSpec) -> str:
        interface = instance.network_interfaces[0]
        if spec.use_internal_ips:
            return interface.network_i_p
        external = [config.nat_i_p for config in interface.access_configs if config.nat_i_p]
        if not external:
            raise GCPError(f"instance {instance.name} has no external address; give it one, or reach it from "
                           "inside its network with rh.cluster(..., use_internal_ips=True)")
        return external[0]

    @staticmethod
    def _clean_up(api: ComputeAPI, created: list[str], failure: BaseException) -> None:
        """Delete instances made by an ``up()`` that failed; name the ones that could not be deleted."""
        left = []
        for name in created:
            try:
                operation = api.delete(name)
                if operation is not None:
                    api.wait(operation, f"deleting instance {name}")
            except Exception as exc:  # keep going: the other instances must not leak either
                left.append(f"{name} ({exc})")
        note = ("the instances it created were deleted: " + ", ".join(created) if not left else
                "these instances it created could NOT be deleted and still cost money; delete them in the console "
                "or with `gcloud compute instances delete`: " + "; ".join(left))
        add_note(failure, f"Bringing the cluster up failed; {note}.")


def ssh_tag(port: int) -> str:
    """The network tag of every rh-gcp instance whose sshd listens on ``port``."""
    return f"rh-gcp-ssh-{port}"


def firewall_rule_name(network: str, port: int) -> str:
    """rh-gcp's rule for SSH on ``port`` into ``network``: at most 63 characters, as rule names must be."""
    name = f"rh-gcp-ssh-{port}-{network}"
    if len(name) > 63:
        name = f"{name[:54]}-{hashlib.sha256(network.encode()).hexdigest()[:8]}"
    return name


def _admits(rule: Any, network: str, port: int, tag: str) -> bool:
    """Whether ``rule`` lets TCP ``port`` in from anywhere to instances tagged ``tag`` on ``network``
    (conservatively: a rule for some source ranges or service accounts does not count)."""
    if rule.network.rsplit("/", 1)[-1] != network or rule.disabled or rule.direction not in ("", "INGRESS"):
        return False
    if rule.target_service_accounts or (rule.target_tags and tag not in rule.target_tags):
        return False
    if ANYWHERE not in rule.source_ranges:
        return False
    return any(allowed.I_p_protocol in ("tcp", "all") and _port_in(allowed.ports, port) for allowed in rule.allowed)


def _port_in(ports: Any, port: int) -> bool:
    if not ports:
        return True  # no ports: every port of the protocol
    for entry in ports:
        low, _, high = str(entry).partition("-")
        if int(low) <= port <= int(high or low):
            return True
    return False


def _minutes(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else str(value)


def _wait_for_port(address: str, port: int, timeout: float = READY_TIMEOUT_SECONDS) -> None:
    """Wait until something accepts TCP connections at ``address:port`` (sshd starts after boot)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            socket.create_connection((address, port), timeout=5).close()
            return
        except OSError as exc:
            if time.monotonic() > deadline:
                raise GCPError(f"the instance at {address} does not accept SSH connections on port {port} after "
                               f"{timeout:.0f} s ({exc}); check the firewall rules of its network (port {port} "
                               "must be open to this machine)") from exc
            time.sleep(2)


def _forget_host_keys(name: str) -> None:
    try:
        os.unlink(state_dir("clusters", name, "known_hosts"))
    except FileNotFoundError:
        pass
