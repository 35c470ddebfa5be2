"""The cluster server: ``python -m rh_core.server --state-dir DIR [--executor NAME]``.

It binds a ZeroMQ ROUTER socket on 127.0.0.1 (a free port), records pid, port, versions and
executor in ``DIR/server.json``, and routes calls to its executor. The server never unpickles what
clients send: arguments, functions and results pass through it as opaque frames, and only the
workers load them.

Requests are ``[request_id, op, json_header, *frames]``; replies are
``[request_id, kind, json_header, *frames]`` with kind ``log``, ``ack``, ``result``, ``info`` or
``fail``. See :mod:`rh_core.client` for the other side.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import sys
import time
import uuid
from typing import Any

import zmq
import zmq.asyncio

from rh_core import __version__, serialize
from rh_core.errors import CallTimeoutError, ProtocolError, RhError
from rh_core.plugin_types import Executor, Outcome, Task
from rh_core.plugins import PluginHost

STATE_FILE = "server.json"


class Server:
    def __init__(self, state_dir: str, executor: Executor, host: str = "127.0.0.1", port: int = 0):
        self.state_dir = os.path.abspath(state_dir)
        self.executor = executor
        self._bind_host, self._bind_port = host, port
        self.log_endpoint = f"ipc://{self.state_dir}/logs.sock"
        self._results: dict[str, asyncio.Future[Outcome]] = {}
        self._fifo_locks: dict[str, asyncio.Lock] = {}
        self._log_routes: dict[str, tuple[bytes, bytes]] = {}  # run key -> (client identity, request id)
        self._log_ends: dict[str, asyncio.Event] = {}
        self._tasks: set[asyncio.Task] = set()
        self._stopped = asyncio.Event()
        self.started_at = time.time()
        self.calls = 0

    # --- life cycle ----------------------------------------------------------------------------

    async def serve(self) -> None:
        context = zmq.asyncio.Context.instance()
        self._router = context.socket(zmq.ROUTER)
        self._router.setsockopt(zmq.LINGER, 0)
        self._router.setsockopt(zmq.ROUTER_HANDOVER, 1)
        if self._bind_port:
            self._router.bind(f"tcp://{self._bind_host}:{self._bind_port}")
            self.port = self._bind_port
        else:
            self.port = self._router.bind_to_random_port(f"tcp://{self._bind_host}")
        self._logs = context.socket(zmq.PULL)
        self._logs.setsockopt(zmq.LINGER, 0)
        self._logs.bind(self.log_endpoint)
        await self.executor.start(self)
        self._write_state()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._stopped.set)
        receivers = [asyncio.ensure_future(self._receive_requests()), asyncio.ensure_future(self._receive_logs())]
        await self._stopped.wait()
        for receiver in receivers:
            receiver.cancel()
        await self.executor.stop()
        self._remove_state()
        self._router.close()
        self._logs.close()

    def info(self) -> dict[str, Any]:
        return {
            "pid": os.getpid(),
            "port": self.port,
            "version": __version__,
            "python": serialize.python_version(),
            "python_executable": sys.executable,
            "executor": self.executor.name,
            "parallelism": self.executor.parallelism,
            "started_at": self.started_at,
            "calls": self.calls,
            "state_dir": self.state_dir,
            **{f"executor_{k}": v for k, v in self.executor.describe().items() if k != "executor"},
        }

    def _write_state(self) -> None:
        path = os.path.join(self.state_dir, STATE_FILE)
        temporary = f"{path}.{os.getpid()}.tmp"
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as file:
            json.dump(self.info(), file)
        os.replace(temporary, path)

    def _remove_state(self) -> None:
        path = os.path.join(self.state_dir, STATE_FILE)
        try:
            with open(path) as file:
                if json.load(file).get("pid") == os.getpid():
                    os.unlink(path)
        except (OSError, ValueError):
            pass

    # --- requests ------------------------------------------------------------------------------

    async def _receive_requests(self) -> None:
        while True:
            frames = await self._router.recv_multipart(copy=False)
            task = asyncio.ensure_future(self._handle(frames))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _reply(self, identity: bytes, request_id: bytes, kind: bytes, header: dict, frames=()) -> None:
        await self._router.send_multipart([identity, request_id, kind, json.dumps(header).encode(), *frames], copy=False)

    async def _handle(self, frames: list) -> None:
        identity, request_id = frames[0].bytes, frames[1].bytes
        try:
            if len(frames) < 4:
                raise ProtocolError("malformed request: expected [request_id, op, header, *frames]")
            op = frames[2].bytes.decode()
            header = json.loads(frames[3].bytes)
            handler = getattr(self, f"_op_{op}", None)
            if handler is None:
                raise ProtocolError(f"unknown operation {op!r}")
            await handler(identity, request_id, header, frames[4:])
        except Exception as exc:
            error_type = type(exc).__name__ if isinstance(exc, (RhError, TimeoutError, KeyError)) else "RhError"
            await self._reply(identity, request_id, b"fail", {"type": error_type, "message": str(exc)})

    async def _op_ping(self, identity, request_id, header, frames) -> None:
        await self._reply(identity, request_id, b"info", self.info())

    async def _op_shutdown(self, identity, request_id, header, frames) -> None:
        await self._reply(identity, request_id, b"info", self.info())
        self._stopped.set()

    async def _op_call(self, identity, request_id, header, frames) -> None:
        self.calls += 1
        key = header["key"]
        mode = header["mode"]
        n_fn = header["n_fn"]
        function = frames[0] if n_fn else b""
        arguments = frames[n_fn:]
        refs = {ref: await self._outcome(ref) for ref in header.get("refs", ())}
        options = header.get("options", {})
        task_header = {"fn_id": header["fn_id"], "function_ref": header.get("function_ref"), "mode": "call"}

        if options.get("stream_logs"):
            self._log_routes[key] = (identity, request_id)
        if mode == "map":
            chunk_tasks = []
            for index, chunk in enumerate(serialize.iter_parts(arguments, header["chunks"])):
                task = Task(key=f"{key}/{index}", header={**task_header, "mode": "map"}, function=function,
                            arguments=chunk, refs=refs, options=options)
                if options.get("stream_logs"):
                    self._log_routes[task.key] = (identity, request_id)
                chunk_tasks.append(self._run(task))
            outcomes = await asyncio.gather(*chunk_tasks)
            for index in range(len(outcomes)):
                self._log_routes.pop(f"{key}/{index}", None)
            self._log_routes.pop(key, None)
            await self._reply_outcomes(identity, request_id, outcomes)
            return

        task = Task(key=key, header=task_header, function=function, arguments=arguments, refs=refs, options=options)
        if mode == "enqueue":
            run = self._run_in_order(header["fn_id"], task)
        else:
            run = self._run(task)
        if mode == "remote":
            self._results[key] = asyncio.ensure_future(run)
            await self._reply(identity, request_id, b"ack", {"key": key})
            return
        outcome = await run
        self._log_routes.pop(key, None)
        await self._reply_outcomes(identity, request_id, [outcome])

    async def _run_in_order(self, fn_id: str, task: Task) -> Outcome:
        lock = self._fifo_locks.setdefault(fn_id, asyncio.Lock())  # asyncio.Lock wakes waiters FIFO
        async with lock:
            return await self._run(task)

    async def _run(self, task: Task) -> Outcome:
        timeout = task.options.get("timeout")
        try:
            outcome = await asyncio.wait_for(self.executor.run(task), timeout)
        except TimeoutError:
            error = CallTimeoutError(f"the call ran longer than its timeout of {timeout} s and was stopped")
            return Outcome(status="err", frames=serialize.dumps_exception(error))
        except Exception as exc:  # the executor's own failure, e.g. a worker that died
            return Outcome(status="err", frames=serialize.dumps_exception(exc))
        if outcome.logged:
            event = self._log_ends.setdefault(task.key, asyncio.Event())
            try:
                await asyncio.wait_for(event.wait(), 2.0)
            except TimeoutError:
                pass
            self._log_ends.pop(task.key, None)
        return outcome

    async def _reply_outcomes(self, identity, request_id, outcomes: list[Outcome]) -> None:
        parts = [[o.status, len(o.frames)] for o in outcomes]
        frames = [frame for o in outcomes for frame in o.frames]
        await self._reply(identity, request_id, b"result", {"parts": parts}, frames)

    async def _outcome(self, key: str) -> Outcome:
        future = self._results.get(key)
        if future is None:
            raise ProtocolError(
                f"no result with key {key!r} on this cluster: it was released, or the server restarted "
                "since the call was made. Call the function again."
            )
        return await asyncio.shield(future)

    async def _op_get(self, identity, request_id, header, frames) -> None:
        keys, timeout = header["keys"], header.get("timeout")
        try:
            outcomes = await asyncio.wait_for(asyncio.gather(*(self._outcome(k) for k in keys)), timeout)
        except TimeoutError:
            raise TimeoutError(f"result {keys[0] if len(keys) == 1 else keys} not ready after {timeout} s") from None
        await self._reply_outcomes(identity, request_id, outcomes)

    async def _op_status(self, identity, request_id, header, frames) -> None:
        states = {}
        for key in header["keys"]:
            future = self._results.get(key)
            states[key] = "unknown" if future is None else ("done" if future.done() else "running")
        await self._reply(identity, request_id, b"info", {"states": states})

    async def _op_release(self, identity, request_id, header, frames) -> None:
        for key in header["keys"]:
            self._results.pop(key, None)
        await self._reply(identity, request_id, b"info", {})

    # --- logs ----------------------------------------------------------------------------------

    async def _receive_logs(self) -> None:
        while True:
            key_bytes, stream, text = await self._logs.recv_multipart()
            key = key_bytes.decode()
            if stream == b"eof":
                self._log_ends.setdefault(key, asyncio.Event()).set()
                continue
            route = self._log_routes.get(key)
            if route is not None:
                await self._reply(*route, b"log", {"stream": stream.decode()}, [text])
            else:
                sys.stderr.write(f"[{key}] {text.decode('utf-8', 'replace')}")
                sys.stderr.flush()


def new_key(prefix: str = "run") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:16]}"


def parse_options(pairs: list[str]) -> dict[str, Any]:
    options = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep:
            raise SystemExit(f"executor option {pair!r} is not KEY=VALUE")
        try:
            options[key] = json.loads(value)
        except ValueError:
            options[key] = value
    return options


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m rh_core.server", description=__doc__.splitlines()[0])
    parser.add_argument("--state-dir", required=True, help="where server.json, sockets and logs live")
    parser.add_argument("--executor", default="process", help="executor name (see `rh plugins`)")
    parser.add_argument(
        "-o", "--option", action="append", default=[], metavar="KEY=VALUE",
        help="an executor option, e.g. -o num_workers=4 (values are read as JSON when they parse)",
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    args = parser.parse_args(argv)
    os.makedirs(args.state_dir, mode=0o700, exist_ok=True)
    executor = PluginHost().executor(args.executor)(**parse_options(args.option))
    asyncio.run(Server(args.state_dir, executor, args.host, args.port).serve())


if __name__ == "__main__":
    main()
