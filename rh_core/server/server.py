"""The cluster server: ``python -m rh_core.server --state-dir DIR [--executor NAME] [-o KEY=VALUE]``.

It binds a ZeroMQ ROUTER socket on 127.0.0.1 (a free port) for clients on other machines (through
an SSH tunnel or its TLS front door), listens on ``DIR/link.sock`` for clients on this machine
(see :mod:`rh_core.wire.link`), records pid, port, link, versions and executor in ``DIR/server.json``,
and routes calls to its executor. The server never unpickles what
clients send: arguments, functions and results pass through it as opaque frames, and only the
workers load them.

Every message is ``[envelope, *frames]`` where the envelope is a JSON object (over the link, the
pickled tuple ``(envelope, [frames])``). Requests carry
``id`` and ``op`` (``ping``, ``call``, ``get``, ``put``, ``status``, ``release``, ``cancel``,
``cancel_all``, ``release_instance``, ``instances``, ``shutdown``, ...) plus the op's fields; replies carry the request's ``id`` and a ``kind``: ``log`` and, for a call that
streams a generator's items (``stream``), ``item`` (zero or more of each, in the order the worker
sent them, while the call runs), then one of ``info``, ``ack``, ``result`` or ``fail``. Each
message's fields are those of its class in :mod:`rh_core.wire.messages`, which checks what clients send.

Remote bootstrap sets two environment variables for it: ``RH_BUILD_ID`` (which shipped wheels it
runs) and ``RH_NODE_ADDRESS`` (the address the cluster's other machines reach this one at, for
executors that span machines).
"""

from __future__ import annotations

import argparse
import asyncio
import hmac
import json
import os
import secrets
import signal
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any, Protocol

import attrs
import orjson
import uvloop
import zmq

from rh_core import __version__
from rh_core.errors import (
    ProtocolError,
    RhError,
    ServerStartError,
    UntrustedPathError,
)
from rh_core.plugin.host import default_host
from rh_core.plugin.interfaces import (
    Executor,
    InstallStep,
    LendsWorkers,
    Outcome,
    SharesMachine,
    Task,
    WatchesEnvironments,
    capability,
)
from rh_core.server import results
from rh_core.server.app_host import REQUIREMENT as APP_REQUIREMENT
from rh_core.server.app_host import AppHost
from rh_core.server.envs import ClusterEnvironment, install
from rh_core.server.http_door import REQUIREMENT as HTTP_REQUIREMENT
from rh_core.server.http_door import HttpDoor, http_available
from rh_core.server.instances import Instances
from rh_core.server.run_table import RunTable
from rh_core.server.link_door import LinkDoor
from rh_core.server.run_logs import RunLogs, run_key_of
from rh_core.server.secret_store import SecretStore
from rh_core.support.files import (
    open_private,
    private_directory,
    read_private,
    write_atomically,
)
from rh_core.support.processes import process_start_time, raise_open_files_limit
from rh_core.wire import serialize, shm
from rh_core.wire.channel import Channel
from rh_core.wire.frames import SECRET_FILE, join_frames
from rh_core.wire.heap import keep_freed_memory
from rh_core.wire.link import ENVELOPE_MAX_BYTES
from rh_core.wire.messages import (
    CallHeader,
    CallRequest,
    Failure,
    ResultParts,
    check_run_key,
    output_to_reply,
    request_of,
)

STATE_FILE = "server.json"
STATE_DIR_CHECK_SECONDS = 5.0  # how often the server checks that its state directory is still there


ZAP_DOMAIN = b"rh"  # the authentication domain of the router's connections (ZAP)
HANDSHAKE_SECONDS = 10  # how long a connection to the ZeroMQ port has to prove the secret


LINK_SOCKET = "link.sock"  # in the state directory: where clients on this machine connect (see rh_core.wire.link)


def encode(envelope: dict[str, Any]) -> bytes:
    return orjson.dumps(envelope)


class Peer(Protocol):
    """A connected client, as the server replies to it."""

    def send(self, envelope: bytes, frames: Sequence[Any]) -> bool:
        """Send one reply; False when it cannot be delivered (the client is gone or stopped reading)."""


class RouterPeer:
    """A client reached through the ZeroMQ router: every client on another machine."""

    __slots__ = ("_identity", "_router")

    def __init__(self, router: Channel, identity: bytes):
        self._router, self._identity = router, identity

    def send(self, envelope: bytes, frames: Sequence[Any]) -> bool:
        try:
            self._router.send([self._identity, envelope, *frames])
        except zmq.ZMQError as exc:
            if exc.errno not in (zmq.EHOSTUNREACH, zmq.EAGAIN):  # disconnected, or its queue is full
                raise
            return False
        return True


class Server:
    def __init__(self, state_dir: str, executor: Executor, host: str = "127.0.0.1", port: int = 0,
                 results_max_mb: int = results.DEFAULT_MAX_MB, results_days: float = results.DEFAULT_DAYS,
                 results_memory_mb: int = results.DEFAULT_MEMORY_MB,
                 expose: tuple[str, int] | None = None, tls_files: tuple[str, str] | None = None):
        if host not in ("127.0.0.1", "localhost", "::1"):
            raise ServerStartError(
                f"refusing to listen on {host}: the server takes pickled code, so beyond loopback it is only "
                "reachable through TLS; start it with --expose HOST:PORT (optionally --tls-cert/--tls-key)"
            )
        self._expose, self._tls_files = expose, tls_files
        self.tls: dict[str, Any] | None = None
        self.state_dir = os.path.abspath(state_dir)
        self._spilled = results.SpilledResults(os.path.join(self.state_dir, "results"),
                                               results_max_mb * 2**20, results_days * 86400)
        self._results_memory_budget = results_memory_mb * 2**20
        self._kept: results.KeptResults  # results kept by key, made when serve() has a loop
        self.executor = executor
        self._bind_host, self._bind_port = host, port
        self.log_endpoint = f"ipc://{self.state_dir}/logs.sock"
        self._runs: RunTable  # the calls running or waiting, made when serve() has a loop
        self.runs_dir = os.path.join(self.state_dir, "runs")
        self._run_logs: RunLogs  # log lines and items of running calls, made when serve() has a loop
        self._tasks: set[asyncio.Task] = set()
        self._environments: dict[str | None, ClusterEnvironment] = {}
        self.instances = Instances(executor)
        self._stopped = asyncio.Event()
        self.started_at = time.time()
        self.calls = 0
        self._loop: asyncio.AbstractEventLoop  # the loop serve() runs on
        self.link_path: str | None = None  # the link socket clients on this machine use, once open
        self._link_door: LinkDoor  # clients on this machine come in by it, once serve() opened it
        # Large buffers may go through /dev/shm when every worker shares this machine.
        shares = capability(executor, SharesMachine)
        self._shm_prefix = shm.prefix_for(os.getpid()) if shares is not None and shares.same_machine else None
        # The executor's optional capabilities, asked once here rather than on every call or install.
        self._lender = capability(executor, LendsWorkers)
        self._environment_watcher = capability(executor, WatchesEnvironments)
        self._secrets = SecretStore(self.state_dir)
        # Endpoints and apps served before a restart load here, and are served again by serve().
        self._apps = AppHost(self.state_dir, self.environment, self._secrets.variables)
        self._http = HttpDoor(self.state_dir, self.start_call, self._apps)

    # --- life cycle ----------------------------------------------------------------------------

    async def serve(self) -> None:
        self._loop = asyncio.get_running_loop()
        # Before any door opens: a client's call routes its replies through them.
        self._runs = RunTable(self._loop, self.executor, self.instances)
        self._run_logs = self._runs.run_logs = RunLogs(self.runs_dir, self._loop, self._reply,
                                                       self._runs.other_tasks_running)
        self._kept = results.KeptResults(self._spilled, self._results_memory_budget, self._loop, self._runs.running_call)
        self._secret = load_or_create_secret(self.state_dir).encode()
        context = zmq.Context.instance()
        self._zap = self._open_zap_handler(context)
        router = context.socket(zmq.ROUTER)
        router.setsockopt(zmq.LINGER, 0)
        router.setsockopt(zmq.ROUTER_HANDOVER, 1)
        # A connection must prove the secret in its handshake before it can send a message, and no
        # frame longer than ENVELOPE_MAX_BYTES is read, so a stranger on this port can make us read
        # at most one such frame per connection, for at most HANDSHAKE_SECONDS. Clients send longer
        # frames in pieces (rh_core.wire.frames.split_frames), joined in _on_router_message.
        router.plain_server = True
        router.zap_domain = ZAP_DOMAIN
        router.setsockopt(zmq.MAXMSGSIZE, ENVELOPE_MAX_BYTES)
        router.setsockopt(zmq.HANDSHAKE_IVL, HANDSHAKE_SECONDS * 1000)
        # A reply to a client that is gone raises instead of vanishing: its result is kept by key.
        router.setsockopt(zmq.ROUTER_MANDATORY, 1)
        if self._bind_port:
            router.bind(f"tcp://{self._bind_host}:{self._bind_port}")
            self.port = self._bind_port
        else:
            self.port = router.bind_to_random_port(f"tcp://{self._bind_host}")
        # Clients on this machine use a unix socket: lower latency and ~2x the bulk throughput of TCP.
        self.local_endpoint = f"ipc://{self.state_dir}/server.sock"
        router.bind(self.local_endpoint)
        self._link_door = LinkDoor(os.path.join(self.state_dir, LINK_SOCKET), self._loop, self._check_request,
                                   self._serve, self._shm_prefix, self._stopped.is_set)
        self._link_door.open()
        self.link_path = self._link_door.path
        if self._expose is not None:
            await self._open_front_door()
        logs = context.socket(zmq.PULL)
        logs.bind(self.log_endpoint)
        self._logs = Channel(logs, self._run_logs.on_log)
        await self.executor.start(self)
        try:
            await self._http.open_if_serving()
            await self._apps.start_all()
        except Exception as exc:  # the endpoints wait; every other call works
            sys.stderr.write(f"rh server: cannot serve the HTTP endpoints and apps: {exc}\n")
        self._router = Channel(router, self._on_router_message)
        shm.sweep()  # what servers that died left behind
        self._run_logs.sweep()
        self._kept.expire()
        self._write_state()
        self._watch_state_dir(os.stat(self.state_dir))
        for sig in (signal.SIGTERM, signal.SIGINT):
            self._loop.add_signal_handler(sig, self._stopped.set)
        await self._stopped.wait()
        if self.tls is not None:
            self._front_door.close()
        self._router.close()
        self._zap.close()
        self._link_door.close()
        await self._apps.stop_all()
        await self._http.close()
        await self.executor.stop()
        await self._kept.close()  # results being written reach the disk
        shm.sweep(os.getpid())
        self._remove_state()
        self._logs.close()

    def _open_zap_handler(self, context: zmq.Context) -> Channel:
        """Answer libzmq's authentication requests (ZAP, RFC 27) for the router's connections: a
        connection is let in when its handshake's PLAIN password is the secret."""
        zap = context.socket(zmq.REP)
        zap.setsockopt(zmq.LINGER, 0)
        zap.bind("inproc://zeromq.zap.01")

        def authenticate(frames: list) -> None:
            _, request_id, domain, _, _, mechanism, *credentials = (frame.bytes for frame in frames)
            let_in = (domain == ZAP_DOMAIN and mechanism == b"PLAIN" and len(credentials) == 2
                      and hmac.compare_digest(credentials[1], self._secret))
            status = [b"200", b"OK"] if let_in else [b"400", b"not this cluster's secret"]
            zap_channel.send([b"1.0", request_id, *status, b"", b""])

        zap_channel = Channel(zap, authenticate)
        return zap_channel

    async def _open_front_door(self) -> None:
        from rh_core.server import front_door

        cert, key = self._tls_files or front_door.self_signed(self.state_dir)
        host, port = self._expose
        self._front_door, bound = await front_door.serve_front_door(host, port, cert, key, self.port, self._secret,
                                                             lambda: self._http.port)
        self.tls = {"address": f"{host}:{bound}", "fingerprint": front_door.certificate_fingerprint(cert)}

    def _watch_state_dir(self, first: os.stat_result) -> None:
        """Stop when the state directory is deleted or replaced: clients find a server only through
        it, so a server without it could never be reached or stopped again (an orphan)."""
        try:
            now = os.stat(self.state_dir)
            gone = (now.st_dev, now.st_ino) != (first.st_dev, first.st_ino)
        except FileNotFoundError:
            gone = True
        if gone:
            sys.stderr.write(f"rh server: its state directory {self.state_dir} was deleted or replaced; stopping\n")
            self._stopped.set()
            return
        self._loop.call_later(STATE_DIR_CHECK_SECONDS, self._watch_state_dir, first)

    def info(self) -> dict[str, Any]:
        return {
            "pid": os.getpid(),
            "process_start": process_start_time(os.getpid()),
            "port": self.port,
            "local_endpoint": self.local_endpoint,
            "link": self.link_path,
            "version": __version__,
            "build": os.environ.get("RH_BUILD_ID"),
            "node_address": os.environ.get("RH_NODE_ADDRESS"),
            "python": serialize.python_version(),
            "python_executable": sys.executable,
            "executor": self.executor.name,
            "parallelism": self.executor.parallelism,
            "shm": self._shm_prefix is not None,
            "started_at": self.started_at,
            "calls": self.calls,
            "in_flight": len(self._runs),
            "tls": self.tls,  # tasks running or waiting now (idle detection counts them)
            "http_port": self._http.port,  # the HTTP door's, once an endpoint is served
            "state_dir": self.state_dir,
            **self._kept.describe(),
            **{f"executor_{k}": v for k, v in self.executor.describe().items() if k != "executor"},
        }

    def _write_state(self) -> None:
        write_atomically(os.path.join(self.state_dir, STATE_FILE), json.dumps(self.info()))

    def _remove_state(self) -> None:
        path = os.path.join(self.state_dir, STATE_FILE)
        try:
            with open(path) as file:
                if json.load(file).get("pid") == os.getpid():
                    os.unlink(path)
        except (OSError, ValueError):
            pass

    def environment(self, name: str | None) -> ClusterEnvironment:
        if name not in self._environments:
            self._environments[name] = ClusterEnvironment.open(self.state_dir, name)
        return self._environments[name]

    # --- requests ------------------------------------------------------------------------------

    def _reply(self, peer: Peer, request_id: str, kind: str, fields: dict[str, Any], frames=()) -> bool:
        """Send a reply; False when it could not be delivered: the client has disconnected (it was
        killed, or its connection dropped) or has stopped reading (its queue is full)."""
        return peer.send(encode({"id": request_id, "kind": kind, **fields}), frames)

    def _reply_outcomes(self, peer: Peer, request_id: str, outcomes: list[Outcome]) -> bool:
        """Reply with outcomes, and before their frames the output that travelled with them."""
        fields = ResultParts.of(outcomes).to_wire()
        frames = [frame for o in outcomes for frame in o.frames]
        if any(o.output for o in outcomes):
            fields["output"], texts = output_to_reply(outcomes)
            frames = texts + frames
        return self._reply(peer, request_id, "result", fields, frames)

    def _deliver(self, peer: Peer, request_id: str, task: Task, outcome: Outcome) -> None:
        """Reply with a call's outcome; when its caller is gone, keep it as a result by the run's key
        (listed by ``cluster.runs()``, fetched with ``cluster.get(key)``) instead of losing it."""
        if self._reply_outcomes(peer, request_id, [outcome]):
            return
        self._kept.keep(task.key, attrs.evolve(outcome, output=()))  # the output is in the run's log
        sys.stderr.write(f"rh server: the caller of run {task.key} is gone; its result is kept on the cluster: "
                         f"cluster.get({task.key!r}) fetches it\n")

    def _on_router_message(self, frames: list) -> None:
        """A request through ZeroMQ: ``[client identity, envelope, *frames]``."""
        peer = RouterPeer(self._router, frames[0].bytes)
        request = self._check_request(peer, frames[1].buffer if len(frames) > 1 else b"")
        if request is None:
            return
        frames = frames[2:]
        if "pieces" in request:  # frames a client on another machine sent in pieces (see ENVELOPE_MAX_BYTES)
            try:
                frames = join_frames(frames, request["pieces"])
            except ProtocolError as exc:
                self._fail(peer, request["id"], exc)
                return
        self._serve(peer, request, frames)

    def _check_request(self, peer: Peer, envelope: Any) -> dict[str, Any] | None:
        """The request in ``envelope`` (JSON) when it is well formed and carries the secret; else
        None, after a ``fail`` reply saying why. Nothing of a refused request is used."""
        try:
            request = orjson.loads(envelope)
            if not isinstance(request, dict) or "id" not in request or "op" not in request:
                raise ValueError("not a request")
            authenticated = hmac.compare_digest(str(request.get("auth", "")).encode(), self._secret)
        except (IndexError, ValueError, KeyError, TypeError, AttributeError):
            self._reply(peer, "", "fail", Failure("ProtocolError", "malformed request envelope").to_wire())
            return None
        if not authenticated:
            self._reply(peer, request["id"], "fail", Failure("AuthenticationError", (
                "the request does not carry this cluster's secret; clients read it from the server's state "
                "directory on the cluster (owner-only), so only the cluster's user can call its server"
            )).to_wire())
            return None
        return request

    def _serve(self, peer: Peer, request: dict[str, Any], frames: list) -> None:
        """Serve one authenticated request from ``peer``, with the frames after its envelope."""
        request_id, op = request["id"], request["op"]
        # The two hot paths are answered without a coroutine: liveness pings and plain calls (from
        # a client, not from a function running here: see _lend_callers_worker).
        if op == "ping":
            self._reply(peer, request_id, "info", self.info())
            return
        try:  # what a client sent is hostile until its message class has checked it
            message = CallRequest.from_wire(request, len(frames)) if op == "call" else request_of(op, request)
            if type(message) is CallRequest and message.mode == "call" and not message.refs and message.caller is None:
                task = self._task(message, frames)
            else:
                task = None
        except Exception as exc:
            self._fail(peer, request_id, exc)
            return
        if task is not None:
            self.calls += 1
            self._run_logs.route(task, peer, request_id)
            future = self._runs.start(task)
            future.add_done_callback(lambda f: self._finish_call(peer, request_id, task, f))
        else:
            handling = asyncio.ensure_future(self._handle(peer, request_id, op, message, frames))
            self._tasks.add(handling)
            handling.add_done_callback(self._tasks.discard)

    def _finish_call(self, peer: Peer, request_id: str, task: Task, future: asyncio.Future) -> None:
        self._run_logs.unroute(task)
        self._deliver(peer, request_id, task, future.result())

    def _fail(self, peer: Peer, request_id: str, exc: Exception) -> None:
        error_type = type(exc).__name__ if isinstance(exc, (RhError, TimeoutError)) else "ProtocolError"
        self._reply(peer, request_id, "fail", Failure(error_type, str(exc)).to_wire())

    async def _handle(self, peer: Peer, request_id: str, op: str, message: Any, frames: list) -> None:
        try:
            handler = getattr(self, f"_op_{op}", None)
            if handler is None:
                raise ProtocolError(f"unknown operation {op!r}")
            await handler(peer, request_id, message, frames)
        except Exception as exc:
            self._fail(peer, request_id, exc)

    def _task(self, request: CallRequest, frames: list, refs: dict[str, Outcome] | None = None,
              http: dict[str, Any] | None = None) -> Task:
        """The task of a checked call request."""
        if request.instance is not None and request.mode != "create":  # a call of an instance's methods
            self.instances.check(request.instance)
        header = CallHeader.of(request, self._shm_prefix)
        if http is not None:
            header = attrs.evolve(header, http=http)
        n_fn = request.n_fn
        return Task(
            key=request.key,
            header=header,
            function=frames[0] if n_fn else b"",
            arguments=frames[n_fn:],
            refs=refs or {},
            options=request.options,
            env=request.env,
            variables=self._secrets.variables(list(request.secrets)) if request.secrets else {},
        )

    def start_call(self, request: CallRequest, frames: list, http: dict[str, Any]) -> asyncio.Future[Outcome]:
        """Start a call the server makes on someone's behalf (an HTTP endpoint's caller, whose
        request is ``http``); raises for a call it refuses."""
        task = self._task(request, frames, http=http)
        self.calls += 1
        return self._runs.start(task)

    async def _op_shutdown(self, peer, request_id, request, frames) -> None:
        self._reply(peer, request_id, "info", self.info())
        self._stopped.set()

    async def _op_call(self, peer, request_id, request: CallRequest, frames) -> None:
        self.calls += 1
        refs = {ref: await self._kept.outcome(ref) for ref in request.refs}
        task = self._task(request, frames, refs)
        mode = request.mode
        if mode == "remote":  # its logs go to the server log: nobody waits on this request
            self._kept.hold(task.key, self._runs.start(task))
            self._reply(peer, request_id, "ack", {"key": task.key})
            return
        give_back = self._lend_callers_worker(request.caller)
        try:
            if mode == "create":
                await self._create_instance(peer, request_id, task)
            elif mode == "map":
                await self._map(peer, request_id, task, request.chunks)
            else:
                self._run_logs.route(task, peer, request_id)
                outcome = await self._runs.start(task, exclusive=mode == "enqueue")
                self._run_logs.unroute(task)
                self._deliver(peer, request_id, task, outcome)
        finally:
            give_back()

    def _lend_callers_worker(self, caller: str | None) -> Callable[[], None]:
        """A call made by a function running here waits in that function's worker: the executor
        may start another worker meanwhile (its optional :class:`LendsWorkers` capability), so callers
        that fill every worker still see their callees run. Returns what gives the worker back."""
        if not isinstance(caller, str) or self._lender is None or caller not in self._runs:
            return _nothing
        return self._lender.lend_worker(caller) or _nothing

    async def _map(self, peer: Peer, request_id: str, task: Task, chunk_sizes: Sequence[int]) -> None:
        chunks = [
            Task(key=f"{task.key}/{index}", header=task.header, function=task.function,
                 arguments=chunk, refs=task.refs, options=task.options, env=task.env, variables=task.variables)
            for index, chunk in enumerate(serialize.iter_parts(task.arguments, chunk_sizes))
        ]
        for chunk in chunks:
            self._run_logs.route(chunk, peer, request_id)
        finishing = [self._runs.start(chunk) for chunk in chunks]
        if task.options.get("progress"):  # the caller shows a progress bar: say which chunk is done
            for index, future in enumerate(finishing):
                future.add_done_callback(lambda _, index=index: self._reply(
                    peer, request_id, "log", {"stream": "progress"}, [str(index).encode()]))
        outcomes = await asyncio.gather(*finishing)
        for chunk in chunks:
            self._run_logs.unroute(chunk)
        self._reply_outcomes(peer, request_id, list(outcomes))

    async def _op_cancel(self, peer, request_id, request, frames) -> None:
        """Stop a run (a call, a ``.remote()``, every chunk of a map) wherever it is; whoever waits
        for it gets :class:`RunCancelledError`."""
        key = request.key
        tasks = self._runs.tasks_of(key)
        if not tasks:
            known = self._kept.has(key) or self._run_logs.has(key)
            raise ProtocolError(
                f"run {key!r} is not running on this cluster" + (": it has already finished" if known else
                                                               "; check the key (ref.key) or the cluster")
            )
        self._runs.cancel(tasks)
        self._reply(peer, request_id, "info", {"cancelled": len(tasks)})

    async def _op_cancel_all(self, peer, request_id, request, frames) -> None:
        """Stop every run on the cluster (``cluster.cancel_all()``); remote instances live on."""
        runs = sorted({run_key_of(k) for k in self._runs})
        self._runs.cancel(list(self._runs))
        self._reply(peer, request_id, "info", {"cancelled": runs})

    async def _op_runs(self, peer, request_id, request, frames) -> None:
        """The runs in progress (with how many of their tasks run or wait), the kept results, and the
        last runs that logged anything (a call made with ``stream_logs=False`` among them)."""
        running: dict[str, int] = {}
        for task_key in self._runs:
            running[run_key_of(task_key)] = running.get(run_key_of(task_key), 0) + 1
        self._reply(peer, request_id, "info", {"running": running, "finished": self._kept.finished_keys(),
                                               "logged": self._run_logs.recent()})

    async def _op_logs(self, peer, request_id, request, frames) -> None:
        """What a run has logged so far; with ``follow``, then every new line until it ends."""
        key = request.key
        self._run_logs.path(key)  # a key that is no run's is refused before anything else
        running = self._runs.finals_of(key)
        if not running and not self._run_logs.has(key) and not self._kept.has(key):
            raise ProtocolError(f"no run {key!r} on this cluster (or it logged nothing and its result was released)")
        logged = self._run_logs.read(key)
        if logged:
            self._reply(peer, request_id, "log", {"stream": "stdout"}, [logged])
        if request.follow and running:
            # Followed from the same loop step as the read above, so no line falls in between.
            with self._run_logs.following(key, peer, request_id):
                await asyncio.gather(*running)
                await asyncio.sleep(0)  # let log lines already received go out first
        self._reply(peer, request_id, "info", {"running": bool(running) and not request.follow})

    async def _op_install(self, peer, request_id, request, frames) -> None:
        """Install steps into an environment (in a thread: pip takes seconds), then refresh its workers."""
        name = request.env
        steps = [InstallStep.from_json(step) for step in request.steps]
        env = await asyncio.to_thread(self.environment, name)
        done = await asyncio.to_thread(install, env, steps, default_host().installer)
        if done["installed"] and self._environment_watcher is not None:
            self._environment_watcher.environment_changed(name)
        self._reply(peer, request_id, "info", {**done, "environment": env.describe()})

    async def _op_sync_secrets(self, peer, request_id, request, frames) -> None:
        """Store secrets sent as one JSON frame and write their files (see :mod:`rh_core.server.secret_store`)."""
        if len(frames) != 1:
            raise ProtocolError("malformed sync_secrets request: the secrets travel as one JSON frame")
        try:
            secrets = orjson.loads(memoryview(frames[0]))  # a zmq.Frame from a remote client: orjson wants a buffer
        except orjson.JSONDecodeError:
            raise ProtocolError("malformed sync_secrets request: the frame is not JSON") from None
        if not isinstance(secrets, list):
            raise ProtocolError("malformed sync_secrets request: the frame holds a list of secrets")
        names = await asyncio.to_thread(self._secrets.put, secrets)
        self._reply(peer, request_id, "info", {"secrets": names})

    async def _op_delete_secrets(self, peer, request_id, request, frames) -> None:
        deleted = await asyncio.to_thread(self._secrets.delete, list(request.names))
        self._reply(peer, request_id, "info", {"deleted": deleted})

    async def _op_secrets(self, peer, request_id, request, frames) -> None:
        """The secrets on the cluster: names, variable names and files, never a value."""
        self._reply(peer, request_id, "info", {"secrets": await asyncio.to_thread(self._secrets.describe)})

    async def _op_serve(self, peer, request_id, request, frames) -> None:
        """Serve a call as an HTTP endpoint (see :mod:`rh_core.server.http_door`); when this server's
        Python cannot import the HTTP library, say what to install instead."""
        if not await asyncio.to_thread(http_available):
            self._reply(peer, request_id, "info", {"missing": HTTP_REQUIREMENT})
            return
        await self._http.serve(request.name, request.public, request.call, frames)
        self._write_state()  # its http_port, for clients that read the record
        self._reply(peer, request_id, "info", {"port": self._http.port, "name": request.name})

    async def _op_unserve(self, peer, request_id, request, frames) -> None:
        self._reply(peer, request_id, "info", {"removed": self._http.remove(request.name)})

    async def _op_endpoints(self, peer, request_id, request, frames) -> None:
        self._reply(peer, request_id, "info", {"endpoints": self._http.describe(), "port": self._http.port})

    async def _op_run_app(self, peer, request_id, request, frames) -> None:
        """Run an ASGI app (see :mod:`rh_core.server.app_host`) and serve it through the door; when the
        server cannot import aiohttp, or the app's environment uvicorn, say what to install."""
        record = request.app
        if record is None:
            raise ProtocolError("malformed run_app request: 'app' describes the app")
        if not await asyncio.to_thread(http_available):
            self._reply(peer, request_id, "info", {"missing": HTTP_REQUIREMENT, "env": None})
            return
        env = await asyncio.to_thread(self.environment, record.get("env"))
        if not await _imports(env, "uvicorn"):
            self._reply(peer, request_id, "info", {"missing": APP_REQUIREMENT, "env": record.get("env")})
            return
        if record.get("name") in self._http:
            raise ProtocolError(f"a function is served as {record.get('name')!r}; remove that endpoint first "
                                "(cluster.remove_endpoint) or choose another name")
        await self._http.open()
        await self._apps.run(record)
        self._write_state()
        self._reply(peer, request_id, "info", {"port": self._http.port})

    async def _op_remove_app(self, peer, request_id, request, frames) -> None:
        self._reply(peer, request_id, "info", {"removed": await self._apps.remove(request.name)})

    async def _op_apps(self, peer, request_id, request, frames) -> None:
        self._reply(peer, request_id, "info", {"apps": self._apps.describe(), "port": self._http.port})

    async def _op_app_logs(self, peer, request_id, request, frames) -> None:
        self._reply(peer, request_id, "info", {"log": self._apps.log_tail(request.name)})

    async def _op_http_token(self, peer, request_id, request, frames) -> None:
        """The HTTP endpoints' bearer token, to an authenticated client only (as every reply is)."""
        token = await asyncio.to_thread(self._http.token, request.rotate)
        self._reply(peer, request_id, "info", {"token": token})

    async def _op_get(self, peer, request_id, request, frames) -> None:
        keys, timeout = request.keys, request.timeout
        try:
            outcomes = await asyncio.wait_for(asyncio.gather(*(self._kept.outcome(k) for k in keys)), timeout)
        except asyncio.TimeoutError:  # not the builtin TimeoutError on Python 3.10
            raise TimeoutError(f"result {keys[0] if len(keys) == 1 else keys} not ready after {timeout} s") from None
        self._reply_outcomes(peer, request_id, list(outcomes))

    async def _op_status(self, peer, request_id, request, frames) -> None:
        self._reply(peer, request_id, "info", {"states": {key: self._kept.state(key) for key in request.keys}})

    async def _op_put(self, peer, request_id, request, frames) -> None:
        """Keep an object a client sent (``cluster.put``) under its key, as a finished result is
        kept: ``cluster.get`` and refs reach it, it expires with results, ``release`` drops it."""
        try:
            key = check_run_key(request.key)  # kept beside results, so named as they are
        except ProtocolError as exc:
            raise ProtocolError(f"cannot keep an object under that key: {exc}, e.g. 'weights' or 'run-1.config'") from None
        if self._runs.tasks_of(key):
            raise ProtocolError(f"run {key!r} is running on this cluster; keep the object under another key")
        # Copied: the frames may be views of a receive buffer, and this outlives the request.
        outcome = Outcome(status="ok", frames=[bytes(memoryview(getattr(f, "buffer", f))) for f in frames])
        self._kept.keep(key, outcome)
        self._reply(peer, request_id, "info", {"key": key})

    async def _op_release(self, peer, request_id, request, frames) -> None:
        for key in request.keys:
            await self._kept.release(key)
        self._reply(peer, request_id, "info", {})

    # --- remote instances (rh.module) ---------------------------------------------------------

    async def _create_instance(self, peer: Peer, request_id: str, task: Task) -> None:
        """Get or create the instance the task names (see :meth:`Instances.get_or_create`); its
        constructor runs as a call does: with its timeout, cancel and output."""
        constructed: list[Outcome] = []

        async def construct(task: Task) -> Outcome:
            self._run_logs.route(task, peer, request_id)
            try:
                constructed.append(await self._runs.start(task))
                return constructed[-1]
            finally:
                self._run_logs.unroute(task)

        instance_id, created, failed = await self.instances.get_or_create(task, construct)
        if failed is not None:
            self._reply_outcomes(peer, request_id, [failed])
            return
        fields: dict[str, Any] = {"instance_id": instance_id, "created": created}
        texts: list[bytes] = []
        if constructed and constructed[0].output:  # what the constructor printed
            fields["output"], texts = output_to_reply(constructed)
        self._reply(peer, request_id, "info", fields, texts)

    def instance_ended(self, instance_id: str, reason: str) -> None:
        """From the executor (:class:`~rh_core.plugin.interfaces.ServerContext`): an instance's process is gone."""
        self.instances.ended(instance_id, reason)

    async def _op_release_instance(self, peer, request_id, request, frames) -> None:
        """End an instance (``m.release()``): its process stops; calls it runs fail."""
        released = request.name is not None and await self.instances.release(request.name, request.instance_id)
        self._reply(peer, request_id, "info", {"released": released})

    async def _op_instances(self, peer, request_id, request, frames) -> None:
        """The remote instances on this cluster (see :meth:`Instances.describe`)."""
        self._reply(peer, request_id, "info", {"instances": self.instances.describe()})


async def _imports(env: Any, module: str) -> bool:
    """Whether ``env``'s interpreter can import ``module``."""
    process = await asyncio.create_subprocess_exec(env.python, "-c", f"import {module}", env={**os.environ, **env.variables},
                                                   stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.DEVNULL,
                                                   stderr=asyncio.subprocess.DEVNULL)
    return await process.wait() == 0


def _nothing() -> None:
    pass


def load_or_create_secret(state_dir: str) -> str:
    """The server's secret, created owner-only on first start and kept across restarts, so clients
    that have it keep working after a restart. One that is not ours alone is refused
    (:class:`UntrustedPathError`): whoever planted or read it could call us."""
    path = os.path.join(state_dir, SECRET_FILE)
    try:  # exclusively: of two servers starting at once, one makes it and the other reads it
        fd = open_private(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, secret=True)
    except FileExistsError:
        existing = (read_private(path, secret=True) or b"").decode().strip()
        if existing:
            return existing
        fd = open_private(path, os.O_WRONLY | os.O_TRUNC, secret=True)  # empty: its maker died before writing
    secret = secrets.token_urlsafe(32)
    with os.fdopen(fd, "w") as f:
        f.write(secret + "\n")
    return secret


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
    parser.add_argument("--host", default="127.0.0.1", help=argparse.SUPPRESS)  # loopback only; see --expose
    parser.add_argument("--expose", metavar="HOST:PORT",
                        help="also accept clients over TLS here (the server itself stays on loopback)")
    parser.add_argument("--tls-cert", help="PEM certificate for --expose (default: self-signed, made once)")
    parser.add_argument("--tls-key", help="PEM private key of --tls-cert")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--results-max-mb", type=int, default=results.DEFAULT_MAX_MB,
                        help="disk space for .remote() results kept across restarts")
    parser.add_argument("--results-days", type=float, default=results.DEFAULT_DAYS,
                        help="days a kept result lives before it is deleted")
    parser.add_argument("--results-memory-mb", type=int, default=results.DEFAULT_MEMORY_MB,
                        help="memory for kept results that are on disk too; beyond it they are read from disk")
    args = parser.parse_args(argv)
    try:  # before anything goes into it: the secret, logs, results
        args.state_dir = private_directory(args.state_dir)  # absolute
    except UntrustedPathError as exc:
        sys.exit(f"rh server: {exc}")
    # Its own directory, not the starter's: a server outlives the shell that started it, and a
    # working directory deleted meanwhile would fail every pip or git run it makes.
    os.chdir(args.state_dir)
    keep_freed_memory()
    raise_open_files_limit()  # each thread of each local client holds a connection
    executor = default_host().executor(args.executor)(**parse_options(args.option))  # the one host of this process
    expose = None
    if args.expose:
        host, _, port = args.expose.rpartition(":")
        if not host or not port.isdigit():
            parser.error(f"--expose takes HOST:PORT, not {args.expose!r}")
        expose = (host, int(port))
    if bool(args.tls_cert) != bool(args.tls_key):
        parser.error("--tls-cert and --tls-key go together")
    tls_files = (args.tls_cert, args.tls_key) if args.tls_cert else None
    server = Server(args.state_dir, executor, args.host, args.port, results_max_mb=args.results_max_mb,
                    results_days=args.results_days, results_memory_mb=args.results_memory_mb,
                    expose=expose, tls_files=tls_files)
    try:
        uvloop.run(server.serve())  # libuv's loop: a fifth less server CPU per call than asyncio's own
    except UntrustedPathError as exc:  # a state file someone else planted: say so, without a traceback
        sys.exit(f"rh server: {exc}")


if __name__ == "__main__":
    main()
