"""Running shell commands on the machine over the paramiko connection, their output echoed live when asked."""

from __future__ import annotations

import codecs
import select
import sys
from collections.abc import Callable
from typing import IO

import paramiko

from rh_byo_ssh.connection import Connection
from rh_byo_ssh.errors import SSHConnectionLostError, SSHError, describe


class Commands:
    """Runs commands on ``connection``, one SSH channel each."""

    def __init__(self, connection: Connection) -> None:
        self._connection = connection

    def run(self, commands: list[str], *, stream_logs: bool = False) -> list[tuple[int, str, str]]:
        """See :meth:`rh_byo_ssh.transport.SSHTransport.run`."""
        if isinstance(commands, str):  # a lone string would otherwise run letter by letter
            commands = [commands]
        return [self.run_one(command, stream_logs) for command in commands]

    def run_one(self, command: str, stream_logs: bool = False) -> tuple[int, str, str]:
        """Run one command: ``(code, stdout, stderr)``; retried once only if it never started."""
        connection = self._connection

        def open_session(transport: paramiko.Transport) -> tuple[paramiko.Transport, paramiko.Channel]:
            return transport, transport.open_session(timeout=connection.connect_timeout)

        # Opening the channel is safe to repeat: the command has not been sent yet.
        transport, channel = connection.retry_if_lost(f"starting `{command}`", open_session)
        try:
            channel.exec_command(command)
            channel.shutdown_write()  # the command reads EOF from stdin, like LocalTransport's DEVNULL
            out, err = _collect(channel, stream_logs)
            code = channel.recv_exit_status()
            if code == -1 and (not channel.eof_received or not transport.is_active()):
                raise EOFError("the channel closed without an exit status")
        except (paramiko.SSHException, EOFError, OSError) as exc:
            if not connection.is_lost(transport, exc):
                raise SSHError(
                    f"{connection.where()}: the server would not run `{command}` ({describe(exc)}); look for a "
                    f"ForceCommand or command= restriction in its sshd_config or authorized_keys"
                ) from exc
            connection.drop(transport)
            raise SSHConnectionLostError(
                f"{connection.where()}: the connection dropped while running `{command}` ({describe(exc)}); "
                f"the command may have run partly or fully, so it is not repeated. The next call "
                f"reconnects; check the machine's sshd log if this repeats"
            ) from exc
        finally:
            channel.close()
        return code, out, err


class _Echo:
    """Echoes a byte stream line by line to a text stream looked up at write time (pytest swaps them)."""

    def __init__(self, name: str):
        self._name = name
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._pending = ""

    def feed(self, data: bytes, final: bool = False) -> None:
        text = self._pending + self._decoder.decode(data, final)
        head, newline, self._pending = text.rpartition("\n")
        if final:
            head, newline, self._pending = text, "", ""
        if head or newline:
            stream: IO[str] = getattr(sys, self._name)
            stream.write(head + newline)
            stream.flush()


def _collect(channel: paramiko.Channel, stream_logs: bool) -> tuple[str, str]:
    """Read a command's stdout and stderr until EOF, echoing them live when asked."""
    out, err = bytearray(), bytearray()
    echo_out, echo_err = (_Echo("stdout"), _Echo("stderr")) if stream_logs else (None, None)

    def drain() -> bool:
        moved_out = _drain_stream(channel.recv_ready, channel.recv, out, echo_out)
        moved_err = _drain_stream(channel.recv_stderr_ready, channel.recv_stderr, err, echo_err)
        return moved_out or moved_err

    while True:
        moved = drain()
        if channel.eof_received or channel.closed:
            drain()  # EOF comes after the last data, so what is buffered now is all there is
            break
        if not moved:
            # The channel's fileno wakes select on data and on EOF; the timeout is only a backstop.
            select.select([channel], [], [], 1.0)
    if echo_out and echo_err:
        echo_out.feed(b"", final=True)
        echo_err.feed(b"", final=True)
    return out.decode("utf-8", "replace"), err.decode("utf-8", "replace")


def _drain_stream(
    ready: Callable[[], bool], receive: Callable[[int], bytes], into: bytearray, echo: _Echo | None
) -> bool:
    """Move what one of a channel's streams has buffered into ``into`` (and the echo); whether any came."""
    moved = False
    while ready():
        data = receive(65536)
        if not data:
            break
        into.extend(data)
        moved = True
        if echo:
            echo.feed(data)
    return moved
