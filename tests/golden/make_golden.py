"""Make the golden OpenMSIStream file-chunk messages in tests/golden/.

The messages are produced by OpenMSIStream's *own* code (its UploadDataFile
chunker, DataFileChunk.msg_key and DataFileChunkSerializer), so our wire codec can
be tested against the real bytes without a broker. This script must run with the
python of the OpenMSIStream peer venv, never with ours:

    bash services/openmsistream-peer.sh install
    "$(bash services/openmsistream-peer.sh path)" tests/golden/make_golden.py
    git diff --stat tests/golden/     # must be empty: the output is deterministic

What it does:
  * writes small source files into a temporary directory: fixed names, content
    from a seeded SHA-512 counter stream, mtimes pinned with os.utime;
  * chunks each one with UploadDataFile.add_chunks_to_upload (the same path as
    the UploadDataFile/DataFileUploadDirectory producers), and serializes the
    chosen chunks with DataFileChunkSerializer;
  * writes tests/golden/<name>.value.bin (the exact Kafka message value) and
    tests/golden/manifest.json (key and every decoded field of each message);
  * checks each message round-trips through OpenMSIStream's DataFileChunkDeserializer
    (equal to the produced chunk, same key, and re-serialised to the same bytes).

OpenMSIStream 1.8.8 always sends the 10-field form (a missing mtime goes out as
0.0), so the one 9-field message is *derived*: a 10-field golden message
re-packed without its last element (msgpack, use_bin_type=True), marked
"derived": true in the manifest.
"""

import hashlib
import json
import os
import pathlib
import sys
import tempfile
import unicodedata

# OpenMSIStream fails to import when this variable is set.
os.environ.pop("OPENMSISTREAM_CONFIG_FILE_DIR", None)

# pylint: disable=wrong-import-position
import msgpack
from importlib.metadata import version as dist_version
from openmsistream.data_file_io.entity.upload_data_file import UploadDataFile
from openmsistream.data_file_io.entity.download_data_file import DownloadDataFile
from openmsistream.kafka_wrapper.serialization import (
    DataFileChunkSerializer,
    DataFileChunkDeserializer,
)

EXPECTED_OMS_VERSION = "1.8.8"
OUT_DIR = pathlib.Path(__file__).resolve().parent

# Source files. relpath is relative to the upload root dir (its parent is the
# subdir_str); chunks lists the 1-based chunk indices to write as fixtures,
# each as (fixture name, chunk_i).
SOURCES = [
    {
        "id": "top_level",
        "relpath": "hello.txt",
        "size": 700,
        "chunk_size": 1024,
        "mtime_ns": 1_700_000_000_000_000_000,  # 1700000000.0
        "filename_append": None,
        "capture_mtime": True,
        "chunks": [("top_level_one_chunk", 1)],
        "covers": "top-level file (subdir \"\", key starts with \"_\"), one-chunk file, "
        "short fixstr filename, mtime with no fraction",
    },
    {
        "id": "nested",
        "relpath": "a/b/multi_chunk_nested_file_example.bin",
        "size": 2 * 1024 + 300,
        "chunk_size": 1024,
        "mtime_ns": 1_717_171_717_250_000_000,  # 1717171717.25
        "filename_append": None,
        "capture_mtime": True,
        "chunks": [("nested_first", 1), ("nested_middle", 2), ("nested_last", 3)],
        "covers": "nested subdir \"a/b\", first/middle/last chunk of a 3-chunk file "
        "(last chunk shorter), str8 filename (>= 32 bytes), bin16 data, uint16 offsets",
    },
    {
        "id": "append",
        "relpath": "runs/sample.csv",
        "size": 150,
        "chunk_size": 1024,
        "mtime_ns": 1_700_000_000_123_456_000,  # 1700000000.123456
        "filename_append": "_copy1",
        "capture_mtime": True,
        "chunks": [("filename_append", 1)],
        "covers": "non-empty filename_append (\"_copy1\", reconstructed as runs/sample_copy1.csv), "
        "bin8 data, mtime with a non-dyadic fraction",
    },
    {
        "id": "non_ascii",
        "relpath": unicodedata.normalize("NFC", "résumé_数据.dat"),
        "size": 128,
        "chunk_size": 64,
        "mtime_ns": 1_600_000_000_500_000_000,  # 1600000000.5
        "filename_append": None,
        "capture_mtime": True,
        "chunks": [("non_ascii_1_of_2", 1), ("non_ascii_2_of_2", 2)],
        "covers": "non-ASCII (NFC, UTF-8) top-level filename; file size an exact multiple "
        "of the chunk size (last chunk full length)",
    },
    {
        "id": "no_mtime",
        "relpath": "x/no_mtime.dat",
        "size": 10,
        "chunk_size": 1024,
        "mtime_ns": 1_700_000_000_000_000_000,
        "filename_append": None,
        "capture_mtime": False,
        "chunks": [("no_mtime", 1)],
        "covers": "chunk made with capture_mtime=False: still 10 fields, mtime sent as 0.0 "
        "and decoded as None",
    },
    {
        "id": "wide_ints",
        "relpath": "big/offsets.bin",
        "size": 70_000,
        "chunk_size": 512,
        "mtime_ns": 2_000_000_000_000_000_000,  # 2000000000.0
        "filename_append": None,
        "capture_mtime": True,
        "chunks": [("wide_ints_first", 1), ("wide_ints_last", 137)],
        "covers": "137-chunk file: chunk_i/n_total_chunks as uint8 (0xcc), last chunk offset "
        "69632 as uint32 (0xce), short last chunk",
    },
]

# The 9-field message: derived from this 10-field fixture.
NINE_FIELD_NAME = "nine_field_derived"
NINE_FIELD_FROM = "no_mtime"


def content_for(seed: str, size: int) -> bytes:
    """Deterministic pseudo-random bytes: SHA-512(seed || counter) blocks."""
    out = bytearray()
    counter = 0
    while len(out) < size:
        out += hashlib.sha512(f"{seed}\x00{counter}".encode()).digest()
        counter += 1
    return bytes(out[:size])


def decoded_fields(dfc, raw_list):
    """Every field of a decoded DataFileChunk, JSON-friendly."""
    return {
        "filename": dfc.filename,
        "file_hash": dfc.file_hash.hex(),
        "chunk_hash": dfc.chunk_hash.hex(),
        "chunk_offset_write": dfc.chunk_offset_write,
        "chunk_i": dfc.chunk_i,
        "n_total_chunks": dfc.n_total_chunks,
        "subdir_str": dfc.subdir_str,
        "filename_append": dfc.filename_append,
        "data": dfc.data.hex(),
        "file_mtime": dfc.file_mtime,
        "n_fields": len(raw_list),
        "wire_file_mtime": raw_list[9] if len(raw_list) > 9 else None,
    }


def main():
    oms_version = dist_version("openmsistream")
    if oms_version != EXPECTED_OMS_VERSION:
        sys.exit(f"expected openmsistream {EXPECTED_OMS_VERSION}, found {oms_version}")
    if sys.getfilesystemencoding().lower().replace("-", "") != "utf8":
        sys.exit("needs a UTF-8 filesystem encoding (non-ASCII filenames)")

    serializer = DataFileChunkSerializer()
    deserializer = DataFileChunkDeserializer()
    messages = []
    sources = []
    values = {}

    with tempfile.TemporaryDirectory(prefix="s3ts-golden-") as tmp:
        root = pathlib.Path(tmp) / "upload_root"
        root.mkdir()
        for src in SOURCES:
            path = root / src["relpath"]
            path.parent.mkdir(parents=True, exist_ok=True)
            content = content_for(src["id"], src["size"])
            path.write_bytes(content)
            os.utime(path, ns=(src["mtime_ns"], src["mtime_ns"]))
            stat = path.stat()
            if stat.st_mtime_ns != src["mtime_ns"]:
                sys.exit(f"filesystem did not keep the pinned mtime of {path}: {stat.st_mtime_ns}")
            mtime = stat.st_mtime  # what OpenMSIStream reads (float from sec + nsec)
            file_sha512 = hashlib.sha512(content).hexdigest()

            # OpenMSIStream's own chunker (what its producers use).
            udf = UploadDataFile(path, rootdir=root, filename_append=src["filename_append"])
            udf.add_chunks_to_upload(chunk_size=src["chunk_size"], capture_mtime=src["capture_mtime"])
            chunks = list(udf.chunks_to_upload)
            n_total = len(chunks)
            sources.append(
                {
                    "id": src["id"],
                    "relpath": src["relpath"],
                    "size": len(content),
                    "sha512": file_sha512,
                    "chunk_size": src["chunk_size"],
                    "n_total_chunks": n_total,
                    "st_mtime": mtime,
                    "capture_mtime": src["capture_mtime"],
                    "filename_append": src["filename_append"] or "",
                    "covers": src["covers"],
                }
            )
            by_index = {c.chunk_i: c for c in chunks}
            for name, chunk_i in src["chunks"]:
                chunk = by_index[chunk_i]
                key = chunk.msg_key
                value = serializer(chunk)  # also reads the chunk's data from the file
                raw_list = msgpack.unpackb(value, raw=False)

                # Round trip through OpenMSIStream's deserializer.
                back = deserializer(value)
                rt_equal = back == chunk
                rt_key = back.msg_key == key
                rt_bytes = serializer(back) == value
                if not (rt_equal and rt_key and rt_bytes):
                    sys.exit(f"{name}: round trip failed ({rt_equal=}, {rt_key=}, {rt_bytes=})")
                if back.file_hash.hex() != file_sha512:
                    sys.exit(f"{name}: file_hash is not the SHA-512 of the source file")

                values[name] = value
                messages.append(
                    {
                        "name": name,
                        "source": src["id"],
                        "derived": False,
                        "key": key,
                        **decoded_fields(back, raw_list),
                        "file_size": len(content),
                        "file_sha512": file_sha512,
                        "reconstructed_relpath": DownloadDataFile.get_full_filepath(back).as_posix(),
                        "value_size": len(value),
                        "round_trip": {
                            "deserializer": "openmsistream DataFileChunkDeserializer",
                            "equal_to_produced_chunk": rt_equal,
                            "same_msg_key": rt_key,
                            "reserialized_identical": rt_bytes,
                        },
                    }
                )

    # The 9-field form: 1.8.8's serializer cannot make it (it always appends
    # file_mtime, as 0.0 when unknown), so re-pack a 10-field golden message
    # without its last element.
    src_msg = next(m for m in messages if m["name"] == NINE_FIELD_FROM)
    src_value = values[NINE_FIELD_FROM]
    # raw=False keeps str as str and bin as bytes (raw=True would turn the str
    # fields into bytes, and re-packing would then emit them as bin).
    ten = msgpack.unpackb(src_value, raw=False)
    nine_value = msgpack.packb(ten[:9], use_bin_type=True)
    # Same bytes as the 10-field message, with array header 0x99 and no trailing float64.
    assert src_value[0] == 0x9A and src_value[-9] == 0xCB
    assert nine_value == b"\x99" + src_value[1:-9]
    back = deserializer(nine_value)
    rt_nine_fields_none = back.file_mtime is None
    reser = serializer(back)
    values[NINE_FIELD_NAME] = nine_value
    messages.append(
        {
            "name": NINE_FIELD_NAME,
            "source": src_msg["source"],
            "derived": True,
            "derived_from": NINE_FIELD_FROM,
            "derivation": "msgpack.packb(msgpack.unpackb(<derived_from>, raw=False)[:9], use_bin_type=True)",
            "key": back.msg_key,
            **decoded_fields(back, msgpack.unpackb(nine_value, raw=False)),
            "file_size": src_msg["file_size"],
            "file_sha512": src_msg["file_sha512"],
            "reconstructed_relpath": DownloadDataFile.get_full_filepath(back).as_posix(),
            "value_size": len(nine_value),
            "round_trip": {
                "deserializer": "openmsistream DataFileChunkDeserializer",
                "decoded": True,
                "file_mtime_is_none": rt_nine_fields_none,
                "same_msg_key": back.msg_key == src_msg["key"],
                # 1.8.8 re-serializes a decoded 9-field chunk in the 10-field form.
                "reserialized_identical": reser == nine_value,
                "reserialized_equals": NINE_FIELD_FROM if reser == src_value else None,
            },
        }
    )
    if not (rt_nine_fields_none and reser == src_value and back.msg_key == src_msg["key"]):
        sys.exit("nine-field round trip failed")

    # Write the fixtures (and drop stale ones).
    names = {m["name"] for m in messages}
    for old in OUT_DIR.glob("*.value.bin"):
        if old.name[: -len(".value.bin")] not in names:
            old.unlink()
    for name, value in values.items():
        (OUT_DIR / f"{name}.value.bin").write_bytes(value)
    manifest = {
        "generator": "tests/golden/make_golden.py",
        "openmsistream_version": oms_version,
        "notes": [
            "Each <name>.value.bin is the exact Kafka message value made by OpenMSIStream's "
            "DataFileChunkSerializer; key is DataFileChunk.msg_key (sent as UTF-8).",
            "Hashes and data are hex here; on the wire they are msgpack bin (raw bytes).",
            "file_mtime is what OpenMSIStream's deserializer returns (None when the wire value "
            "is 0.0 or absent); wire_file_mtime is the float on the wire (null if 9 fields).",
            "Fixtures marked derived: true were not made by OpenMSIStream's serializer.",
        ],
        "sources": sources,
        "messages": messages,
    }
    text = json.dumps(manifest, indent=2, ensure_ascii=False) + "\n"
    (OUT_DIR / "manifest.json").write_text(text, encoding="utf-8")
    total = sum(len(v) for v in values.values()) + len(text.encode())
    print(f"wrote {len(values)} messages + manifest.json to {OUT_DIR} ({total} bytes)")


if __name__ == "__main__":
    main()
