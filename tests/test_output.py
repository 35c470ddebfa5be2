"""A function's stdout and stderr show in the caller's terminal by default, live and in order,
marked with the cluster and the run (issue 21); ``stream_logs=False`` keeps them on the cluster."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import textwrap
import threading
import time

import pytest

import rh_core as rh
from rh_core import config
from rh_core.testing import functions as fns


def captured_until(capfd, text: str, stream: str, within: float = 2.5) -> str:
    """What the test's ``stream`` ("out" or "err") received until ``text`` came, or ``within`` seconds passed."""
    seen = ""
    deadline = time.monotonic() + within
    while text not in seen and time.monotonic() < deadline:
        time.sleep(0.05)
        seen += getattr(capfd.readouterr(), stream)
    return seen


def test_a_line_shows_while_the_call_still_runs_and_the_rest_before_its_result(process_cluster, capfd):
    f = rh.function(fns.print_then_wait).to(process_cluster)
    done = threading.Event()
    results = []
    caller = threading.Thread(target=lambda: (results.append(f("first", 3, "second")), done.set()))
    caller.start()
    seen = captured_until(capfd, "first", "out")
    assert re.search(rf"^\({process_cluster.name} print_then_wait-[0-9a-f]{{16}}\) first$", seen, re.M), seen
    assert not done.is_set(), "the first line came only with the result, not while the call ran"
    caller.join(30)
    assert results == [["first", "second"]]
    seen += capfd.readouterr().out
    assert seen.index("first") < seen.index("second")  # and "second" came before the call returned


@pytest.mark.parametrize("pause", [0.0, 0.4])
def test_every_line_comes_once_in_order_whether_held_or_live(process_cluster, capfd, pause):
    """0.4 s: the first half goes live (held longer than a flush interval), the rest with the result."""
    f = rh.function(fns.print_numbers).to(process_cluster)
    assert f(3000, pause_at=1500, pause=pause, end="") == 3000
    out = capfd.readouterr().out
    numbers = [line.rpartition(") ")[2] for line in out.splitlines()]
    assert numbers == [str(i) for i in range(3000)]
    assert all(line.startswith(f"({process_cluster.name} print_numbers-") for line in out.splitlines())


def test_a_progress_bar_redrawing_its_line_shows_while_the_call_runs(process_cluster, capfd):
    bar = rh.function(fns.progress_bar).to(process_cluster)
    caller = threading.Thread(target=bar, args=(6, 0.5))
    caller.start()
    seen = captured_until(capfd, "step 2/6", "err")
    assert "step 2/6" in seen and caller.is_alive(), seen  # a redrawn line need not wait for a newline
    caller.join(30)
    seen += capfd.readouterr().err
    assert f"({process_cluster.name} progress_bar-" in seen and seen.endswith("step 6/6\n")
    assert seen.count("\r") >= 5  # each redraw kept its carriage return, so a terminal overwrites the line


def test_output_larger_than_a_call_may_hold_arrives_whole(process_cluster, capfd):
    f = rh.function(fns.print_numbers).to(process_cluster)
    f(60_000)  # ~350 KB: beyond the 64 KiB a call holds, so most of it goes live
    numbers = [line.rpartition(") ")[2] for line in capfd.readouterr().out.splitlines()]
    assert numbers == [str(i) for i in range(60_000)]


def test_map_lines_are_labelled_with_their_item(process_cluster, capfd):
    f = rh.function(fns.say_item).to(process_cluster)
    assert f.map(range(40)) == list(range(40))
    out, err = capfd.readouterr()
    for stream, word in ((out, "says"), (err, "warns")):
        found = re.findall(rf"^\({process_cluster.name} say_item-[0-9a-f]{{16}} item (\d+)\) item {word} (\d+)$",
                           stream, re.M)
        assert len(found) == 40, stream
        assert all(label == said for label, said in found)  # each line carries the item that wrote it


def test_stream_logs_false_keeps_output_on_the_cluster_where_logs_reads_it(process_cluster, capfd):
    f = rh.function(fns.add).to(process_cluster)
    assert f(2, 3, stream_logs=False) == 5
    assert "adding" not in capfd.readouterr().out
    ref = f.remote(4, 5)
    assert ref.result() == 9
    assert "adding" not in capfd.readouterr().out  # a .remote() call's output goes to its run log
    assert process_cluster.logs(ref.key) == "adding 4 5\n"
    assert ref.result(stream_logs=True) == 9  # shown when asked, as a plain call's is
    assert capfd.readouterr().out == f"({process_cluster.name} {ref.key}) adding 4 5\n"


def test_a_silenced_calls_output_is_found_by_its_run_among_those_that_logged(tmp_path, monkeypatch, capfd):
    monkeypatch.setenv("RH_HOME", str(tmp_path))
    cluster = rh.LocalCluster()  # $RH_HOME/local, where `rh logs here` looks
    try:
        f = rh.function(fns.add).to(cluster)
        assert f(20, 22, stream_logs=False) == 42
        assert "adding" not in capfd.readouterr().out
        logged = cluster.runs()["logged"]
        assert logged and logged[-1].startswith("add-")  # the newest last
        assert cluster.logs(logged[-1]) == "adding 20 22\n"
        # `rh` in a process of its own: the command sets up logging for its whole process.
        listed = subprocess.run(["rh", "logs", "here"], capture_output=True, text=True, timeout=60)
        assert f"{logged[-1]}  logged" in listed.stdout, listed.stdout + listed.stderr
    finally:
        cluster.stop_server()


def test_the_config_file_can_silence_output_or_drop_the_marks(process_cluster, capfd, tmp_path, monkeypatch):
    monkeypatch.setenv("RH_HOME", str(tmp_path))
    f = rh.function(fns.add).to(process_cluster)
    try:
        config.set_value("output_prefix", config.parse_value("output_prefix", "off"))
        assert f(1, 1) == 2
        assert capfd.readouterr().out == "adding 1 1\n"
        config.set_value("stream_logs", config.parse_value("stream_logs", "false"))
        assert f(1, 1) == 2
        assert "adding" not in capfd.readouterr().out
        assert f(1, 2, stream_logs=True) == 3  # the call's own option wins
        assert capfd.readouterr().out == "adding 1 2\n"
    finally:
        config.reload()
    with pytest.raises(rh.RhError, match="stream_logs must be true or false"):
        config.parse_value("stream_logs", "sometimes")


def test_a_script_shows_output_in_its_terminal_unasked(tmp_path):
    script = tmp_path / "job.py"
    script.write_text(textwrap.dedent("""
        import rh_core as rh

        def train(epochs):
            for epoch in range(epochs):
                print(f"epoch {epoch}")
            return "trained"

        if __name__ == "__main__":
            print(rh.function(train).to(rh.here)(3))
    """))
    home = tmp_path / "home"
    try:
        done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120,
                              cwd=tmp_path, env={**os.environ, "RH_HOME": str(home)})
        assert done.returncode == 0, done.stderr
        lines = done.stdout.splitlines()
        assert [re.sub(r"^\(here train-[0-9a-f]{16}\) ", "", line) for line in lines] == [
            "epoch 0", "epoch 1", "epoch 2", "trained"]
        assert all(line.startswith("(here train-") for line in lines[:3]), lines
    finally:
        rh.LocalCluster(state_dir=str(home / "local")).stop_server()


NOTEBOOK_CELLS = [
    "import rh_core as rh",
    "def shout(text):\n    print(text.upper())\n    return len(text)",
    "f = rh.function(shout).to(rh.here)\nf('hello from the cluster')",
]


def test_a_notebook_cell_shows_the_functions_output(tmp_path):
    import nbformat  # nbconvert and ipykernel come with it in the test extra

    notebook = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(cell) for cell in NOTEBOOK_CELLS])
    path = tmp_path / "shout.ipynb"
    path.write_text(nbformat.writes(notebook))
    home = tmp_path / "home"
    try:
        done = subprocess.run([sys.executable, "-m", "jupyter", "nbconvert", "--to", "notebook", "--execute",
                               "--ExecutePreprocessor.timeout=120", "--output", "ran.ipynb", str(path)],
                              capture_output=True, text=True, timeout=300, cwd=tmp_path,
                              env={**os.environ, "RH_HOME": str(home)})
        assert done.returncode == 0, done.stderr[-3000:]
        ran = json.loads((tmp_path / "ran.ipynb").read_text())
        outputs = ran["cells"][2]["outputs"]
        printed = "".join("".join(o["text"]) for o in outputs if o.get("output_type") == "stream")
        assert re.fullmatch(r"\(here shout-[0-9a-f]{16}\) HELLO FROM THE CLUSTER\n", printed), outputs
        results = ["".join(o["data"]["text/plain"]) for o in outputs if o.get("output_type") == "execute_result"]
        assert results == ["22"]
    finally:
        rh.LocalCluster(state_dir=str(home / "local")).stop_server()


def test_short_calls_output_goes_to_one_journal_which_logs_reads_after_a_restart(running_cluster):
    f = rh.function(fns.add).to(running_cluster)
    refs = [f.remote(i, i) for i in range(50)]
    assert rh.get(refs) == [2 * i for i in range(50)]
    runs = os.path.join(running_cluster.state_dir, "runs")
    assert os.listdir(runs) == ["journal.log"]  # fifty calls that printed: one file, not fifty
    assert running_cluster.logs(refs[7].key) == "adding 7 7\n"
    running_cluster.restart_server()
    assert running_cluster.logs(refs[7].key) == "adding 7 7\n"  # found by reading the journal through
    with pytest.raises(rh.RhError, match="no run"):
        running_cluster.logs("add-0000000000000000")


def test_a_full_journal_is_set_aside_and_its_runs_still_read(tmp_path, monkeypatch):
    from rh_core.server import run_logs

    monkeypatch.setattr(run_logs, "JOURNAL_MAX_BYTES", 100)
    journal = run_logs.RunJournal(str(tmp_path))
    for i in range(30):
        journal.keep(f"run-{i % 3}", b"line %d\n" % i)
    assert len(os.listdir(tmp_path)) > 2  # set aside more than once
    expected = b"".join(b"line %d\n" % i for i in range(30) if i % 3 == 1)
    assert journal.read("run-1") == expected
    with open(tmp_path / "journal.log", "ab") as f:
        f.write(b"run-1 999\npartial")  # a record torn by a crash mid-write
    assert run_logs.RunJournal(str(tmp_path)).read("run-1") == expected  # a new server finds them by reading through
    assert not run_logs.RunJournal(str(tmp_path)).has("run-9")
