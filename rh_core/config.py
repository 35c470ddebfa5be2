"""The user's settings in ``$RH_HOME/config.yaml``: read once per process, overridable per call.

YAML because people edit this file by hand (comments, no quoting of plain words) and because the
spec names it ``config.yaml``; it is parsed with PyYAML's safe loader only. Every key is listed in
:data:`KEYS` with its meaning; ``rh config get|set|unset`` edits the file.
"""

from __future__ import annotations

import functools
import os
import warnings
from collections.abc import Mapping
from typing import Any

import attrs

from rh_core.errors import ConfigError, ConfigValueError
from rh_core.support.files import write_atomically

# The public name plugins use for the folder of local state (a plugin keeps its files in a folder
# named after itself there): the one function, in support/paths.py.
from rh_core.support.paths import rh_home

#: The newest config file format this rh_core reads (``format:`` at the top of the file).
CONFIG_FORMAT = 1

LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")

#: The largest YAML document rh reads (a config file, a saved record): either is a few hundred bytes.
MAX_YAML_BYTES = 2**20
#: How deeply a YAML document may nest (settings and records nest three or four levels).
MAX_YAML_DEPTH = 64


@attrs.frozen
class Key:
    """One documented setting: its dotted name, type, default and what it does."""

    name: str
    type: type
    default: Any
    help: str


#: Every setting, in the order ``rh config get`` shows them. ``store.*`` locates the shared
#: (``@/``) store: ``backend`` names a store plugin and the other keys are that backend's options
#: (a store plugin may take ``store.<option>`` keys not listed here).
KEYS: dict[str, Key] = {key.name: key for key in (
    Key("default_provider", str, None, "provider for on-demand clusters when rh.cluster() names none"),
    Key("default_autostop_mins", int, 30, "idle minutes before an on-demand cluster stops; -1 never"),
    Key("stream_logs", bool, True, "show a function's stdout and stderr here as it runs (per call: stream_logs=False)"),
    Key("output_prefix", bool, True, "begin each line a function prints with where it ran: (cluster run-key)"),
    Key("log_level", str, "WARNING", f"level of rh_core's and its plugins' loggers (the `rh` command; scripts too when set): {', '.join(LOG_LEVELS)}"),
    Key("sync_warn_mb", int, 100, "warn before syncing a working directory larger than this (MB; -1 never)"),
    Key("results_max_mb", int, 2048, "disk space on a cluster for .remote() results kept across server restarts"),
    Key("results_days", int, 7, "days a kept .remote() result lives on the cluster before it is deleted"),
    Key("results_memory_mb", int, 256, "memory on a cluster for kept .remote() results; beyond it they are read from disk"),
    Key("conda_channels", list, None, "default conda channels: a list, or comma-separated on the command line"),
    Key("store.backend", str, None, "the shared (@/) store's backend: s3, dir, or a store plugin's name"),
    Key("store.bucket", str, None, "s3 backend: the bucket"),
    Key("store.prefix", str, "", "s3 backend: the key prefix resources live under"),
    Key("store.endpoint_url", str, None, "s3 backend: an S3-compatible endpoint (MinIO, moto, R2...)"),
    Key("store.region", str, None, "s3 backend: the bucket's region"),
    Key("store.profile", str, None, "s3 backend: the AWS profile whose credentials to use"),
    Key("store.path", str, None, "dir backend: the shared directory (a shared filesystem)"),
)}


@attrs.frozen(kw_only=True)
class Config:
    """The settings in effect: the file's values over the defaults, with per-call overrides applied.

    ``values`` holds only what was set (dotted keys are nested: ``{"store": {"backend": "s3"}}``);
    :meth:`get` falls back to the documented default.
    """

    path: str
    values: Mapping[str, Any] = attrs.field(factory=dict)

    def get(self, key: str) -> Any:
        """The value of a dotted key (``"store.bucket"``), or its documented default."""
        node: Any = self.values
        for part in key.split("."):
            if not isinstance(node, Mapping) or part not in node:
                return KEYS[key].default if key in KEYS else None
            node = node[part]
        return node

    @property
    def default_provider(self) -> str | None:
        return self.get("default_provider")

    @property
    def default_autostop_mins(self) -> int:
        return self.get("default_autostop_mins")

    @property
    def log_level(self) -> str:
        return self.get("log_level")

    @property
    def stream_logs(self) -> bool:
        """Whether calls show their function's output here unless they say otherwise."""
        return bool(self.get("stream_logs"))

    @property
    def output_prefix(self) -> bool:
        """Whether shown output lines are marked with their cluster and run."""
        return bool(self.get("output_prefix"))

    @property
    def store(self) -> dict[str, Any]:
        """The shared store's settings (``backend`` plus its options); empty when none is configured."""
        return dict(self.values.get("store") or {})

    def with_overrides(self, **overrides: Any) -> Config:
        """A copy with some top-level settings replaced for one call: ``store={...}``, ``log_level=...``."""
        values = dict(self.values)
        for key, value in overrides.items():
            if value is None:
                continue
            if key == "store":
                values["store"] = _checked_store(value, "the store= argument")
            else:
                values[key] = _checked_value(key, value, "a per-call override")
        return attrs.evolve(self, values=values)


def config_path() -> str:
    """``$RH_HOME/config.yaml`` (``~/.rh/config.yaml`` by default)."""
    return os.path.join(rh_home(), "config.yaml")


def current() -> Config:
    """The settings of this process, read from the config file the first time they are asked for.

    The file is read once per path; call :func:`reload` after changing it behind rh_core's back.
    """
    # Every call reads settings (stream_logs): where the file is follows from two variables.
    return _current_for(os.environ.get("RH_HOME"), os.environ.get("HOME"))


def reload() -> None:
    """Forget the settings read so far; the next :func:`current` reads the file again."""
    _current_for.cache_clear()
    _read_cached.cache_clear()


@functools.cache
def _current_for(rh_home_variable: str | None, home_variable: str | None) -> Config:
    return _read_cached(config_path())


@functools.cache
def _read_cached(path: str) -> Config:
    settings = read(path)
    if "log_level" in settings.values:  # the user asked: rh_core's lines at that level, in a script too
        from rh_core.client.progress import show_logs

        show_logs(settings.log_level.upper())
    return settings


def read(path: str) -> Config:
    """Parse and check one config file; a missing file means every default."""
    try:
        with open(path, "rb") as file:
            text = file.read()
    except FileNotFoundError:
        return Config(path=path)
    except OSError as exc:
        raise ConfigError(f"cannot read the config file {path}: {exc.strerror}; fix its permissions") from exc
    values = _parse(text, path)
    found = values.pop("format", CONFIG_FORMAT)
    if not isinstance(found, int) or isinstance(found, bool):
        raise ConfigError(f"the config file {path} has format {found!r}, not a number; it was left untouched: fix it "
                          f"(`format: {CONFIG_FORMAT}`) or move it away")
    if found > CONFIG_FORMAT:
        raise ConfigError(
            f"the config file {path} was written for config format {found}, and this rh_core reads format "
            f"{CONFIG_FORMAT} and older; upgrade rh_core (pip install -U rh-core), or move the file away"
        )
    for key, value in _flatten(values).items():
        if _key_spec(key) is None:
            warnings.warn(f"{path}: unknown setting {key!r} is ignored{_did_you_mean(key)}", stacklevel=2)
        elif value is not None:
            try:
                _checked_value(key, value, path)
            except ConfigValueError as exc:  # a bad value in the file is the file's fault, not the caller's
                raise ConfigError(f"{exc}; the file was left untouched: fix it, or `rh config set {key} VALUE`") from None
    return Config(path=path, values=values)


def parse_yaml(data: bytes) -> Any:
    """A YAML document of plain data (PyYAML's safe loader), refused with ``ValueError`` (saying
    why) when it is larger than :data:`MAX_YAML_BYTES`, nests deeper than :data:`MAX_YAML_DEPTH`
    or uses aliases: a few lines of aliases unfold into billions of values for whatever walks the
    result. Invalid YAML raises ``yaml.YAMLError``. The checks read the parser's events before
    anything is built."""
    import yaml

    if len(data) > MAX_YAML_BYTES:
        raise ValueError(f"is {len(data)} bytes, more than the {MAX_YAML_BYTES} a config file or saved record may hold")
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    depth = 0
    for event in yaml.parse(data, Loader=loader):
        if isinstance(event, yaml.AliasEvent):
            raise ValueError(f"uses YAML aliases (*{event.anchor}), which rh does not read: a few of them can unfold "
                             f"into billions of values; write the values out instead")
        if isinstance(event, (yaml.MappingStartEvent, yaml.SequenceStartEvent)):
            depth += 1
            if depth > MAX_YAML_DEPTH:
                raise ValueError(f"nests deeper than {MAX_YAML_DEPTH} levels")
        elif isinstance(event, (yaml.MappingEndEvent, yaml.SequenceEndEvent)):
            depth -= 1
    return yaml.load(data, Loader=loader)


def parse_yaml_or_raise(data: bytes, error: type[Exception], what: str, untouched: str) -> Any:
    """:func:`parse_yaml`, its failures raised as ``error``: ``what`` names the document (``"the
    config file PATH"``) and ``untouched`` ends the message with what to do."""
    import yaml

    try:
        return parse_yaml(data)
    except yaml.YAMLError as exc:
        raise error(f"{what} is not valid YAML ({exc}); {untouched}") from None
    except ValueError as exc:
        raise error(f"{what} {exc}; {untouched}") from None


def _parse(text: bytes, path: str) -> dict[str, Any]:
    untouched = "it was left untouched: fix it, or move it away to start from the defaults"
    values = parse_yaml_or_raise(text, ConfigError, f"the config file {path}", untouched)
    if values is None:
        return {}
    if not isinstance(values, dict):
        raise ConfigError(f"the config file {path} should hold a mapping of settings, not a {type(values).__name__}; "
                          f"it was left untouched: fix it, or move it away to start from the defaults")
    return values


def _flatten(values: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in values.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping) and any(k.startswith(name + ".") for k in KEYS):
            flat.update(_flatten(value, name + "."))
        else:
            flat[name] = value
    return flat


def _did_you_mean(key: str) -> str:
    import difflib

    close = difflib.get_close_matches(key, list(KEYS), n=3)
    return f" (did you mean {', '.join(close)}?)" if close else f"; valid settings: {', '.join(KEYS)}"


def _key_spec(key: str) -> Key | None:
    """The documented key, or for ``store.<option>`` a text option of a store plugin's own."""
    if key in KEYS:
        return KEYS[key]
    if key.startswith("store.") and key.count(".") == 1:
        return Key(key, str, None, "an option of the shared store's backend")
    return None


def _checked_value(key: str, value: Any, where: str) -> Any:
    spec = _key_spec(key)
    if spec is None:
        raise ConfigValueError(f"unknown setting {key!r} in {where}{_did_you_mean(key)}")
    expected = spec.type
    if value is None:
        return None
    if expected is bool and not isinstance(value, bool):
        raise ConfigValueError(f"{key} must be true or false, not {value!r} (in {where})")
    if expected is int and (isinstance(value, bool) or not isinstance(value, int)):
        raise ConfigValueError(f"{key} must be a whole number (minutes), not {value!r} (in {where})")
    if expected is str and not isinstance(value, str):
        raise ConfigValueError(f"{key} must be text, not {value!r} (in {where})")
    if expected is list and not (isinstance(value, str) or (isinstance(value, list) and all(isinstance(item, str) for item in value))):
        raise ConfigValueError(f"{key} must be a list of text (or comma-separated text), not {value!r} (in {where})")
    if key == "log_level" and value.upper() not in LOG_LEVELS:
        raise ConfigValueError(f"log_level must be one of {', '.join(LOG_LEVELS)}, not {value!r} (in {where})")
    return value


def _checked_store(store: Mapping[str, Any], where: str) -> dict[str, Any]:
    if not isinstance(store, Mapping) or not store.get("backend"):
        raise ConfigValueError(f"a store needs at least a backend, e.g. {{'backend': 'dir', 'path': '/shared/rh'}} "
                          f"(in {where}), not {store!r}")
    return {str(k): v for k, v in store.items()}


# -------------------------------------------------------------------------------------------------
# Editing the file (``rh config set``)


def check_key(key: str) -> Key:
    """The documented setting ``key``; an error listing close names when there is none."""
    spec = _key_spec(key)
    if spec is None:
        raise ConfigValueError(f"unknown setting {key!r}{_did_you_mean(key)}")
    return spec


_TRUE_WORDS = ("true", "yes", "on", "1")
_FALSE_WORDS = ("false", "no", "off", "0")


def parse_value(key: str, text: str) -> Any:
    """A value typed on the command line, converted to the key's type (``30`` → 30 for numbers)."""
    spec = check_key(key)
    if spec.type is int:
        try:
            return int(text)
        except ValueError:
            raise ConfigValueError(f"{key} must be a whole number, not {text!r}") from None
    if spec.type is list:
        return [item.strip() for item in text.split(",") if item.strip()]
    if spec.type is bool:
        word = text.strip().lower()
        if word not in _TRUE_WORDS + _FALSE_WORDS:
            raise ConfigValueError(f"{key} must be true or false, not {text!r}")
        return word in _TRUE_WORDS
    return text.upper() if key == "log_level" else text


def set_value(key: str, value: Any, path: str | None = None) -> Config:
    """Write one setting into the config file (``None`` removes it) and return the new settings.

    The file is rewritten whole, owner-only (0600); comments in it are not kept.
    """
    path = path or config_path()
    config = read(path)
    values = _deep_copy(config.values)
    if value is not None:
        value = _checked_value(key, value, "the new value")
    parts = key.split(".")
    node = values
    for part in parts[:-1]:
        child = node.get(part)
        if not isinstance(child, dict):
            child = node[part] = {}
        node = child
    if value is None:
        node.pop(parts[-1], None)
        if len(parts) > 1 and not node:
            values.pop(parts[0], None)
    else:
        node[parts[-1]] = value
    _write(path, values)
    reload()
    return Config(path=path, values=values)


def _deep_copy(values: Mapping[str, Any]) -> dict[str, Any]:
    return {k: _deep_copy(v) if isinstance(v, Mapping) else v for k, v in values.items()}


def _write(path: str, values: Mapping[str, Any]) -> None:
    import yaml

    body = yaml.safe_dump({"format": CONFIG_FORMAT, **values}, sort_keys=False, default_flow_style=False)
    text = "# rh_core settings; `rh config get` lists every key with its meaning.\n" + body
    os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
    write_atomically(path, text, 0o600)


def describe() -> list[dict[str, Any]]:
    """Every documented key with its current value, default and meaning (for ``rh config get``)."""
    config = current()
    return [{"key": key.name, "value": config.get(key.name), "default": key.default, "help": key.help}
            for key in KEYS.values()]


def server_arguments() -> list[str]:
    """The ``python -m rh_core.server`` options that come from this config file."""
    settings = current()
    return ["--results-max-mb", str(settings.get("results_max_mb")), "--results-days", str(settings.get("results_days")),
            "--results-memory-mb", str(settings.get("results_memory_mb"))]
