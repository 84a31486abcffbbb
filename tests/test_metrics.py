"""Prometheus metrics, /healthz and /ready (issue 9, item 1).

Unit tests build the collector over a processor that is never started (a fake
object store, the ledger fed by hand) and the HTTP server over a registry of
their own; the integration tests run the processor CLI with ``--metrics_port``
against the real broker and S3 server, scrape it over HTTP and check values that
follow from what was sent.
"""

from __future__ import annotations

import hashlib
import os
import re
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import s3transfer_stream
from helpers import (
    CHUNK,
    ProcessorRun,
    S3Proxy,
    committed_offsets,
    encoded_chunks,
    list_objects,
    log_ends,
    produce,
    write_tree,
)
from prometheus_client import CollectorRegistry, Counter
from prometheus_client.exposition import generate_latest
from prometheus_client.parser import text_string_to_metric_families
from s3transfer_stream import _core
from s3transfer_stream.config import TransferConfig
from s3transfer_stream.health import BrokerProbe, Check, HealthServer, render_checks
from s3transfer_stream.metrics import (
    FAILURE_REASONS,
    ProcessorMetrics,
    processor_health,
    processor_ready,
)
from s3transfer_stream.processor import ProcessorOptions, S3TransferStreamProcessor
from s3transfer_stream.processor import uploads as uploads_module
from test_processor_units import FakeStore, chunks, unavailable

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def parse(text: str) -> Samples:
    out: Samples = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, frozenset(s.labels.items()))] = s.value
    return out


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples[(name, frozenset(labels.items()))]


def by_label(samples: Samples, name: str, label: str) -> dict[str, float]:
    return {dict(k[1])[label]: v for k, v in samples.items() if k[0] == name}


def get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=30) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as err:
        return err.code, err.read().decode()


def wait_until(predicate: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


# --------------------------------------------------------------------------- units


def test_server_answers_metrics_health_and_ready_with_the_checks_status(tmp_path: Path) -> None:
    registry = CollectorRegistry()
    c = Counter("s3ts_things", "things", registry=registry)
    c.inc(3)
    ready = [Check("broker", True, "1 broker(s) answered"), Check("s3", False, "S3 unreachable")]
    server = HealthServer("127.0.0.1", 0)
    try:
        server.start(registry, health=lambda: [Check("threads", True)], ready=lambda: ready)
        status, text = get(f"{server.url}/metrics")
        assert status == 200
        assert value(parse(text), "s3ts_things_total") == 3
        assert get(f"{server.url}/healthz") == (200, "ok\nthreads: ok\n")
        status, text = get(f"{server.url}/ready")
        assert status == 503
        assert text.splitlines() == [
            "failing",
            "broker: ok (1 broker(s) answered)",
            "s3: FAILING (S3 unreachable)",
        ]
        ready[1] = Check("s3", True)
        assert get(f"{server.url}/ready/")[0] == 200
        assert get(f"{server.url}/other")[0] == 404
        head = urllib.request.Request(f"{server.url}/healthz", method="HEAD")
        with urllib.request.urlopen(head, timeout=10) as r:
            assert r.status == 200 and r.read() == b""
        # OpenMetrics when the scraper asks for it.
        om = urllib.request.Request(
            f"{server.url}/metrics", headers={"Accept": "application/openmetrics-text"}
        )
        with urllib.request.urlopen(om, timeout=10) as r:
            assert r.headers["Content-Type"].startswith("application/openmetrics-text")
            assert r.read().decode().rstrip().endswith("# EOF")
    finally:
        server.close()
    assert render_checks([]) == (200, "ok\n")


def test_a_port_in_use_is_an_error_at_bind_time() -> None:
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    try:
        with pytest.raises(OSError):
            HealthServer("127.0.0.1", taken.getsockname()[1])
    finally:
        taken.close()


def test_two_processors_in_one_process_have_their_own_registries(tmp_path: Path) -> None:
    a, b = ProcessorMetrics(), ProcessorMetrics()
    a.file_failed("bad_chunk")
    assert a.registry is not b.registry
    assert (
        value(
            parse(generate_latest(a.registry).decode()),
            "s3ts_files_failed_total",
            reason="bad_chunk",
        )
        == 1
    )
    assert (
        value(
            parse(generate_latest(b.registry).decode()),
            "s3ts_files_failed_total",
            reason="bad_chunk",
        )
        == 0
    )


class FakeAdmin:
    def __init__(self) -> None:
        self.calls = 0
        self.fail = False

    def list_topics(self, topic: str, timeout: float) -> Any:
        self.calls += 1
        if self.fail:
            raise RuntimeError("Failed to get metadata: Local: Broker transport failure")
        return SimpleNamespace(brokers={1: None}, topics={topic: SimpleNamespace(error=None)})


def test_broker_probe_caches_its_answer_for_ttl_seconds() -> None:
    admin = FakeAdmin()
    probe = BrokerProbe({"bootstrap.servers": "x:1"}, "t", ttl=0.3, admin_factory=lambda _: admin)
    assert probe.check() == (True, "1 broker(s) answered")
    admin.fail = True
    assert probe.check()[0] and admin.calls == 1  # cached
    time.sleep(0.35)
    ok, detail = probe.check()
    assert not ok and "transport failure" in detail and admin.calls == 2


def bad_chunk_file(name: str, data: bytes, size: int) -> list[bytes]:
    """Chunks of ``name`` whose second chunk's data no longer matches its hash."""
    msgs = chunks(name, data, size)
    broken = bytearray(msgs[1])
    broken[-10] ^= 0xFF
    msgs[1] = bytes(broken)
    return msgs


def wrong_hash_file(name: str, data: bytes, size: int) -> list[bytes]:
    """Intact chunks whose file hash is not the file's."""
    pieces = [data[i : i + size] for i in range(0, len(data), size)]
    wrong = hashlib.sha512(b"another file").digest()
    return [
        _core.encode_chunk(
            name, wrong, hashlib.sha512(d).digest(), i * size, i + 1, len(pieces), "", "", d, 1.0
        )
        for i, d in enumerate(pieces)
    ]


@pytest.fixture
def idle_processor(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Any:
    """A processor with metrics that is never started: the test feeds its ledger."""
    monkeypatch.setattr(uploads_module, "FIRST_DELAY", 0.01)
    config = TransferConfig(
        path=tmp_path / "x.config",
        broker={},
        producer={},
        consumer={},
        s3=None,
        sections=frozenset(),
    )
    options = ProcessorOptions(
        bucket="bkt", topic="t", group_id="g", output_dir=tmp_path, part_size=5 << 20
    )
    store = FakeStore()
    metrics = ProcessorMetrics()
    p = S3TransferStreamProcessor(config, options, store, metrics=metrics)  # type: ignore[arg-type]
    metrics.watch(p)
    yield p, metrics, store
    p.shutdown()


def test_collector_counts_what_the_processor_did(idle_processor: Any) -> None:
    p, metrics, store = idle_processor
    store.faults = [unavailable()]  # the first PUT: retried, then it lands
    good = b"g" * 1000
    msgs = (
        chunks("good.dat", good, 400)
        + bad_chunk_file("corrupt.dat", b"c" * 900, 300)
        + wrong_hash_file("mismatch.dat", b"m" * 700, 300)
        + chunks("partial.dat", b"p" * 3000, 1000)[:1]
    )
    p.ledger.assigned(0, 0, None)
    batch = [(0, i, m) for i, m in enumerate(msgs)]
    events, n_stored, _ = p.ledger.feed(batch)
    p.stats.add(messages_read=len(batch), messages_processed=n_stored)
    metrics.consumed(msgs)
    p.uploader.handle(events)
    wait_until(lambda: p.stats.files_transferred == 1, 10, "the good file")
    wait_until(lambda: len(p.ledger.progress()) == 1, 10, "the failures settled")
    # One consumer thread that owns partition 0, had offset 3 confirmed, saw log end 10.
    p.loops.append(SimpleNamespace(owned={0}, acked={0: (3, "")}, log_end={0: 10}))

    m = parse(generate_latest(metrics.registry).decode())
    assert value(m, "s3ts_messages_consumed_total") == len(msgs)
    assert value(m, "s3ts_consumed_bytes_total") == sum(map(len, msgs))
    assert value(m, "s3ts_files_transferred_total") == 1
    assert value(m, "s3ts_uploaded_bytes_total") == len(good)
    assert by_label(m, "s3ts_files_failed_total", "reason") == {
        **dict.fromkeys(FAILURE_REASONS, 0.0),
        "bad_chunk": 1.0,
        "hash_mismatch": 1.0,
    }
    assert value(m, "s3ts_files_abandoned_total") == 0
    assert value(m, "s3ts_s3_errors_total", code="ServiceUnavailable", transient="true") == 1
    assert value(m, "s3ts_upload_duration_seconds_count") == 1
    assert value(m, "s3ts_end_to_end_duration_seconds_count") == 1
    assert by_label(m, "s3ts_files_in_progress", "state") == {
        "receiving": 1,
        "uploading": 0,
        "failed": 0,
    }
    assert value(m, "s3ts_reassembly_buffered_bytes") == p.ledger.buffered_bytes > 0
    assert value(m, "s3ts_oldest_file_in_progress_seconds") > 0
    part = {"topic": "t", "partition": "0"}
    assert value(m, "s3ts_partition_committed_offset", **part) == 3
    assert value(m, "s3ts_partition_log_end_offset", **part) == 10
    assert value(m, "s3ts_partition_lag_messages", **part) == 7
    assert value(m, "s3ts_partitions_assigned") == 1
    assert value(m, "s3ts_s3_reachable") == 1
    info = value(
        m,
        "s3ts_processor_info",
        topic="t",
        group="g",
        bucket="bkt",
        version=s3transfer_stream.__version__,
    )
    assert info == 1
    assert ("s3ts_broker_reachable", frozenset()) not in m  # no probe given


def test_health_and_ready_follow_the_threads_and_s3(idle_processor: Any) -> None:
    p, metrics, _ = idle_processor
    assert processor_health(p) == [Check("consumer_threads", True, "starting")]
    assert processor_ready(p, None) == [Check("running", False, "starting")]
    p.loops.append(SimpleNamespace(owned={0, 1}, acked={}, log_end={}))
    done = threading.Thread(target=lambda: None)
    done.start()
    done.join()
    p._threads.append(done)  # started, and no longer running
    assert processor_health(p) == [Check("consumer_threads", False, "0 of 1 alive")]
    alive = threading.Event()
    t = threading.Thread(target=alive.wait)
    t.start()
    try:
        p._threads[:] = [t]
        assert processor_health(p)[0].ok
        ready = {c.name: c for c in processor_ready(p, None)}
        assert all(c.ok for c in ready.values()), ready
        assert ready["partitions"].detail == "2 assigned"
        p.uploader.health.failed("PUT of t/x", unavailable())
        ready = {c.name: c for c in processor_ready(p, None)}
        assert not ready["s3"].ok and "S3 unreachable since" in ready["s3"].detail
        m = parse(generate_latest(metrics.registry).decode())
        assert value(m, "s3ts_s3_reachable") == 0
        p.uploader.health.ok()
        assert all(c.ok for c in processor_ready(p, None))
        p.stop.set()
        assert processor_ready(p, None) == [Check("running", False, "stopping")]
    finally:
        alive.set()
        t.join()
    assert processor_health(p)[0].ok  # stopping: threads finishing is not a failure


# --------------------------------------------------------------------------- integration


def metrics_url(run: ProcessorRun) -> str:
    run.wait_for(lambda: "Metrics at http" in run.stderr(), 60, "the metrics line")
    found = re.search(r"Metrics at (http://\S+)/metrics", run.stderr())
    assert found is not None
    return found.group(1)


def scrape(url: str) -> Samples:
    status, text = get(f"{url}/metrics")
    assert status == 200, text
    return parse(text)


def hash_mismatch_messages(name: str, data: bytes) -> list[tuple[str, bytes]]:
    values = wrong_hash_file(name, data, CHUNK)
    return [(_core.message_key("", name, i + 1, len(values)), v) for i, v in enumerate(values)]


@pytest.mark.integration
def test_a_running_processor_reports_what_was_sent(
    tmp_path: Path, new_topic: Any, new_bucket: Any, s3_client: Any, kafka_bootstrap: str
) -> None:
    files = {
        "one.dat": os.urandom(1000),
        "sub/two.bin": os.urandom(2 * CHUNK + 5),
        "sub/deeper/big.bin": os.urandom(6 * 2**20 + 1),  # multipart with 5 MiB parts
    }
    src = tmp_path / "src"
    write_tree(src, files)
    topic = new_topic(partitions=2)
    bucket = new_bucket()
    msgs: list[tuple[str, Any, int]] = []
    for i, rel in enumerate(files):
        msgs += [(k, v, i % 2) for k, v in encoded_chunks(src, rel)]
    msgs += [(k, v, 1) for k, v in hash_mismatch_messages("bad.bin", os.urandom(CHUNK + 7))]
    produce(kafka_bootstrap, topic, msgs)
    n_bytes = sum(len(v) for _, v, _ in msgs)

    group = f"g-{uuid.uuid4().hex[:8]}"
    run = ProcessorRun(
        bucket,
        topic,
        group,
        tmp_path / "out",
        "--metrics_port",
        "0",
        "--n_threads",
        "1",
        "--part_size",
        "5",
    )
    url = metrics_url(run)
    ends = log_ends(kafka_bootstrap, topic)

    def settled() -> bool:
        m = scrape(url)
        committed = by_label(m, "s3ts_partition_committed_offset", "partition")
        return value(m, "s3ts_files_transferred_total") == len(files) and committed == {
            str(p): end for p, end in ends.items()
        }

    run.wait_for(settled, 120, "every file transferred and committed at the log end")
    m = scrape(url)
    assert value(m, "s3ts_messages_consumed_total") == len(msgs)
    assert value(m, "s3ts_consumed_bytes_total") == n_bytes
    assert value(m, "s3ts_uploaded_bytes_total") == sum(map(len, files.values()))
    failed = by_label(m, "s3ts_files_failed_total", "reason")
    assert failed["hash_mismatch"] == 1 and sum(failed.values()) == 1
    assert value(m, "s3ts_files_abandoned_total") == 0
    assert value(m, "s3ts_upload_duration_seconds_count") == len(files)
    assert value(m, "s3ts_end_to_end_duration_seconds_count") == len(files)
    assert sum(by_label(m, "s3ts_files_in_progress", "state").values()) == 0
    assert value(m, "s3ts_reassembly_buffered_bytes") == 0
    assert value(m, "s3ts_oldest_file_in_progress_seconds") == 0
    run.wait_for(
        lambda: (
            by_label(scrape(url), "s3ts_partition_lag_messages", "partition")
            == {str(p): 0 for p in ends}
        ),
        30,
        "no lag",
    )
    assert value(m, "s3ts_partitions_assigned") == 2
    assert value(m, "s3ts_consumer_threads_alive") == 1
    assert value(m, "s3ts_s3_reachable") == 1
    assert value(m, "s3ts_broker_reachable") == 1
    assert not [k for k in m if k[0] == "s3ts_s3_errors_total"]
    # What the broker says agrees.
    assert committed_offsets(kafka_bootstrap, topic, group) == ends
    assert len(list_objects(s3_client, bucket)) == len(files)
    status, text = get(f"{url}/healthz")
    assert status == 200, text
    status, text = get(f"{url}/ready")
    assert status == 200, text
    assert "partitions: ok (2 assigned)" in text and "s3: ok" in text
    # No secret in what is served.
    page = get(f"{url}/metrics")[1] + get(f"{url}/ready")[1]
    for name in ("SECRET_KEY_ID", "ACCESS_KEY_ID"):
        assert os.environ[name] not in page
    assert run.quit() == 0
    with pytest.raises(urllib.error.URLError):
        urllib.request.urlopen(f"{url}/healthz", timeout=5)


@pytest.mark.integration
def test_ready_goes_503_while_s3_is_unreachable_and_during_shutdown(
    tmp_path: Path, new_topic: Any, new_bucket: Any, s3_client: Any, kafka_bootstrap: str
) -> None:
    proxy = S3Proxy(int(os.environ["S3TS_S3_PORT"]))
    try:
        topic = new_topic(partitions=1)
        bucket = new_bucket()
        src = tmp_path / "src"
        write_tree(src, {"first.dat": os.urandom(5000), "second.dat": os.urandom(7000)})
        env = {**os.environ, "ENDPOINT_URL": proxy.url}
        group = f"g-{uuid.uuid4().hex[:8]}"
        run = ProcessorRun(
            bucket,
            topic,
            group,
            tmp_path / "out",
            "--metrics_port",
            "0",
            "--shutdown_grace_seconds",
            "6",
            env=env,
        )
        url = metrics_url(run)
        run.wait_for(lambda: get(f"{url}/ready")[0] == 200, 60, "ready")

        proxy.unavailable()
        produce(kafka_bootstrap, topic, [(k, v, 0) for k, v in encoded_chunks(src, "first.dat")])
        run.wait_for(lambda: get(f"{url}/ready")[0] == 503, 60, "not ready while S3 answers 503")
        status, text = get(f"{url}/ready")
        assert status == 503 and "s3: FAILING (S3 unreachable since" in text, text
        assert get(f"{url}/healthz")[0] == 200  # alive: nothing to restart for
        m = scrape(url)
        assert value(m, "s3ts_s3_reachable") == 0
        assert value(m, "s3ts_s3_unreachable_seconds") >= 0
        assert value(m, "s3ts_s3_errors_total", code="ServiceUnavailable", transient="true") >= 1
        assert by_label(m, "s3ts_files_in_progress", "state")["uploading"] == 1
        assert value(m, "s3ts_files_transferred_total") == 0

        proxy.allow()
        run.wait_for(lambda: get(f"{url}/ready")[0] == 200, 90, "ready again once S3 answers")
        run.wait_for(
            lambda: value(scrape(url), "s3ts_files_transferred_total") == 1, 30, "first.dat"
        )
        assert value(scrape(url), "s3ts_s3_reachable") == 1

        # Shutdown while an upload waits for S3: not ready, still alive, then gone.
        proxy.refuse()
        produce(kafka_bootstrap, topic, [(k, v, 0) for k, v in encoded_chunks(src, "second.dat")])
        run.wait_for(lambda: value(scrape(url), "s3ts_s3_reachable") == 0, 60, "S3 down again")
        run.command("quit")
        run.wait_for(
            lambda: get(f"{url}/ready") == (503, "failing\nrunning: FAILING (stopping)\n"),
            10,
            "ready saying stopping",
        )
        assert get(f"{url}/healthz")[0] == 200
        assert run.wait(90) == 0
        assert list_objects(s3_client, bucket) == {f"{topic}/first.dat": 5000}
    finally:
        proxy.close()


@pytest.mark.integration
def test_metrics_options_are_checked_at_start(
    tmp_path: Path, new_topic: Any, new_bucket: Any
) -> None:
    topic = new_topic(partitions=1)
    bucket = new_bucket()
    cli = [sys.executable, "-m", "s3transfer_stream.cli.processor", bucket, "--topic_name", topic]
    r = subprocess.run(
        [*cli, "--metrics_port", "70000"], capture_output=True, text=True, timeout=60
    )
    assert r.returncode == 2 and "not a port number" in r.stderr
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    try:
        port = str(taken.getsockname()[1])
        r = subprocess.run(
            [*cli, "--metrics_port", port, "--output_dir", str(tmp_path / "o")],
            capture_output=True,
            text=True,
            timeout=120,
        )
    finally:
        taken.close()
    assert r.returncode == 2, r.stderr
    assert f"cannot serve metrics on 127.0.0.1:{port}" in r.stderr


# --------------------------------------------------------------------------- producers


def test_upload_file_hook_counts_messages_bytes_and_the_file() -> None:
    from s3transfer_stream.metrics import ProducerMetrics

    pm = ProducerMetrics("t")
    hook = pm.delivery_hook(size=2 * 100 + 7, n_chunks=3, chunk_size=100)
    hook(3, None)
    hook(1, "refused")
    hook(1, None)
    m = parse(generate_latest(pm.registry).decode())
    assert value(m, "s3ts_files_produced_total") == 0
    hook(2, None)  # all three delivered, but one attempt failed: not a clean file
    m = parse(generate_latest(pm.registry).decode())
    assert value(m, "s3ts_messages_produced_total") == 3
    assert value(m, "s3ts_produced_bytes_total") == 207
    assert value(m, "s3ts_produce_errors_total") == 1
    assert value(m, "s3ts_files_produced_total") == 0
    hook2 = pm.delivery_hook(size=5, n_chunks=1, chunk_size=100)
    hook2(1, None)
    m = parse(generate_latest(pm.registry).decode())
    assert value(m, "s3ts_files_produced_total") == 1
    assert (
        value(m, "s3ts_upload_data_file_info", topic="t", version=s3transfer_stream.__version__)
        == 1
    )


@pytest.mark.integration
def test_upload_data_file_serves_metrics_while_it_sends(
    tmp_path: Path, new_topic: Any, kafka_bootstrap: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The last scrape before the program closes its server (it exits once the file is
    acknowledged) shows the whole file."""
    from s3transfer_stream.cli import upload_file

    seen: list[tuple[Samples, tuple[int, str], tuple[int, str]]] = []
    close = HealthServer.close

    def scrape_then_close(self: HealthServer) -> None:
        seen.append((scrape(self.url), get(f"{self.url}/healthz"), get(f"{self.url}/ready")))
        close(self)

    monkeypatch.setattr(HealthServer, "close", scrape_then_close)
    topic = new_topic(partitions=2)
    path = tmp_path / "one file.bin"
    data = os.urandom(5 * 16384 + 3)
    path.write_bytes(data)
    argv = [str(path), "--topic_name", topic, "--chunk_size", "16384", "--metrics_port", "0"]
    assert upload_file.main(argv) == 0
    ((m, health, ready),) = seen
    assert value(m, "s3ts_messages_produced_total") == 6
    assert value(m, "s3ts_produced_bytes_total") == len(data)
    assert value(m, "s3ts_files_produced_total") == 1
    assert value(m, "s3ts_produce_errors_total") == 0
    assert health == (200, "ok\nprogram: ok (sending one file.bin)\n")
    assert ready[0] == 200 and "broker: ok" in ready[1]


@pytest.mark.integration
def test_data_file_upload_directory_serves_metrics(
    tmp_path: Path, new_topic: Any, kafka_bootstrap: str
) -> None:
    topic = new_topic(partitions=2)
    root = tmp_path / "watched"
    files = {"a.dat": os.urandom(40_000), "sub/b.dat": os.urandom(16384), "c.dat": b"c"}
    write_tree(root, files)
    err_path = tmp_path / "uploader.stderr"
    with open(err_path, "w") as err:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "s3transfer_stream.cli.upload_directory",
                str(root),
                "--topic_name",
                topic,
                "--chunk_size",
                "16384",
                "--watchdog_lag_time",
                "0.5",
                "--upload_existing",
                "--metrics_port",
                "0",
            ],
            stdin=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            stderr=err,
            text=True,
        )
    try:

        def stderr() -> str:
            return err_path.read_text()

        wait_until(lambda: "Metrics at http" in stderr(), 60, "the metrics line")
        found = re.search(r"Metrics at (http://\S+)/metrics", stderr())
        assert found is not None
        url = found.group(1)
        wait_until(
            lambda: value(scrape(url), "s3ts_files_produced_total") == len(files), 60, "3 files"
        )
        m = scrape(url)
        n_chunks = sum(max(1, -(-len(d) // 16384)) for d in files.values())
        assert value(m, "s3ts_messages_produced_total") == n_chunks
        assert value(m, "s3ts_produced_bytes_total") == sum(map(len, files.values()))
        assert value(m, "s3ts_produce_errors_total") == 0
        assert value(m, "s3ts_files_failed") == 0
        assert value(m, "s3ts_files_in_progress") == 0
        assert value(m, "s3ts_uploader_threads_alive") >= 3
        assert (
            value(
                m,
                "s3ts_data_file_upload_directory_info",
                topic=topic,
                version=s3transfer_stream.__version__,
            )
            == 1
        )
        assert get(f"{url}/healthz")[0] == 200
        status, text = get(f"{url}/ready")
        assert status == 200 and "broker: ok" in text, text
        assert proc.stdin is not None
        proc.stdin.write("quit\n")
        proc.stdin.flush()
        assert proc.wait(60) == 0, stderr()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(30)
