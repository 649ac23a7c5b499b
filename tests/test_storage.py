"""teacher_cache.storage: the same Store interface on a local folder and on a real S3 HTTP server (moto, 127.0.0.1)."""

from __future__ import annotations

import time
import uuid
from pathlib import Path

import pyarrow as pa
import pytest

from teacher_cache.base.errors import UserError
from teacher_cache.storage import Store, store_for
from tests.conftest import free_port

pytest.importorskip("moto.server")


@pytest.fixture(params=["local", "s3"])
def store(request, tmp_path) -> Store:
    """The same interface on a local folder and on an S3 prefix."""
    if request.param == "local":
        return Store.open(tmp_path / "store")
    bucket = request.getfixturevalue("s3_env")
    return Store.open(f"s3://{bucket}/some/prefix")


def test_put_read_list_size_remove_round_trip(store, tmp_path):
    store.put("manifest.json", '{"a": 1}\n')
    store.put("tokenizer/vocab.txt", b"[PAD]\n[UNK]\n")
    local = tmp_path / "blob.bin"
    local.write_bytes(bytes(range(256)) * 1000)
    store.put("shard-00000.arrow", local)
    assert store.read_bytes("manifest.json") == b'{"a": 1}\n'
    assert store.read_bytes("shard-00000.arrow") == local.read_bytes()
    assert store.size("shard-00000.arrow") == 256_000
    assert store.list() == ["manifest.json", "shard-00000.arrow", "tokenizer/vocab.txt"]
    assert store.list("shard-*.arrow") == ["shard-00000.arrow"]
    assert store.exists("tokenizer/vocab.txt") and not store.exists("nothing.txt")
    with store.open_input("shard-00000.arrow") as source:
        assert source.read_at(3, 256) == bytes([0, 1, 2])
    store.put("manifest.json", b"{}")  # a second put replaces the object whole
    assert store.read_bytes("manifest.json") == b"{}"
    store.remove("shard-00000.arrow")
    store.remove("shard-00000.arrow")  # already gone: no error
    assert store.list("*.arrow") == [] and not store.exists("shard-00000.arrow")


def test_missing_object_is_one_line_naming_its_url(store):
    for call in (lambda: store.read_bytes("gone.json"), lambda: store.size("gone.json"),
                 lambda: store.open_input("gone.json")):
        with pytest.raises(UserError) as info:
            call()
        message = str(info.value)
        assert message == f"{store.where('gone.json')}: no such object" and "\n" not in message


@pytest.mark.parametrize("name", ["../outside", "/abs/path", "a//b", "a/./b", "back\\slash", ""])
def test_names_outside_the_store_are_refused(store, name):
    with pytest.raises(UserError, match="plain relative name"):
        store.remove(name)
    with pytest.raises(UserError, match="plain relative name"):
        store.put(name, b"x")


def test_put_if_absent_claims_once_locally(tmp_path):
    store = Store.open(tmp_path / "store")
    assert store.supports_put_if_absent
    assert store.put_if_absent("write.lock", "pid 1\n") is True
    assert store.put_if_absent("write.lock", "pid 2\n") is False
    assert store.read_bytes("write.lock") == b"pid 1\n"
    assert store.list() == ["write.lock"]  # no temporary file left behind


def test_put_if_absent_is_refused_on_s3_not_raced(s3_env):
    store = Store.open(f"s3://{s3_env}/c")
    assert not store.supports_put_if_absent
    with pytest.raises(UserError, match=rf"^s3://{s3_env}/c/write.lock: .*locks are local only"):
        store.put_if_absent("write.lock", b"x")


def test_cache_folder_uploaded_and_read_back_byte_equal(tiny_cache, s3_env):
    local = store_for(tiny_cache)
    remote = store_for(f"s3://{s3_env}/caches/tiny")
    names = local.list()
    assert "manifest.json" in names and len(local.list("shard-*.arrow")) == 3
    for name in names:
        remote.put(name, local.local_path(name))
    assert remote.list() == names
    for name in names:
        assert remote.size(name) == local.size(name)
        assert remote.read_bytes(name) == local.read_bytes(name)
    for name in local.list("shard-*.arrow"):  # random access: Arrow reads the footer, then the batches
        with local.open_input(name) as a, remote.open_input(name) as b:
            assert pa.ipc.open_file(b).read_all().equals(pa.ipc.open_file(a).read_all())


def test_file_url_and_plain_path_are_the_same_store(tmp_path):
    Store.open(tmp_path).put("x.txt", b"1")
    assert Store.open(f"file://{tmp_path}").read_bytes("x.txt") == b"1"
    assert Store.open(str(tmp_path)).is_local and Store.open(f"file://{tmp_path}").is_local


def test_fsspec_memory_store_has_the_same_interface():
    pytest.importorskip("fsspec")
    store = Store.open(f"memory://tc-{uuid.uuid4().hex[:8]}/cache")
    store.put("a/b.txt", b"hi")
    assert store.read_bytes("a/b.txt") == b"hi" and store.list() == ["a/b.txt"] and store.size("a/b.txt") == 2


def test_unknown_scheme_is_one_line_naming_the_url():
    with pytest.raises(UserError) as info:
        Store.open("nosuchscheme://bucket/cache")
    assert str(info.value).startswith("nosuchscheme://bucket/cache: unknown storage scheme nosuchscheme://")


def test_s3_url_without_bucket_is_refused():
    with pytest.raises(UserError, match=r"^s3://: no bucket"):
        Store.open("s3://")


def test_missing_bucket_is_one_line_naming_it(s3_env):
    store = Store.open("s3://tc-no-such-bucket/cache")
    for call in (store.list, lambda: store.read_bytes("manifest.json"), lambda: store.put("m.json", b"{}")):
        with pytest.raises(UserError, match=r"^s3://tc-no-such-bucket/cache(/m\w*\.json)?: .*no such bucket") as info:
            call()
        assert "\n" not in str(info.value)


def test_wrong_credentials_are_one_line(s3_env, monkeypatch):
    """moto accepts any key unless its IAM checks are switched on: make a real user, then present a wrong key."""
    import boto3
    from moto import settings

    iam = boto3.client("iam", region_name="us-east-1")
    iam.create_user(UserName="reader")
    iam.put_user_policy(UserName="reader", PolicyName="all", PolicyDocument=(
        '{"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "*", "Resource": "*"}]}'))
    key = iam.create_access_key(UserName="reader")["AccessKey"]
    monkeypatch.setattr(settings, "INITIAL_NO_AUTH_ACTION_COUNT", 0)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", key["AccessKeyId"])
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", key["SecretAccessKey"])
    Store.open(f"s3://{s3_env}/c").put("ok.txt", b"1")  # the right key works
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "not-the-secret")
    with pytest.raises(UserError, match=rf"^s3://{s3_env}/c/ok.txt: cannot .*access denied") as info:
        Store.open(f"s3://{s3_env}/c").read_bytes("ok.txt")
    assert "\n" not in str(info.value)


def test_unreachable_endpoint_fails_within_seconds(s3_env, monkeypatch):
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{free_port()}")  # a closed port
    store = Store.open("s3://bucket/cache")
    for call in (store.list, lambda: store.read_bytes("manifest.json"), lambda: store.put("m.json", b"{}")):
        start = time.monotonic()
        with pytest.raises(UserError, match=r"^s3://bucket/cache\S*: cannot .*endpoint unreachable") as info:
            call()
        assert time.monotonic() - start < 10, "an unreachable endpoint must fail fast"
        assert "\n" not in str(info.value)


def test_bad_endpoint_variable_names_it(monkeypatch):
    monkeypatch.delenv("AWS_ENDPOINT_URL_S3", raising=False)
    monkeypatch.setenv("AWS_ENDPOINT_URL", "ftp://host")
    with pytest.raises(UserError, match=r"^AWS_ENDPOINT_URL=ftp://host: not an http"):
        Store.open("s3://bucket/cache")


def test_local_store_path_is_absolute(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert Path(Store.open("rel/folder").local_path("x")) == tmp_path / "rel" / "folder" / "x"
