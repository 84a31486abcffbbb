"""Property tests of the chunk codec: round trips over every msgpack width, equality
with the ``msgpack`` package (what OpenMSIStream's serializer runs), and robustness
against mutated, truncated or arbitrary input."""

from __future__ import annotations

import hashlib
import math
import random
from dataclasses import astuple, dataclass
from typing import Any

import msgpack  # type: ignore[import-untyped]
import pytest
from hypothesis import HealthCheck, assume, example, given, settings
from hypothesis import strategies as st
from s3transfer_stream import _core
from s3transfer_stream.errors import ChunkError, ChunkHashError

MAX_FILE_SIZE = 5 << 40
MAX_CHUNKS = 1 << 40

# No example database: nothing is written into the work tree (a failure prints its example).
FAST = settings(
    max_examples=150,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


@dataclass(frozen=True)
class Fields:
    filename: str
    file_hash: bytes
    chunk_hash: bytes
    chunk_offset_write: int
    chunk_i: int
    n_total_chunks: int
    subdir_str: str
    filename_append: str
    data: bytes
    file_mtime: float | None

    def encode(self) -> bytes:
        return _core.encode_chunk(*astuple(self))

    def as_list(self) -> list[Any]:
        values = list(astuple(self))
        return values if self.file_mtime is not None else values[:9]


# Text without '/', NUL or lone surrogates (not encodable as UTF-8): ASCII, Latin,
# CJK, emoji, combining marks; long enough to need str8 and str16.
name_chars = st.characters(
    exclude_categories=["Cs"],
    exclude_characters="/\x00",
)
names = st.one_of(
    st.text(name_chars, min_size=1, max_size=12),
    st.text(name_chars, min_size=20, max_size=300),
    st.sampled_from(["résumé_数据.dat", "😀.bin", "a" * 31, "b" * 32, "c" * 255, "d" * 256]),
).filter(lambda s: s not in (".", ".."))
components = st.text(name_chars, min_size=0, max_size=20).filter(lambda s: s != "..")
subdirs = st.one_of(
    st.just(""),
    st.lists(components, min_size=1, max_size=5)
    .map("/".join)
    .filter(lambda s: not s.startswith("/")),
)
appends = st.one_of(st.just(""), st.text(name_chars, max_size=40))


def random_bytes(n: int, seed: int) -> bytes:
    return random.Random(seed).randbytes(n)


# Data: small arbitrary bytes, or any size up to 70000 (bin8, bin16 and bin32).
datas = st.one_of(
    st.binary(max_size=300),
    st.builds(random_bytes, st.integers(0, 70_000), st.integers(0, 2**32)),
    st.sampled_from([255, 256, 65_535, 65_536]).map(lambda n: bytes(n)),
)

# Boundaries of every msgpack uint width, plus anything in range.
WIDTH_EDGES = [0, 1, 127, 128, 255, 256, 65_535, 65_536, 2**32 - 1, 2**32, 2**40, 2**42]


def uints(lo: int, hi: int) -> st.SearchStrategy[int]:
    edges = [v for e in WIDTH_EDGES for v in (e - 1, e, e + 1) if lo <= v <= hi]
    return st.one_of(st.sampled_from(edges), st.integers(lo, hi))


mtimes = st.one_of(
    st.none(),
    st.just(0.0),
    st.floats(allow_nan=False, allow_infinity=False),
    st.floats(1e9, 2e9),
)


@st.composite
def valid_fields(draw: st.DrawFn) -> Fields:
    data = draw(datas)
    n_total = draw(uints(1, MAX_CHUNKS))
    chunk_i = draw(uints(1, n_total))
    offset = draw(uints(0, MAX_FILE_SIZE - len(data)))
    return Fields(
        filename=draw(names),
        file_hash=draw(st.binary(min_size=64, max_size=64)),
        chunk_hash=hashlib.sha512(data).digest(),
        chunk_offset_write=offset,
        chunk_i=chunk_i,
        n_total_chunks=n_total,
        subdir_str=draw(subdirs),
        filename_append=draw(appends),
        data=data,
        file_mtime=draw(mtimes),
    )


def same_float(a: float | None, b: float | None) -> bool:
    if a is None or b is None:
        return a is b
    return a == b and math.copysign(1.0, a) == math.copysign(1.0, b)


@FAST
@given(valid_fields())
@example(Fields("x", bytes(64), hashlib.sha512(b"").digest(), 0, 1, 1, "", "", b"", None))
@example(
    Fields(
        "x" * 70_000,
        bytes(64),
        hashlib.sha512(b"").digest(),
        MAX_FILE_SIZE,
        MAX_CHUNKS,
        MAX_CHUNKS,
        "s/" * 40_000,
        "é" * 40_000,
        b"",
        -0.0,
    )
)
def test_round_trip(f: Fields) -> None:
    value = f.encode()
    d = _core.decode_chunk(value)
    assert d.filename == f.filename
    assert d.file_hash == f.file_hash
    assert d.chunk_hash == f.chunk_hash
    assert d.chunk_offset_write == f.chunk_offset_write
    assert d.chunk_i == f.chunk_i
    assert d.n_total_chunks == f.n_total_chunks
    assert d.subdir_str == f.subdir_str
    assert d.filename_append == f.filename_append
    assert d.data == f.data
    assert same_float(d.file_mtime, f.file_mtime)
    assert d.n_fields == (9 if f.file_mtime is None else 10)
    again = _core.encode_chunk(
        d.filename,
        d.file_hash,
        d.chunk_hash,
        d.chunk_offset_write,
        d.chunk_i,
        d.n_total_chunks,
        d.subdir_str,
        d.filename_append,
        d.data,
        d.file_mtime,
    )
    assert again == value
    # The key splits back into its parts.
    key = _core.message_key(f.subdir_str, f.filename, f.chunk_i, f.n_total_chunks)
    assert _core.parse_message_key(key) == (
        _core.key_prefix(f.subdir_str, f.filename),
        f.chunk_i,
        f.n_total_chunks,
    )
    assert key == "_".join(f.subdir_str.split("/")) + "_" + f.filename + (
        f"_chunk_{f.chunk_i}_of_{f.n_total_chunks}"
    )


@FAST
@given(valid_fields())
def test_same_bytes_as_msgpack(f: Fields) -> None:
    """OpenMSIStream's serializer is msgpack.packb([...], use_bin_type=True)."""
    value = f.encode()
    assert value == msgpack.packb(f.as_list(), use_bin_type=True)
    # And what OpenMSIStream's deserializer reads back (unpackb(raw=True)) is our fields.
    raw = msgpack.unpackb(value, raw=True)
    assert raw[0].decode() == f.filename
    assert raw[1:6] == [
        f.file_hash,
        f.chunk_hash,
        f.chunk_offset_write,
        f.chunk_i,
        f.n_total_chunks,
    ]
    assert raw[6].decode() == f.subdir_str
    assert raw[7].decode() == f.filename_append
    assert raw[8] == f.data
    if f.file_mtime is not None:
        assert same_float(raw[9], f.file_mtime)


def check_decode(value: bytes) -> None:
    """Decoding arbitrary bytes either works or raises ChunkError/ChunkHashError; a
    message we accept is one msgpack accepts too, with the same fields."""
    for verify in (True, False):
        try:
            d = _core.decode_chunk(value, verify=verify)
        except ChunkHashError as e:
            assert verify
            assert e.field == "chunk_hash"  # type: ignore[attr-defined]
            assert isinstance(e.filename, str)  # type: ignore[attr-defined]
            continue
        except ChunkError as e:
            assert type(e) is ChunkError
            assert isinstance(e.field, str) and e.field in str(e)  # type: ignore[attr-defined]
            continue
        raw = msgpack.unpackb(value, raw=True, strict_map_key=False)
        assert isinstance(raw, list) and len(raw) == d.n_fields
        text = [bytes(x).decode() for x in (raw[0], raw[6], raw[7])]
        assert text == [d.filename, d.subdir_str, d.filename_append]
        assert [raw[1], raw[2], raw[8]] == [d.file_hash, d.chunk_hash, d.data]
        assert raw[3:6] == [d.chunk_offset_write, d.chunk_i, d.n_total_chunks]
        assert all(type(x) is int for x in raw[3:6])
        if d.n_fields == 10:
            # Lenient: an int or nil mtime is read as a float (nil as 0.0, "unknown").
            assert raw[9] is not True and raw[9] is not False
            assert d.file_mtime == (0.0 if raw[9] is None else float(raw[9]))
        if verify:
            assert hashlib.sha512(d.data).digest() == d.chunk_hash
        assert d.chunk_offset_write + len(d.data) <= MAX_FILE_SIZE
        assert 1 <= d.chunk_i <= d.n_total_chunks
        assert "/" not in d.filename and d.filename not in ("", ".", "..")
        assert ".." not in d.subdir_str.split("/") and not d.subdir_str.startswith("/")


@st.composite
def mutated(draw: st.DrawFn) -> bytes:
    value = bytearray(draw(valid_fields().filter(lambda f: len(f.data) < 2000)).encode())
    for _ in range(draw(st.integers(1, 4))):
        op = draw(st.sampled_from(["flip", "set", "insert", "delete", "truncate"]))
        if not value:
            break
        at = draw(st.integers(0, len(value) - 1))
        if op == "flip":
            value[at] ^= 1 << draw(st.integers(0, 7))
        elif op == "set":
            value[at] = draw(
                st.sampled_from(
                    [
                        0x00,
                        0x7F,
                        0xC0,
                        0xC1,
                        0xC2,
                        0xCC,
                        0xCF,
                        0xD3,
                        0xD9,
                        0xDB,
                        0xC6,
                        0xDD,
                        0xFF,
                        0x9A,
                        0x99,
                    ]
                )
            )
        elif op == "insert":
            value[at:at] = draw(st.binary(min_size=1, max_size=9))
        elif op == "delete":
            del value[at : at + draw(st.integers(1, 9))]
        else:
            del value[at:]
    return bytes(value)


@settings(FAST, max_examples=400)
@given(mutated())
def test_mutations_only_raise_chunk_errors(value: bytes) -> None:
    check_decode(value)


@FAST
@given(valid_fields().filter(lambda f: len(f.data) < 5000), st.data())
def test_every_truncation_is_a_chunk_error(f: Fields, data: st.DataObject) -> None:
    value = f.encode()
    cuts = data.draw(st.lists(st.integers(0, len(value) - 1), min_size=1, max_size=20))
    for cut in [*cuts, 0, 1, len(value) - 1]:
        with pytest.raises(ChunkError) as info:
            _core.decode_chunk(value[:cut])
        assert type(info.value) is ChunkError
        assert "truncated" in str(info.value)


msgpack_values = st.recursive(
    st.one_of(
        st.none(),
        st.booleans(),
        st.integers(-(2**63), 2**64 - 1),
        st.floats(),
        st.text(max_size=20),
        st.binary(max_size=70),
    ),
    lambda inner: st.one_of(
        st.lists(inner, max_size=3), st.dictionaries(st.text(), inner, max_size=3)
    ),
    max_leaves=5,
)


@FAST
@given(st.lists(msgpack_values, min_size=8, max_size=11))
def test_arbitrary_msgpack_arrays(values: list[Any]) -> None:
    check_decode(msgpack.packb(values, use_bin_type=True))


@FAST
@given(valid_fields(), st.integers(0, 9), msgpack_values)
def test_one_field_replaced_by_anything(f: Fields, index: int, replacement: Any) -> None:
    values = [*astuple(f)[:9], 1.0 if f.file_mtime is None else f.file_mtime]
    values[index] = replacement
    check_decode(msgpack.packb(values, use_bin_type=True))


@FAST
@given(st.binary(max_size=400))
def test_arbitrary_bytes(value: bytes) -> None:
    check_decode(value)
    assume(value)
    check_decode(b"\x9a" + value)
    check_decode(b"\x99" + value)


@st.composite
def small_file_chunks(draw: st.DrawFn) -> bytes:
    """Chunks of a few small files that collide by name, hash and offsets, some mutated."""
    data = draw(st.binary(max_size=300))
    n_total = draw(st.integers(1, 5))
    value = Fields(
        filename=draw(st.sampled_from(["a.dat", "b"])),
        file_hash=draw(st.sampled_from([bytes(64), b"\x01" * 64])),
        chunk_hash=hashlib.sha512(data).digest(),
        chunk_offset_write=draw(st.sampled_from([0, 100, 300, 600, 1000])),
        chunk_i=draw(st.integers(1, n_total)),
        n_total_chunks=n_total,
        subdir_str=draw(st.sampled_from(["", "d"])),
        filename_append=draw(st.sampled_from(["", "_2"])),
        data=data,
        file_mtime=draw(st.sampled_from([None, 0.0, 1.0, 2.0])),
    ).encode()
    if draw(st.booleans()):
        b = bytearray(value)
        b[draw(st.integers(0, len(b) - 1))] ^= 1 << draw(st.integers(0, 7))
        value = bytes(b)
    return value


def small_claims(value: bytes) -> bool:
    """False for messages whose claimed file size (n_total_chunks x chunk size, or the
    offset) is large: the assembler sizes its part buffers from that claim (see
    test_malformed.test_huge_claimed_file_does_not_abort), which makes such examples
    slow here; they are covered there."""
    try:
        d = _core.decode_chunk(value, verify=False)
    except ChunkError:
        return True
    return d.n_total_chunks * max(1, len(d.data)) <= 70_000 and d.chunk_offset_write <= 70_000


@FAST
@given(st.lists(st.one_of(mutated(), small_file_chunks()), min_size=1, max_size=30))
def test_assembler_survives_mutations(values: list[bytes]) -> None:
    values = [v for v in values if small_claims(v)]
    asm = _core.Assembler._with_tiny_parts(64)
    events, n = asm.add_messages([(i % 3, i, v) for i, v in enumerate(values)])
    assert 0 <= n <= len(values)
    for ev in events:
        assert ev.kind in {"started", "part", "complete", "failed", "superseded", "rejected"}
        if ev.kind == "rejected":
            assert isinstance(ev.error, ChunkError) and ev.file is None
        else:
            assert ev.file is not None
        if ev.kind == "complete":
            assert ev.file is not None
            assert ev.size <= 70_000
    # Buffers are allocated for received bytes, never from a declared size: at most the
    # chunk bytes of the decodable messages, plus the two part ends each chunk may touch.
    fed = 0
    for v in values:
        try:
            fed += len(_core.decode_chunk(v, verify=False).data)
        except ChunkError:
            pass
    for info, n_chunks, n_bytes, _partitions in asm.in_progress():
        assert 0 < n_chunks <= info.n_chunks
        assert n_bytes <= fed + 2 * 64 * n_chunks
