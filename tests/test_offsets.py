"""The low-watermark rule and the commit metadata (unit tests)."""

from __future__ import annotations

from s3transfer_stream.offsets import METADATA_PREFIX, OffsetRuns, Watermarks


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


def test_watermark_is_the_lowest_offset_still_needed() -> None:
    w = Watermarks()
    for off in range(10):
        w.consumed(0, off)
    assert w.commit_positions({0}, {}) == {0: (10, "")}
    # A file still being assembled pins its first chunk.
    assert w.commit_positions({0}, {0: 4}) == {0: (4, "")}
    # A complete file being uploaded pins until done; done files above the watermark
    # travel in the metadata.
    w.pin(1, [(0, 2)])
    w.pin(2, [(0, 6)])
    w.done(2, [(0, [(6, 8)])])
    assert w.commit_positions({0}, {}) == {0: (2, f"{METADATA_PREFIX}:4+2")}
    w.done(1, [(0, [(2, 6)])])
    assert w.commit_positions({0}, {}) == {0: (10, "")}


def test_failed_upload_holds_the_commit_even_across_a_revoke() -> None:
    w = Watermarks()
    for off in range(14):
        w.consumed(0, off)
    w.pin(7, [(0, 0)])
    w.hold(7)
    assert w.commit_positions({0}, {}) == {0: (0, "")}
    # The partition moves to another thread of this process and is read again.
    w.forget([0])
    assert w.commit_positions({0}, {}) == {}
    for off in range(14):
        w.consumed(0, off)
    assert w.commit_positions({0}, {}) == {0: (0, "")}
