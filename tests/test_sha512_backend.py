"""The core's SHA-512 comes from the OpenSSL that ``hashlib`` loaded (rust/libcrypto.rs),
unless told to keep to ring; either way every digest is hashlib's."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys

import pytest
from s3transfer_stream import _core

PROBE = """
import hashlib, os, sys
from s3transfer_stream import _core
data = os.urandom(3 << 20)
h = _core.Sha512()
h.update(data[:777])
head = h.digest()
h.update(data[777:])
ok = (_core.sha512(data) == hashlib.sha512(data).digest() == h.digest()
      and head == hashlib.sha512(data[:777]).digest())
print(_core.sha512_backend(), ok)
"""


def run_probe(script: str, var: str, value: str | None) -> str:
    """What ``script`` prints in a fresh interpreter with ``var`` set to ``value``
    (unset for None): the core reads both variables once, at import."""
    env = {k: v for k, v in os.environ.items() if k != var}
    if value is not None:
        env[var] = value
    done = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def probe(value: str | None) -> str:
    return run_probe(PROBE, "S3TS_SHA512", value)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="found through /proc/self/maps")
def test_hashes_with_the_openssl_hashlib_loaded() -> None:
    out = probe(None)
    assert out.startswith("OpenSSL (") and "libcrypto" in out and out.endswith(" True"), out
    assert probe("openssl") == out


def test_s3ts_sha512_ring_keeps_to_ring_and_a_wrong_value_is_named() -> None:
    assert probe("ring") == "ring (S3TS_SHA512=ring) True"
    out = probe("fast")
    assert out.startswith('ring (S3TS_SHA512="fast" is neither "ring" nor "openssl")'), out
    assert out.endswith(" True"), out


def test_this_process_agrees_with_hashlib() -> None:
    data = os.urandom(1 << 20)
    assert _core.sha512(data) == hashlib.sha512(data).digest(), _core.sha512_backend()


LANES_PROBE = """
import hashlib, os
from s3transfer_stream import _core
# One file of 24 chunks: the chunk checks of a batch go through the lanes when
# there are any; every digest must still be hashlib's.
data = os.urandom(24 * 4096 + 77)
asm = _core.Assembler._with_tiny_parts(1 << 20)
msgs = []
for i in range(25):
    piece = data[i * 4096:(i + 1) * 4096]
    msgs.append((0, i, _core.encode_chunk(
        "f.bin", hashlib.sha512(data).digest(), hashlib.sha512(piece).digest(),
        i * 4096, i + 1, 25, "", "", piece)))
bad = bytearray(msgs[3][2]); bad[-12] ^= 1
events, _ = asm.add_messages(msgs[:7] + [(1, 0, bytes(bad))] + msgs[7:])
kinds = sorted(e.kind for e in events)
print(_core.sha512_lanes(), kinds)
"""


def avx512f() -> bool:
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as fh:
            return any(line.startswith("flags") and " avx512f" in line for line in fh)
    except OSError:
        return False


def lanes_probe(value: str | None) -> str:
    return run_probe(LANES_PROBE, "S3TS_SHA512_LANES", value)


def test_chunk_checks_use_the_lanes_where_the_cpu_has_them_and_the_override_keeps_to_one() -> None:
    """The same batch (a file of 25 chunks and a corrupted copy of one of them) gives the
    same events through the lanes and one by one: the corrupted copy of a chunk the file
    already holds is rejected, the file completes."""
    expected = "['complete', 'rejected', 'started']"
    on = lanes_probe(None)
    assert on == f"{8 if avx512f() else 1} {expected}", on
    assert lanes_probe("1") == f"1 {expected}"
