"""Registry CSV files: format compatible with OpenMSIStream, atomic, written lazily within
flush_interval (failures at once), cost per file independent of the table, exact merges."""

from __future__ import annotations

import os
import re
import threading
import time
from datetime import datetime
from pathlib import Path

import pytest
from s3transfer_stream import registry as reg
from s3transfer_stream.registry import (
    DataclassTable,
    InProgressRow,
    ProcessedRow,
    ProducerRegistry,
    RegistryError,
    StreamRegistry,
    UploadInProgressRow,
    read_table,
)

T0 = datetime(2025, 1, 6, 11, 47, 37)
STAMP = "'Mon Jan 06, 2025 at 11:47:37'"
IN_PROGRESS_HEADER = "filename;rel_filepath;status;n_chunks;first_message;most_recent_message"
PROCESSED_HEADER = "filename;rel_filepath;n_chunks;first_message;processed_at"

TRICKY_NAMES = [
    "it's;odd.dat",
    'double"quote.dat',
    "both'\"quotes.dat",
    "back\\slash.dat",
    "ünïcødé · 数据 🚀.dat",
    " leading and trailing spaces .dat",
    "tab\there.dat",
    "new\nline.dat",
    "undecodable-\udcff.dat",  # what os.listdir gives for a non-UTF-8 byte on Linux
    "semi;colon;s.dat",
]


@pytest.fixture
def frozen_now(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(reg.cells, "now", lambda: T0)


def _bytes(path: Path) -> bytes:
    return path.read_bytes()


def _data_lines(path: Path) -> list[str]:
    return path.read_text(encoding="utf-8").split("\n")[1:]


def _leftover_temp_files(directory: Path) -> list[str]:
    return [p.name for p in directory.iterdir() if p.name.endswith(".tmp")]


# --------------------------------------------------------------------------- format


def test_exact_bytes_of_in_progress_file(tmp_path: Path, frozen_now: None) -> None:
    registry = StreamRegistry(tmp_path, "topic", "grp")
    registry.register_in_progress("sub/dir/x.dat", "x.dat", 381)
    registry.register_failed("a/it's;odd.dat", "it's;odd.dat", 2)
    registry.register_failed("top.dat", "top.dat", 1, status="mismatched_hash")

    path = tmp_path / "consuming_from_topic_by_grp_in_progress.csv"
    assert registry.paths.in_progress == path
    expected = (
        f"{IN_PROGRESS_HEADER}\n"
        f"'x.dat';'sub/dir/x.dat';'in_progress';381;{STAMP};{STAMP}\n"
        f'"""it\'s;odd.dat""";"""a/it\'s;odd.dat""";\'failed\';2;{STAMP};{STAMP}\n'
        f"'top.dat';'top.dat';'mismatched_hash';1;{STAMP};{STAMP}"
    ).encode()
    assert _bytes(path) == expected
    assert not _bytes(path).endswith(b"\n")
    registry.close()


def test_exact_bytes_of_producer_in_progress_and_completed(
    tmp_path: Path, frozen_now: None
) -> None:
    registry = ProducerRegistry(tmp_path, "up")
    registry.register_chunk_delivered("d/x.dat", "x.dat", 5, 4)
    registry.register_chunk_delivered("d/x.dat", "x.dat", 5, 1)
    registry.register_chunk_delivered("y.dat", "y.dat", 2, 2)
    registry.flush()
    in_progress = tmp_path / "upload_to_up_in_progress.csv"
    assert (
        _bytes(in_progress)
        == (
            "filename;rel_filepath;n_chunks;n_chunks_delivered;n_chunks_to_send;started;"
            "chunks_delivered;chunks_to_send\n"
            f"'x.dat';'d/x.dat';5;2;3;{STAMP};{{1, 4}};{{2, 3, 5}}\n"
            f"'y.dat';'y.dat';2;1;1;{STAMP};{{2}};{{1}}"
        ).encode()
    )
    registry.register_chunk_delivered("y.dat", "y.dat", 2, 1)
    registry.flush()  # changes reach the files within flush_interval
    completed = tmp_path / "uploaded_to_up.csv"
    assert (
        _bytes(completed)
        == (
            f"filename;rel_filepath;n_chunks;started;completed\n'y.dat';'y.dat';2;{STAMP};{STAMP}"
        ).encode()
    )
    assert _data_lines(in_progress) == [f"'x.dat';'d/x.dat';5;2;3;{STAMP};{{1, 4}};{{2, 3, 5}}"]
    registry.close()


def test_empty_set_is_written_as_set_call(tmp_path: Path, frozen_now: None) -> None:
    registry = ProducerRegistry(tmp_path, "up")
    registry.register_started("z.dat", "z.dat", 2)
    registry.flush()
    assert _data_lines(registry.paths.in_progress) == [
        f"'z.dat';'z.dat';2;0;2;{STAMP};set();{{1, 2}}"
    ]
    registry.close()


def test_reads_file_in_upstream_format(tmp_path: Path) -> None:
    # Bytes as OpenMSIStream 1.8.x's DataclassTable writes them (written by hand here),
    # including the Windows-only "sep=;" first line, CRLF line ends and a backslash
    # that upstream's own reader would not unescape.
    upstream = (
        "sep=;\r\n"
        f"{IN_PROGRESS_HEADER}\r\n"
        f"'x.dat';'sub/dir/x.dat';'in_progress';381;{STAMP};'Mon Jan 06, 2025 at 11:47:40'\r\n"
        f'"""it\'s;odd.dat""";"""a/it\'s;odd.dat""";\'failed\';2;{STAMP};{STAMP}\r\n'
        f'"\'q""uote.dat\'";"\'q""uote.dat\'";\'failed\';1;{STAMP};{STAMP}\r\n'
        f"'b\u00e4ck\\\\slash.dat';'b\u00e4ck\\\\slash.dat';'mismatched_hash';1;{STAMP};{STAMP}"
    )
    legacy = tmp_path / "consuming_from_topic_in_progress_by_grp.csv"
    legacy.write_bytes(upstream.encode("utf-8"))
    rows = {row.rel_filepath.as_posix(): row for row in read_table(InProgressRow, legacy)}
    assert rows["sub/dir/x.dat"] == InProgressRow(
        "x.dat", Path("sub/dir/x.dat"), "in_progress", 381, T0, datetime(2025, 1, 6, 11, 47, 40)
    )
    assert rows["a/it's;odd.dat"].filename == "it's;odd.dat"
    assert rows['q"uote.dat'].status == "failed"
    assert rows["b\u00e4ck\\slash.dat"].filename == "b\u00e4ck\\slash.dat"

    registry = StreamRegistry(tmp_path, "topic", "grp")
    assert registry.rerun_paths() == sorted(rows)
    registry.close()


def test_reads_upstream_producer_sets(tmp_path: Path) -> None:
    path = tmp_path / "upload_to_up_in_progress.csv"
    path.write_bytes(
        (
            "filename;rel_filepath;n_chunks;n_chunks_delivered;n_chunks_to_send;started;"
            "chunks_delivered;chunks_to_send\n"
            f"'x.dat';'x.dat';5;2;3;{STAMP};{{1, 4}};{{2, 3, 5}}\n"
            f"'y.dat';'y.dat';1;0;1;{STAMP};set();{{1}}"
        ).encode()
    )
    registry = ProducerRegistry(tmp_path, "up")
    assert registry.chunks_to_send("x.dat") == {2, 3, 5}
    assert registry.chunks_to_send("y.dat") == {1}
    assert registry.chunks_to_send("unknown.dat") == set()
    rows = registry.in_progress_rows()
    assert rows[0].chunks_delivered == {1, 4}
    assert rows[1].chunks_delivered == set()
    registry.close()


def test_wrong_header_names_file_and_line(tmp_path: Path) -> None:
    path = tmp_path / "consuming_from_topic_by_grp_in_progress.csv"
    path.write_text("filename;rel_filepath;status\n'x';'x';'failed'", encoding="utf-8")
    with pytest.raises(RegistryError, match=rf"{re.escape(str(path))}, line 1: the header"):
        StreamRegistry(tmp_path, "topic", "grp")
    assert path.read_text(encoding="utf-8").startswith("filename;rel_filepath;status\n")


def test_wrong_cell_count_names_line(tmp_path: Path) -> None:
    path = tmp_path / "t.csv"
    path.write_text(f"{PROCESSED_HEADER}\n'a';'a';1;{STAMP};{STAMP}\n'b';'b';1", encoding="utf-8")
    with pytest.raises(RegistryError, match=r"t\.csv, line 3: 3 cells, expected 5"):
        read_table(ProcessedRow, path)


def test_tricky_names_round_trip(tmp_path: Path) -> None:
    registry = StreamRegistry(tmp_path, "topic", "grp")
    for i, name in enumerate(TRICKY_NAMES):
        registry.register_in_progress(f"dir {i}/{name}", name, i + 1)
    registry.register_processed(f"done/{TRICKY_NAMES[0]}", TRICKY_NAMES[0], 3)
    registry.close()

    reopened = StreamRegistry(tmp_path, "topic", "grp")
    rows = reopened.in_progress_rows()
    assert [row.filename for row in rows] == TRICKY_NAMES
    by_path = {row.rel_filepath.as_posix(): row for row in rows}
    for i, name in enumerate(TRICKY_NAMES):
        assert by_path[f"dir {i}/{name}"].filename == name
        assert by_path[f"dir {i}/{name}"].n_chunks == i + 1
    processed = reopened.processed_rows()
    assert [(row.filename, row.rel_filepath.as_posix()) for row in processed] == [
        (TRICKY_NAMES[0], f"done/{TRICKY_NAMES[0]}")
    ]
    reopened.close()
    # The file itself is valid UTF-8 and has exactly one line per row (newlines escaped).
    text = (tmp_path / "consuming_from_topic_by_grp_in_progress.csv").read_text(encoding="utf-8")
    assert len(text.split("\n")) == 1 + len(TRICKY_NAMES)


# --------------------------------------------------------------------------- stream registry


def test_legacy_upstream_in_progress_name_is_read_once(tmp_path: Path, frozen_now: None) -> None:
    legacy = tmp_path / "consuming_from_topic_in_progress_by_grp.csv"
    legacy_bytes = (
        f"{IN_PROGRESS_HEADER}\n'x.dat';'sub/x.dat';'failed';4;{STAMP};{STAMP}\n"
        f"'top.dat';'top.dat';'in_progress';1;{STAMP};{STAMP}"
    ).encode()
    legacy.write_bytes(legacy_bytes)
    old = time.time() - 60
    os.utime(legacy, (old, old))

    registry = StreamRegistry(tmp_path, "topic", "grp")
    assert registry.rerun_paths() == ["sub/x.dat", "top.dat"]
    ours = tmp_path / "consuming_from_topic_by_grp_in_progress.csv"
    assert sorted(_data_lines(ours)) == sorted(legacy_bytes.decode().split("\n")[1:])
    registry.register_processed("sub/x.dat", "x.dat", 4)
    registry.register_processed("top.dat", "top.dat", 1)
    registry.close()
    assert _bytes(legacy) == legacy_bytes  # upstream's file is never touched
    assert _data_lines(ours) == []

    # Our file is now newer than upstream's: its rows are not merged again.
    reopened = StreamRegistry(tmp_path, "topic", "grp")
    assert reopened.rerun_paths() == []
    assert len(reopened.processed_rows()) == 2
    reopened.close()


def test_rerun_paths_lists_in_progress_and_failed_of_previous_run(tmp_path: Path) -> None:
    first = StreamRegistry(tmp_path, "topic", "grp", flush_interval=3600)
    first.register_in_progress("a/b/partial.dat", "partial.dat", 3)
    first.register_failed("failed.dat", "failed.dat", 2)
    first.register_in_progress("done.dat", "done.dat", 1)
    first.register_processed("done.dat", "done.dat", 1)
    first.flush()  # as the timer does every flush_interval
    # A crash: no close().
    second = StreamRegistry(tmp_path, "topic", "grp")
    assert second.rerun_paths() == ["a/b/partial.dat", "failed.dat"]
    assert {row.status for row in second.in_progress_rows()} == {"in_progress", "failed"}
    assert [row.rel_filepath.as_posix() for row in second.processed_rows()] == ["done.dat"]
    second.close()
    first.close()


def test_failed_row_goes_back_to_in_progress_and_first_message_is_kept(tmp_path: Path) -> None:
    registry = StreamRegistry(tmp_path, "topic", "grp", flush_interval=0.05)
    registry.register_failed("x.dat", "x.dat", 2)
    first = registry.in_progress_rows()[0].first_message
    time.sleep(0.1)
    registry.register_in_progress("x.dat", "x.dat", 2)
    on_disk = read_table(InProgressRow, registry.paths.in_progress)
    assert [row.status for row in on_disk] == ["in_progress"]
    registry.register_processed("x.dat", "x.dat", 2)
    (row,) = registry.processed_rows()
    assert row.first_message == first
    assert registry.in_progress_rows() == []
    registry.flush()  # the removal is written lazily (at the latest by the timer or close)
    assert read_table(InProgressRow, registry.paths.in_progress) == []
    registry.close()


def test_new_rows_are_written_lazily_but_failures_at_once(tmp_path: Path) -> None:
    registry = StreamRegistry(tmp_path, "topic", "grp", flush_interval=3600)
    path = registry.paths.in_progress
    registry.register_in_progress("x.dat", "x.dat", 2)
    # Written at start (empty) less than flush_interval ago: the new row waits.
    assert read_table(InProgressRow, path) == []
    assert [r.rel_filepath for r in registry.in_progress_rows()] == [Path("x.dat")]
    registry.register_failed("y.dat", "y.dat", 1)  # nothing else would restore a failure
    assert [(r.rel_filepath, r.status) for r in read_table(InProgressRow, path)] == [
        (Path("x.dat"), "in_progress"),
        (Path("y.dat"), "failed"),
    ]
    registry.mark_waiting("z.dat", "z.dat", 4)
    assert [r.status for r in read_table(InProgressRow, path)][-1] == "waiting_for_chunks"
    registry.register_in_progress("w.dat", "w.dat", 1)
    registry.flush()
    assert [r.rel_filepath.as_posix() for r in read_table(InProgressRow, path)] == [
        "x.dat",
        "y.dat",
        "z.dat",
        "w.dat",
    ]
    registry.close()


def test_a_table_not_written_for_flush_interval_is_written_at_once(tmp_path: Path) -> None:
    registry = StreamRegistry(tmp_path, "topic", "grp", flush_interval=0.05)
    time.sleep(0.1)
    registry.register_in_progress("x.dat", "x.dat", 2)
    assert [r.rel_filepath for r in read_table(InProgressRow, registry.paths.in_progress)] == [
        Path("x.dat")
    ]
    registry.register_processed("x.dat", "x.dat", 2)  # a new per-thread table: written
    (path,) = registry.per_thread_files()
    assert [r.filename for r in read_table(ProcessedRow, path)] == ["x.dat"]
    registry.close()


def test_timer_writes_processed_rows_within_flush_interval(tmp_path: Path) -> None:
    interval = 0.2
    registry = StreamRegistry(tmp_path, "topic", "grp", flush_interval=interval)
    registry.start()
    registry.register_in_progress("a.dat", "a.dat", 1)
    registry.register_processed("a.dat", "a.dat", 1)  # first write of the table: at once
    registry.register_in_progress("b.dat", "b.dat", 1)
    registry.register_processed("b.dat", "b.dat", 1)  # within the interval: lazily
    (path,) = registry.per_thread_files()

    def on_disk() -> tuple[list[str], list[str]]:
        return (
            [r.filename for r in read_table(ProcessedRow, path)],
            [r.filename for r in read_table(InProgressRow, registry.paths.in_progress)],
        )

    deadline = time.monotonic() + 20 * interval
    while on_disk() != (["a.dat", "b.dat"], []) and time.monotonic() < deadline:
        time.sleep(interval / 4)
    assert on_disk() == (["a.dat", "b.dat"], [])
    registry.close()


def _count_writes(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Every atomic write of a registry table from now on, as its size in bytes."""
    sizes: list[int] = []
    real = reg.table.write_atomic

    def counting(path: Path, text: str) -> None:
        sizes.append(len(text.encode("utf-8")))
        real(path, text)

    monkeypatch.setattr(reg.table, "write_atomic", counting)
    return sizes


def test_cost_per_file_does_not_grow_with_the_table(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # What the processor does for each file, 2000 times. Rewriting a table on every
    # change (as before) made 6000 writes (and fsyncs) of 107 MB in all for these files,
    # growing with the square of the files per table.
    n_files = 2000
    registry = StreamRegistry(tmp_path, "topic", "grp", flush_interval=3600)
    writes = _count_writes(monkeypatch)
    for i in range(n_files):
        rel = f"d{i % 7}/file_{i:06d}.dat"
        registry.register_in_progress(rel, rel.rsplit("/", 1)[1], 3)
        registry.register_processed(rel, rel.rsplit("/", 1)[1], 3)
    table_bytes = len(reg.render_table(ProcessedRow, registry.processed_rows()).encode())
    # The first write of each per-thread table and its write when rotated at 1000 rows.
    assert len(writes) <= 2 * (n_files // reg.MAX_ROWS_PER_FILE + 1)
    assert sum(writes) <= table_bytes  # about each row once, not once per later file
    registry.close()
    assert len(writes) <= 2 * (n_files // reg.MAX_ROWS_PER_FILE + 1) + 3
    main = read_table(ProcessedRow, registry.paths.processed)
    assert [r.rel_filepath.as_posix() for r in main] == [
        f"d{i % 7}/file_{i:06d}.dat" for i in range(n_files)
    ]
    assert read_table(InProgressRow, registry.paths.in_progress) == []


def test_producer_cost_per_file_does_not_grow_with_the_completed_table(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # What DataFileUploadDirectory does for each one-chunk file. Writing both tables at
    # each start and completion made three writes per file, one of them of the whole
    # completed table: 19 CPU-ms per file over 1000 files (benches/producers.py).
    n_files = 2000
    registry = ProducerRegistry(tmp_path, "up", flush_interval=3600)
    writes = _count_writes(monkeypatch)
    for i in range(n_files):
        rel = f"d{i % 7}/file_{i:06d}.dat"
        registry.register_started(rel, rel.rsplit("/", 1)[1], 1)
        registry.register_chunk_delivered(rel, rel.rsplit("/", 1)[1], 1, 1)
    assert len(writes) <= 2  # the first change of each table (none written before)
    assert all(registry.is_completed(f"d{i % 7}/file_{i:06d}.dat") for i in range(n_files))
    registry.close()
    assert len(writes) <= 4
    done = read_table(reg.UploadedRow, registry.paths.completed)
    assert [r.rel_filepath.as_posix() for r in done] == [
        f"d{i % 7}/file_{i:06d}.dat" for i in range(n_files)
    ]
    assert read_table(UploadInProgressRow, registry.paths.in_progress) == []


def test_crash_before_the_timer_loses_only_rows_a_restart_restores(tmp_path: Path) -> None:
    # The processor's contract: the transfer journal (fsynced before register_processed)
    # lists every transfer; at start, rows missing from processed_rows() are registered
    # again with their processed_at and stale in-progress rows are discarded.
    journal: list[tuple[str, datetime]] = []
    first = StreamRegistry(tmp_path, "topic", "grp", flush_interval=3600)
    for i in range(30):
        rel = f"f{i:02d}.dat"
        first.register_in_progress(rel, rel, 1)
        if i == 12:
            first.flush()  # the timer ran once, while f12 was in progress
        when = datetime(2025, 1, 6, 12, 0, i)
        journal.append((rel, when))
        first.register_processed(rel, rel, 1, processed_at=when)
    first.register_in_progress("partial.dat", "partial.dat", 2)
    # SIGKILL: no close(); the changes since the flush were never written. The files
    # on disk are the complete state of the flush.
    on_disk = [
        r.rel_filepath.as_posix()
        for p in first.per_thread_files()
        for r in read_table(ProcessedRow, p)
    ]
    assert on_disk == [f"f{i:02d}.dat" for i in range(12)]

    second = StreamRegistry(tmp_path, "topic", "grp")
    # partial.dat is not listed (its messages are read again from the committed offsets).
    assert second.rerun_paths() == ["f12.dat"]
    have = {(r.rel_filepath.as_posix(), r.processed_at) for r in second.processed_rows()}
    restored = 0
    for rel, when in journal:
        second.discard_in_progress(rel, started_by=when)
        if (rel, when) not in have:
            second.register_processed(rel, rel, 1, processed_at=when)
            restored += 1
    assert restored == 18
    assert second.in_progress_rows() == []
    second.close()
    rows = read_table(ProcessedRow, second.paths.processed)
    assert [(r.rel_filepath.as_posix(), r.processed_at) for r in rows] == journal
    assert read_table(InProgressRow, second.paths.in_progress) == []
    # A second restart finds every row: nothing is restored twice.
    third = StreamRegistry(tmp_path, "topic", "grp")
    have = {(r.rel_filepath.as_posix(), r.processed_at) for r in third.processed_rows()}
    assert [entry for entry in journal if entry not in have] == []
    third.close()


def test_per_thread_file_rotates_at_1000_rows(tmp_path: Path) -> None:
    registry = StreamRegistry(tmp_path, "topic", "grp")
    for i in range(1001):
        registry.register_processed(f"d/f{i}.dat", f"f{i}.dat", 1)
    ident = threading.get_ident()
    current = tmp_path / f"s3transfer-stream_processed_topic_by_grp_t{ident}.csv"
    assert registry.paths.processed_for_thread(ident) == current
    rotated = [
        p
        for p in tmp_path.iterdir()
        if re.fullmatch(rf"s3transfer-stream_processed_topic_by_grp_t{ident}_\d+_\d+\.csv", p.name)
    ]
    assert len(rotated) == 1
    assert len(read_table(ProcessedRow, rotated[0])) == 1000
    assert [r.filename for r in read_table(ProcessedRow, current)] == ["f1000.dat"]
    assert len(registry.processed_rows()) == 1001

    registry.close()
    main = tmp_path / "processed_from_topic_by_grp.csv"
    assert [r.filename for r in read_table(ProcessedRow, main)] == [
        f"f{i}.dat" for i in range(1001)
    ]
    assert registry.per_thread_files() == []
    assert not current.exists() and not rotated[0].exists()


def test_consolidation_does_not_touch_other_topics_or_groups(tmp_path: Path) -> None:
    line = f"'o.dat';'o.dat';1;{STAMP};{STAMP}"
    others = {
        "processed_from_test2_by_grp_t1.csv",  # topic with our topic as prefix
        "processed_from_test2_by_grp.csv",
        "processed_from_test_by_grp2_t1.csv",  # group with our group as prefix
        "processed_from_test_by_grp_tx.csv",  # not a thread file name
        "processed_from_test_by_grp_t1_extra.csv",
    }
    for name in others:
        (tmp_path / name).write_text(f"{PROCESSED_HEADER}\n{line}", encoding="utf-8")
    before = {name: _bytes(tmp_path / name) for name in others}
    # Leftovers of a crashed run of *our* topic and group: a current and a rotated file.
    (tmp_path / "processed_from_test_by_grp_t77.csv").write_text(
        f"{PROCESSED_HEADER}\n'a.dat';'a.dat';1;{STAMP};{STAMP}", encoding="utf-8"
    )
    (tmp_path / "processed_from_test_by_grp_t77_1736160457_123456.csv").write_text(
        f"{PROCESSED_HEADER}\n'b.dat';'b.dat';1;{STAMP};{STAMP}", encoding="utf-8"
    )

    registry = StreamRegistry(tmp_path, "test", "grp")
    main = tmp_path / "processed_from_test_by_grp.csv"
    assert sorted(r.filename for r in read_table(ProcessedRow, main)) == ["a.dat", "b.dat"]
    assert not (tmp_path / "processed_from_test_by_grp_t77.csv").exists()
    assert not (tmp_path / "processed_from_test_by_grp_t77_1736160457_123456.csv").exists()
    registry.register_processed("c.dat", "c.dat", 1)
    registry.close()
    assert sorted(r.filename for r in read_table(ProcessedRow, main)) == ["a.dat", "b.dat", "c.dat"]
    assert {name: _bytes(tmp_path / name) for name in others} == before


def test_file_processed_twice_gives_two_rows(tmp_path: Path) -> None:
    registry = StreamRegistry(tmp_path, "topic", "grp")
    for _ in range(2):
        registry.register_in_progress("sub/x.dat", "x.dat", 3)
        registry.register_processed("sub/x.dat", "x.dat", 3)
    registry.close()
    again = StreamRegistry(tmp_path, "topic", "grp")
    again.register_processed("sub/x.dat", "x.dat", 3)
    again.close()
    rows = read_table(ProcessedRow, tmp_path / "processed_from_topic_by_grp.csv")
    assert [r.rel_filepath.as_posix() for r in rows] == ["sub/x.dat"] * 3


def test_processed_rows_from_several_threads_before_consolidation(tmp_path: Path) -> None:
    registry = StreamRegistry(tmp_path, "topic", "grp")

    def work(i: int) -> None:
        registry.register_processed(f"t{i}.dat", f"t{i}.dat", 1)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    files = registry.per_thread_files()
    assert len(files) == 3
    assert sorted(r.filename for p in files for r in read_table(ProcessedRow, p)) == [
        "t0.dat",
        "t1.dat",
        "t2.dat",
    ]
    assert sorted(r.filename for r in registry.processed_rows()) == ["t0.dat", "t1.dat", "t2.dat"]
    registry.close()


# --------------------------------------------------------------------------- atomicity, staleness


def test_failed_replace_leaves_old_content_intact(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    registry = StreamRegistry(tmp_path, "topic", "grp")
    registry.register_in_progress("x.dat", "x.dat", 2)
    path = registry.paths.in_progress
    before = _bytes(path)

    def broken_replace(src: object, dst: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", broken_replace)
    registry.register_failed("y.dat", "y.dat", 1)  # forced write fails: logged, kept dirty
    assert _bytes(path) == before
    assert _leftover_temp_files(tmp_path) == []
    with pytest.raises(OSError, match="No space left"):
        registry.flush()
    assert _bytes(path) == before

    monkeypatch.undo()
    registry.flush()
    assert sorted(r.filename for r in read_table(InProgressRow, path)) == ["x.dat", "y.dat"]
    registry.close()


def test_failed_write_of_temp_file_leaves_old_content(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "table.csv"
    table: DataclassTable[ProcessedRow] = DataclassTable(ProcessedRow, path)
    table.add(ProcessedRow("a.dat", Path("a.dat"), 1, T0, T0))
    table.write()
    before = _bytes(path)

    def broken_fsync(fd: int) -> None:
        raise OSError(5, "I/O error")

    monkeypatch.setattr(os, "fsync", broken_fsync)
    table.add(ProcessedRow("b.dat", Path("b.dat"), 1, T0, T0))
    with pytest.raises(OSError, match="I/O error"):
        table.write()
    assert _bytes(path) == before
    assert _leftover_temp_files(tmp_path) == []
    assert table.dirty


def test_copy_while_writing_is_always_a_complete_table(tmp_path: Path) -> None:
    registry = StreamRegistry(tmp_path, "topic", "grp")
    path = registry.paths.in_progress
    stop = threading.Event()
    bad: list[str] = []

    def copier() -> None:
        while not stop.is_set():
            try:
                text = path.read_bytes().decode("utf-8")
            except FileNotFoundError:
                bad.append("missing")
                continue
            if not text.startswith(IN_PROGRESS_HEADER):
                bad.append(text[:80])
            else:
                read_table(InProgressRow, path)  # parses completely

    thread = threading.Thread(target=copier)
    thread.start()
    try:
        for i in range(200):
            registry.register_in_progress(f"f{i}.dat", f"f{i}.dat", 2)
            registry.flush()  # a write of the whole table each time
    finally:
        stop.set()
        thread.join()
    assert bad == []
    assert len(read_table(InProgressRow, path)) == 200
    registry.close()


def test_timer_flushes_throttled_changes(tmp_path: Path) -> None:
    interval = 0.2
    registry = StreamRegistry(tmp_path, "topic", "grp", flush_interval=interval)
    registry.register_failed("x.dat", "x.dat", 2)  # forced write
    registry.register_in_progress("x.dat", "x.dat", 2)  # throttled: too soon after the write
    path = registry.paths.in_progress

    time.sleep(3 * interval)  # no timer yet: nothing else writes
    assert [r.status for r in read_table(InProgressRow, path)] == ["failed"]

    registry.start()
    deadline = time.monotonic() + 10 * interval
    while time.monotonic() < deadline:
        if [r.status for r in read_table(InProgressRow, path)] == ["in_progress"]:
            break
        time.sleep(interval / 4)
    assert [r.status for r in read_table(InProgressRow, path)] == ["in_progress"]
    timer_threads = [t for t in threading.enumerate() if t.name == "registry-flush-topic"]
    assert len(timer_threads) == 1 and timer_threads[0].daemon
    registry.close()
    assert not timer_threads[0].is_alive()


def test_close_writes_pending_changes(tmp_path: Path) -> None:
    registry = StreamRegistry(tmp_path, "topic", "grp", flush_interval=3600)
    registry.register_failed("x.dat", "x.dat", 2)
    registry.register_in_progress("x.dat", "x.dat", 2)
    registry.close()
    assert [r.status for r in read_table(InProgressRow, registry.paths.in_progress)] == [
        "in_progress"
    ]


def test_thread_safety_smoke(tmp_path: Path) -> None:
    registry = StreamRegistry(tmp_path, "topic", "grp", flush_interval=0.01)
    registry.start()
    n_threads, n_files = 8, 40
    errors: list[BaseException] = []

    def work(t: int) -> None:
        try:
            for i in range(n_files):
                rel = f"t{t}/f{i}.dat"
                for _ in range(3):
                    registry.register_in_progress(rel, f"f{i}.dat", 3)
                if i % 10 == 0:
                    registry.register_failed(rel, f"f{i}.dat", 3)
                    registry.register_in_progress(rel, f"f{i}.dat", 3)
                registry.register_processed(rel, f"f{i}.dat", 3)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(t,)) for t in range(n_threads)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    expected = sorted(f"t{t}/f{i}.dat" for t in range(n_threads) for i in range(n_files))
    registry.flush()  # the last changes may be younger than flush_interval
    on_disk = [
        r.rel_filepath.as_posix()
        for p in registry.per_thread_files()
        for r in read_table(ProcessedRow, p)
    ]
    assert sorted(on_disk) == expected
    registry.close()
    assert read_table(InProgressRow, registry.paths.in_progress) == []
    main = read_table(ProcessedRow, registry.paths.processed)
    assert sorted(r.rel_filepath.as_posix() for r in main) == expected
    assert registry.per_thread_files() == []


def test_names_with_path_separators_are_refused(tmp_path: Path) -> None:
    with pytest.raises(RegistryError, match="group id"):
        StreamRegistry(tmp_path, "topic", "a/b")
    with pytest.raises(RegistryError, match="topic"):
        ProducerRegistry(tmp_path, "..")
    assert list(tmp_path.iterdir()) == []


def test_every_name_the_package_had_is_still_importable_from_it() -> None:
    # The registry was one module; code and tests import these from it.
    for name in (
        *("ABANDONED", "FAILED", "MISMATCHED_HASH", "IN_PROGRESS", "WAITING"),
        *("DEFAULT_FLUSH_INTERVAL", "MAX_ROWS_PER_FILE", "PRIVATE_PREFIX"),
        *("DataclassTable", "RegistryError", "NameReading"),
        *("InProgressRow", "ProcessedRow", "UploadInProgressRow", "UploadedRow"),
        *("StreamRegistry", "StreamRegistryPaths", "ProducerRegistry", "ProducerRegistryPaths"),
        *("format_timestamp", "parse_timestamp", "parse_table", "read_table", "render_table"),
        *("journal_name", "journal_path", "name_readings", "private_name_token"),
    ):
        assert name in reg.__all__ and getattr(reg, name) is not None, name


# --------------------------------------------------------------------------- producer registry


def test_producer_registry_completes_and_resumes(tmp_path: Path) -> None:
    registry = ProducerRegistry(tmp_path, "up")
    registry.register_started("d/x.dat", "x.dat", 4)
    for chunk in (3, 1):
        registry.register_chunk_delivered("d/x.dat", "x.dat", 4, chunk)
    registry.register_chunk_delivered("d/x.dat", "x.dat", 4, 3)  # duplicate ack
    assert registry.chunks_to_send("d/x.dat") == {2, 4}
    assert not registry.is_completed("d/x.dat")
    registry.close()  # as after a stop in the middle of the upload

    resumed = ProducerRegistry(tmp_path, "up")
    (row,) = resumed.in_progress_rows()
    assert (row.n_chunks_delivered, row.n_chunks_to_send) == (2, 2)
    assert row.chunks_delivered == {1, 3}
    assert resumed.chunks_to_send("d/x.dat") == {2, 4}
    resumed.register_started("d/x.dat", "x.dat", 4)  # same version: progress kept
    assert resumed.chunks_to_send("d/x.dat") == {2, 4}
    resumed.register_chunk_delivered("d/x.dat", "x.dat", 4, 4)
    resumed.register_chunk_delivered("d/x.dat", "x.dat", 4, 2)
    assert resumed.is_completed("d/x.dat")
    assert resumed.chunks_to_send("d/x.dat") == set()
    resumed.flush()
    assert read_table(UploadInProgressRow, resumed.paths.in_progress) == []
    (done,) = read_table(reg.UploadedRow, resumed.paths.completed)
    assert (done.filename, done.rel_filepath, done.n_chunks) == ("x.dat", Path("d/x.dat"), 4)
    assert done.started == row.started

    # The file changes and is uploaded again: a second completed row.
    resumed.register_started("d/x.dat", "x.dat", 2)
    assert not resumed.is_completed("d/x.dat")
    resumed.register_chunk_delivered("d/x.dat", "x.dat", 2, 1)
    resumed.register_chunk_delivered("d/x.dat", "x.dat", 2, 2)
    resumed.close()
    rows = read_table(reg.UploadedRow, tmp_path / "uploaded_to_up.csv")
    assert [(r.rel_filepath.as_posix(), r.n_chunks) for r in rows] == [
        ("d/x.dat", 4),
        ("d/x.dat", 2),
    ]


def test_producer_registry_restart_file_starts_the_file_over(tmp_path: Path) -> None:
    registry = ProducerRegistry(tmp_path, "up")
    registry.register_started("d/x.dat", "x.dat", 3)
    registry.register_chunk_delivered("d/x.dat", "x.dat", 3, 1)
    registry.register_chunk_delivered("d/x.dat", "x.dat", 3, 2)
    assert registry.chunks_to_send("d/x.dat") == {3}

    # A changed file with the same chunk count: without restart_file it would resume.
    registry.restart_file("d/x.dat")
    assert registry.in_progress_rows() == []
    assert read_table(UploadInProgressRow, registry.paths.in_progress) == []  # written at once
    registry.register_started("d/x.dat", "x.dat", 3)
    assert registry.chunks_to_send("d/x.dat") == {1, 2, 3}
    registry.flush()
    (row,) = read_table(UploadInProgressRow, registry.paths.in_progress)
    assert (row.chunks_delivered, row.chunks_to_send) == (set(), {1, 2, 3})

    registry.restart_file("never/started.dat")  # no row: nothing to forget
    assert [r.rel_filepath for r in registry.in_progress_rows()] == [Path("d/x.dat")]
    registry.close()


def test_producer_registry_restart_file_logs_a_failed_write(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    registry = ProducerRegistry(tmp_path, "up", flush_interval=3600)
    registry.register_started("d/x.dat", "x.dat", 2)
    registry.register_chunk_delivered("d/x.dat", "x.dat", 2, 1)
    registry.flush()

    def broken_replace(src: object, dst: object) -> None:
        raise OSError("disk gone")

    monkeypatch.setattr(os, "replace", broken_replace)
    with caplog.at_level("WARNING", logger="s3transfer_stream.registry"):
        registry.restart_file("d/x.dat")  # must not raise
    monkeypatch.undo()
    assert "d/x.dat" in caplog.text and "disk gone" in caplog.text
    assert registry.in_progress_rows() == []
    (stale,) = read_table(UploadInProgressRow, registry.paths.in_progress)
    assert stale.chunks_delivered == {1}
    registry.close()  # the table stayed dirty: close writes it
    assert read_table(UploadInProgressRow, registry.paths.in_progress) == []
    assert _leftover_temp_files(tmp_path) == []


def test_producer_registry_merges_upstream_per_producer_files(tmp_path: Path) -> None:
    header = "filename;rel_filepath;n_chunks;started;completed"
    (tmp_path / "uploaded_to_up_p7f3a9c2b1d40.csv").write_text(
        f"{header}\n'a.dat';'a.dat';1;{STAMP};{STAMP}", encoding="utf-8"
    )
    (tmp_path / "uploaded_to_up_p7f3a9c2b1d40_1736160457_5.csv").write_text(
        f"{header}\n'b.dat';'s/b.dat';2;{STAMP};{STAMP}", encoding="utf-8"
    )
    other = tmp_path / "uploaded_to_up2_p7f3a9c2b1d40.csv"
    other.write_text(f"{header}\n'c.dat';'c.dat';1;{STAMP};{STAMP}", encoding="utf-8")
    registry = ProducerRegistry(tmp_path, "up")
    assert registry.is_completed("a.dat") and registry.is_completed("s/b.dat")
    assert not registry.is_completed("c.dat")
    rows = read_table(reg.UploadedRow, tmp_path / "uploaded_to_up.csv")
    assert sorted(r.filename for r in rows) == ["a.dat", "b.dat"]
    assert not (tmp_path / "uploaded_to_up_p7f3a9c2b1d40.csv").exists()
    assert other.exists()
    registry.close()


def test_torn_writes_of_our_tables_are_removed_at_start(tmp_path: Path) -> None:
    # What a crash between mkstemp and os.replace leaves: the table itself is intact.
    torn = [
        ".consuming_from_t_by_g_in_progress.csv.k2j4h5.tmp",
        ".processed_from_t_by_g.csv.a8d9f0.tmp",
        ".upload_to_up_in_progress.csv.z1x2c3.tmp",
        ".uploaded_to_up.csv.q4w5e6.tmp",
    ]
    foreign = [
        ".uploaded_to_up2.csv.q4w5e6.tmp",  # another topic's table
        ".upload_to_up_versions.jsonl.tmp",  # the upload directory's version log, not a table
        ".consuming_from_t_by_g2_in_progress.csv.k2j4h5.tmp",
    ]
    for name in torn + foreign:
        (tmp_path / name).write_text("half a table", encoding="utf-8")
    StreamRegistry(tmp_path, "t", "g").close()
    ProducerRegistry(tmp_path, "up").close()
    assert sorted(_leftover_temp_files(tmp_path)) == sorted(foreign)


def test_producer_registry_refuses_a_bad_flush_interval_before_creating_files(
    tmp_path: Path,
) -> None:
    logs = tmp_path / "LOGS"
    for make in (
        lambda: StreamRegistry(logs, "t", "g", flush_interval=0),
        lambda: ProducerRegistry(logs, "up", flush_interval=0),
    ):
        with pytest.raises(ValueError, match="flush_interval"):
            make()
        assert not logs.exists()


def test_producer_registry_chunk_index_checked(tmp_path: Path) -> None:
    registry = ProducerRegistry(tmp_path, "up")
    with pytest.raises(ValueError, match="chunk_i 0"):
        registry.register_chunk_delivered("x.dat", "x.dat", 3, 0)
    registry.close()
    assert read_table(UploadInProgressRow, registry.paths.in_progress) == []
    assert read_table(reg.UploadedRow, registry.paths.completed) == []
