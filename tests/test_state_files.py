"""A server's state files (its directory, ``secret``, ``server.json``, ``start.lock``, sockets) are
trusted only when they are the user's own and nobody else may write them: a second local user who
plants them, or owns the folder they are in, gets nothing run and learns nothing."""

from __future__ import annotations

import json
import os
import pickle  # noqa: F401  imported before the fork (see below)
import stat
import subprocess
import sys
import time

import cloudpickle  # noqa: F401  imported before the fork: the other user cannot read this interpreter's packages
import orjson  # noqa: F401
import pytest
import zmq  # noqa: F401

import rh_core as rh
from rh_core.client.connection import read_secret
from rh_core.errors import UntrustedPathError
from rh_core.testing import functions as fns

ATTACKER_SECRET = "the-attacker-knows-this-secret"


def start_server(state_dir: str) -> subprocess.Popen:
    """The server as remote bootstrap starts it: ``python -m rh_core.server --state-dir DIR``."""
    return subprocess.Popen([sys.executable, "-m", "rh_core.server", "--state-dir", state_dir, "-o", "num_workers=1"],
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def wait_for_state(process: subprocess.Popen, state_dir: str) -> dict | None:
    """The server's ``server.json`` once written, or None when the server exited first."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            with open(os.path.join(state_dir, "server.json")) as f:
                return json.load(f)
        except (OSError, ValueError):
            pass
        if process.poll() is not None:
            return None
        time.sleep(0.05)
    raise AssertionError("the server neither started nor exited within 60 s")


def run_code_with(port: int, secret: str, marker: str) -> dict:
    """As the attacker: call the server on its loopback port with ``secret``, running code that
    writes ``marker`` (proof that it ran, and as whom)."""
    from rh_core.wire import serialize
    from rh_core.client.connection import Connection

    connection = Connection(f"tcp://127.0.0.1:{port}", lambda: None, secret=secret)
    code = f"import os; open({marker!r}, 'w').write(str(os.getuid()))"
    frames = [serialize.dumps_function(lambda: exec(code)), *serialize.dumps_arguments((), {}, [])]
    header = {"key": "planted-1", "mode": "call", "fn_id": "planted", "function_ref": None, "n_fn": 1,
              "refs": [], "options": {}}
    try:
        connection.request("call", header, frames, timeout=20)
        return {"called": True}
    except Exception as exc:
        return {"called": False, "error": f"{type(exc).__name__}: {exc}"}
    finally:
        connection.close()


def stopped_with_error(server: subprocess.Popen, state_dir, other_user) -> str:
    """The stderr of a server that must have refused to start; if it started instead, the other
    user tries the secret they planted, and the test fails saying what they achieved."""
    try:
        state = wait_for_state(server, str(state_dir))
        if state is not None:
            marker = str(other_user.home / "ran")
            result = other_user.fork(lambda: run_code_with(state["port"], ATTACKER_SECRET, marker))
            ran_as = open(marker).read() if os.path.exists(marker) else "-"
            pytest.fail(f"the server started; with the secret they planted the other user called it ({result}); "
                        f"their code ran as uid {ran_as}")
        assert server.returncode != 0
        return server.stderr.read()
    finally:
        if server.poll() is None:
            server.kill()
        server.wait()


def test_a_state_folder_another_user_owns_is_refused(other_user):
    # The attacker prepares the state folder the victim will use (a predictable path, or one that a
    # shared record names) and plants a secret they know in it.
    planted = other_user.home / "rh-state"
    other_user.python(f"import os; os.mkdir({str(planted)!r}); os.chmod({str(planted)!r}, 0o777); "
                      f"open({str(planted / 'secret')!r}, 'w').write({ATTACKER_SECRET!r})")
    error = stopped_with_error(start_server(str(planted)), planted, other_user)
    assert f"lies in {other_user.home}, which belongs to user {other_user.name}" in error and "RH_HOME" in error, error
    with pytest.raises(UntrustedPathError, match=f"belongs to user {other_user.name}"):
        rh.LocalCluster(state_dir=str(planted)).connection()
    assert sorted(os.listdir(planted)) == ["secret"]  # nothing of the victim's went in


def test_a_state_folder_not_made_yet_is_made_ours_unless_it_would_lie_in_another_users(other_user, tmp_path):
    from rh_core.support.files import private_directory

    fresh = tmp_path / "not" / "yet" / "made"  # RH_HOME on first use, say
    assert private_directory(str(fresh)) == str(fresh)
    assert stat.S_IMODE(os.stat(fresh).st_mode) == 0o700 and os.stat(fresh.parent).st_uid == os.geteuid()
    theirs = other_user.home / "not-yet" / "state"
    with pytest.raises(UntrustedPathError, match=f"lies in {other_user.home}, which belongs to user {other_user.name}"):
        private_directory(str(theirs))
    assert not theirs.parent.exists()  # nothing was made in a folder of theirs


def test_a_state_folder_others_may_write_is_refused(other_user, reachable_tmp):
    # The victim's own state folder, left open to everyone (0777): the attacker plants a secret.
    state_dir = reachable_tmp / "state"
    state_dir.mkdir()
    os.chmod(state_dir, 0o777)
    other_user.python(f"open({str(state_dir / 'secret')!r}, 'w').write({ATTACKER_SECRET!r})")
    error = stopped_with_error(start_server(str(state_dir)), state_dir, other_user)
    assert f"{state_dir} may be written by others" in error and "chmod 700" in error, error
    with pytest.raises(UntrustedPathError, match="may be written by others"):
        rh.LocalCluster(state_dir=str(state_dir)).connection()
    assert sorted(os.listdir(state_dir)) == ["secret"]


def close_after_planting(other_user, state_dir, plant: str) -> None:
    """The victim's state folder was open while the attacker ran ``plant``; then the victim closed it."""
    state_dir.mkdir()
    os.chmod(state_dir, 0o777)
    other_user.python(plant)
    os.chmod(state_dir, 0o700)


def test_a_secret_planted_before_the_folder_was_closed_is_refused(other_user, reachable_tmp):
    state_dir = reachable_tmp / "state"
    close_after_planting(other_user, state_dir, f"open({str(state_dir / 'secret')!r}, 'w').write({ATTACKER_SECRET!r})")
    error = stopped_with_error(start_server(str(state_dir)), state_dir, other_user)
    assert f"{state_dir / 'secret'} belongs to user {other_user.name}" in error and "Delete it" in error, error
    with pytest.raises(UntrustedPathError, match=f"secret belongs to user {other_user.name}"):
        read_secret(str(state_dir))


def test_a_start_lock_planted_as_a_link_truncates_nothing(other_user, reachable_tmp):
    precious = reachable_tmp / "precious.txt"
    precious.write_text("the victim's data\n")
    state_dir = reachable_tmp / "state"
    close_after_planting(other_user, state_dir,
                         f"import os; os.symlink({str(precious)!r}, {str(state_dir / 'start.lock')!r})")
    cluster = rh.LocalCluster(state_dir=str(state_dir), executor_options={"num_workers": 1})
    try:
        with pytest.raises(UntrustedPathError, match="start.lock is a symbolic link"):
            cluster.connection()
    finally:
        assert precious.read_text() == "the victim's data\n"
        cluster.stop_server()


def test_a_fake_server_planted_by_another_user_gets_nothing(other_user, reachable_tmp):
    # The attacker's fake server: its record, a secret and its link socket in the victim's state folder.
    state_dir = reachable_tmp / "state"
    state_dir.mkdir()
    os.chmod(state_dir, 0o777)
    fake = other_user.start_python(FAKE_SERVER, str(state_dir), rh.__version__)
    assert fake.stdout.readline().strip() == "listening", fake.stderr.read()
    os.chmod(state_dir, 0o700)
    cluster = rh.LocalCluster(state_dir=str(state_dir), executor_options={"num_workers": 1})
    try:
        with pytest.raises(UntrustedPathError, match=f"server.json belongs to user {other_user.name}"):
            rh.function(fns.add).to(cluster)(40, 2)
    finally:
        other_user.kill(fake)
    assert fake.stdout.read() == "", "the fake server was sent something"


def test_a_state_folder_others_can_read_is_made_owner_only_before_use(tmp_path):
    state_dir = tmp_path / "state"
    state_dir.mkdir()
    os.chmod(state_dir, 0o755)
    cluster = rh.LocalCluster(state_dir=str(state_dir), executor_options={"num_workers": 1})
    try:
        assert rh.function(fns.add).to(cluster)(1, 2) == 3
        assert stat.S_IMODE(os.stat(state_dir).st_mode) == 0o700
        for name in ("secret", "server.json", "server.log", "start.lock"):
            assert stat.S_IMODE(os.stat(state_dir / name).st_mode) & 0o077 == 0, name
    finally:
        cluster.stop_server()


#: A fake server run by the other user: it writes a server record and a secret it knows, listens on
#: the link socket, answers pings as a real server would, and prints every request it receives.
FAKE_SERVER = r"""
import json, os, pickle, socket, struct, sys
state_dir, version = sys.argv[1], sys.argv[2]
path = os.path.join(state_dir, "link.sock")
door = socket.socket(socket.AF_UNIX)
door.bind(path)
os.chmod(path, 0o777)
door.listen(8)
with open(os.path.join(state_dir, "secret"), "w") as f:
    f.write("attacker\n")
os.chmod(os.path.join(state_dir, "secret"), 0o644)
record = {"pid": os.getpid(), "port": 1, "local_endpoint": "ipc://" + state_dir + "/server.sock", "link": path,
          "version": version, "python": "%d.%d" % sys.version_info[:2], "executor": "process", "parallelism": 1,
          "shm": False, "python_executable": "/bin/false", "state_dir": state_dir}
with open(os.path.join(state_dir, "server.json"), "w") as f:
    json.dump(record, f)
os.chmod(os.path.join(state_dir, "server.json"), 0o644)
print("listening", flush=True)

def read(conn, n):
    data = b""
    while len(data) < n:
        chunk = conn.recv(n - len(data))
        if not chunk:
            raise EOFError
        data += chunk
    return data

while True:
    conn, _ = door.accept()
    try:
        while True:
            size, = struct.unpack("!i", read(conn, 4))
            envelope, frames = pickle.loads(read(conn, size))
            request = json.loads(envelope)
            print("received", request.get("op"), len(frames), flush=True)
            reply = {"id": request["id"], "kind": "info", **record}
            body = pickle.dumps((json.dumps(reply).encode(), []), protocol=5)
            conn.sendall(struct.pack("!i", len(body)) + body)
    except (EOFError, OSError):
        conn.close()
"""
