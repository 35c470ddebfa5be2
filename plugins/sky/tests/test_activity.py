"""The activity watcher's action (the watcher itself is rh_core.clusters.idle's, tested in rh_core's
tests/test_idle.py), and the SkyPilot internals it relies on, checked against the
installed SkyPilot so an upgrade that moves them fails here."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys

from rh_sky import activity_bridge
from rh_sky.provisioner import SKYLET_CONFIG_DB
from rh_sky.spec import CLOUDS


def test_the_timer_is_only_written_where_skypilots_skylet_created_it(tmp_path):
    db = tmp_path / "skylet_config.db"
    assert not activity_bridge.reset_idle_timer(str(db), 1.0)  # no skylet yet: nothing created
    assert not db.exists()
    with sqlite3.connect(db) as connection:
        connection.execute("CREATE TABLE config (key TEXT PRIMARY KEY, value TEXT)")
    assert not activity_bridge.reset_idle_timer(str(db), 1.0)  # a table without SkyPilot's timer
    with sqlite3.connect(db) as connection:
        connection.execute("INSERT INTO config VALUES ('autostop_last_active_time', '0')")
    assert activity_bridge.reset_idle_timer(str(db), 12345.5)
    with sqlite3.connect(db) as connection:
        assert connection.execute("SELECT value FROM config").fetchone() == ("12345.5",)


def test_skypilot_internals_we_rely_on_are_where_we_expect(tmp_path):
    # In a subprocess: SkyPilot's skylet remembers the first db path it opened.
    code = f"""
import json, os
os.environ["SKY_RUNTIME_DIR"] = {str(tmp_path)!r}
from sky.skylet import autostop_lib, configs, constants
from sky.utils import registry
assert autostop_lib._AUTOSTOP_LAST_ACTIVE_TIME == {activity_bridge.TIMER_KEY!r}
assert constants.SKY_RUNTIME_DIR == "${{SKY_RUNTIME_DIR:-$HOME}}", constants.SKY_RUNTIME_DIR
autostop_lib.set_last_active_time_to_now()
assert configs._DB_PATH == os.path.join({str(tmp_path)!r}, {SKYLET_CONFIG_DB!r}), configs._DB_PATH
clouds = set(registry.CLOUD_REGISTRY.keys()) | set(registry.CLOUD_REGISTRY._aliases)
print(json.dumps(sorted(clouds - {{"ssh"}})))
"""
    out = subprocess.run([sys.executable, "-c", code], check=False, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert sorted(CLOUDS) == json.loads(out.stdout.strip().splitlines()[-1])
