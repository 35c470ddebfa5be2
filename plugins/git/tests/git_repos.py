"""Git repositories and git servers on loopback for tests: a bare repository of a tiny pyproject
package with tagged revisions, ``git daemon``, and smart HTTP (``git http-backend`` behind wsgiref)
that can require a token."""

from __future__ import annotations

import base64
import socketserver
import subprocess
import threading
from pathlib import Path
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

import attrs

from rh_core.testing.sshd import free_port, wait_for_port

PACKAGE = "rhtest-gitpkg"
MODULE = "rhtest_gitpkg"
IDENTITY = ["-c", "user.name=rh tests", "-c", "user.email=tests@rh.invalid"]


@attrs.frozen
class Repo:
    """A bare repository under ``base``: commits of VERSION 1.0.0 (tag v1), 1.5.0 (no ref points at
    it), 2.0.0 (annotated tag v2, branches main and release-2)."""

    base: Path
    bare: Path
    commits: dict[str, str]  # version -> commit id

    @property
    def file_url(self) -> str:
        return f"file://{self.bare}"


def git(*args: str, cwd: Path) -> str:
    return subprocess.run(["git", *IDENTITY, *args], cwd=cwd, check=True, capture_output=True, text=True).stdout.strip()


def write_version(work: Path, version: str) -> None:
    # src/ layout: the repository root is a pyproject project (for pip), and src/ alone a plain
    # folder of modules (for the local method, which then only puts it on sys.path).
    (work / "pyproject.toml").write_text(
        '[build-system]\nrequires = ["setuptools>=64"]\nbuild-backend = "setuptools.build_meta"\n\n'
        f'[project]\nname = "{PACKAGE}"\nversion = "{version}"\n\n'
        f'[tool.setuptools]\npackage-dir = {{"" = "src"}}\npy-modules = ["{MODULE}"]\n'
    )
    (work / "src").mkdir(exist_ok=True)
    (work / "src" / f"{MODULE}.py").write_text(f'VERSION = "{version}"\n')


def make_repo(base: Path) -> Repo:
    work = base / "work"
    work.mkdir(parents=True)
    git("init", "--quiet", "--initial-branch=main", cwd=work)
    commits = {}
    for version in ("1.0.0", "1.5.0", "2.0.0"):
        write_version(work, version)
        git("add", "-A", cwd=work)
        git("commit", "--quiet", "-m", f"version {version}", cwd=work)
        commits[version] = git("rev-parse", "HEAD", cwd=work)
        if version == "1.0.0":
            git("tag", "v1", cwd=work)
    git("tag", "-a", "v2", "-m", "release 2", cwd=work)
    git("branch", "release-2", cwd=work)
    bare = base / f"{PACKAGE}.git"
    git("clone", "--quiet", "--bare", str(work), str(bare), cwd=base)
    return Repo(base=base, bare=bare, commits=commits)


def start_git_daemon(base: Path) -> tuple[str, subprocess.Popen]:
    """``git daemon`` exporting every repository under ``base``; returns its URL prefix."""
    port = free_port()
    log = base / f"git-daemon-{port}.log"
    process = subprocess.Popen(
        ["git", "daemon", "--reuseaddr", "--listen=127.0.0.1", f"--port={port}", f"--base-path={base}",
         "--export-all", str(base)], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=log.open("wb"))
    try:
        wait_for_port(port, process, log)
    except BaseException:
        process.kill()
        process.wait()
        raise
    return f"git://127.0.0.1:{port}", process


class _ThreadingServer(socketserver.ThreadingMixIn, WSGIServer):
    daemon_threads = True


class _Quiet(WSGIRequestHandler):
    def log_message(self, *args: object) -> None:
        pass


@attrs.define
class SmartHttp:
    """Smart HTTP for every repository under ``root``; with ``token``, every request must carry
    ``Authorization: Basic base64(<any user>:<token>)``. ``seen_authorization`` counts the requests
    that did."""

    root: Path
    token: str | None = None
    seen_authorization: int = 0
    url: str = ""
    _server: WSGIServer | None = None

    def app(self, environ, start_response):
        if self.token is not None:
            if not self._authorized(environ.get("HTTP_AUTHORIZATION", "")):
                start_response("401 Unauthorized", [("WWW-Authenticate", 'Basic realm="rh tests"'),
                                                    ("Content-Type", "text/plain")])
                return [b"token required\n"]
            self.seen_authorization += 1
        variables = {key: value for key, value in environ.items() if isinstance(value, str)}
        variables.update(GIT_PROJECT_ROOT=str(self.root), GIT_HTTP_EXPORT_ALL="1", REMOTE_USER="rh-tests")
        body = environ["wsgi.input"].read(int(environ.get("CONTENT_LENGTH") or 0))
        output = subprocess.run(["git", "http-backend"], input=body, env=variables, capture_output=True,
                                check=False).stdout
        head, _, payload = output.partition(b"\r\n\r\n")
        headers = [tuple(line.split(": ", 1)) for line in head.decode().split("\r\n") if line]
        status = next((value for key, value in headers if key.lower() == "status"), "200 OK")
        start_response(status, [(key, value) for key, value in headers if key.lower() != "status"])
        return [payload]

    def _authorized(self, header: str) -> bool:
        scheme, _, encoded = header.partition(" ")
        if scheme != "Basic":
            return False
        try:
            _, _, password = base64.b64decode(encoded).decode().partition(":")
        except ValueError:
            return False
        return password == self.token

    def start(self) -> SmartHttp:
        port = free_port()
        self._server = make_server("127.0.0.1", port, self.app, server_class=_ThreadingServer, handler_class=_Quiet)
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{port}"
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
