"""Progress people can see (issue 9, item 3).

UploadDataFile and DataFileUploadDirectory are run under a pseudo-terminal, the way
a person runs them, and the screen is read back: a bar with bytes, rate and ETA for
a big file, a live files line for the directory. Without a terminal the same runs
write plain lines only (no carriage return, no escape code). The processor's
``check`` lists files in progress with chunks and bytes received, and the held,
failed, waiting and abandoned files.
"""

from __future__ import annotations

import fcntl
import hashlib
import io
import logging
import os
import pty
import re
import select
import struct
import subprocess
import sys
import termios
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from helpers import CHUNK, ProcessorRun, encoded_chunks, list_objects, produce, write_tree
from s3transfer_stream import _core
from s3transfer_stream.progress import FileProgress, StatusLine, format_bytes

MiB = 1 << 20
#: Control characters a plain log must not contain (tab and newline are fine).
CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")
#: One frame of the tqdm bar: "name:  42%|████      | 451M/1.07G [00:01<00:02, 301MB/s]".
BAR = re.compile(
    r"(?P<name>\S+): +(?P<pct>\d+)%\|[^|]*\| (?P<done>[\d.]+[kMG]?)/(?P<total>[\d.]+[kMG]?) "
    r"\[(?P<elapsed>[\d:]+)<(?P<eta>[\d:]+|\?), (?P<rate>[\d.]+[kMG]?B/s|\?B/s)\]"
)


def _block_file(path: Path, size: int, seed: int = 0) -> None:
    """``size`` bytes: one random MiB repeated (quick to write, not compressible)."""
    block = hashlib.sha512(str(seed).encode()).digest() * (MiB // 64)
    with path.open("wb") as handle:
        left = size
        while left > 0:
            handle.write(block[: min(left, MiB)])
            left -= MiB


class Terminal:
    """A program on a pseudo-terminal of ``cols`` x ``rows``; ``output`` is what it drew."""

    def __init__(self, argv: list[str], *, cols: int = 110, rows: int = 40) -> None:
        master, slave = pty.openpty()
        fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))
        env = dict(os.environ, TERM="xterm-256color", COLUMNS=str(cols), LINES=str(rows))
        self.proc = subprocess.Popen(
            argv, stdin=slave, stdout=slave, stderr=slave, env=env, start_new_session=True
        )
        os.close(slave)
        self.master = master
        self.output = bytearray()

    def read(self, timeout: float) -> bool:
        """Reads what is drawn for up to ``timeout`` s; False once the program closed it."""
        ready, _, _ = select.select([self.master], [], [], timeout)
        if not ready:
            return True
        try:
            data = os.read(self.master, 1 << 16)
        except OSError:  # EIO: every writer of the terminal is gone
            return False
        self.output += data
        return bool(data)

    def type(self, text: str) -> None:
        os.write(self.master, text.encode())

    def wait_for(self, predicate: Callable[[str], bool], timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if predicate(self.text):
                return
            if not self.read(0.2) and predicate(self.text):
                return
        raise AssertionError(f"timed out waiting for {what}:\n{self.text[-3000:]!r}")

    def finish(self, timeout: float) -> int:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and self.read(0.5):
            pass
        try:
            return self.proc.wait(max(1.0, deadline - time.monotonic()))
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
            os.close(self.master)

    @property
    def text(self) -> str:
        return self.output.decode("utf-8", "replace")

    def frames(self) -> list[str]:
        """Every state a line of the screen was in before it was rewritten or ended."""
        out: list[str] = []
        for line in re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", self.text).split("\n"):
            out += [f.rstrip() for f in line.split("\r") if f.strip()]
        return out

    def screen(self, rows: int = 40) -> list[str]:
        """The lines on screen at the end: ``\\r`` returns to the start of the line
        (later text overwrites earlier text), ``\\n`` moves to the next line."""
        lines: list[list[str]] = [[]]
        col = 0
        text = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", self.text)
        for ch in text:
            if ch == "\n":
                lines.append([])
                col = 0
            elif ch == "\r":
                col = 0
            else:
                line = lines[-1]
                if col < len(line):
                    line[col] = ch
                else:
                    line.append(ch)
                col += 1
        shown = ["".join(line).rstrip() for line in lines]
        while shown and not shown[-1]:
            shown.pop()
        return shown[-rows:]


def _upload_file_argv(path: Path, topic: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "s3transfer_stream.cli.upload_file",
        str(path),
        "--topic_name",
        topic,
    ]


def _check_bar(term: Terminal, name: str, size: int) -> None:
    bars = [m for m in (BAR.search(f) for f in term.frames()) if m and m["name"] == name]
    assert len(bars) >= 3, term.frames()[-20:]
    percents = [int(m["pct"]) for m in bars]
    assert percents == sorted(percents), percents
    assert percents[0] == 0 and percents[-1] == 100, percents
    assert any(0 < p < 100 for p in percents), percents  # drawn while it was sent
    assert bars[-1]["done"] == bars[-1]["total"] == f"{size / 1e9:.2f}G", bars[-1].group(0)
    assert any(m["rate"] != "?B/s" and m["eta"] != "?" for m in bars), bars[-1].group(0)
    # The bar is gone at the end: the summary line is what stays on screen.
    screen = term.screen()
    assert screen[-1].startswith("[UploadDataFile ") and f"Sent {name} ({size} bytes" in screen[-1]
    assert not any(BAR.search(line) for line in screen), screen


@pytest.mark.integration
def test_upload_file_on_a_terminal_draws_a_progress_bar(
    new_topic: Callable[..., str], tmp_path: Path
) -> None:
    """The issue's case: a 1 GiB file sent from a terminal, the screen read back."""
    topic = new_topic(1)
    path = tmp_path / "one_gib.bin"
    size = 1 << 30
    _block_file(path, size, seed=3)
    try:
        term = Terminal(_upload_file_argv(path, topic))
        assert term.finish(300) == 0, term.text[-3000:]
    finally:
        path.unlink()
    assert "Reading one_gib.bin (1073741824 bytes) to compute its SHA-512" in term.text
    _check_bar(term, "one_gib.bin", size)
    assert any(BAR.search(f) and "/1.07G [" in f for f in term.frames())


@pytest.mark.integration
def test_upload_file_without_a_terminal_writes_plain_lines(
    new_topic: Callable[..., str], tmp_path: Path
) -> None:
    topic = new_topic(1)
    path = tmp_path / "big.bin"
    _block_file(path, 64 * MiB)
    done = subprocess.run(
        _upload_file_argv(path, topic),
        capture_output=True,
        timeout=120,
        env=dict(os.environ, TERM="xterm-256color"),
        stdin=subprocess.DEVNULL,
    )
    assert done.returncode == 0, done.stderr
    out = done.stdout.decode() + done.stderr.decode()
    assert "\r" not in out and "\x1b" not in out and not CONTROL.search(out), repr(out)
    assert f"Sent big.bin ({64 * MiB} bytes" in out
    assert not BAR.search(out)


def test_file_progress_logs_plain_lines_off_a_terminal() -> None:
    """Off a terminal a line with bytes, percentage, rate and time left is logged
    every ``log_seconds``; nothing is written to the stream itself."""
    stream = io.StringIO()
    log = logging.getLogger("test_progress.plain")
    records: list[str] = []
    handler = logging.Handler()
    handler.emit = lambda record: records.append(record.getMessage())  # type: ignore[method-assign]
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    try:
        progress = FileProgress(
            "f.bin", 10 * CHUNK + 7, 11, CHUNK, stream=stream, log=log, log_seconds=0.3
        )
        assert not progress.tty  # a StringIO is no terminal
        hook = progress.hook()
        with progress:
            for i in range(1, 6):
                hook(i, None)
            hook(6, object())  # a failed delivery counts for nothing
            time.sleep(1.0)
            for i in range(6, 12):
                hook(i, None)
            time.sleep(0.5)
    finally:
        log.removeHandler(handler)
    assert stream.getvalue() == ""
    assert records, "no progress line"
    first = records[0]
    assert first.startswith(
        f"Sending f.bin: {format_bytes(5 * CHUNK)} of {format_bytes(10 * CHUNK + 7)} (50%, 5 of 11 chunks) acknowledged, "
    )
    assert re.search(r"B/s, about (\d+ s|less than 1 s) left$", first), first
    assert progress.bytes_done == 10 * CHUNK + 7 and progress.chunks_done == 11
    assert not any(CONTROL.search(r) for r in records)


def test_status_line_off_a_terminal_logs_changes_only() -> None:
    counts = {"waiting": 2, "in_progress": 1, "uploaded": 0, "failed": 0, "bytes_delivered": 0}
    stream = io.StringIO()
    log = logging.getLogger("test_progress.status")
    records: list[str] = []
    handler = logging.Handler()
    handler.emit = lambda record: records.append(record.getMessage())  # type: ignore[method-assign]
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    try:
        with StatusLine(lambda: dict(counts), stream=stream, log=log, log_seconds=0.2):
            time.sleep(0.8)
            counts.update(waiting=0, in_progress=0, uploaded=3, bytes_delivered=2_500_000)
            time.sleep(0.8)
    finally:
        log.removeHandler(handler)
    assert stream.getvalue() == ""
    assert records == [
        "Files: 2 pending, 1 sending, 0 done | 0 B sent",
        "Files: 0 pending, 0 sending, 3 done | 2.5 MB sent",
    ]


@pytest.mark.integration
def test_directory_uploader_on_a_terminal_shows_a_live_files_line(
    new_topic: Callable[..., str], tmp_path: Path
) -> None:
    topic = new_topic(2)
    root = tmp_path / "watched"
    root.mkdir()
    for i in range(4):
        _block_file(root / f"f{i}.bin", 6 * MiB + i, seed=i)
    term = Terminal(
        [
            sys.executable,
            "-m",
            "s3transfer_stream.cli.upload_directory",
            str(root),
            "--topic_name",
            topic,
            "--upload_existing",
            "--watchdog_lag_time",
            "0.5",
            "--update_seconds",
            "-1",
        ]
    )
    try:
        term.wait_for(lambda t: t.count("Uploaded f") == 4, 60, "the four files")
        term.wait_for(lambda t: "0 pending, 0 sending, 4 done" in t, 10, "the files line")
        term.type("check\n")
        term.wait_for(lambda t: "Of the 4 file(s) found" in t, 10, "the check output")
        term.type("quit\n")
    finally:
        rc = term.finish(60)
    assert rc == 0, term.text[-3000:]
    lines = [f for f in term.frames() if f.startswith("files: ")]
    assert any(
        re.fullmatch(r"files: 0 pending, 0 sending, 4 done \| 25\.2 MB sent, [\d.]+ [kMG]?B/s", f)
        for f in lines
    ), lines[-5:]
    # Log lines print above the files line, whole: none is cut by it.
    for frame in term.frames():
        if "Uploaded f" in frame:
            assert re.fullmatch(
                r"\[DataFileUploadDirectory [\d: -]+\] Uploaded f\d\.bin \(\d+ bytes, \d+ chunk\(s\)\) to the \S+ topic",
                frame,
            ), frame
    # At the end the summary is the last line. (The files line typed "quit" on
    # stays above it: the terminal echoed what was typed and its Enter.)
    assert "Uploaded 4 file(s)" in term.screen()[-1]


@pytest.mark.integration
def test_directory_uploader_without_a_terminal_writes_no_control_characters(
    new_topic: Callable[..., str], tmp_path: Path
) -> None:
    topic = new_topic(1)
    root = tmp_path / "watched"
    root.mkdir()
    _block_file(root / "a.bin", 3 * MiB)
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "s3transfer_stream.cli.upload_directory",
            str(root),
            "--topic_name",
            topic,
            "--upload_existing",
            "--watchdog_lag_time",
            "0.5",
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=dict(os.environ, TERM="xterm-256color"),
    )
    try:
        log = root / "LOGS" / f"uploaded_to_{topic}.csv"
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not (log.exists() and "a.bin" in log.read_text()):
            time.sleep(0.2)
        out, err = proc.communicate(b"quit\n", timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    text = out.decode() + err.decode()
    assert proc.returncode == 0, text
    assert "Uploaded a.bin" in text
    assert "\r" not in text and "\x1b" not in text and not CONTROL.search(text), repr(text)


# --------------------------------------------------------------------------- check


def _mismatched_file(name: str, subdir: str, content: bytes) -> list[tuple[str, bytes]]:
    """Chunks each intact, of a file whose announced SHA-512 is not its own."""
    wrong = hashlib.sha512(b"another file").digest()
    pieces = [content[i : i + CHUNK] for i in range(0, len(content), CHUNK)]
    return [
        (
            _core.message_key(subdir, name, i + 1, len(pieces)),
            _core.encode_chunk(
                name,
                wrong,
                hashlib.sha512(p).digest(),
                i * CHUNK,
                i + 1,
                len(pieces),
                subdir,
                "",
                p,
                1.0,
            ),
        )
        for i, p in enumerate(pieces)
    ]


def _check_output(run: ProcessorRun, pattern: str, timeout: float, what: str) -> str:
    """Types ``check`` until what it printed matches ``pattern``; returns that output."""
    rx = re.compile(pattern)
    deadline = time.monotonic() + timeout
    while True:
        before = len(run.stderr())
        run.command("check")
        try:
            run.wait_for(lambda b=before: rx.search(run.stderr()[b:]) is not None, 3, what)
            return run.stderr()[before:]
        except AssertionError:
            if time.monotonic() > deadline:
                raise


@pytest.mark.integration
def test_check_lists_files_in_progress_and_the_held_failed_waiting_abandoned_files(
    kafka_bootstrap: str,
    new_topic: Callable[..., str],
    new_bucket: Callable[[], str],
    s3_client: Any,
    tmp_path: Path,
) -> None:
    """Two files of 14 chunks of which 12 are sent: the first 10 of each fill one
    5 MiB part (handed to S3), two chunks stay buffered. ``check`` shows both with
    their chunks and bytes received. Then the multipart upload of one is aborted
    behind the processor's back and its last chunks are sent: it is *held*. The
    other gets no more chunks: *waiting*, then, with newer messages behind it,
    *abandoned*. A file with a wrong hash is listed as *failed* throughout."""
    topic = new_topic(1)
    bucket = new_bucket()
    group = f"check-{uuid.uuid4().hex[:8]}"
    src = tmp_path / "src"
    seed = hashlib.sha512(b"seed").digest()
    size = 14 * CHUNK - 5
    write_tree(
        src,
        {
            "done/ok.dat": seed * 100,
            "big/held.bin": (seed * (14 * CHUNK // 64))[:size],
            "big/stuck.bin": (hashlib.sha512(b"other").digest() * (14 * CHUNK // 64))[:size],
        },
    )
    ok = encoded_chunks(src, "done/ok.dat")
    held = encoded_chunks(src, "big/held.bin")
    stuck = encoded_chunks(src, "big/stuck.bin")
    assert len(held) == len(stuck) == 14
    bad = _mismatched_file("mismatch.bin", "bad", seed * (CHUNK // 32))
    produce(kafka_bootstrap, topic, [(k, v, 0) for k, v in [*ok, *bad, *held[:12], *stuck[:12]]])
    run = ProcessorRun(
        bucket,
        topic,
        group,
        tmp_path / "out",
        "--part_size",
        "5",
        "--stall_report_seconds",
        "8",
        "--abandon_seconds",
        "14",
        "--abandon_offset_gap",
        "3",
    )
    try:
        run.wait_for(lambda: "Transferred done/ok.dat" in run.stderr(), 60, "the complete file")
        run.wait_for(lambda: "mismatch.bin" in run.stderr(), 60, "the mismatched file")
        first = _check_output(
            run,
            r"(?s)^(?=.*\tbig/held\.bin \(in progress: 12/14)(?=.*\tbig/stuck\.bin \(in progress: 12/14)",
            30,
            "both files read as far as they were sent",
        )
        assert "2 file(s) in progress:" in first
        for name in ("held", "stuck"):
            line = next(ln for ln in first.splitlines() if f"\tbig/{name}.bin (" in ln)
            assert re.search(
                rf"\(in progress: 12/14 chunks, about {12 * CHUNK} bytes received \(1 part\(s\) "
                rf"handed to S3, {2 * CHUNK} bytes buffered\), last chunk \d+ s ago; "
                rf"partitions \[0\]\)$",
                line,
            ), line
        assert "Held (0): none" in first
        assert "Failed (1): bad/mismatch.bin (registry: mismatched_hash)" in first
        assert "Waiting for chunks (0): none" in first
        assert "Abandoned (0): none" in first
        assert "\tdone/ok.dat (completed)" in first

        key = f"{topic}/big/held.bin"
        uploads = s3_client.list_multipart_uploads(Bucket=bucket).get("Uploads", [])
        (upload,) = [u for u in uploads if u["Key"] == key]
        s3_client.abort_multipart_upload(Bucket=bucket, Key=key, UploadId=upload["UploadId"])
        produce(kafka_bootstrap, topic, [(k, v, 0) for k, v in held[12:]])
        held_out = _check_output(run, r"Held \(1\)", 40, "the held list")
        assert re.search(r"Held \(1\): big/held\.bin \(.*NoSuchUpload", held_out), held_out
        assert re.search(r"\tbig/held\.bin \(held: ", held_out), held_out

        run.wait_for(lambda: "big/stuck.bin has 12 of 14 chunks" in run.stderr(), 30, "the stall")
        waiting = _check_output(run, r"Waiting for chunks \(1\)", 20, "the waiting list")
        assert "Waiting for chunks (1): big/stuck.bin (12/14 chunks)" in waiting, waiting
        assert re.search(r"\tbig/stuck\.bin \(waiting for chunks: 12/14 chunks, about", waiting)

        # Newer messages behind it while it gets nothing: it is given up.
        write_tree(src, {f"later/{i}.dat": seed * (i + 1) for i in range(4)})
        later = [kv for i in range(4) for kv in encoded_chunks(src, f"later/{i}.dat")]
        produce(kafka_bootstrap, topic, [(k, v, 0) for k, v in later])
        run.wait_for(lambda: "Giving up big/stuck.bin" in run.stderr(), 60, "the give-up")
        gone = _check_output(run, r"Abandoned \(1\)", 20, "the abandoned list")
        assert "Abandoned (1): big/stuck.bin (in this run)" in gone, gone
        assert "Waiting for chunks (0): none" in gone
        assert "Failed (1): bad/mismatch.bin (registry: mismatched_hash)" in gone
        assert re.search(r"Held \(1\): big/held\.bin", gone), gone
        assert "1 file(s) in progress:" in gone  # the held one
        assert run.quit() == 0
    finally:
        if run.proc.poll() is None:
            run.proc.kill()
    objects = list_objects(s3_client, bucket)
    assert f"{topic}/big/held.bin" not in objects and f"{topic}/big/stuck.bin" not in objects
    assert not CONTROL.search(run.stderr())
