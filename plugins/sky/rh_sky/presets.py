"""Builtin on-demand clusters: ``rh.cluster(name='^rh-v100')`` is ``rh.cluster(name='rh-v100', instance_type='V100:1')``.

Each preset is a set of ``rh.cluster`` keyword arguments; the provider is left to the user's
default (``default_provider`` in ``~/.rh/config.yaml``, else the cheapest cloud).
"""

from __future__ import annotations

from typing import Any

PRESETS: dict[str, dict[str, Any]] = {
    "rh-cpu": {"instance_type": "CPU:2+"},
    "rh-8-cpu": {"instance_type": "CPU:8+"},
    "rh-32-cpu": {"instance_type": "CPU:32+"},
    "rh-gpu": {"instance_type": "T4:1"},
    "rh-4-gpu": {"instance_type": "T4:4"},
    "rh-k80": {"instance_type": "K80:1"},
    "rh-v100": {"instance_type": "V100:1"},
    "rh-4-v100": {"instance_type": "V100:4"},
    "rh-8-v100": {"instance_type": "V100:8"},
    "rh-a10x": {"instance_type": "A10G:1"},
    "rh-4-a10x": {"instance_type": "A10G:4"},
    "rh-a100": {"instance_type": "A100:1"},
    "rh-4-a100": {"instance_type": "A100:4"},
    "rh-8-a100": {"instance_type": "A100:8"},
    "rh-8-a100-80gb": {"instance_type": "A100-80GB:8"},
    "rh-h100": {"instance_type": "H100:1"},
    "rh-8-h100": {"instance_type": "H100:8"},
}
