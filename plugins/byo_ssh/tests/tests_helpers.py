"""Functions defined in the working tree (not installed), so they travel with the synced working dir."""


def local_double(x):
    return x * 2
