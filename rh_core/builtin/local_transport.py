"""The built-in ``local`` transport: the cluster is this machine, so nothing needs copying."""

from __future__ import annotations

import os
import subprocess
import sys

from rh_core import hookimpl


@hookimpl
def rh_register_transports(register):
    register("local", LocalTransport)


class LocalTransport:
    """Runs commands with the local shell; paths and ports are the same on both ends."""

    name = "local"

    def run(self, commands: list[str], *, stream_logs: bool = False) -> list[tuple[int, str, str]]:
        results = []
        for command in commands:
            if stream_logs:
                results.append(_run_streaming(command))
            else:
                done = subprocess.run(command, shell=True, capture_output=True, text=True, stdin=subprocess.DEVNULL)
                results.append((done.returncode, done.stdout, done.stderr))
        return results

    def sync_directory(self, local_path: str) -> str:
        return local_path

    def forward(self, remote_port: int, *, local_port: int | None = None) -> tuple[str, int]:
        if local_port not in (None, remote_port):
            raise ValueError(
                f"the local cluster is this machine: port {remote_port} is already local, so it cannot "
                f"also appear as port {local_port}; use local_port={remote_port} or leave it out"
            )
        return ("127.0.0.1", remote_port)

    def close_forward(self, remote_port: int) -> None:
        pass

    def shell_command(self) -> list[str]:
        return [os.environ.get("SHELL") or "/bin/sh"]

    def close(self) -> None:
        pass


def _run_streaming(command: str) -> tuple[int, str, str]:
    """Run a command, echoing its merged output live and returning it."""
    process = subprocess.Popen(
        command, shell=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, text=True
    )
    lines = []
    for line in process.stdout:
        sys.stdout.write(line)
        sys.stdout.flush()
        lines.append(line)
    return process.wait(), "".join(lines), ""
