"""Resource names: save clusters and functions as small versioned configs and load them by name.

* ``~/name`` lives in the local store, ``$RH_HOME/names`` (owner-only files);
* ``@/name`` lives in the shared store that the config file's ``store:`` section points at
  (a store plugin: ``s3`` or ``dir`` built in); a failing shared store is an error naming it,
  never a fallback to the local one;
* ``^name`` is a builtin that a plugin registered through ``rh_register_builtins``.

A name without a prefix means ``~/name``. Names may have folders: ``@/team/embed``.

A saved resource is a YAML document: ``format`` (see :data:`FORMAT`), ``kind`` (``cluster`` or
``function``) and that kind's section. It never holds pickled code or credentials. A saved
function records how to find its code (module and qualified name, plus an archive of its working
directory kept beside it in the store under ``.code/``) and its cluster, by name or inline.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import attrs

from rh_core.errors import (
    InvalidNameError,
    ResourceExistsError,
    ResourceFormatError,
    ResourceNotFoundError,
    RhError,
    StoreError,
)
from rh_core.plugin.interfaces import Store
from rh_core.support.redact import holds_private_key, is_secret_key

if TYPE_CHECKING:
    from rh_core.clusters.base import Cluster
    from rh_core.function import Function

#: The newest saved-resource format this rh_core writes and reads.
FORMAT = 1
KINDS = ("cluster", "function")
#: A working directory larger than this is refused when saving a function (move data out of it).
MAX_CODE_BYTES = 100 * 1024 * 1024
#: Settings that are never saved: they are one-time acts of whoever made the object.
ONE_TIME_KEYS = ("trust_new_host",)
#: Keys of a cluster config (at any depth) that hold paths on machines of whoever loads it: this one
#: (``state_dir``, keys, known hosts) or the cluster's head (``remote_dir``, whose venv bootstrap
#: runs). A shared record may hold them only home-relative (``~/.ssh/id_ed25519``), naming the
#: loading user's own file: any other path would be a folder or file of the saver's choosing (their
#: fake server's state folder, their known_hosts, their "venv"), which the loader must not use.
PATH_KEYS = ("state_dir", "remote_dir", "ssh_private_key", "known_hosts")

LOCAL, SHARED, BUILTIN = "~", "@", "^"
_SEGMENT = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*")
#: Each part of a name becomes a file name (with ``.yaml``, ``.tar.gz`` or a temporary suffix added,
#: within the 255 bytes file systems allow) and the whole an S3 key (at most 1024 bytes).
MAX_NAME_PART, MAX_NAME = 200, 512


# -------------------------------------------------------------------------------------------------
# Names


@attrs.frozen
class ResourceName:
    """A parsed name: its scope (``~``, ``@`` or ``^``) and its path (``team/embed``, or ``""`` for
    the top folder)."""

    scope: str
    path: str

    def __str__(self) -> str:
        return f"^{self.path}" if self.scope == BUILTIN else f"{self.scope}/{self.path}"

    @property
    def short(self) -> str:
        return self.path.rsplit("/", 1)[-1]

    @property
    def key(self) -> str:
        """The store key of the resource's config."""
        return f"{self.path}.yaml"

    @property
    def code_key(self) -> str:
        """The store key of a saved function's working-directory archive."""
        return f".code/{self.path}.tar.gz"

    def child(self, path: str) -> ResourceName:
        return ResourceName(self.scope, f"{self.path}/{path}" if self.path else path)


def parse_name(name: str, *, folder: bool = False) -> ResourceName:
    """``"~/x"``, ``"@/team/x"``, ``"^x"`` or a bare ``"x"`` (meaning ``~/x``) as a :class:`ResourceName`.

    With ``folder=True`` the path may be empty (``"@/"``, ``"~"``) and a trailing ``/`` is allowed.
    """
    if not isinstance(name, str) or not name.strip():
        raise InvalidNameError(f"a resource name must be text like '~/my-cluster' or '@/team/embed', not {name!r}")
    text = name.strip()
    if text.startswith(BUILTIN):
        scope, path = BUILTIN, text[1:]
    elif text[0] in (LOCAL, SHARED) and (len(text) == 1 or text[1] == "/"):
        scope, path = text[0], text[2:]
    else:
        scope, path = LOCAL, text
    if folder:
        path = path.rstrip("/")
    segments = path.split("/") if path else []
    if not segments and not folder:
        raise InvalidNameError(f"{name!r} names a folder, not a resource; add a name: '{scope}/my-cluster'")
    if len(path) > MAX_NAME or any(len(segment) > MAX_NAME_PART for segment in segments):
        raise InvalidNameError(f"the name {name[:60]!r}... is too long: a name may have up to {MAX_NAME} characters, "
                               f"and each part between '/' up to {MAX_NAME_PART}")
    for segment in segments:
        if not _SEGMENT.fullmatch(segment):
            raise InvalidNameError(
                f"{name!r} is not a valid resource name: each part between '/' must start with a letter, digit "
                f"or '_' and hold only letters, digits, '_', '.' and '-' (like '@/team/embed-v2')"
            )
    return ResourceName(scope, "/".join(segments))


def _local_store() -> Store:
    from rh_core.builtin.dir_store import DirectoryStore
    from rh_core.support.paths import rh_home

    return DirectoryStore(path=os.path.join(rh_home(), "names"), private=True)


def shared_store(store: Mapping[str, Any] | None = None) -> Store:
    """The shared (``@/``) store from the config file, or from ``store`` given for this call."""
    from rh_core import config
    from rh_core.plugin.host import default_host

    settings = config.current().with_overrides(store=store).store
    if not settings:
        raise StoreError(
            "no shared store is configured for @/ names; set one with `rh config set store.backend s3` and "
            "`rh config set store.bucket BUCKET` (or store.backend dir and store.path /shared/dir), "
            "or pass store={'backend': ..., ...} to this call"
        )
    backend = settings.pop("backend")
    store_class = default_host().registry("store").get(backend)
    try:
        return store_class(**settings)
    except TypeError as exc:
        raise StoreError(f"the {backend!r} store does not take the options {sorted(settings)}: {exc}; "
                         f"fix the store section of {config.config_path()}") from exc


def _store_for(name: ResourceName, store: Mapping[str, Any] | None) -> tuple[Store, str]:
    """The store holding ``name`` and how messages call it."""
    if name.scope == LOCAL:
        local = _local_store()
        return local, f"the local store ({local.describe()})"
    if name.scope == SHARED:
        shared = shared_store(store)
        return shared, f"the shared store ({shared.describe()})"
    raise ValueError(f"{name} is a builtin: builtins are registered by plugins, not saved in a store")


def _near(name: ResourceName, candidates: list[str]) -> list[str]:
    import difflib

    return [str(ResourceName(name.scope, path)) for path in difflib.get_close_matches(name.path, candidates, n=5, cutoff=0.6)]


def _saved_paths(store: Store) -> list[str]:
    """The paths of every resource in a store (its code archives and temporary files left out)."""
    return [key[: -len(".yaml")] for key in store.keys("") if key.endswith(".yaml") and not key.startswith(".")]


# -------------------------------------------------------------------------------------------------
# The saved format


def dump_record(record: Mapping[str, Any]) -> bytes:
    """A resource record as the YAML text a store holds."""
    import yaml

    header = (f"# A {record['kind']} saved by rh_core: load it with rh.{record['kind']}(name=...).\n"
              "# Plain settings only: no pickled code, no credentials.\n")
    return (header + yaml.safe_dump(dict(record), sort_keys=False, default_flow_style=False)).encode()


def parse_record(data: bytes, where: str) -> dict[str, Any]:
    """Check and parse a stored resource; ``where`` (its path or URL) goes into every error."""
    from rh_core.config import parse_yaml_or_raise

    untouched = "it was left untouched: fix it by hand, or replace it with save(..., overwrite=True)"
    record = parse_yaml_or_raise(data, ResourceFormatError, where, untouched)
    if not isinstance(record, dict):
        raise ResourceFormatError(f"{where} does not hold a saved resource (a mapping); {untouched}")
    version = record.get("format")
    if not isinstance(version, int) or isinstance(version, bool):
        raise ResourceFormatError(f"{where} has no valid 'format' number ({version!r}); {untouched}")
    if version > FORMAT:
        raise ResourceFormatError(
            f"{where} was saved in resource format {version} (by {record.get('saved_by', 'a newer rh_core')}), "
            f"and this rh_core reads format {FORMAT} and older; upgrade rh_core (pip install -U rh-core)"
        )
    kind = record.get("kind")
    if kind not in KINDS or not isinstance(record.get(kind), dict):
        raise ResourceFormatError(f"{where} has kind {kind!r} without a matching '{kind}' section "
                                  f"(expected one of {', '.join(KINDS)}); {untouched}")
    return record


def _new_record(kind: str, name: ResourceName, section: dict[str, Any], **extra: Any) -> dict[str, Any]:
    from rh_core import __version__

    return {"format": FORMAT, "kind": kind, "name": name.path, "saved_by": f"rh_core {__version__}",
            kind: section, **extra}


def without_secrets(config: Mapping[str, Any], where: str = "") -> tuple[dict[str, Any], list[str]]:
    """``config`` without credential values or one-time settings (:data:`ONE_TIME_KEYS`), and the
    dotted keys of the credentials that were dropped.

    Keys naming a secret (:data:`rh_core.support.redact.SECRET_WORDS`) are dropped; a value holding a
    private key's contents is refused outright, since the caller meant it to be used.
    """
    kept: dict[str, Any] = {}
    dropped: list[str] = []
    for key, value in config.items():
        dotted = f"{where}.{key}" if where else str(key)
        if key in ONE_TIME_KEYS:  # left out without a word: nobody expects an act to be saved
            continue
        if is_secret_key(key):
            dropped.append(dotted)
        elif isinstance(value, Mapping):
            kept[key], inner = without_secrets(value, dotted)
            dropped += inner
        elif holds_private_key(value):
            raise RhError(f"{dotted} holds a private key's contents, which are never saved; keep the key in a file "
                          f"and pass its path instead (ssh_private_key='~/.ssh/id_ed25519')")
        else:
            kept[key] = value
    return kept, dropped


def _path_settings(config: Mapping[str, Any], where: str = "") -> list[tuple[str, Any]]:
    """The ``(dotted key, value)`` of every path setting (:data:`PATH_KEYS`) in ``config`` that is set."""
    found = []
    for key, value in config.items():
        dotted = f"{where}.{key}" if where else str(key)
        if key in PATH_KEYS and value is not None:
            found.append((dotted, value))
        elif isinstance(value, Mapping):
            found += _path_settings(value, dotted)
    return found


def _home_relative(path: Any) -> bool:
    """``~/...`` without ``..``: a path in the home of whoever uses it."""
    return isinstance(path, str) and path.startswith("~/") and ".." not in path.split("/")


def _shareable(config: dict[str, Any]) -> tuple[dict[str, Any], list[str]]:
    """``config`` as a shared record may hold it: local paths under this user's home written
    home-relative (each loader's own file then), any other local path left out; and the dotted
    keys left out."""
    home = os.path.expanduser("~").rstrip(os.sep)
    dropped = []

    def rewrite(node: Any, where: str) -> Any:
        if not isinstance(node, Mapping):
            return node
        kept = {}
        for key, value in node.items():
            dotted = f"{where}.{key}" if where else str(key)
            if key in PATH_KEYS and value is not None and not _home_relative(value):
                text = os.path.abspath(os.path.expanduser(str(value)))
                if not text.startswith(home + os.sep):
                    dropped.append(dotted)
                    continue
                value = "~" + text[len(home):]
            kept[key] = rewrite(value, dotted)
        return kept

    return rewrite(config, ""), dropped


def check_shared_paths(config: Mapping[str, Any], where: str) -> None:
    """Refuse a cluster config from a shared record that names a local path other than a
    home-relative one: it would make the loader use a file or folder someone else chose."""
    for dotted, value in _path_settings(config):
        if not _home_relative(value):
            raise ResourceFormatError(
                f"{where} sets {dotted} to {value!r}, a path on your machines chosen by whoever saved it; a shared "
                f"record may only name your own files, as '~/...', so it was not loaded. Ask its author to save it "
                f"again without that path (your own settings then apply: $RH_HOME/local for a local cluster, "
                f"~/.rh on a cluster's machines, ~/.ssh for keys and known hosts), or copy it into your local "
                f"store (~/) after checking it"
            )


def _plain(value: Any, where: str) -> Any:
    """``value`` as plain YAML-safe data (paths become text, tuples lists), or an error naming it."""
    if isinstance(value, Mapping):
        return {str(k): _plain(v, f"{where}.{k}") for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v, where) for v in value]
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    raise RhError(f"{where} is a {type(value).__name__}, which a saved config cannot hold; use plain values "
                  f"(text, numbers, lists, dicts)")


# -------------------------------------------------------------------------------------------------
# Public API


def save(resource: Cluster | Function, name: str | None = None, *, overwrite: bool = False,
         store: Mapping[str, Any] | None = None) -> str:
    """Save a cluster or function under ``name`` (default ``~/<its name>``); returns the full name.

    Saving over an existing name needs ``overwrite=True``. ``store`` replaces the config file's
    shared-store settings for this call.
    """
    from rh_core.clusters.base import Cluster

    resource_name = parse_name(name or f"~/{resource.name}")
    target, where = _store_for(resource_name, store)
    if not overwrite and target.read(resource_name.key) is not None:
        raise ResourceExistsError(f"{resource_name} is already saved in {where}; pass overwrite=True to replace it, "
                                  f"or choose another name")
    if isinstance(resource, Cluster):
        record = _cluster_record(resource, resource_name)
    else:
        record, archive = _function_record(resource, resource_name)
        if archive is not None:  # the code first: a record never points at a missing archive
            target.write(resource_name.code_key, archive)
    target.write(resource_name.key, dump_record(record))
    return str(resource_name)


def load_cluster(name: str, *, dryrun: bool = False, store: Mapping[str, Any] | None = None,
                 secret: str | None = None) -> Cluster:
    """The cluster saved (or builtin) as ``name``, with its status refreshed (machines and server
    asked, nothing started) unless ``dryrun``. ``secret`` is the secret of a cluster reached through
    its TLS port, which is never saved."""
    from rh_core.clusters.base import Cluster

    resource_name = parse_name(name)
    if resource_name.scope == BUILTIN:
        cluster = _builtin(resource_name)
    else:
        record, source = _read(resource_name, store)
        if record["kind"] != "cluster":
            raise RhError(f"{resource_name} is a {record['kind']}, not a cluster; load it with "
                          f"rh.{record['kind']}(name={str(resource_name)!r})")
        cluster = _cluster_from_record(record, source.location(resource_name.key),
                                       shared=resource_name.scope == SHARED)
    if not isinstance(cluster, Cluster):
        raise RhError(f"{resource_name} is a function, not a cluster; load it with rh.function(name={name!r})")
    cluster.saved_name = str(resource_name)
    if secret is not None:
        if not hasattr(cluster, "secret"):
            raise TypeError(f"{resource_name} is not reached through a TLS port: it takes no secret")
        cluster.secret = secret
    if not dryrun:
        cluster.refresh_status()
    return cluster


def load_function(name: str, *, dryrun: bool = False, system: Cluster | None = None,
                  store: Mapping[str, Any] | None = None) -> Function:
    """The function saved (or builtin) as ``name``, placed on ``system`` if given, else on the
    cluster it was saved with; ``dryrun`` leaves it unplaced."""
    from rh_core.function import Function

    resource_name = parse_name(name)
    if resource_name.scope == BUILTIN:
        function = _builtin(resource_name)
        if not isinstance(function, Function):
            raise RhError(f"{resource_name} is a cluster, not a function; load it with rh.cluster(name={name!r})")
        return function.to(system) if system is not None and not dryrun else function
    record, source = _read(resource_name, store)
    if record["kind"] != "function":
        raise RhError(f"{resource_name} is a {record['kind']}, not a function; load it with "
                      f"rh.{record['kind']}(name={str(resource_name)!r})")
    return _function_from_record(record, resource_name, source, dryrun=dryrun, store=store, system=system)


def _read(name: ResourceName, store: Mapping[str, Any] | None) -> tuple[dict[str, Any], Store]:
    """The checked record saved as ``name``, and the store it came from."""
    source, where = _store_for(name, store)
    data = source.read(name.key)
    if data is None:
        raise ResourceNotFoundError(str(name), where, _near(name, _saved_paths(source)))
    return parse_record(data, source.location(name.key)), source


def exists(name: str, *, store: Mapping[str, Any] | None = None) -> bool:
    """True when something is saved (or builtin) under ``name``."""
    resource_name = parse_name(name)
    if resource_name.scope == BUILTIN:
        return resource_name.path in _builtin_names()
    source, _ = _store_for(resource_name, store)
    return source.read(resource_name.key) is not None


def ls(folder: str = "~/", *, store: Mapping[str, Any] | None = None) -> list[str]:
    """The names directly in a folder (``"~/"``, ``"@/team"``, ``"^"``); sub-folders end with ``/``."""
    folder_name = parse_name(folder, folder=True)
    if folder_name.scope == BUILTIN:
        paths, where = _builtin_names(), "the builtins registered by plugins"
    else:
        source, where = _store_for(folder_name, store)
        paths = _saved_paths(source)
    prefix = f"{folder_name.path}/" if folder_name.path else ""
    children = set()
    for path in paths:
        if path.startswith(prefix):
            head, slash, _ = path[len(prefix):].partition("/")
            children.add(head + slash)
    if folder_name.path and not children:
        folders = sorted({path.rsplit("/", 1)[0] for path in paths if "/" in path})
        raise ResourceNotFoundError(f"{folder_name}/", where, [f + "/" for f in _near(folder_name, folders)])
    return [str(folder_name.child(child.rstrip("/"))) + ("/" if child.endswith("/") else "") for child in sorted(children)]


def delete(name: str, *, store: Mapping[str, Any] | None = None) -> None:
    """Remove a saved resource (and a function's code archive)."""
    resource_name = parse_name(name)
    if resource_name.scope == BUILTIN:
        raise RhError(f"{resource_name} is a builtin registered by a plugin and cannot be deleted")
    source, where = _store_for(resource_name, store)
    if not source.delete(resource_name.key):
        raise ResourceNotFoundError(str(resource_name), where, _near(resource_name, _saved_paths(source)))
    source.delete(resource_name.code_key)


def describe(name: str, *, store: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The saved record of ``name`` as stored (for ``rh ls -l`` and inspection); nothing is loaded."""
    resource_name = parse_name(name)
    if resource_name.scope == BUILTIN:
        from rh_core.clusters.base import Cluster

        resource = _builtin(resource_name)
        return {"kind": "cluster" if isinstance(resource, Cluster) else "function", "name": resource_name.path}
    return _read(resource_name, store)[0]


# -------------------------------------------------------------------------------------------------
# Clusters


def _saved_config(cluster: Cluster, name: ResourceName) -> tuple[dict[str, Any], list[str]]:
    """The config a record of ``name`` holds (no credentials; in a shared store, no local paths but
    home-relative ones) and the dotted keys left out, which a warning names."""
    config, dropped = without_secrets(_plain(cluster.config_for_saving(), "the cluster config"))
    if name.scope == SHARED:
        config, paths = _shareable(config)
        dropped += paths
    if dropped:
        import warnings

        warnings.warn(f"{name} is saved without {', '.join(dropped)}: credentials and one-time settings are never "
                      f"saved, nor, in a shared store, paths outside your home; whoever loads it uses their own "
                      f"(key or agent login, their own known_hosts and state folder)", stacklevel=4)
    return config, dropped


def _cluster_record(cluster: Cluster, name: ResourceName) -> dict[str, Any]:
    config, dropped = _saved_config(cluster, name)
    extra = {"not_saved": dropped} if dropped else {}
    return _new_record("cluster", name, config, **extra)


def _cluster_from_record(record: Mapping[str, Any], where: str, *, shared: bool = False) -> Cluster:
    from rh_core.clusters import from_config

    if shared:
        check_shared_paths(record["cluster"], where)
    config, _ = without_secrets(record["cluster"])  # a record saved before they were left out holds them
    try:
        return from_config(config)
    except (TypeError, ValueError) as exc:
        raise ResourceFormatError(f"{where} holds a cluster config this rh_core cannot build ({exc}); it was left "
                                  f"untouched: fix it, or save the cluster again with overwrite=True") from exc


def _cluster_reference(cluster: Cluster, function_name: ResourceName) -> dict[str, Any]:
    """How a saved function finds its cluster: by name when the cluster is saved where whoever loads
    the function can see it, else inline."""
    saved = cluster.saved_name
    if saved and (function_name.scope == LOCAL or not saved.startswith(LOCAL)):
        return {"name": saved}
    return {"config": _saved_config(cluster, function_name)[0]}


def _cluster_from_reference(reference: Mapping[str, Any] | None, *, where: str, shared: bool,
                            store: Mapping[str, Any] | None) -> Cluster | None:
    if not reference:
        return None
    if "name" in reference:  # no status refresh: placing the function connects anyway
        if shared and parse_name(str(reference["name"])).scope == LOCAL:
            raise ResourceFormatError(f"{where} names its cluster {reference['name']!r}, which is not in the shared "
                                      f"store: a shared record may not pick a cluster from your own store; "
                                      f"load it with system= the cluster to use")
        return load_cluster(reference["name"], dryrun=True, store=store)
    return _cluster_from_record({"cluster": reference["config"]}, where, shared=shared)


# -------------------------------------------------------------------------------------------------
# Functions


def _function_record(function: Function, name: ResourceName) -> tuple[dict[str, Any], bytes | None]:
    """The record of a function, and the archive of its working directory (None when installed)."""
    from rh_core.wire import serialize
    from rh_core.support.workdir import working_directory

    fn = function.fn
    if not serialize.is_importable_by_reference(fn):
        raise RhError(
            f"function {function.name!r} cannot be saved by name: only functions defined at the top level of a module "
            f"file can (not in __main__, a notebook, a lambda or a closure), because a saved function records where its "
            f"code is, never the code itself; move it into a module of your working directory"
        )
    module, qualname = fn.__module__, fn.__qualname__
    section: dict[str, Any] = {"module": module, "qualname": qualname, "code": None,
                               "call_options": _plain(function.call_options, "call_options")}
    root = serialize.module_root(module)
    archive = None
    if root is not None and not _is_installed(root):
        real_root = os.path.realpath(root)
        workdir = _fetched_code_dir(real_root) or os.path.realpath(working_directory())
        if real_root != workdir and not real_root.startswith(workdir + os.sep):
            raise RhError(
                f"function {function.name!r} comes from {root}, which is neither installed nor inside the working "
                f"directory {workdir}; save it from the directory its code lives in, or install its package"
            )
        archive, files = pack_directory(workdir)
        import hashlib

        section["code"] = {"archive": name.code_key, "sha256": hashlib.sha256(archive).hexdigest(),
                           "import_path": os.path.relpath(real_root, workdir), "files": files}
    cluster = _cluster_reference(function.system, name) if function.system is not None else None
    return _new_record("function", name, section, cluster=cluster), archive


def _fetched_code_dir(path: str) -> str | None:
    """The fetched working directory (``$RH_HOME/code/<digest>``) holding ``path``, when ``path`` is
    the code of a function loaded by name: saving it again packs that directory."""
    from rh_core.support.paths import rh_home

    cache = os.path.realpath(os.path.join(rh_home(), "code"))
    if not path.startswith(cache + os.sep):
        return None
    return os.path.join(cache, os.path.relpath(path, cache).split(os.sep)[0])


def _is_installed(root: str) -> bool:
    from rh_core.function import _installed_roots

    return os.path.realpath(root) in _installed_roots()


def pack_directory(path: str) -> tuple[bytes, int]:
    """A gzipped tar of the files a working directory sync would send (the rule of
    :mod:`rh_core.support.workdir`; links left out), byte-for-byte the same for the same files; and
    how many files it holds."""
    import gzip
    import io
    import stat
    import tarfile

    from rh_core.support.workdir import listing

    listed = listing(path)
    names = sorted(name for name, info in listed.files.items() if stat.S_ISREG(info.st_mode))
    total = sum(os.path.getsize(os.path.join(path, name)) for name in names)
    if total > MAX_CODE_BYTES:
        raise RhError(f"the working directory {path} holds {total / 2**20:.0f} MiB of files, more than the "
                      f"{MAX_CODE_BYTES / 2**20:.0f} MiB a saved function may carry; move data out of it or "
                      f"list it in .gitignore")
    buffer = io.BytesIO()
    with gzip.GzipFile(fileobj=buffer, mode="wb", mtime=0) as zipped, tarfile.open(fileobj=zipped, mode="w") as tar:
        for name in names:
            full = os.path.join(path, name)
            info = tarfile.TarInfo(name)
            info.size = os.path.getsize(full)
            info.mode = 0o755 if os.access(full, os.X_OK) else 0o644
            with open(full, "rb") as file:
                tar.addfile(info, file)
    return buffer.getvalue(), len(names)


def _fetch_code(source: Store, code: Mapping[str, Any], where: str) -> str:
    """The local folder holding a saved function's working directory, downloaded and unpacked on
    first use (``$RH_HOME/code/<digest>``: content-addressed, so an unchanged save is not fetched again)."""
    import hashlib
    import io
    import shutil
    import tarfile
    import tempfile

    from rh_core.support.paths import rh_home

    digest = str(code.get("sha256", ""))
    if not re.fullmatch(r"[0-9a-f]{64}", digest):
        raise ResourceFormatError(f"{where} has no valid code digest; save the function again with overwrite=True")
    archive_key = str(code.get("archive", ""))
    if not archive_key.startswith(".code/") or ".." in archive_key.split("/"):
        raise ResourceFormatError(f"{where} names its code archive {archive_key!r}, which is not in the store's .code/ "
                                  f"folder; save the function again with overwrite=True")
    target = os.path.join(rh_home(), "code", digest[:32])
    if os.path.isdir(target):
        return target
    archive = source.read(str(code["archive"]))
    if archive is None or hashlib.sha256(archive).hexdigest() != digest:
        state = "missing" if archive is None else "not the archive that was saved (its digest differs)"
        raise ResourceFormatError(f"the code of {where} ({source.location(str(code['archive']))}) is {state}; "
                                  f"save the function again with overwrite=True")
    os.makedirs(os.path.dirname(target), mode=0o700, exist_ok=True)
    unpacking = tempfile.mkdtemp(prefix=f".{digest[:32]}.", suffix=".tmp", dir=os.path.dirname(target))
    try:
        with tarfile.open(fileobj=io.BytesIO(archive), mode="r:gz") as tar:
            tar.extractall(unpacking, filter="data")  # refuses absolute paths, '..' and links leaving the folder
        os.rename(unpacking, target)
    except OSError:
        shutil.rmtree(unpacking, ignore_errors=True)
        if not os.path.isdir(target):  # another process unpacking the same code won the rename
            raise
    return target


def _import(module: str, qualname: str, import_root: str | None, where: str) -> Any:
    import importlib
    import sys

    if import_root and import_root not in sys.path:
        sys.path.insert(0, import_root)
        importlib.invalidate_caches()
    try:
        obj: Any = importlib.import_module(module)
        for part in qualname.split("."):
            obj = getattr(obj, part)
    except Exception as exc:
        raise RhError(
            f"the function saved as {where} ({module}.{qualname}) cannot be imported here: {type(exc).__name__}: {exc}. "
            f"Its code comes from {import_root or 'an installed package'}; install what it imports in this environment"
        ) from exc
    return obj


class NotLoaded:
    """The code of a function loaded with ``dryrun=True``: named, never fetched nor imported (importing
    a module runs its top-level code, which a shared record's author wrote). Calling or sending it
    says how to load it for real."""

    def __init__(self, module: str, qualname: str, where: str):
        self.__module__, self.__qualname__, self.__name__ = module, qualname, qualname.rsplit(".", 1)[-1]
        self._where = where

    def _refuse(self) -> RhError:
        return RhError(f"{self._where} was loaded with dryrun=True, so its code ({self.__module__}.{self.__qualname__}) "
                       f"was neither fetched nor imported; load it without dryrun to call it or send it to a cluster")

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        raise self._refuse()

    def __reduce__(self) -> Any:
        raise self._refuse()

    def __repr__(self) -> str:
        return f"<{self.__module__}.{self.__qualname__}, not loaded (dryrun)>"


def _function_from_record(record: Mapping[str, Any], name: ResourceName, source: Store, *, dryrun: bool,
                          store: Mapping[str, Any] | None, system: Cluster | None = None) -> Function:
    from rh_core.function import Function

    where = source.location(name.key)
    section = record["function"]
    module, qualname = str(section["module"]), str(section["qualname"])
    call_options = dict(section.get("call_options") or {})
    if dryrun:  # nothing fetched, nothing imported, no cluster
        return Function(fn=NotLoaded(module, qualname, str(name)), name=name.short, call_options=call_options)
    code = section.get("code")
    code_dir = import_root = None
    if code:
        code_dir = _fetch_code(source, code, where)
        import_root = os.path.normpath(os.path.join(code_dir, str(code.get("import_path", "."))))
        if import_root != code_dir and not import_root.startswith(code_dir + os.sep):
            raise ResourceFormatError(f"{where} imports its code from {code.get('import_path')!r}, outside the "
                                      f"folder saved with it; save the function again with overwrite=True")
    fn = _import(module, qualname, import_root, str(name))
    function = Function(fn=fn, name=name.short, call_options=call_options)
    cluster = system or _cluster_from_reference(record.get("cluster"), where=where, store=store,
                                                shared=name.scope == SHARED)
    if cluster is None:  # saved without a cluster: it runs here until sent somewhere
        return function
    if code_dir is None:
        return function.to(cluster)
    return function.to_with_code_from(cluster, code_dir, import_root)


# -------------------------------------------------------------------------------------------------
# Builtins


def _builtin_registries() -> list[Any]:
    """Where ``^name`` is looked up: builtins (``rh_register_builtins``), then cluster presets
    (``rh_register_cluster_presets``: ``rh.cluster`` keyword arguments) when that kind exists."""
    from rh_core.errors import UnknownNameError
    from rh_core.plugin.host import default_host

    host = default_host()
    registries = [host.registry("builtin")]
    try:
        registries.append(host.registry("cluster_preset"))
    except UnknownNameError:  # a plugin host without the preset kind
        pass
    return registries


def _builtin_names() -> list[str]:
    return sorted({name for registry in _builtin_registries() for name in registry.names()})


def _builtin(name: ResourceName) -> Cluster | Function:
    """A builtin, built fresh for each load: a record, a factory's product, a copy of a registered
    cluster, or (for a cluster preset) ``rh.cluster(name=..., **preset)``."""
    from rh_core.clusters.base import Cluster
    from rh_core.clusters import from_config
    from rh_core.function import Function

    registry = next((r for r in _builtin_registries() if name.path in r.names()), None)
    if registry is None:
        raise ResourceNotFoundError(str(name), "the builtins registered by plugins", _near(name, _builtin_names()))
    target = registry.get(name.path)
    if registry.kind == "cluster_preset":
        from rh_core.cluster import cluster

        return cluster(name=name.path, **target)
    if isinstance(target, Mapping):
        record = parse_record(dump_record({"format": FORMAT, "name": name.path, **target}), f"builtin {name}")
        if record["kind"] == "cluster":
            return _cluster_from_record(record, f"builtin {name}")
        raise RhError(f"builtin {name}: builtin functions are registered as functions or factories, not records")
    if isinstance(target, Cluster):
        return from_config(target.config())
    if isinstance(target, Function):
        return target
    resource = target()
    if not isinstance(resource, (Cluster, Function)):
        raise RhError(f"builtin {name} (from plugin {registry.owner(name.path)!r}) made a {type(resource).__name__}, "
                      f"not a cluster or function")
    return resource
