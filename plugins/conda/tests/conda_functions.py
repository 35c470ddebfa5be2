"""Functions the cluster tests send to environments: a module without test imports (pytest is not
installed on a bootstrapped cluster), shipped with the synced working directory."""

from __future__ import annotations

import os
import subprocess


def run_tool(name: str) -> dict[str, str]:
    """The output of the tool ``name`` found on PATH, and the conda prefix the worker sees."""
    output = subprocess.run([name], capture_output=True, text=True, check=True).stdout.strip()
    return {"output": output, "prefix": os.environ.get("CONDA_PREFIX", "")}


def read_hello() -> str:
    with open(os.path.join(os.environ["CONDA_PREFIX"], "share", "rhtest-hello", "hello.txt")) as f:
        return f.read().strip()
