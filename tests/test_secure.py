"""Authentication and encryption in transit (issue 10, item 3).

A module fixture starts ``services/secure.sh`` in a fresh state directory of its own:
a second Kafka broker whose only client listener is SASL_SSL (SCRAM-SHA-512, broker
certificate from a CA the script makes) and a SeaweedFS S3 endpoint over HTTPS with a
certificate from the same CA. The shared services are not used. The fixture stops
both at the end, also when a test fails.

Config files reach them with OpenMSIStream's usual keys (``security.protocol``,
``sasl.mechanism``, ``sasl.username``, ``sasl.password = $VAR``, ``ssl.ca.location``)
and ``[s3] ca_bundle``. With the right credentials files go through UploadDataFile and
S3TransferStreamProcessor byte for byte; with a wrong one each program stops with
one error line naming the broker or endpoint (never the secret) and commits nothing.
"""

from __future__ import annotations

import os
import random
import re
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from helpers import ProcessorRun, list_objects, read_object

pytestmark = [pytest.mark.integration, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "services" / "secure.sh"
WRONG_PASSWORD = f"wrongpw{uuid.uuid4().hex[:12]}"
WRONG_SECRET = f"wrongsecret{uuid.uuid4().hex[:12]}"

CONFIG = """
[broker]
bootstrap.servers = $S3TS_T_BOOTSTRAP
{broker}

[producer]
key.serializer = StringSerializer
value.serializer = DataFileChunkSerializer
message.max.bytes = 67108864

[consumer]
group.id = create_new
auto.offset.reset = earliest
enable.auto.commit = False
session.timeout.ms = 6000
heartbeat.interval.ms = 2000

[s3]
access_key_id = {access_key}
secret_key_id = {secret}
endpoint_url = {endpoint}
region = us-east-1
{s3}
"""

SASL_SSL = """security.protocol = SASL_SSL
sasl.mechanism = {mechanism}
sasl.username = {username}
sasl.password = {password}
"""


def _read_env_file(path: Path) -> dict[str, str]:
    out: dict[str, str] = {}
    for line in path.read_text().splitlines():
        if line and not line.startswith("#") and "=" in line:
            key, value = line.split("=", 1)
            out[key] = value
    return out


@pytest.fixture(scope="module")
def secure(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    state = tmp_path_factory.mktemp("secure-services")
    env = {**os.environ, "S3TS_SECURE_STATE": str(state)}
    try:
        subprocess.run(["bash", str(SCRIPT), "start"], check=True, env=env, timeout=180)
        creds = _read_env_file(state / "credentials.env")
        yield {
            "S3TS_T_BOOTSTRAP": creds["S3TS_SECURE_BOOTSTRAP"],
            "S3TS_T_SASL_USERNAME": creds["S3TS_SECURE_SASL_USERNAME"],
            "S3TS_T_SASL_PASSWORD": creds["S3TS_SECURE_SASL_PASSWORD"],
            "S3TS_T_WRONG_PASSWORD": WRONG_PASSWORD,
            "S3TS_T_CA": creds["S3TS_SECURE_CA"],
            "S3TS_T_ENDPOINT_URL": creds["S3TS_SECURE_ENDPOINT_URL"],
            "S3TS_T_ACCESS_KEY_ID": creds["S3TS_SECURE_S3_ACCESS_KEY_ID"],
            "S3TS_T_SECRET_KEY_ID": creds["S3TS_SECURE_S3_SECRET_ACCESS_KEY"],
            "S3TS_T_WRONG_SECRET": WRONG_SECRET,
            "S3TS_T_OTHER_USER": f"nobody{uuid.uuid4().hex[:6]}",
            "S3TS_T_HTTP_ENDPOINT_URL": creds["S3TS_SECURE_ENDPOINT_URL"].replace(
                "https://", "http://"
            ),
        }
    finally:
        subprocess.run(["bash", str(SCRIPT), "stop"], env=env, timeout=120, check=False)


def write_config(
    path: Path,
    *,
    password: str = "$S3TS_T_SASL_PASSWORD",
    secret: str = "$S3TS_T_SECRET_KEY_ID",
    kafka_ca: bool = True,
    s3_ca: bool = True,
    plaintext: bool = False,
    endpoint: str = "$S3TS_T_ENDPOINT_URL",
    username: str = "$S3TS_T_SASL_USERNAME",
    mechanism: str = "SCRAM-SHA-512",
    access_key: str = "$S3TS_T_ACCESS_KEY_ID",
) -> Path:
    broker = (
        ""
        if plaintext
        else SASL_SSL.format(password=password, username=username, mechanism=mechanism)
    )
    if kafka_ca and not plaintext:
        broker += "ssl.ca.location = $S3TS_T_CA\n"
    path.write_text(
        CONFIG.format(
            broker=broker,
            secret=secret,
            access_key=access_key,
            endpoint=endpoint,
            s3="ca_bundle = $S3TS_T_CA" if s3_ca else "",
        )
    )
    return path


def kafka_settings(env: dict[str, str]) -> dict[str, str]:
    return {
        "bootstrap.servers": env["S3TS_T_BOOTSTRAP"],
        "security.protocol": "SASL_SSL",
        "sasl.mechanism": "SCRAM-SHA-512",
        "sasl.username": env["S3TS_T_SASL_USERNAME"],
        "sasl.password": env["S3TS_T_SASL_PASSWORD"],
        "ssl.ca.location": env["S3TS_T_CA"],
    }


def s3_client(env: dict[str, str]) -> Any:
    import boto3
    from botocore.config import Config

    return boto3.client(
        "s3",
        endpoint_url=env["S3TS_T_ENDPOINT_URL"],
        region_name="us-east-1",
        aws_access_key_id=env["S3TS_T_ACCESS_KEY_ID"],
        aws_secret_access_key=env["S3TS_T_SECRET_KEY_ID"],
        verify=env["S3TS_T_CA"],
        config=Config(
            s3={"addressing_style": "path"},
            request_checksum_calculation="when_required",
            response_checksum_validation="when_required",
        ),
    )


def create_topic(env: dict[str, str], partitions: int = 2) -> str:
    from confluent_kafka.admin import AdminClient, NewTopic  # type: ignore[attr-defined]

    name = f"sec-{uuid.uuid4().hex[:10]}"
    admin = AdminClient(kafka_settings(env))
    admin.create_topics([NewTopic(name, num_partitions=partitions, replication_factor=1)])[
        name
    ].result(30)
    return name


def committed(env: dict[str, str], topic: str, group: str, partitions: int = 2) -> dict[int, int]:
    from confluent_kafka import ConsumerGroupTopicPartitions, TopicPartition
    from confluent_kafka.admin import AdminClient

    admin = AdminClient(kafka_settings(env))
    request = ConsumerGroupTopicPartitions(
        group, [TopicPartition(topic, p) for p in range(partitions)]
    )
    result = admin.list_consumer_group_offsets([request])[group].result(timeout=30)
    return {tp.partition: tp.offset for tp in result.topic_partitions if tp.offset >= 0}


def log_ends(env: dict[str, str], topic: str, partitions: int = 2) -> dict[int, int]:
    from confluent_kafka import Consumer, TopicPartition

    consumer = Consumer({**kafka_settings(env), "group.id": f"ends-{uuid.uuid4().hex[:8]}"})
    try:
        return {
            p: consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=30)[1]
            for p in range(partitions)
        }
    finally:
        consumer.close()


def run_program(module: str, env: dict[str, str], *args: str, timeout: float = 90) -> Any:
    return subprocess.run(
        [sys.executable, "-m", module, *args],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
    )


def assert_no_secret(text: str, env: dict[str, str]) -> None:
    for name in (
        "S3TS_T_SASL_PASSWORD",
        "S3TS_T_WRONG_PASSWORD",
        "S3TS_T_SECRET_KEY_ID",
        "S3TS_T_WRONG_SECRET",
    ):
        assert env[name] not in text, f"{name} shown"


def error_lines(text: str, pattern: str) -> list[str]:
    return [line for line in text.splitlines() if re.search(pattern, line, re.IGNORECASE)]


def test_files_go_through_sasl_ssl_and_https(secure: dict[str, str], tmp_path: Path) -> None:
    env = secure
    config = write_config(tmp_path / "good.config")
    topic = create_topic(env)
    bucket = f"sec-{uuid.uuid4().hex[:10]}"
    client = s3_client(env)
    client.create_bucket(Bucket=bucket)
    rng = random.Random(10_3)
    files = {
        "big.bin": rng.randbytes(1_300_000),  # 3 chunks
        "small.txt": b"hello over TLS\n" * 100,
    }
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
        done = run_program(
            "s3transfer_stream.cli.upload_file",
            env,
            str(tmp_path / name),
            "--config",
            str(config),
            "--topic_name",
            topic,
        )
        assert done.returncode == 0, done.stderr
        assert_no_secret(done.stdout + done.stderr, env)

    group = f"g-{uuid.uuid4().hex[:8]}"
    run = ProcessorRun(
        bucket,
        topic,
        group,
        tmp_path / "out",
        "--config",
        str(config),
        env={**os.environ, **env},
        tag="secure",
    )
    expected = {f"{topic}/{name}": len(data) for name, data in files.items()}
    run.wait_for(lambda: list_objects(client, bucket) == expected, 60, "both objects")
    for name, data in files.items():
        assert read_object(client, bucket, f"{topic}/{name}") == data
    run.wait_for(lambda: run.stderr().count("Transferred ") >= len(files), 30, "transfer lines")
    # the commit follows the uploads: wait for it before quitting
    ends = log_ends(env, topic)
    deadline = time.monotonic() + 30
    while committed(env, topic, group) != {p: e for p, e in ends.items() if e > 0}:
        assert time.monotonic() < deadline, (committed(env, topic, group), ends)
        time.sleep(0.5)
    assert run.quit() == 0, run.stderr()
    assert_no_secret(run.stderr(), env)


@pytest.mark.parametrize(
    ("case", "options", "pattern", "where"),
    [
        (
            "wrong SASL password",
            {"password": "$S3TS_T_WRONG_PASSWORD"},
            r"refused the connection: .*(authentication|SASL)",
            "kafka",
        ),
        (
            "broker CA not given",
            {"kafka_ca": False},
            r"refused the connection: .*(SSL|certificate)",
            "kafka",
        ),
        (
            "unknown SASL user",
            {"username": "$S3TS_T_OTHER_USER"},
            r"refused the connection: .*(authentication|SASL)",
            "kafka",
        ),
        (
            "SASL mechanism the broker does not offer",
            {"mechanism": "SCRAM-SHA-256"},
            r"refused the connection: .*SCRAM-SHA-256 mechanism handshake failed",
            "kafka",
        ),
        (
            "PLAINTEXT client to the SASL_SSL listener",
            {"plaintext": True},
            r"cannot reach the Kafka broker at .* within 10 s",
            "kafka",
        ),
        (
            "wrong S3 secret",
            {"secret": "$S3TS_T_WRONG_SECRET"},
            r"cannot use bucket .*access denied",
            "s3",
        ),
        (
            "wrong S3 access key id",
            {"access_key": "$S3TS_T_OTHER_USER"},
            r"cannot use bucket .*access denied",
            "s3",
        ),
        (
            "S3 CA not given",
            {"s3_ca": False},
            r"cannot use bucket .*(SSL|certificate)",
            "s3",
        ),
        (
            "plain HTTP to the HTTPS endpoint",
            {"endpoint": "$S3TS_T_HTTP_ENDPOINT_URL"},
            r"cannot use bucket .*HTTP 400",
            "s3",
        ),
    ],
)
def test_wrong_credentials_fail_once_and_commit_nothing(
    secure: dict[str, str],
    tmp_path: Path,
    case: str,
    options: dict[str, Any],
    pattern: str,
    where: str,
) -> None:
    env = secure
    config = write_config(tmp_path / "bad.config", **options)
    topic = create_topic(env)
    bucket = f"sec-{uuid.uuid4().hex[:10]}"
    client = s3_client(env)
    client.create_bucket(Bucket=bucket)
    # one good file in the topic, so that a processor that got through would commit
    (tmp_path / "f.bin").write_bytes(b"x" * 1000)
    good = write_config(tmp_path / "good.config")
    sent = run_program(
        "s3transfer_stream.cli.upload_file",
        env,
        str(tmp_path / "f.bin"),
        "--config",
        str(good),
        "--topic_name",
        topic,
    )
    assert sent.returncode == 0, sent.stderr
    ends = log_ends(env, topic)
    named = env["S3TS_T_BOOTSTRAP"] if where == "kafka" else env["S3TS_T_ENDPOINT_URL"]
    if "endpoint" in options:
        named = env["S3TS_T_HTTP_ENDPOINT_URL"]

    group = f"g-{uuid.uuid4().hex[:8]}"
    t0 = time.monotonic()
    done = run_program(
        "s3transfer_stream.cli.processor",
        env,
        bucket,
        "--config",
        str(config),
        "--topic_name",
        topic,
        "--consumer_group_id",
        group,
        "--output_dir",
        str(tmp_path / "out"),
    )
    took = time.monotonic() - t0
    text = done.stdout + done.stderr
    assert done.returncode != 0, text
    found = error_lines(text, pattern)
    assert len(found) == 1, f"{case}: {text}"
    assert named in found[0], found[0]
    assert error_lines(text, r"\b(ERROR|WARNING)\b") == found, text
    assert_no_secret(text, env)
    assert took < 30, f"{case}: took {took:.1f} s"
    assert committed(env, topic, group) == {}, case
    assert list_objects(client, bucket) == {}

    if where == "kafka":
        # the producer: the same one error, and nothing reaches the topic
        (tmp_path / "g.bin").write_bytes(b"y" * 1000)
        done = run_program(
            "s3transfer_stream.cli.upload_file",
            env,
            str(tmp_path / "g.bin"),
            "--config",
            str(config),
            "--topic_name",
            topic,
        )
        text = done.stdout + done.stderr
        assert done.returncode != 0, text
        found = error_lines(text, pattern)
        assert len(found) == 1, f"{case} (UploadDataFile): {text}"
        assert named in found[0], found[0]
        assert error_lines(text, r"\b(ERROR|WARNING)\b") == found, text
        assert_no_secret(text, env)
        assert log_ends(env, topic) == ends
