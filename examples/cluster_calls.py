"""The README's cluster calls, type-checked by mypy in CI (scripts/test): never run, only checked,
so the calls people copy from the README keep their types. ``python -m mypy examples/``."""

from __future__ import annotations

import rh_core as rh


def add(a: int, b: int) -> int:
    return a + b


def byo() -> None:
    gpu = rh.cluster(ips=["10.0.0.1"], ssh_creds={"ssh_user": "ubuntu", "ssh_private_key": "~/.ssh/id_ed25519"},
                     name="rh-a10x")
    f = rh.function(add).to(gpu)
    total: int = f(1, 2)
    ref: rh.Ref[int] = f.remote(1, 2)
    again: int = rh.get(ref) + ref.result(timeout=5)
    gpu.run(["nvidia-smi"])
    gpu.run_setup(["apt-get install -y htop"])
    gpu.run_python(["import sys", "print(sys.version)"])
    with gpu.ssh_tunnel(7860, local_port=7860):
        pass
    gpu.restart_server(keep=("ray",))
    gpu.status()
    gpu.down()
    print(total, again)


def on_demand() -> None:
    gpu = rh.cluster(name="rh-4-a100s", instance_type="A100:4", provider="gcp", autostop_mins=30, use_spot=False,
                     image_id=None, region=None, zone=None, num_nodes=1, disk_size=None)
    gpu.up()
    gpu.up_if_not()
    gpu.status(refresh=True)
    gpu.keep_warm(mins=60)
    with gpu.pause_autostop():
        pass
    gpu.down()


def saved() -> None:
    gpu = rh.cluster(name="~/rh-a10x")
    gpu.up()
    gpu.down()
