"""Soak (issue 10, item 5): ONE processor under the typical workload for a set time.

One ``S3TransferStreamProcessor`` (defaults: 2 consumer threads, 8 MiB parts) reads a
3-partition topic while a producer thread sends 8 MiB files with fresh names through
our producer (``producer.send_file``, 512 KiB chunks, file-affine partitions) at a
steady rate. The rate is measured, not guessed: after one primer file, a burst of
``BURST`` files is sent as fast as possible and timed until all are in the bucket;
the steady rate is ``HEADROOM`` times that (``S3TS_SOAK_RATE`` files/s overrides it).
The burst also drives the processor's pools to their peak concurrency before the
baseline is taken.

Every few seconds the processor's ``VmRSS``, ``VmHWM`` and ``Threads`` (from
``/proc/<pid>/status``), its open file descriptors (``/proc/<pid>/fd``) and the
group's lag are sampled. At the end: every file is in the bucket with its size (a
sample of them byte for byte), each was transferred exactly once, no multipart
upload is left open, the commits reach the log end, the processor quits with 0, and

* memory is flat: the lowest RSS of the last third of the steady phase is at most
  the larger of (a) the lowest of its first third (after a warm-up of a tenth of the
  phase) plus one part (``--part_size``, 8 MiB; two parts in runs under 5 minutes,
  see ``rss_allowance``) and (b) the peak RSS (``VmHWM``) reached by the end of the
  warm-up. What the process legitimately holds besides its baseline is data in
  flight -- the consumers' prefetch queues and the part buffers being filled or
  uploaded -- and that comes and goes a part at a time: RSS moves in steps of 8 MiB,
  down as often as up. A leak is held for ever and lifts every sample, so the floors
  are compared, as for fds and threads below; a median moves with how many parts
  happen to be resident (a CI run failed a median check with 118.7 -> 135.4 MiB in
  a minute while its floor rose one part, 118.6 -> 127.4). (b): the allocator keeps
  freed part buffers in its per-thread arenas, so RSS can step up, a part at a time,
  towards the footprint the burst showed the process needs at its peak concurrency --
  memory reused, not lost. A leak outgrows both: over a 600 s run at ~3 files/s it
  exceeds them at ~10 KiB per file;
* no growth of open files or threads: the lowest count of the last third is at most
  the median of the first third. Something leaked is held for ever and lifts the
  floor; threads and files that come and go (a finishing worker, a rewritten
  registry) only lift the maximum, which is reported. Sockets are counted apart:
  the S3 connection pools open a kept-alive connection the first time a burst needs
  one more at once, and keep it (a CI run stepped from 30 to 31 fds that way), so
  the floor of sockets may rise by at most what the pools can hold
  (``SOCKET_SLACK``); a socket leaked per file outgrows that within a minute.

``S3TS_SOAK_SECONDS`` (default 60, what ``.ci/run`` runs) is how long the producer
sends, from the processor's start. ``S3TS_SOAK_OUT=DIR`` writes the samples and the
figures as ``DIR/soak-<seconds>s-<date>.json``, ``.md`` (a table for
docs/reliability.md) and ``.png`` (matplotlib, if installed). The long version::

    set -a; . services/env.sh; set +a
    S3TS_SOAK_SECONDS=600 S3TS_SOAK_OUT=benches/results \\
        .venv/bin/python -m pytest -s tests/test_soak.py
"""

from __future__ import annotations

import datetime
import json
import os
import random
import statistics
import threading
import time
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import pytest
from helpers import ProcessorRun, list_objects, read_object
from s3transfer_stream.processor.options import ProcessorOptions

pytestmark = [pytest.mark.integration, pytest.mark.slow]

MiB = 1 << 20
SECONDS = float(os.environ.get("S3TS_SOAK_SECONDS", "60"))
#: Sampling interval: ~30 samples in the default run, every 5 s in long ones.
INTERVAL = float(os.environ.get("S3TS_SOAK_INTERVAL", str(min(5.0, max(1.0, SECONDS / 30)))))
RATE = os.environ.get("S3TS_SOAK_RATE")
OUT = os.environ.get("S3TS_SOAK_OUT")
FILE_SIZE = 8 * MiB
PART_SIZE = 8 * MiB  # the processor's default --part_size
PARTITIONS = 3
N_SUBDIRS = 10
BURST = 8
#: The steady rate as a fraction of the rate measured in the burst: the 2-core machine
#: also runs the broker, the S3 server, the producer and maybe other tests; at half
#: its measured capacity the processor keeps up with a load that halves its speed.
HEADROOM = 0.5
#: The warm-up: this fraction of the steady phase is left out of the comparison.
WARMUP_FRACTION = 0.1
N_VERIFY = 12
SEED = 20261202


def file_bytes(i: int) -> bytes:
    return random.Random(SEED * 1_000_003 + i).randbytes(FILE_SIZE)


def rel_name(run_id: str, i: int) -> str:
    return f"soak/d{i % N_SUBDIRS}/{run_id}-{i:05d}.bin"


@dataclass
class Sent:
    i: int
    rel: str
    size: int
    at: float


@dataclass
class Sample:
    t: float
    phase: str
    rss_mib: float
    hwm_mib: float
    fds: int
    sockets: int
    threads: int
    produced: int
    transferred: int
    lag: int


#: How far the floor of open sockets may rise: the processor's two S3 connection
#: pools (botocore's and the PUT path's) hold up to ``max_parts_in_flight + 8``
#: kept-alive connections each (``cli/processor.py``).
SOCKET_SLACK = 2 * (ProcessorOptions.max_parts_in_flight + 8)


def proc_sample(pid: int) -> tuple[float, float, int, int, int]:
    """(VmRSS MiB, VmHWM MiB, open fds other than sockets, sockets, threads) of
    process ``pid``."""
    with open(f"/proc/{pid}/status") as f:
        status = dict(line.split(":", 1) for line in f if ":" in line)
    fds = sockets = 0
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except FileNotFoundError:
            continue  # closed since the listing
        if target.startswith("socket:"):
            sockets += 1
        else:
            fds += 1
    return (
        int(status["VmRSS"].split()[0]) / 1024,
        int(status["VmHWM"].split()[0]) / 1024,
        fds,
        sockets,
        int(status["Threads"]),
    )


class Workload:
    """Sends 8 MiB files with fresh names through our producer, then deletes them."""

    def __init__(self, root: Path, topic: str, run_id: str) -> None:
        from s3transfer_stream.config import load_config
        from s3transfer_stream.kafka import make_producer

        self.root, self.topic, self.run_id = root, topic, run_id
        self.producer = make_producer(load_config("local", require=("producer",)).producer)
        self.sent: list[Sent] = []
        self.stop = threading.Event()
        self.error: BaseException | None = None
        self.max_behind = 0.0
        self.thread: threading.Thread | None = None

    def send(self, i: int) -> None:
        from s3transfer_stream.producer import send_file

        rel = rel_name(self.run_id, i)
        path = self.root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(file_bytes(i))
        result = send_file(
            self.producer, self.topic, path, root=self.root, n_partitions=PARTITIONS, wait=True
        )
        path.unlink()
        assert result.complete, result.errors
        self.sent.append(Sent(i, rel, FILE_SIZE, time.monotonic()))

    def steady(self, rate: float, until: float) -> None:
        """Sends one file every 1/rate s until ``until`` (monotonic); never catches up
        in a burst when it fell behind."""
        try:
            due = time.monotonic()
            while not self.stop.is_set() and due < until:
                self.stop.wait(max(0.0, due - time.monotonic()))
                if self.stop.is_set():
                    break
                self.max_behind = max(self.max_behind, time.monotonic() - due)
                self.send(len(self.sent))
                due = max(due + 1 / rate, time.monotonic())
        except BaseException as exc:
            self.error = exc

    def start_steady(self, rate: float, until: float) -> None:
        self.thread = threading.Thread(
            target=self.steady, args=(rate, until), name="soak-producer", daemon=True
        )
        self.thread.start()


class Sampler:
    """Samples the processor, the counts and the group's lag every INTERVAL s."""

    def __init__(
        self, run: ProcessorRun, workload: Workload, bootstrap: str, topic: str, group: str
    ) -> None:
        from confluent_kafka import Consumer, TopicPartition

        self.run, self.workload = run, workload
        self.t0 = time.monotonic()
        self.phase = "primer"
        self.samples: list[Sample] = []
        self.stop = threading.Event()
        # Reads the group's commits and the log ends; never subscribes, so never joins.
        self.consumer = Consumer(
            {"bootstrap.servers": bootstrap, "group.id": group, "enable.auto.commit": False}
        )
        self.tps = [TopicPartition(topic, p) for p in range(PARTITIONS)]
        self.lock = threading.Lock()
        self.thread = threading.Thread(target=self.loop, name="soak-sampler", daemon=True)

    def lag(self) -> int:
        """Messages between the group's commits and the log ends, over all partitions."""
        with self.lock:
            done = self.consumer.committed(self.tps, timeout=10)
            committed = {tp.partition: max(tp.offset, 0) for tp in done}
            ends = [
                self.consumer.get_watermark_offsets(tp, timeout=10, cached=False)[1]
                for tp in self.tps
            ]
        return sum(end - committed[tp.partition] for tp, end in zip(self.tps, ends, strict=True))

    def take(self) -> Sample:
        rss, hwm, fds, sockets, threads = proc_sample(self.run.proc.pid)
        sample = Sample(
            t=round(time.monotonic() - self.t0, 2),
            phase=self.phase,
            rss_mib=round(rss, 1),
            hwm_mib=round(hwm, 1),
            fds=fds,
            sockets=sockets,
            threads=threads,
            produced=len(self.workload.sent),
            transferred=self.run.stderr().count("Transferred "),
            lag=self.lag(),
        )
        self.samples.append(sample)
        return sample

    def loop(self) -> None:
        while not self.stop.is_set() and self.run.proc.poll() is None:
            try:
                self.take()
            except (OSError, KeyError):  # the process is gone
                return
            self.stop.wait(INTERVAL)

    def finish(self) -> Sample:
        """Stops the sampling thread; one last sample."""
        self.stop.set()
        self.thread.join(30)
        return self.take()

    def close(self) -> None:
        self.stop.set()
        self.consumer.close()


@dataclass
class Verdict:
    window: tuple[float, float]
    warmup_end: float
    thirds: list[tuple[float, float]]
    rss_median_first: float
    rss_median_last: float
    rss_floor_first: float
    rss_floor_last: float
    rss_growth: float
    warmup_peak_rss: float
    rss_limit: float
    rss_min: float
    rss_max: float
    rss_slope_mib_per_100_files: float
    fds_median_first: float
    fds_min_last: int
    fds_range: tuple[int, int]
    sockets_median_first: float
    sockets_min_last: int
    sockets_range: tuple[int, int]
    threads_median_first: float
    threads_min_last: int
    threads_range: tuple[int, int]
    problems: list[str] = field(default_factory=list)


#: Below this steady phase (s), two parts of RSS growth are allowed instead of one.
SHORT_RUN = 300.0


def rss_allowance(seconds: float) -> float:
    """MiB the last third's lowest RSS may exceed the first third's by. In a run under
    SHORT_RUN the allocator's arenas are still growing towards the footprint of peak
    concurrency (CI's one-minute runs rose up to 8.8 MiB at the floor, 16.7 at the
    median); two parts keep that from failing the check, which still fails on a leak
    of about 200 KiB per file or more at CI's rate. Longer runs allow one part."""
    return (2 if seconds < SHORT_RUN else 1) * PART_SIZE / MiB


def judge(samples: list[Sample], steady_start: float, steady_end: float) -> Verdict:
    """The flatness checks over the steady phase (see the module docstring)."""
    warmup_end = steady_start + WARMUP_FRACTION * (steady_end - steady_start)
    window = [s for s in samples if warmup_end <= s.t <= steady_end]
    span = (steady_end - warmup_end) / 3
    cuts = [(warmup_end + k * span, warmup_end + (k + 1) * span) for k in range(3)]
    first = [s for s in window if s.t < cuts[0][1]]
    last = [s for s in window if s.t >= cuts[2][0]]
    warmup_peak = max(s.hwm_mib for s in samples if s.t <= warmup_end)
    assert len(first) >= 3 and len(last) >= 3, f"too few samples: {len(first)}, {len(last)}"
    med_first = statistics.median(s.rss_mib for s in first)
    med_last = statistics.median(s.rss_mib for s in last)
    floor_first = min(s.rss_mib for s in first)
    floor_last = min(s.rss_mib for s in last)
    # Least-squares slope of RSS over files produced, in the steady window.
    xs = [float(s.produced) for s in window]
    ys = [s.rss_mib for s in window]
    mx, my = statistics.fmean(xs), statistics.fmean(ys)
    sxx = sum((x - mx) ** 2 for x in xs)
    slope = 100 * sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / sxx if sxx else 0
    v = Verdict(
        window=(round(warmup_end, 1), round(steady_end, 1)),
        warmup_end=round(warmup_end, 1),
        thirds=[(round(a, 1), round(b, 1)) for a, b in cuts],
        rss_median_first=round(med_first, 1),
        rss_median_last=round(med_last, 1),
        rss_floor_first=round(floor_first, 1),
        rss_floor_last=round(floor_last, 1),
        rss_growth=round(floor_last - floor_first, 1),
        warmup_peak_rss=warmup_peak,
        rss_limit=round(
            max(floor_first + rss_allowance(steady_end - steady_start), warmup_peak), 1
        ),
        rss_min=round(min(ys), 1),
        rss_max=round(max(ys), 1),
        rss_slope_mib_per_100_files=round(slope, 2),
        fds_median_first=statistics.median(s.fds for s in first),
        fds_min_last=min(s.fds for s in last),
        fds_range=(min(s.fds for s in window), max(s.fds for s in window)),
        sockets_median_first=statistics.median(s.sockets for s in first),
        sockets_min_last=min(s.sockets for s in last),
        sockets_range=(min(s.sockets for s in window), max(s.sockets for s in window)),
        threads_median_first=statistics.median(s.threads for s in first),
        threads_min_last=min(s.threads for s in last),
        threads_range=(min(s.threads for s in window), max(s.threads for s in window)),
    )
    if v.rss_floor_last > v.rss_limit:
        v.problems.append(
            f"RSS grew: at least {floor_last:.1f} MiB in the last third vs {floor_first:.1f} "
            f"MiB at the lowest in the first (medians {med_first:.1f} -> {med_last:.1f}); limit {v.rss_limit:.1f} MiB (first + "
            f"{rss_allowance(steady_end - steady_start):.0f} MiB, or the "
            f"warm-up's peak {warmup_peak:.1f} MiB)"
        )
    if v.fds_min_last > v.fds_median_first:
        v.problems.append(
            f"open fds other than sockets grew: at least {v.fds_min_last} in the last "
            f"third, median {v.fds_median_first} in the first"
        )
    if v.sockets_min_last > v.sockets_median_first + SOCKET_SLACK:
        v.problems.append(
            f"open sockets grew: at least {v.sockets_min_last} in the last third, median "
            f"{v.sockets_median_first} in the first (the pools hold at most {SOCKET_SLACK})"
        )
    if v.threads_min_last > v.threads_median_first:
        v.problems.append(
            f"threads grew: at least {v.threads_min_last} in the last third, "
            f"median {v.threads_median_first} in the first"
        )
    return v


def table(samples: list[Sample], rows: int = 21) -> str:
    """A markdown table of about ``rows`` evenly spaced samples (and the last)."""
    step = max(1, round(len(samples) / rows))
    picked = samples[::step]
    if picked[-1] is not samples[-1]:
        picked.append(samples[-1])
    head = (
        "| t (s) | phase | files sent | files transferred | lag (msgs) | RSS (MiB) | "
        "peak RSS (MiB) | open fds | sockets | threads |\n"
        "|---|---|---|---|---|---|---|---|---|---|\n"
    )
    return head + "".join(
        f"| {s.t:.0f} | {s.phase} | {s.produced} | {s.transferred} | {s.lag} | "
        f"{s.rss_mib:.1f} | {s.hwm_mib:.1f} | {s.fds} | {s.sockets} | {s.threads} |\n"
        for s in picked
    )


def plot(samples: list[Sample], verdict: Verdict, path: Path, title: str) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    t = [s.t for s in samples]
    fig, axes = plt.subplots(3, 1, figsize=(8, 7), sharex=True)
    axes[0].plot(t, [s.rss_mib for s in samples], label="RSS")
    axes[0].plot(t, [s.hwm_mib for s in samples], label="peak RSS (VmHWM)", linestyle="--")
    axes[0].set_ylabel("MiB")
    axes[0].set_ylim(bottom=0)
    axes[1].plot(t, [s.fds for s in samples], label="open fds (not sockets)")
    axes[1].plot(t, [s.sockets for s in samples], label="sockets")
    axes[1].plot(t, [s.threads for s in samples], label="threads")
    axes[1].set_ylim(bottom=0)
    axes[2].plot(t, [s.produced for s in samples], label="files sent")
    axes[2].plot(t, [s.transferred for s in samples], label="files transferred")
    axes[2].set_ylabel("files")
    axes[2].set_xlabel("seconds since the processor started")
    for ax in axes:
        for a, b in verdict.thirds[::2]:
            ax.axvspan(a, b, color="0.9")
        ax.axvline(verdict.warmup_end, color="0.6", linewidth=0.8)
        ax.legend(loc="lower right", fontsize=8)
    axes[0].set_title(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return True


def test_soak(
    kafka_bootstrap: str,
    new_topic: Any,
    new_bucket: Any,
    s3_client: Any,
    tmp_path: Path,
) -> None:
    topic = new_topic(PARTITIONS, prefix="soak")
    bucket = new_bucket()
    group = f"soak-{uuid.uuid4().hex[:8]}"
    run_id = uuid.uuid4().hex[:6]
    src = tmp_path / "src"
    started_wall = datetime.datetime.now(datetime.UTC)
    load_before = os.getloadavg()

    run = ProcessorRun(bucket, topic, group, tmp_path / "out")
    t_start = time.monotonic()
    workload = Workload(src, topic, run_id)
    sampler = Sampler(run, workload, kafka_bootstrap, topic, group)
    sampler.t0 = t_start
    sampler.thread.start()

    def landed() -> dict[str, int]:
        prefix = f"{topic}/"
        return {k[len(prefix) :]: v for k, v in list_objects(s3_client, bucket).items()}

    def all_landed(n: int) -> bool:
        objects = landed()
        return all(objects.get(s.rel) == s.size for s in workload.sent[:n])

    # A primer file: the group has joined and the processor has moved a file.
    workload.send(0)
    run.wait_for(lambda: all_landed(1), 120, "the primer file")
    # The burst: as fast as possible, timed until every file is in the bucket.
    sampler.phase = "burst"
    t_burst = time.monotonic()
    for _ in range(BURST):
        workload.send(len(workload.sent))
    run.wait_for(lambda: all_landed(len(workload.sent)), 300, "the burst")
    burst_seconds = time.monotonic() - t_burst
    capacity = BURST / burst_seconds
    rate = float(RATE) if RATE else HEADROOM * capacity

    sampler.phase = "steady"
    steady_start = time.monotonic() - t_start
    deadline = t_start + SECONDS
    workload.start_steady(rate, deadline)
    assert workload.thread is not None
    while workload.thread.is_alive():
        workload.thread.join(1.0)
        if run.proc.poll() is not None:
            workload.stop.set()
            raise AssertionError(f"processor exited ({run.proc.returncode}):\n{run.stderr()}")
    if workload.error is not None:
        raise workload.error
    steady_end = time.monotonic() - t_start

    sampler.phase = "drain"
    n = len(workload.sent)
    run.wait_for(lambda: all_landed(n), max(180.0, SECONDS / 2), "every file in the bucket")
    drain_seconds = time.monotonic() - t_start - steady_end
    run.wait_for(lambda: sampler.lag() == 0, 60, "commits at the log end")
    final = sampler.finish()
    sampler.close()
    rc = run.quit()
    err = run.stderr()
    load_after = os.getloadavg()

    samples = sampler.samples
    verdict = judge(samples, steady_start, steady_end)
    mb = n * FILE_SIZE / 1e6
    summary: dict[str, Any] = {
        "started": started_wall.isoformat(timespec="seconds"),
        "seconds": SECONDS,
        "interval_s": INTERVAL,
        "files": n,
        "file_size": FILE_SIZE,
        "MB": round(mb, 1),
        "partitions": PARTITIONS,
        "burst_files": BURST,
        "burst_seconds": round(burst_seconds, 2),
        "capacity_files_per_s": round(capacity, 3),
        "rate_files_per_s": round(rate, 3),
        "rate_MBps": round(rate * FILE_SIZE / 1e6, 2),
        "rate_source": "S3TS_SOAK_RATE" if RATE else f"{HEADROOM} x burst",
        "producer_max_behind_s": round(workload.max_behind, 2),
        "steady_phase_s": [round(steady_start, 1), round(steady_end, 1)],
        "drain_seconds": round(drain_seconds, 2),
        "max_lag_msgs": max(s.lag for s in samples),
        "final_peak_rss_mib": final.hwm_mib,
        "load_average_before": [round(x, 2) for x in load_before],
        "load_average_after": [round(x, 2) for x in load_after],
        "exit_code": rc,
        "verdict": asdict(verdict),
    }
    print(json.dumps(summary, indent=1))
    print(table(samples))
    if OUT:
        out = Path(OUT)
        out.mkdir(parents=True, exist_ok=True)
        stem = out / f"soak-{SECONDS:.0f}s-{started_wall:%Y-%m-%d}"
        stem.with_suffix(".json").write_text(
            json.dumps({**summary, "samples": [asdict(s) for s in samples]}, indent=1) + "\n"
        )
        stem.with_suffix(".md").write_text(table(samples))
        title = (
            f"soak {SECONDS:.0f} s: {n} x 8 MiB files ({mb:.0f} MB) at {rate:.2f} files/s; "
            "shaded: first and last third"
        )
        plot(samples, verdict, stem.with_suffix(".png"), title)

    assert rc == 0, err[-3000:]
    # Every file in the bucket, each once, with its size; a sample byte for byte.
    objects = landed()
    assert {s.rel: s.size for s in workload.sent} == objects
    assert err.count("Transferred ") == n, "a file was transferred twice or not reported"
    assert not [line for line in err.splitlines() if "ERROR" in line], err[-3000:]
    rng = random.Random(SEED)
    for s in [workload.sent[0], workload.sent[-1], *rng.sample(workload.sent, min(N_VERIFY, n))]:
        assert read_object(s3_client, bucket, f"{topic}/{s.rel}") == file_bytes(s.i), s.rel
    assert not s3_client.list_multipart_uploads(Bucket=bucket).get("Uploads")
    assert final.lag == 0
    assert not verdict.problems, verdict.problems
