"""jobs/storage.py against local folders and a real S3 server (SeaweedFS, see tests/s3server.py)."""

from __future__ import annotations

import errno
import os
import pickle
import time
import uuid

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from s3server import free_ports

from jobs import storage
from jobs.storage import StorageError, StorageOptions

BUCKET = "storage-tests"


@pytest.fixture(params=["local", "s3"])
def root(request, tmp_path) -> str:
    """An empty folder: a local tmp dir, or a fresh prefix in a bucket on the test server (AWS_* env set)."""
    if request.param == "local":
        return str(tmp_path / "root")
    server = request.getfixturevalue("s3_env")
    return storage.join(server.make_bucket(BUCKET), uuid.uuid4().hex)


def assert_one_line_naming(error: StorageError, url: str, *secrets: str) -> str:
    message = str(error)
    assert "\n" not in message
    assert message.startswith(f"{url}: ")
    for secret in secrets:
        assert secret not in message
    return message


def test_join():
    assert storage.join("s3://b", "x", "y.parquet") == "s3://b/x/y.parquet"
    assert storage.join("s3://b/prefix/", "/x/", "y") == "s3://b/prefix/x/y"
    assert storage.join("/data/out", "x", "y.parquet") == os.path.join("/data/out", "x", "y.parquet")
    assert storage.is_s3("s3://b/x") and not storage.is_s3("/data/s3://x")


def test_write_read_round_trip(root):
    url = storage.join(root, "nested", "blob.bin")
    data = bytes(range(256)) * 100
    storage.write_bytes_atomic(url, data)
    assert storage.read_bytes(url) == data
    with storage.open_input(url, block_size=1024) as f:
        f.seek(1000)
        assert f.read(10) == data[1000:1010]
    storage.write_bytes_atomic(url, b"replaced")
    assert storage.read_bytes(url) == b"replaced"


def test_write_parquet_then_read_with_pyarrow(root):
    table = pa.table({"image_id": [1, 2, 3], "keypoints": [[0.5, 1.5], [2.0, 3.0], []]})
    url = storage.join(root, "shards", "part-0000.parquet")
    storage.write_parquet_atomic(table, url)

    pa_fs, path = storage.pyarrow_filesystem(url)
    assert pq.read_table(path, filesystem=pa_fs).equals(table)
    fs, path = storage.filesystem(url)
    with fs.open(path, "rb") as f:
        parquet_file = pq.ParquetFile(f)
        assert parquet_file.metadata.row_group(0).column(0).compression == "ZSTD"
        assert parquet_file.read().equals(table)
    # A folder of shards reads as one dataset, as Ray Data and pyarrow.dataset do.
    pa_fs, folder = storage.pyarrow_filesystem(storage.join(root, "shards"))
    assert pq.read_table(folder, filesystem=pa_fs).num_rows == 3


def test_list_files_recursive_with_mixed_case_suffixes(root):
    for name in ["a.JPG", "sub/b.jpg", "sub/deeper/c.Jpeg", "sub/d.png", "notes.txt"]:
        storage.write_bytes_atomic(storage.join(root, *name.split("/")), b"x")
    absolute_root = root if storage.is_s3(root) else os.path.abspath(root)

    images = storage.list_files(root, suffixes=(".jpg", ".JPEG"))
    assert images == sorted(
        storage.join(absolute_root, *n.split("/")) for n in ["a.JPG", "sub/b.jpg", "sub/deeper/c.Jpeg"]
    )
    assert len(storage.list_files(root)) == 5
    if storage.is_s3(root):  # the prefix "su" is not the folder "sub"
        assert storage.list_files(storage.join(root, "su")) == []
    assert storage.list_files(root, recursive=False) == sorted(
        storage.join(absolute_root, n) for n in ["a.JPG", "notes.txt"]
    )


def test_exists(root):
    url = storage.join(root, "folder", "file.bin")
    assert not storage.exists(url)
    storage.write_bytes_atomic(url, b"x")
    assert storage.exists(url)
    assert storage.exists(storage.join(root, "folder"))
    assert not storage.exists(storage.join(root, "other"))


def test_check_readable_and_writable_accept_good_locations(root):
    storage.check_writable(storage.join(root, "out", "not-yet-created"))
    storage.write_bytes_atomic(storage.join(root, "in", "x.bin"), b"x")
    storage.check_readable(storage.join(root, "in"))
    storage.check_readable(storage.join(root, "in", "x.bin"))
    # The checks leave nothing behind: no created folders, no S3 probe object.
    assert storage.list_files(root) == [
        storage.join(root if storage.is_s3(root) else os.path.abspath(root), "in", "x.bin")
    ]


def test_missing_bucket(s3_env):
    url = "s3://no-such-bucket-here/images"
    for call in (storage.check_readable, storage.check_writable, storage.list_files, storage.read_bytes):
        with pytest.raises(StorageError) as excinfo:
            call(url)
        message = assert_one_line_naming(excinfo.value, url)
        assert "bucket 'no-such-bucket-here' does not exist" in message


def test_missing_s3_prefix(s3_env):
    url = storage.join(s3_env.make_bucket(BUCKET), "never-written")
    with pytest.raises(StorageError, match="no such object or prefix"):
        storage.check_readable(url)
    assert storage.list_files(url) == []
    assert storage.list_files(url, recursive=False) == []


def test_wrong_secret_is_access_denied_without_leaking_it(s3_env, monkeypatch):
    bucket = s3_env.make_bucket(BUCKET)
    wrong_secret = "wrong-" + uuid.uuid4().hex
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", wrong_secret)
    for call in (storage.check_readable, storage.check_writable, storage.list_files):
        with pytest.raises(StorageError) as excinfo:
            call(bucket)
        message = assert_one_line_naming(excinfo.value, bucket, wrong_secret, s3_env.secret_key)
        assert "access denied with the configured credentials" in message


def test_read_only_identity_can_read_but_not_write(s3_env, monkeypatch):
    bucket = s3_env.make_bucket(BUCKET)
    storage.write_bytes_atomic(storage.join(bucket, "readable.bin"), b"x")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", s3_env.read_only_access_key)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", s3_env.read_only_secret_key)
    storage.check_readable(bucket)
    assert storage.read_bytes(storage.join(bucket, "readable.bin")) == b"x"
    with pytest.raises(StorageError, match="access denied") as excinfo:
        storage.check_writable(storage.join(bucket, "out"))
    assert_one_line_naming(excinfo.value, storage.join(bucket, "out"), s3_env.read_only_secret_key)


def test_anonymous_requests_to_a_private_bucket(s3_env):
    bucket = s3_env.make_bucket(BUCKET)
    with pytest.raises(StorageError, match="access denied to anonymous requests"):
        storage.check_readable(bucket, StorageOptions(anon=True))


def test_missing_credentials_and_profile(s3_env, monkeypatch, tmp_path):
    bucket = s3_env.make_bucket(BUCKET)
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-credentials"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-config"))
    with pytest.raises(StorageError, match="no AWS credentials found"):
        storage.check_readable(bucket)
    monkeypatch.setenv("AWS_PROFILE", "no-such-profile")
    with pytest.raises(StorageError, match="AWS profile 'no-such-profile' not found"):
        storage.check_readable(bucket)


def test_unreachable_endpoint(s3_env, monkeypatch):
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")  # botocore's default retries with backoff take ~10 s
    endpoint = f"http://127.0.0.1:{free_ports(1)[0]}"  # nothing listens there
    url = "s3://any-bucket/x"
    started = time.monotonic()
    with pytest.raises(StorageError) as excinfo:
        storage.check_readable(url, StorageOptions(endpoint_url=endpoint, retry_seconds=1.5))
    assert time.monotonic() - started >= 1.5, "retried for the whole window"
    message = assert_one_line_naming(excinfo.value, url, s3_env.secret_key)
    assert message.startswith(
        f"{url}: cannot reach endpoint {endpoint} after retrying for 1.5 s (check --endpoint-url / AWS_ENDPOINT_URL"
    )
    assert excinfo.value.exit_code == 2


def test_transient_failures_are_told_apart():
    import botocore.exceptions

    def client_error(status: int, code: str) -> Exception:
        return botocore.exceptions.ClientError(
            {"Error": {"Code": code}, "ResponseMetadata": {"HTTPStatusCode": status}}, "GetObject"
        )

    translated = OSError(5, "SlowDown")
    translated.__cause__ = client_error(503, "SlowDown")
    for transient in (
        client_error(503, "SlowDown"),
        client_error(500, "InternalError"),
        translated,
        ConnectionResetError(),
        TimeoutError(),
        botocore.exceptions.EndpointConnectionError(endpoint_url="http://x"),
        botocore.exceptions.ConnectionClosedError(endpoint_url="http://x"),
    ):
        assert storage.is_transient(transient), transient
    for lasting in (
        client_error(403, "AccessDenied"),
        client_error(404, "NoSuchBucket"),
        FileNotFoundError(),
        PermissionError(),
        ValueError(),
    ):
        assert not storage.is_transient(lasting), lasting


@pytest.mark.parametrize(
    "code, words", [(errno.ENOSPC, "no space left on device"), (errno.EROFS, "read-only file system")]
)
def test_full_or_read_only_disk_is_one_line(tmp_path, monkeypatch, code, words):
    url = str(tmp_path / "dest" / "images" / "shard.parquet")

    def fail(table, where, **kwargs):
        raise OSError(code, os.strerror(code))

    monkeypatch.setattr(storage.pq, "write_table", fail)
    with pytest.raises(StorageError) as excinfo:
        storage.write_parquet_atomic(pa.table({"x": [1]}), url)
    assert words in assert_one_line_naming(excinfo.value, url) and excinfo.value.exit_code == 2


def test_missing_local_folder(tmp_path):
    url = str(tmp_path / "no" / "such" / "dir")
    for call in (storage.check_readable, storage.list_files, storage.read_bytes, storage.open_input):
        with pytest.raises(StorageError) as excinfo:
            call(url)
        assert str(excinfo.value) == f"{url}: no such file or directory"


def test_local_output_under_a_file_is_not_writable(tmp_path):
    (tmp_path / "file").write_bytes(b"x")
    url = str(tmp_path / "file" / "out")
    with pytest.raises(StorageError, match="is a file, not a directory"):
        storage.check_writable(url)


def test_atomic_local_write_leaves_no_temporary_files(tmp_path):
    url = str(tmp_path / "out" / "shard.parquet")
    storage.write_parquet_atomic(pa.table({"x": [1, 2]}), url)
    storage.write_bytes_atomic(str(tmp_path / "out" / "blob.bin"), b"x")
    assert sorted(os.listdir(tmp_path / "out")) == ["blob.bin", "shard.parquet"]
    umask = os.umask(0)
    os.umask(umask)
    assert os.stat(url).st_mode & 0o777 == 0o666 & ~umask  # as if written directly


def test_only_dead_writers_temporaries_are_removed(tmp_path):
    """A run cleaning up a killed run's temporaries must not delete those of a run writing into the
    same folder at the same time (that run would die with a traceback from os.replace)."""
    import subprocess

    dead = subprocess.Popen(["true"])
    dead.wait()
    host, uuid = storage._this_host(), "0123456789abcdef0123456789abcdef"
    names = {
        "live": f".a.parquet.{uuid}-{os.getpid()}@{host}.tmp",  # this process: alive
        "dead": f".b.parquet.{uuid}-{dead.pid}@{host}.tmp",
        "elsewhere": f".c.parquet.{uuid}-{dead.pid}@another-machine.tmp",  # unknown: kept while young
        "old-elsewhere": f".d.parquet.{uuid}-1@another-machine.tmp",
        "unnamed": f".e.parquet.{uuid}.tmp",  # written before temporaries named their writer
        "not-ours": ".f.parquet.tmp",
    }
    (tmp_path / "sub").mkdir()
    for name in names.values():
        (tmp_path / "sub" / name).write_bytes(b"x")
    now = os.path.getmtime(tmp_path / "sub" / names["live"])
    for key in ("old-elsewhere", "unnamed"):
        os.utime(tmp_path / "sub" / names[key], (now - storage.STALE_TEMPORARY_S - 10,) * 2)
    assert storage.remove_stale_temporaries(str(tmp_path), now=now) == 3
    assert sorted(os.listdir(tmp_path / "sub")) == sorted(names[k] for k in ("live", "elsewhere", "not-ours"))
    with storage._local_temporary_file(str(tmp_path / "g.bin")) as temporary:  # the writer's own name
        assert storage._TEMPORARY_NAME.match(os.path.basename(temporary))["pid"] == str(os.getpid())
        open(temporary, "wb").close()
        assert storage.remove_stale_temporaries(str(tmp_path), now=now) == 0


def test_failed_local_write_leaves_no_partial_file(tmp_path, monkeypatch):
    url = str(tmp_path / "shard.parquet")
    storage.write_bytes_atomic(url, b"previous complete file")

    def write_half_then_fail(table, where, **kwargs):
        with open(where, "wb") as f:
            f.write(b"PAR1 half a file")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(storage.pq, "write_table", write_half_then_fail)
    with pytest.raises(StorageError, match="no space left on device"):
        storage.write_parquet_atomic(pa.table({"x": [1]}), url)
    assert os.listdir(tmp_path) == ["shard.parquet"]
    assert storage.read_bytes(url) == b"previous complete file"


def test_options_and_pyarrow_filesystem_pickle_without_secrets(s3_env):
    options = StorageOptions(endpoint_url=s3_env.endpoint_url, region="us-east-1")
    assert pickle.loads(pickle.dumps(options)) == options
    url = storage.join(s3_env.make_bucket(BUCKET), "pickled.bin")
    storage.write_bytes_atomic(url, b"x", options)
    pa_fs, path = storage.pyarrow_filesystem(url, options)
    pickled = pickle.dumps(pa_fs)
    assert s3_env.secret_key.encode() not in pickled
    with pickle.loads(pickled).open_input_file(path) as f:
        assert f.read() == b"x"
