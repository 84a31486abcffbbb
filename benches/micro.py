"""Micro benchmarks of the Rust core through Python, side by side with the pure-Python path
OpenMSIStream 1.8.8 uses, in the same process, on the same bytes:

* SHA-512 of 512 KiB blocks: ours ``_core.sha512`` (``_core.sha512_backend()``: the OpenSSL
  ``hashlib`` loaded, or ``ring`` with ``S3TS_SHA512=ring``) vs ``hashlib.sha512``
  (OpenSSL): every path below hashes each byte two or three times, so this bounds them all;
* decode + verify of chunk messages (512 KiB of data each):
  ours ``_core.decode_chunk(value, verify=True)`` vs ``msgpack.unpackb(raw=True)`` + the
  field conversions of its ``DataFileChunkDeserializer`` + ``hashlib.sha512(data)`` compared
  with the chunk hash;
* reassembly of one file from its messages, fed in batches of 64, in order and shuffled:
  ours ``_core.Assembler.add_messages`` (decode, verify, copy into 8 MiB parts, file
  SHA-512, CRC64NVME; part buffers dropped as soon as they come out, as after an upload) vs
  the ``DownloadDataFileToMemory`` path (deserialize as above, duplicate check by a linear
  search of a list, dict offset -> bytes, then on the last chunk the file built with
  ``bytes +=`` in offset order and its SHA-512); also the same with ``b"".join`` instead of
  ``+=``, to separate the quadratic concatenation from the rest;
* reassembly of many one-chunk files of 256 KiB (``--small_files``, the ``small`` workload
  of ``benches/e2e.py``), fed in batches of 64: ours as above vs the same Python path with
  ``b"".join``, one file at a time;
* cutting a file into messages: ours ``_core.FileChunker`` (read + hash the file, then
  ``messages()`` in batches of 16) vs the ``UploadDataFile`` path (read in chunk-size
  pieces updating the file hash and one hash per chunk, then for each chunk: read it again,
  re-check its SHA-512, ``msgpack.packb`` the 10 fields).

Throughput is MB/s (10^6 bytes) of file data; each figure is the median of ``--repeat``
rounds, ours and Python alternating. Files are read from the page cache (written just
before). Results: ``benches/results/micro-<date>.json``.

Run:  .venv/bin/python benches/micro.py [--quick]
"""

from __future__ import annotations

import argparse
import hashlib
import os
import random
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgpack
from _common import (
    RESULTS,
    MiB,
    fmt_table,
    load_now,
    log,
    machine_info,
    now_iso,
    package_versions,
    snapshot_package,
    today,
    wait_for_low_load,
    write_json,
)

CHUNK = 524288
BATCH = 64


def write_file(path: Path, size: int) -> None:
    with open(path, "wb") as f:
        left = size
        while left:
            n = min(left, 64 * MiB)
            f.write(os.urandom(n))
            left -= n


def encoded_messages(path: Path) -> list[bytes]:
    from s3transfer_stream import _core

    ch = _core.FileChunker(str(path), CHUNK)
    out: list[bytes] = []
    for first in range(1, ch.n_chunks + 1, 16):
        out.extend(bytes(b) for b in ch.messages(first, 16, "sub/dir", path.name))
    return out


# --------------------------------------------------------------------------- the Python path


def py_deserialize(value: bytes) -> tuple[Any, ...]:
    """What OpenMSIStream's DataFileChunkDeserializer does with a message value."""
    fields = msgpack.unpackb(value, raw=True)
    if len(fields) not in (9, 10):
        raise ValueError("bad field count")
    filename = fields[0].decode()
    file_hash = fields[1]
    chunk_hash = fields[2]
    offset = int(fields[3])
    chunk_i = int(fields[4])
    n_total = int(fields[5])
    subdir = fields[6].decode()
    append = fields[7].decode()
    data = fields[8]
    mtime = float(fields[9]) if len(fields) == 10 else None
    if hashlib.sha512(data).digest() != chunk_hash:
        raise ValueError("chunk hash mismatch")
    return filename, file_hash, chunk_hash, offset, chunk_i, n_total, subdir, append, data, mtime


class PyMemoryFile:
    """The in-memory reassembly of OpenMSIStream's DownloadDataFileToMemory."""

    def __init__(self, join: bool) -> None:
        self.offsets: list[int] = []
        self.by_offset: dict[int, bytes] = {}
        self.expected_hash: bytes | None = None
        self.join = join

    def add(self, chunk: tuple[Any, ...]) -> int:
        _, file_hash, _, offset, _, n_total, _, _, data, _ = chunk
        if offset in self.offsets and (self.expected_hash in (None, file_hash)):
            return 10
        if self.expected_hash is None:
            self.expected_hash = file_hash
        self.by_offset[offset] = data
        self.offsets.append(offset)
        if len(self.offsets) == n_total:
            if self.join:
                content = b"".join(self.by_offset[o] for o in sorted(self.by_offset))
            else:
                content = b""
                for piece in [self.by_offset[o] for o in sorted(self.by_offset)]:
                    content += piece
            return 3 if hashlib.sha512(content).digest() == file_hash else -1
        return 2


def py_assemble(values: list[bytes], join: bool) -> None:
    f = PyMemoryFile(join)
    code = 0
    for v in values:
        code = f.add(py_deserialize(v))
    if code != 3:
        raise RuntimeError(f"python reassembly ended with code {code}")


def py_chunk_file(path: Path, subdir: str) -> int:
    """OpenMSIStream's UploadDataFile + DataFileChunkSerializer: returns bytes produced."""
    mtime = path.stat().st_mtime
    file_hash = hashlib.sha512()
    chunks: list[tuple[bytes, int, int]] = []
    with open(path, "rb") as f:
        offset = 0
        while True:
            data = f.read(CHUNK)
            if not data:
                break
            file_hash.update(data)
            chunks.append((hashlib.sha512(data).digest(), offset, len(data)))
            offset += len(data)
    digest = file_hash.digest()
    n = len(chunks)
    produced = 0
    for i, (chunk_hash, offset, size) in enumerate(chunks, start=1):
        with open(path, "rb") as f:
            f.seek(offset)
            data = f.read(size)
        if hashlib.sha512(data).digest() != chunk_hash:
            raise RuntimeError("file changed")
        value = msgpack.packb(
            [path.name, digest, chunk_hash, offset, i, n, subdir, "", data, mtime],
            use_bin_type=True,
        )
        produced += len(value)
    return produced


# --------------------------------------------------------------------------- ours


def ours_decode(values: list[bytes]) -> None:
    from s3transfer_stream import _core

    for v in values:
        _core.decode_chunk(v, verify=True)


def make_assembler() -> Any:
    from s3transfer_stream import _core

    try:
        return _core.Assembler(8 * MiB, 4096 * MiB)
    except TypeError:  # builds without the max_buffered argument
        return _core.Assembler(8 * MiB)


def ours_assemble(messages: list[tuple[int, int, bytes]]) -> None:
    asm = make_assembler()
    complete = False
    for i in range(0, len(messages), BATCH):
        events, _ = asm.add_messages(messages[i : i + BATCH])
        for ev in events:
            if ev.kind == "complete":
                complete = True
            elif ev.kind in ("failed", "rejected"):
                raise RuntimeError(f"assembler: {ev.kind} {ev.reason}")
        del events  # part buffers go here, as after their upload
    if not complete:
        raise RuntimeError("assembler did not complete the file")


def ours_assemble_many(messages: list[tuple[int, int, bytes]], n_files: int) -> None:
    """Many files, one chunk each, in batches of ``BATCH`` as the consumer reads them."""
    asm = make_assembler()
    complete = 0
    for i in range(0, len(messages), BATCH):
        events, _ = asm.add_messages(messages[i : i + BATCH])
        for ev in events:
            if ev.kind == "complete":
                complete += 1
            elif ev.kind in ("failed", "rejected"):
                raise RuntimeError(f"assembler: {ev.kind} {ev.reason}")
        del events
    if complete != n_files:
        raise RuntimeError(f"assembler completed {complete} of {n_files} files")


def ours_chunk_file(path: Path, subdir: str) -> int:
    from s3transfer_stream import _core

    ch = _core.FileChunker(str(path), CHUNK)
    produced = 0
    for first in range(1, ch.n_chunks + 1, 16):
        for b in ch.messages(first, 16, subdir, path.name):
            produced += len(b)
    return produced


# --------------------------------------------------------------------------- harness


def timed(fn: Callable[[], object]) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def compare(
    name: str,
    data_bytes: int,
    ours: Callable[[], object],
    python: dict[str, Callable[[], object]],
    repeat: int,
) -> dict[str, Any]:
    """Runs ``ours`` and each Python variant ``repeat`` times, alternating."""
    times: dict[str, list[float]] = {"ours": [], **{k: [] for k in python}}
    for _ in range(repeat):
        times["ours"].append(timed(ours))
        for k, fn in python.items():
            times[k].append(timed(fn))
    res: dict[str, Any] = {"benchmark": name, "data_bytes": data_bytes, "results": {}}
    for k, ts in times.items():
        med = statistics.median(ts)
        res["results"][k] = {
            "median_s": round(med, 4),
            "MBps": round(data_bytes / 1e6 / med, 1),
            "all_s": [round(t, 4) for t in ts],
        }
    ours_mbps = res["results"]["ours"]["MBps"]
    res["ratios"] = {f"ours / {k}": round(ours_mbps / res["results"][k]["MBps"], 2) for k in python}
    log(
        f"{name}: ours {ours_mbps} MB/s; "
        + "; ".join(f"{k} {res['results'][k]['MBps']} MB/s" for k in python)
    )
    return res


def bench_sha512(blocks: list[bytes], args: argparse.Namespace) -> dict[str, Any]:
    from s3transfer_stream import _core

    return compare(
        f"SHA-512 of {len(blocks)} blocks of 512 KiB (the primitive all paths hash with)",
        len(blocks) * CHUNK,
        lambda: [_core.sha512(b) for b in blocks],
        {"python hashlib.sha512 (OpenSSL)": lambda: [hashlib.sha512(b).digest() for b in blocks]},
        args.repeat,
    )


def bench_decode(values: list[bytes], args: argparse.Namespace) -> dict[str, Any]:
    return compare(
        f"decode+verify {len(values)} chunk messages of 512 KiB",
        args.decode_mib * MiB,
        lambda: ours_decode(values),
        {"python (msgpack + hashlib.sha512)": lambda: [py_deserialize(v) for v in values]},
        args.repeat,
    )


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--decode_mib", type=int, default=128, help="data decoded per round")
    ap.add_argument(
        "--assemble_mib",
        type=int,
        action="append",
        default=None,
        help="file sizes reassembled (repeatable; default 64 and 256)",
    )
    ap.add_argument(
        "--concat_max_mib",
        type=int,
        default=64,
        help="largest file for the quadratic 'bytes +=' path (it takes minutes at 1 GiB)",
    )
    ap.add_argument("--chunker_mib", type=int, default=256)
    ap.add_argument(
        "--small_files", type=int, default=1000, help="one-chunk files of 256 KiB reassembled"
    )
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--quick", action="store_true", help="small sizes, 1 round (a smoke test)")
    ap.add_argument("--max_load", type=float, default=1.0)
    ap.add_argument("--max_load_wait", type=float, default=120.0)
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("--no_save", action="store_true")
    ap.add_argument("--no_snapshot", action="store_true")
    args = ap.parse_args(argv)
    if args.assemble_mib is None:
        args.assemble_mib = [64, 256]
    if args.quick:
        args.decode_mib, args.assemble_mib, args.chunker_mib, args.repeat = 16, [16], 32, 1
        args.small_files = 64
        args.concat_max_mib = 16

    work = Path(tempfile.mkdtemp(prefix="s3ts-bench-micro-"))
    snapshot = snapshot_package(work) if not args.no_snapshot else {}
    started = now_iso()
    benches: list[dict[str, Any]] = []
    try:
        load_start = wait_for_low_load(args.max_load, args.max_load_wait)

        # the hash every path is built on
        blocks = [os.urandom(CHUNK) for _ in range(args.decode_mib * MiB // CHUNK)]
        benches.append(bench_sha512(blocks, args))
        del blocks

        # decode + verify
        path = work / "decode.dat"
        write_file(path, args.decode_mib * MiB)
        benches.append(bench_decode(encoded_messages(path), args))
        path.unlink()

        # reassembly
        for mib in args.assemble_mib:
            path = work / f"assemble_{mib}.dat"
            write_file(path, mib * MiB)
            values = encoded_messages(path)
            in_order = [(0, i, v) for i, v in enumerate(values)]
            shuffled = list(in_order)
            random.Random(mib).shuffle(shuffled)
            for label, msgs in (("in order", in_order), ("shuffled", shuffled)):
                vals = [v for _, _, v in msgs]
                python: dict[str, Callable[[], object]] = {
                    "python b''.join": lambda vals=vals: py_assemble(vals, join=True)
                }
                if mib <= args.concat_max_mib:
                    python["python bytes += (OpenMSIStream)"] = lambda vals=vals: py_assemble(
                        vals, join=False
                    )
                benches.append(
                    compare(
                        f"reassemble a {mib} MiB file ({len(msgs)} messages, {label})",
                        mib * MiB,
                        lambda msgs=msgs: ours_assemble(msgs),
                        python,
                        args.repeat,
                    )
                )
            del values, in_order, shuffled
            path.unlink()

        # many small files, one chunk each (the `small` workload of e2e.py)
        small: list[bytes] = []
        for k in range(args.small_files):
            path = work / f"small_{k:05d}.dat"
            write_file(path, 256 * 1024)
            small.extend(encoded_messages(path))
            path.unlink()
        small_msgs = [(0, i, v) for i, v in enumerate(small)]
        benches.append(
            compare(
                f"reassemble {args.small_files} one-chunk files of 256 KiB",
                args.small_files * 256 * 1024,
                lambda m=small_msgs: ours_assemble_many(m, args.small_files),
                {"python b''.join": lambda vals=small: [py_assemble([v], join=True) for v in vals]},
                args.repeat,
            )
        )
        del small, small_msgs

        # file chunker
        path = work / "chunker.dat"
        write_file(path, args.chunker_mib * MiB)
        benches.append(
            compare(
                f"cut a {args.chunker_mib} MiB file into chunk messages",
                args.chunker_mib * MiB,
                lambda: ours_chunk_file(path, "sub/dir"),
                {"python (hashlib + msgpack, re-read)": lambda: py_chunk_file(path, "sub/dir")},
                args.repeat,
            )
        )

        rows = []
        for b in benches:
            ours = b["results"]["ours"]["MBps"]
            for k, v in b["results"].items():
                if k == "ours":
                    continue
                rows.append([b["benchmark"], ours, k, v["MBps"], b["ratios"][f"ours / {k}"]])
        print()
        print(
            fmt_table(
                ["benchmark", "ours MB/s", "Python path", "Python MB/s", "ours / Python"], rows
            )
        )
        from s3transfer_stream import _core

        result = {
            "benchmark": "micro",
            "started": started,
            "finished": now_iso(),
            "command": "python "
            + " ".join(["benches/micro.py", *(argv if argv is not None else sys.argv[1:])]),
            "machine": machine_info(),
            "versions": package_versions(),
            "measured_package": snapshot,
            "sha512_backend": _core.sha512_backend(),
            "load_at_start": load_start,
            "load_at_end": load_now(),
            "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
            "benches": benches,
        }
        if not args.no_save:
            write_json(args.out or RESULTS / f"micro-{today()}.json", result)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
