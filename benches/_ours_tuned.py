"""Our S3TransferStreamProcessor with knobs the command line does not expose, for the
memory investigation of ``rss_big_file.py --sweep`` (not a product entry point).

Environment:
  BENCH_BATCH_SIZE=N          messages per ``consumer.consume`` call (ProcessorOptions.batch_size)
  BENCH_MMAP_THRESHOLD=BYTES  ``mallopt(M_MMAP_THRESHOLD, BYTES)`` before anything starts: glibc
                              then serves every allocation of at least BYTES with its own
                              mmap, returned to the OS on free (a fixed threshold also turns
                              off glibc's dynamic threshold, which otherwise climbs to the
                              largest block freed, up to 32 MiB, so 8 MiB part buffers and
                              512 KiB message copies end up in arenas that rarely shrink).
  BENCH_ARENA_MAX=N           ``mallopt(M_ARENA_MAX, N)``
Arguments are those of S3TransferStreamProcessor.
"""

from __future__ import annotations

import ctypes
import os
import sys

M_MMAP_THRESHOLD = -3
M_ARENA_MAX = -8


def _mallopt(param: int, value: int) -> None:
    libc = ctypes.CDLL("libc.so.6")
    if libc.mallopt(param, value) != 1:
        print(f"mallopt({param}, {value}) failed", file=sys.stderr)


def main() -> int:
    if os.environ.get("BENCH_MMAP_THRESHOLD"):
        _mallopt(M_MMAP_THRESHOLD, int(os.environ["BENCH_MMAP_THRESHOLD"]))
    if os.environ.get("BENCH_ARENA_MAX"):
        _mallopt(M_ARENA_MAX, int(os.environ["BENCH_ARENA_MAX"]))
    from s3transfer_stream.cli import processor

    batch = os.environ.get("BENCH_BATCH_SIZE")
    if batch:
        original = processor.options_from_args

        def patched(args):  # type: ignore[no-untyped-def]
            options = original(args)
            options.batch_size = int(batch)
            return options

        processor.options_from_args = patched  # type: ignore[assignment]
    return processor.main()


if __name__ == "__main__":
    sys.exit(main())
