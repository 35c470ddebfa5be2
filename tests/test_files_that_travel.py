"""One rule decides which files of a folder travel (rh_core.support.workdir): a working directory
synced to a cluster, the code saved with a function, and a folder copied to S3 all follow it."""

from __future__ import annotations

import io
import subprocess
import tarfile

from rh_core.names import pack_directory
from rh_core.support.s3 import local_manifest
from rh_core.support.workdir import listing


def plain_folder(tmp_path):
    source = tmp_path / "project"
    (source / "data").mkdir(parents=True)
    (source / "main.py").write_text("print('hi')\n")
    (source / "data" / "big.bin").write_bytes(b"x" * 1000)
    (source / "weights.bin").write_bytes(b"w" * 10)
    (source / "keep.bin").write_bytes(b"k")
    (source / ".rhignore").write_text("data/\n*.bin\n!keep.bin\n")
    return source


def test_a_plain_folder_s_rhignore_rules_the_sync_the_saved_code_and_the_s3_copy_alike(tmp_path):
    source = plain_folder(tmp_path)
    expected = {".rhignore", "main.py", "keep.bin"}
    assert set(listing(str(source)).files) == expected
    archive, count = pack_directory(str(source))
    with tarfile.open(fileobj=io.BytesIO(archive), mode="r:gz") as tar:
        assert set(tar.getnames()) == expected and count == 3
    assert set(local_manifest(str(source))) == expected


def test_in_a_git_work_tree_gits_view_rules_them_all(tmp_path):
    source = tmp_path / "repo"
    source.mkdir()
    subprocess.run(["git", "init", "-q", str(source)], check=True)
    (source / ".gitignore").write_text("*.log\nbuild/\n")
    (source / "train.py").write_text("x = 1\n")
    (source / "run.log").write_text("noise\n")
    (source / "build").mkdir()
    (source / "build" / "out.o").write_bytes(b"\0")
    expected = {".gitignore", "train.py"}
    assert set(listing(str(source)).files) == expected
    _, count = pack_directory(str(source))
    assert count == 2
    assert set(local_manifest(str(source))) == expected
