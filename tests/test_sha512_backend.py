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


def probe(value: str | None) -> str:
    env = {k: v for k, v in os.environ.items() if k != "S3TS_SHA512"}
    if value is not None:
        env["S3TS_SHA512"] = value
    done = subprocess.run(
        [sys.executable, "-c", PROBE], env=env, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


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
