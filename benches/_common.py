"""Shared helpers of the benchmark scripts (not a benchmark itself).

* :func:`load_service_env` puts the variables of ``services/env.sh`` into ``os.environ``.
* :func:`machine_info` / :func:`load_now`: what the numbers were measured on, and how busy
  the machine was.
* :class:`MeasuredProcess`: a program in a subprocess, its peak RSS (the kernel's high-water
  mark ``VmHWM`` of its address space, read every 50 ms, plus psutil RSS samples, children
  included) and CPU time (``wait4`` rusage).

  Not ``ru_maxrss``: for a child started with vfork (as ``subprocess`` does) or fork, Linux
  folds the high-water mark of the address space it had before ``exec`` -- the parent's --
  into the child's ``ru_maxrss``, so it reports at least the harness's own peak RSS.
* S3 helpers (bucket create / list / empty+delete) and the OpenMSIStream peer's paths and
  config file.
* Data sets: :class:`Group`, :func:`scaled`, :func:`make_dataset` (random files) and
  :func:`produce` (sent once to a topic by our producer).

Nothing here imports ``s3transfer_stream`` at module level: :func:`snapshot_package` must
put its copy first on ``sys.path`` before the package is imported in this process.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import platform
import random
import re
import shutil
import signal
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import psutil

REPO = Path(__file__).resolve().parent.parent
BENCHES = REPO / "benches"
RESULTS = BENCHES / "results"
MiB = 1 << 20
CHUNK_SIZE = 512 * 1024  # the producer's default chunk size (OpenMSIStream's too)


def _venv_bin() -> Path:
    """The bin directory of the venv running this script (where ``./run`` installed our
    console scripts, also with ``S3TS_VENV``); ``.venv/bin`` of the repository otherwise."""
    here = Path(sys.executable).parent
    return here if (here / "S3TransferStreamProcessor").exists() else REPO / ".venv" / "bin"


VENV_BIN = _venv_bin()


def package_dir() -> Path:
    """Where ``import s3transfer_stream`` finds the package, without importing it: the
    source directory ``python/s3transfer_stream`` for an editable install, the installed
    copy in site-packages for one from a wheel (as ``./run install`` does)."""
    import importlib.util

    spec = importlib.util.find_spec("s3transfer_stream")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit(
            "s3transfer_stream is not importable: run ./run install (or pip install -e .)"
        )
    return Path(next(iter(spec.submodule_search_locations))).resolve()


# OpenMSIStream's own local_broker_test_s3_transfer.config settings; the packaged copy
# of that file serves both programs.
OMS_CONFIG = (package_dir() / "config_files" / "local_broker_test_s3_transfer.config").read_text(
    encoding="utf-8"
)

SERVICE_VARS = (
    "LOCAL_KAFKA_BROKER_BOOTSTRAP_SERVERS",
    "ACCESS_KEY_ID",
    "SECRET_KEY_ID",
    "ENDPOINT_URL",
    "REGION",
)


def log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- environment


def load_service_env() -> None:
    """Sources ``services/env.sh`` (values already set win, as in the script itself)."""
    if all(os.environ.get(v) for v in SERVICE_VARS):
        return
    out = subprocess.run(
        ["bash", "-c", f'set -a; . "{REPO}/services/env.sh"; env -0'],
        check=True,
        capture_output=True,
    ).stdout
    for item in out.split(b"\0"):
        if b"=" in item:
            k, _, v = item.decode().partition("=")
            if k in SERVICE_VARS or k.startswith("S3TS_"):
                os.environ.setdefault(k, v)


def snapshot_package(work: Path) -> dict[str, Any]:
    """Copies the package that ``import s3transfer_stream`` would load (with its built
    extension ``_core``) to ``work`` and puts the copy first on ``sys.path`` and
    ``PYTHONPATH``, so that every program of one bench run uses the same code even while
    the work tree is being edited or the venv reinstalled. Call it before importing
    ``s3transfer_stream``.

    Editable install (``pip install -e .``, ``maturin develop``): the source directory
    ``python/s3transfer_stream`` with the ``_core*.so`` built into it. Installed from a
    wheel (``./run install``, ``./run test``): the installed package directory in
    site-packages, ``_core`` included; the work tree's ``python/`` then has no ``_core``
    and is not what runs. Returns what was measured: where it came from, the commit, the
    uncommitted files, a SHA-256 over the copied files and the extension's build time."""
    import hashlib

    src = package_dir()
    cores = sorted(src.glob("_core*.so")) + sorted(src.glob("_core*.pyd"))
    if not cores:
        raise SystemExit(
            f"{src} has no built extension (_core*.so): build it with `maturin develop "
            "--release` (editable) or `./run install` (wheel)"
        )
    editable = "site-packages" not in src.parts
    dest = work / "snapshot"
    shutil.copytree(src, dest / "s3transfer_stream", ignore=shutil.ignore_patterns("__pycache__"))
    h = hashlib.sha256()
    for f in sorted((dest / "s3transfer_stream").rglob("*")):
        if f.is_file():
            h.update(f.relative_to(dest).as_posix().encode())
            h.update(f.read_bytes())
    sys.path.insert(0, str(dest))
    os.environ["PYTHONPATH"] = str(dest) + (
        os.pathsep + os.environ["PYTHONPATH"] if os.environ.get("PYTHONPATH") else ""
    )
    core_mtime = cores[0].stat().st_mtime
    info: dict[str, Any] = {
        "sha256": h.hexdigest()[:16],
        "source": "editable work tree" if editable else "installed wheel",
        "package_dir": str(src),
        "core": cores[0].name,
        # Its build time when editable; when installed from a wheel, the install time.
        "core_mtime": dt.datetime.fromtimestamp(core_mtime)
        .astimezone()
        .isoformat(timespec="seconds"),
    }
    if not editable:
        with contextlib.suppress(Exception):
            from importlib.metadata import distribution

            url = json.loads(distribution("s3transfer-stream").read_text("direct_url.json") or "{}")
            info["installed_from"] = url.get("url", "")
    with contextlib.suppress(Exception):
        info["commit"] = subprocess.run(
            ["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        info["uncommitted"] = subprocess.run(
            ["git", "-C", str(REPO), "status", "--short", "--", "python", "rust"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.splitlines()
    newer = [
        str(f.relative_to(REPO))
        for f in sorted((REPO / "rust").rglob("*.rs"))
        if editable and f.stat().st_mtime > core_mtime
    ]
    if newer:
        info["rust_sources_newer_than_core"] = newer
        log(
            f"note: {len(newer)} Rust source(s) changed after {cores[0].name} was built "
            f"(e.g. {newer[0]}); the measured extension is the built one"
        )
    if not editable:
        info["note"] = (
            "installed from a wheel: the commit and uncommitted files are those of the work "
            "tree now, which may differ from what the wheel was built from"
        )
    # Fail now, not in the middle of a run, if the copy is not usable.
    check = subprocess.run(
        [
            sys.executable,
            "-c",
            "import s3transfer_stream, s3transfer_stream._core, s3transfer_stream.cli.processor;"
            "print(s3transfer_stream.__file__)",
        ],
        capture_output=True,
        text=True,
        env=os.environ,
    )
    if check.returncode != 0 or not check.stdout.startswith(str(dest)):
        raise SystemExit(f"the package snapshot does not import: {check.stderr or check.stdout}")
    log(f"measuring a snapshot of {src} ({info['source']}, {info['sha256']}) in {dest}")
    return info


def oms_python() -> Path:
    """The OpenMSIStream peer venv's python (installing it if needed)."""
    script = REPO / "services" / "openmsistream-peer.sh"
    res = subprocess.run(["bash", str(script), "path"], capture_output=True, text=True)
    if res.returncode != 0:
        subprocess.run(["bash", str(script), "install"], check=True)
        res = subprocess.run(["bash", str(script), "path"], capture_output=True, text=True)
    res.check_returncode()
    return Path(res.stdout.strip())


def oms_env() -> dict[str, str]:
    env = dict(os.environ)
    env.pop("OPENMSISTREAM_CONFIG_FILE_DIR", None)  # breaks its import (compat notes §7)
    env.pop("PYTHONPATH", None)  # our package snapshot is nothing of the peer's
    return env


def package_versions() -> dict[str, str]:
    from importlib.metadata import version

    out = {"python": platform.python_version()}
    for name in ("s3transfer-stream", "confluent-kafka", "boto3", "msgpack", "psutil"):
        with contextlib.suppress(Exception):
            out[name] = version(name)
    with contextlib.suppress(Exception):
        code = (
            "from importlib.metadata import version as v; import json; "
            "print(json.dumps({n: v(n) for n in ('openmsistream', 'confluent-kafka', 'boto3', 'msgpack')}))"
        )
        res = subprocess.run(
            [str(oms_python()), "-c", code],
            capture_output=True,
            text=True,
            env=oms_env(),
            check=True,
        )
        for k, v in json.loads(res.stdout).items():
            out[f"peer {k}"] = v
    return out


def machine_info() -> dict[str, Any]:
    model = "?"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    mem_kib = 0
    with contextlib.suppress(OSError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                mem_kib = int(line.split()[1])
    return {
        "nproc": len(os.sched_getaffinity(0)),
        "cpu_model": model,
        "mem_total_gib": round(mem_kib / (1 << 20), 1),
        "kernel": platform.release(),
        "hostname": platform.node(),
    }


def load_now() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def wait_for_low_load(max_load: float, max_wait: float) -> list[float]:
    """Waits (up to ``max_wait`` s) until the 1-minute load average is below ``max_load``."""
    deadline = time.monotonic() + max_wait
    first = True
    while True:
        load = load_now()
        if load[0] < max_load or time.monotonic() >= deadline:
            return load
        if first:
            log(f"load average {load} is above {max_load}; waiting up to {max_wait:.0f} s")
            first = False
        time.sleep(10)


def today() -> str:
    return dt.date.today().isoformat()


def now_iso() -> str:
    return dt.datetime.now().astimezone().isoformat(timespec="seconds")


def write_json(path: Path, data: Mapping[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2, sort_keys=False) + "\n")
    log(f"results written to {path.relative_to(REPO) if path.is_relative_to(REPO) else path}")


# --------------------------------------------------------------------------- processes


def smaps_summary(pid: int) -> dict[str, Any]:
    """Where a process's resident memory sits, from ``/proc/<pid>/smaps`` (MiB):
    file-backed (code, libraries), ``[heap]`` (glibc's main arena), ``[stack]``s, and
    anonymous mappings by size (glibc thread arenas are up to 64 MiB each; single large
    allocations above the mmap threshold get a mapping of their own)."""
    out = {"file": 0, "heap": 0, "stack": 0, "anon": 0, "anon_mappings": 0}
    buckets = {"<1MiB": 0, "1-9MiB": 0, "9-33MiB": 0, "33-64MiB": 0, ">=64MiB": 0}
    with open(f"/proc/{pid}/smaps") as f:
        name = ""
        size = 0
        for line in f:
            first = line.split(None, 1)[0]
            if "-" in first and not first.endswith(":"):
                parts = line.split()
                name = parts[5] if len(parts) > 5 else ""
                lo, hi = (int(x, 16) for x in first.split("-"))
                size = hi - lo
            elif first == "Rss:":
                rss = int(line.split()[1]) * 1024
                if name == "[heap]":
                    out["heap"] += rss
                elif name.startswith("[stack"):
                    out["stack"] += rss
                elif name.startswith("/") or (name and not name.startswith("[")):
                    out["file"] += rss
                elif rss:
                    out["anon"] += rss
                    out["anon_mappings"] += 1
                    if size < MiB:
                        buckets["<1MiB"] += rss
                    elif size < 9 * MiB:
                        buckets["1-9MiB"] += rss
                    elif size < 33 * MiB:
                        buckets["9-33MiB"] += rss
                    elif size < 64 * MiB:
                        buckets["33-64MiB"] += rss
                    else:
                        buckets[">=64MiB"] += rss
    res: dict[str, Any] = {
        k: (round(v / MiB, 1) if k != "anon_mappings" else v) for k, v in out.items()
    }
    res["anon_by_mapping_size"] = {k: round(v / MiB, 1) for k, v in buckets.items()}
    return res


def _vm_hwm(status: Path) -> int:
    """``VmHWM`` (bytes) from ``/proc/<pid>/status``; 0 once the process is gone."""
    try:
        for line in status.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError):
        pass
    return 0


def _tree_sample(proc: psutil.Process) -> tuple[int, float]:
    """RSS (bytes) and CPU (user+sys s) of ``proc`` and its live descendants."""
    rss = 0
    cpu = 0.0
    procs = [proc]
    with contextlib.suppress(psutil.Error):
        procs += proc.children(recursive=True)
    for p in procs:
        with contextlib.suppress(psutil.Error):
            rss += p.memory_info().rss
            t = p.cpu_times()
            cpu += t.user + t.system
    return rss, cpu


@dataclass
class ProcessResult:
    returncode: int | None
    wall_total: float
    peak_rss_hwm: int  # bytes, last VmHWM read of the process itself
    peak_rss_sampled: int  # bytes, max of 50 ms samples (process + children)
    cpu_total: float  # user+sys over the whole life (rusage)
    killed: str = ""  # "", "SIGTERM" or "SIGKILL" if it had to be stopped that way
    rss_series: list[tuple[float, int]] = field(default_factory=list)
    smaps_at_peak: dict[str, Any] = field(default_factory=dict)

    @property
    def peak_rss(self) -> int:
        return max(self.peak_rss_hwm, self.peak_rss_sampled)


class MeasuredProcess:
    """Starts ``argv`` with a stdin pipe and samples its memory every ``interval`` s."""

    def __init__(
        self,
        argv: list[str],
        *,
        env: Mapping[str, str],
        cwd: Path,
        log_path: Path,
        interval: float = 0.05,
        smaps: bool = False,
    ) -> None:
        self.argv = argv
        self.log_path = log_path
        self._log = open(log_path, "wb")
        self.t0 = time.monotonic()
        self.proc = subprocess.Popen(
            argv,
            stdin=subprocess.PIPE,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env=dict(env),
            cwd=cwd,
        )
        self.ps = psutil.Process(self.proc.pid)
        self.interval = interval
        self.peak_sampled = 0
        self.peak_hwm = 0
        self.last_cpu = 0.0
        self.series: list[tuple[float, int]] = []
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self.smaps = smaps
        self.smaps_at_peak: dict[str, Any] = {}
        self._smaps_rss = 0
        self._sampler = threading.Thread(target=self._sample, daemon=True)
        self._sampler.start()
        self.result: ProcessResult | None = None
        self._status: tuple[int, Any] | None = None
        self._exit_t = 0.0

    def _sample(self) -> None:
        next_keep = 0.0
        status = Path(f"/proc/{self.proc.pid}/status")
        while not self._stop.is_set():
            rss, cpu = _tree_sample(self.ps)
            hwm = _vm_hwm(status)
            t = time.monotonic() - self.t0
            with self._lock:
                self.peak_hwm = max(self.peak_hwm, hwm)
                if rss:
                    self.peak_sampled = max(self.peak_sampled, rss)
                    if cpu:
                        self.last_cpu = cpu
                    if t >= next_keep:  # keep a coarse series (every 0.5 s) for the JSON
                        self.series.append((round(t, 2), rss))
                        next_keep = t + 0.5
            if self.smaps and rss > self._smaps_rss + 4 * MiB:
                # A new peak: note where the memory sits (not on every sample: reading
                # smaps takes a few ms).
                with contextlib.suppress(OSError, ValueError):
                    summary = smaps_summary(self.proc.pid)
                    summary["t"] = round(t, 2)
                    summary["rss"] = round(rss / MiB, 1)
                    summary["threads"] = self.ps.num_threads()
                    self.smaps_at_peak = summary
                    self._smaps_rss = rss
            self._stop.wait(self.interval)

    def elapsed(self) -> float:
        return time.monotonic() - self.t0

    def cpu_now(self) -> float:
        """CPU seconds (user+sys) so far, process and children."""
        _, cpu = _tree_sample(self.ps)
        with self._lock:
            return cpu or self.last_cpu

    def rss_peak_so_far(self) -> int:
        with self._lock:
            return self.peak_sampled

    def _reap(self) -> bool:
        """Reaps the process if it exited (with ``wait4``, keeping its rusage)."""
        if self._status is None:
            pid, st, ru = os.wait4(self.proc.pid, os.WNOHANG)
            if pid:
                self._status = (st, ru)
                self._exit_t = self.elapsed()
        return self._status is not None

    def alive(self) -> bool:
        return not self._reap()

    def send(self, text: str) -> None:
        with contextlib.suppress(OSError, ValueError):
            assert self.proc.stdin is not None
            self.proc.stdin.write(text.encode())
            self.proc.stdin.flush()

    def wait(self, timeout: float, *, term_grace: float = 20.0) -> ProcessResult:
        """Waits for the exit (SIGTERM after ``timeout``, SIGKILL ``term_grace`` s later)
        and reaps the process with ``wait4`` (for its CPU time)."""
        if self.result is not None:
            return self.result
        killed = ""
        deadline = time.monotonic() + timeout
        while not self._reap():
            if time.monotonic() >= deadline:
                if not killed:
                    killed = "SIGTERM"
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(self.proc.pid, signal.SIGTERM)
                    deadline = time.monotonic() + term_grace
                elif killed == "SIGTERM":
                    killed = "SIGKILL"
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(self.proc.pid, signal.SIGKILL)
                    deadline = time.monotonic() + 3600
            time.sleep(0.05)
        wall = self._exit_t
        self._stop.set()
        self._sampler.join()
        assert self._status is not None
        st, ru = self._status
        rc = os.waitstatus_to_exitcode(st)
        self.proc.returncode = rc  # reaped by wait4; keep Popen from trying again
        with contextlib.suppress(OSError):
            if self.proc.stdin:
                self.proc.stdin.close()
        self._log.close()
        self.result = ProcessResult(
            returncode=rc,
            wall_total=wall,
            peak_rss_hwm=self.peak_hwm,
            peak_rss_sampled=self.peak_sampled,
            cpu_total=ru.ru_utime + ru.ru_stime,
            killed=killed,
            rss_series=list(self.series),
            smaps_at_peak=dict(self.smaps_at_peak),
        )
        return self.result


def scan_log(path: Path, limit: int = 8) -> dict[str, Any]:
    """Counts error/warning/traceback lines of a program's output and keeps the first few."""
    counts = {"error": 0, "warning": 0, "traceback": 0}
    examples: list[str] = []
    with contextlib.suppress(OSError):
        for line in path.read_text(errors="replace").splitlines():
            low = line.lower()
            kind = None
            if "traceback (most recent call last)" in low:
                kind = "traceback"
            elif "error" in low:
                kind = "error"
            elif "warning" in low:
                kind = "warning"
            if kind:
                counts[kind] += 1
                if len(examples) < limit:
                    examples.append(line.strip()[:300])
    return {**counts, "examples": examples}


# --------------------------------------------------------------------------- S3


def s3_settings() -> Any:
    """The ``[s3]`` settings of the ``local`` config (the services' S3 server)."""
    from s3transfer_stream.config import load_config

    cfg = load_config("local", require=("s3",))
    assert cfg.s3 is not None
    return cfg.s3


def s3_client(max_connections: int = 16) -> Any:
    """A client with our processor's settings (``s3transfer_stream.s3.make_client``)."""
    from s3transfer_stream.s3 import make_client

    return make_client(s3_settings(), max_connections=max_connections)


def list_sizes(client: Any, bucket: str, prefix: str = "") -> dict[str, int]:
    out: dict[str, int] = {}
    kwargs: dict[str, Any] = {"Bucket": bucket, "Prefix": prefix}
    while True:
        r = client.list_objects_v2(**kwargs)
        for o in r.get("Contents", []):
            out[o["Key"]] = int(o["Size"])
        if not r.get("IsTruncated"):
            return out
        kwargs["ContinuationToken"] = r["NextContinuationToken"]


def warm_bucket(client: Any, bucket: str) -> None:
    """PUTs and deletes one small object: SeaweedFS allocates a new bucket's volume on
    its first write (~0.2 s here), which should not be part of any measured run."""
    key = "bench-warm-up"
    client.put_object(Bucket=bucket, Key=key, Body=b"warm-up")
    client.delete_object(Bucket=bucket, Key=key)


def delete_bucket(client: Any, bucket: str) -> None:
    """Empties (objects and unfinished multipart uploads) and deletes ``bucket``."""
    try:
        keys = list(list_sizes(client, bucket))
    except Exception:
        return
    for i in range(0, len(keys), 1000):
        client.delete_objects(
            Bucket=bucket,
            Delete={"Objects": [{"Key": k} for k in keys[i : i + 1000]], "Quiet": True},
        )
    with contextlib.suppress(Exception):
        for u in client.list_multipart_uploads(Bucket=bucket).get("Uploads", []):
            client.abort_multipart_upload(Bucket=bucket, Key=u["Key"], UploadId=u["UploadId"])
    last: Exception | None = None
    for _ in range(10):
        try:
            client.delete_bucket(Bucket=bucket)
            return
        except Exception as err:
            last = err
            time.sleep(0.5)
    log(f"could not delete bucket {bucket}: {last}")


def read_object(client: Any, bucket: str, key: str) -> bytes:
    body = client.get_object(Bucket=bucket, Key=key)["Body"]
    try:
        return bytes(body.read())
    finally:
        body.close()


def fmt_table(headers: list[str], rows: Iterable[list[Any]]) -> str:
    """A GitHub-markdown table (also readable as plain text)."""
    rows = [[str(c) for c in r] for r in rows]
    widths = [
        max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(headers)
    ]
    line = "| " + " | ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)) + " |"
    sep = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
    body = [
        "| " + " | ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) + " |" for r in rows
    ]
    return "\n".join([line, sep, *body])


# --------------------------------------------------------------------------- machine CPU


def service_processes() -> dict[str, psutil.Process]:
    """The Kafka broker and the S3 server, from the pid files ``services/kafka.sh`` and
    ``services/seaweedfs.sh`` write (``$S3TS_STATE/kafka/kafka.pid``,
    ``$S3TS_STATE/seaweedfs/weed.pid``; ``bash services/all.sh status`` shows the same pids)."""
    state = Path(os.environ.get("S3TS_STATE", Path.home() / ".cache/s3transfer-stream/run"))
    out = {}
    for name, pid_file in (
        ("kafka", state / "kafka/kafka.pid"),
        ("s3", state / "seaweedfs/weed.pid"),
    ):
        with contextlib.suppress(OSError, ValueError, psutil.Error):
            out[name] = psutil.Process(int(pid_file.read_text().split()[0]))
    return out


class CpuMeter:
    """CPU seconds used by the whole machine and by the services between two points.

    A service that was restarted in between (another engineer's tests restart the broker
    now and then) has no meaningful figure: it is reported as ``None`` with
    ``<name>_restarted: True``, and such a run should be repeated."""

    def __init__(self) -> None:
        self.services = service_processes()
        self._t0 = time.monotonic()
        self._sys0 = psutil.cpu_times()
        self._svc0 = {n: self._cpu(p) for n, p in self.services.items()}

    @staticmethod
    def _cpu(p: psutil.Process) -> float | None:
        with contextlib.suppress(psutil.Error):
            if p.is_running():  # also false if the pid was reused
                t = p.cpu_times()
                return t.user + t.system
        return None

    def read(self) -> dict[str, Any]:
        wall = time.monotonic() - self._t0
        sys1 = psutil.cpu_times()
        busy = sum(sys1) - sys1.idle - getattr(sys1, "iowait", 0.0)
        busy0 = sum(self._sys0) - self._sys0.idle - getattr(self._sys0, "iowait", 0.0)
        ncpu = psutil.cpu_count() or 1
        out: dict[str, Any] = {
            "wall_s": round(wall, 3),
            "machine_cpu_busy_pct": round(100 * (busy - busy0) / (wall * ncpu), 1) if wall else 0.0,
        }
        for n in ("kafka", "s3"):
            p = self.services.get(n)
            c0 = self._svc0.get(n)
            c1 = self._cpu(p) if p is not None else None
            if c0 is None or c1 is None:
                out[f"{n}_cpu_s"] = None
                if p is not None:
                    out[f"{n}_restarted"] = True
            else:
                out[f"{n}_cpu_s"] = round(c1 - c0, 2)
        return out


# --------------------------------------------------------------------------- processor runs

#: Both processors log this INFO line once their consumer threads are started.
READY_LINE = b"Listening to the "
#: Seconds between reads of a processor's log until its READY_LINE.
READY_POLL = 0.02
#: How long to watch for it that closely.
READY_WAIT = 60.0


def processor_exe(program: str) -> Path:
    if program == "ours":
        return VENV_BIN / "S3TransferStreamProcessor"
    return oms_python().parent / "S3TransferStreamProcessor"


def processor_args(
    bucket: str, cfg: Path, topic: str, group: str, out: Path, n_threads: int
) -> list[str]:
    """The arguments (after the program) that every bench gives either processor; the
    names are OpenMSIStream's, which ours takes too."""
    return [
        bucket,
        *("--config", str(cfg)),
        *("--topic_name", topic),
        *("--consumer_group_id", group),
        *("--n_threads", str(n_threads)),
        *("--output_dir", str(out)),
    ]


#: Longest wait between two listings of the bucket while a processor runs.
MAX_POLL = 2.0

#: The INFO line ours logs once a file is in the bucket, validated and journaled.
TRANSFERRED_LINE = re.compile(rb"Transferred .* -> s3://([^/\s]+)/(\S+) \((\d+) bytes")
#: Seconds between reads of our log while waiting for its transfer lines.
LOG_POLL = 0.05


class TransferLines:
    """The keys ours has logged as transferred, read incrementally from its log.

    Waiting on these instead of listing the bucket spares the S3 server the
    listings (about 0.07-0.17 CPU-s each for 1000 keys on this machine, taken from
    the run it measures); one listing at the end confirms them. OpenMSIStream logs
    nothing per file at INFO, so its runs are still measured by listings."""

    def __init__(self, path: Path, bucket: str) -> None:
        self.path = path
        self.bucket = bucket.encode()
        self.sizes: dict[str, int] = {}
        self._offset = 0
        self._partial = b""

    def read(self) -> dict[str, int]:
        with contextlib.suppress(OSError), open(self.path, "rb") as fh:
            fh.seek(self._offset)
            data = fh.read()
            self._offset += len(data)
            *lines, self._partial = (self._partial + data).split(b"\n")
            for line in lines:
                m = TRANSFERRED_LINE.search(line)
                if m and m.group(1) == self.bucket:
                    self.sizes[m.group(2).decode()] = int(m.group(3))
        return self.sizes


def next_poll(poll: float, done: int, total: int, since_first: float) -> float:
    """Seconds until the next listing: ``poll`` near the end (and before the first
    object), else a quarter of the time the rate so far says is left, at most
    ``MAX_POLL``. A listing of a 1000-object bucket costs SeaweedFS about 60 ms of
    CPU (measured on this machine), which it takes from the processor it measures
    on two cores: listing every 0.25 s throughout cost the measured run more than
    a tenth of the machine, and nothing of the ceilings, which do not list."""
    if done <= 0 or since_first <= 0:
        return poll
    left = (total - done) / (done / since_first)
    return min(max(poll, left / 4), MAX_POLL)


def run_until_objects(
    program: str,
    argv: list[str],
    *,
    env: Mapping[str, str],
    cwd: Path,
    log_path: Path,
    client: Any,
    bucket: str,
    prefix: str,
    expected: Mapping[str, int],
    timeout: float,
    stop_timeout: float,
    poll: float = 0.25,
    smaps: bool = False,
) -> dict[str, Any]:
    """Starts a processor and measures it until every ``expected`` key is in
    ``bucket`` with its size (or ``timeout``); then sends it ``quit`` (``q`` for
    OpenMSIStream, whose console reads single characters) and reaps it. Ours is
    done when its log has named every key as transferred and one listing agrees
    (:class:`TransferLines`); OpenMSIStream when a listing shows them all."""
    load_before = load_now()
    meter = CpuMeter()
    machine: dict[str, float] = {}
    mp = MeasuredProcess(argv, env=env, cwd=cwd, log_path=log_path, smaps=smaps)
    t_ready = t_first = t_done = None
    cpu_done = None
    rss_ready = rss_done = None
    n_ok = 0
    status = "ok"
    deadline = time.monotonic() + timeout
    wait = poll
    listings = 0
    cpu_ready = None

    def ready() -> bool:
        """Records the time, CPU and RSS at the listening line the first time it is seen."""
        nonlocal t_ready, cpu_ready, rss_ready
        if t_ready is None and READY_LINE in log_path.read_bytes():
            t_ready, cpu_ready, rss_ready = mp.elapsed(), mp.cpu_now(), _tree_sample(mp.ps)[0]
        return t_ready is not None

    lines = TransferLines(log_path, bucket) if program != "theirs" else None
    log_done = False
    try:
        # Until the listening line, watch the log closely (reading it is cheap, a
        # listing is not): the CPU and RSS there are start-up's, not the transfers'.
        # A program that never prints it is measured by the listings alone.
        close_watch = min(deadline, time.monotonic() + READY_WAIT)
        while mp.alive() and time.monotonic() < close_watch and not ready():
            time.sleep(READY_POLL)
        while lines is not None:
            got = lines.read()
            if got and t_first is None:
                t_first = mp.elapsed()
            if all(got.get(k) == s for k, s in expected.items()):
                t_done, cpu_done, rss_done = mp.elapsed(), mp.cpu_now(), mp.rss_peak_so_far()
                machine = meter.read()
                log_done = True
                break
            if not mp.alive() or time.monotonic() >= deadline:
                break  # the listings below say how far it got
            time.sleep(LOG_POLL)
            ready()
        while True:
            if log_done:
                # One listing confirms what the log says; if it does not, the run is
                # measured by listings from here on, as OpenMSIStream's are.
                listed = list_sizes(client, bucket, prefix=prefix)
                listings += 1
                n_ok = sum(1 for k, s in expected.items() if listed.get(k) == s)
                if n_ok == len(expected):
                    break
                status = "the log named objects that the listing did not show"
                log_done = False
                t_done = cpu_done = rss_done = None
                machine = {}
                continue
            time.sleep(wait)
            ready()
            listed = list_sizes(client, bucket, prefix=prefix)
            listings += 1
            if listed and t_first is None:
                t_first = mp.elapsed()
            n_ok = sum(1 for k, s in expected.items() if listed.get(k) == s)
            wait = next_poll(poll, n_ok, len(expected), mp.elapsed() - (t_first or 0.0))
            if n_ok == len(expected):
                t_done = mp.elapsed()
                cpu_done = mp.cpu_now()
                rss_done = mp.rss_peak_so_far()
                machine = meter.read()
                break
            if not mp.alive():
                status = "exited early"
                break
            if time.monotonic() >= deadline:
                status = f"timeout after {timeout:.0f} s"
                break
    finally:
        mp.send("quit\n" if program == "ours" else "q\n")
        res = mp.wait(timeout=stop_timeout)
    total = sum(expected.values())

    def r3(x: float | None) -> float | None:
        return round(x, 3) if x is not None else None

    return {
        "program": program,
        "argv": [Path(argv[0]).name, *argv[1:]],
        "status": status,
        "objects_ok": n_ok,
        "objects_expected": len(expected),
        "bytes": total,
        "seconds_to_listening_line": r3(t_ready),
        "seconds_to_first_object": r3(t_first),
        "seconds_to_all_objects": r3(t_done),
        "listings": listings,
        "done_by": "log, confirmed by a listing" if log_done else "listings",
        "throughput_MBps": round(total / 1e6 / t_done, 2) if t_done else None,
        "files_per_s": round(len(expected) / t_done, 2) if t_done else None,
        "cpu_s_at_done": round(cpu_done, 2) if cpu_done is not None else None,
        # Start-up's share of cpu_s_at_done (imports, clients, the group join):
        # the same for 10 files or 10 million.
        "cpu_s_at_listening_line": round(cpu_ready, 2) if cpu_ready is not None else None,
        "cpu_s_total": round(res.cpu_total, 2),
        "peak_rss_MiB": round(res.peak_rss / MiB, 1),
        "peak_rss_hwm_MiB": round(res.peak_rss_hwm / MiB, 1),
        "peak_rss_sampled_MiB": round(res.peak_rss_sampled / MiB, 1),
        "rss_at_listening_line_MiB": round(rss_ready / MiB, 1) if rss_ready else None,
        "peak_rss_sampled_at_done_MiB": round(rss_done / MiB, 1) if rss_done else None,
        "process_seconds_total": round(res.wall_total, 2),
        "returncode": res.returncode,
        "killed": res.killed,
        "load_before": load_before,
        "load_after": load_now(),
        "until_done": machine,
        "log": scan_log(log_path),
        "log_tail": []
        if status == "ok" and res.returncode == 0
        else log_path.read_text(errors="replace").splitlines()[-30:],
        "smaps_at_peak_MiB": res.smaps_at_peak,
        "rss_series_MiB": [(t, round(r / MiB, 1)) for t, r in res.rss_series],
    }


def spread(values: Iterable[Any], digits: int = 2) -> dict[str, float] | None:
    """Median, min and max of the values that are not None (None if there are none)."""
    vals = [v for v in values if v is not None]
    if not vals:
        return None
    return {
        "median": round(statistics.median(vals), digits),
        "min": round(min(vals), digits),
        "max": round(max(vals), digits),
    }


def fmt_spread(s: dict[str, float] | None, digits: int = 1) -> str:
    """A :func:`spread` as ``median (min-max)``, or just the median when they agree."""
    if not s:
        return "-"
    m, lo, hi = (round(s[k], digits) for k in ("median", "min", "max"))
    return f"{m}" if lo == hi else f"{m} ({lo}-{hi})"


# --------------------------------------------------------------------------- data sets


@dataclass(frozen=True)
class Group:
    """``count`` files of ``min_size``-``max_size`` bytes (uniform) under ``name/``."""

    name: str
    count: int
    min_size: int
    max_size: int
    subdirs: int = 10


def scaled(groups: tuple[Group, ...], scale: float, part_size: int) -> list[Group]:
    """The groups of a workload at ``scale``: a group of 10 or more files keeps its sizes
    and gets ``scale`` times as many files (at least 1); a group of fewer files keeps its
    count and gets ``scale`` times the size, but at least two parts of ``part_size`` and
    1 MiB (so it stays a multipart upload)."""
    out = []
    for g in groups:
        if scale == 1.0:
            out.append(g)
        elif g.count >= 10:
            out.append(replace(g, count=max(1, round(g.count * scale))))
        else:
            floor = 2 * part_size + MiB
            lo = max(floor, round(g.min_size * scale))
            hi = max(lo, round(g.max_size * scale))
            out.append(replace(g, min_size=lo, max_size=hi))
    return out


def make_dataset(root: Path, groups: list[Group], seed: int) -> dict[str, int]:
    """Writes the files (random bytes); returns ``{relative posix path: size}``."""
    rng = random.Random(seed)
    files: dict[str, int] = {}
    for g in groups:
        for i in range(g.count):
            size = rng.randint(g.min_size, g.max_size)
            rel = f"{g.name}/d{i % g.subdirs:02d}/{g.name}_{i:04d}.dat"
            p = root / rel
            p.parent.mkdir(parents=True, exist_ok=True)
            with open(p, "wb") as f:
                left = size
                while left:
                    n = min(left, 16 * MiB)
                    f.write(os.urandom(n))
                    left -= n
            files[rel] = size
    return files


def produce(root: Path, files: dict[str, int], topic: str, partitions: int) -> float:
    """Produces every file once with our producer; returns the seconds it took."""
    from s3transfer_stream.config import load_config
    from s3transfer_stream.kafka import make_producer
    from s3transfer_stream.producer import send_file

    cfg = load_config("local", require=("producer",))
    producer = make_producer(cfg.producer)
    t0 = time.monotonic()
    results = []
    for rel in files:
        results.append(
            send_file(
                producer,
                topic,
                root / rel,
                root=root,
                chunk_size=CHUNK_SIZE,
                n_partitions=partitions,
                n_threads=2,
                wait=False,
            )
        )
    while any(r.n_outstanding for r in results):
        producer.flush(1.0)
    seconds = time.monotonic() - t0
    bad = [r for r in results if not r.complete]
    if bad:
        raise SystemExit(f"{len(bad)} file(s) were not fully delivered, e.g. {bad[0].errors}")
    return seconds
