"""The config file ($RH_HOME/config.yaml): defaults, read once, per-call overrides, bad files,
and `rh config get|set|unset` through the real entry point."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import time

import pytest

pytest.register_assert_rewrite("names_helpers")
from names_helpers import run_rh

from rh_core import config
from rh_core.config import ConfigError, ConfigValueError

pytest_plugins = ["names_helpers"]


def test_defaults_apply_without_a_file(home):
    settings = config.current()
    assert settings.path == str(home / "config.yaml") and not os.path.exists(settings.path)
    assert settings.default_autostop_mins == 30
    assert settings.log_level == "WARNING"
    assert settings.default_provider is None
    assert settings.store == {}


def test_the_file_is_read_once_until_reload(home):
    home.mkdir()
    (home / "config.yaml").write_text("default_provider: aws\ndefault_autostop_mins: 10\n")
    assert config.current().default_provider == "aws"
    (home / "config.yaml").write_text("default_provider: gcp\n")
    assert config.current().default_provider == "aws"  # cached for the process
    config.reload()
    assert config.current().default_provider == "gcp"
    assert config.current().default_autostop_mins == 30


def test_set_value_writes_an_owner_only_file_that_reads_back(home):
    config.set_value("store.backend", "s3")
    config.set_value("store.bucket", "team-bucket")
    config.set_value("default_autostop_mins", 60)
    path = home / "config.yaml"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(home.stat().st_mode) == 0o700
    assert "format: 1" in path.read_text()
    settings = config.current()
    assert settings.store == {"backend": "s3", "bucket": "team-bucket"}
    assert settings.default_autostop_mins == 60
    config.set_value("store.bucket", None)
    config.set_value("store.backend", None)
    assert config.current().store == {} and "store" not in path.read_text()


def test_per_call_overrides_replace_the_file_for_one_call(home):
    config.set_value("store.backend", "s3")
    config.set_value("store.bucket", "from-file")
    overridden = config.current().with_overrides(store={"backend": "dir", "path": "/shared"}, log_level="DEBUG")
    assert overridden.store == {"backend": "dir", "path": "/shared"} and overridden.log_level == "DEBUG"
    assert config.current().store["bucket"] == "from-file"
    with pytest.raises(ConfigValueError, match="a store needs at least a backend"):
        config.current().with_overrides(store={"path": "/shared"})
    with pytest.raises(ConfigValueError, match="default_autostop_mins must be a whole number"):
        config.current().with_overrides(default_autostop_mins="soon")


def test_a_store_plugin_may_take_options_of_its_own(home):
    config.set_value("store.backend", "gcs")
    config.set_value("store.container", "team")
    assert config.current().store == {"backend": "gcs", "container": "team"}


def test_unknown_keys_and_bad_values_are_refused_with_the_valid_ones(home):
    with pytest.raises(ConfigValueError, match="did you mean default_provider"):
        config.set_value("defualt_provider", "aws")
    with pytest.raises(ConfigValueError, match="log_level must be one of DEBUG, INFO"):
        config.set_value("log_level", "LOUD")
    assert config.parse_value("default_autostop_mins", "-1") == -1
    with pytest.raises(ConfigValueError, match="must be a whole number, not 'abc'"):
        config.parse_value("default_autostop_mins", "abc")


def test_an_unknown_key_in_the_file_is_warned_about(home):
    home.mkdir()
    (home / "config.yaml").write_text("default_autostop_min: 5\n")
    with pytest.warns(UserWarning, match="unknown setting 'default_autostop_min' is ignored .*did you mean default_autostop_mins"):
        config.current()


@pytest.mark.parametrize("text, message", [
    ("store: [unclosed\n", "is not valid YAML"),
    ("- just\n- a list\n", "should hold a mapping of settings, not a list"),
    ("default_autostop_mins: soon\n", "default_autostop_mins must be a whole number"),
])
def test_a_corrupt_file_is_reported_with_its_path_and_left_untouched(home, text, message):
    home.mkdir()
    path = home / "config.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=message) as caught:
        config.current()
    assert str(path) in str(caught.value) and "untouched" in str(caught.value)
    assert path.read_text() == text
    with pytest.raises(ConfigError):  # not silently replaced by a write either
        config.set_value("log_level", "INFO")
    assert path.read_text() == text


def alias_bomb(levels: int = 9) -> str:
    """A few hundred bytes of YAML that unfold into 10**9 mappings when anything walks them."""
    lines = ["a0: &a0 {x: 1}"]
    for level in range(1, levels + 1):
        lines.append(f"a{level}: &a{level} {{{', '.join(f'k{i}: *a{level - 1}' for i in range(10))}}}")
    return "\n".join(lines) + "\n"


def run_rh_briefly(*args: str) -> subprocess.CompletedProcess:
    """``rh ARGS``, failing the test if it is still busy after 30 s."""
    started = time.monotonic()
    try:
        done = run_rh(*args, timeout=30)
    except subprocess.TimeoutExpired:
        pytest.fail(f"`rh {' '.join(args)}` was still busy after 30 s")
    assert time.monotonic() - started < 10, f"`rh {' '.join(args)}` took {time.monotonic() - started:.0f} s"
    return done


@pytest.mark.parametrize("text, message", [
    (alias_bomb(), "uses YAML aliases"),
    ("log_level: INFO\n" + "# padding\n" * 200_000, "is 2000016 bytes, more than the 1048576"),
    ("x: " + "[" * 100 + "]" * 100 + "\n", "nests deeper than 64 levels"),
], ids=["alias-bomb", "oversized", "deep"])
def test_an_alias_bomb_or_oversized_file_is_refused_quickly(home, text, message):
    home.mkdir()
    (home / "config.yaml").write_text(text)
    done = run_rh_briefly("config", "set", "log_level", "INFO")
    assert done.returncode == 4 and message in done.stderr, done.stderr
    assert (home / "config.yaml").read_text() == text  # left untouched


def test_a_file_of_a_newer_format_is_refused_naming_the_version(home):
    home.mkdir()
    (home / "config.yaml").write_text("format: 7\nlog_level: INFO\n")
    with pytest.raises(ConfigError, match="written for config format 7, and this rh_core reads format 1"):
        config.current()


# -------------------------------------------------------------------------------------------------
# rh config, through the real entry point


def test_rh_config_set_get_unset(home):
    done = run_rh("config", "set", "default_autostop_mins", "45")
    assert done.returncode == 0 and "default_autostop_mins = 45" in done.stdout, done.stderr
    assert run_rh("config", "get", "default_autostop_mins").stdout.strip() == "45"
    assert json.loads(run_rh("config", "get", "default_autostop_mins", "--json").stdout) == {
        "key": "default_autostop_mins", "value": 45}
    done = run_rh("config", "set", "store.endpoint_url", "http://127.0.0.1:9000", "--json")
    assert json.loads(done.stdout)["path"] == str(home / "config.yaml")
    listing = run_rh("config", "get")
    assert listing.returncode == 0
    assert "default_autostop_mins    45" in listing.stdout and "idle minutes before" in listing.stdout
    everything = json.loads(run_rh("config", "get", "--json").stdout)
    assert everything["settings"]["store.endpoint_url"] == "http://127.0.0.1:9000"
    assert everything["settings"]["log_level"] == "WARNING"  # a default, shown
    assert run_rh("config", "unset", "default_autostop_mins").returncode == 0
    assert run_rh("config", "get", "default_autostop_mins").stdout.strip() == "30"


def test_rh_config_exit_codes(home):
    unknown = run_rh("config", "set", "default_provder", "aws")
    assert unknown.returncode == 2 and "did you mean default_provider" in unknown.stderr
    bad = run_rh("config", "set", "default_autostop_mins", "soon", "--json")
    assert bad.returncode == 2 and json.loads(bad.stdout)["type"] == "ConfigValueError"
    home.mkdir(exist_ok=True)
    (home / "config.yaml").write_text("format: 9\n")
    newer = run_rh("config", "get")
    assert newer.returncode == 4 and "config format 9" in newer.stderr
    assert (home / "config.yaml").read_text() == "format: 9\n"


def test_an_envs_reqs_are_the_list_the_user_passed():
    import rh_core as rh

    env = rh.env("train", reqs=["numpy>=2", "pip:rich"])
    assert env.reqs == ["numpy>=2", "pip:rich"] and isinstance(env.reqs, list)
    assert hash(env) == hash(rh.env("train", reqs=["other"]))  # still usable as a key, by its name


@pytest.mark.parametrize("level, core_shows", [("INFO", True), ("WARNING", False), (None, False)])
def test_log_level_in_the_file_sets_the_cores_level_in_a_script_and_never_paramikos(tmp_path, level, core_shows):
    import subprocess
    import sys

    if level is not None:
        (tmp_path / "config.yaml").write_text(f"log_level: {level}\n")
    script = (
        "import logging, rh_core\n"
        "from rh_core import config\n"
        "import rh_byo_ssh.transport\n"
        "config.current()\n"
        "logging.getLogger('rh_core.clusters.remote').info('core step line')\n"
        "logging.getLogger('rh_byo_ssh.transport').info('plugin step line')\n"
        "logging.getLogger('paramiko.transport').info('paramiko connection line')\n"
        "logging.getLogger('rh_core.clusters.remote').warning('core warning line')\n"
    )
    done = subprocess.run([sys.executable, "-c", script], env={**os.environ, "RH_HOME": str(tmp_path)},
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert ("core step line" in done.stderr) is core_shows, done.stderr
    assert ("plugin step line" in done.stderr) is core_shows, done.stderr
    assert "paramiko connection line" not in done.stderr
    assert "core warning line" in done.stderr  # warnings show at every level, as Python's own default does
