"""OpenMSIStream command-line options and console behaviour we keep or change on
purpose (docs/compatibility.md): unit tests on the parsers and the console."""

from __future__ import annotations

import io
import logging
import threading
from pathlib import Path

import pytest
from s3transfer_stream.cli import processor as processor_cli
from s3transfer_stream.cli import upload_directory as upload_directory_cli
from s3transfer_stream.console import Console


@pytest.mark.parametrize("mode", ["memory", "disk", "both"])
def test_processor_accepts_every_mode_and_streams_anyway(mode: str) -> None:
    args = processor_cli.build_parser().parse_args(["bucket", "--mode", mode])
    assert args.mode == mode
    options = processor_cli.options_from_args(args)
    assert options.bucket == "bucket"


def test_processor_accepts_treat_undecryptable_as_plaintext_into_the_decrypt_options() -> None:
    """Refused while encrypted topics were not supported; now that the processor decrypts
    (docs/encryption.md) the flag is accepted and reaches ``DecryptOptions``."""
    parse = processor_cli.build_parser().parse_args
    args = parse(["b", "--treat_undecryptable_as_plaintext"])
    assert processor_cli.options_from_args(args).bucket == "b"  # no ConfigError
    pytest.importorskip("kafkacrypto")
    assert processor_cli.decrypt_options(args).treat_undecryptable_as_plaintext is True
    assert processor_cli.decrypt_options(parse(["b"])).treat_undecryptable_as_plaintext is False


def test_processor_accepts_the_decrypt_waits_and_the_topic_aliases() -> None:
    args = processor_cli.build_parser().parse_args(
        [
            "b",
            "--max_wait_per_decrypt",
            "2",
            "--max_initial_wait_per_decrypt",
            "3",
            "--topic_name",
            "t1",
            "--consumer_topic_name",
            "t2",
            "--producer_topic_name",
            "t3",
        ]
    )
    assert processor_cli.options_from_args(args).topic == "t2"


@pytest.mark.parametrize("char", sorted(processor_cli.BAD_BUCKET_CHARS))
def test_bucket_names_with_characters_openmsistream_refuses_are_refused(
    char: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exc:
        processor_cli.build_parser().parse_args([f"a{char}b"])
    assert exc.value.code == 2
    assert "bucket name" in capsys.readouterr().err


def test_processor_create_new_group_is_a_fresh_uuid_each_run() -> None:
    first = processor_cli.options_from_args(processor_cli.build_parser().parse_args(["b"]))
    second = processor_cli.options_from_args(processor_cli.build_parser().parse_args(["b"]))
    assert first.group_id != second.group_id
    assert first.group_id != "create_new"


def test_upload_directory_accepts_the_consumer_and_decrypt_options(tmp_path: Path) -> None:
    args = upload_directory_cli.build_parser().parse_args(
        [
            str(tmp_path),
            "--consumer_topic_name",
            "x",
            "--consumer_group_id",
            "g",
            "--max_wait_per_decrypt",
            "1",
            "--max_initial_wait_per_decrypt",
            "1",
            "--treat_undecryptable_as_plaintext",
        ]
    )
    assert args.consumer_group_id == "g"
    assert args.treat_undecryptable_as_plaintext is True


def _run_console(
    text: str, alive_seconds: float, caplog: pytest.LogCaptureFixture
) -> tuple[int, str]:
    """How many checks ``text`` ran, and why the console stopped (``"test"``: the
    timer after 1 s, not a command)."""
    checks: list[int] = []
    console = Console(
        lambda: checks.append(1),
        alive_seconds=alive_seconds,
        stdin=io.StringIO(text),
        handle_signals=False,
    )
    timer = threading.Timer(1.0, console.request_stop, args=("test",))
    with caplog.at_level(logging.INFO, logger="s3transfer_stream"):
        console.start()
        timer.start()
        console.run_until_stopped(interval=0.02)
    timer.cancel()
    return len(checks), console.stop_reason


def test_console_commands_are_whole_lines(caplog: pytest.LogCaptureFixture) -> None:
    # OpenMSIStream reads single characters: "check" would be two checks and any
    # word with a q in it a quit. Here one line is one command.
    # One check, and "squash" (unknown, as the log says) did not quit: the timer stopped it.
    assert _run_console("check\nsquash\n", 0, caplog) == (1, "test")
    assert "Unknown command 'squash'" in caplog.text
    console = Console(lambda: None, stdin=io.StringIO("quit\n"), handle_signals=False)
    console.start()
    assert console.stop_requested.wait(2)
    assert console.stop_reason == "quit command"


def test_console_alive_marker_is_an_info_line(caplog: pytest.LogCaptureFixture) -> None:
    # The markers ran no check and stopped nothing.
    assert _run_console("", 0.1, caplog) == (0, "test")
    dots = [r for r in caplog.records if r.getMessage() == "."]
    assert dots and all(r.levelno == logging.INFO for r in dots)
