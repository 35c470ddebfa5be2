"""The functions the benchmark sends. They live in an importable module (bench/ is put on sys.path)
so that rh_core ships them by reference and Ray / the pyzmq floor pickle them by name."""


def add(a, b):
    return a + b


def echo(x):
    return x
