"""A conda channel on disk for tests: hand-assembled ``noarch: generic`` packages (files and shell
scripts, no Python), indexed with ``rattler.index``."""

from __future__ import annotations

import asyncio
import hashlib
import io
import json
import os
import tarfile
import time


def build_package(channel: str, name: str, version: str, files: dict[str, str], *,
                  depends: tuple[str, ...] = (), build: str = "0") -> str:
    """Write ``<channel>/noarch/<name>-<version>-<build>.tar.bz2`` holding ``files`` (path in the
    prefix → text; paths under ``bin/`` are executable). Returns its path."""
    noarch = os.path.join(channel, "noarch")
    os.makedirs(noarch, exist_ok=True)
    now = int(time.time())
    index = {"name": name, "version": version, "build": build, "build_number": 0, "depends": list(depends),
             "noarch": "generic", "subdir": "noarch", "license": "MIT", "timestamp": now * 1000}
    paths = {"paths_version": 1, "paths": [
        {"_path": path, "path_type": "hardlink", "sha256": hashlib.sha256(text.encode()).hexdigest(),
         "size_in_bytes": len(text.encode())} for path, text in files.items()]}
    members = {"info/index.json": json.dumps(index), "info/paths.json": json.dumps(paths),
               "info/files": "".join(f"{path}\n" for path in files), **files}
    target = os.path.join(noarch, f"{name}-{version}-{build}.tar.bz2")
    with tarfile.open(target, "w:bz2") as archive:
        for path, text in members.items():
            data = text.encode()
            member = tarfile.TarInfo(path)
            member.size, member.mtime = len(data), now
            member.mode = 0o755 if path.startswith("bin/") else 0o644
            archive.addfile(member, io.BytesIO(data))
    return target


def hello_package(channel: str, version: str) -> str:
    """``rhtest-hello``: a ``bin/rhtest-hello`` script printing its version, and a data file."""
    return build_package(channel, "rhtest-hello", version, {
        "bin/rhtest-hello": f"#!/bin/sh\necho rhtest-hello {version}\n",
        "share/rhtest-hello/hello.txt": f"hello {version}\n",
    })


def index(channel: str) -> None:
    """Write the channel's repodata (``noarch`` and the current platform's, empty)."""
    import rattler.index
    from rattler.platform import Subdir

    os.makedirs(os.path.join(channel, str(Subdir.current())), exist_ok=True)
    asyncio.run(rattler.index.index_fs(channel, force=True))


def build_test_channel(channel: str) -> str:
    """rhtest-hello 1.0 and 2.0, rhtest-greeter 1.0 (needs rhtest-hello >=2), rhtest-other 1.0."""
    hello_package(channel, "1.0")
    hello_package(channel, "2.0")
    greeter = "#!/bin/sh\nrhtest-hello | sed 's/^/greeter: /'\n"
    build_package(channel, "rhtest-greeter", "1.0", {"bin/rhtest-greeter": greeter}, depends=("rhtest-hello >=2",))
    build_package(channel, "rhtest-other", "1.0", {"share/rhtest-other/other.txt": "other 1.0\n"})
    index(channel)
    return channel
