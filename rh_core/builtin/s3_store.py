"""The built-in ``s3`` store: saved resources as objects in an S3 bucket (or any S3-compatible
service through ``endpoint_url``). boto3 is imported on first use, never when plugins load.

Credentials come from boto3's usual chain (environment, ``~/.aws``, an instance role, or the
``profile`` option); the config file names only the bucket, prefix, endpoint, region and profile.
"""

from __future__ import annotations

from typing import Any

from rh_core import hookimpl
from rh_core.errors import StoreError

DENIED_CODES = {"AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch", "AllAccessDisabled",
                "InvalidToken", "ExpiredToken", "403"}


@hookimpl
def rh_register_stores(register):
    register("s3", S3Store)


class S3Store:
    """Keys are object names under ``prefix/`` in ``bucket``."""

    def __init__(self, *, bucket: str | None = None, prefix: str = "", endpoint_url: str | None = None,
                 region: str | None = None, profile: str | None = None):
        if not bucket:
            raise StoreError("the s3 store needs a bucket: `rh config set store.bucket BUCKET` (or store={'backend': "
                             "'s3', 'bucket': ...})")
        self.bucket = bucket
        self.prefix = (prefix or "").strip("/")
        self.endpoint_url = endpoint_url
        self.region = region
        self.profile = profile
        self._client: Any = None

    def describe(self) -> str:
        where = f"s3://{self.bucket}/{self.prefix}".rstrip("/")
        return f"{where} (endpoint {self.endpoint_url})" if self.endpoint_url else where

    def location(self, key: str) -> str:
        return f"s3://{self.bucket}/{self._object(key)}"

    def _object(self, key: str) -> str:
        return f"{self.prefix}/{key}" if self.prefix else key

    @property
    def client(self) -> Any:
        if self._client is None:
            try:
                import boto3
                from botocore.config import Config
            except ImportError as exc:
                raise StoreError(f"the s3 store needs boto3, which is not installed ({exc.name}): pip install boto3") from exc
            session = boto3.session.Session(profile_name=self.profile, region_name=self.region)
            # Fail within seconds when the endpoint is unreachable, rather than retrying for minutes.
            config = Config(connect_timeout=5, read_timeout=30, retries={"max_attempts": 3, "mode": "standard"})
            self._client = session.client("s3", endpoint_url=self.endpoint_url, config=config)
        return self._client

    def _failure(self, exc: Exception, doing: str) -> StoreError:
        """A boto3/botocore error as a StoreError that names the store and what to do."""
        from botocore import exceptions as boto

        if isinstance(exc, boto.ClientError):
            code = str(exc.response.get("Error", {}).get("Code", ""))
            message = exc.response.get("Error", {}).get("Message", "") or str(exc)
            if code in DENIED_CODES:
                return StoreError(f"access to the shared store {self.describe()} was denied while {doing} ({code}: "
                                  f"{message}); check your AWS credentials (AWS_PROFILE, ~/.aws/credentials, "
                                  f"store.profile) and the bucket's policy")
            if code == "NoSuchBucket":
                return StoreError(f"the shared store's bucket {self.bucket!r} does not exist at "
                                  f"{self.endpoint_url or 'AWS'}; create it or fix store.bucket")
            return StoreError(f"the shared store {self.describe()} failed while {doing}: {code}: {message}")
        if isinstance(exc, boto.NoCredentialsError):
            return StoreError(f"no AWS credentials were found for the shared store {self.describe()}; set "
                              f"AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, run `aws configure`, or set store.profile")
        if isinstance(exc, (boto.EndpointConnectionError, boto.ConnectTimeoutError, boto.ReadTimeoutError)):
            return StoreError(f"the shared store {self.describe()} cannot be reached while {doing} ({exc}); "
                              f"check your network and store.endpoint_url")
        return StoreError(f"the shared store {self.describe()} failed while {doing}: {type(exc).__name__}: {exc}")

    def read(self, key: str) -> bytes | None:
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            reply = self.client.get_object(Bucket=self.bucket, Key=self._object(key))
            return reply["Body"].read()
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in ("NoSuchKey", "404"):
                return None
            raise self._failure(exc, f"reading {key}") from exc
        except BotoCoreError as exc:
            raise self._failure(exc, f"reading {key}") from exc

    def write(self, key: str, data: bytes) -> None:
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            self.client.put_object(Bucket=self.bucket, Key=self._object(key), Body=data)
        except (BotoCoreError, ClientError) as exc:
            raise self._failure(exc, f"writing {key}") from exc

    def delete(self, key: str) -> bool:
        if self.read(key) is None:
            return False
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            self.client.delete_object(Bucket=self.bucket, Key=self._object(key))
        except (BotoCoreError, ClientError) as exc:
            raise self._failure(exc, f"deleting {key}") from exc
        return True

    def keys(self, prefix: str = "") -> list[str]:
        from botocore.exceptions import BotoCoreError, ClientError

        base = f"{self.prefix}/" if self.prefix else ""
        found = []
        try:
            for page in self.client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=base + prefix):
                found.extend(item["Key"][len(base):] for item in page.get("Contents", ()))
        except (BotoCoreError, ClientError) as exc:
            raise self._failure(exc, "listing") from exc
        return sorted(found)
