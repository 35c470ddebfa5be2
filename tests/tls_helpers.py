"""A server started as on a cluster and exposed beyond loopback through TLS (see tests/test_tls.py)."""

from __future__ import annotations

import contextlib
import json
import os
import resource
import subprocess
import sys
import time


@contextlib.contextmanager
def exposed(tmp_path, descriptors: int | None = None):
    """A server started as on a cluster, with --expose on a free port (self-signed certificate),
    allowed ``descriptors`` open files when given; yields its state and secret."""
    from rh_core.client.connection import read_secret
    from rh_core.testing.sshd import free_port

    state_dir = str(tmp_path / "state")
    port = free_port()
    limit = (lambda: resource.setrlimit(resource.RLIMIT_NOFILE, (descriptors, descriptors))) if descriptors else None
    process = subprocess.Popen([sys.executable, "-m", "rh_core.server", "--state-dir", state_dir, "-o", "num_workers=1",
                                "--expose", f"127.0.0.1:{port}"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                               preexec_fn=limit)
    try:
        state_file = os.path.join(state_dir, "server.json")
        deadline = time.monotonic() + 60
        while not os.path.exists(state_file):
            assert process.poll() is None, process.stderr.read().decode()
            assert time.monotonic() < deadline, "the exposed server did not start"
            time.sleep(0.05)
        with open(state_file) as f:
            state = json.load(f)
        yield state, read_secret(state_dir)
    finally:
        process.terminate()
        process.wait(30)
