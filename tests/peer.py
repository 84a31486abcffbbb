"""Helpers for interoperability tests against the OpenMSIStream peer.

The peer is OpenMSIStream 1.8.8 in its own venv (``services/openmsistream-peer.sh``),
so its console scripts do not clash with ours. Everything here runs the peer as a
separate program (its console scripts, or a short script run with its python) and
never imports it into our interpreter.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from confluent_kafka import Consumer, TopicPartition
from s3transfer_stream.config import PACKAGED_CONFIG_DIR

ROOT = Path(__file__).resolve().parents[1]
PEER_SCRIPT = ROOT / "services" / "openmsistream-peer.sh"
OUR_BIN = ROOT / ".venv" / "bin"

# OpenMSIStream's own local_broker_test_s3_transfer.config settings; the packaged copy
# of that file serves both programs.
PEER_CONFIG = (PACKAGED_CONFIG_DIR / "local_broker_test_s3_transfer.config").read_text(
    encoding="utf-8"
)


def install_peer() -> Path:
    """Installs the peer venv if needed (idempotent) and returns its python."""
    inst = subprocess.run(
        ["bash", str(PEER_SCRIPT), "install"], capture_output=True, text=True, env=peer_env()
    )
    if inst.returncode != 0:
        raise RuntimeError(f"cannot install the OpenMSIStream peer:\n{inst.stderr[-3000:]}")
    out = subprocess.run(
        ["bash", str(PEER_SCRIPT), "path"], capture_output=True, text=True, check=True
    )
    return Path(out.stdout.strip())


def peer_env() -> dict[str, str]:
    """Our environment without OPENMSISTREAM_CONFIG_FILE_DIR (it breaks the peer's import)."""
    env = os.environ.copy()
    env.pop("OPENMSISTREAM_CONFIG_FILE_DIR", None)
    env["PYTHONUNBUFFERED"] = "1"
    env.setdefault("PYTHONIOENCODING", "utf-8")
    return env


def write_peer_config(path: Path) -> Path:
    path.write_text(PEER_CONFIG, encoding="utf-8")
    return path


def tail(text: str, n: int = 4000) -> str:
    return text[-n:]


class Program:
    """A console program in a subprocess: stdin is a pipe for commands, stdout and
    stderr go to a file (OpenMSIStream logs to stderr, some lines to stdout)."""

    def __init__(
        self, name: str, argv: Sequence[str], log_dir: Path, cwd: Path | None = None
    ) -> None:
        self.name = name
        self.log_path = log_dir / f"{name}.out"
        self._out = open(self.log_path, "w", encoding="utf-8")
        self.started = time.monotonic()
        self.proc = subprocess.Popen(
            list(argv),
            stdin=subprocess.PIPE,
            stdout=self._out,
            stderr=subprocess.STDOUT,
            text=True,
            encoding="utf-8",
            env=peer_env(),
            cwd=cwd,
        )

    def output(self) -> str:
        return self.log_path.read_text(encoding="utf-8", errors="replace")

    def command(self, word: str) -> None:
        assert self.proc.stdin is not None
        try:
            self.proc.stdin.write(word + "\n")
            self.proc.stdin.flush()
        except BrokenPipeError:
            pass

    def wait_for(self, predicate: Callable[[], bool], timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while True:
            try:
                if predicate():
                    return
            except Exception as exc:  # a file being replaced, a bucket listing hiccup
                last = repr(exc)
            else:
                last = ""
            if self.proc.poll() is not None:
                raise AssertionError(
                    f"{self.name} exited early ({self.proc.returncode}) while waiting for "
                    f"{what}:\n{tail(self.output())}"
                )
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"timed out after {timeout:.0f} s waiting for {what} {last}; "
                    f"{self.name} output:\n{tail(self.output())}"
                )
            time.sleep(0.3)

    def quit(self, word: str = "q", timeout: float = 60) -> int:
        self.command(word)
        return self.wait(timeout)

    def wait(self, timeout: float = 60) -> int:
        try:
            rc = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)
            raise AssertionError(
                f"{self.name} did not stop within {timeout:.0f} s:\n{tail(self.output())}"
            ) from None
        finally:
            if self.proc.stdin is not None:
                try:
                    self.proc.stdin.close()
                except BrokenPipeError:
                    pass
            self._out.close()
        return rc

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        self._out.close()


def run_peer_script(python: Path, code: str, *args: str, timeout: float = 60) -> Any:
    """Runs ``code`` with the peer's python; the script prints one JSON document."""
    res = subprocess.run(
        [str(python), "-c", code, *args],
        capture_output=True,
        text=True,
        encoding="utf-8",
        env=peer_env(),
        timeout=timeout,
    )
    assert res.returncode == 0, f"peer script failed ({res.returncode}):\n{tail(res.stderr)}"
    return json.loads(res.stdout.strip().splitlines()[-1])


def key_partitions(bootstrap: str, topic: str, timeout: float = 30) -> list[tuple[str, int]]:
    """(key, partition) of every message now in ``topic``, read from the beginning."""
    consumer = Consumer(
        {"bootstrap.servers": bootstrap, "group.id": "interop-inspect", "enable.auto.commit": False}
    )
    try:
        meta = consumer.list_topics(topic, timeout=10)
        parts = sorted(meta.topics[topic].partitions)
        ends = {p: consumer.get_watermark_offsets(TopicPartition(topic, p), 10)[1] for p in parts}
        consumer.assign([TopicPartition(topic, p, 0) for p in parts])
        pos = dict.fromkeys(parts, 0)
        out: list[tuple[str, int]] = []
        deadline = time.monotonic() + timeout
        while any(pos[p] < ends[p] for p in parts):
            assert time.monotonic() < deadline, f"could not read {topic} to its end"
            msg = consumer.poll(0.5)
            if msg is None or msg.error():
                continue
            out.append((msg.key().decode("utf-8"), msg.partition()))
            pos[msg.partition()] = msg.offset() + 1
        return out
    finally:
        consumer.close()
