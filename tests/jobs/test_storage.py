import pytest

from tide.jobs.readers import iter_jsonl_lines
from tide.jobs.storage import LocalLocation, StorageConfig, StorageError, resolve

LOCAL = StorageConfig()


def test_resolve_picks_the_backend_from_the_uri(tmp_path):
    assert isinstance(resolve(str(tmp_path), LOCAL), LocalLocation)
    s3 = resolve("s3://bucket/some/prefix/", LOCAL)
    assert (s3.bucket, s3.key, s3.child("part.parquet").uri) == ("bucket", "some/prefix",
                                                                  "s3://bucket/some/prefix/part.parquet")
    with pytest.raises(StorageError, match="unsupported"):
        resolve("gs://bucket/key", LOCAL)
    with pytest.raises(StorageError, match="no bucket"):
        resolve("s3:///key", LOCAL)
    assert resolve("s3://bucket/prefix", StorageConfig(retry_s=3)).child("part").retry_s == 3  # the config travels


def test_commit_replaces_the_target_whole_and_leaves_no_temporary_files(tmp_path):
    target = resolve(str(tmp_path / "out"), LOCAL).child("part-00000.parquet")
    for content in (b"first", b"second"):
        source = tmp_path / "local"
        source.write_bytes(content)
        target.commit_file(source)
    assert target.read_bytes() == b"second"
    assert resolve(str(tmp_path / "out"), LOCAL).list_names() == ["part-00000.parquet"]


def test_missing_file_is_a_storage_error_naming_it(tmp_path):
    with pytest.raises(StorageError, match="nope.jsonl"):
        resolve(str(tmp_path / "nope.jsonl"), LOCAL).open_read()


def test_jsonl_byte_range_reads_whole_lines_only(tmp_path):
    path = tmp_path / "in.jsonl"
    path.write_bytes(b'{"a":1}\n{"a":2}\n\n{"a":3}')  # blank line, and no newline at the end
    lines = list(iter_jsonl_lines(resolve(str(path), LOCAL)))
    assert [(l.row, l.data) for l in lines] == [(0, b'{"a":1}'), (1, b'{"a":2}'), (2, None), (3, b'{"a":3}')]
    middle = list(iter_jsonl_lines(resolve(str(path), LOCAL), lines[1].start, lines[3].start, first_row=1))
    assert [l.row for l in middle] == [1, 2]
