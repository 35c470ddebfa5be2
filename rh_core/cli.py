"""The ``rh`` command line. Plugins add commands through the ``rh_register_commands`` hook.

Only click is imported at start-up: each command imports what it needs, so ``rh --help`` stays fast.
"""

from __future__ import annotations

import contextlib
import json
import sys
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import click

if TYPE_CHECKING:
    from rh_core.clusters.base import Cluster

# Exit codes, one meaning each (shown by `rh --help`).
EXIT_OK = 0
EXIT_FAILED = 1  # the command failed; the cause is on stderr
EXIT_USAGE = 2  # bad arguments (click's own code for usage errors)
EXIT_NOT_FOUND = 3  # no resource has that name
EXIT_STORE = 4  # a store or the config file cannot be used
EXIT_NOT_RUNNING = 5  # `rh status`: the server or the machines are not running

EXIT_CODES_HELP = f"""\b
Names: ~/x (local store), @/x (shared store, see `rh config get`), ^x (a plugin's builtin);
a bare x means ~/x.
\b
Exit codes:
  {EXIT_OK}  success
  {EXIT_FAILED}  the command failed (the cause is on stderr)
  {EXIT_USAGE}  bad usage: unknown option, malformed name, unknown setting
  {EXIT_NOT_FOUND}  no resource has that name (near matches are listed)
  {EXIT_STORE}  a store or the config file cannot be used: unreachable, access denied,
     corrupt, or written by a newer rh_core
  {EXIT_NOT_RUNNING}  rh status: the cluster's server (or its machines) is not running
  `rh run` and `rh ssh` exit with the remote command's own code.
"""

JSON_OPTION = click.option("--json", "as_json", is_flag=True, help="machine-readable output")


@click.group(context_settings={"help_option_names": ["-h", "--help"]}, epilog=EXIT_CODES_HELP)
@click.version_option(package_name="rh-core", prog_name="rh")
def cli() -> None:
    """Send Python functions to local or remote clusters."""


# -------------------------------------------------------------------------------------------------
# Errors, exit codes, progress


def exit_code_for(exc: BaseException) -> int | None:
    """The exit code of an error rh_core raised for the user, or None for a bug (shown as a traceback)."""
    from rh_core.errors import (
        ConfigError,
        ConfigValueError,
        ResourceFormatError,
        ResourceNotFoundError,
        RhError,
        StoreError,
    )

    if isinstance(exc, ResourceNotFoundError):
        return EXIT_NOT_FOUND
    if isinstance(exc, (ConfigValueError, ValueError)):
        return EXIT_USAGE
    if isinstance(exc, (StoreError, ResourceFormatError, ConfigError)):
        return EXIT_STORE
    if isinstance(exc, RhError):
        return EXIT_FAILED
    return None


@contextlib.contextmanager
def reported(as_json: bool) -> Iterator[None]:
    """Turn rh_core's errors into a message (stderr, or a JSON object on stdout) and an exit code."""
    try:
        yield
    except Exception as exc:
        code = exit_code_for(exc)
        if code is None:
            raise
        if as_json:
            payload: dict[str, Any] = {"error": str(exc), "type": type(exc).__name__, "exit_code": code}
            if getattr(exc, "near", None) is not None:
                payload["near"] = exc.near
            click.echo(json.dumps(payload))
        else:
            click.echo(f"rh: {exc}", err=True)
        sys.exit(code)


@contextlib.contextmanager
def progress(message: str) -> Iterator[None]:
    """``message ...`` on stderr, with the seconds elapsed ticking on a terminal, then how it ended."""
    import threading
    import time

    started = time.monotonic()
    live = sys.stderr.isatty()
    done = threading.Event()

    def tick() -> None:
        while not done.wait(0.5):
            click.echo(f"\r{message} ... {time.monotonic() - started:.0f}s", err=True, nl=False)

    click.echo(f"{message} ...", err=True, nl=not live)
    ticker = threading.Thread(target=tick, daemon=True) if live else None
    if ticker:
        ticker.start()
    outcome = "failed"
    try:
        yield
        outcome = "done"
    finally:
        done.set()
        if ticker:
            ticker.join()
        prefix = f"\r{message} ... " if live else f"{message}: "
        click.echo(f"{prefix}{outcome} in {time.monotonic() - started:.1f}s", err=True)


def configure_logging() -> None:
    """This command's log lines on stderr: rh_core's (and its plugins') at the config file's
    ``log_level``; other libraries' (paramiko's, say) only from WARNING up."""
    from rh_core import config
    from rh_core.client.progress import show_logs

    show_logs(config.current().log_level.upper())


def load_cluster(name: str | None, *, dryrun: bool = True) -> Cluster:
    """The cluster saved as ``name``, or the local cluster (rh.here) when no name is given."""
    configure_logging()
    if name is None:
        from rh_core.clusters.local import LocalCluster

        return LocalCluster()
    from rh_core.names import load_cluster as load

    return load(name, dryrun=dryrun)


# -------------------------------------------------------------------------------------------------
# Names and clusters


@cli.command(name="ls")
@click.argument("folder", default="~/")
@click.option("-l", "--long", "long_format", is_flag=True, help="also show each resource's kind (reads each one)")
@JSON_OPTION
def ls_command(folder: str, long_format: bool, as_json: bool) -> None:
    """List saved resources in FOLDER (default ~/; @/ or @/team for the shared store, ^ for builtins)."""
    from rh_core import names

    with reported(as_json):
        rows = []
        for entry in names.ls(folder):
            kind = "folder" if entry.endswith("/") else None
            if (long_format or as_json) and kind is None:  # JSON readers get the kind, never null
                try:
                    kind = names.describe(entry)["kind"]
                except names.ResourceFormatError as exc:
                    kind = f"unreadable ({exc})"
            rows.append({"name": entry, "kind": kind})
    if as_json:
        click.echo(json.dumps(rows))
        return
    if not rows:
        click.echo(f"nothing is saved in {folder}", err=True)
    for row in rows:
        click.echo(f"{row['name']:40} {row['kind']}" if long_format else row["name"])


@cli.command(name="status")
@click.argument("name", required=False)
@JSON_OPTION
def status_command(name: str | None, as_json: bool) -> None:
    """Show whether a saved cluster's machines are up and its server runs (default: the local
    cluster). Starts nothing; when the server is down it says why and how to start it (exit 5)."""
    with reported(as_json):
        status = load_cluster(name).refresh_status()
    if as_json:
        click.echo(json.dumps(status.to_json(), default=str))
    else:
        click.echo("\n".join(status.lines()))
    sys.exit(EXIT_OK if status.running else EXIT_NOT_RUNNING)


@cli.command(name="up")
@click.argument("name")
@JSON_OPTION
def up_command(name: str, as_json: bool) -> None:
    """Bring a saved cluster up: its machines, then its server (installing rh_core there on first use)."""
    with reported(as_json):
        cluster = load_cluster(name)
        with progress(f"bringing {name} up (the first time on a machine this installs rh_core there)"):
            cluster.up()
        status = cluster.refresh_status()
    click.echo(json.dumps(status.to_json(), default=str) if as_json else "\n".join(status.lines()))


@cli.command(name="down")
@click.argument("name")
@JSON_OPTION
def down_command(name: str, as_json: bool) -> None:
    """Stop a saved cluster's server and let its provisioner take the machines down."""
    with reported(as_json):
        cluster = load_cluster(name)
        with progress(f"taking {name} down"):
            cluster.down()
    click.echo(json.dumps({"name": name, "down": True}) if as_json else f"{name} is down")


@cli.command(name="ssh")
@click.argument("name")
def ssh_command(name: str) -> None:
    """Open a shell on a saved cluster's head machine; exits with the shell's code."""
    with reported(False):
        code = load_cluster(name).ssh()
    sys.exit(code)


@cli.command(name="run")
@click.argument("name")
@click.argument("command", nargs=-1, required=True, type=click.UNPROCESSED)
@JSON_OPTION
def run_command(name: str, command: tuple[str, ...], as_json: bool) -> None:
    """Run a shell command on a saved cluster's head machine: rh run NAME -- CMD [ARGS...].

    One argument is run as a shell line (pipes allowed: rh run gpu -- 'nvidia-smi | head');
    several are quoted one by one. Output streams live (with --json it is collected instead),
    and rh exits with the command's code.
    """
    import shlex

    line = command[0] if len(command) == 1 else shlex.join(command)
    with reported(as_json):
        (code, out, err), = load_cluster(name).run([line], stream_logs=not as_json)
    if as_json:
        click.echo(json.dumps({"name": name, "command": line, "returncode": code, "stdout": out, "stderr": err}))
    sys.exit(code)


@cli.command(name="logs")
@click.argument("name")
@click.argument("run_key", required=False)
@click.option("-f", "--follow", is_flag=True, help="Keep printing new lines until the run ends.")
@JSON_OPTION
def logs_command(name: str, run_key: str | None, follow: bool, as_json: bool) -> None:
    """Print what run RUN_KEY (a ref.key) logged on a saved cluster; without RUN_KEY, list its runs.

    Use `rh logs here KEY` for the local cluster.
    """
    with reported(as_json):
        cluster = load_cluster(None if name == "here" else name)
        if run_key is None:
            runs = cluster.runs()
            if as_json:
                click.echo(json.dumps({"name": name, **runs}))
            else:
                for key, tasks in runs["running"].items():
                    click.echo(f"{key}  running ({tasks} task{'s' if tasks != 1 else ''})")
                for key in runs["finished"]:
                    click.echo(f"{key}  finished, result kept")
                for key in runs["logged"]:
                    if key not in runs["running"] and key not in runs["finished"]:
                        click.echo(f"{key}  logged")
            return
        text = cluster.logs(run_key, follow=follow and not as_json)
    if as_json:
        click.echo(json.dumps({"name": name, "run_key": run_key, "logs": text}))
    elif not follow:
        click.echo(text, nl=False)


@cli.command(name="cancel")
@click.argument("name")
@click.argument("run_key")
@JSON_OPTION
def cancel_command(name: str, run_key: str, as_json: bool) -> None:
    """Stop run RUN_KEY on a saved cluster (`here` for the local one); its caller gets RunCancelledError."""
    with reported(as_json):
        load_cluster(None if name == "here" else name).cancel(run_key)
    click.echo(json.dumps({"name": name, "run_key": run_key, "cancelled": True}) if as_json
               else f"cancelled {run_key} on {name}")


@cli.command(name="notebook")
@click.argument("name")
@click.option("--port", default=8888, show_default=True, help="JupyterLab's port on the cluster.")
@click.option("--env", default=None, help="A named environment to run it in.")
def notebook_command(name: str, port: int, env: str | None) -> None:
    """JupyterLab on a saved cluster's head machine, tunnelled here, until Ctrl-C."""
    import time

    with reported(False):
        notebook = load_cluster(None if name == "here" else name, dryrun=False).notebook(port, env=env)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass
    finally:
        notebook.close()


# -------------------------------------------------------------------------------------------------
# Settings


@cli.group(name="config")
def config_group() -> None:
    """Read and change the settings in $RH_HOME/config.yaml (default ~/.rh/config.yaml)."""


@config_group.command(name="get")
@click.argument("key", required=False)
@JSON_OPTION
def config_get(key: str | None, as_json: bool) -> None:
    """Show one setting's value, or every setting with its meaning."""
    from rh_core import config

    with reported(as_json):
        if key is not None:
            config.check_key(key)
            value = config.current().get(key)
            click.echo(json.dumps({"key": key, "value": value}) if as_json else ("" if value is None else str(value)))
            return
        rows = config.describe()
        path = config.current().path
    if as_json:
        click.echo(json.dumps({"path": path, "settings": {row["key"]: row["value"] for row in rows}}))
        return
    click.echo(f"# {path}")
    for row in rows:
        value = "" if row["value"] is None else row["value"]
        click.echo(f"{row['key']:24} {value!s:28} {row['help']}")


@config_group.command(name="set")
@click.argument("key")
@click.argument("value")
@JSON_OPTION
def config_set(key: str, value: str, as_json: bool) -> None:
    """Write one setting into the config file (rh config set store.backend s3)."""
    from rh_core import config

    with reported(as_json):
        typed = config.parse_value(key, value)
        path = config.set_value(key, typed).path
    click.echo(json.dumps({"key": key, "value": typed, "path": path}) if as_json else f"{key} = {typed}  ({path})")


@config_group.command(name="unset")
@click.argument("key")
@JSON_OPTION
def config_unset(key: str, as_json: bool) -> None:
    """Remove one setting from the config file, so its default applies again."""
    from rh_core import config

    with reported(as_json):
        config.check_key(key)
        path = config.set_value(key, None).path
    click.echo(json.dumps({"key": key, "value": None, "path": path}) if as_json else f"{key} unset  ({path})")


# -------------------------------------------------------------------------------------------------
# The local server


@cli.group()
def server() -> None:
    """The local cluster's server (rh.here)."""


def _local(executor: str | None = None, workers: int | None = None):
    from rh_core.clusters.local import LocalCluster

    options = {"num_workers": workers} if workers else {}
    return LocalCluster(executor=executor, executor_options=options)


@server.command()
@click.option("--executor", default=None, help="executor to start with (default: process)")
@click.option("--workers", type=int, default=None, help="worker processes for the process executor")
def start(executor: str | None, workers: int | None) -> None:
    """Start the local server, or report the one already running."""
    cluster = _local(executor, workers)
    info = cluster.status()
    click.echo(f"server running: pid {info['pid']}, port {info['port']}, executor {info['executor']}")


@server.command()
def stop() -> None:
    """Stop the local server."""
    if _local().stop_server():
        click.echo("server stopped")
    else:
        click.echo("no server was running")


@server.command()
@click.option("--executor", default=None, help="executor to restart with (default: the running one)")
def restart(executor: str | None) -> None:
    """Restart the local server (results it holds are lost)."""
    cluster = _local()
    state = cluster.read_state()
    cluster.stop_server()
    cluster = _local(executor or (state or {}).get("executor"))
    info = cluster.status()
    click.echo(f"server running: pid {info['pid']}, port {info['port']}, executor {info['executor']}")


@server.command()
@click.option("--json", "as_json", is_flag=True, help="machine-readable output")
def status(as_json: bool) -> None:
    """Show the local server's state; exits 1 when none runs."""
    cluster = _local()
    state = cluster.read_state()
    if state is None:
        message = {"running": False, "state_dir": cluster.state_dir, "log": cluster.log_file}
        click.echo(json.dumps(message) if as_json else
                   f"no server running (state dir {cluster.state_dir}; last log: {cluster.log_file})")
        sys.exit(1)
    info = cluster.status()
    if as_json:
        click.echo(json.dumps({"running": True, **info}))
        return
    for key in ("pid", "port", "version", "python", "executor", "parallelism", "calls", "state_dir"):
        click.echo(f"{key:12} {info.get(key)}")


# -------------------------------------------------------------------------------------------------
# Plugins


@cli.command()
@click.option("--json", "as_json", is_flag=True, help="machine-readable output")
def plugins(as_json: bool) -> None:
    """List installed plugins, their versions and hooks, and any that failed to load."""
    from rh_core.plugin.host import PluginHost

    rows = PluginHost().plugins()
    if as_json:
        click.echo(json.dumps([{"name": r.name, "distribution": r.distribution, "version": r.version,
                                "hooks": list(r.hooks), "error": r.error} for r in rows]))
    else:
        for row in rows:
            click.echo(f"{row.name}  ({row.distribution} {row.version})")
            if row.error:
                click.echo(f"    FAILED TO LOAD: {row.error}")
            for hook in row.hooks:
                click.echo(f"    {hook}")
    if any(row.error for row in rows):  # scripts and CI notice a broken plugin
        sys.exit(1)


def main() -> None:
    from rh_core.plugin.host import PluginHost

    PluginHost().add_commands(cli)
    cli()


if __name__ == "__main__":
    main()
