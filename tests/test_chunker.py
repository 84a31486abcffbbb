"""FileChunker: cuts a file into chunk messages that decode back to the file."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest
from s3transfer_stream import _core
from s3transfer_stream.errors import ConfigError

CHUNK = 1000


def write(path: Path, content: bytes, mtime_ns: int | None = None) -> Path:
    path.write_bytes(content)
    if mtime_ns is not None:
        os.utime(path, ns=(mtime_ns, mtime_ns))
    return path


def content(n: int) -> bytes:
    return bytes((i * 7 + i // 251) % 256 for i in range(n))


CASES = {
    "empty": 0,
    "one_byte": 1,
    "one_chunk_minus_1": CHUNK - 1,
    "exactly_one_chunk": CHUNK,
    "exactly_two_chunks": 2 * CHUNK,
    "two_chunks_plus_1": 2 * CHUNK + 1,
    "many_chunks": 10 * CHUNK + 17,
}


@pytest.mark.parametrize("size", CASES.values(), ids=CASES.keys())
def test_messages_decode_back_to_the_file(size: int, tmp_path: Path) -> None:
    body = content(size)
    path = write(tmp_path / "f.bin", body, 1_700_000_000_123_456_789)
    fc = _core.FileChunker(path, CHUNK)
    n = max(1, -(-size // CHUNK))
    assert (fc.size, fc.n_chunks, fc.chunk_size) == (size, n, CHUNK)
    assert fc.file_hash == hashlib.sha512(body).digest() == _core.sha512(body)
    assert fc.file_mtime == os.stat(path).st_mtime

    msgs = fc.messages(1, fc.n_chunks, "sub/dir", "f.bin", "_x")
    assert len(msgs) == n
    rebuilt = b""
    for i, buf in enumerate(msgs, 1):
        assert isinstance(buf, _core.Buffer)
        value = bytes(buf)
        assert len(buf) == len(value) == memoryview(buf).nbytes
        assert memoryview(buf).readonly
        d = _core.decode_chunk(value)
        assert d.filename == "f.bin"
        assert d.subdir_str == "sub/dir"
        assert d.filename_append == "_x"
        assert d.rel_path == "sub/dir/f.bin"
        assert d.rel_output_path == "sub/dir/f_x.bin"
        assert d.chunk_i == i
        assert d.n_total_chunks == n
        assert d.chunk_offset_write == (i - 1) * CHUNK == len(rebuilt)
        assert len(d.data) == (CHUNK if i < n else size - (n - 1) * CHUNK)
        assert d.chunk_hash == hashlib.sha512(d.data).digest()
        assert d.file_hash == fc.file_hash
        assert d.n_fields == 10
        assert d.file_mtime == os.stat(path).st_mtime
        # The same message our encoder makes from the decoded fields.
        assert value == _core.encode_chunk(
            d.filename, d.file_hash, d.chunk_hash, d.chunk_offset_write, d.chunk_i,
            d.n_total_chunks, d.subdir_str, d.filename_append, d.data, d.file_mtime,
        )  # fmt: skip
        rebuilt += d.data
    assert rebuilt == body


def test_empty_file_is_one_empty_chunk(tmp_path: Path) -> None:
    fc = _core.FileChunker(write(tmp_path / "e", b""))
    assert (fc.size, fc.n_chunks, fc.chunk_size) == (0, 1, 524288)
    (msg,) = fc.messages(1, 5, "", "e")
    d = _core.decode_chunk(bytes(msg))
    assert (d.data, d.chunk_i, d.n_total_chunks, d.chunk_offset_write) == (b"", 1, 1, 0)
    assert d.file_hash == d.chunk_hash == hashlib.sha512(b"").digest()


def test_ranges_are_clipped_and_one_based(tmp_path: Path) -> None:
    fc = _core.FileChunker(write(tmp_path / "f", content(2 * CHUNK + 1)), CHUNK)
    assert fc.n_chunks == 3
    idx = [_core.decode_chunk(bytes(b)).chunk_i for b in fc.messages(2, 10, "", "f")]
    assert idx == [2, 3]
    assert [_core.decode_chunk(bytes(b)).chunk_i for b in fc.messages(3, 1, "", "f")] == [3]
    assert fc.messages(4, 1, "", "f") == []
    assert fc.messages(1, 0, "", "f") == []
    with pytest.raises(ValueError, match="chunk index 0"):
        fc.messages(0, 1, "", "f")
    # Asking in pieces gives the same bytes as asking at once.
    whole = [bytes(b) for b in fc.messages(1, 3, "d", "f")]
    pieces = [bytes(b) for i in (1, 2, 3) for b in fc.messages(i, 1, "d", "f")]
    assert whole == pieces


def test_non_ascii_names(tmp_path: Path) -> None:
    body = content(2 * CHUNK + 1)
    path = write(tmp_path / "données_データ.bin", body)
    fc = _core.FileChunker(str(path), CHUNK)
    name = "résumé_数据.dat"
    msgs = fc.messages(1, fc.n_chunks, "ünï/códe", name, "_ü")
    decoded = [_core.decode_chunk(bytes(b)) for b in msgs]
    assert {d.filename for d in decoded} == {name}
    assert {d.rel_output_path for d in decoded} == {"ünï/códe/résumé_数据_ü.dat"}
    assert b"".join(d.data for d in decoded) == body
    key = _core.message_key("ünï/códe", name, 1, 3)
    assert key == "ünï_códe_résumé_数据.dat_chunk_1_of_3"
    assert _core.parse_message_key(key) == ("ünï_códe_résumé_数据.dat", 1, 3)


@pytest.mark.parametrize(
    "mtime_ns",
    [
        1_700_000_000_000_000_000,
        1_700_000_000_123_456_789,
        1_600_000_000_500_000_000,
        1_000_000_001,
        2**33 * 10**9 + 999_999_999,
    ],
)
def test_mtime_is_st_mtime_exactly(mtime_ns: int, tmp_path: Path) -> None:
    path = write(tmp_path / "m", b"abc", mtime_ns)
    if os.stat(path).st_mtime_ns != mtime_ns:
        pytest.skip("the filesystem does not keep nanosecond mtimes")
    fc = _core.FileChunker(path)
    assert fc.file_mtime == os.stat(path).st_mtime
    (msg,) = fc.messages(1, 1, "", "m")
    assert _core.decode_chunk(bytes(msg)).file_mtime == os.stat(path).st_mtime


def test_default_mtime_of_a_fresh_file(tmp_path: Path) -> None:
    path = write(tmp_path / "fresh", b"x")
    assert _core.FileChunker(path).file_mtime == os.stat(path).st_mtime


@pytest.mark.parametrize(
    "change",
    ["same_size", "truncated", "emptied", "one_byte_in_last_chunk"],
)
def test_file_changed_after_construction(change: str, tmp_path: Path) -> None:
    body = content(2 * CHUNK + 1)
    path = write(tmp_path / "changing.bin", body)
    fc = _core.FileChunker(path, CHUNK)
    if change == "same_size":
        path.write_bytes(bytes(len(body)))
    elif change == "truncated":
        path.write_bytes(body[: CHUNK + 10])
    elif change == "emptied":
        path.write_bytes(b"")
    else:
        with open(path, "r+b") as f:
            f.seek(2 * CHUNK)
            f.write(b"\xff" if body[-1] != 0xFF else b"\x00")
    with pytest.raises(ValueError, match="changed while it was being sent") as info:
        fc.messages(1, fc.n_chunks, "", "changing.bin")
    assert str(path) in str(info.value)
    assert not isinstance(info.value, ConfigError)


def test_file_grown_after_construction_is_reported(tmp_path: Path) -> None:
    path = write(tmp_path / "growing.log", content(2 * CHUNK + 1))
    fc = _core.FileChunker(path, CHUNK)
    with open(path, "ab") as f:
        f.write(b"more")
    with pytest.raises(ValueError, match="changed"):
        fc.messages(1, fc.n_chunks, "", "growing.log")


def test_file_replaced_after_construction_is_still_the_opened_file(tmp_path: Path) -> None:
    """The chunker keeps the file it opened: replacing the path (rename over it) does
    not mix two files' bytes."""
    body = content(CHUNK + 5)
    path = write(tmp_path / "r.bin", body)
    fc = _core.FileChunker(path, CHUNK)
    other = write(tmp_path / "other", content(CHUNK + 5)[::-1])
    other.replace(path)
    msgs = fc.messages(1, 2, "", "r.bin")
    assert b"".join(_core.decode_chunk(bytes(m)).data for m in msgs) == body


def test_errors(tmp_path: Path) -> None:
    with pytest.raises(OSError, match="missing"):
        _core.FileChunker(tmp_path / "missing")
    with pytest.raises(OSError):
        _core.FileChunker(tmp_path)  # a directory
    with pytest.raises(ConfigError, match="chunk size"):
        _core.FileChunker(write(tmp_path / "f", b"x"), 0)
    with pytest.raises(OverflowError):
        _core.FileChunker(write(tmp_path / "g", b"x"), -1)


def test_chunks_reassemble(tmp_path: Path) -> None:
    """Messages from the chunker go through the assembler to the same bytes."""
    body = content(5 * CHUNK + 3)
    fc = _core.FileChunker(write(tmp_path / "a.bin", body), CHUNK)
    msgs = [bytes(b) for b in fc.messages(1, fc.n_chunks, "x", "a.bin")]
    asm = _core.Assembler._with_tiny_parts(CHUNK * 2)
    events, n = asm.add_messages([(0, i, m) for i, m in reversed(list(enumerate(msgs)))])
    assert n == len(msgs)
    parts = sorted((e for e in events if e.kind == "part"), key=lambda e: e.part_number)
    assert b"".join(bytes(e.data) for e in parts if e.data is not None) == body
    (done,) = [e for e in events if e.kind == "complete"]
    assert done.size == len(body) and done.parts == 3
    assert done.file is not None and done.file.file_mtime == fc.file_mtime


def test_huge_count_means_all_remaining_chunks(tmp_path: Path) -> None:
    fc = _core.FileChunker(write(tmp_path / "f", content(3 * CHUNK)), CHUNK)
    assert len(fc.messages(2, 2**64 - 1, "", "f")) == 2


def test_after_close_a_chunk_is_read_again_alone_and_checked_against_its_hash(
    tmp_path: Path,
) -> None:
    body = content(3 * CHUNK)
    path = write(tmp_path / "c.bin", body)
    fc = _core.FileChunker(path, CHUNK)
    before = [bytes(m) for m in fc.messages(1, 3, "s", "c.bin")]
    fc.close()
    assert fc.closed
    changed = bytearray(body)
    changed[2 * CHUNK] ^= 0xFF  # in chunk 3 only
    other = write(tmp_path / "new", bytes(changed))
    other.replace(path)  # the path now names another file
    (again,) = fc.messages(2, 1, "s", "c.bin")
    assert bytes(again) == before[1]
    assert [bytes(m) for m in fc.messages(1, 1, "s", "c.bin")] == before[:1]
    with pytest.raises(ValueError, match="changed while it was being sent") as info:
        fc.messages(3, 1, "s", "c.bin")
    assert str(path) in str(info.value) and "chunk 3" in str(info.value)
    path.unlink()
    with pytest.raises(FileNotFoundError):
        fc.messages(2, 1, "s", "c.bin")
    assert fc.n_chunks == 3 and fc.file_hash == hashlib.sha512(body).digest()
