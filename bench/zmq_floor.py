"""The floor of the RPC stack rh_core uses: a bare pyzmq DEALER -> ROUTER round trip.

A separate server process receives a pickled ``(function, args)`` (pickle protocol 5, large
``bytes`` out of band as their own frames, ``copy=False``), calls the function in-process and
returns the pickled result the same way. No worker hop, no envelope, no liveness checks: whatever
rh_core costs above this is its own overhead. ``python bench/zmq_floor.py`` runs the server and
prints its port on stdout; a message ``[b"stop"]`` ends it.
"""

from __future__ import annotations

import os
import pickle
import subprocess
import sys
import threading

import zmq

OUT_OF_BAND_MIN = 64 * 1024  # the same threshold rh_core.serialize uses
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


# --- client ---------------------------------------------------------------------------------------


class FloorServer:
    """Starts the server process; ``call`` is thread-safe (one DEALER socket per thread)."""

    def __init__(self):
        self.process = subprocess.Popen(
            [sys.executable, os.path.join(HERE, "zmq_floor.py")],
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, text=True,
        )
        line = self.process.stdout.readline()
        if not line.strip():
            self.process.kill()
            raise RuntimeError(f"pyzmq floor server did not start (exit code {self.process.wait()})")
        self.address = f"tcp://127.0.0.1:{int(line)}"
        self._local = threading.local()
        self._sockets: list[zmq.Socket] = []
        self._lock = threading.Lock()

    def _socket(self) -> zmq.Socket:
        socket = getattr(self._local, "socket", None)
        if socket is None:
            socket = zmq.Context.instance().socket(zmq.DEALER)
            socket.setsockopt(zmq.LINGER, 0)
            socket.connect(self.address)
            self._local.socket = socket
            with self._lock:
                self._sockets.append(socket)
        return socket

    def call(self, fn, *args):
        socket = self._socket()
        socket.send_multipart(dumps((fn, args)), copy=False)
        reply = socket.recv_multipart(copy=False)
        return loads([frame.buffer for frame in reply])

    def stop(self) -> None:
        try:
            if self.process.poll() is None:
                socket = self._socket()
                socket.send_multipart([b"stop"])
                if socket.poll(5000):
                    socket.recv_multipart()
                self.process.wait(timeout=5)
        except Exception:
            pass
        finally:
            if self.process.poll() is None:
                self.process.kill()
                self.process.wait()
            with self._lock:
                for socket in self._sockets:
                    socket.close(linger=0)
                self._sockets.clear()
            self._local = threading.local()
            if self.process.stdout is not None:
                self.process.stdout.close()


if __name__ == "__main__":
    import zmq_floor  # run serve() from the importable module, so pickles name zmq_floor, not __main__

    zmq_floor.serve()
