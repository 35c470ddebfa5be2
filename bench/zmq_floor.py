"""The floors of the wire rh_core uses: bare round trips, one hop through pyzmq and two over unix sockets.

One hop (``python bench/zmq_floor.py``): a separate server process receives a pickled
``(function, args)`` over pyzmq (pickle protocol 5, large ``bytes`` out of band as their own
frames, ``copy=False``), calls the function in-process and returns the pickled result the same
way: the floor of a client on another machine, which reaches the server through ZeroMQ.

Two hops (``python bench/zmq_floor.py relay WORKERS``): the shape of a local call to rh_core's
``process`` executor with nothing else: clients reach a relay process over a unix socket with
``multiprocessing.connection`` framing (as rh_core's local clients reach its server's link
socket), and the relay passes each request, unopened, to an idle worker process over a socket
pair and the worker's reply back to its client. No envelope, no authentication, no liveness
checks, no bookkeeping: whatever rh_core costs above these is its own overhead.

Either server prints its port on stdout; a message ``[b"stop"]`` ends it.
"""

from __future__ import annotations

import os
import pickle
import socket
import subprocess
import sys
import threading
from multiprocessing.connection import Connection

import zmq

OUT_OF_BAND_MIN = 64 * 1024  # the same threshold rh_core.wire.serialize uses
HERE = os.path.dirname(os.path.abspath(__file__))


def _bytes_from_buffer(buffer) -> bytes:
    return bytes(buffer)


class _LargeBytes:
    """Sends a large ``bytes`` out of band (pickle never does so for ``bytes`` by itself)."""

    __slots__ = ("data",)

    def __init__(self, data: bytes):
        self.data = data

    def __reduce_ex__(self, protocol):
        return _bytes_from_buffer, (pickle.PickleBuffer(self.data),)


def _lift(obj, depth: int = 2):
    if type(obj) is bytes:
        return _LargeBytes(obj) if len(obj) >= OUT_OF_BAND_MIN else obj
    if depth and type(obj) is tuple:
        return tuple(_lift(item, depth - 1) for item in obj)
    return obj


def dumps(obj) -> list:
    buffers: list = []
    stream = pickle.dumps(_lift(obj), protocol=5, buffer_callback=buffers.append)
    return [stream, *buffers]


def loads(frames: list):
    return pickle.loads(frames[0], buffers=frames[1:])


# --- server ---------------------------------------------------------------------------------------


def serve() -> None:
    context = zmq.Context.instance()
    router = context.socket(zmq.ROUTER)
    router.setsockopt(zmq.LINGER, 0)
    port = router.bind_to_random_port("tcp://127.0.0.1")
    sys.stdout.write(f"{port}\n")
    sys.stdout.flush()
    while True:
        frames = router.recv_multipart(copy=False)
        identity, body = frames[0], frames[1:]
        if len(body) == 1 and body[0].bytes == b"stop":
            router.send_multipart([identity, b"stopped"])
            break
        fn, args = loads([frame.buffer for frame in body])
        router.send_multipart([identity, *dumps(fn(*args))], copy=False)
    router.close(linger=1000)


def relay(workers: int) -> None:
    """Pass requests to ``workers`` worker processes, one request per worker at a time. Clients
    reach the relay over a unix socket and the relay reaches each worker over a socket pair, as
    rh_core's local clients and its ``process`` executor's workers do."""
    import select
    import tempfile

    path = os.path.join(tempfile.mkdtemp(prefix="rh-floor-"), "front.sock")
    front = socket.socket(socket.AF_UNIX)
    front.bind(path)
    front.listen(128)
    poller = select.poll()
    poller.register(front.fileno(), select.POLLIN)
    workers_by_fd: dict[int, Connection] = {}
    clients: dict[int, Connection] = {}
    children = []
    for _ in range(workers):
        ours, theirs = socket.socketpair()
        children.append(subprocess.Popen([sys.executable, os.path.join(HERE, "zmq_floor.py"), "worker",
                                          str(theirs.fileno())], pass_fds=(theirs.fileno(),)))
        theirs.close()
        link = Connection(ours.detach())
        workers_by_fd[link.fileno()] = link
        poller.register(link.fileno(), select.POLLIN)
    idle: list[Connection] = []
    waiting: list[list] = []
    announced = False
    while True:
        if not announced and len(idle) == workers:
            sys.stdout.write(f"link://{path}\n")
            sys.stdout.flush()
            announced = True
        for fd, _ in poller.poll():
            if fd == front.fileno():
                client = Connection(front.accept()[0].detach())
                clients[client.fileno()] = client
                poller.register(client.fileno(), select.POLLIN)
            elif fd in clients:
                try:
                    frames = receive_frames(clients[fd])
                except EOFError:
                    poller.unregister(fd)
                    clients.pop(fd).close()
                    continue
                if frames == [b"stop"]:
                    for child in children:
                        child.kill()
                    send_frames(clients[fd], [b"stopped"])
                    return
                waiting.append([fd.to_bytes(4, "little"), *frames])
            else:  # [] when the worker is ready, or [client, *result]
                link = workers_by_fd[fd]
                frames = receive_frames(link)
                idle.append(link)
                if frames:
                    send_frames(clients[int.from_bytes(frames[0], "little")], frames[1:])
            while idle and waiting:
                send_frames(idle.pop(), waiting.pop(0))


def send_frames(link: Connection, frames: list) -> None:
    """Frames over a socket pair: one pickle holding the small ones, then each large one, uncopied."""
    large: list = []
    stream = pickle.dumps([pickle.PickleBuffer(f) if len(memoryview(f)) >= OUT_OF_BAND_MIN else bytes(f)
                           for f in frames], protocol=5, buffer_callback=large.append)
    link.send_bytes(stream)
    for buffer in large:
        link.send_bytes(buffer.raw())


def receive_frames(link: Connection) -> list:
    stream = link.recv_bytes()
    return pickle.loads(stream, buffers=iter(link.recv_bytes, None))


def worker(fd: str) -> None:
    link = Connection(int(fd))
    send_frames(link, [])
    while True:
        client, *request = receive_frames(link)
        fn, args = loads(request)
        send_frames(link, [client, *dumps(fn(*args))])


# --- client ---------------------------------------------------------------------------------------


class FloorServer:
    """Starts the server process; ``call`` is thread-safe (one socket per thread)."""

    def __init__(self, relay_workers: int = 0):
        """``relay_workers``: 0 for the one-hop server, else the two-hop relay with that many workers."""
        relay_args = ["relay", str(relay_workers)] if relay_workers else []
        self.process = subprocess.Popen(
            [sys.executable, os.path.join(HERE, "zmq_floor.py"), *relay_args],
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, text=True,
        )
        line = self.process.stdout.readline()
        if not line.strip():
            self.process.kill()
            raise RuntimeError(f"floor server did not start (exit code {self.process.wait()})")
        line = line.strip()
        self.address = line if "://" in line else f"tcp://127.0.0.1:{int(line)}"
        self._local = threading.local()
        self._sockets: list = []
        self._lock = threading.Lock()

    def _socket(self):
        """This thread's pyzmq DEALER socket, or its ``Connection`` to a relay's unix socket."""
        sock = getattr(self._local, "socket", None)
        if sock is None:
            if self.address.startswith("link://"):
                unix = socket.socket(socket.AF_UNIX)
                unix.connect(self.address[len("link://"):])
                sock = Connection(unix.detach())
            else:
                sock = zmq.Context.instance().socket(zmq.DEALER)
                sock.setsockopt(zmq.LINGER, 0)
                sock.connect(self.address)
            self._local.socket = sock
            with self._lock:
                self._sockets.append(sock)
        return sock

    def _send(self, frames: list) -> None:
        sock = self._socket()
        if isinstance(sock, Connection):
            send_frames(sock, frames)
        else:
            sock.send_multipart(frames, copy=False)

    def _receive(self, timeout: float | None = None) -> list | None:
        sock = self._socket()
        if isinstance(sock, Connection):
            return receive_frames(sock) if sock.poll(timeout) else None
        if timeout is not None and not sock.poll(int(timeout * 1000)):
            return None
        return [frame.buffer for frame in sock.recv_multipart(copy=False)]

    def call(self, fn, *args):
        self._send(dumps((fn, args)))
        return loads(self._receive())

    def stop(self) -> None:
        try:
            if self.process.poll() is None:
                self._send([b"stop"])
                self._receive(timeout=5)
                self.process.wait(timeout=5)
        except Exception:
            pass
        finally:
            if self.process.poll() is None:
                self.process.kill()
                self.process.wait()
            with self._lock:
                for sock in self._sockets:
                    sock.close(linger=0) if isinstance(sock, zmq.Socket) else sock.close()
                self._sockets.clear()
            self._local = threading.local()
            if self.process.stdout is not None:
                self.process.stdout.close()


if __name__ == "__main__":
    import zmq_floor  # run serve() from the importable module, so pickles name zmq_floor, not __main__

    if sys.argv[1:2] == ["relay"]:
        zmq_floor.relay(int(sys.argv[2]))
    elif sys.argv[1:2] == ["worker"]:
        zmq_floor.worker(sys.argv[2])
    else:
        zmq_floor.serve()
