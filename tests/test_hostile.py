"""Bad messages in a live topic (issue 10, item 1), against the real Kafka and S3.

A corpus of hostile messages -- undecodable bytes, wrong fields, impossible sizes and
offsets, contradictory and corrupted chunks, dangerous and absurd names, tombstones --
is produced through Kafka interleaved with the chunks of good files, then one
processor reads the topic. Every good file must land byte for byte; every bad message
is logged once, naming its partition and offset and its reason, on lines a name cannot
forge; the rejected count is in the metrics; commits reach the log end; the process
neither exits nor stalls; and its peak RSS shows that no declared size was allocated.

``test_malformed.py`` checks each decoder error in detail (in process); this module
reuses its message builders and checks what the running program makes of them.
"""

from __future__ import annotations

import hashlib
import os
import re
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgpack  # type: ignore[import-untyped]
import pytest
from helpers import (
    ProcessorRun,
    committed_offsets,
    done_above_commit,
    encoded_chunks,
    journal_entries,
    journal_outcomes,
    list_objects,
    log_ends,
    producer,
    read_object,
    write_tree,
)
from s3transfer_stream import _core
from test_malformed import BIN32_HUGE, STR32_HUGE, VALID, Raw, fields, pack
from test_metrics import by_label, metrics_url, scrape, value

pytestmark = pytest.mark.integration

PROGRAM = "S3TransferStreamProcessor"
SMALL_CHUNK = 16384
TIB = 1 << 40
#: A line a hostile name tries to smuggle into the log.
FORGED = f"[{PROGRAM} 2001-01-01 00:00:00] ERROR: forged line"


def chunk(
    name: str,
    chunk_i: int,
    n: int,
    offset: int,
    data: bytes,
    file_hash: bytes,
    subdir: str = "",
    append: str = "",
) -> bytes:
    """A chunk message with a valid chunk hash, made by the package's own encoder."""
    return _core.encode_chunk(
        name,
        file_hash,
        hashlib.sha512(data).digest(),
        offset,
        chunk_i,
        n,
        subdir,
        append,
        data,
        1_700_000_000.0,
    )


def file_chunks(name: str, content: bytes, n: int, subdir: str = "") -> list[bytes]:
    """``content`` as ``n`` valid chunk messages."""
    size = -(-len(content) // n) if content else 0
    fh = hashlib.sha512(content).digest()
    return [
        chunk(name, i + 1, n, i * size, content[i * size : (i + 1) * size], fh, subdir)
        for i in range(n)
    ]


@dataclass
class Bad:
    """One kind of bad input: its messages (key, value) and what must become of them.

    ``outcome``: ``rejected`` (every message skipped: one log line each naming its
    position and ``needle``), ``failed`` (the file it names is recorded as failed: one
    error line naming it, and naming the position of the message at ``culprit``),
    ``abandoned`` (a file that can never complete is given up once the log moved on),
    ``lands`` (hostile but legal: the file is transferred under ``key``, its name
    escaped in every log line), ``lands_or_refused`` (S3 decides: in the bucket
    intact, or recorded as failed with S3's refusal).
    """

    kind: str
    messages: list[tuple[str | None, bytes | None]]
    outcome: str
    needle: str = ""
    name: str = ""
    content: bytes = b""
    culprit: int = -1


def rejected(kind: str, value: bytes | None, needle: str, key: str | None = "junk") -> Bad:
    return Bad(kind, [(key, value)], "rejected", needle)


def corpus() -> list[Bad]:
    rnd = os.urandom
    out: list[Bad] = [
        # --- not a chunk message at all ---
        rejected("not_msgpack_text", b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", "msgpack array"),
        rejected("random_bytes", b"\xc1" + rnd(200), "msgpack array"),
        rejected("json", b'{"filename": "x.dat", "data": "aGVsbG8="}', "msgpack array"),
        rejected("msgpack_int", msgpack.packb(7), "msgpack array"),
        rejected("msgpack_map", msgpack.packb(dict(enumerate(fields()))), "msgpack array"),
        rejected("empty_value", b"", "truncated"),
        rejected("tombstone", None, "has no value"),
        rejected("tombstone_empty_key", None, "has no value", key=""),
        rejected("tombstone_no_key", None, "has no value", key=None),
        # --- truncated ---
        rejected("truncated_header", VALID[:1], "truncated"),
        rejected("truncated_in_hash", VALID[:60], "truncated"),
        rejected("truncated_in_data", VALID[:-40], "truncated"),
        rejected("trailing_garbage", VALID + b"\x00\x01", "unexpected bytes"),
        # --- wrong field counts and types ---
        rejected("zero_fields", b"\x90", "9 or 10 fields"),
        rejected("eight_fields", pack(fields()[:8]), "9 or 10 fields"),
        rejected("eleven_fields", pack([*fields(), 1]), "9 or 10 fields"),
        rejected("array32_4G_fields", b"\xdd\xff\xff\xff\xff" + VALID[1:], "9 or 10 fields"),
        rejected("int_filename", pack(fields(filename=7)), "must be a string"),
        rejected("str_chunk_i", pack(fields(chunk_i="2")), "must be an integer"),
        rejected("float_offset", pack(fields(chunk_offset_write=1.5)), "must be an integer"),
        rejected("nil_data", pack(fields(data=None)), "must be binary data"),
        rejected("short_file_hash", pack(fields(file_hash=b"x" * 63)), "64-byte SHA-512"),
        rejected("nan_mtime", pack(fields(file_mtime=float("nan"))), "finite"),
        rejected("invalid_utf8_name", pack(fields(filename=Raw(b"\xa3x\xff\xfe"))), "UTF-8"),
        # --- declared lengths far beyond the message ---
        rejected("str32_name_4GiB", pack(fields(filename=STR32_HUGE)), "needs 4294967295"),
        rejected("bin32_data_4GiB", pack(fields(data=BIN32_HUGE)), "needs 4294967295"),
        # --- numbers out of range ---
        rejected("chunk_i_0", pack(fields(chunk_i=0)), "chunk_i"),
        rejected("chunk_i_above_n", pack(fields(chunk_i=4, n_total_chunks=3)), "chunk_i"),
        rejected("n_total_0", pack(fields(chunk_i=1, n_total_chunks=0)), "n_total_chunks"),
        rejected("n_total_2^40+1", pack(fields(n_total_chunks=TIB + 1)), "n_total_chunks"),
        rejected("n_total_u64_max", pack(fields(n_total_chunks=2**64 - 1)), "n_total_chunks"),
        rejected("negative_offset", pack(fields(chunk_offset_write=-5)), "must not be negative"),
        rejected("offset_u64_max", pack(fields(chunk_offset_write=2**64 - 1)), "5 TiB"),
        rejected("offset_past_5TiB", pack(fields(chunk_offset_write=5 * TIB)), "5 TiB"),
        # --- names and paths that would leave the topic's prefix ---
        rejected("name_dotdot", pack(fields(filename="..")), "not a file name"),
        rejected("name_dot", pack(fields(filename=".")), "not a file name"),
        rejected("name_empty", pack(fields(filename="")), "not a file name"),
        rejected("name_with_slash", pack(fields(filename="../../etc/passwd")), "'/'"),
        rejected("name_nul", pack(fields(filename="x\x00.dat")), "NUL"),
        rejected("subdir_dotdot", pack(fields(subdir_str="a/../../b")), "'..'"),
        rejected("subdir_only_dotdot", pack(fields(subdir_str="..")), "'..'"),
        rejected("subdir_absolute", pack(fields(subdir_str="/etc")), "relative path"),
        rejected("subdir_nul", pack(fields(subdir_str="a\x00b")), "NUL"),
        rejected("append_with_slash", pack(fields(filename_append="/../x")), "'/'"),
        # A newline in a name that is refused anyway: the reason quotes it escaped.
        rejected(
            "newline_name_refused",
            pack(fields(filename=f"x\n{FORGED}", chunk_i=0)),
            "chunk_i",
        ),
    ]

    # --- chunks that start a file and then make it impossible ---
    content = rnd(3000)
    good3 = file_chunks("corrupt.bin", content, 3)
    bad2 = bytearray(good3[1])
    bad2[-12] ^= 0x01  # a data byte (the last 9 bytes are the mtime)
    out.append(
        Bad(
            "corrupted_chunk_data",
            [("k", good3[0]), ("k", bytes(bad2)), ("k", good3[2])],
            "failed",
            "corrupted",
            "corrupt.bin",
            culprit=1,
        )
    )
    fh = hashlib.sha512(b"whatever").digest()
    out.append(
        Bad(
            "chunk_longer_than_its_file",
            [
                ("k", chunk("longer.dat", 2, 2, 100, rnd(50), fh)),
                ("k", chunk("longer.dat", 1, 2, 0, rnd(400), fh)),
            ],
            "failed",
            "past the end of the file",
            "longer.dat",
            culprit=1,
        )
    )
    out.append(
        Bad(
            "conflicting_n_total_chunks",
            [
                ("k", chunk("conflict.dat", 1, 3, 0, rnd(10), fh)),
                ("k", chunk("conflict.dat", 2, 5, 10, rnd(10), fh)),
            ],
            "failed",
            "says the file has 5 chunks",
            "conflict.dat",
            culprit=1,
        )
    )
    out.append(
        Bad(
            "overlapping_chunks",
            [
                ("k", chunk("overlap.dat", 1, 3, 0, rnd(100), fh)),
                ("k", chunk("overlap.dat", 2, 3, 50, rnd(100), fh)),
            ],
            "failed",
            "overlaps",
            "overlap.dat",
            culprit=1,
        )
    )
    wrong = [chunk("mismatch.dat", i + 1, 2, i * 250, rnd(250), fh) for i in range(2)]
    out.append(
        Bad(
            "file_hash_mismatch",
            [("k", m) for m in wrong],
            "failed",
            "does not match",
            "mismatch.dat",
            culprit=1,
        )
    )
    out.append(
        Bad(
            "offset_beyond_max_parts",
            [("k", chunk("far.dat", 2, 3, 4 * TIB, b"x", fh))],
            "failed",
            "parts",
            "far.dat",
            culprit=0,
        )
    )
    # --- files that claim absurd sizes and can never complete ---
    out.append(
        Bad(
            "n_total_2^40",
            [("k", chunk("huge_n.dat", 1, TIB, 0, rnd(1000), fh))],
            "abandoned",
            name="huge_n.dat",
        )
    )
    out.append(
        Bad(
            "offset_70GiB",
            [("k", chunk("gap.dat", 2, 3, 70 << 30, b"x", fh))],
            "failed",
            "parts",
            "gap.dat",
            culprit=0,
        )
    )
    out.append(
        Bad(
            "last_chunk_at_4TiB_of_2^40",
            [("k", chunk("last.dat", TIB, TIB, 4 * TIB, b"y", fh))],
            "abandoned",
            name="last.dat",
        )
    )

    # --- hostile but legal names: transferred, never printed raw ---
    def lands(
        kind: str, name: str, subdir: str = "", key: str | None = "k", how: str = "lands"
    ) -> Bad:
        data = rnd(700)
        msgs = file_chunks(name, data, 2, subdir)
        rel = f"{subdir}/{name}" if subdir else name
        return Bad(kind, [(key, m) for m in msgs], how, name=rel, content=data)

    out += [
        lands("newline_name", f"evil\n{FORGED}.dat"),
        lands("carriage_return_name", f"cr\r{FORGED}.dat"),
        lands("control_chars_name", "ctl\x1b[31m\x07\x08\x7f.dat"),
        lands("newline_subdir", "ok.dat", subdir=f"sub\n{FORGED}"),
        lands("backslash_name", "back\\slash.dat"),
        lands("rtl_override_name", "\u202etxt.exe"),
        lands("empty_key", "empty_key.dat", key=""),
        lands("no_key", "no_key.dat", key=None),
        lands("over_long_name_300_bytes", "n" * 296 + ".dat", how="lands_or_refused"),
        lands("backslash_dotdot_subdir", "x.dat", subdir="..\\..\\up", how="lands_or_refused"),
    ]
    deep = "/".join([c * 250 for c in "abcde"])
    out.append(
        Bad(
            "key_over_1024_bytes",
            [("k", m) for m in file_chunks("deep.dat", rnd(10), 1, deep)],
            "failed",
            "too long",
            f"{deep}/deep.dat",
            culprit=0,
        )
    )
    return out


def produce_all(
    bootstrap: str, topic: str, messages: list[tuple[str | None, bytes | None, int]]
) -> list[tuple[int, int]]:
    """Produces the messages in order; returns the (partition, offset) of each."""
    p = producer(bootstrap)
    where: list[tuple[int, int] | None] = [None] * len(messages)
    errors: list[str] = []

    def report(k: int) -> Any:
        def done(err: Any, msg: Any) -> None:
            if err:
                errors.append(str(err))
            else:
                where[k] = (msg.partition(), msg.offset())

        return done

    for k, (key, val, part) in enumerate(messages):
        while True:
            try:
                p.produce(topic, key=key, value=val, partition=part, on_delivery=report(k))
                break
            except BufferError:
                p.poll(0.1)
        p.poll(0)
    assert p.flush(60) == 0
    assert not errors, errors
    assert all(w is not None for w in where)
    return [w for w in where if w is not None]


def escaped(text: str) -> str:
    """How a name appears in a log line: every non-printable character escaped."""
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode() for c in text)


def test_a_hostile_corpus_in_a_live_topic(
    tmp_path: Path, new_topic: Any, new_bucket: Any, s3_client: Any, kafka_bootstrap: str
) -> None:
    topic = new_topic(partitions=2)
    bucket = new_bucket()
    group = f"g-{uuid.uuid4().hex[:8]}"
    bad = corpus()
    kinds = [b.kind for b in bad]
    assert len(set(kinds)) == len(kinds) >= 30

    # Good files from our encoder: small ones, multi-chunk ones, and one multipart.
    src = tmp_path / "src"
    good = {f"good/f{i}.dat": os.urandom(1000 + 7919 * i) for i in range(12)}
    good["good/multi/big.bin"] = os.urandom(11 * (1 << 20) + 3)
    write_tree(src, good)
    good_msgs = [
        (k, v, i % 2)
        for i, rel in enumerate(good)
        for k, v in encoded_chunks(src, rel, SMALL_CHUNK if "big" not in rel else 524288)
    ]
    # Interleave: bad messages spread over both partitions between good chunks.
    plan: list[tuple[str | None, bytes | None, int]] = []
    owner: list[tuple[int, int] | None] = []  # (corpus index, message index) of each
    step = max(1, len(good_msgs) // (len(bad) + 1))
    g = iter(good_msgs)
    for b_i, b in enumerate(bad):
        for _ in range(step):
            nxt = next(g, None)
            if nxt is not None:
                plan.append(nxt)
                owner.append(None)
        for m_i, (key, val) in enumerate(b.messages):
            plan.append((key, val, b_i % 2))
            owner.append((b_i, m_i))
    for rest in g:
        plan.append(rest)
        owner.append(None)
    where = produce_all(kafka_bootstrap, topic, plan)
    pos: dict[tuple[int, int], tuple[int, int]] = {
        o: w for o, w in zip(owner, where, strict=True) if o is not None
    }

    run = ProcessorRun(
        bucket,
        topic,
        group,
        tmp_path / "out",
        "--metrics_port",
        "0",
        "--part_size",
        "5",
        "--abandon_seconds",
        "3",
        "--abandon_offset_gap",
        "2",
        "--stall_report_seconds",
        "2",
    )
    url = metrics_url(run)
    ends = log_ends(kafka_bootstrap, topic)
    run.wait_for(
        lambda: committed_offsets(kafka_bootstrap, topic, group) == ends,
        90,
        "commits at the log end",
    )
    # Still alive and not stalled: a file sent now lands at once.
    write_tree(src, {"after/late.dat": os.urandom(5000)})
    produce_all(
        kafka_bootstrap, topic, [(k, v, 0) for k, v in encoded_chunks(src, "after/late.dat")]
    )
    good["after/late.dat"] = (src / "after/late.dat").read_bytes()
    run.wait_for(
        lambda: f"{topic}/after/late.dat" in list_objects(s3_client, bucket), 30, "the late file"
    )
    metrics = scrape(url)
    with open(f"/proc/{run.proc.pid}/status") as f:
        proc_status = dict(line.split(":", 1) for line in f if ":" in line)
    peak_kib = int(proc_status["VmHWM"].split()[0])
    assert run.quit() == 0
    err = run.stderr()

    # Every good file landed intact.
    objects = list_objects(s3_client, bucket)
    for rel, data in good.items():
        assert objects.get(f"{topic}/{rel}") == len(data), rel
        assert read_object(s3_client, bucket, f"{topic}/{rel}") == data, rel

    # Every log line is one of ours: no name forged one, nothing printed raw.
    lines = err.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    stamp = re.compile(rf"^\[{PROGRAM} \d{{4}}-\d\d-\d\d \d\d:\d\d:\d\d\] ")
    # (librdkafka prints its own lines, "%3|<time>|FAIL|...", when the broker restarts.)
    rdkafka = re.compile(r"^%\d\|\d+\.\d+\|[A-Z]+\|rdkafka#")
    strays = [line for line in lines if not stamp.match(line) and not rdkafka.match(line)]
    assert not strays, strays[:5]
    assert not any(line.startswith(FORGED[:30]) for line in lines)
    assert all(line.isprintable() for line in lines), [
        line for line in lines if not line.isprintable()
    ][:3]

    n_rejected = 0
    for b_i, b in enumerate(bad):
        if b.outcome == "rejected":
            p, o = pos[(b_i, 0)]
            mine = [line for line in lines if f"{topic}[{p}]@{o}:" in line]
            assert len(mine) == 1, (b.kind, mine)
            assert "ERROR: Skipping message" in mine[0] and b.needle in mine[0], (b.kind, mine)
            n_rejected += 1
        elif b.outcome == "failed":
            name = escaped(b.name)
            mine = [
                line
                for line in lines
                if "ERROR: " in line and name in line and ("cannot be" in line or "Failed" in line)
            ]
            assert len(mine) == 1, (b.kind, mine)
            assert b.needle in mine[0], (b.kind, mine)
            # The message at which the file failed (the first chunk for an S3 refusal).
            p, o = pos[(b_i, b.culprit)]
            assert f"{topic}[{p}]@{o}" in mine[0], (b.kind, mine)
            assert f"{topic}/{b.name}" not in objects, b.kind
        elif b.outcome == "abandoned":
            mine = [line for line in lines if "Giving up" in line and b.name in line]
            assert len(mine) == 1, (b.kind, mine)
            p, o = pos[(b_i, 0)]
            assert f"{topic}[{p}]@{o}" in mine[0], (b.kind, mine)
        else:
            key = f"{topic}/{b.name}"
            name = escaped(b.name)
            if b.outcome == "lands" or key in objects:
                assert read_object(s3_client, bucket, key) == b.content, b.kind
                assert any(f"Transferred {name} " in line for line in lines), b.kind
            else:
                mine = [line for line in lines if "Failed to transfer" in line and name in line]
                assert len(mine) == 1, (b.kind, mine)
    # The registry lists every file given up, under its exact name.
    from s3transfer_stream.registry import InProgressRow, ProcessedRow, read_table

    rows = read_table(
        InProgressRow,
        tmp_path / "out" / "LOGS" / f"consuming_from_{topic}_by_{group}_in_progress.csv",
    )
    status = {r.rel_filepath.as_posix(): r.status for r in rows}
    for b in bad:
        if b.outcome == "failed":
            assert status.get(b.name) in ("failed", "mismatched_hash"), (b.kind, status)
        elif b.outcome == "abandoned":
            assert status.get(b.name) == "abandoned", (b.kind, status)
    # What the error, "Giving up" and transfer lines report, the journal records: each
    # file once, transferred or given up with its reason; a rejected message is no file.
    journal = journal_entries(tmp_path / "out" / "LOGS", topic, group)
    expected_outcomes = [(rel, "transferred") for rel in good]
    for b in bad:
        if b.outcome == "failed":
            how = "mismatched_hash" if b.kind == "file_hash_mismatch" else "failed"
            expected_outcomes.append((b.name, how))
            assert status[b.name] == how, (b.kind, status)
        elif b.outcome == "abandoned":
            expected_outcomes.append((b.name, "abandoned"))
        elif b.outcome != "rejected":
            landed = b.outcome == "lands" or f"{topic}/{b.name}" in objects
            expected_outcomes.append((b.name, "transferred" if landed else "failed"))
    assert sorted((e.rel_path, e.outcome) for e in journal) == sorted(expected_outcomes)
    reasons = {e.rel_path: e.reason for e in journal}
    for b in bad:
        if b.outcome == "failed":
            assert b.needle in reasons[b.name], (b.kind, reasons[b.name])
    # The registry's processed rows are the transfers.
    processed = read_table(
        ProcessedRow, tmp_path / "out" / "LOGS" / f"processed_from_{topic}_by_{group}.csv"
    )
    assert sorted(r.rel_filepath.as_posix() for r in processed) == sorted(
        rel for rel, how in expected_outcomes if how == "transferred"
    )
    # The count of skipped messages, in the metrics and in the closing summary.
    assert value(metrics, "s3ts_messages_rejected_total") == n_rejected
    assert f"{n_rejected} messages were skipped" in err
    n_failed = sum(b.outcome == "failed" for b in bad)
    refused = sum(
        b.outcome == "lands_or_refused" and f"{topic}/{b.name}" not in objects for b in bad
    )
    assert (
        sum(by_label(metrics, "s3ts_files_failed_total", "reason").values()) == n_failed + refused
    )
    assert value(metrics, "s3ts_files_abandoned_total") == sum(
        b.outcome == "abandoned" for b in bad
    )
    # Nothing was allocated from a declared size (2^40 chunks, 4 GiB fields, offsets of
    # TiB): the processor's peak RSS stays near what the good files need.
    assert peak_kib < 256 * 1024, f"peak RSS {peak_kib} KiB"
    print(
        f"hostile corpus: {len(bad)} kinds, {len(plan)} messages, peak RSS {peak_kib // 1024} MiB"
    )


def test_a_bad_message_is_logged_once_across_a_restart(
    tmp_path: Path, new_topic: Any, new_bucket: Any, s3_client: Any, kafka_bootstrap: str
) -> None:
    """Bad messages above the watermark (held there by a file still waiting for its
    last chunk) are not read and logged again by the next run: their offsets travel
    in the commit metadata as done."""
    topic = new_topic(partitions=1)
    bucket = new_bucket()
    group = f"g-{uuid.uuid4().hex[:8]}"
    content = os.urandom(3000)
    waiting = file_chunks("waiting.dat", content, 2)
    bad = [
        (None, b"not a chunk"),
        ("k", pack(fields(chunk_i=0))),
        ("k", None),
        ("k", pack(fields(subdir_str="../x"))),
    ]
    src = tmp_path / "src"
    write_tree(src, {"ok.dat": os.urandom(2000)})
    plan: list[tuple[str | None, bytes | None, int]] = [("k", waiting[0], 0)]
    plan += [(k, v, 0) for k, v in bad]
    plan += [(k, v, 0) for k, v in encoded_chunks(src, "ok.dat")]
    where = produce_all(kafka_bootstrap, topic, plan)
    bad_at = [o for _, o in where[1 : 1 + len(bad)]]

    first = ProcessorRun(bucket, topic, group, tmp_path / "out", "--n_threads", "1", tag="1")
    first.wait_for(lambda: f"{topic}/ok.dat" in list_objects(s3_client, bucket), 60, "ok.dat")
    first.wait_for(lambda: first.stderr().count("Skipping message") == len(bad), 30, "the skips")
    assert first.quit() == 0
    # The waiting file holds the watermark at its first chunk.
    assert committed_offsets(kafka_bootstrap, topic, group) == {0: where[0][1]}
    # The skipped messages and ok.dat, above it, travel in the commit metadata as done.
    assert where[0][1] == 0
    assert done_above_commit(kafka_bootstrap, topic, group) == {0: [(1, len(plan))]}
    logs = tmp_path / "out" / "LOGS"
    assert journal_outcomes(logs, topic, group) == [("ok.dat", "transferred")]

    produce_all(kafka_bootstrap, topic, [("k", waiting[1], 0)])
    second = ProcessorRun(bucket, topic, group, tmp_path / "out", "--n_threads", "1", tag="2")
    second.wait_for(
        lambda: f"{topic}/waiting.dat" in list_objects(s3_client, bucket), 60, "waiting.dat"
    )
    ends = log_ends(kafka_bootstrap, topic)
    second.wait_for(
        lambda: committed_offsets(kafka_bootstrap, topic, group) == ends, 30, "the commit"
    )
    assert second.quit() == 0
    err = second.stderr()
    assert "Skipping message" not in err, err
    assert read_object(s3_client, bucket, f"{topic}/waiting.dat") == content
    # Nothing above the old commit was read again: ok.dat was not transferred again.
    assert [(e.rel_path, e.outcome) for e in journal_entries(logs, topic, group)] == [
        ("ok.dat", "transferred"),
        ("waiting.dat", "transferred"),
    ]
    assert committed_offsets(kafka_bootstrap, topic, group) == {0: len(plan) + 1}
    assert all(f"{topic}[0]@{o}:" in first.stderr() for o in bad_at)
