"""The built wheel installs into a fresh virtual environment beside boto3.

Our import package must not shadow ``s3transfer``, the AWS transfer manager that
boto3 itself imports: both must import side by side from the installed wheel.
"""

from __future__ import annotations

import subprocess
import sys
import venv
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.slow


def built_wheel(tmp_path: Path) -> Path:
    wheels = sorted((ROOT / "dist").glob("s3transfer_stream-*.whl"))
    if wheels:
        return wheels[-1]
    maturin = Path(sys.executable).with_name("maturin")
    subprocess.run(
        [str(maturin), "build", "--release", "-q", "-o", str(tmp_path)], cwd=ROOT, check=True
    )
    return next(tmp_path.glob("s3transfer_stream-*.whl"))


def test_wheel_installs_beside_boto3_and_its_s3transfer(tmp_path: Path) -> None:
    wheel = built_wheel(tmp_path)
    env_dir = tmp_path / "venv"
    venv.EnvBuilder(with_pip=True).create(env_dir)
    python = env_dir / "bin" / "python"
    subprocess.run(
        [str(python), "-m", "pip", "install", "-q", "--disable-pip-version-check", str(wheel)],
        check=True,
        timeout=600,
    )
    probe = (
        "import boto3, s3transfer, s3transfer_stream\n"
        "from s3transfer.manager import TransferManager\n"
        "from s3transfer_stream import _core\n"
        "import s3transfer_stream.processor, s3transfer_stream.cli.processor\n"
        "assert 'site-packages/s3transfer/' in s3transfer.__file__, s3transfer.__file__\n"
        "assert s3transfer_stream.__file__ != s3transfer.__file__\n"
        "print(_core.message_key('a/b', 'x.dat', 1, 2), boto3.__version__)\n"
    )
    out = subprocess.run([str(python), "-c", probe], check=True, capture_output=True, text=True)
    assert out.stdout.startswith("a_b_x.dat_chunk_1_of_2 ")
    for script in ("S3TransferStreamProcessor", "UploadDataFile", "DataFileUploadDirectory"):
        r = subprocess.run([str(env_dir / "bin" / script), "-h"], capture_output=True, text=True)
        assert r.returncode == 0 and "usage:" in r.stdout, (script, r.stderr)
    # The packaged configs travel in the wheel.
    cfg = subprocess.run(
        [
            str(python),
            "-c",
            "from s3transfer_stream.config import resolve_config_path as r; print(r('local'))",
        ],
        check=True,
        capture_output=True,
        text=True,
    )
    assert cfg.stdout.strip().endswith("s3transfer_stream/config_files/local.config")
