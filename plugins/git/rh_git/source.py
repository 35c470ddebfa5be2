"""Where a git package comes from, parsed on the client: ``[git+]URL[@REVISION][#subdirectory=DIR]``.

The URL is as the cluster sees it (a ``file://`` path must exist on the cluster). A password in an
``https://user:TOKEN@host/...`` URL is taken out of the URL and travels as a secret, so it is never
part of a message or the install record.
"""

from __future__ import annotations

import urllib.parse

import attrs

from rh_core.errors import InstallError

SCHEMES = ("https", "http", "ssh", "git", "file")


@attrs.frozen(kw_only=True)
class GitSource:
    url: str  # without credentials
    revision: str | None = None
    subdirectory: str | None = None
    token: str | None = attrs.field(default=None, repr=False)
    token_user: str | None = None


def parse_source(text: str) -> GitSource:
    """Split a requirement into URL, revision, subdirectory and credentials; refuse what git
    should not be handed (an unknown scheme, an option-like URL)."""
    given = text.strip()
    url = given.removeprefix("git+")
    url, _, fragment = url.partition("#")
    subdirectory = None
    for part in filter(None, fragment.split("&")):
        key, _, value = part.partition("=")
        if key == "subdirectory" and value:
            subdirectory = value.strip("/")
        elif key != "egg":
            raise InstallError(f"git requirement {_without_password(given)!r}: unknown #{key}=; only "
                               "#subdirectory=DIR (and pip's #egg=NAME) are understood")
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in SCHEMES or url.startswith("-"):
        raise InstallError(
            f"git requirement {_without_password(given)!r} needs a URL with one of the schemes "
            f"{', '.join(SCHEMES)}, like git+https://github.com/org/repo.git@v1.0 or git+file:///srv/repo.git@main"
        )
    path, at, revision = parts.path.rpartition("@") if "@" in parts.path else (parts.path, "", "")
    if at and not revision:
        raise InstallError(f"git requirement {_without_password(given)!r} ends in '@' without a revision")
    token = parts.password
    if token is not None and parts.scheme not in ("https", "http"):
        raise InstallError(f"git requirement {_without_password(given)!r}: a password in the URL only works "
                           "over https; for ssh use ssh_key=")
    netloc = parts.hostname or ""
    if ":" in netloc:
        netloc = f"[{netloc}]"  # an IPv6 address
    if parts.port:
        netloc = f"{netloc}:{parts.port}"
    user = parts.username
    if user and token is None:
        netloc = f"{user}@{netloc}"  # an ssh user (git@github.com) stays part of the URL
    clean = urllib.parse.urlunsplit((parts.scheme, netloc, path, parts.query, ""))
    if parts.scheme == "file" and not clean.startswith("file:///"):
        raise InstallError(f"git requirement {given!r}: a file URL needs an absolute path, file:///path/to/repo")
    return GitSource(url=clean, revision=revision or None, subdirectory=subdirectory,
                     token=urllib.parse.unquote(token) if token else None,
                     token_user=urllib.parse.unquote(user) if user and token else None)


def _without_password(text: str) -> str:
    """``text`` with the password of a URL in it replaced by ``***``, for messages."""
    scheme, sep, rest = text.partition("://")
    if not sep:
        return text
    netloc, slash, tail = rest.partition("/")
    userinfo, at, host = netloc.rpartition("@")
    if at and ":" in userinfo:
        netloc = f"{userinfo.split(':', 1)[0]}:***@{host}"
    return f"{scheme}{sep}{netloc}{slash}{tail}"
