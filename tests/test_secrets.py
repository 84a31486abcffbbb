"""Secrets never leak (issue 10, item 4), against the real Kafka and S3.

The three programs run through success, bad credentials (a wrong S3 secret; an
unreachable broker with a SASL password, and with an OAUTHBEARER config, both given
as ``$NAME`` in the config file) and crashes (SIGKILL, an exception in a consumer
thread); then everything they wrote -- stdout, stderr, log files, registry CSVs, the
journal, the metrics and health pages, ``-h`` -- is searched for the secret values.
``test_a_secret_is_never_in_an_error_or_repr`` covers the error texts of building
Kafka clients and the reprs of loaded configs in process.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from helpers import list_objects, log_ends

pytestmark = pytest.mark.integration

TOKEN = uuid.uuid4().hex[:12]
#: Environment variables the test configs name, and their (distinctive) values.
SECRETS = {
    "S3TS_T_WRONG_S3_SECRET": f"wrongs3secret{TOKEN}",
    "S3TS_T_SASL_PASSWORD": f"saslpassword{TOKEN}",
    "S3TS_T_OAUTH": f"principal=admin extension_traceid=oauthtoken{TOKEN}",
    # Picked up by nobody (the config gives explicit keys), but never printed either.
    "AWS_SESSION_TOKEN": f"sessiontoken{TOKEN}",
}
#: What must never appear (the S3 secret of the local services is added at run time).
NEEDLES = [
    f"wrongs3secret{TOKEN}",
    f"saslpassword{TOKEN}",
    f"oauthtoken{TOKEN}",
    f"sessiontoken{TOKEN}",
]

S3 = """
[s3]
access_key_id = $ACCESS_KEY_ID
secret_key_id = {secret}
endpoint_url = $ENDPOINT_URL
region = $REGION
"""

CONFIGS = {
    # The real services, with SASL settings librdkafka ignores on a PLAINTEXT listener.
    "good": """
[broker]
bootstrap.servers = $LOCAL_KAFKA_BROKER_BOOTSTRAP_SERVERS
sasl.password = $S3TS_T_SASL_PASSWORD
sasl.oauthbearer.config = $S3TS_T_OAUTH
[producer]
[consumer]
"""
    + S3.format(secret="$SECRET_KEY_ID"),
    "good_debug": """
[broker]
bootstrap.servers = $LOCAL_KAFKA_BROKER_BOOTSTRAP_SERVERS
sasl.password = $S3TS_T_SASL_PASSWORD
sasl.oauthbearer.config = $S3TS_T_OAUTH
debug = conf,security
[producer]
[consumer]
"""
    + S3.format(secret="$SECRET_KEY_ID"),
    "wrong_s3_secret": """
[broker]
bootstrap.servers = $LOCAL_KAFKA_BROKER_BOOTSTRAP_SERVERS
[producer]
[consumer]
"""
    + S3.format(secret="$S3TS_T_WRONG_S3_SECRET"),
    "sasl_unreachable": """
[broker]
bootstrap.servers = 127.0.0.1:{port}
security.protocol = SASL_PLAINTEXT
sasl.mechanism = SCRAM-SHA-512
sasl.username = tester
sasl.password = $S3TS_T_SASL_PASSWORD
[producer]
[consumer]
"""
    + S3.format(secret="$SECRET_KEY_ID"),
    "oauth_unreachable": """
[broker]
bootstrap.servers = 127.0.0.1:{port}
security.protocol = SASL_PLAINTEXT
sasl.mechanism = OAUTHBEARER
sasl.oauthbearer.config = $S3TS_T_OAUTH
[producer]
[consumer]
"""
    + S3.format(secret="$SECRET_KEY_ID"),
    # The broker is fine for the admin client, but the consumer threads cannot be
    # built: each dies with an exception (and its traceback is logged).
    "consumer_exception": """
[broker]
bootstrap.servers = $LOCAL_KAFKA_BROKER_BOOTSTRAP_SERVERS
[producer]
[consumer]
security.protocol = SASL_SSL
sasl.mechanism = PLAIN
sasl.username = tester
sasl.password = $S3TS_T_SASL_PASSWORD
ssl.ca.location = /nonexistent/ca.pem
"""
    + S3.format(secret="$SECRET_KEY_ID"),
}

MODULES = {
    "processor": "s3transfer_stream.cli.processor",
    "file": "s3transfer_stream.cli.upload_file",
    "directory": "s3transfer_stream.cli.upload_directory",
}


def closed_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Prog:
    """One program run: its stdout and stderr go to files in ``runs/``."""

    def __init__(self, tmp: Path, name: str, module: str, *args: str) -> None:
        runs = tmp / "runs"
        runs.mkdir(exist_ok=True)
        self.name = name
        self.out = open(runs / f"{name}.stdout", "w")
        self.err_path = runs / f"{name}.stderr"
        self.err = open(self.err_path, "w")
        env = {**os.environ, **SECRETS}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", module, *args],
            stdin=subprocess.PIPE,
            stdout=self.out,
            stderr=self.err,
            text=True,
            env=env,
            cwd=tmp,
        )

    def stderr(self) -> str:
        return self.err_path.read_text()

    def wait_for(self, what: Callable[[], bool], timeout: float, label: str) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if what():
                return
            if self.proc.poll() is not None:
                raise AssertionError(
                    f"{self.name} exited ({self.proc.returncode}):\n{self.stderr()}"
                )
            time.sleep(0.2)
        raise AssertionError(
            f"{self.name}: timed out waiting for {label}:\n{self.stderr()[-3000:]}"
        )

    def quit(self) -> int:
        assert self.proc.stdin is not None
        try:
            self.proc.stdin.write("quit\n")
            self.proc.stdin.flush()
        except BrokenPipeError:
            pass
        return self.wait()

    def kill(self) -> int:
        self.proc.send_signal(signal.SIGKILL)
        return self.wait()

    def wait(self, timeout: float = 90) -> int:
        try:
            return self.proc.wait(timeout)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait(10)
            self.out.close()
            self.err.close()


def metrics_pages(prog: Prog) -> str:
    import re

    prog.wait_for(lambda: "Metrics at http" in prog.stderr(), 60, "the metrics line")
    found = re.search(r"Metrics at (http://\S+)/metrics", prog.stderr())
    assert found is not None
    pages = []
    for page in ("metrics", "healthz", "ready"):
        try:
            with urllib.request.urlopen(f"{found.group(1)}/{page}", timeout=10) as r:
                pages.append(r.read().decode())
        except urllib.error.HTTPError as e:  # 503 from /ready is an answer too
            pages.append(e.read().decode())
    return "\n".join(pages)


def leaks(root: Path, extra: dict[str, str], needles: list[str]) -> list[str]:
    """Every file under ``root`` (and each text in ``extra``) holding a needle, raw or escaped."""
    forms = set()
    for n in needles:
        forms |= {n, repr(n)[1:-1], n.encode().hex()}
    found = []
    for path in sorted(root.rglob("*")):
        if path.is_file():
            data = path.read_bytes().decode("utf-8", "replace")
            found += [f"{path.relative_to(root)}: {f[:12]}..." for f in forms if f in data]
    for label, text in extra.items():
        found += [f"{label}: {f[:12]}..." for f in forms if f in text]
    return found


def test_no_program_ever_shows_a_secret(
    tmp_path: Path, new_topic: Any, new_bucket: Any, s3_client: Any, kafka_bootstrap: str
) -> None:
    real_secret = os.environ["SECRET_KEY_ID"]
    needles = [*NEEDLES, real_secret]
    port = closed_port()
    configs = {}
    for name, text in CONFIGS.items():
        configs[name] = tmp_path / f"{name}.config"
        configs[name].write_text(text.replace("{port}", str(port)))
    topic = new_topic(partitions=2)
    bucket = new_bucket()
    group = f"g-{uuid.uuid4().hex[:8]}"
    pages: dict[str, str] = {}
    src = tmp_path / "src"
    src.mkdir()
    (src / "one.dat").write_bytes(os.urandom(70_000))
    watched = tmp_path / "watched"
    (watched / "sub").mkdir(parents=True)
    (watched / "sub" / "two.dat").write_bytes(os.urandom(40_000))

    def processor(tag: str, config: str, *extra: str) -> Prog:
        return Prog(
            tmp_path,
            f"processor-{tag}",
            MODULES["processor"],
            bucket,
            "--config",
            str(configs[config]),
            "--topic_name",
            topic,
            "--consumer_group_id",
            group,
            "--output_dir",
            str(tmp_path / f"out-{tag}"),
            "--update_seconds",
            "1",
            *extra,
        )

    def upload_file(tag: str, config: str) -> Prog:
        return Prog(
            tmp_path,
            f"file-{tag}",
            MODULES["file"],
            str(src / "one.dat"),
            "--config",
            str(configs[config]),
            "--topic_name",
            topic,
            "--chunk_size",
            "16384",
            "--logger_file_path",
            str(tmp_path / f"file-logs-{tag}"),
        )

    def upload_dir(tag: str, config: str, *extra: str) -> Prog:
        return Prog(
            tmp_path,
            f"directory-{tag}",
            MODULES["directory"],
            str(watched),
            "--config",
            str(configs[config]),
            "--topic_name",
            topic,
            "--chunk_size",
            "16384",
            "--upload_existing",
            *extra,
        )

    # Bad credentials, all at once (each fails within about 10 s).
    failing = [
        processor("wrong-s3", "wrong_s3_secret"),
        processor("sasl", "sasl_unreachable"),
        processor("oauth", "oauth_unreachable"),
        upload_file("sasl", "sasl_unreachable"),
        upload_file("oauth", "oauth_unreachable"),
        upload_dir("sasl", "sasl_unreachable"),
        upload_dir("oauth", "oauth_unreachable"),
    ]
    # -h of each program, with every secret in the environment.
    helps = {
        name: subprocess.run(
            [sys.executable, "-m", module, "-h"],
            capture_output=True,
            text=True,
            env={**os.environ, **SECRETS},
            timeout=60,
        )
        for name, module in MODULES.items()
    }
    for name, h in helps.items():
        assert h.returncode == 0 and "usage:" in h.stdout, h.stderr
        pages[f"{name} -h"] = h.stdout + h.stderr

    # Success: both producers send, the processor transfers, metrics are scraped.
    f = upload_file("ok", "good")
    assert f.wait() == 0, f.stderr()
    d = upload_dir("ok", "good", "--metrics_port", "0")
    pages["directory metrics"] = metrics_pages(d)
    uploaded = watched / "LOGS" / f"uploaded_to_{topic}.csv"
    d.wait_for(lambda: uploaded.exists() and "two.dat" in uploaded.read_text(), 60, "the upload")
    assert d.quit() == 0, d.stderr()
    # At debug level, with librdkafka's configuration dump on (it shows every setting).
    p = processor(
        "ok",
        "good_debug",
        "--metrics_port",
        "0",
        "--logger_stream_level",
        "debug",
        "--logger_file_level",
        "debug",
    )
    pages["processor metrics"] = metrics_pages(p)
    p.wait_for(
        lambda: (
            {f"{topic}/one.dat", f"{topic}/sub/two.dat"} <= set(list_objects(s3_client, bucket))
        ),
        60,
        "both files",
    )
    pages["processor metrics, after"] = metrics_pages(p)
    assert p.quit() == 0, p.stderr()

    # Crashes: SIGKILL mid-upload (a failpoint), SIGKILL of the producers, and
    # consumer threads that die of an exception.
    (src / "one.dat").write_bytes(os.urandom(80_000))  # sent again: a new version
    f = upload_file("again", "good")
    assert f.wait() == 0, f.stderr()
    os.environ["S3TS_FAILPOINT"] = "uploaded:1"
    try:
        k = processor("killed", "good")
    finally:
        del os.environ["S3TS_FAILPOINT"]
    assert k.wait(90) == -signal.SIGKILL, k.stderr()
    d = upload_dir("killed", "good")
    d.wait_for(lambda: "Listening" in d.stderr() or "Watching" in d.stderr(), 30, "start")
    assert d.kill() == -signal.SIGKILL
    e = processor("exception", "consumer_exception")
    assert e.wait(90) != 0
    assert "Consumer thread" in e.stderr(), e.stderr()

    for prog in failing:
        rc = prog.wait(90)
        assert rc != 0, (prog.name, prog.stderr())
    # Each failure names what it could not reach, never the secret.
    runs = tmp_path / "runs"
    assert "cannot use bucket" in (runs / "processor-wrong-s3.stderr").read_text()
    for name in ("processor-sasl", "file-sasl", "directory-sasl", "processor-oauth"):
        assert f"127.0.0.1:{port}" in (runs / f"{name}.stderr").read_text(), name

    found = leaks(tmp_path, pages, needles)
    assert not found, found
    # The search sees what was written: the logs, registries and journal are there.
    written = {p.name for p in tmp_path.rglob("*") if p.is_file()}
    assert {"S3TransferStreamProcessor.log", "DataFileUploadDirectory.log"} <= written
    assert any(n.startswith("transfers_") and n.endswith(".jsonl") for n in written), written
    assert f"uploaded_to_{topic}.csv" in written
    assert log_ends(kafka_bootstrap, topic)  # the broker is still there


def test_a_secret_is_never_in_an_error_or_repr(tmp_path: Path, monkeypatch: Any) -> None:
    """In process: reprs of loaded configs, and the errors of building Kafka clients
    from settings that hold secrets."""
    from confluent_kafka import Consumer, KafkaException
    from s3transfer_stream.config import load_config
    from s3transfer_stream.errors import ConfigError
    from s3transfer_stream.kafka import make_producer, redact

    for k, v in SECRETS.items():
        monkeypatch.setenv(k, v)
    monkeypatch.setenv("LOCAL_KAFKA_BROKER_BOOTSTRAP_SERVERS", "127.0.0.1:1")
    monkeypatch.setenv("ACCESS_KEY_ID", "access")
    monkeypatch.setenv("SECRET_KEY_ID", f"reals3secret{TOKEN}")
    monkeypatch.setenv("ENDPOINT_URL", "http://127.0.0.1:1")
    monkeypatch.setenv("REGION", "us-east-1")
    needles = [*NEEDLES, f"reals3secret{TOKEN}"]
    path = tmp_path / "c.config"
    path.write_text(
        CONFIGS["good"]
        + "\n[heartbeat]\nsasl.password = $S3TS_T_SASL_PASSWORD\n"
        + "[log]\nsasl.oauthbearer.config = $S3TS_T_OAUTH\n"
    )
    config = load_config(str(path))
    shown = [repr(config), str(config), repr(config.s3), str(config.s3)]
    # Settings that make building a client fail: the errors must not show the secrets.
    bad = {
        **config.producer,
        "security.protocol": "SASL_SSL",
        "sasl.mechanism": "PLAIN",
        "ssl.ca.location": "/nonexistent/ca.pem",
    }
    with pytest.raises(ConfigError) as info:
        make_producer(bad)
    shown.append(str(info.value))
    try:
        Consumer({**bad, "group.id": "g"})
    except KafkaException as exc:
        shown.append(redact(str(exc), bad))
    shown.append(redact(f"{config.producer}", config.producer))
    for text in shown:
        for n in needles:
            assert n not in text, (n, text)


def test_the_processors_kafka_error_callback_redacts(caplog: pytest.LogCaptureFixture) -> None:
    """librdkafka's error texts may quote settings back; the processor's error
    callback logs them redacted against the consumer settings."""
    import logging

    from confluent_kafka import KafkaError
    from s3transfer_stream.processor.main import S3TransferStreamProcessor

    secret = f"sasl{TOKEN}"
    proc = S3TransferStreamProcessor.__new__(S3TransferStreamProcessor)
    proc.log = logging.getLogger("test-secrets")
    proc._kafka_settings = {"sasl.password": secret, "bootstrap.servers": "127.0.0.1:1"}
    err = KafkaError(KafkaError._AUTHENTICATION, f"SASL authentication failed with {secret}")
    with caplog.at_level(logging.WARNING):
        proc._on_kafka_error(err)
    assert "SASL authentication failed with ***" in caplog.text
    assert secret not in caplog.text
