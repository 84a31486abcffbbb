"""A seeded, randomized fault matrix against the real Kafka broker and S3 server.

Phase 1 (file-affine, as our producers send): at least three processor processes with
``--n_threads 2`` share one consumer group on a 6-partition topic, all reaching S3
through one fault proxy. A producer thread streams files slowly and interleaved (many
files in progress at any moment): small ones, multipart ones (> ``--part_size`` 5 MiB),
files re-sent with new content at a smaller, larger or equal size (the last version
must be what lands) and duplicated chunks. Meanwhile the seed picks the order and the
timing of the faults: SIGKILL of a member (a replacement starts in its output dir, as a
restarted service would), a member joining mid-file, a member leaving cleanly, an S3
outage through the proxy (connections refused, requests hanging, HTTP 503) and a broker
restart (``services/kafka.sh stop`` / ``start``).

Phase 2 (OpenMSIStream-style): files whose chunks are spread over random partitions
are produced to the same topic while all members run; each member can see only some
chunks of most of them and reports them as waiting; then every member but one stops
(the documented mode: one process owns all partitions) and the survivor lands them,
through a short S3 blip; then three of them are re-sent (smaller, larger, equal).

At the end: every file's latest version is in the bucket byte for byte and nothing
else is; no multipart upload is open; the group's committed offsets are at the log end
of every partition; the processed registries of all members list every file instance.

Knobs (environment):

* ``S3TS_FAULT_SEED``: the seed (printed; random if unset);
* ``S3TS_FAULT_ROUNDS``: rounds of phase 1, each one a new batch of files and one of
  each fault in a seeded order (default 1: 80-120 s on the 2-core machine; 3 rounds
  with a 60 s outage each took 5.4 minutes);
* ``S3TS_FAULT_OUTAGE_SECONDS``: total S3 outage per round, split over the three kinds
  (default 18; set it to 60 or more for the long run the issue asks for: the three
  kinds follow each other, so S3 is unreachable for that long without a break);
* ``S3TS_FAULT_DEBUG=1``: the members log at DEBUG level (every poll batch and commit).
"""

from __future__ import annotations

import contextlib
import os
import random
import signal
import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import Producer
from helpers import (
    CHUNK,
    ProcessorRun,
    S3Proxy,
    committed_offsets,
    encoded_chunks,
    kafka_running,
    kafka_service,
    list_objects,
    log_ends,
    read_object,
)
from s3transfer_stream.kafka import file_partition
from s3transfer_stream.registry import InProgressRow, ProcessedRow, read_table

pytestmark = [pytest.mark.integration, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[1]
PARTITIONS = 6
MIB = 2**20
MEMBER_ARGS = (
    "--n_threads",
    "2",
    "--part_size",
    "5",
    "--stall_report_seconds",
    "5",
    "--shutdown_grace_seconds",
    "20",
)


def _env_number(name: str, default: float) -> float:
    value = os.environ.get(name, "").strip()
    return float(value) if value else default


# -- the files ------------------------------------------------------------------------------


@dataclass
class Version:
    """One version (file instance as produced) of a path."""

    rel: str
    number: int  # 1 for the first version of the path
    data: bytes
    mtime: float
    src: Path  # root directory the version's file was written under
    spread: bool  # chunks to random partitions (OpenMSIStream style) instead of file-affine

    @property
    def n_chunks(self) -> int:
        return max(1, -(-len(self.data) // CHUNK))


class Workload:
    """Every version produced, in order, and what the bucket must hold in the end."""

    def __init__(self, base: Path) -> None:
        self.base = base
        self.versions: list[Version] = []
        self.by_rel: dict[str, list[Version]] = {}

    def new(self, rel: str, data: bytes, spread: bool = False) -> Version:
        earlier = self.by_rel.setdefault(rel, [])
        number = len(earlier) + 1
        src = self.base / f"v{len(self.versions):04d}"
        path = src / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        # Each version is newer than the last, so OpenMSIStream's generation rule agrees
        # with the order of production wherever it applies (same chunk count).
        mtime = 1_700_000_000.0 + 10.0 * len(self.versions)
        os.utime(path, (mtime, mtime))
        v = Version(rel, number, data, mtime, src, spread)
        earlier.append(v)
        self.versions.append(v)
        return v

    def latest(self) -> dict[str, bytes]:
        return {rel: vs[-1].data for rel, vs in self.by_rel.items()}


def small_size(rng: random.Random) -> int:
    return rng.choice(
        [0, 1, 100, CHUNK - 1, CHUNK, CHUNK + 1, 2 * CHUNK]
        + [rng.randrange(1, 3 * CHUNK) for _ in range(3)]
    )


def resent_size(rng: random.Random, kind: str, size: int, first: bool) -> int:
    if kind == "smaller":
        return size // 3 if first else rng.randrange(0, size)
    if kind == "larger":
        # The first larger re-send crosses the part size: a single PUT becomes multipart.
        return rng.randrange(5 * MIB + 1, 7 * MIB) if first else size + rng.randrange(1, 2 * CHUNK)
    return size


def phase1_round(wl: Workload, rng: random.Random, rnd: int) -> list[Version]:
    """New files of one round, re-sends (of this round's and earlier files) and their order."""
    fresh: list[Version] = []
    for i in range(3 if rnd == 0 else 2):
        fresh.append(
            wl.new(f"r{rnd}/big/vol_{i}.bin", rng.randbytes(rng.randrange(6 * MIB, 12 * MIB)))
        )
    for i in range(36):
        fresh.append(wl.new(f"r{rnd}/d{i % 5}/f_{i:03d}.dat", rng.randbytes(small_size(rng))))
    order = list(fresh)
    rng.shuffle(order)
    affine = [rel for rel, vs in wl.by_rel.items() if not vs[0].spread]
    kinds = ["smaller", "larger", "equal"] + [
        rng.choice(["smaller", "larger", "equal"]) for _ in range(5)
    ]
    bigs = [rel for rel in affine if "/big/" in rel]
    smalls = [rel for rel in affine if "/big/" not in rel and len(wl.by_rel[rel][-1].data) > 0]
    picked: list[str] = []
    for n, kind in enumerate(kinds):
        if n == 0:
            rel = rng.choice(bigs)  # multipart -> single PUT
        elif n == 1:
            rel = rng.choice(smalls)  # single PUT -> multipart
        else:
            pool = [r for r in affine if len(wl.by_rel[r][-1].data) > 0 or kind == "larger"]
            rel = rng.choice(pool)
        again = [r for r in picked if len(wl.by_rel[r][-1].data) > 0]
        if n == len(kinds) - 1 and again:
            rel = rng.choice(again)  # one path gets a third (or later) version
        size = resent_size(rng, kind, len(wl.by_rel[rel][-1].data), n < 2)
        v = wl.new(rel, rng.randbytes(size))
        picked.append(rel)
        # Anywhere after the path's previous version in the stream.
        last = max((i for i, o in enumerate(order) if o.rel == rel), default=-1)
        order.insert(rng.randrange(last + 1, len(order) + 1), v)
    return order


# -- producing --------------------------------------------------------------------------------


class Emitter(threading.Thread):
    """Produces versions chunk by chunk, several files interleaved, paced over ``seconds``.

    Chunks of one version are produced in order; a path's next version starts only
    after its previous one was fully produced (idempotent producer: the broker keeps
    the order in each partition, even across a broker restart). Some chunks are
    produced twice, as a producer's retry does: the copy goes right after the original,
    to the same partition, before the file's last chunk (for file-affine files it
    therefore lies inside the file's span in its partition).
    """

    def __init__(
        self,
        bootstrap: str,
        topic: str,
        versions: list[Version],
        rng: random.Random,
        seconds: float,
        open_files: int = 6,
        dup_rate: float = 0.12,
    ) -> None:
        super().__init__(name="emitter", daemon=True)
        self.bootstrap, self.topic, self.versions = bootstrap, topic, list(versions)
        self.rng = random.Random(rng.random())
        self.seconds, self.open_files, self.dup_rate = seconds, open_files, dup_rate
        self.error: BaseException | None = None
        self.errors: list[str] = []
        self.sent = 0
        self.duplicates = 0
        self.in_progress: dict[str, tuple[int, int]] = {}  # rel -> (chunks sent, n_chunks)
        self.stop = threading.Event()

    def run(self) -> None:
        try:
            self._run()
        except BaseException as exc:  # reported by finish()
            self.error = exc

    def _run(self) -> None:
        p = Producer(
            {
                "bootstrap.servers": self.bootstrap,
                "enable.idempotence": True,
                "message.max.bytes": 67108864,
                "linger.ms": 5,
            }
        )

        def send(key: str, value: Any, partition: int) -> None:
            while True:
                try:
                    p.produce(
                        self.topic,
                        key=key,
                        value=value,
                        partition=partition,
                        on_delivery=lambda err, msg: self.errors.append(str(err)) if err else None,
                    )
                    break
                except BufferError:
                    p.poll(0.1)
            p.poll(0)
            self.sent += 1

        total = sum(v.n_chunks for v in self.versions)
        delay = self.seconds / max(1, total)
        pending = list(self.versions)
        opened: list[list[Any]] = []  # [version, chunks, next index, partition]
        while (pending or opened) and not self.stop.is_set():
            while len(opened) < self.open_files:
                busy = {o[0].rel for o in opened}
                nxt = next((v for v in pending if v.rel not in busy), None)
                if nxt is None:
                    break
                pending.remove(nxt)
                chunks = encoded_chunks(nxt.src, nxt.rel)
                if nxt.spread:  # OpenMSIStream style: any chunk to any partition
                    parts = [self.rng.randrange(PARTITIONS) for _ in chunks]
                else:
                    parts = [file_partition(nxt.rel, PARTITIONS)] * len(chunks)
                opened.append([nxt, chunks, 0, parts])
            st = self.rng.choice(opened)
            v, chunks, i, parts = st
            key, value = chunks[i]
            send(key, value, parts[i])
            st[2] = i = i + 1
            if 2 <= i < len(chunks) and self.rng.random() < self.dup_rate:
                # A producer's retry: the chunk just sent, again, to the same partition.
                send(key, value, parts[i - 1])
                self.duplicates += 1
            self.in_progress[v.rel] = (i, len(chunks))
            if i == len(chunks):
                opened.remove(st)
                del self.in_progress[v.rel]
            if delay > 0:
                self.stop.wait(delay)
        assert p.flush(240) == 0, "messages left unsent"

    def finish(self, timeout: float = 300) -> None:
        self.join(timeout)
        assert not self.is_alive(), "the producer thread did not finish"
        if self.error is not None:
            raise self.error
        assert not self.errors, self.errors


# -- the members --------------------------------------------------------------------------------


@dataclass
class Member:
    name: str
    out: Path
    run: ProcessorRun


@dataclass
class Group:
    bucket: str
    topic: str
    group: str
    base: Path
    env: dict[str, str]
    live: list[Member] = field(default_factory=list)
    runs: list[ProcessorRun] = field(default_factory=list)
    dirs: list[Path] = field(default_factory=list)
    starts: Counter[str] = field(default_factory=Counter)
    quits: list[tuple[str, int | None]] = field(default_factory=list)
    stopping: list[threading.Thread] = field(default_factory=list)

    def start(self, name: str) -> Member:
        out = self.base / name
        if out not in self.dirs:
            self.dirs.append(out)
        self.starts[name] += 1
        self.base.mkdir(parents=True, exist_ok=True)
        run = ProcessorRun(
            self.bucket,
            self.topic,
            self.group,
            out,
            *MEMBER_ARGS,
            *(("--logger_stream_level", "debug") if os.environ.get("S3TS_FAULT_DEBUG") else ()),
            env=self.env,
            tag=f"{name}-{self.starts[name]}",
        )
        m = Member(name, out, run)
        self.live.append(m)
        self.runs.append(run)
        return m

    def check_alive(self, note: Callable[[str], None] = print) -> None:
        for m in list(self.live):
            if m.run.proc.poll() is None:
                continue
            err = m.run.stderr()
            if m.run.proc.returncode == 2 and "cannot reach the Kafka broker" in err[-2000:]:
                # It started while the broker was away (a restart of ours, or of someone
                # else sharing the local broker) and gave up at once: restart it, as a
                # service manager would.
                self.live.remove(m)
                m.run.wait(10)
                retrying(kafka_running_or_raise, 120, "the broker to come back")
                self.start(m.name)
                note(f"{m.name} gave up at start (broker unreachable): restarted in its dir")
                continue
            raise AssertionError(
                f"member {m.name} exited ({m.run.proc.returncode}):\n{err[-4000:]}"
            )

    def kill(self, m: Member) -> None:
        self.live.remove(m)
        m.run.proc.send_signal(signal.SIGKILL)
        assert m.run.wait(30) == -signal.SIGKILL

    def quit_in_background(self, members: list[Member]) -> list[threading.Thread]:
        threads = []
        for m in members:
            self.live.remove(m)

            def stop(m: Member = m) -> None:
                try:
                    rc: int | None = m.run.quit(120)
                except Exception:
                    rc = None
                self.quits.append((m.name, rc))

            t = threading.Thread(target=stop, daemon=True)
            t.start()
            threads.append(t)
        self.stopping += threads
        return threads


def assigned(run: ProcessorRun) -> bool:
    err = run.stderr()
    return "starting from" in err or "resuming at" in err


# -- Kafka and S3 state -------------------------------------------------------------------------


def commits_at_log_end(bootstrap: str, topic: str, group: str) -> tuple[bool, str]:
    ends = log_ends(bootstrap, topic)
    got = committed_offsets(bootstrap, topic, group)
    committed = {p: got.get(p, 0) for p in range(PARTITIONS)}
    return committed == ends, f"committed {committed}, log end {ends}"


def bucket_matches(s3: Any, bucket: str, topic: str, latest: dict[str, bytes]) -> tuple[bool, str]:
    listed = list_objects(s3, bucket)
    expected = {f"{topic}/{rel}": len(data) for rel, data in latest.items()}
    if listed == expected:
        return True, ""
    missing = sorted(set(expected) - set(listed))
    extra = sorted(set(listed) - set(expected))
    sizes = sorted(k for k in set(expected) & set(listed) if expected[k] != listed[k])
    return (
        False,
        f"missing {missing[:10]} ({len(missing)}), unexpected {extra[:10]}, wrong size {sizes[:10]}",
    )


def wrong_contents(s3: Any, bucket: str, topic: str, wl: Workload) -> list[str]:
    out = []
    for rel, data in wl.latest().items():
        got = read_object(s3, bucket, f"{topic}/{rel}")
        if got != data:
            older = [v.number for v in wl.by_rel[rel][:-1] if v.data == got]
            out.append(
                f"{rel}: {len(got)} bytes, expected version {len(wl.by_rel[rel])} ({len(data)} bytes)"
                + (f"; it is the stale version {older}" if older else "")
            )
    return out


def open_uploads(s3: Any, bucket: str) -> list[dict[str, Any]]:
    uploads: list[dict[str, Any]] = []
    for page in s3.get_paginator("list_multipart_uploads").paginate(Bucket=bucket):
        uploads += page.get("Uploads", [])
    return uploads


# -- the test -------------------------------------------------------------------------------------


class Matrix:
    """Holds what the test did, for the report and for failure messages."""

    def __init__(self, seed: int, tmp: Path) -> None:
        self.seed = seed
        self.tmp = tmp
        self.t0 = time.monotonic()
        self.events: list[str] = []
        self.group: Group | None = None

    def note(self, what: str) -> None:
        line = f"[{time.monotonic() - self.t0:6.1f}s] {what}"
        self.events.append(line)
        print(line, flush=True)

    def context(self) -> str:
        runs = self.group.runs if self.group else []
        tails = "\n".join(
            f"--- {r.stderr_path} (last lines)\n" + "\n".join(r.stderr().splitlines()[-25:])
            for r in runs
        )
        return (
            f"\nseed {self.seed} (rerun with S3TS_FAULT_SEED={self.seed}); stderr files in {self.tmp}\n"
            + "\n".join(self.events)
            + "\n"
            + tails
        )

    def wait(self, pred: Callable[[], tuple[bool, str]], timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        last = ""
        while time.monotonic() < deadline:
            if self.group is not None:
                self.group.check_alive(self.note)
            try:
                ok, last = pred()
            except Exception as exc:  # the broker may still be coming back
                ok, last = False, f"{type(exc).__name__}: {exc}"
            if ok:
                return
            time.sleep(1)
        raise AssertionError(
            f"timed out ({timeout:.0f} s) waiting for {what}: {last}{self.status()}{self.context()}"
        )

    def status(self) -> str:
        """What each live member says to ``check`` (held, waiting, in-progress files)."""
        runs = [m.run for m in self.group.live] if self.group else []
        before = {id(r): len(r.stderr()) for r in runs}
        for r in runs:
            with contextlib.suppress(OSError):
                r.command("check")
        time.sleep(2)
        return "".join(
            f"\n--- check of {r.stderr_path.name}:\n{r.stderr()[before[id(r)] :][-3000:]}"
            for r in runs
        )


def retrying(fn: Callable[[], Any], timeout: float, what: str) -> Any:
    """``fn()``, tried again for ``timeout`` s (the broker may be just restarting)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return fn()
        except Exception as exc:
            if time.monotonic() > deadline:
                raise AssertionError(f"{what}: {exc}") from exc
            time.sleep(2)


def kafka_running_or_raise() -> bool:
    if not kafka_running():
        raise RuntimeError("the broker is not running")
    return True


def test_fault_matrix(
    tmp_path: Path, new_topic: Any, new_bucket: Any, s3_client: Any, kafka_bootstrap: str
) -> None:
    seed = int(os.environ.get("S3TS_FAULT_SEED") or random.SystemRandom().randrange(2**32))
    rounds = int(_env_number("S3TS_FAULT_ROUNDS", 1))
    outage_total = _env_number("S3TS_FAULT_OUTAGE_SECONDS", 18)
    mx = Matrix(seed, tmp_path)
    (tmp_path / "seed").write_text(f"{seed}\n")
    mx.note(
        f"fault matrix seed {seed} (S3TS_FAULT_SEED={seed}), {rounds} round(s), S3 outage {outage_total:.0f} s/round"
    )
    print(f"fault matrix seed {seed}", file=sys.__stderr__, flush=True)
    rng = random.Random(seed)

    topic = retrying(lambda: new_topic(partitions=PARTITIONS), 90, "creating the topic")
    bucket = new_bucket()
    group_id = f"faults-{uuid.uuid4().hex[:8]}"
    wl = Workload(tmp_path / "src")
    proxy = S3Proxy(int(os.environ["S3TS_S3_PORT"]))
    env = dict(os.environ, ENDPOINT_URL=proxy.url)
    g = Group(bucket, topic, group_id, tmp_path / "members", env)
    mx.group = g
    injected: Counter[str] = Counter()
    broker_stopped = False
    try:
        # ---------------------------------------------------------------- phase 1
        for i in range(3):
            g.start(f"m{i}")
        for m in g.live:
            m.run.wait_for(lambda m=m: assigned(m.run), 90, f"{m.name}'s assignment")
        mx.note(
            f"phase 1: {len(g.live)} members x 2 threads on {topic} ({PARTITIONS} partitions), S3 via {proxy.url}"
        )
        n_members = 3
        for rnd in range(rounds):
            order = phase1_round(wl, rng, rnd)
            plan = ["kill", "join", "outage", "broker"]
            rng.shuffle(plan)
            plan.insert(rng.randrange(plan.index("join") + 1, len(plan) + 1), "leave")
            gaps = [rng.uniform(3, 7) for _ in plan]
            seconds = sum(gaps) + outage_total + 15
            resent = [v for v in order if v.number > 1]
            mx.note(
                f"round {rnd}: {len(order)} versions ({len(resent)} re-sent: "
                + ", ".join(
                    f"{v.rel} v{v.number} {len(wl.by_rel[v.rel][v.number - 2].data)}->{len(v.data)} B"
                    for v in resent
                )
                + f"), {sum(len(v.data) for v in order) / MIB:.0f} MiB over {seconds:.0f} s; faults {plan}"
            )
            em = Emitter(kafka_bootstrap, topic, order, rng, seconds)
            em.start()
            for gap, fault in zip(gaps, plan, strict=True):
                time.sleep(gap)
                g.check_alive(mx.note)
                in_flight = ", ".join(
                    f"{rel} {a}/{b}" for rel, (a, b) in list(em.in_progress.items())[:6]
                )
                if fault == "kill":
                    victim = rng.choice(g.live)
                    g.kill(victim)
                    g.start(victim.name)
                    mx.note(
                        f"SIGKILL {victim.name}, replacement started in its dir (producing: {in_flight})"
                    )
                elif fault == "join":
                    m = g.start(f"m{n_members}")
                    n_members += 1
                    mx.note(f"{m.name} joins mid-file (producing: {in_flight})")
                elif fault == "leave":
                    m = rng.choice(g.live)
                    g.quit_in_background([m])
                    mx.note(f"{m.name} leaves (quit) mid-file (producing: {in_flight})")
                elif fault == "outage":
                    kinds = ["refuse", "stall", "status503"]
                    rng.shuffle(kinds)
                    shares = [rng.uniform(1, 2) for _ in kinds]
                    for kind, share in zip(kinds, shares, strict=True):
                        secs = outage_total * share / sum(shares)
                        before = dict(proxy.connections), dict(proxy.requests)
                        proxy.set_mode(kind)
                        time.sleep(secs)
                        hit = (
                            proxy.connections[kind] - before[0][kind],
                            proxy.requests[kind] - before[1][kind],
                        )
                        mx.note(
                            f"S3 {kind} for {secs:.1f} s: {hit[0]} connections, {hit[1]} requests hit it"
                        )
                    proxy.allow()
                elif fault == "broker":
                    broker_stopped = True
                    kafka_service("stop")
                    down = rng.uniform(1, 5)
                    time.sleep(down)
                    kafka_service("start")
                    broker_stopped = False
                    mx.note(f"broker stopped for {down:.1f} s (+ shutdown/startup), started again")
                injected[fault] += 1
            em.finish()
            mx.note(f"round {rnd}: produced {em.sent} messages ({em.duplicates} duplicate chunks)")
        mx.wait(
            lambda: bucket_matches(s3_client, bucket, topic, wl.latest()), 240, "phase 1's objects"
        )
        mx.wait(
            lambda: commits_at_log_end(kafka_bootstrap, topic, group_id), 120, "phase 1's commits"
        )
        wrong = wrong_contents(s3_client, bucket, topic, wl)
        assert not wrong, f"wrong or stale objects after phase 1: {wrong}{mx.context()}"
        mx.note(f"phase 1 landed: {len(wl.latest())} objects right, commits at the log end")

        # ---------------------------------------------------------------- phase 2
        spread_first: list[Version] = []
        for i in range(6):
            size = rng.randrange(CHUNK + 1, 8 * CHUNK) if i else rng.randrange(5 * MIB + 1, 7 * MIB)
            spread_first.append(wl.new(f"spread/s_{i}.bin", rng.randbytes(size), spread=True))
        order = list(spread_first)
        seen = {id(m): len(m.run.stderr()) for m in g.live}

        def split_reported() -> tuple[bool, str]:
            for m in g.live:
                for line in m.run.stderr()[seen.get(id(m), 0) :].splitlines():
                    if "spread/" in line and "another member of" in line:
                        return True, ""
            return False, "no report"

        em = Emitter(kafka_bootstrap, topic, order, rng, 2, open_files=3)
        em.start()
        em.finish()
        mx.note(
            f"phase 2: {len(order)} spread versions produced ({em.sent} messages) to {len(g.live)} members"
        )
        mx.wait(
            split_reported,
            90,
            "a member to report a file waiting for chunks another member owns",
        )
        survivor = rng.choice(g.live)
        others = [m for m in g.live if m is not survivor]
        mx.note(f"split files reported; stopping {[m.name for m in others]}, {survivor.name} stays")
        for t in g.quit_in_background(others):
            t.join(150)
        blip = rng.choice(["refuse", "status503", "stall"])
        proxy.set_mode(blip, times=rng.randint(2, 8))
        mx.note(f"S3 {blip} for the next few requests")
        injected[f"blip-{blip}"] += 1
        mx.wait(
            lambda: bucket_matches(s3_client, bucket, topic, wl.latest()), 180, "phase 2's objects"
        )
        proxy.allow()
        wrong = wrong_contents(s3_client, bucket, topic, wl)
        assert not wrong, f"wrong or stale objects after phase 2: {wrong}{mx.context()}"
        # Re-sends (smaller, larger, equal with new bytes), spread too, once the first
        # versions are in the bucket: a file re-sent after it was transferred is new,
        # whatever its size. (Versions of a spread file are not produced at the same
        # time: which one completes first depends on the order the partitions are read in,
        # and once one has completed the other is a new transfer, even the older one, as
        # the README says; so the older could end up as the object.)
        resent = []
        for kind, v in zip(
            ["smaller", "larger", "equal"], rng.sample(spread_first, 3), strict=True
        ):
            size = resent_size(rng, kind, len(v.data), False)
            resent.append(wl.new(v.rel, rng.randbytes(size), spread=True))
        em = Emitter(kafka_bootstrap, topic, resent, rng, 0)
        em.start()
        em.finish()
        mx.note(
            "re-sent after they landed: "
            + ", ".join(f"{v.rel} {len(wl.by_rel[v.rel][0].data)}->{len(v.data)} B" for v in resent)
        )
        mx.wait(
            lambda: bucket_matches(s3_client, bucket, topic, wl.latest()), 120, "the re-sent files"
        )
        mx.wait(
            lambda: commits_at_log_end(kafka_bootstrap, topic, group_id), 120, "the final commits"
        )
        assert survivor.run.quit(120) == 0, mx.context()
        g.live.remove(survivor)
        g.quits.append((survivor.name, 0))
        for t in g.stopping:
            t.join(150)

        # ---------------------------------------------------------------- the end state
        wrong = wrong_contents(s3_client, bucket, topic, wl)
        assert not wrong, f"wrong or stale objects: {wrong}{mx.context()}"
        ok, why = bucket_matches(s3_client, bucket, topic, wl.latest())
        assert ok, f"bucket: {why}{mx.context()}"
        assert open_uploads(s3_client, bucket) == [], mx.context()
        ok, why = commits_at_log_end(kafka_bootstrap, topic, group_id)
        assert ok, f"after the last member stopped: {why}{mx.context()}"
        assert all(rc == 0 for _, rc in g.quits), f"quits: {g.quits}{mx.context()}"

        # The registries. Every file instance must be listed at least once. Listed more
        # than once is allowed in phase 1, because a file done above its partition's
        # committed offset is known done only to its member until a commit carries it
        # (in the commit metadata): when that member is SIGKILLed, or loses the
        # partition while commits cannot be made (broker restart: no coordinator) or
        # while the file's upload is still in flight (S3 outage), the next owner reads
        # the file again and transfers the same instance again (same bytes, a second
        # row). The test prints these duplicates. In phase 2 every version must be
        # listed exactly once: only the survivor could complete the spread files, and
        # nobody was killed then.
        rows: Counter[str] = Counter()
        n_chunks: dict[str, set[int]] = {}
        bad_status = []
        for out in g.dirs:
            logs = out / "LOGS"
            for row in read_table(ProcessedRow, logs / f"processed_from_{topic}_by_{group_id}.csv"):
                rel = row.rel_filepath.as_posix()
                rows[rel] += 1
                n_chunks.setdefault(rel, set()).add(row.n_chunks)
            for ip in read_table(
                InProgressRow, logs / f"consuming_from_{topic}_by_{group_id}_in_progress.csv"
            ):
                if ip.status not in ("in_progress", "waiting_for_chunks"):
                    bad_status.append((out.name, ip.rel_filepath.as_posix(), ip.status))
        assert not bad_status, f"files failed or given up: {bad_status}{mx.context()}"
        unknown = sorted(set(rows) - set(wl.by_rel))
        assert not unknown, f"registry lists files never produced: {unknown}"
        missing, extra = [], []
        for rel, vs in wl.by_rel.items():
            if rows[rel] < len(vs):
                missing.append(f"{rel}: {rows[rel]} rows for {len(vs)} versions")
            if vs[0].spread and rows[rel] > len(vs):
                extra.append(f"{rel}: {rows[rel]} rows for {len(vs)} versions")
            wrong_n = n_chunks.get(rel, set()) - {v.n_chunks for v in vs}
            if wrong_n:
                missing.append(f"{rel}: rows with n_chunks {sorted(wrong_n)} that no version has")
        assert not missing, f"registry misses instances: {missing}{mx.context()}"
        assert not extra, f"spread file versions listed more than once: {extra}{mx.context()}"
        dups = {rel: n - len(wl.by_rel[rel]) for rel, n in rows.items() if n > len(wl.by_rel[rel])}
        affine_versions = sum(len(vs) for vs in wl.by_rel.values() if not vs[0].spread)
        affine_rows = sum(n for rel, n in rows.items() if not wl.by_rel[rel][0].spread)
        mx.note(
            f"done: {len(wl.by_rel)} paths, {len(wl.versions)} versions, {sum(rows.values())} registry rows "
            f"({affine_rows - affine_versions} duplicate transfers in phase 1: {dups}); "
            f"faults {dict(injected)}; "
            f"proxy connections {proxy.connections}, requests {proxy.requests}"
        )
    finally:
        proxy.close()
        if broker_stopped or not kafka_running():
            kafka_service("start")


# -- smaller tests of what the matrix found ---------------------------------------------------------


@pytest.mark.xfail(
    strict=False,
    reason="limitation found by the fault matrix (seed 6, phase 2 of an earlier version): a "
    "stray copy of a chunk of a version that was transferred before a newer version of the "
    "path finished starts a new instance that pins its partition until --abandon_seconds and "
    "--abandon_offset_gap are both reached (a stray copy of the latest version is an echo and "
    "pins nothing); a judgment call, since not pinning would let a crash lose a real re-send "
    "of the older bytes",
)
def test_a_stray_copy_of_an_older_version_does_not_hold_back_the_partition(
    tmp_path: Path, new_topic: Any, new_bucket: Any, s3_client: Any, kafka_bootstrap: str
) -> None:
    """v1 (2 chunks) and v2 (3 chunks) of one path are transferred; then a retried copy of
    v1's first chunk arrives (with chunks spread over partitions, a producer's retry of a
    chunk can be read after both versions completed). v2 must be the object, and the
    partition must be committed to its end."""
    topic = new_topic(partitions=1)
    bucket = new_bucket()
    group = f"stray-{uuid.uuid4().hex[:8]}"
    wl = Workload(tmp_path / "src")
    rng = random.Random(12)
    v1 = wl.new("s/file.bin", rng.randbytes(CHUNK + 10))
    v2 = wl.new("s/file.bin", rng.randbytes(2 * CHUNK + 10))
    c1 = encoded_chunks(v1.src, v1.rel)
    c2 = encoded_chunks(v2.src, v2.rel)
    p = Producer({"bootstrap.servers": kafka_bootstrap, "enable.idempotence": True})
    for key, value in [*c1, *c2, c1[0]]:
        p.produce(topic, key=key, value=value, partition=0)
    assert p.flush(60) == 0
    run = ProcessorRun(
        bucket, topic, group, tmp_path / "out", "--n_threads", "1", "--stall_report_seconds", "3"
    )
    key = f"{topic}/s/file.bin"
    run.wait_for(lambda: run.stderr().count("Transferred s/file.bin") >= 2, 60, "both transfers")
    assert read_object(s3_client, bucket, key) == v2.data
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if committed_offsets(kafka_bootstrap, topic, group).get(0) == 6:
            break
        time.sleep(0.5)
    committed = committed_offsets(kafka_bootstrap, topic, group)
    err = run.stderr()
    assert run.quit() == 0
    assert committed.get(0) == 6, f"committed {committed}, log end 6\n{err[-3000:]}"
