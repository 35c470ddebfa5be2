"""Functions the contract tests send to clusters; importable, so they travel by reference."""

from __future__ import annotations

import logging
import os
import socket
import time


def add(a, b):
    print("adding", a, b)
    return a + b


def quiet_add(a, b):
    return a + b


def double(x):
    return x * 2


def whoami():
    return {"pid": os.getpid(), "host": socket.gethostname()}


def shout(text):
    print(f"out: {text}", flush=True)
    logging.getLogger("rh-test").warning("log: %s", text)
    return text.upper()


def fail(message):
    raise ValueError(message)


class CustomError(Exception):
    """An exception type of the user's own."""


def fail_custom(code):
    raise CustomError(f"custom failure {code}")


def fail_on(x, bad):
    if x == bad:
        raise KeyError(f"item {x} is bad")
    return x


def sleep_then(seconds, value=None):
    time.sleep(seconds)
    return value


def record_interval(seconds, tag):
    start = time.time()
    time.sleep(seconds)
    return (tag, start, time.time())


def exit_hard(code):
    os._exit(code)


def segfault():
    import ctypes

    ctypes.string_at(0)


def takes_timeout(x, timeout=None, stream_logs=None):
    return (x, timeout, stream_logs)


def generate(prompt, num_images=1, steps=10):
    return (prompt, num_images, steps)


def echo(data):
    return data


def length(data):
    return len(data)


def filled(size, byte=0):
    return bytes([byte]) * size


def unpicklable_result():
    import threading

    return threading.Lock()


def module_version(module_name):
    """``(module.VERSION, sys.executable)`` of an installed module, as the calling worker sees it."""
    import importlib
    import sys

    module = importlib.import_module(module_name)
    return module.VERSION, sys.executable


def chatty(lines, delay):
    """Print ``line 0`` ... one line every ``delay`` seconds; returns how many it printed."""
    import time

    for i in range(lines):
        print("line", i, flush=True)
        time.sleep(delay)
    return lines


def write_to_link(raw: bytes) -> None:
    """Write ``raw`` to the worker's own link to its server, then wait to be stopped."""
    import os
    import sys
    import time

    os.write(int(sys.argv[1]), raw)
    time.sleep(30)


def fork_and_come_back(how):
    """Fork; the child comes back into the worker (returns, calls ``sys.exit(0)`` or raises,
    by ``how``); the parent waits for it and returns the child's exit code."""
    import sys

    pid = os.fork()
    if pid == 0:
        if how == "exit":
            sys.exit(0)
        if how == "raise":
            raise ValueError("raised in the child")
        return "the child's result"
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status)


def exit_with(code):
    import sys

    sys.exit(code)


def start_child_then_sleep(pid_file, seconds):
    """Start a child process that sleeps ``seconds``, write its pid to ``pid_file``, then sleep too."""
    import subprocess

    child = subprocess.Popen(["sleep", str(seconds)])
    with open(pid_file, "w") as f:
        f.write(str(child.pid))
    time.sleep(seconds)


def environment_variable(name):
    """The value of an environment variable in the worker, or None."""
    return os.environ.get(name)


def environment_variables(*names):
    return {name: os.environ.get(name) for name in names}


class TeapotError(Exception):
    """An exception that names its HTTP status, as FastAPI's HTTPException does."""

    def __init__(self, status_code, detail):
        super().__init__(detail)
        self.status_code, self.detail = status_code, detail


def fail_with_status(status_code, detail):
    raise TeapotError(status_code, detail)
