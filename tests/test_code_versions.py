"""What runs is what you wrote: code edited between runs, functions from __main__ importing the
user's modules, and copies that are not the caller's code refused rather than run."""

import subprocess
import sys
import textwrap

import pytest

import rh_core as rh


@pytest.fixture
def project(tmp_path):
    """A user's project folder (not a git repository) holding the module ``edited``."""
    folder = tmp_path / "project"
    folder.mkdir()
    return folder


@pytest.fixture
def two_workers(tmp_path):
    cluster = rh.LocalCluster(state_dir=str(tmp_path / "state"), executor_options={"num_workers": 2})
    yield cluster
    cluster.stop_server()


def run_script(project, cluster, body):
    """Run ``body`` as a user's script in ``project``, with ``cluster`` (a LocalCluster) as ``cluster``."""
    script = "import rh_core as rh\n" + textwrap.dedent(f"""
        cluster = rh.LocalCluster(state_dir={cluster.state_dir!r}, executor_options={{"num_workers": 2}})
    """) + textwrap.dedent(body)
    done = subprocess.run([sys.executable, "-c", script], cwd=project, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout.split()


def test_each_rerun_after_an_edit_runs_the_edited_module_on_every_worker(project, two_workers):
    module = project / "edited.py"
    for letter in "RSTU":  # the same size each time, all within a second or two
        module.write_text(f"def value():\n    return {letter!r}\n")
        results = run_script(project, two_workers, """
            import edited
            f = rh.function(edited.value).to(cluster)
            print(*[f() for _ in range(4)], *f.starmap([()] * 8))
        """)
        assert results == [letter] * 12, (letter, results)
    # Both workers imported it along the way.
    assert len(two_workers.status()["executor_workers"]) == 2


def test_a_function_added_to_an_edited_module_is_found(project, two_workers):
    module = project / "edited.py"
    module.write_text("def value():\n    return 1\n")
    assert run_script(project, two_workers, """
        import edited
        print(rh.function(edited.value).to(cluster).starmap([()] * 4))
    """) == ["[1,", "1,", "1,", "1]"]
    module.write_text("def value():\n    return 2\n\ndef added():\n    return value() * 21\n")
    assert run_script(project, two_workers, """
        import edited
        print(rh.function(edited.added).to(cluster).starmap([()] * 4))
    """) == ["[42,", "42,", "42,", "42]"]


def test_a_helper_module_edited_between_runs_is_read_again(project, two_workers):
    (project / "helper.py").write_text("NUMBER = 1\n")
    (project / "entry.py").write_text("def number():\n    import helper\n    return helper.NUMBER\n")
    for number in (1, 2, 3):
        (project / "helper.py").write_text(f"NUMBER = {number}\n")
        assert run_script(project, two_workers, """
            import entry
            print(*rh.function(entry.number).to(cluster).starmap([()] * 6))
        """) == [str(number)] * 6


def test_a_function_from_main_imports_the_users_modules_and_their_edits(project, two_workers):
    for value in ("first", "second"):
        (project / "gen.py").write_text(f"VALUE = {value!r}\n")
        assert run_script(project, two_workers, """
            def main_fn():
                import gen
                return gen.VALUE
            print(*rh.function(main_fn).to(cluster).starmap([()] * 4))
        """) == [value] * 4


def test_the_function_runs_in_the_callers_directory(project, two_workers):
    (project / "sub").mkdir()
    (project / "sub" / "data.txt").write_text("relative paths work")
    assert run_script(project / "sub", two_workers, """
        def read():
            with open("data.txt") as f:
                return f.read()
        print(rh.function(read).to(cluster)())
    """) == ["relative", "paths", "work"]


def test_a_module_changed_after_to_is_refused_not_run_until_sent_again(project, two_workers, monkeypatch):
    module = project / "edited.py"
    module.write_text("def value():\n    return 'sent'\n")
    monkeypatch.chdir(project)
    monkeypatch.syspath_prepend(str(project))
    import importlib

    import edited

    edited = importlib.reload(edited)
    f = rh.function(edited.value).to(two_workers)
    module.write_text("def value():\n    return 'newer'\n")  # edited after .to(), not sent again
    with pytest.raises(rh.StaleCodeError, match="not the source value was sent with"):
        f.starmap([()] * 4)
    assert rh.function(edited.value).to(two_workers).starmap([()] * 4) == ["newer"] * 4
    sys.modules.pop("edited", None)
