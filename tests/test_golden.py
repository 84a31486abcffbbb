"""Our codec against the golden messages OpenMSIStream 1.8.8 made itself (tests/golden/).

Every field, the key, byte-exact re-encoding, our FileChunker against
OpenMSIStream's chunker, and reassembly of every golden file through the
assembler with tiny parts (shuffled, with a duplicate).
"""

from __future__ import annotations

import hashlib
import json
import os
import random
from pathlib import Path, PurePosixPath
from typing import Any

import msgpack  # type: ignore[import-untyped]
import pytest
from s3transfer_stream import _core

GOLDEN = Path(__file__).resolve().parent / "golden"
MANIFEST: dict[str, Any] = json.loads((GOLDEN / "manifest.json").read_text(encoding="utf-8"))
MESSAGES: list[dict[str, Any]] = MANIFEST["messages"]
SOURCES: dict[str, dict[str, Any]] = {s["id"]: s for s in MANIFEST["sources"]}
FIELDS = (
    "filename",
    "file_hash",
    "chunk_hash",
    "chunk_offset_write",
    "chunk_i",
    "n_total_chunks",
    "subdir_str",
    "filename_append",
    "data",
)
HEX_FIELDS = {"file_hash", "chunk_hash", "data"}


def value_of(m: dict[str, Any]) -> bytes:
    return (GOLDEN / f"{m['name']}.value.bin").read_bytes()


def content_for(seed: str, size: int) -> bytes:
    """The source bytes make_golden.py wrote: SHA-512(seed NUL counter) blocks."""
    out = bytearray()
    counter = 0
    while len(out) < size:
        out += hashlib.sha512(f"{seed}\x00{counter}".encode()).digest()
        counter += 1
    return bytes(out[:size])


def subdir_of(relpath: str) -> str:
    parent = PurePosixPath(relpath).parent.as_posix()
    return "" if parent == "." else parent


def test_manifest_is_what_we_expect() -> None:
    assert MANIFEST["openmsistream_version"] == "1.8.8"
    assert len(MESSAGES) >= 11
    for m in MESSAGES:
        assert len(value_of(m)) == m["value_size"], m["name"]
    # The regenerated source content is the content OpenMSIStream chunked.
    for src in SOURCES.values():
        content = content_for(src["id"], src["size"])
        assert hashlib.sha512(content).hexdigest() == src["sha512"], src["id"]


@pytest.mark.parametrize("m", MESSAGES, ids=[m["name"] for m in MESSAGES])
def test_decode_every_field(m: dict[str, Any]) -> None:
    value = value_of(m)
    d = _core.decode_chunk(value)
    for field in FIELDS:
        got = getattr(d, field)
        want = bytes.fromhex(m[field]) if field in HEX_FIELDS else m[field]
        assert got == want, field
        assert type(got) is type(want), field
    assert d.n_fields == m["n_fields"]
    # We report the float as sent; OpenMSIStream maps <= 0.0 (and a missing one) to None.
    assert d.file_mtime == m["wire_file_mtime"]
    known = d.file_mtime if d.file_mtime is not None and d.file_mtime > 0.0 else None
    assert known == m["file_mtime"]
    assert d.rel_output_path == m["reconstructed_relpath"]
    rel = PurePosixPath(*PurePosixPath(m["subdir_str"]).parts, m["filename"]).as_posix()
    assert d.rel_path == rel
    # The hashes are what they claim to be.
    assert _core.sha512(d.data) == d.chunk_hash == hashlib.sha512(d.data).digest()
    assert d.file_hash.hex() == m["file_sha512"] == SOURCES[m["source"]]["sha512"]
    # verify=False gives the same fields.
    u = _core.decode_chunk(value, verify=False)
    assert [getattr(u, f) for f in (*FIELDS, "file_mtime", "n_fields")] == [
        getattr(d, f) for f in (*FIELDS, "file_mtime", "n_fields")
    ]
    # And msgpack (what OpenMSIStream's deserializer runs) agrees on the array.
    raw = msgpack.unpackb(value, raw=False)
    assert len(raw) == m["n_fields"]
    assert raw[:9] == [getattr(d, f) for f in FIELDS]


@pytest.mark.parametrize("m", MESSAGES, ids=[m["name"] for m in MESSAGES])
def test_key(m: dict[str, Any]) -> None:
    d = _core.decode_chunk(value_of(m))
    key = _core.message_key(d.subdir_str, d.filename, d.chunk_i, d.n_total_chunks)
    assert key == m["key"]
    prefix = _core.key_prefix(d.subdir_str, d.filename)
    assert key.startswith(prefix)
    assert _core.parse_message_key(key) == (prefix, m["chunk_i"], m["n_total_chunks"])
    if m["subdir_str"] == "":
        assert key.startswith("_")


@pytest.mark.parametrize("m", MESSAGES, ids=[m["name"] for m in MESSAGES])
def test_reencode_is_identical(m: dict[str, Any]) -> None:
    value = value_of(m)
    d = _core.decode_chunk(value)
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
    # Positional and keyword forms agree; the 9-field form is chosen by file_mtime=None.
    kw = _core.encode_chunk(
        filename=d.filename,
        file_hash=d.file_hash,
        chunk_hash=d.chunk_hash,
        chunk_offset_write=d.chunk_offset_write,
        chunk_i=d.chunk_i,
        n_total_chunks=d.n_total_chunks,
        subdir_str=d.subdir_str,
        filename_append=d.filename_append,
        data=d.data,
        file_mtime=d.file_mtime,
    )
    assert kw == value
    assert value[0] == (0x9A if m["n_fields"] == 10 else 0x99)


def test_nine_field_form_is_the_ten_field_one_without_mtime() -> None:
    ten = value_of(next(m for m in MESSAGES if m["name"] == "no_mtime"))
    nine = value_of(next(m for m in MESSAGES if m["name"] == "nine_field_derived"))
    d10 = _core.decode_chunk(ten)
    d9 = _core.decode_chunk(nine)
    assert (d10.n_fields, d10.file_mtime) == (10, 0.0)
    assert (d9.n_fields, d9.file_mtime) == (9, None)
    assert nine == b"\x99" + ten[1:-9]
    assert ten[-9:] == b"\xcb" + bytes(8)


def source_file(src: dict[str, Any], root: Path) -> Path:
    """Writes a golden source file under root with its pinned mtime."""
    path = root / str(src["relpath"])
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content_for(src["id"], src["size"]))
    # st_mtime is a float from (sec, nsec); pin the same nanoseconds make_golden.py used.
    ns = round(src["st_mtime"] * 1e6) * 1000
    os.utime(path, ns=(ns, ns))
    if os.stat(path).st_mtime != src["st_mtime"]:
        pytest.skip("this filesystem does not keep the pinned mtime")
    return path


def golden_by_source(source_id: str) -> dict[int, bytes]:
    """chunk_i -> golden value, for the non-derived messages of one source."""
    return {
        m["chunk_i"]: value_of(m) for m in MESSAGES if m["source"] == source_id and not m["derived"]
    }


@pytest.mark.parametrize("source_id", sorted(SOURCES))
def test_file_chunker_matches_openmsistream(source_id: str, tmp_path: Path) -> None:
    """Our chunker makes byte-identical messages to OpenMSIStream's for the same file."""
    src = SOURCES[source_id]
    path = source_file(src, tmp_path)
    fc = _core.FileChunker(path, src["chunk_size"])
    assert fc.n_chunks == src["n_total_chunks"]
    assert fc.size == src["size"]
    assert fc.file_hash.hex() == src["sha512"]
    assert fc.file_mtime == src["st_mtime"]
    name = PurePosixPath(src["relpath"]).name
    ours = fc.messages(1, fc.n_chunks, subdir_of(src["relpath"]), name, src["filename_append"])
    assert len(ours) == src["n_total_chunks"]
    golden = golden_by_source(source_id)
    assert golden
    for i, value in golden.items():
        mine = bytes(ours[i - 1])
        if src["capture_mtime"]:
            assert mine == value, f"chunk {i}"
        else:
            # OpenMSIStream sends 0.0 when told not to capture the mtime; we always send it.
            assert mine[:-8] == value[:-8], f"chunk {i}"
            assert value[-8:] == bytes(8)


def all_chunks(source_id: str, tmp_path: Path) -> list[bytes]:
    """Every chunk of a golden source: the golden bytes where we have them, else ours
    (proven byte-identical to OpenMSIStream's by test_file_chunker_matches_openmsistream)."""
    src = SOURCES[source_id]
    golden = golden_by_source(source_id)
    if len(golden) == src["n_total_chunks"]:
        return [golden[i] for i in range(1, src["n_total_chunks"] + 1)]
    path = source_file(src, tmp_path)
    fc = _core.FileChunker(path, src["chunk_size"])
    name = PurePosixPath(src["relpath"]).name
    ours = fc.messages(1, fc.n_chunks, subdir_of(src["relpath"]), name, src["filename_append"])
    out = [bytes(b) for b in ours]
    for i, value in golden.items():
        out[i - 1] = value
    return out


@pytest.mark.parametrize("source_id", sorted(SOURCES))
@pytest.mark.parametrize("part_size", [1, 100, 1000, 1 << 20])
def test_assembler_rebuilds_golden_files(source_id: str, part_size: int, tmp_path: Path) -> None:
    src = SOURCES[source_id]
    chunks = all_chunks(source_id, tmp_path)
    assert len(chunks) == src["n_total_chunks"]
    rng = random.Random(f"{source_id}-{part_size}")
    batch = [(i % 3, 100 + i, v) for i, v in enumerate(chunks)]
    rng.shuffle(batch)
    # A Kafka redelivery (same position) anywhere after the original, even after
    # the file completed.
    k = rng.randrange(len(batch))
    batch.insert(rng.randint(k + 1, len(batch)), batch[k])
    if len(chunks) > 1:
        # A producer-side duplicate (new offset) of a chunk, before the file completes.
        # (After completion, a copy at a new offset is the file produced again: a new
        # instance, as in OpenMSIStream.)
        last = max(i for i, m in enumerate(batch) if batch.index(m) == i)
        p, o, v = batch[rng.randrange(last)]
        batch.insert(rng.randint(0, last), (p, o + 1000, v))

    asm = _core.Assembler._with_tiny_parts(part_size)
    assert asm.part_size == part_size
    events: list[_core.Event] = []
    stored = 0
    # Several batches, to cover state kept between calls.
    for start in range(0, len(batch), 5):
        evs, n = asm.add_messages(batch[start : start + 5])
        events += evs
        stored += n
    assert stored == len(batch)  # duplicates count as stored (usable) too

    kinds = [e.kind for e in events]
    assert kinds.count("started") == 1
    assert kinds.count("complete") == 1
    assert set(kinds) <= {"started", "part", "complete"}, kinds
    complete = next(e for e in events if e.kind == "complete")
    assert complete.file is not None
    parts = sorted((e for e in events if e.kind == "part"), key=lambda e: e.part_number)

    if complete.data is not None:  # single PUT
        assert parts == []
        body = bytes(complete.data)
        assert complete.parts == 0
    else:
        numbers = [e.part_number for e in parts]
        assert numbers == list(range(1, len(parts) + 1))
        assert complete.parts == len(parts)
        for part in parts:
            assert part.data is not None
            piece = bytes(part.data)
            assert part.size == len(piece)
            assert part.crc64nvme == _core.crc64nvme(piece)
            assert part.file is not None and part.file.instance == complete.file.instance
        assert all(part.size == part_size for part in parts[:-1])
        body = b"".join(bytes(part.data) for part in parts if part.data is not None)

    assert len(body) == complete.size == src["size"]
    assert hashlib.sha512(body).hexdigest() == src["sha512"]
    assert complete.crc64nvme == _core.crc64nvme(body)
    info = complete.file
    assert info is not None
    d = _core.decode_chunk(chunks[0])
    assert info.rel_path == d.rel_path
    assert info.rel_output_path == d.rel_output_path
    assert info.filename == d.filename
    assert info.n_chunks == src["n_total_chunks"]
    assert info.file_hash.hex() == src["sha512"]
    assert info.file_mtime == d.file_mtime
    # Pins: per partition, the lowest offset of any message of the file (duplicates too).
    want_pins: dict[int, int] = {}
    for p, o, _ in batch:
        want_pins[p] = min(o, want_pins.get(p, o))
    assert dict(complete.pins) == want_pins
    assert asm.in_progress() == []
    # Complete, but owned (pinned) until the uploader settles it.
    assert asm.pinned_offsets() == want_pins
    assert asm.settle(info.instance)
    assert asm.pinned_offsets() == {}

    # Offsets: every message of the file, duplicates included, as half-open runs.
    runs: dict[int, set[int]] = {}
    for p, o, _ in batch:
        runs.setdefault(p, set()).add(o)
    assert {p: {o for a, b in r for o in range(a, b)} for p, r in complete.offsets} == runs

    # A redelivery of the whole batch (same positions) starts nothing new.
    evs, n = asm.add_messages(batch)
    assert evs == []
    assert n == len(batch)
    assert asm.in_progress() == []


def test_redelivered_duplicate_after_completion_is_not_a_new_file() -> None:
    """A copy that arrived at a later offset while the file was in progress, read again
    after the file completed (a rebalance), is a redelivery, not the file produced again."""
    c = [value_of(m) for m in MESSAGES if m["source"] == "nested"]
    asm = _core.Assembler._with_tiny_parts(1 << 20)
    evs, _ = asm.add_messages([(0, 100, c[0]), (0, 1100, c[0]), (0, 101, c[1]), (0, 102, c[2])])
    assert [e.kind for e in evs] == ["started", "complete"]
    assert evs[1].file is not None and asm.settle(evs[1].file.instance)
    # The consumer re-reads from below offset 1100 (e.g. after a rebalance).
    evs, _ = asm.add_messages([(0, 1100, c[0])])
    assert evs == []
    assert asm.pinned_offsets() == {}
    # A copy never seen before, at a later offset: the file produced again, or a stray
    # producer retry. It starts an "echo" instance that pins no offset.
    evs, _ = asm.add_messages([(0, 2000, c[0])])
    assert [e.kind for e in evs] == ["started"]
    assert evs[0].file is not None and evs[0].file.echo
    assert asm.pinned_offsets() == {}
