"""A corpus of malformed chunk messages: each must raise the right error, naming the
field (and the file, once field 0 was readable), through decode_chunk and the assembler."""

from __future__ import annotations

import hashlib
import struct
import subprocess
import sys
from dataclasses import dataclass
from typing import Any

import msgpack  # type: ignore[import-untyped]
import pytest
from s3transfer_stream import _core
from s3transfer_stream.errors import ChunkError, ChunkHashError, S3TransferStreamError

NAME = "x.dat"
DATA = b"hello world, " * 10
FILE_HASH = hashlib.sha512(b"the whole file").digest()
CHUNK_HASH = hashlib.sha512(DATA).digest()
MTIME = 1700000000.25
TIB5 = 5 << 40


class Raw(bytes):
    """Bytes spliced into a message as they are (not msgpack-packed)."""


def fields(**overrides: Any) -> list[Any]:
    """The 10 fields of a valid message, some replaced."""
    base: dict[str, Any] = {
        "filename": NAME,
        "file_hash": FILE_HASH,
        "chunk_hash": CHUNK_HASH,
        "chunk_offset_write": 1000,
        "chunk_i": 2,
        "n_total_chunks": 3,
        "subdir_str": "a/b",
        "filename_append": "",
        "data": DATA,
        "file_mtime": MTIME,
    }
    base.update(overrides)
    return list(base.values())


def pack(values: list[Any], header: bytes | None = None) -> bytes:
    """A msgpack array of ``values`` (``Raw`` items spliced verbatim), with an optional
    explicit array header."""
    if header is None:
        header = bytes([0x90 | len(values)])
    body = b"".join(
        bytes(v) if isinstance(v, Raw) else msgpack.packb(v, use_bin_type=True) for v in values
    )
    return header + body


VALID = pack(fields())
NINE = pack(fields()[:9])


def field_offset(value: bytes, index: int) -> int:
    """Byte offset of field ``index`` in a message made by ``pack``."""
    unpacker = msgpack.Unpacker(raw=True)
    unpacker.feed(value)
    unpacker.read_array_header()
    for _ in range(index):
        unpacker.skip()
    return int(unpacker.tell())


@dataclass(frozen=True)
class Case:
    name: str
    value: bytes
    exc: type[ChunkError]
    field: str
    needles: tuple[str, ...]
    filename: str | None = NAME


def case(
    name: str,
    value: bytes,
    field: str,
    *needles: str,
    exc: type[ChunkError] = ChunkError,
    filename: str | None = NAME,
) -> Case:
    return Case(name, value, exc, field, needles, filename)


DATA_AT = field_offset(VALID, 8)
STR32_HUGE = Raw(b"\xdb\xff\xff\xff\xff")
BIN32_HUGE = Raw(b"\xc6\xff\xff\xff\xff")

# fmt: off
CORPUS: list[Case] = [
    # --- framing ---
    case("empty", b"", "message", "truncated", filename=None),
    case("positive_fixint", b"\x01", "message", "must be a msgpack array", "0x01", filename=None),
    case("nil", b"\xc0", "message", "msgpack array", filename=None),
    case("map_instead_of_array", msgpack.packb(dict(enumerate(fields()))), "message",
         "msgpack array", "0x8a", filename=None),
    case("str_instead_of_array", msgpack.packb(NAME), "message", "msgpack array", filename=None),
    case("bin_instead_of_array", msgpack.packb(VALID), "message", "msgpack array",
         filename=None),
    case("empty_array", b"\x90", "message", "9 or 10 fields", "got 0", filename=None),
    case("array_of_8", pack(fields()[:8]), "message", "got 8", filename=None),
    case("array_of_11", pack([*fields(), 1]), "message", "got 11", filename=None),
    case("array16_of_15", b"\xdc\x00\x0f" + VALID[1:], "message", "got 15", filename=None),
    case("array32_huge_count", b"\xdd\xff\xff\xff\xff" + VALID[1:], "message",
         "got 4294967295", filename=None),
    case("array32_header_truncated", b"\xdd\x00\x00", "message", "truncated", filename=None),
    case("array16_header_truncated", b"\xdc\x00", "message", "truncated", filename=None),
    case("trailing_garbage", VALID + b"\x00", "message", "1 unexpected bytes", "after the last"),
    case("trailing_field_in_9_form", NINE + msgpack.packb(MTIME), "message",
         "9 unexpected bytes"),
    # --- truncations ---
    case("truncated_after_header", VALID[:1], "filename", "truncated", filename=None),
    case("truncated_in_filename", VALID[:4], "filename", "truncated", filename=None),
    case("truncated_in_file_hash_header", VALID[: field_offset(VALID, 1) + 1], "file_hash",
         "truncated"),
    case("truncated_in_file_hash", VALID[: field_offset(VALID, 1) + 30], "file_hash",
         "truncated", "needs 64 more bytes"),
    case("truncated_in_chunk_hash", VALID[: field_offset(VALID, 2) + 65], "chunk_hash",
         "truncated"),
    case("truncated_before_offset", VALID[: field_offset(VALID, 3)], "chunk_offset_write",
         "truncated"),
    case("truncated_in_subdir", VALID[: field_offset(VALID, 6) + 2], "subdir_str", "truncated"),
    case("truncated_in_data", VALID[: DATA_AT + 2 + 50], "data", "truncated",
         f"needs {len(DATA)} more bytes"),
    case("truncated_before_mtime", VALID[:-9], "file_mtime", "truncated"),
    case("truncated_in_mtime", VALID[:-4], "file_mtime", "truncated"),
    # --- declared lengths far beyond the buffer (must not allocate or hang) ---
    case("str32_filename_4GiB", pack(fields(filename=STR32_HUGE)), "filename",
         "needs 4294967295 more bytes", filename=None),
    case("str8_filename_beyond", b"\x9a\xd9\xff" + b"x" * 10, "filename", "needs 255 more bytes",
         filename=None),
    case("bin32_file_hash_4GiB", pack(fields(file_hash=BIN32_HUGE)), "file_hash",
         "needs 4294967295 more bytes"),
    case("bin32_data_4GiB", VALID[:DATA_AT] + b"\xc6\xff\xff\xff\xff" + DATA, "data",
         "needs 4294967295 more bytes"),
    case("str32_subdir_4GiB", pack(fields(subdir_str=STR32_HUGE)), "subdir_str",
         "needs 4294967295 more bytes"),
    # --- wrong types ---
    case("int_filename", pack(fields(filename=7)), "filename", "must be a string",
         filename=None),
    case("nil_filename", pack(fields(filename=None)), "filename", "must be a string", "nil",
         filename=None),
    case("array_filename", pack(fields(filename=[NAME])), "filename", "an array",
         filename=None),
    case("str_chunk_i", pack(fields(chunk_i="2")), "chunk_i", "must be an integer", "string"),
    case("float_offset", pack(fields(chunk_offset_write=1000.0)), "chunk_offset_write",
         "must be an integer", "float"),
    case("bool_n_total", pack(fields(n_total_chunks=True)), "n_total_chunks",
         "must be an integer", "boolean"),
    case("nil_chunk_i", pack(fields(chunk_i=None)), "chunk_i", "must be an integer", "nil"),
    case("reserved_byte_offset", pack(fields(chunk_offset_write=Raw(b"\xc1"))),
         "chunk_offset_write", "reserved byte 0xc1"),
    case("ext_chunk_i", pack(fields(chunk_i=msgpack.ExtType(1, b"\x02"))), "chunk_i",
         "extension type"),
    case("negative_offset", pack(fields(chunk_offset_write=-1)), "chunk_offset_write",
         "must not be negative", "-1"),
    case("negative_int64_offset", pack(fields(chunk_offset_write=-(2**63))),
         "chunk_offset_write", "must not be negative"),
    case("negative_chunk_i", pack(fields(chunk_i=-2)), "chunk_i", "must not be negative"),
    case("file_hash_63_bytes", pack(fields(file_hash=FILE_HASH[:63])), "file_hash",
         "64-byte SHA-512", "got 63 bytes"),
    case("chunk_hash_65_bytes", pack(fields(chunk_hash=CHUNK_HASH + b"\x00")), "chunk_hash",
         "64-byte SHA-512", "got 65 bytes"),
    case("hex_file_hash", pack(fields(file_hash=FILE_HASH.hex())), "file_hash",
         "got 128 bytes"),
    case("int_file_hash", pack(fields(file_hash=0)), "file_hash", "must be binary data"),
    case("nil_subdir", pack(fields(subdir_str=None)), "subdir_str", "must be a string", "nil"),
    case("nil_append", pack(fields(filename_append=None)), "filename_append",
         "must be a string"),
    case("nil_data", pack(fields(data=None)), "data", "must be binary data", "nil"),
    case("map_data", pack(fields(data={})), "data", "must be binary data", "a map"),
    case("str_mtime", pack(fields(file_mtime="1700000000")), "file_mtime", "must be a number"),
    case("bool_mtime", pack(fields(file_mtime=False)), "file_mtime", "must be a number"),
    case("nan_mtime", pack(fields(file_mtime=float("nan"))), "file_mtime", "finite"),
    case("inf_mtime", pack(fields(file_mtime=float("inf"))), "file_mtime", "finite"),
    # --- values out of range ---
    case("chunk_i_0", pack(fields(chunk_i=0)), "chunk_i", "1..=3", "got 0"),
    case("chunk_i_above_n", pack(fields(chunk_i=4)), "chunk_i", "1..=3", "got 4"),
    case("n_total_0", pack(fields(chunk_i=1, n_total_chunks=0)), "n_total_chunks", "got 0"),
    case("n_total_huge", pack(fields(n_total_chunks=2**64 - 1)), "n_total_chunks",
         "got 18446744073709551615"),
    case("end_beyond_5TiB", pack(fields(chunk_offset_write=TIB5 - len(DATA) + 1)),
         "chunk_offset_write", "5 TiB"),
    case("offset_5TiB", pack(fields(chunk_offset_write=TIB5)), "chunk_offset_write", "5 TiB"),
    case("u64_max_offset", pack(fields(chunk_offset_write=2**64 - 1)), "chunk_offset_write",
         "18446744073709551615", "5 TiB"),
    # --- names and paths ---
    case("invalid_utf8_filename", pack(fields(filename=Raw(b"\xa3x\xff\xfe"))), "filename",
         "UTF-8", filename=None),
    case("invalid_utf8_subdir", pack(fields(subdir_str=Raw(b"\xa2\xc3\x28"))), "subdir_str",
         "UTF-8"),
    case("invalid_utf8_append", pack(fields(filename_append=Raw(b"\xa1\x80"))),
         "filename_append", "UTF-8"),
    case("filename_with_slash", pack(fields(filename="a/x.dat")), "filename", "'/'",
         filename="a/x.dat"),
    case("filename_dotdot", pack(fields(filename="..")), "filename", "not a file name",
         filename=".."),
    case("filename_dot", pack(fields(filename=".")), "filename", "not a file name",
         filename="."),
    case("filename_empty", pack(fields(filename="")), "filename", "not a file name",
         filename=""),
    case("filename_nul", pack(fields(filename="x\x00.dat")), "filename", "NUL",
         filename="x\x00.dat"),
    case("absolute_subdir", pack(fields(subdir_str="/etc")), "subdir_str", "relative path"),
    case("subdir_dotdot", pack(fields(subdir_str="a/../../b")), "subdir_str", "'..'"),
    case("subdir_only_dotdot", pack(fields(subdir_str="..")), "subdir_str", "'..'"),
    case("append_with_slash", pack(fields(filename_append="/../x")), "filename_append", "'/'"),
    # --- data ---
    case("data_not_matching_chunk_hash", pack(fields(data=DATA[:-1] + b"!")), "chunk_hash",
         "SHA-512", "does not match", "chunk 2/3", exc=ChunkHashError),
    case("empty_data_nonempty_hash", pack(fields(data=b"")), "chunk_hash", "does not match",
         exc=ChunkHashError),
]
# fmt: on

IDS = [c.name for c in CORPUS]


def test_corpus_is_big_and_well_formed() -> None:
    assert len(CORPUS) >= 25
    assert len(set(IDS)) == len(IDS)
    assert len({c.value for c in CORPUS}) == len(CORPUS)
    # The base messages are valid.
    assert _core.decode_chunk(VALID).n_fields == 10
    assert _core.decode_chunk(NINE).n_fields == 9
    assert VALID == _core.encode_chunk(*fields())


@pytest.mark.parametrize("c", CORPUS, ids=IDS)
def test_decode_rejects(c: Case) -> None:
    with pytest.raises(c.exc) as info:
        _core.decode_chunk(c.value)
    e = info.value
    assert type(e) is c.exc  # exactly: a hash error is not reported as a plain ChunkError
    assert isinstance(e, S3TransferStreamError)
    assert isinstance(e, ValueError)
    msg = str(e)
    assert e.field == c.field  # type: ignore[attr-defined]
    assert e.filename == c.filename  # type: ignore[attr-defined]
    assert f"{c.field}:" in msg
    if c.filename is not None:
        assert "of file" in msg
        if c.filename.isprintable():
            assert f'of file "{c.filename}": ' in msg
        else:  # escaped, never raw control characters
            assert msg.isprintable()
    else:
        assert "of file" not in msg
    for needle in c.needles:
        assert needle in msg, (needle, msg)
    # Nothing this messed up was fixed by skipping the hash check.
    if c.exc is ChunkHashError:
        d = _core.decode_chunk(c.value, verify=False)
        assert d.filename == NAME
    else:
        with pytest.raises(c.exc):
            _core.decode_chunk(c.value, verify=False)


def test_the_filename_in_messages_is_quoted() -> None:
    """A hostile name cannot forge log lines: control characters are escaped."""
    with pytest.raises(ChunkError) as info:
        _core.decode_chunk(pack(fields(filename="evil\nERROR: fake", chunk_i=0)))
    assert "\n" not in str(info.value)
    assert info.value.filename == "evil\nERROR: fake"  # type: ignore[attr-defined]


def good_file(name: str) -> list[bytes]:
    """A valid 3-chunk file in subdir ``good``."""
    content = bytes(range(256)) * 3
    pieces = [content[:300], content[300:600], content[600:]]
    fh = hashlib.sha512(content).digest()
    out = []
    offset = 0
    for i, p in enumerate(pieces, 1):
        out.append(
            _core.encode_chunk(
                name, fh, hashlib.sha512(p).digest(), offset, i, 3, "good", "", p, MTIME
            )
        )
        offset += len(p)
    return out


def test_assembler_rejects_the_corpus_and_keeps_working() -> None:
    asm = _core.Assembler._with_tiny_parts(256)
    good = good_file("y.dat")
    batch: list[tuple[int, int, bytes | None]] = []
    interleave = {10: good[0], 30: good[2], len(CORPUS) - 1: good[1]}
    for k, c in enumerate(CORPUS):
        batch.append((k % 4, 1000 + k, c.value))
        if k in interleave:
            batch.append((9, k, interleave[k]))
    batch.append((5, 1, None))  # a tombstone / message without a value

    events, n_stored = asm.add_messages(batch)
    assert n_stored == len(good)

    rejected = [e for e in events if e.kind == "rejected"]
    by_pos = {(e.partition, e.offset): e for e in rejected}
    hash_cases = [c for c in CORPUS if c.exc is ChunkHashError]
    assert len(rejected) == len(CORPUS) - len(hash_cases) + 1
    for k, c in enumerate(CORPUS):
        pos = (k % 4, 1000 + k)
        if c.exc is ChunkHashError:
            assert pos not in by_pos
            continue
        ev = by_pos[pos]
        assert ev.file is None
        assert isinstance(ev.error, c.exc)
        assert ev.error.field == c.field  # type: ignore[attr-defined]
        assert ev.reason == str(ev.error)
        for needle in c.needles:
            assert needle in ev.reason
    none = by_pos[(5, 1)]
    assert none.error is not None and "has no value" in none.reason

    # A corrupted chunk of an identifiable file fails that file (it can never complete).
    # Each hash case is a copy of chunk 2 at a new position, so after the first one
    # failed the file, the next looks like the file produced again: started + failed.
    failed = [e for e in events if e.kind == "failed"]
    assert len(failed) == len(hash_cases)
    for ev in failed:
        assert ev.file is not None
        assert ev.file.rel_path == f"a/b/{NAME}"
        assert "chunk 2/3 is corrupted" in ev.reason
        assert not ev.hash_mismatch

    # The valid file in the same batch completed, byte-exact.
    complete = [e for e in events if e.kind == "complete"]
    assert len(complete) == 1
    assert complete[0].file is not None
    assert complete[0].file.rel_path == "good/y.dat"
    parts = sorted((e for e in events if e.kind == "part"), key=lambda e: e.part_number)
    body = b"".join(bytes(e.data) for e in parts if e.data is not None)
    assert body == bytes(range(256)) * 3
    starts = sorted(e.file.rel_path for e in events if e.kind == "started" and e.file)
    assert starts == [f"a/b/{NAME}"] * len(hash_cases) + ["good/y.dat"]
    assert asm.in_progress() == []
    # Failed and complete files stay pinned until recorded and settled.
    for e in events:
        if e.kind in ("failed", "complete") and e.file is not None:
            assert asm.settle(e.file.instance)
    assert asm.pinned_offsets() == {}


def test_assembler_each_case_alone() -> None:
    """One message per batch, in a fresh assembler: exactly one rejection (or, for
    a corrupted chunk, the file it names started and failed), and no exception."""
    for k, c in enumerate(CORPUS):
        asm = _core.Assembler._with_tiny_parts(64)
        events, n = asm.add_messages([(3, k, c.value)])
        assert n == 0, c.name
        kinds = [e.kind for e in events]
        if c.exc is ChunkHashError:
            assert kinds == ["started", "failed"], c.name
        else:
            assert kinds == ["rejected"], c.name
            assert (events[0].partition, events[0].offset) == (3, k)
        assert asm.in_progress() == [], c.name
        for e in events:
            if e.kind == "failed" and e.file is not None:
                assert asm.settle(e.file.instance), c.name
        assert asm.pinned_offsets() == {}, c.name


def test_corrupted_chunk_of_a_file_in_progress_fails_it() -> None:
    good = good_file("z.dat")
    bad = bytearray(good[1])
    bad[-12] ^= 0x01  # a data byte (the last 9 bytes are the mtime)
    asm = _core.Assembler._with_tiny_parts(1 << 20)
    evs, _ = asm.add_messages([(0, 1, good[0]), (0, 2, bytes(bad))])
    assert [e.kind for e in evs] == ["started", "failed"]
    assert evs[1].pins == [(0, 1)]
    # Later chunks of the failed instance do not resurrect it.
    evs, _ = asm.add_messages([(0, 3, good[2]), (0, 4, good[1])])
    assert "complete" not in [e.kind for e in evs]


def test_non_bytes_values_are_refused_as_type_errors() -> None:
    asm = _core.Assembler._with_tiny_parts(64)
    with pytest.raises(TypeError):
        asm.add_messages([(0, 1, bytearray(VALID))])  # type: ignore[list-item]
    with pytest.raises(TypeError):
        _core.decode_chunk(memoryview(VALID))  # type: ignore[arg-type]


def test_many_huge_declared_lengths_are_cheap() -> None:
    """Declared lengths are checked before any allocation: 2000 messages claiming
    4 GiB each decode (and fail) at once."""
    value = pack(fields(data=BIN32_HUGE))
    asm = _core.Assembler._with_tiny_parts(64)
    events, n = asm.add_messages([(0, i, value) for i in range(2000)])
    assert n == 0
    assert {e.kind for e in events} == {"rejected"}


def test_encode_refuses_bad_digests() -> None:
    with pytest.raises(ChunkError, match="file_hash"):
        _core.encode_chunk(NAME, b"x" * 63, CHUNK_HASH, 0, 1, 1, "", "", DATA)
    with pytest.raises(ChunkError, match="chunk_hash"):
        _core.encode_chunk(NAME, FILE_HASH, b"", 0, 1, 1, "", "", DATA)
    with pytest.raises(OverflowError):
        _core.encode_chunk(NAME, FILE_HASH, CHUNK_HASH, -1, 1, 1, "", "", DATA)


def test_float32_and_int_mtimes_are_read_as_floats() -> None:
    """Lenient like OpenMSIStream's float(): other msgpack number encodings are accepted."""
    f32 = pack(fields(file_mtime=Raw(b"\xca" + struct.pack(">f", 1.5))))
    assert _core.decode_chunk(f32).file_mtime == 1.5
    as_int = pack(fields(file_mtime=1700000000))
    assert _core.decode_chunk(as_int).file_mtime == 1700000000.0


ABORT_PROBE = """
import hashlib, sys
from s3transfer_stream import _core
data = bytes(1000)
value = _core.encode_chunk(
    "x.dat", bytes(64), hashlib.sha512(data).digest(), 0, 1, 1 << 40, "", "", data, 1.0
)
assert _core.decode_chunk(value).n_total_chunks == 1 << 40  # the codec accepts it
events, _ = _core.Assembler().add_messages([(0, 0, value)])
print(",".join(e.kind for e in events))
"""


def test_huge_claimed_file_does_not_abort() -> None:
    """One chunk claiming 2**40 chunks of 1000 bytes must not take the process down.
    Run in a child process, since an allocation failure in Rust aborts."""
    proc = subprocess.run(
        [sys.executable, "-c", ABORT_PROBE], capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip() in {"started", "started,failed", "rejected"}
