"""Producer side without a broker: eligibility, paths, partitions, options, CLIs' help and errors."""

from __future__ import annotations

import argparse
import json
import re
import zlib
from pathlib import Path

import pytest
from s3transfer_stream import _core
from s3transfer_stream.cli import common, upload_directory, upload_file
from s3transfer_stream.errors import ConfigError
from s3transfer_stream.kafka import (
    CHUNK_MESSAGE_OVERHEAD,
    file_partition,
    make_producer,
    producer_settings,
    redact,
)
from s3transfer_stream.producer import _runs, _Version, _VersionLog, is_eligible, relative_location
from s3transfer_stream.producer.state import Job, Outcome, UploadStates

# --------------------------------------------------------------------------- eligibility


@pytest.mark.parametrize(
    "rel",
    [
        "a.dat",
        "catalog.csv",  # upstream's default regex wrongly skips this ("<char>log")
        "blog/a.dat",
        "sub/dir/changelog.txt",
        "x.logs",
        "log",
        "logs/a.dat",
        "sub/LOGS/x.dat",  # only the top-level LOGS directory is the registry's
        "ünïcødé/数据 file.dat",
        "a/b/c/d/e.bin",
    ],
)
def test_eligible_paths(rel: str) -> None:
    assert is_eligible(rel)


@pytest.mark.parametrize(
    "rel",
    [
        "x.log",
        "sub/x.log",
        "UPPER.LOG",
        ".hidden",
        "sub/.hidden.dat",
        "a/.b/c",
        ".git/config",
        "LOGS/x",
        "LOGS/upload_to_t_in_progress.csv",
        "LOGS/sub/x.dat",
        "",
        ".",
    ],
)
def test_ineligible_paths(rel: str) -> None:
    assert not is_eligible(rel)


def test_eligibility_accepts_pure_paths_and_user_regex() -> None:
    assert is_eligible(Path("sub") / "catalog.csv")
    only_dat = re.compile(r".*\.dat$")
    assert is_eligible("sub/a.dat", only_dat)
    assert not is_eligible("sub/a.csv", only_dat)
    # re.match is anchored at the start of the POSIX relative path
    assert is_eligible("raw/a.csv", re.compile("raw/"))
    assert not is_eligible("sub/raw/a.csv", re.compile("raw/"))
    # the fixed rules still apply on top of the user's regex
    assert not is_eligible("x.log", re.compile(".*"))
    assert not is_eligible(".h.dat", re.compile(".*"))


# --------------------------------------------------------------------------- paths


def test_relative_location(tmp_path: Path) -> None:
    assert relative_location(tmp_path / "a.dat", tmp_path) == ("", "a.dat")
    assert relative_location(tmp_path / "a" / "b" / "x.dat", tmp_path) == ("a/b", "x.dat")
    assert relative_location(tmp_path / "dé" / "数据.dat", tmp_path) == ("dé", "数据.dat")
    assert relative_location(tmp_path / "a" / "x.dat", None) == ("", "x.dat")
    assert relative_location(str(tmp_path / "a" / ".." / "y.dat"), str(tmp_path)) == ("", "y.dat")
    with pytest.raises(ValueError, match="not inside"):
        relative_location(tmp_path.parent / "elsewhere.dat", tmp_path)
    with pytest.raises(ValueError):
        relative_location(tmp_path, tmp_path)


def test_key_of_top_level_and_nested_files() -> None:
    assert _core.message_key("", "x.dat", 1, 1) == "_x.dat_chunk_1_of_1"
    assert _core.message_key("a/b", "x.dat", 3, 5) == "a_b_x.dat_chunk_3_of_5"


# --------------------------------------------------------------------------- partitions


def test_file_partition_is_stable_crc32() -> None:
    rel = "sub/dir/ünï.dat"
    assert file_partition(rel, 7) == zlib.crc32(rel.encode("utf-8")) % 7
    assert file_partition(rel, 1) == 0
    assert {file_partition(f"f{i}.dat", 3) for i in range(50)} == {0, 1, 2}
    with pytest.raises(ValueError):
        file_partition(rel, 0)


def test_batches_are_contiguous_and_bounded() -> None:
    assert list(_runs(range(1, 41), 16)) == [(1, 16), (17, 16), (33, 8)]
    assert list(_runs([5, 1, 2, 3, 9, 10, 3], 2)) == [(1, 2), (3, 1), (5, 1), (9, 2)]
    assert list(_runs([], 16)) == []


# --------------------------------------------------------------------------- settings


def test_producer_settings_defaults_fit_a_chunk() -> None:
    out = producer_settings({"bootstrap.servers": "h:1"}, chunk_size=4 << 20)
    assert int(out["message.max.bytes"]) >= (4 << 20) + CHUNK_MESSAGE_OVERHEAD
    assert int(out["queue.buffering.max.kbytes"]) > 0
    small = producer_settings({"bootstrap.servers": "h:1"}, chunk_size=16384)
    assert int(small["message.max.bytes"]) == 1_000_000  # never below librdkafka's default
    given = producer_settings(
        {"bootstrap.servers": "h:1", "message.max.bytes": "67108864", "linger.ms": "5"},
        queue_kbytes=1000,
    )
    assert given["message.max.bytes"] == "67108864"
    assert given["linger.ms"] == "5"
    assert given["queue.buffering.max.kbytes"] == "1000"
    with pytest.raises(ConfigError, match=r"message.max.bytes = 500000 is too small"):
        producer_settings({"bootstrap.servers": "h:1", "message.max.bytes": "500000"})
    with pytest.raises(ConfigError, match=r"bootstrap\.servers"):
        producer_settings({})


def test_producer_errors_never_show_secrets() -> None:
    secret = "pa55-never-shown"
    settings = {
        "bootstrap.servers": "127.0.0.1:1",
        "sasl.password": secret,
        "security.protocol": secret,  # an invalid value librdkafka quotes back
    }
    with pytest.raises(ConfigError) as info:
        make_producer(settings)
    assert secret not in str(info.value)
    assert "security.protocol" in str(info.value)
    assert redact(f"x {secret} y", {"sasl.password": secret}) == "x *** y"


# --------------------------------------------------------------------------- CLI options


@pytest.mark.parametrize("size", [1, 2, 16384, 524288, 1 << 20, common.MAX_CHUNK_SIZE])
def test_chunk_size_powers_of_two(size: int) -> None:
    assert common.chunk_size(str(size)) == size


@pytest.mark.parametrize("text", ["0", "-4", "1000", "524287", "3", "abc", "1.5", str(1 << 30)])
def test_chunk_size_rejected(text: str) -> None:
    with pytest.raises(argparse.ArgumentTypeError):
        common.chunk_size(text)


def test_logs_dir_rule(tmp_path: Path) -> None:
    default = tmp_path / "LOGS"
    assert common.logs_dir_from(None, default) == default
    assert common.logs_dir_from(tmp_path / "logs_here", default) == tmp_path / "logs_here"
    assert common.logs_dir_from(tmp_path / "d" / "x.log", default) == tmp_path / "d"


def test_topic_rule() -> None:
    parser = upload_directory.build_parser()
    here = str(Path.cwd())
    assert common.topic_from(parser.parse_args([here, "--topic_name", "a"])) == "a"
    args = parser.parse_args([here, "--topic_name", "a", "--producer_topic_name", "b"])
    assert common.topic_from(args) == "b"
    assert common.topic_from(parser.parse_args([here])) == "test"


@pytest.mark.parametrize("module", [upload_file, upload_directory])
def test_help_documents_every_option(module: object, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        module.main(["-h"])  # type: ignore[attr-defined]
    assert info.value.code == 0
    text = capsys.readouterr().out
    parser = module.build_parser()  # type: ignore[attr-defined]
    for action in parser._actions:
        if not action.option_strings or "-h" in action.option_strings:
            continue
        assert action.option_strings[0] in text
    flat = " ".join(text.split())
    for expected in (
        "--config CONFIG",
        "(default = local)",
        "OpenMSIStream's own default is 'test'",
        "--topic_name",
        "(default = 524288)",
        "(default = 2)",
        "--logger_stream_level",
        "(default = info)",
        "(default = warning)",
        "--logger_file_path",
    ):
        assert expected in flat, expected
    n_options = sum(1 for a in parser._actions if a.option_strings and a.dest != "help")
    assert flat.count("(default =") == n_options


def test_upload_directory_help_specifics(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        upload_directory.main(["--help"])
    flat = " ".join(capsys.readouterr().out.split())
    for expected in (
        "--upload_regex",
        "--queue_max_size QUEUE_MAX_SIZE",
        "(default = 500)",
        "--upload_existing",
        "--watchdog_lag_time",
        "(default = 3)",
        "--use_polling_observer",
        "--update_seconds",
        "(default = 300)",
        "catalog.csv",
    ):
        assert expected in flat, expected


def test_upload_file_help_says_where_the_log_goes(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        upload_file.main(["-h"])
    flat = " ".join(capsys.readouterr().out.split())
    assert "no UploadDataFile.log is written next to the file" in flat


def _one_line_error(capsys: pytest.CaptureFixture[str]) -> str:
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err
    assert len(err.splitlines()) == 1, err
    return err


def test_upload_file_usage_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        upload_file.main([str(tmp_path / "missing.dat")])
    assert info.value.code == 2
    assert "missing.dat does not exist" in _one_line_error(capsys)
    (tmp_path / "a.dat").write_bytes(b"x")
    with pytest.raises(SystemExit) as info:
        upload_file.main([str(tmp_path / "a.dat"), "--chunk_size", "1000"])
    assert info.value.code == 2
    assert "power of two" in _one_line_error(capsys)
    with pytest.raises(SystemExit) as info:
        upload_file.main([str(tmp_path / "a.dat"), "--n_threads", "0"])
    assert info.value.code == 2
    _one_line_error(capsys)


def test_upload_file_config_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "a.dat").write_bytes(b"x")
    assert upload_file.main([str(tmp_path / "a.dat"), "--config", "no_such_config"]) == 2
    assert "config file 'no_such_config' not found" in _one_line_error(capsys)
    bad = tmp_path / "bad.config"
    bad.write_text("[broker]\nbootstrap.servers = $S3TS_SURELY_UNSET_VARIABLE\n[producer]\n")
    assert upload_file.main([str(tmp_path / "a.dat"), "--config", str(bad)]) == 2
    assert "$S3TS_SURELY_UNSET_VARIABLE" in _one_line_error(capsys)


def test_upload_directory_usage_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        upload_directory.main([str(tmp_path / "nope")])
    assert info.value.code == 2
    assert "does not exist" in _one_line_error(capsys)
    with pytest.raises(SystemExit) as info:
        upload_directory.main([str(tmp_path), "--upload_regex", "("])
    assert info.value.code == 2
    assert "not a valid regular expression" in _one_line_error(capsys)
    assert upload_directory.main([str(tmp_path), "--config", "no_such_config"]) == 2
    err = capsys.readouterr().err
    assert "config file 'no_such_config' not found" in err
    assert "Traceback" not in err


def test_unreachable_broker_is_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    import s3transfer_stream.cli.upload_file as module

    monkeypatch.setenv("LOCAL_KAFKA_BROKER_BOOTSTRAP_SERVERS", "127.0.0.1:1")
    real = module.partition_count
    monkeypatch.setattr(
        module, "partition_count", lambda client, topic: real(client, topic, timeout=1.0)
    )
    (tmp_path / "a.dat").write_bytes(b"x")
    assert module.main([str(tmp_path / "a.dat")]) == 2
    err = _one_line_error(capsys)
    assert "cannot reach the Kafka broker at 127.0.0.1:1" in err
    assert "'test'" in err


# --------------------------------------------------------------------------- versions log


def test_version_log_keeps_the_last_line_per_file_and_survives_a_torn_line(
    tmp_path: Path,
) -> None:
    path = tmp_path / "upload_to_t_versions.jsonl"
    v1 = _Version(10, 111, "aa", 16384, 1, "sending")
    v2 = _Version(20, 222, "bb", 16384, 2, "sent")
    log = _VersionLog(path)
    log.record("a.dat", v1)
    log.record("a.dat", v2)
    log.record("ü/b.dat", v1)
    log.close()
    with path.open("a", encoding="utf-8") as handle:
        handle.write('{"path": "c.dat", "size": 1')  # a crash mid-line
    again = _VersionLog(path)
    assert again.get("a.dat") == v2
    assert again.get("ü/b.dat") == v1
    assert again.get("c.dat") is None
    again.close()
    lines = path.read_text(encoding="utf-8").splitlines()
    assert len(lines) == 2  # compacted
    assert {json.loads(line)["path"] for line in lines} == {"a.dat", "ü/b.dat"}


def test_version_log_compacts_while_running(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(_VersionLog, "compact_slack", 5)
    path = tmp_path / "v.jsonl"
    log = _VersionLog(path)
    for i in range(100):
        log.record("a.dat", _Version(i, i, "aa", 1, 1, "sending"))
        log.record("b.dat", _Version(i, i, "bb", 1, 1, "sent"))
    assert len(path.read_text(encoding="utf-8").splitlines()) <= 2 * 2 + 5 + 1
    log.close()
    again = _VersionLog(path)
    assert again.get("a.dat") == _Version(99, 99, "aa", 1, 1, "sending")
    assert again.get("b.dat") == _Version(99, 99, "bb", 1, 1, "sent")
    again.close()


# --------------------------------------------------------------------------- upload states


def test_upload_states_count_what_the_states_say(tmp_path: Path) -> None:
    states = UploadStates()
    version = _Version(10, 1, "aa", 4, 3, "sending")
    states.note_event("a", 0.0)
    states.note_event("b", 5.0)
    assert states.counts()["waiting"] == 2
    assert states.take_ready(now=5.5, lag=1.0) == ["a"]  # b is still in its quiet time
    assert states.take_ready(now=5.5, lag=1.0) == []  # a is queued: not taken twice
    states.note_event("a", 5.5)  # changed while queued: waits, and is counted once more
    assert states.counts()["waiting"] == 3
    job = Job("a", "a", tmp_path / "a", version, {1, 2, 3}, 3)
    states.sending(job)
    assert states.take_ready(now=100.0, lag=1.0) == ["b"]  # a is being sent
    counts = states.counts()
    assert (counts["waiting"], counts["in_progress"]) == (2, 1)
    assert states.sending_paths() == ["a"]
    states.ended(job, Outcome.FAILED)
    states.release("b")
    states.forget_event("a")
    states.forget_event("never seen")
    counts = states.counts()
    assert (counts["waiting"], counts["in_progress"], counts["failed"]) == (0, 0, 1)
    again = Job("a", "a", tmp_path / "a", version, {1}, 1)
    states.sending(again)
    states.ended(job, Outcome.ABORTED)  # an older job ending leaves the newer one
    assert states.counts()["in_progress"] == 1
    states.ended(again, Outcome.UPLOADED)
    status = states.status(registry_in_progress=0, registry_completed=1)
    assert (status.in_progress, status.failed, status.uploaded) == (0, 0, 1)
    assert status.uploaded_paths == ["a"] and states.completed_at("a") is not None
    assert job.chunk_bytes(3) == 2 and job.chunk_bytes(1) == 4
