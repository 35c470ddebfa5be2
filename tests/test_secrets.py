"""Secrets: read from a provider's usual local credentials or given, written owner-only where the
provider's tools look on the cluster, given to the functions sent with them and to no other, sent
only over the authenticated transport, and never in a record, a log or a repr."""

from __future__ import annotations

import json
import os
import secrets
import stat
from pathlib import Path

import pytest

import rh_core as rh
from rh_core import hookimpl
from rh_core.client.connection import Connection, read_secret
from rh_core.plugin.interfaces import SecretContents
from rh_core.plugin.host import PluginHost
from rh_core.testing import functions as fns

# Made at random, so that no file of the working directory (which saving a function archives) holds them.
AWS_KEY_ID = "AKIA" + secrets.token_hex(8).upper()
AWS_SECRET_KEY = secrets.token_urlsafe(30)
HF_TOKEN = "hf_" + secrets.token_hex(16)
OPENAI_KEY = "sk-" + secrets.token_hex(16)
ALL_VALUES = (AWS_SECRET_KEY, HF_TOKEN, OPENAI_KEY)


@pytest.fixture
def homes(tmp_path, monkeypatch):
    """The laptop's credentials under ``laptop/`` (found through the providers' own variables) and
    the cluster's home, ``HOME`` of the local server this test starts, under ``cluster-home/``."""
    laptop, cluster_home = tmp_path / "laptop", tmp_path / "cluster-home"
    laptop.mkdir()
    cluster_home.mkdir()
    for variable in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE", "AWS_REGION",
                     "AWS_DEFAULT_REGION", "HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HF_HOME",
                     "GOOGLE_APPLICATION_CREDENTIALS", "OPENAI_API_KEY"):
        monkeypatch.delenv(variable, raising=False)
    monkeypatch.setenv("HOME", str(cluster_home))
    monkeypatch.setenv("RH_HOME", str(tmp_path / "rh-home"))
    (laptop / "credentials").write_text(f"[default]\naws_access_key_id = {AWS_KEY_ID}\n"
                                        f"aws_secret_access_key = {AWS_SECRET_KEY}\n[other]\naws_access_key_id = x\n")
    (laptop / "config").write_text("[default]\nregion = eu-west-3\n")
    (laptop / "hf-token").write_text(HF_TOKEN + "\n")
    (laptop / "gcloud").mkdir()
    (laptop / "gcloud" / "application_default_credentials.json").write_text(
        json.dumps({"type": "authorized_user", "refresh_token": "1//secret-refresh", "quota_project_id": "my-proj"}))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(laptop / "credentials"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(laptop / "config"))
    monkeypatch.setenv("HF_TOKEN_PATH", str(laptop / "hf-token"))
    monkeypatch.setenv("CLOUDSDK_CONFIG", str(laptop / "gcloud"))
    return laptop, cluster_home


def mode(path: Path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def test_providers_read_the_usual_local_credentials_and_reprs_hide_them(homes):
    aws = rh.secret("aws")
    assert aws.values == {"AWS_ACCESS_KEY_ID": AWS_KEY_ID, "AWS_SECRET_ACCESS_KEY": AWS_SECRET_KEY,
                          "AWS_DEFAULT_REGION": "eu-west-3"}
    assert "[default]" in aws.files["~/.aws/credentials"] and "[other]" not in aws.files["~/.aws/credentials"]
    assert rh.secret("huggingface").values == {"HF_TOKEN": HF_TOKEN}
    gcp = rh.secret("gcp")
    assert gcp.values == {"GOOGLE_CLOUD_PROJECT": "my-proj"}
    assert "1//secret-refresh" in gcp.files["~/.config/gcloud/application_default_credentials.json"]
    custom = rh.secret(name="openai", values={"OPENAI_API_KEY": OPENAI_KEY})
    for secret in (aws, rh.secret("hf"), gcp, custom):
        assert not any(value in repr(secret) or value in str(secret) for value in (*ALL_VALUES, "1//secret-refresh"))
    assert repr(aws) == ("<Secret aws (from aws): variables AWS_ACCESS_KEY_ID, AWS_DEFAULT_REGION, "
                         "AWS_SECRET_ACCESS_KEY; files ~/.aws/config, ~/.aws/credentials>")


def test_missing_credentials_and_bad_secrets_are_named_without_their_values(homes, monkeypatch):
    laptop, _ = homes
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(laptop / "nowhere"))
    with pytest.raises(rh.SecretError, match=r"no AWS credentials here.*nowhere.*aws configure"):
        rh.secret("aws")
    with pytest.raises(rh.UnknownNameError, match="vault"):
        rh.secret("vault")
    with pytest.raises(rh.SecretError, match="'bad-name!' is not an environment variable name"):
        rh.secret(name="x", values={"bad-name!": OPENAI_KEY})
    with pytest.raises(rh.SecretError, match="value of KEY must be a string") as raised:
        rh.secret(name="x", values={"KEY": 12345})
    assert "12345" not in str(raised.value)
    with pytest.raises(rh.SecretError, match="invalid secret name"):
        rh.secret(name="../etc", values={})


def test_a_third_party_provider_is_a_plugin():
    class Vault:
        def read(self) -> SecretContents:
            return SecretContents(values={"VAULT_TOKEN": "s.vault"}, files={"~/.vault-token": "s.vault"})

    class Plugin:
        @hookimpl
        def rh_register_secret_providers(self, register):
            register("vault", Vault)

    host = PluginHost(autoload=False)
    host.register(Plugin(), name="vault-plugin")
    secret = rh.secret("vault", host=host)
    assert (secret.name, secret.provider, secret.values) == ("vault", "vault", {"VAULT_TOKEN": "s.vault"})


def test_sync_secrets_writes_owner_only_files_where_the_tools_look(homes, own_cluster):
    _, cluster_home = homes
    openai = rh.secret(name="openai", values={"OPENAI_API_KEY": OPENAI_KEY})
    assert own_cluster.sync_secrets(["aws", "huggingface", openai]) == ["aws", "huggingface", "openai"]
    credentials = cluster_home / ".aws" / "credentials"
    assert AWS_SECRET_KEY in credentials.read_text()
    assert "region = eu-west-3" in (cluster_home / ".aws" / "config").read_text()
    assert (cluster_home / ".cache" / "huggingface" / "token").read_text() == HF_TOKEN
    for path in (credentials, cluster_home / ".aws" / "config", cluster_home / ".cache" / "huggingface" / "token"):
        assert mode(path) == 0o600, path
    assert mode(cluster_home / ".aws") == 0o700
    stored = Path(own_cluster.state_dir) / "secrets"
    assert mode(stored) == 0o700
    assert sorted(p.name for p in stored.iterdir()) == ["aws.json", "huggingface.json", "openai.json"]
    assert all(mode(p) == 0o600 for p in stored.iterdir())
    listed = {item["name"]: item for item in own_cluster.secrets()}
    assert listed["openai"] == {"name": "openai", "provider": None, "variables": ["OPENAI_API_KEY"], "files": []}
    assert listed["aws"]["files"] == ["~/.aws/config", "~/.aws/credentials"]
    assert not any(value in json.dumps(listed) for value in ALL_VALUES)

    assert own_cluster.delete_secrets(["aws", "nothing-there"]) == ["aws"]
    assert not credentials.exists() and not (cluster_home / ".aws" / "config").exists()
    assert [item["name"] for item in own_cluster.secrets()] == ["huggingface", "openai"]


def test_a_function_sent_with_secrets_sees_them_and_others_never_do(homes, own_cluster):
    openai = rh.secret(name="openai", values={"OPENAI_API_KEY": OPENAI_KEY})
    with_secret = rh.function(fns.environment_variables).to(own_cluster, secrets=[openai, "huggingface"])
    without = rh.function(fns.environment_variables).to(own_cluster)
    names = ("OPENAI_API_KEY", "HF_TOKEN")
    for _ in range(3):  # alternating: a worker that held the values never runs the other function
        assert with_secret(*names) == {"OPENAI_API_KEY": OPENAI_KEY, "HF_TOKEN": HF_TOKEN}
        assert without(*names) == {"OPENAI_API_KEY": None, "HF_TOKEN": None}
    assert with_secret.map(["OPENAI_API_KEY"] * 4) == [{"OPENAI_API_KEY": OPENAI_KEY}] * 4
    assert without.map(["OPENAI_API_KEY"] * 4) == [{"OPENAI_API_KEY": None}] * 4
    assert rh.get(with_secret.remote("HF_TOKEN")) == {"HF_TOKEN": HF_TOKEN}

    # A name alone reaches a secret already on the cluster; the new values reach the same function.
    own_cluster.sync_secrets([rh.secret(name="openai", values={"OPENAI_API_KEY": "sk-rotated"})])
    by_name = rh.function(fns.environment_variable).to(own_cluster, secrets=["openai"])
    assert by_name("OPENAI_API_KEY") == "sk-rotated"
    assert with_secret("OPENAI_API_KEY") == {"OPENAI_API_KEY": "sk-rotated"}
    with pytest.raises(rh.SecretError, match=r"'anthropic' are not on cluster .*rh.secret\(name=..."):
        rh.function(fns.environment_variable).to(own_cluster, secrets=["anthropic"])

    own_cluster.delete_secrets([openai])
    with pytest.raises(rh.SecretError, match="secret 'openai' is not on this cluster"):
        by_name("OPENAI_API_KEY")
    assert without("OPENAI_API_KEY") == {"OPENAI_API_KEY": None}


def test_values_never_reach_a_saved_record_a_log_or_a_repr(homes, own_cluster, tmp_path):
    openai = rh.secret(name="openai", values={"OPENAI_API_KEY": OPENAI_KEY})
    f = rh.function(fns.environment_variable).to(own_cluster, secrets=[openai, "aws", "hf"])
    f_logged = rh.function(fns.chatty).to(own_cluster, secrets=[openai])
    assert f("OPENAI_API_KEY") == OPENAI_KEY
    f_logged(2, 0)
    rh.get(f_logged.remote(1, 0))  # a kept result, on disk
    f.save("~/with-secrets")
    own_cluster.save("~/cluster-with-secrets")
    assert not any(value in repr(f) or value in repr(own_cluster) for value in ALL_VALUES)
    own_cluster.stop_server()  # its log is complete
    state_dir, saved = Path(own_cluster.state_dir), Path(os.environ["RH_HOME"])
    kept_secrets = state_dir / "secrets"
    looked_at = [path for path in [*state_dir.rglob("*"), *saved.rglob("*")]
                 if path.is_file() and kept_secrets not in path.parents]
    for path in looked_at:
        data = path.read_bytes()
        assert not any(value.encode() in data for value in ALL_VALUES), path
    names = {path.name for path in looked_at}
    assert "server.log" in names and any(name.endswith(".log") and name != "server.log" for name in names)
    assert any(path.is_relative_to(saved) for path in looked_at)  # the saved records


def test_secrets_need_the_clusters_secret_to_be_sent(homes, running_cluster):
    import orjson

    stranger = Connection(running_cluster.connection().address, lambda: None, secret="not-the-secret")
    wire = rh.secret(name="openai", values={"OPENAI_API_KEY": OPENAI_KEY}).to_wire()
    with pytest.raises(rh.AuthenticationError):
        stranger.request("sync_secrets", {}, [orjson.dumps([wire])])
    stranger.close()
    assert running_cluster.secrets() == []
    assert read_secret(running_cluster.state_dir)  # the cluster's own secret, which the stranger lacked
