"""Run on a cluster machine by the bootstrap, before rh_core is there: its source (after
``platform.py``'s) goes with ``python -c`` to the venv's python when there is one, else to the
host's python3. It prints, in one round trip, what the bootstrap needs to know: the machine's
platform, the Pythons on its PATH, the venv, the uv executables kept there and the server.

argv: ROOT [BUILD PREFER]: when the venv does not hold BUILD, it also finds the interpreter for a
new venv (Python PREFER when the machine has it). Standard library only, and no syntax newer than
Python 3.6: which Python the machine has is what it finds out.
"""

import json
import os
import shutil
import subprocess
import sys

try:
    rh_platform  # noqa: B018  (defined by platform.py, whose source is sent ahead of this one's)
except NameError:
    from rh_core.bootstrap.scripts.platform import rh_platform


def read(path):
    try:
        with open(path) as f:
            return f.read().strip()
    except OSError:
        return None


def running_server(root):
    """The server's state file when the pid it names runs, and is that server's, not a later process's."""
    try:
        state = json.loads(read(root + "/server/server.json"))
        os.kill(state["pid"], 0)
        if state.get("process_start"):
            with open("/proc/%d/stat" % state["pid"]) as f:
                if f.read().rpartition(")")[2].split()[19] != state["process_start"]:
                    return None
        return state
    except Exception:
        return None


def uv_executables(root):
    """The uv executables the bootstrap kept in ROOT/bin, one per uv version (``uv-0.13.10``)."""
    try:
        return sorted(name for name in os.listdir(root + "/bin") if name.startswith("uv-"))
    except OSError:
        return []


def choose_python(prefer):
    """The venv's interpreter: Python ``prefer`` when the machine has it (functions sent by value
    need the client's minor version), else python3 when new enough, else the newest 3.10+. Each is
    run once: a name on the PATH may be a shim that does not work (pyenv's, for inactive versions)."""
    names = ["python" + prefer, "python3"] + ["python3.%d" % m for m in range(20, 9, -1)]
    found, seen = [], set()
    for name in names:
        path = shutil.which(name)
        if not path or path in seen:
            continue
        seen.add(path)
        try:
            said = subprocess.run([path, "-c", "import sys, venv; print('%d.%d' % sys.version_info[:2])"],
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, universal_newlines=True,
                                  timeout=30).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            continue
        if not said:
            continue
        found.append({"name": name, "path": path, "version": said})
        if tuple(map(int, said.split("."))) >= (3, 10) and (name != "python" + prefer or said == prefer):
            return found[-1], found
    return None, found


def main(argv):
    root = os.path.expanduser(argv[0])
    venv_build = read(root + "/venv/rh-build-id")
    wanted = len(argv) > 1 and argv[1] != venv_build
    chosen, pythons = choose_python(argv[2]) if wanted else (None, [])
    return dict(rh_platform(), executable=sys.executable, chosen=chosen, pythons=pythons, root=root,
                server=running_server(root), secret=read(root + "/server/secret"), venv_build=venv_build,
                rsync=bool(shutil.which("rsync")), uv=uv_executables(root))


if __name__ == "__main__":
    print(json.dumps(main(sys.argv[1:])))
