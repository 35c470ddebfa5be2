"""Run with the server's python on a cluster machine (its source sent with ``python -c``): exits 0
and prints "reachable" when the package index its pip uses answers, else prints the index and
what went wrong and exits 1."""

import os
import subprocess
import sys
import urllib.request


def configured_index():
    index = os.environ.get("PIP_INDEX_URL") or "https://pypi.org/simple/"
    said = subprocess.run([sys.executable, "-m", "pip", "config", "list"], capture_output=True, text=True).stdout
    for line in said.splitlines():
        key, _, value = line.partition("=")
        if key.endswith(".index-url"):
            index = value.strip().strip("'\"")
    return index


if __name__ == "__main__":
    index = configured_index()
    try:
        urllib.request.urlopen(index.rstrip("/") + "/pip/", timeout=5).close()
    except Exception as exc:
        print("%s: %s" % (index, exc))  # on stdout: the client logs it as the reason
        sys.exit(1)
    print("reachable")
