"""The systemd unit templates in contrib/systemd (issue 9, item 5).

``systemd-analyze verify`` checks each unit as an instance (it needs the command to
exist, so the install prefix /opt/s3transfer-stream/bin is pointed at this venv's
programs in a copy); the settings the README promises are checked against the
programs' own defaults; the example config loads with the example env file.
"""

from __future__ import annotations

import configparser
import inspect
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from s3transfer_stream.cli import processor as processor_cli
from s3transfer_stream.cli import upload_directory as uploader_cli
from s3transfer_stream.config import load_config
from s3transfer_stream.producer import DirectoryUploader

ROOT = Path(__file__).resolve().parents[1]
UNITS = ROOT / "contrib" / "systemd"
PREFIX = "/opt/s3transfer-stream/bin/"
PROCESSOR = "s3transfer-stream-processor@.service"
UPLOADER = "s3transfer-stream-upload-directory@.service"


def _unit(name: str) -> dict[str, dict[str, str]]:
    """The unit's sections as dicts (continuation lines joined)."""
    text = (UNITS / name).read_text().replace("\\\n", " ")
    parser = configparser.ConfigParser(interpolation=None, strict=False)
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    parser.read_string(text)
    return {section: dict(parser[section]) for section in parser.sections()}


def _env(name: str) -> dict[str, str]:
    env: dict[str, str] = {}
    for line in (UNITS / name).read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            key, _, value = line.partition("=")
            env[key] = value
    return env


def _command(exec_start: str, env: dict[str, str], instance: str) -> list[str]:
    """ExecStart's words as systemd passes them: ``${NAME}`` is one word, ``$NAME``
    alone is split on spaces; ``%i`` is the instance, ``%S`` /var/lib."""
    words: list[str] = []
    for word in exec_start.split():
        word = word.replace("%i", instance).replace("%S", "/var/lib")
        if word.startswith("$") and not word.startswith("${"):
            words += env.get(word[1:], "").split()
            continue
        for key, value in env.items():
            word = word.replace("${" + key + "}", value)
        words.append(word)
    return words


def _seconds(value: str) -> float:
    value = value.strip()
    if value.endswith("min"):
        return float(value[:-3]) * 60
    return float(value.rstrip("s"))


@pytest.mark.parametrize("name", [PROCESSOR, UPLOADER])
def test_systemd_analyze_verify(name: str, tmp_path: Path) -> None:
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed on this machine (no systemd)")
    bin_dir = Path(sys.executable).parent
    program = "S3TransferStreamProcessor" if name == PROCESSOR else "DataFileUploadDirectory"
    if not (bin_dir / program).exists():
        pytest.skip(f"{program} is not installed in {bin_dir} (the package's console scripts)")
    text = (UNITS / name).read_text().replace(PREFIX, f"{bin_dir}/")
    instance = tmp_path / name.replace("@.", "@lab.")
    instance.write_text(text)
    done = subprocess.run(
        [analyze, "verify", "--man=no", str(instance)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    # Unknown keys and bad values are only warnings for systemd: none may appear.
    lines = [ln for ln in (done.stdout + done.stderr).splitlines() if ln.strip()]
    assert done.returncode == 0 and not lines, "\n".join(lines)


def test_processor_unit_settings_match_the_program() -> None:
    service = _unit(PROCESSOR)["Service"]
    grace = processor_cli.build_parser().get_default("shutdown_grace_seconds")
    assert grace == 30.0
    assert service["Type"] == "simple"
    assert service["KillSignal"] == "SIGTERM"
    # The shutdown grace, up to 15 s for S3 calls on the wire, and a margin.
    assert _seconds(service["TimeoutStopSec"]) >= grace + 15 + 30
    assert service["Restart"] == "on-failure"
    assert service["User"] == "s3transfer-stream"
    assert service["EnvironmentFile"] == "/etc/s3transfer-stream/%i.env"
    assert service["ExecStart"].split()[-1] == "$S3TS_OPTIONS"
    env = _env("processor.env.example")
    command = _command(service["ExecStart"], env, "lab")
    assert command[0] == f"{PREFIX}S3TransferStreamProcessor"
    args = processor_cli.build_parser().parse_args(command[1:])
    assert args.bucket_name == env["S3TS_BUCKET"]
    assert args.topic_name == env["S3TS_TOPIC"]
    assert args.consumer_group_id == env["S3TS_GROUP"]
    assert args.config == "/etc/s3transfer-stream/lab.config"
    assert str(args.output_dir) == "/var/lib/s3transfer-stream/lab"
    assert args.n_threads == 4 and args.metrics_port == 9464 and args.update_seconds == -1
    assert service["StateDirectory"] == "s3transfer-stream/%i"


def test_uploader_unit_settings_match_the_program(tmp_path: Path) -> None:
    service = _unit(UPLOADER)["Service"]
    flush = inspect.signature(DirectoryUploader).parameters["flush_timeout"].default
    assert flush == 60.0
    assert service["Type"] == "simple"
    assert service["KillSignal"] == "SIGTERM"
    assert _seconds(service["TimeoutStopSec"]) >= flush + 20
    assert service["Restart"] == "on-failure"
    assert service["User"] == "s3transfer-stream"
    assert service["EnvironmentFile"] == "/etc/s3transfer-stream/%i.env"
    assert service["ExecStart"].split()[-1] == "$S3TS_OPTIONS"
    env = {**_env("upload-directory.env.example"), "S3TS_UPLOAD_DIR": str(tmp_path)}
    command = _command(service["ExecStart"], env, "instrument1")
    assert command[0] == f"{PREFIX}DataFileUploadDirectory"
    args = uploader_cli.build_parser().parse_args(command[1:])
    assert args.upload_dir == tmp_path.resolve()
    assert args.topic_name == env["S3TS_TOPIC"]
    assert args.config == "/etc/s3transfer-stream/instrument1.config"
    assert args.upload_existing and args.metrics_port == 9465


@pytest.mark.parametrize(
    ("env_file", "sections"),
    [
        ("processor.env.example", ("broker", "consumer", "s3")),
        ("upload-directory.env.example", ("broker", "producer")),
    ],
)
def test_example_config_loads_with_the_example_env_file(
    env_file: str, sections: tuple[str, ...], monkeypatch: pytest.MonkeyPatch
) -> None:
    env = _env(env_file)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    config = load_config(str(UNITS / "example.config"), require=sections)
    assert config.broker["sasl.password"] == env["KAFKA_SASL_PASSWORD"]
    assert config.broker["bootstrap.servers"] == env["KAFKA_BOOTSTRAP_SERVERS"]
    if "s3" in sections:
        assert config.s3.secret_key_id == env["S3_SECRET_KEY_ID"]  # type: ignore[attr-defined]
