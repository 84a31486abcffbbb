"""Per-file cost of the stream processor's registry, without Kafka or S3.

What the processor does for every file it transfers: ``register_in_progress`` when its
first chunk arrives, ``register_processed`` when it is in the bucket (on the registry's
flush timer, started as the processor starts it). ``--files`` files are registered in a
fresh ``LOGS`` directory on the local disk (``--dir``, default a temporary directory:
fsyncs are real), split over ``--threads`` threads, as fast as possible or paced at
``--rate`` files/s (then the flush timer's writes fall inside the measured loop, as in
a long run of the processor), then the registry is closed (which writes what is
pending and consolidates the processed files).

Reported per round, and the median over ``--repeat`` rounds:

* files/s and CPU-seconds (``time.process_time``: every thread of the process, the
  flush timer included) of the registration loop, and CPU ms per file;
* CPU ms per file of the first and the last tenth of the files (a per-file cost that
  grows with the table shows up as last > first);
* what reached the kernel in the loop: bytes written (``wchar`` of ``/proc/self/io``),
  write system calls (``syscw``) and fsyncs (``os.fsync`` calls, counted);
* the time ``close()`` took.

No assertion on time: it measures and prints. Runs in seconds.

Run:     .venv/bin/python benches/registry.py [--files 2000] [--repeat 3] [--rate 0]
Compare: ``--src DIR`` imports ``s3transfer_stream`` from ``DIR`` instead of ``python/``,
         e.g. an older version:  git archive <commit> python | tar -x -C /tmp/old &&
         .venv/bin/python benches/registry.py --src /tmp/old/python
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent


def _io_counters() -> tuple[int, int]:
    """(bytes written, write syscalls) of this process so far (0, 0 where unknown)."""
    try:
        with open("/proc/self/io", encoding="ascii") as handle:
            values = dict(line.split(": ") for line in handle.read().splitlines())
        return int(values["wchar"]), int(values["syscw"])
    except (OSError, KeyError, ValueError):
        return 0, 0


class _FsyncCounter:
    """Wraps ``os.fsync`` to count calls (the registry calls it as ``os.fsync``)."""

    def __init__(self) -> None:
        self.count = 0
        self._lock = threading.Lock()
        self._real = os.fsync

    def __call__(self, fd: Any) -> None:
        with self._lock:
            self.count += 1
        self._real(fd)

    def __enter__(self) -> _FsyncCounter:
        os.fsync = self  # type: ignore[assignment]
        return self

    def __exit__(self, *exc: object) -> None:
        os.fsync = self._real


def one_round(
    registry_module: Any,
    logs: Path,
    n_files: int,
    n_threads: int,
    flush_interval: float,
    rate: float,
) -> dict[str, float]:
    registry = registry_module.StreamRegistry(logs, "bench", "grp", flush_interval=flush_interval)
    registry.start()
    tenth = max(1, n_files // 10)
    marks: dict[str, float] = {}
    per_thread = [list(range(t, n_files, n_threads)) for t in range(n_threads)]
    barrier = threading.Barrier(n_threads + 1)

    def work(indices: list[int]) -> None:
        barrier.wait()
        start = time.perf_counter()
        for i in indices:
            if rate > 0:  # file i is due at i / rate seconds
                delay = start + i / rate - time.perf_counter()
                if delay > 0:
                    time.sleep(delay)
            rel = f"run/d{i % 7}/file_{i:06d}.dat"
            if i == tenth and n_threads == 1:
                marks["first"] = time.process_time()
            if i == n_files - tenth and n_threads == 1:
                marks["last"] = time.process_time()
            registry.register_in_progress(rel, rel.rsplit("/", 1)[1], 3)
            registry.register_processed(rel, rel.rsplit("/", 1)[1], 3)

    threads = [threading.Thread(target=work, args=(ix,)) for ix in per_thread]
    for thread in threads:
        thread.start()
    with _FsyncCounter() as fsyncs:
        wchar0, syscw0 = _io_counters()
        cpu0, wall0 = time.process_time(), time.perf_counter()
        barrier.wait()
        for thread in threads:
            thread.join()
        cpu1, wall1 = time.process_time(), time.perf_counter()
        wchar1, syscw1 = _io_counters()
        n_fsync = fsyncs.count
        close0 = time.perf_counter()
        registry.close()
        close1 = time.perf_counter()
    rows = registry_module.read_table(registry_module.ProcessedRow, registry.paths.processed)
    if len(rows) != n_files:
        raise SystemExit(f"the processed file holds {len(rows)} rows, expected {n_files}")
    result = {
        "files_per_s": n_files / (wall1 - wall0),
        "cpu_s": cpu1 - cpu0,
        "cpu_ms_per_file": 1000 * (cpu1 - cpu0) / n_files,
        "bytes_written": wchar1 - wchar0,
        "write_syscalls": syscw1 - syscw0,
        "fsyncs": n_fsync,
        "close_s": close1 - close0,
    }
    if "first" in marks and "last" in marks:
        result["cpu_ms_per_file_first_tenth"] = 1000 * (marks["first"] - cpu0) / tenth
        result["cpu_ms_per_file_last_tenth"] = 1000 * (cpu1 - marks["last"]) / tenth
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--files", type=int, default=2000)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--flush_interval", type=float, default=5.0)
    parser.add_argument(
        "--rate",
        type=float,
        default=0.0,
        help="files per second to pace the registrations at (0: as fast as possible); "
        "a paced run includes the flush timer's writes as the processor sees them",
    )
    parser.add_argument("--dir", type=Path, default=None, help="where LOGS dirs are made")
    parser.add_argument("--src", type=Path, default=REPO / "python")
    parser.add_argument("--json", type=Path, default=None, help="also write results here")
    args = parser.parse_args()

    sys.path.insert(0, str(args.src.resolve()))
    from s3transfer_stream import registry as registry_module

    print(
        f"registry from {registry_module.__file__}; {args.files} files, {args.threads} "
        f"thread(s), flush_interval {args.flush_interval} s, "
        + (f"paced at {args.rate:g} files/s" if args.rate > 0 else "not paced"),
        flush=True,
    )
    base = Path(tempfile.mkdtemp(prefix="s3ts-bench-registry-", dir=args.dir))
    rounds = []
    try:
        for n in range(args.repeat):
            logs = base / f"round{n}" / "LOGS"
            r = one_round(
                registry_module, logs, args.files, args.threads, args.flush_interval, args.rate
            )
            rounds.append(r)
            print(
                f"round {n}: {r['files_per_s']:9.0f} files/s  {r['cpu_s']:6.3f} CPU-s  "
                f"{r['cpu_ms_per_file']:.3f} CPU-ms/file"
                + (
                    f" (first tenth {r['cpu_ms_per_file_first_tenth']:.3f}, "
                    f"last {r['cpu_ms_per_file_last_tenth']:.3f})"
                    if "cpu_ms_per_file_last_tenth" in r
                    else ""
                )
                + f"  {r['bytes_written'] / 1e6:8.2f} MB written in {r['write_syscalls']:.0f} "
                f"writes, {r['fsyncs']:.0f} fsyncs; close {r['close_s'] * 1000:.0f} ms",
                flush=True,
            )
    finally:
        shutil.rmtree(base, ignore_errors=True)
    median = {key: statistics.median(r[key] for r in rounds) for key in rounds[0]}
    print(
        f"median: {median['files_per_s']:.0f} files/s, {median['cpu_s']:.3f} CPU-s, "
        f"{median['cpu_ms_per_file']:.3f} CPU-ms/file, "
        f"{median['bytes_written'] / 1e6:.2f} MB written, {median['fsyncs']:.0f} fsyncs"
    )
    if args.json is not None:
        args.json.write_text(
            json.dumps(
                {"args": {k: str(v) for k, v in vars(args).items()}, "rounds": rounds}, indent=1
            )
            + "\n",
            encoding="utf-8",
        )


if __name__ == "__main__":
    main()
