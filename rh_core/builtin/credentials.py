"""Where the common tools keep their credentials on a laptop, and where they look on a cluster.

Each provider reads what the provider's own SDK would use here (environment variables first, then
its files), and returns the environment variables a function sent with the secret gets and the
files ``cluster.sync_secrets`` writes owner-only under the cluster user's home.
"""

from __future__ import annotations

import configparser
import io
import json
import os

from rh_core.errors import SecretError
from rh_core.plugin.interfaces import SecretContents


def _read(path: str) -> str | None:
    try:
        with open(os.path.expanduser(path)) as f:
            return f.read()
    except (FileNotFoundError, NotADirectoryError):
        return None


class AwsCredentials:
    """``AWS_ACCESS_KEY_ID``/``AWS_SECRET_ACCESS_KEY`` (and ``AWS_SESSION_TOKEN``) when set, else
    the ``AWS_PROFILE`` (default ``default``) profile of ``~/.aws/credentials``
    (``AWS_SHARED_CREDENTIALS_FILE``); the region from ``AWS_DEFAULT_REGION``/``AWS_REGION`` or
    ``~/.aws/config``. On the cluster: ``~/.aws/credentials`` and ``~/.aws/config`` (the profile
    becomes ``default`` there)."""

    def read(self) -> SecretContents:
        profile = os.environ.get("AWS_PROFILE") or "default"
        credentials_path = os.environ.get("AWS_SHARED_CREDENTIALS_FILE") or "~/.aws/credentials"
        if os.environ.get("AWS_ACCESS_KEY_ID") and os.environ.get("AWS_SECRET_ACCESS_KEY"):
            keys = {"aws_access_key_id": os.environ["AWS_ACCESS_KEY_ID"],
                    "aws_secret_access_key": os.environ["AWS_SECRET_ACCESS_KEY"],
                    "aws_session_token": os.environ.get("AWS_SESSION_TOKEN", "")}
        else:
            section = _ini_section(credentials_path, profile)
            if not section.get("aws_access_key_id") or not section.get("aws_secret_access_key"):
                raise SecretError(
                    f"no AWS credentials here: AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY are not set, and "
                    f"{credentials_path} has no profile {profile!r} with aws_access_key_id and aws_secret_access_key. "
                    "Run `aws configure`, or make one with rh.secret(name='aws', values={...})"
                )
            keys = {key: section.get(key, "") for key in
                    ("aws_access_key_id", "aws_secret_access_key", "aws_session_token")}
        config_path = os.environ.get("AWS_CONFIG_FILE") or "~/.aws/config"
        region = (os.environ.get("AWS_DEFAULT_REGION") or os.environ.get("AWS_REGION")
                  or _ini_section(config_path, "default" if profile == "default" else f"profile {profile}").get("region"))
        values = {"AWS_ACCESS_KEY_ID": keys["aws_access_key_id"], "AWS_SECRET_ACCESS_KEY": keys["aws_secret_access_key"]}
        if keys["aws_session_token"]:
            values["AWS_SESSION_TOKEN"] = keys["aws_session_token"]
        files = {"~/.aws/credentials": _ini_text({key: value for key, value in keys.items() if value})}
        if region:
            values["AWS_DEFAULT_REGION"] = region
            files["~/.aws/config"] = _ini_text({"region": region})
        return SecretContents(values=values, files=files)


def _ini_section(path: str, section: str) -> dict[str, str]:
    text = _read(path)
    if text is None:
        return {}
    parser = configparser.ConfigParser(interpolation=None)
    try:
        parser.read_string(text)
    except configparser.Error as exc:
        raise SecretError(f"{path} cannot be read as an INI file ({type(exc).__name__}); fix or remove it") from None
    return dict(parser[section]) if parser.has_section(section) else {}


def _ini_text(keys: dict[str, str]) -> str:
    parser = configparser.ConfigParser(interpolation=None)
    parser["default"] = keys
    out = io.StringIO()
    parser.write(out)
    return out.getvalue()


class GcpCredentials:
    """The application default credentials google-auth would use here: the file named by
    ``GOOGLE_APPLICATION_CREDENTIALS``, else ``gcloud auth application-default login``'s
    (``~/.config/gcloud/application_default_credentials.json``, under ``CLOUDSDK_CONFIG`` when set).
    On the cluster: that default path, where google-auth looks; functions get ``GOOGLE_CLOUD_PROJECT``
    when the credentials name a project."""

    DEFAULT_PATH = "~/.config/gcloud/application_default_credentials.json"

    def read(self) -> SecretContents:
        gcloud_dir = os.environ.get("CLOUDSDK_CONFIG") or "~/.config/gcloud"
        candidates = [os.environ.get("GOOGLE_APPLICATION_CREDENTIALS"),
                      os.path.join(gcloud_dir, "application_default_credentials.json")]
        for path in filter(None, candidates):
            text = _read(path)
            if text is None:
                continue
            try:
                document = json.loads(text)
            except ValueError:
                raise SecretError(f"{path} is not a JSON credentials file; fix it, or run "
                                  "`gcloud auth application-default login` again") from None
            project = document.get("project_id") or document.get("quota_project_id")
            values = {"GOOGLE_CLOUD_PROJECT": project} if isinstance(project, str) and project else {}
            return SecretContents(values=values, files={self.DEFAULT_PATH: text})
        raise SecretError(
            f"no Google Cloud credentials here: looked at {' and '.join(filter(None, candidates))}. Run "
            "`gcloud auth application-default login`, or set GOOGLE_APPLICATION_CREDENTIALS to a key file"
        )


class HuggingFaceToken:
    """``HF_TOKEN`` (or the older ``HUGGING_FACE_HUB_TOKEN``) when set, else the token file
    ``huggingface-cli login`` writes (``HF_TOKEN_PATH``, else ``$HF_HOME/token``, else
    ``~/.cache/huggingface/token``). On the cluster: ``~/.cache/huggingface/token``; functions get
    ``HF_TOKEN``."""

    def read(self) -> SecretContents:
        token = os.environ.get("HF_TOKEN") or os.environ.get("HUGGING_FACE_HUB_TOKEN")
        path = os.environ.get("HF_TOKEN_PATH") or os.path.join(os.environ.get("HF_HOME") or "~/.cache/huggingface",
                                                               "token")
        if not token:
            token = (_read(path) or "").strip()
        if not token:
            raise SecretError(f"no Hugging Face token here: HF_TOKEN is not set and {path} holds none. Run "
                              "`huggingface-cli login`, or set HF_TOKEN")
        return SecretContents(values={"HF_TOKEN": token}, files={"~/.cache/huggingface/token": token})
