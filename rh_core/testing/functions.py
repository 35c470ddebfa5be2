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


def how_started():
    """What a worker process's start made of it: what a worker forked from the server must match."""
    import sys

    return {"pid": os.getpid(), "argv": sys.argv[1:], "main": sys.modules["__main__"].__spec__.name,
            "cwd": os.getcwd(), "path0": sys.path[0], "PATH": os.environ["PATH"].split(os.pathsep)[0],
            "session_leader": os.getsid(0) == os.getpid(), "stdin": os.path.realpath("/proc/self/fd/0")}


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


async def async_add(a, b):
    import asyncio

    await asyncio.sleep(0.01)
    return a + b


async def async_exit(code):
    import sys

    sys.exit(code)


def count_up(n, delay=0.0):
    """Yield 0 .. n-1, printing ``making i`` before each, ``delay`` seconds apart; returns ``"counted n"``."""
    for i in range(n):
        print(f"making {i}", flush=True)
        time.sleep(delay)
        yield i
    return f"counted {n}"


async def async_count_up(n, delay=0.0):
    import asyncio

    for i in range(n):
        await asyncio.sleep(delay)
        yield i


def count_then_fail(n):
    yield from range(n)
    raise ValueError(f"failed after {n} items")


class Counter:
    """A remote class for the contract tests: state that lives between calls."""

    def __init__(self, start=0):
        self.count = start
        self.config = {"start": start}
        print(f"counter starts at {start}", flush=True)

    def incr(self, by=1):
        print(f"adding {by}", flush=True)
        self.count += by
        return self.count

    @property
    def doubled(self):
        return self.count * 2

    def pid(self):
        return os.getpid()

    def record(self, seconds, tag):
        start = time.time()
        time.sleep(seconds)
        return (tag, start, time.time())

    async def incr_later(self, seconds, by=1):
        import asyncio

        await asyncio.sleep(seconds)
        self.count += by
        return self.count

    async def loop_id(self):
        import asyncio

        return id(asyncio.get_running_loop())

    def count_up(self, n, delay=0.0):
        for i in range(n):
            time.sleep(delay)
            yield self.count + i

    def fail(self, message):
        raise CustomError(message)

    def die(self):
        os._exit(3)


def call_it(fn, *args, **kwargs):
    """Calls what it was handed: a function (or a remote instance's method) sent to a cluster."""
    return fn(*args, **kwargs)


def call_method(instance, method, *args):
    """Calls a method of a remote instance it was handed."""
    return getattr(instance, method)(*args)
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


def print_then_wait(first, seconds, then):
    """Print ``first``, wait ``seconds``, print ``then``; returns both."""
    import time

    print(first, flush=True)
    time.sleep(seconds)
    print(then)
    return [first, then]


def print_numbers(count, pause_at=None, pause=0.0, end="\n"):
    """Print 0 .. count-1, one per line (pausing ``pause`` seconds before ``pause_at``); the last
    one ends with ``end``."""
    import sys
    import time

    for i in range(count):
        if i == pause_at:
            time.sleep(pause)
        sys.stdout.write(f"{i}{end if i == count - 1 else chr(10)}")
    return count


def say_item(x):
    """Print which item this is, on stdout and stderr; returns it."""
    import sys

    print("item says", x)
    print("item warns", x, file=sys.stderr)
    return x


def sleep_then_touch(seconds, path):
    """Sleep, then create ``path``: a cancelled run never gets that far."""
    time.sleep(seconds)
    with open(path, "w") as f:
        f.write("ran to the end")
    return path


def progress_bar(steps, pause):
    """Redraw one line ``steps`` times, as a progress bar does (carriage returns, no newline)."""
    import sys

    for step in range(steps):
        sys.stderr.write(f"\rstep {step + 1}/{steps}")
        sys.stderr.flush()
        time.sleep(pause)
    sys.stderr.write("\n")
    return steps
