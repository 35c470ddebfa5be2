"""Folders in S3 (or any S3-compatible store) kept in step with local ones, through boto3.

A folder at ``s3://bucket/prefix`` holds its files under ``prefix/`` and a manifest
(``prefix/.rh-manifest.json``: relative path → sha256 and size). Uploads and downloads compare
manifests and move only the files that differ; the manifest's own digest names the folder's content.
"""

from __future__ import annotations

import hashlib
import json
import os
import stat
from typing import Any

from rh_core.support.compat import file_digest
from rh_core.support.workdir import listing
from rh_core.errors import RhError

MANIFEST = ".rh-manifest.json"


def parse_url(url: str) -> tuple[str, str]:
    if not url.startswith("s3://") or len(url) <= len("s3://"):
        raise ValueError(f"{url!r} is not an S3 location; write it as s3://bucket/prefix")
    bucket, _, prefix = url[len("s3://"):].partition("/")
    return bucket, prefix.strip("/")


def endpoint_from_environment() -> str | None:
    """The S3 endpoint boto3 would use from this environment (``AWS_ENDPOINT_URL_S3`` or
    ``AWS_ENDPOINT_URL``), so a cluster can be told to use the same one."""
    return os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")


def client(endpoint_url: str | None = None):
    try:
        import boto3
    except ImportError:
        raise RhError("S3 locations need boto3: pip install boto3") from None
    return boto3.client("s3", endpoint_url=endpoint_url or endpoint_from_environment())


def _key(prefix: str, relative: str) -> str:
    return f"{prefix}/{relative}" if prefix else relative


def local_manifest(path: str) -> dict[str, dict[str, Any]]:
    """Relative path → {sha256, size} of every file of ``path`` that travels (the one rule of
    :mod:`rh_core.support.workdir`: git's view in a work tree, else all but what ``.rhignore``
    excludes), links left out."""

    manifest = {}
    for relative, info in sorted(listing(path).files.items()):
        if relative == MANIFEST or not stat.S_ISREG(info.st_mode):
            continue
        with open(os.path.join(path, relative), "rb") as f:
            digest = file_digest(f, "sha256").hexdigest()
        manifest[relative] = {"sha256": digest, "size": info.st_size}
    return manifest


def manifest_digest(manifest: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(manifest, sort_keys=True).encode()).hexdigest()[:16]


def _where(bucket: str, prefix: str) -> str:
    return f"s3://{bucket}/{prefix}"


def remote_manifest(s3, bucket: str, prefix: str) -> dict[str, dict[str, Any]] | None:
    """The manifest at the location, or None when nothing was uploaded there."""
    from botocore.exceptions import ClientError

    try:
        body = s3.get_object(Bucket=bucket, Key=_key(prefix, MANIFEST))["Body"].read()
    except ClientError as exc:
        code = exc.response.get("Error", {}).get("Code")
        if code in ("NoSuchKey", "404"):
            return None
        raise RhError(f"could not read {_where(bucket, prefix)}: {code}: {exc}") from None
    return json.loads(body)


def upload_directory(path: str, bucket: str, prefix: str, *, endpoint_url: str | None = None) -> dict[str, int]:
    """Make ``s3://bucket/prefix`` hold the files under ``path``; returns counts of files
    ``uploaded``, ``unchanged`` and ``deleted``."""
    from botocore.exceptions import BotoCoreError, ClientError

    s3 = client(endpoint_url)
    ours = local_manifest(path)
    try:
        theirs = remote_manifest(s3, bucket, prefix) or {}
        changed = [relative for relative, entry in ours.items() if theirs.get(relative) != entry]
        for relative in changed:
            s3.upload_file(os.path.join(path, relative), bucket, _key(prefix, relative))
        removed = [relative for relative in theirs if relative not in ours]
        for relative in removed:
            s3.delete_object(Bucket=bucket, Key=_key(prefix, relative))
        s3.put_object(Bucket=bucket, Key=_key(prefix, MANIFEST), Body=json.dumps(ours, indent=1).encode())
    except (BotoCoreError, ClientError) as exc:
        raise RhError(f"could not upload {path} to {_where(bucket, prefix)}: {exc}") from None
    return {"uploaded": len(changed), "unchanged": len(ours) - len(changed), "deleted": len(removed)}


def download_directory(bucket: str, prefix: str, path: str, *, endpoint_url: str | None = None) -> str:
    """Make ``path`` hold the files of ``s3://bucket/prefix`` (only changed files are fetched);
    returns the digest of the folder's manifest."""
    from botocore.exceptions import BotoCoreError, ClientError

    s3 = client(endpoint_url)
    try:
        theirs = remote_manifest(s3, bucket, prefix)
        if theirs is None:
            raise RhError(f"nothing was uploaded to {_where(bucket, prefix)}: upload it with rh.package(path=...).to(url)")
        os.makedirs(path, exist_ok=True)
        ours = local_manifest(path)
        for relative, entry in theirs.items():
            if ours.get(relative) != entry:
                target = os.path.join(path, relative)
                os.makedirs(os.path.dirname(target), exist_ok=True)
                s3.download_file(bucket, _key(prefix, relative), target)
        for relative in ours:
            if relative not in theirs:
                os.unlink(os.path.join(path, relative))
    except (BotoCoreError, ClientError) as exc:
        raise RhError(f"could not download {_where(bucket, prefix)}: {exc}") from None
    return manifest_digest(theirs)
