"""The transport contract: run commands, sync a directory and forward a port on the machine.

Subclass :class:`TransportContract` and provide a ``transport`` fixture (an instance of the
transport under test, connected to a machine that has ``python3``).
"""

from __future__ import annotations

import socket
import time

import pytest

_ECHO_SERVER = (
    "import socket,sys;s=socket.socket();s.setsockopt(socket.SOL_SOCKET,socket.SO_REUSEADDR,1);"
    "s.settimeout(60);s.bind(('127.0.0.1',int(sys.argv[1])));s.listen();c,_=s.accept();c.sendall(c.recv(100).upper())"
)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class TransportContract:
    @pytest.fixture
    def transport(self):  # pragma: no cover - provided by subclasses
        raise NotImplementedError("subclasses provide a `transport` fixture")

    def test_run_returns_code_and_output_per_command(self, transport):
        results = transport.run(["echo hello", "echo oops >&2; exit 3"])
        assert results[0][0] == 0 and results[0][1].strip() == "hello"
        assert results[1][0] == 3 and "oops" in results[1][2]

    def test_run_can_stream(self, transport, capfd):
        (code, out, _), = transport.run(["echo streamed"], stream_logs=True)
        assert code == 0 and "streamed" in out
        assert "streamed" in capfd.readouterr().out

    def test_sync_directory_makes_the_files_present(self, transport, tmp_path):
        (tmp_path / "pkg").mkdir()
        (tmp_path / "pkg" / "mod.py").write_text("VALUE = 41\n")
        remote = transport.sync_directory(str(tmp_path))
        (code, out, err), = transport.run([f"cat {remote}/pkg/mod.py"])
        assert code == 0 and "VALUE = 41" in out, err

    def test_forward_reaches_a_port_on_the_machine(self, transport):
        port = _free_port()
        transport.run([f"nohup python3 -c \"{_ECHO_SERVER}\" {port} >/dev/null 2>&1 &"])
        host, local_port = transport.forward(port)
        deadline = time.monotonic() + 10
        reply = b""
        while reply != b"PING" and time.monotonic() < deadline:
            try:  # the echo server may not listen yet: a refused or closed connection is retried
                with socket.create_connection((host, local_port), timeout=5) as conn:
                    conn.sendall(b"ping")
                    reply = conn.recv(100)
            except OSError:
                pass
            if reply != b"PING":
                time.sleep(0.1)
        assert reply == b"PING"
