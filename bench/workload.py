"""The functions the benchmark sends. They live in an importable module (bench/ is put on sys.path)
so that rh_core ships them by reference and Ray / the pyzmq floor pickle them by name."""


def add(a, b):
    return a + b


def echo(x):
    return x


def record_enqueued(path, caller, seq):
    """Append ``caller seq start end`` to ``path``: which call ran when, to check enqueue's order."""
    import time

    start = time.monotonic()
    time.sleep(0.001)
    with open(path, "a") as f:
        f.write(f"{caller} {seq} {start} {time.monotonic()}\n")
    return seq


class Adder:
    """The remote class of bench/methods.py: a method call that reads and changes the instance's state."""

    def __init__(self):
        self.calls = 0

    def add(self, a, b):
        self.calls += 1
        return a + b


def add_and_print(a, b):
    """``add`` that prints one line per call, as a training step's log line would."""
    print("adding", a, b)
    return a + b


def sleep_for(seconds):
    import time

    time.sleep(seconds)
    return seconds
