"""The low-watermark rule and the commit metadata (unit tests)."""

from __future__ import annotations

from s3transfer_stream import _core
from s3transfer_stream.offsets import METADATA_PREFIX, OffsetRuns
from s3transfer_stream.processor.ledger import Ledger


def test_runs_merge_and_prune() -> None:
    r = OffsetRuns([(10, 12), (12, 15), (20, 21)])
    assert r.runs() == [(10, 15), (20, 21)]
    r.add(14, 20)
    assert r.runs() == [(10, 21)]
    r.prune_below(13)
    assert r.runs() == [(13, 21)]
    assert len(r) == 8


def test_metadata_round_trip_and_limit() -> None:
    r = OffsetRuns([(105, 107), (110, 111), (200, 260)])
    text = r.encode(100, "TOPICID")
    assert text == f"{METADATA_PREFIX}TOPICID:5+2,3+1,89+60"
    assert OffsetRuns.decode(text, 100, "TOPICID").runs() == r.runs()
    # A topic deleted and created again under the same name has another id.
    assert OffsetRuns.decode(text, 100, "OTHERID").runs() == []
    many = OffsetRuns((i * 10, i * 10 + 1) for i in range(10_000))
    encoded = many.encode(0, limit=200)
    assert len(encoded) <= 200
    decoded = OffsetRuns.decode(encoded, 0).runs()
    assert decoded == many.runs()[: len(decoded)] and decoded
    # Anything that is not ours is ignored, never half-read.
    for junk in (
        None,
        "",
        "other tool's metadata",
        f"{METADATA_PREFIX}x+1",
        f"{METADATA_PREFIX}1+-2",
    ):
        assert OffsetRuns.decode(junk, 0).runs() == []


def _file_messages(name: str, n: int, seed: int = 0) -> list[bytes]:
    import hashlib

    data = [bytes([seed + i]) * 10 for i in range(n)]
    fh = hashlib.sha512(b"".join(data)).digest()
    return [
        _core.encode_chunk(name, fh, hashlib.sha512(d).digest(), 10 * i, i + 1, n, "", "", d, 1.0)
        for i, d in enumerate(data)
    ]


def test_watermark_is_the_lowest_offset_still_needed() -> None:
    led = Ledger(5 << 20, 64 << 20, "TOPICID")
    a = _file_messages("a", 3)
    b = _file_messages("b", 2, 50)
    assert led.assigned(0, 0, None) == (0, 0)
    # Offsets 0-1: file a's first two chunks; 2-3: file b (complete); 4: junk.
    events, _, _ = led.feed([(0, 0, a[0]), (0, 1, a[1]), (0, 2, b[0]), (0, 3, b[1])])
    led.feed([(0, 4, b"junk")])
    # a is being received: it pins its first chunk.
    assert led.commit_offsets([0]) == [(0, 0, "")]
    (b_done,) = [e for e in events if isinstance(e, _core.FileComplete)]
    # b is complete but not settled: still pinned (the commit could otherwise pass it).
    assert led.settle(b_done.file.instance)
    # Settled files above the watermark travel in the metadata.
    assert led.commit_offsets([0]) == [(0, 0, f"{METADATA_PREFIX}TOPICID:2+2")]
    events, _, _ = led.feed([(0, 5, a[2])])
    (a_done,) = [e for e in events if isinstance(e, _core.FileComplete)]
    assert led.commit_offsets([0]) == [(0, 0, f"{METADATA_PREFIX}TOPICID:2+2")]
    led.settle(a_done.file.instance)
    assert led.commit_offsets([0]) == [(0, 6, "")]


def test_a_partition_that_comes_back_resumes_past_done_runs_and_never_goes_below_its_commit() -> (
    None
):
    led = Ledger(5 << 20, 64 << 20, "T")
    a = _file_messages("a", 2)
    led.feed([(0, 3, a[0])])
    # Revoked from this reader while a is incomplete and all of a is in partition 0.
    assert [f.rel_path for f in led.revoked([0])] == ["a"]
    assert led.commit_offsets([0]) == []
    # It comes back with a commit made by another member past a's chunks, and
    # metadata saying 12-14 are done.
    start, n_done = led.assigned(0, 10, f"{METADATA_PREFIX}T:2+2")
    assert (start, n_done) == (10, 2)
    led.feed([(0, 10, b"junk"), (0, 11, b"junk")])
    assert led.skip_ahead(0) == 14
    assert led.commit_offsets([0]) == [(0, 14, "")]
    led.committed(0, 14)
    # A stray chunk of a below the floor cannot drag the commit back.
    led.feed([(0, 14, a[1])])
    assert led.commit_offsets([0])[0][1] >= 14
