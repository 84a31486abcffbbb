"""Registry and journal file names never mix two topics or consumer groups (issue 7, finding 10).

OpenMSIStream's names (``processed_from_<topic>_by_<group>.csv`` and friends) are kept
for the files upstream reads, but our own files are found by exact name only, and where
upstream's name itself cannot tell two topic/group pairs apart the processor refuses to
start instead of merging them.
"""

from __future__ import annotations

import json
import threading
from datetime import datetime
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st
from s3transfer_stream import registry as reg
from s3transfer_stream.journal import JournalEntry, TransferJournal
from s3transfer_stream.registry import (
    InProgressRow,
    ProcessedRow,
    ProducerRegistry,
    RegistryError,
    StreamRegistry,
    UploadedRow,
    read_table,
)

STAMP = "'Mon Jan 06, 2025 at 11:47:37'"
IN_PROGRESS_HEADER = "filename;rel_filepath;status;n_chunks;first_message;most_recent_message"
PROCESSED_HEADER = "filename;rel_filepath;n_chunks;first_message;processed_at"
UPLOADED_HEADER = "filename;rel_filepath;n_chunks;started;completed"
UPLOAD_IN_PROGRESS_HEADER = (
    "filename;rel_filepath;n_chunks;n_chunks_delivered;n_chunks_to_send;started;"
    "chunks_delivered;chunks_to_send"
)


def _snapshot(directory: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in directory.iterdir() if p.is_file()}


def _entry(rel: str, key: str) -> JournalEntry:
    t = datetime(2025, 1, 6, 11, 47, 37)
    return JournalEntry(rel, rel.rsplit("/", 1)[-1], 1, key, 3, t, t, [(0, [(0, 0)])])


# --------------------------------------------------------------------------- group g vs g_t1


@pytest.mark.parametrize("other_group", ["g_t1", "g_t1_1736160457_5", "g_t140234567890"])
def test_group_does_not_swallow_group_named_like_its_thread_files(
    tmp_path: Path, other_group: str
) -> None:
    """Group ``g``'s consolidation must not merge and delete group ``g_t1``'s files
    (``processed_from_x_by_g_t1.csv`` looks like a per-thread file of group ``g``)."""
    other = StreamRegistry(tmp_path, "x", other_group)
    other.register_in_progress("o/pending.dat", "pending.dat", 2)
    other.register_processed("o/done.dat", "done.dat", 1)
    other.close()
    others_file = tmp_path / f"processed_from_x_by_{other_group}.csv"
    assert [r.filename for r in read_table(ProcessedRow, others_file)] == ["done.dat"]
    before = _snapshot(tmp_path)

    mine = StreamRegistry(tmp_path, "x", "g")
    assert mine.processed_rows() == []
    assert mine.per_thread_files() == []
    assert mine.rerun_paths() == []
    mine.register_processed("m.dat", "m.dat", 1)
    mine.close()

    after = _snapshot(tmp_path)
    assert {name: after.get(name) for name in before} == before  # nothing of theirs changed
    main = read_table(ProcessedRow, tmp_path / "processed_from_x_by_g.csv")
    assert [r.filename for r in main] == ["m.dat"]

    # And the other group still sees exactly its own rows.
    again = StreamRegistry(tmp_path, "x", other_group)
    assert [r.filename for r in again.processed_rows()] == ["done.dat"]
    assert again.rerun_paths() == ["o/pending.dat"]
    again.close()


def test_groups_g_and_g_t1_live_side_by_side(tmp_path: Path) -> None:
    """Both open at once in one LOGS directory, rows from the same thread (same ident):
    whichever closes last must not take the other's per-thread or consolidated file."""
    g = StreamRegistry(tmp_path, "x", "g")
    g_t1 = StreamRegistry(tmp_path, "x", "g_t1")
    for i in range(3):
        g.register_processed(f"g{i}.dat", f"g{i}.dat", 1)
        g_t1.register_processed(f"h{i}.dat", f"h{i}.dat", 1)
    assert sorted(r.filename for r in g.processed_rows()) == ["g0.dat", "g1.dat", "g2.dat"]
    assert sorted(r.filename for r in g_t1.processed_rows()) == ["h0.dat", "h1.dat", "h2.dat"]
    g_t1.close()
    g.close()
    assert sorted(
        r.filename for r in read_table(ProcessedRow, tmp_path / "processed_from_x_by_g.csv")
    ) == ["g0.dat", "g1.dat", "g2.dat"]
    assert sorted(
        r.filename for r in read_table(ProcessedRow, tmp_path / "processed_from_x_by_g_t1.csv")
    ) == ["h0.dat", "h1.dat", "h2.dat"]


def test_group_does_not_swallow_upstream_group_named_like_its_thread_files(
    tmp_path: Path,
) -> None:
    """The same with the other group's files written by OpenMSIStream (which always
    creates its in-progress file, under its own 1.8 name)."""
    (tmp_path / "consuming_from_x_in_progress_by_g_t1.csv").write_text(
        IN_PROGRESS_HEADER, encoding="utf-8"
    )
    (tmp_path / "processed_from_x_by_g_t1.csv").write_text(
        f"{PROCESSED_HEADER}\n'o.dat';'o.dat';1;{STAMP};{STAMP}", encoding="utf-8"
    )
    before = _snapshot(tmp_path)
    mine = StreamRegistry(tmp_path, "x", "g")
    assert mine.processed_rows() == []
    mine.close()
    after = _snapshot(tmp_path)
    assert {name: after.get(name) for name in before} == before


def test_own_per_thread_files_are_found_by_exact_name(tmp_path: Path) -> None:
    """Our per-thread files use a private name that no other topic/group (ours or
    OpenMSIStream's) can produce; a crash leaves them behind and the next run merges them."""
    registry = StreamRegistry(tmp_path, "lab_data", "g")
    registry.register_processed("a.dat", "a.dat", 1)
    (own,) = registry.per_thread_files()
    assert own == registry.paths.processed_for_thread(threading.get_ident())
    assert not own.name.startswith(("processed_from_", "consuming_from_"))
    registry.flush()  # no close: as after a crash

    for group in ("g_t1", "g2", "g_t"):
        other = StreamRegistry(tmp_path, "lab_data", group)
        assert other.processed_rows() == [] and other.per_thread_files() == []
        other.close()
    assert own.exists()

    again = StreamRegistry(tmp_path, "lab_data", "g")
    assert not own.exists()
    assert [r.filename for r in again.processed_rows()] == ["a.dat"]
    again.close()


# --------------------------------------------------------------------------- _by_ in topic/group


def test_by_in_topic_and_group_cannot_share_files(tmp_path: Path) -> None:
    """Topic ``a_by_b``/group ``c`` and topic ``a``/group ``b_by_c`` have the same
    OpenMSIStream file names: the second one to use the directory is refused, with an
    error that names the file and both readings; nothing of the first is changed."""
    first = StreamRegistry(tmp_path, "a_by_b", "c")
    first.register_in_progress("p.dat", "p.dat", 2)
    first.register_processed("d.dat", "d.dat", 1)
    first.close()
    before = _snapshot(tmp_path)

    with pytest.raises(RegistryError) as refused:
        StreamRegistry(tmp_path, "a", "b_by_c")
    message = str(refused.value)
    assert "_by_b_by_c" in message  # the shared file name
    assert "'a_by_b'" in message and "'c'" in message
    assert "'a'" in message and "'b_by_c'" in message
    after = _snapshot(tmp_path)
    assert after == before  # refused before touching anything

    # The owner keeps working.
    again = StreamRegistry(tmp_path, "a_by_b", "c")
    assert again.rerun_paths() == ["p.dat"]
    assert [r.filename for r in again.processed_rows()] == ["d.dat"]
    again.close()


def test_by_collision_with_upstream_files_is_refused(tmp_path: Path) -> None:
    """OpenMSIStream ran topic ``a``/group ``b_by_c`` here (its in-progress file has a
    name of its own, ``consuming_from_a_in_progress_by_b_by_c.csv``): topic
    ``a_by_b``/group ``c`` must not adopt its ``processed_from_a_by_b_by_c.csv``."""
    (tmp_path / "consuming_from_a_in_progress_by_b_by_c.csv").write_text(
        IN_PROGRESS_HEADER, encoding="utf-8"
    )
    (tmp_path / "processed_from_a_by_b_by_c.csv").write_text(
        f"{PROCESSED_HEADER}\n'o.dat';'o.dat';1;{STAMP};{STAMP}", encoding="utf-8"
    )
    before = _snapshot(tmp_path)
    with pytest.raises(RegistryError, match="b_by_c"):
        StreamRegistry(tmp_path, "a_by_b", "c")
    assert _snapshot(tmp_path) == before
    # Topic a / group b_by_c itself is fine.
    theirs = StreamRegistry(tmp_path, "a", "b_by_c")
    assert [r.filename for r in theirs.processed_rows()] == ["o.dat"]
    theirs.close()


def test_by_collision_with_earlier_version_journal_is_refused(tmp_path: Path) -> None:
    """An earlier version of this package ran topic ``a``/group ``b_by_c`` here (its
    journal, under the old shared name, holds keys ``a/...``): refused too."""
    (tmp_path / "transfers_a_by_b_by_c.jsonl").write_text(
        _entry("x.dat", "a/x.dat").to_json() + "\n", encoding="utf-8"
    )
    (tmp_path / "consuming_from_a_by_b_by_c_in_progress.csv").write_text(
        IN_PROGRESS_HEADER, encoding="utf-8"
    )
    with pytest.raises(RegistryError, match=r"transfers_a_by_b_by_c\.jsonl"):
        StreamRegistry(tmp_path, "a_by_b", "c")
    StreamRegistry(tmp_path, "a", "b_by_c").close()


def test_unclaimed_ambiguous_files_are_adopted_with_a_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    (tmp_path / "processed_from_a_by_b_by_c.csv").write_text(
        f"{PROCESSED_HEADER}\n'o.dat';'o.dat';1;{STAMP};{STAMP}", encoding="utf-8"
    )
    with caplog.at_level("WARNING", logger="s3transfer_stream"):
        registry = StreamRegistry(tmp_path, "a_by_b", "c")
    assert [r.filename for r in registry.processed_rows()] == ["o.dat"]
    registry.close()
    text = caplog.text
    assert "processed_from_a_by_b_by_c.csv" in text and "'b_by_c'" in text
    # From now on the other reading is refused.
    with pytest.raises(RegistryError, match="s3transfer-stream_claim_"):
        StreamRegistry(tmp_path, "a", "b_by_c")


def test_refused_start_leaves_no_claim(tmp_path: Path) -> None:
    StreamRegistry(tmp_path, "a_by_b", "c").close()
    names = {p.name for p in tmp_path.iterdir()}
    with pytest.raises(RegistryError):
        StreamRegistry(tmp_path, "a", "b_by_c")
    assert {p.name for p in tmp_path.iterdir()} == names


def test_ambiguous_name_alone_is_fine(tmp_path: Path) -> None:
    """A topic with ``_by_`` in its name works as long as no other reading uses the dir."""
    for _ in range(2):
        registry = StreamRegistry(tmp_path, "data_by_site", "lab")
        registry.register_processed("x.dat", "x.dat", 1)
        registry.close()
    rows = read_table(ProcessedRow, tmp_path / "processed_from_data_by_site_by_lab.csv")
    assert [r.filename for r in rows] == ["x.dat", "x.dat"]


def test_journals_of_colliding_pairs_are_separate(tmp_path: Path) -> None:
    one = TransferJournal(tmp_path, "a_by_b", "c")
    two = TransferJournal(tmp_path, "a", "b_by_c")
    assert one.path != two.path
    one.append(_entry("x.dat", "a_by_b/x.dat"))
    one.close()
    two.close()
    assert TransferJournal(tmp_path, "a", "b_by_c").entries == []
    (kept,) = TransferJournal(tmp_path, "a_by_b", "c").entries
    assert kept.key == "a_by_b/x.dat"


def test_in_progress_file_of_one_pair_is_not_legacy_file_of_another(tmp_path: Path) -> None:
    """``consuming_from_a_in_progress_by_b_in_progress.csv`` is our in-progress file of
    topic ``a_in_progress``/group ``b`` and also OpenMSIStream's 1.8 name for topic
    ``a``/group ``b_in_progress``: the latter must not take its rows as its own."""
    first = StreamRegistry(tmp_path, "a_in_progress", "b")
    first.register_in_progress("f.dat", "f.dat", 3)
    first.close()
    assert (tmp_path / "consuming_from_a_in_progress_by_b_in_progress.csv").exists()
    second = StreamRegistry(tmp_path, "a", "b_in_progress")
    assert second.rerun_paths() == []
    assert second.in_progress_rows() == []
    second.close()
    again = StreamRegistry(tmp_path, "a_in_progress", "b")
    assert again.rerun_paths() == ["f.dat"]
    again.close()


def test_upstream_legacy_in_progress_still_read(tmp_path: Path) -> None:
    """OpenMSIStream's own in-progress file of *our* pair is still merged."""
    (tmp_path / "consuming_from_lab_data_in_progress_by_s3_g.csv").write_text(
        f"{IN_PROGRESS_HEADER}\n'x.dat';'d/x.dat';'failed';2;{STAMP};{STAMP}", encoding="utf-8"
    )
    registry = StreamRegistry(tmp_path, "lab_data", "s3_g")
    assert registry.rerun_paths() == ["d/x.dat"]
    registry.close()


# --------------------------------------------------------------------------- journal names


def test_journal_name_is_unchanged_for_plain_names(tmp_path: Path) -> None:
    journal = TransferJournal(tmp_path, "t-0a1b", "g-42.x")
    assert journal.path.name == "transfers_t-0a1b_by_g-42.x.jsonl"
    journal.close()


def test_journal_under_old_name_is_taken_over_when_unambiguous(tmp_path: Path) -> None:
    old = tmp_path / "transfers_lab_data_by_s3.jsonl"
    old.write_text(_entry("x.dat", "lab_data/x.dat").to_json() + "\n", encoding="utf-8")
    journal = TransferJournal(tmp_path, "lab_data", "s3")
    assert [e.key for e in journal.entries] == ["lab_data/x.dat"]
    journal.close()
    assert journal.path.exists() and not old.exists()


def test_ambiguous_old_journal_goes_to_the_topic_its_keys_name(tmp_path: Path) -> None:
    old = tmp_path / "transfers_a_by_b_by_c.jsonl"
    old.write_text(_entry("x.dat", "a/x.dat").to_json() + "\n", encoding="utf-8")
    not_ours = TransferJournal(tmp_path, "a_by_b", "c")
    assert not_ours.entries == []
    not_ours.close()
    assert old.exists()
    ours = TransferJournal(tmp_path, "a", "b_by_c")
    assert [e.key for e in ours.entries] == ["a/x.dat"]
    ours.close()
    assert not old.exists()


# --------------------------------------------------------------------------- producer registry


@pytest.mark.parametrize("other_topic", ["test_p1", "test_pdeadbeef", "test_p1_1736160457_5"])
def test_producer_registry_does_not_swallow_topic_named_like_producer_file(
    tmp_path: Path, other_topic: str
) -> None:
    """Topic ``test`` must not merge and delete topic ``test_p1``'s ``uploaded_to_test_p1.csv``
    (it looks like OpenMSIStream's per-producer file of topic ``test``)."""
    other = ProducerRegistry(tmp_path, other_topic)
    other.register_started("o.dat", "o.dat", 1)
    other.register_chunk_delivered("o.dat", "o.dat", 1, 1)
    other.close()
    before = _snapshot(tmp_path)

    mine = ProducerRegistry(tmp_path, "test")
    assert not mine.is_completed("o.dat")
    assert mine.completed_rows() == []
    mine.close()
    after = _snapshot(tmp_path)
    assert {name: after.get(name) for name in before} == before
    again = ProducerRegistry(tmp_path, other_topic)
    assert again.is_completed("o.dat")
    again.close()


def test_producer_registry_does_not_swallow_upstream_topic_named_like_producer_file(
    tmp_path: Path,
) -> None:
    """The same with topic ``test_p1``'s registry written by OpenMSIStream (which always
    creates its in-progress file)."""
    (tmp_path / "upload_to_test_p1_in_progress.csv").write_text(
        UPLOAD_IN_PROGRESS_HEADER, encoding="utf-8"
    )
    (tmp_path / "uploaded_to_test_p1.csv").write_text(
        f"{UPLOADED_HEADER}\n'o.dat';'o.dat';1;{STAMP};{STAMP}", encoding="utf-8"
    )
    before = _snapshot(tmp_path)
    mine = ProducerRegistry(tmp_path, "test")
    assert not mine.is_completed("o.dat")
    mine.close()
    after = _snapshot(tmp_path)
    assert {name: after.get(name) for name in before} == before


def test_producer_registry_still_merges_real_per_producer_files(tmp_path: Path) -> None:
    (tmp_path / "uploaded_to_test_p7f3a9c2b1d40.csv").write_text(
        f"{UPLOADED_HEADER}\n'a.dat';'a.dat';1;{STAMP};{STAMP}", encoding="utf-8"
    )
    registry = ProducerRegistry(tmp_path, "test")
    assert registry.is_completed("a.dat")
    registry.close()
    assert not (tmp_path / "uploaded_to_test_p7f3a9c2b1d40.csv").exists()
    rows = read_table(UploadedRow, tmp_path / "uploaded_to_test.csv")
    assert [r.filename for r in rows] == ["a.dat"]


def test_producer_registry_creates_its_in_progress_file_at_start(tmp_path: Path) -> None:
    """As OpenMSIStream does: the file marks the topic as present in this directory."""
    ProducerRegistry(tmp_path, "test_p1").close()
    assert (tmp_path / "upload_to_test_p1_in_progress.csv").read_text(
        encoding="utf-8"
    ) == UPLOAD_IN_PROGRESS_HEADER


# --------------------------------------------------------------------------- the encoding

_name_part = st.text(alphabet="ab_y%.-t1Ü/", min_size=1, max_size=12).filter(
    lambda s: "/" not in s and s not in (".", "..")
)


@given(_name_part, _name_part, _name_part, _name_part)
def test_private_names_are_injective(t1: str, g1: str, t2: str, g2: str) -> None:
    logs = Path("/nonexistent")
    a = reg.private_name_token(t1, g1)
    b = reg.private_name_token(t2, g2)
    assert "_" not in a.replace("_by_", "")
    assert (a == b) == ((t1, g1) == (t2, g2))
    assert reg.journal_name(t1, g1) != reg.journal_name(t2, g2) or (t1, g1) == (t2, g2)
    del logs


def test_long_names_stay_within_file_name_limits() -> None:
    token = reg.private_name_token("t" * 249, "数" * 300)
    assert len(reg.journal_name("t" * 249, "数" * 300).encode()) <= 255
    assert token != reg.private_name_token("t" * 249, "数" * 299)


def test_claim_file_is_private_and_readable(tmp_path: Path) -> None:
    registry = StreamRegistry(tmp_path, "a_by_b", "c")
    registry.close()
    claim = registry.paths.claim
    assert claim is not None and claim.exists()
    assert not claim.name.startswith(("processed_from_", "consuming_from_"))
    data = json.loads(claim.read_text(encoding="utf-8"))
    assert (data["topic"], data["group"]) == ("a_by_b", "c")
    # A pair whose names are unambiguous writes no claim.
    plain = StreamRegistry(tmp_path, "lab", "s3")
    plain.close()
    assert plain.paths.claim is None
    assert {p.name for p in tmp_path.iterdir() if "lab" in p.name} == {
        "consuming_from_lab_by_s3_in_progress.csv"
    }


def test_in_progress_rows_written_are_still_upstream_format(tmp_path: Path) -> None:
    registry = StreamRegistry(tmp_path, "a_by_b", "c")
    registry.register_in_progress("x.dat", "x.dat", 1)
    registry.close()
    text = (tmp_path / "consuming_from_a_by_b_by_c_in_progress.csv").read_text(encoding="utf-8")
    assert text.split("\n")[0] == IN_PROGRESS_HEADER
    assert [r.filename for r in read_table(InProgressRow, registry.paths.in_progress)] == ["x.dat"]
