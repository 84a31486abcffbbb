"""Interoperability with OpenMSIStream 1.8.8, on the real Kafka broker and S3 server.

* OpenMSIStream's producers (DataFileUploadDirectory, UploadDataFile) -> our
  S3TransferStreamProcessor, run with OpenMSIStream's own config file;
* our producers (UploadDataFile, DataFileUploadDirectory) -> OpenMSIStream's
  S3TransferStreamProcessor;
* each program's registry CSV files read by the other's reader.

OpenMSIStream runs from its own venv (services/openmsistream-peer.sh), as separate
programs driven through stdin like a person would, never imported here.
"""

from __future__ import annotations

import importlib.util
import random
import shutil
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from helpers import ProcessorRun, list_objects, read_object, write_tree
from peer import OUR_BIN, Program, install_peer, key_partitions, run_peer_script, tail
from peer import write_peer_config as write_config
from s3transfer_stream.kafka import create_topic, delete_topic
from s3transfer_stream.registry import InProgressRow, ProcessedRow, UploadedRow, read_table

pytestmark = pytest.mark.integration

SMALL_CHUNK = 16384
DEFAULT_CHUNK = 524288


@pytest.fixture(scope="session")
def peer_python() -> Path:
    try:
        return install_peer()
    except RuntimeError as exc:
        pytest.fail(str(exc))


def uploaded_rel_paths(logs: Path, topic: str) -> dict[str, int]:
    """rel path -> n_chunks of every file an upload registry lists as completed,
    over the consolidated file and OpenMSIStream's per-producer files."""
    out: dict[str, int] = {}
    for path in sorted(logs.glob(f"uploaded_to_{topic}*.csv")):
        for row in read_table(UploadedRow, path):
            out[row.rel_filepath.as_posix()] = row.n_chunks
    return out


def assert_objects_equal(
    s3_client: Any, bucket: str, topic: str, files: dict[str, bytes], log: str
) -> None:
    listed = list_objects(s3_client, bucket)
    expected = {f"{topic}/{rel}": len(data) for rel, data in files.items()}
    assert listed == expected, f"bucket holds {listed}, expected {expected}\n{tail(log)}"
    for rel, data in files.items():
        got = read_object(s3_client, bucket, f"{topic}/{rel}")
        assert got == data, f"{topic}/{rel}: {len(got)} bytes differ from the source's {len(data)}"


# --------------------------------------------------------------------------- 1 + 3


@dataclass
class OmsToOurs:
    topic: str
    bucket: str
    group: str
    out: Path
    files: dict[str, bytes]  # rel path (= key below the topic) -> content
    n_chunks: dict[str, int]  # rel path -> n_chunks from OpenMSIStream's upload registry
    partitions: dict[str, set[int]]  # rel path -> partitions its chunks landed in
    processor_log: str


@pytest.fixture(scope="module")
def oms_to_ours(
    peer_python: Path,
    kafka_bootstrap: str,
    s3_client: Any,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[OmsToOurs]:
    """OpenMSIStream's DataFileUploadDirectory and UploadDataFile produce into a 3-partition
    topic; then our S3TransferStreamProcessor, with OpenMSIStream's config file, moves
    everything into a bucket."""
    tmp = tmp_path_factory.mktemp("oms_to_ours")
    peer_bin = peer_python.parent
    cfg = write_config(tmp / "oms_local_s3.config")
    topic = f"interop-oms-{uuid.uuid4().hex[:10]}"
    bucket = f"b-{uuid.uuid4().hex[:12]}"
    create_topic(kafka_bootstrap, topic, 3)
    s3_client.create_bucket(Bucket=bucket)
    rng = random.Random(11)
    tree = {
        "multi_chunk.bin": rng.randbytes(20 * SMALL_CHUNK + 123),  # 21 chunks
        "sub/deeper/nested.dat": b"nested line\n" * 700,  # 1 chunk, in a nested subdir
        "données/résumé_数据.dat": rng.randbytes(2 * SMALL_CHUNK + 5),  # non-ASCII, 3 chunks
        "one_byte.bin": b"\x01",
    }
    alone = {"uploaded_alone.bin": rng.randbytes(3 * 65536 + 1)}  # 4 chunks of 65536
    watched = tmp / "watched"
    write_tree(watched, tree)
    single = tmp / "single"
    write_tree(single, alone)
    try:
        uploader = Program(
            "oms-DataFileUploadDirectory",
            [
                str(peer_bin / "DataFileUploadDirectory"),
                str(watched),
                "--config",
                str(cfg),
                "--topic_name",
                topic,
                "--upload_existing",
                "--chunk_size",
                str(SMALL_CHUNK),
            ],
            tmp,
            cwd=tmp,
        )
        try:
            uploader.wait_for(
                lambda: set(uploaded_rel_paths(watched / "LOGS", topic)) == set(tree),
                90,
                f"OpenMSIStream's upload registry to list {sorted(tree)}",
            )
            rc = uploader.quit("q", 60)
        finally:
            uploader.kill()
        assert rc == 0, (
            f"OpenMSIStream DataFileUploadDirectory exited {rc}:\n{tail(uploader.output())}"
        )
        n_chunks = uploaded_rel_paths(watched / "LOGS", topic)

        single_up = Program(
            "oms-UploadDataFile",
            [
                str(peer_bin / "UploadDataFile"),
                str(single / "uploaded_alone.bin"),
                "--config",
                str(cfg),
                "--topic_name",
                topic,
                "--chunk_size",
                "65536",
            ],
            tmp,
            cwd=tmp,
        )
        rc = single_up.wait(90)
        assert rc == 0, f"OpenMSIStream UploadDataFile exited {rc}:\n{tail(single_up.output())}"
        n_chunks["uploaded_alone.bin"] = 4

        partitions: dict[str, set[int]] = {}
        keys = key_partitions(kafka_bootstrap, topic)
        for rel in [*tree, *alone]:
            # OpenMSIStream's key: subdir with "/" -> "_", then "_<name>_chunk_<i>_of_<n>".
            prefix = f"{rel.rsplit('/', 1)[0].replace('/', '_') if '/' in rel else ''}_"
            prefix += f"{rel.rsplit('/', 1)[-1]}_chunk_"
            partitions[rel] = {p for k, p in keys if k.startswith(prefix)}
        assert len(keys) == sum(n_chunks.values()), (len(keys), n_chunks)

        files = {**tree, **alone}
        group = f"g-{uuid.uuid4().hex[:8]}"
        out = tmp / "out"
        run = ProcessorRun(bucket, topic, group, out, "--config", str(cfg))
        try:
            expected = {f"{topic}/{rel}": len(data) for rel, data in files.items()}
            run.wait_for(
                lambda: list_objects(s3_client, bucket) == expected, 90, f"objects {expected}"
            )
            run.wait_for(
                lambda: run.stderr().count("Transferred ") >= len(files),
                30,
                f"{len(files)} 'Transferred' lines",
            )
            rc = run.quit(60)
        finally:
            if run.proc.poll() is None:
                run.proc.kill()
        log = run.stderr()
        assert rc == 0, f"our processor exited {rc}:\n{tail(log)}"
        yield OmsToOurs(topic, bucket, group, out, files, n_chunks, partitions, log)
    finally:
        try:
            for key in list_objects(s3_client, bucket):
                s3_client.delete_object(Bucket=bucket, Key=key)
            s3_client.delete_bucket(Bucket=bucket)
            delete_topic(kafka_bootstrap, topic)
        except Exception:  # cleanup only
            pass


def test_openmsistream_producers_to_our_processor(oms_to_ours: OmsToOurs, s3_client: Any) -> None:
    r = oms_to_ours
    # OpenMSIStream's producer has no partitioner and a distinct key per chunk, so the
    # chunks of one file are spread over the partitions; ours must reassemble them.
    assert len(r.partitions["multi_chunk.bin"]) > 1, r.partitions
    assert len(r.partitions["uploaded_alone.bin"]) >= 1, r.partitions

    assert_objects_equal(s3_client, r.bucket, r.topic, r.files, r.processor_log)
    for rel, data in r.files.items():
        assert f"Transferred {rel} -> s3://{r.bucket}/{r.topic}/{rel} ({len(data)} bytes" in (
            r.processor_log
        ), f"no transfer line for {rel}:\n{tail(r.processor_log)}"
    assert f"and {len(r.files)} files were transferred to the {r.bucket} bucket" in r.processor_log
    assert "ERROR" not in r.processor_log, tail(r.processor_log)

    logs = r.out / "LOGS"
    processed = read_table(ProcessedRow, logs / f"processed_from_{r.topic}_by_{r.group}.csv")
    got = {row.rel_filepath.as_posix(): row for row in processed}
    assert sorted(got) == sorted(r.files), f"processed registry rows: {processed}"
    assert len(processed) == len(r.files), processed
    for rel, row in got.items():
        assert row.filename == rel.rsplit("/", 1)[-1], row
        assert row.n_chunks == r.n_chunks[rel], (rel, row.n_chunks, r.n_chunks[rel])
    in_progress = read_table(
        InProgressRow, logs / f"consuming_from_{r.topic}_by_{r.group}_in_progress.csv"
    )
    assert in_progress == [], in_progress


# Run with OpenMSIStream's python: reads our registry tables with its own DataclassTable
# reader and the dataclasses its StreamProcessorRegistry uses, then opens its
# StreamProcessorRegistry on a copy of our LOGS directory. Prints one JSON document.
READ_OUR_PROCESSOR_REGISTRY = r"""
import json, sys
from pathlib import Path
from openmsistream.utilities.dataclass_table import DataclassTableReadOnly
from openmsistream.data_file_io.actor.file_registry.stream_handler_registries import (
    StreamHandlerRegistryLineInProgress, StreamHandlerRegistryLineSucceeded,
    StreamProcessorRegistry)

processed, in_progress, copy_dir, topic, group = sys.argv[1:6]

def rows(table):
    return [{k: (v.isoformat() if hasattr(v, "isoformat") else str(v) if isinstance(v, Path) else v)
             for k, v in vars(o).items()} for o in table.objects]

succeeded = DataclassTableReadOnly(StreamHandlerRegistryLineSucceeded, filepath=Path(processed))
ours_in_progress = DataclassTableReadOnly(StreamHandlerRegistryLineInProgress, filepath=Path(in_progress))
registry = StreamProcessorRegistry(Path(copy_dir), topic, group)
print(json.dumps({
    "succeeded": rows(succeeded),
    "in_progress": rows(ours_in_progress),
    "registry_succeeded": rows(registry.succeeded_table),
    "registry_n_to_rerun": registry.n_files_to_rerun,
}))
"""


def test_openmsistream_reads_our_processed_registry(
    oms_to_ours: OmsToOurs, peer_python: Path, tmp_path: Path
) -> None:
    r = oms_to_ours
    logs = r.out / "LOGS"
    processed = logs / f"processed_from_{r.topic}_by_{r.group}.csv"
    in_progress = logs / f"consuming_from_{r.topic}_by_{r.group}_in_progress.csv"
    copy_dir = tmp_path / "LOGS"
    shutil.copytree(logs, copy_dir)
    got = run_peer_script(
        peer_python,
        READ_OUR_PROCESSOR_REGISTRY,
        str(processed),
        str(in_progress),
        str(copy_dir),
        r.topic,
        r.group,
    )
    ours = {
        row.rel_filepath.as_posix(): {
            "filename": row.filename,
            "rel_filepath": row.rel_filepath.as_posix(),
            "n_chunks": row.n_chunks,
            "first_message": row.first_message.isoformat(),
            "processed_at": row.processed_at.isoformat(),
        }
        for row in read_table(ProcessedRow, processed)
    }
    assert len(ours) == len(r.files)
    theirs = {row["rel_filepath"]: row for row in got["succeeded"]}
    assert theirs == ours, f"OpenMSIStream read {got['succeeded']}, we wrote {ours}"
    for row in got["succeeded"]:
        datetime.fromisoformat(row["processed_at"])  # parsed as a datetime by its reader
    assert got["in_progress"] == [], got
    # Its StreamProcessorRegistry opened on our LOGS directory sees the same files
    # as processed and nothing to re-read.
    assert {row["rel_filepath"]: row for row in got["registry_succeeded"]} == ours, got
    assert got["registry_n_to_rerun"] == 0, got


# --------------------------------------------------------------------------- 2


def run_peer_processor(
    peer_python: Path,
    tmp_path: Path,
    bucket: str,
    topic: str,
    files: dict[str, bytes],
    s3_client: Any,
) -> tuple[str, Path, str]:
    """Runs OpenMSIStream's S3TransferStreamProcessor until every file of ``files`` is
    in the bucket and it says it processed them, then quits it through stdin."""
    cfg = write_config(tmp_path / "oms_local_s3.config")
    group = f"oms-{uuid.uuid4().hex[:8]}"
    out = tmp_path / "oms_out"
    proc = Program(
        "oms-S3TransferStreamProcessor",
        [
            str(peer_python.parent / "S3TransferStreamProcessor"),
            bucket,
            "--config",
            str(cfg),
            "--topic_name",
            topic,
            "--consumer_group_id",
            group,
            "--output_dir",
            str(out),
            "--logger_stream_level",
            "debug",  # its per-file lines are DEBUG only
        ],
        tmp_path,
        cwd=tmp_path,
    )
    try:
        expected = {f"{topic}/{rel}": len(data) for rel, data in files.items()}
        proc.wait_for(
            lambda: list_objects(s3_client, bucket) == expected, 90, f"objects {expected}"
        )
        names = list(files)  # it names the relative path
        proc.wait_for(
            lambda: all(
                f"Fully-read file {name} successfully processed" in proc.output() for name in names
            ),
            30,
            "its 'successfully processed' line for every file",
        )
        rc = proc.quit("q", 60)
    finally:
        proc.kill()
    log = proc.output()
    assert rc == 0, f"OpenMSIStream's processor exited {rc}:\n{tail(log)}"
    return log, out, group


def check_peer_processor_results(
    log: str,
    out: Path,
    group: str,
    bucket: str,
    topic: str,
    files: dict[str, bytes],
    n_chunks: dict[str, int],
    s3_client: Any,
) -> None:
    assert_objects_equal(s3_client, bucket, topic, files, log)
    assert "does not match the file originally read" not in log, tail(log)
    assert "failed to transfer" not in log, tail(log)
    assert "Traceback" not in log, tail(log)
    n_msgs = sum(n_chunks.values())
    assert (
        f"{n_msgs} total messages were consumed, {n_msgs} messages were successfully "
        f"processed, and {len(files)} files were transferred to the {bucket} bucket"
    ) in log, tail(log)
    # OpenMSIStream's processed registry, read with our reader.
    rows = read_table(ProcessedRow, out / "LOGS" / f"processed_from_{topic}_by_{group}.csv")
    got = {row.rel_filepath.as_posix(): row.n_chunks for row in rows}
    assert got == n_chunks, f"OpenMSIStream's processed registry: {rows}"
    # Its in-progress table (under upstream's real file name) is empty.
    in_progress = out / "LOGS" / f"consuming_from_{topic}_in_progress_by_{group}.csv"
    assert in_progress.is_file(), sorted(p.name for p in (out / "LOGS").iterdir())
    assert read_table(InProgressRow, in_progress) == []


def test_our_upload_data_file_to_openmsistream_processor(
    peer_python: Path, tmp_path: Path, new_topic: Any, new_bucket: Any, s3_client: Any
) -> None:
    rng = random.Random(21)
    files = {
        "two_chunks.bin": rng.randbytes(2 * DEFAULT_CHUNK),  # exactly 2 chunks
        "three_chunks_less_one.bin": rng.randbytes(3 * DEFAULT_CHUNK - 1),
        "one_byte.bin": b"\x02",
        "ünïcødé_名前.dat": rng.randbytes(5000),
        # OpenMSIStream's producers send nothing for an empty file; ours sends one empty chunk.
        "empty.dat": b"",
    }
    n_chunks = {
        "two_chunks.bin": 2,
        "three_chunks_less_one.bin": 3,
        "one_byte.bin": 1,
        "ünïcødé_名前.dat": 1,
        "empty.dat": 1,
    }
    src = tmp_path / "src"
    write_tree(src, files)
    topic = new_topic(partitions=3)
    bucket = new_bucket()
    for i, rel in enumerate(files):
        up = Program(
            f"our-UploadDataFile-{i}",
            [str(OUR_BIN / "UploadDataFile"), str(src / rel), "--topic_name", topic],
            tmp_path,
        )
        rc = up.wait(60)
        assert rc == 0, f"our UploadDataFile {rel} exited {rc}:\n{tail(up.output())}"
        assert f"({len(files[rel])} bytes, {n_chunks[rel]} chunk(s))" in up.output(), up.output()

    log, out, group = run_peer_processor(peer_python, tmp_path, bucket, topic, files, s3_client)
    # OpenMSIStream's consumer reconstructs our one-empty-chunk file as an empty object
    # (its hash check passes on the empty content) and counts it as transferred: the
    # bucket holds `<topic>/empty.dat` with 0 bytes, and its registry lists it with 1 chunk.
    check_peer_processor_results(log, out, group, bucket, topic, files, n_chunks, s3_client)
    assert "Fully-read file empty.dat successfully processed" in log


READ_OUR_UPLOAD_REGISTRY = r"""
import json, sys
from pathlib import Path
from openmsistream.utilities.dataclass_table import DataclassTableReadOnly
from openmsistream.data_file_io.actor.file_registry.producer_file_registry import (
    ProducerFileRegistry, RegistryLineCompleted, RegistryLineInProgress)

logs, copy_dir, topic = sys.argv[1:4]
completed = DataclassTableReadOnly(
    RegistryLineCompleted, filepath=Path(logs) / f"uploaded_to_{topic}.csv")
in_progress = DataclassTableReadOnly(
    RegistryLineInProgress, filepath=Path(logs) / f"upload_to_{topic}_in_progress.csv")
registry = ProducerFileRegistry(Path(copy_dir), topic)
print(json.dumps({
    "completed": {o.rel_filepath.as_posix(): o.n_chunks for o in completed.objects},
    "in_progress": len(list(in_progress.objects)),
    "skip_on_upload_existing": sorted(p.as_posix() for p in registry.get_completed_filepaths()),
    "incomplete": [str(p) for p, _ in registry.get_incomplete_filepaths_and_chunks()],
}))
"""


def test_our_upload_directory_to_openmsistream_processor(
    peer_python: Path, tmp_path: Path, new_topic: Any, new_bucket: Any, s3_client: Any
) -> None:
    if (
        importlib.util.find_spec("s3transfer_stream.cli.upload_directory") is None
        or not (OUR_BIN / "DataFileUploadDirectory").exists()
    ):
        pytest.skip(
            "our DataFileUploadDirectory (s3transfer_stream.cli.upload_directory) is missing"
        )
    rng = random.Random(31)
    files = {
        "exactly_two.bin": rng.randbytes(2 * SMALL_CHUNK),  # exactly 2 chunks
        "a/b/multi.bin": rng.randbytes(10 * SMALL_CHUNK + 7),  # 11 chunks, nested
        "a/empty_in_sub.dat": b"",  # one empty chunk (OpenMSIStream would send none)
        "données/résumé_数据.dat": rng.randbytes(SMALL_CHUNK + 1),  # non-ASCII, 2 chunks
        "one_byte.bin": b"\x03",
    }
    n_chunks = {
        "exactly_two.bin": 2,
        "a/b/multi.bin": 11,
        "a/empty_in_sub.dat": 1,
        "données/résumé_数据.dat": 2,
        "one_byte.bin": 1,
    }
    src = tmp_path / "src"
    write_tree(src, files)
    topic = new_topic(partitions=3)
    bucket = new_bucket()
    up = Program(
        "our-DataFileUploadDirectory",
        [
            str(OUR_BIN / "DataFileUploadDirectory"),
            str(src),
            "--topic_name",
            topic,
            "--upload_existing",
            "--chunk_size",
            str(SMALL_CHUNK),
            "--watchdog_lag_time",
            "1",
        ],
        tmp_path,
    )
    try:
        up.wait_for(
            lambda: all(f"Uploaded {rel} (" in up.output() for rel in files),
            60,
            "an 'Uploaded' line for every file",
        )
        rc = up.quit("quit", 60)
    finally:
        up.kill()
    assert rc == 0, f"our DataFileUploadDirectory exited {rc}:\n{tail(up.output())}"
    assert uploaded_rel_paths(src / "LOGS", topic) == n_chunks

    log, out, group = run_peer_processor(peer_python, tmp_path, bucket, topic, files, s3_client)
    # The empty file (one empty chunk from our producer) becomes an empty object.
    check_peer_processor_results(log, out, group, bucket, topic, files, n_chunks, s3_client)

    # Our upload registry, read by OpenMSIStream: its DataFileUploadDirectory run on the
    # same directory with --upload_existing would skip every file we uploaded.
    copy_dir = tmp_path / "LOGS-copy"
    shutil.copytree(src / "LOGS", copy_dir)
    got = run_peer_script(
        peer_python, READ_OUR_UPLOAD_REGISTRY, str(src / "LOGS"), str(copy_dir), topic
    )
    assert got["completed"] == n_chunks, got
    assert got["in_progress"] == 0, got
    assert got["skip_on_upload_existing"] == sorted(files), got
    assert got["incomplete"] == [], got
