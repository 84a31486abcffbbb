"""Session fixtures: the real local Kafka broker and S3 server from services/.

The services are started (idempotently) once per session by the same scripts a
person uses; every test then gets its own topic and bucket. Set
S3TS_NO_SERVICES=1 to run only the tests that need neither.
"""

from __future__ import annotations

import os
import subprocess
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[1]
ENV_NAMES = (
    "S3TS_HOME",
    "S3TS_STATE",
    "S3TS_KAFKA_PORT",
    "S3TS_S3_PORT",
    "LOCAL_KAFKA_BROKER_BOOTSTRAP_SERVERS",
    "ACCESS_KEY_ID",
    "SECRET_KEY_ID",
    "ENDPOINT_URL",
    "REGION",
)


def _service_env() -> dict[str, str]:
    out = subprocess.run(
        ["bash", "-c", f". {ROOT}/services/env.sh && env -0"],
        check=True,
        capture_output=True,
        env=os.environ.copy(),
    ).stdout.decode()
    pairs = (item.split("=", 1) for item in out.split("\0") if "=" in item)
    return {k: v for k, v in pairs if k in ENV_NAMES}


@pytest.fixture(autouse=True)
def _no_processor_left_behind() -> Iterator[None]:
    """Kills processor subprocesses a failing test did not get to stop."""
    yield
    from helpers import RUNNING

    while RUNNING:
        run = RUNNING.pop()
        if run.proc.poll() is None:
            run.proc.kill()
            run.proc.wait(30)


@pytest.fixture(scope="session")
def services() -> dict[str, str]:
    if os.environ.get("S3TS_NO_SERVICES") == "1":
        pytest.skip("S3TS_NO_SERVICES=1: tests that need Kafka and S3 are not run")
    env = _service_env()
    os.environ.update(env)
    subprocess.run(["bash", str(ROOT / "services" / "all.sh"), "start"], check=True)
    return env


@pytest.fixture(scope="session")
def kafka_bootstrap(services: dict[str, str]) -> str:
    return services["LOCAL_KAFKA_BROKER_BOOTSTRAP_SERVERS"]


@pytest.fixture
def new_topic(kafka_bootstrap: str) -> Iterator[Callable[..., str]]:
    from s3transfer_stream.kafka import create_topic, delete_topic

    made: list[str] = []

    def make(partitions: int = 1, prefix: str = "t") -> str:
        name = f"{prefix}-{uuid.uuid4().hex[:10]}"
        create_topic(kafka_bootstrap, name, partitions)
        made.append(name)
        return name

    yield make
    if made:
        try:
            delete_topic(kafka_bootstrap, made)
        except Exception:  # cleanup only; the broker's data dir is throwaway
            pass


@pytest.fixture(scope="session")
def s3_client(services: dict[str, str]) -> Any:
    from s3transfer_stream.config import S3Settings
    from s3transfer_stream.s3 import make_client

    return make_client(
        S3Settings(
            access_key_id=services["ACCESS_KEY_ID"],
            secret_key_id=services["SECRET_KEY_ID"],
            endpoint_url=services["ENDPOINT_URL"],
            region=services["REGION"],
        )
    )


def empty_bucket(client: Any, bucket: str) -> None:
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket):
        for obj in page.get("Contents", []):
            client.delete_object(Bucket=bucket, Key=obj["Key"])
    for up in client.list_multipart_uploads(Bucket=bucket).get("Uploads", []):
        client.abort_multipart_upload(Bucket=bucket, Key=up["Key"], UploadId=up["UploadId"])


@pytest.fixture
def new_bucket(s3_client: Any) -> Iterator[Callable[[], str]]:
    made: list[str] = []

    def make() -> str:
        name = f"b-{uuid.uuid4().hex[:12]}"
        s3_client.create_bucket(Bucket=name)
        made.append(name)
        return name

    yield make
    for name in made:
        try:
            empty_bucket(s3_client, name)
            s3_client.delete_bucket(Bucket=name)
        except Exception:
            pass
