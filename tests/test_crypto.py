"""KafkaCrypto-encrypted chunk topics (issue 12), against the real broker and S3 server.

Fresh nodes are provisioned by services/kafkacrypto.sh; OpenMSIStream 1.8.8's
UploadDataFile (its own venv, services/openmsistream-peer.sh) produces an encrypted file;
a plain confluent_kafka consumer reads the raw topic; s3transfer_stream.crypto decrypts
it into chunks our decoder accepts; our S3TransferStreamProcessor, given a config with
[kafkacrypto], decrypts the topic into the bucket, and holds (never commits past) what
its node cannot decrypt. Our UploadDataFile and DataFileUploadDirectory, given a
producer node, encrypt: OpenMSIStream's S3TransferStreamProcessor and ours store what
they sent byte for byte, and their raw topics hold no plaintext.
"""

from __future__ import annotations

import configparser
import contextlib
import importlib.util
import os
import random
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import Consumer, TopicPartition
from helpers import (
    ProcessorRun,
    committed_offsets,
    encoded_chunks,
    list_objects,
    log_ends,
    produce,
    read_object,
    write_tree,
)
from peer import OUR_BIN, PEER_CONFIG, Program, install_peer, tail
from s3transfer_stream import _core
from s3transfer_stream.config import load_config
from s3transfer_stream.crypto import (
    CryptoError,
    CryptoNode,
    Decrypted,
    DecryptOptions,
    KafkaCryptoSettings,
    NotYetDecryptable,
)
from s3transfer_stream.errors import ConfigError
from s3transfer_stream.kafka import create_topic, delete_topic

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "services" / "kafkacrypto.sh"
CHUNK = 16384

needs_extra = pytest.mark.skipif(
    importlib.util.find_spec("kafkacrypto") is None,
    reason="the crypto extra is not installed (bash services/kafkacrypto.sh install, "
    "or pip install s3transfer-stream[crypto])",
)


# --------------------------------------------------------------------- settings (no broker)


def _node_dir(root: Path, node_id: str) -> Path:
    node = root / node_id
    node.mkdir(parents=True)
    (node / f"{node_id}.config").write_text(f"[DEFAULT]\nnode_id : {node_id}\n")
    return node


def test_node_id_is_found_beside_the_config_file(tmp_path: Path) -> None:
    _node_dir(tmp_path, "lab_node")
    cfg = tmp_path / "enc.config"
    cfg.write_text("[kafkacrypto]\nnode_id = lab_node\n")
    found = KafkaCryptoSettings.from_config_file(cfg)
    assert found is not None
    assert found.node_config == (tmp_path / "lab_node" / "lab_node.config").resolve()


def test_config_file_keeps_a_path_that_starts_with_file_letters(tmp_path: Path) -> None:
    # OpenMSIStream strips any leading f/i/l/e/# characters; only "file#" may go.
    node = _node_dir(tmp_path / "files", "n1")
    cfg = tmp_path / "enc.config"
    cfg.write_text(f"[kafkacrypto]\nconfig_file = file#{node / 'n1.config'}\n")
    found = KafkaCryptoSettings.from_config_file(cfg)
    assert found is not None and found.node_config == (node / "n1.config").resolve()


def test_a_missing_node_is_reported_with_where_it_was_looked_for(tmp_path: Path) -> None:
    cfg = tmp_path / "enc.config"
    cfg.write_text("[kafkacrypto]\nnode_id = nowhere\n")
    with pytest.raises(CryptoError, match=r"nowhere.*nowhere\.config"):
        KafkaCryptoSettings.from_config_file(cfg)
    plain = tmp_path / "plain.config"
    plain.write_text("[broker]\nbootstrap.servers = x\n")
    assert KafkaCryptoSettings.from_config_file(plain) is None


def test_the_config_keeps_kafkacrypto_and_finds_the_node_or_says_which_key(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("S3TRANSFER_STREAM_CONFIG_DIR", raising=False)
    monkeypatch.delenv("OPENMSISTREAM_CONFIG_FILE_DIR", raising=False)
    _node_dir(tmp_path, "lab_node")
    cfg = tmp_path / "enc.config"
    cfg.write_text("[broker]\nbootstrap.servers = x\n[kafkacrypto]\nnode_id = lab_node\n")
    config = load_config(str(cfg))
    assert config.kafkacrypto == {"node_id": "lab_node"}
    found = config.kafkacrypto_settings()
    assert found is not None
    assert found.node_config == (tmp_path / "lab_node" / "lab_node.config").resolve()
    # The processor decrypts with it and the producers encrypt: nothing to warn about.
    assert not any("[kafkacrypto]" in w for w in config.warnings())

    cfg.write_text("[broker]\nbootstrap.servers = x\n[kafkacrypto]\nnode_id = gone\n")
    missing = load_config(str(cfg))
    with pytest.raises(ConfigError, match=r"enc\.config.*node_id = 'gone'.*gone\.config"):
        missing.kafkacrypto_settings()

    cfg.write_text("[broker]\nbootstrap.servers = x\n")
    plain = load_config(str(cfg))
    assert plain.kafkacrypto is None and plain.kafkacrypto_settings() is None


def test_a_missing_extra_is_a_config_error_naming_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from s3transfer_stream import crypto

    monkeypatch.setattr(crypto, "_IMPORT_ERROR", ImportError("No module named 'kafkacrypto'"))
    _node_dir(tmp_path, "lab_node")
    cfg = tmp_path / "enc.config"
    cfg.write_text("[kafkacrypto]\nnode_id = lab_node\n")
    with pytest.raises(ConfigError, match=r"pip install 's3transfer-stream\[crypto\]'"):
        load_config(str(cfg)).kafkacrypto_settings()


def test_a_plaintext_config_never_loads_kafkacrypto(tmp_path: Path) -> None:
    # A fresh interpreter: this one has loaded it for the tests above.
    code = (
        "import sys\n"
        "from s3transfer_stream.cli import processor, upload_directory, upload_file\n"
        "from s3transfer_stream.processor import S3TransferStreamProcessor\n"
        "from s3transfer_stream.producer import open_encryptor\n"
        "from s3transfer_stream.config import load_config\n"
        f"c = load_config({str(tmp_path / 'p.config')!r})\n"
        "assert c.kafkacrypto_settings() is None\n"
        "assert open_encryptor(c) is None\n"
        "args = processor.build_parser().parse_args(['b', '--max_wait_per_decrypt', '1'])\n"
        "processor.options_from_args(args)\n"
        "loaded = [m for m in sys.modules if m.startswith(('kafkacrypto', 's3transfer_stream.crypto'))]\n"
        "assert not loaded, loaded\n"
    )
    (tmp_path / "p.config").write_text("[broker]\nbootstrap.servers = x\n")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr


# --------------------------------------------------------------------- provisioning

KEY_SUFFIXES = (".keys", ".reqs", ".subs")


@contextlib.contextmanager
def encrypted_topic(bootstrap: str, partitions: int, name: str = "enc") -> Iterator[str]:
    """A fresh topic and its three key-exchange topics, deleted afterwards."""
    # No "." in the name: KafkaCrypto keys a topic by its name up to the first ".".
    topic = f"{name}_{uuid.uuid4().hex[:10]}"
    create_topic(bootstrap, topic, partitions)
    for suffix in KEY_SUFFIXES:
        create_topic(bootstrap, topic + suffix, 1)
    try:
        yield topic
    finally:
        try:
            delete_topic(bootstrap, [topic, *(topic + suffix for suffix in KEY_SUFFIXES)])
        except Exception:  # cleanup only; the broker's data dir is throwaway
            pass


def provision(directory: Path, topic: str, prefix: str) -> dict[str, Path]:
    env = os.environ.copy()
    # A fixed pair of passwords would make every run one trust domain; let it pick.
    env.pop("S3TS_KC_ROT_PASSWORD", None)
    env.pop("S3TS_KC_PROVISIONING_PASSWORD", None)
    res = subprocess.run(
        [
            *("bash", str(SCRIPT), "provision", str(directory)),
            *("--topic", topic, "--prefix", prefix, "--sub-interval", "5"),
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert res.returncode == 0, f"provisioning failed:\n{tail(res.stderr)}"
    nodes = dict(line.split("\t", 1) for line in res.stdout.splitlines() if "\t" in line)
    return {node_id: Path(path) for node_id, path in nodes.items()}


@needs_extra
def test_provisioned_nodes_have_openmsistream_layout_and_trust_only_their_root(
    tmp_path: Path,
) -> None:
    nodes = provision(tmp_path, "layout_topic", "lay")
    assert sorted(nodes) == ["lay_consumer", "lay_outsider", "lay_producer"]
    for node_id, path in nodes.items():
        assert path == tmp_path / node_id / f"{node_id}.config"
        for suffix in (".crypto", ".seed"):
            secret = path.with_suffix(suffix)
            assert secret.is_file() and secret.stat().st_mode & 0o077 == 0, secret
        parser = configparser.ConfigParser(delimiters=(":",), interpolation=None)
        parser.read(path)
        # KafkaCrypto seeds every new store with a built-in temporary root of trust.
        trusted = set(parser.options(f"{node_id}-allowlist")) - set(parser.defaults())
        assert trusted == {"rot0"}, node_id
        assert parser.get(f"{node_id}-kafka", "security_protocol") == "PLAINTEXT"
    roots = {parser_rot(p) for p in nodes.values()}
    assert len(roots) == 2, "producer and consumer share a root; the outsider has its own"


def parser_rot(path: Path) -> str:
    parser = configparser.ConfigParser(delimiters=(":",), interpolation=None)
    parser.read(path)
    node_id = parser.get("DEFAULT", "node_id")
    return parser.get(f"{node_id}-allowlist", "rot0")


# --------------------------------------------------------------------- OpenMSIStream -> raw topic


def marked_file(seed: int, n_blocks: int) -> tuple[bytes, bytes]:
    """``(data, marker)``: random bytes with a fresh marker at the start of every 4 KiB
    block, so that every chunk holds several copies of it."""
    marker = f"S3TS-PLAINTEXT-{uuid.uuid4().hex}".encode()
    rng = random.Random(seed)
    return b"".join(marker + rng.randbytes(4096 - len(marker)) for _ in range(n_blocks)), marker


def producer_config(nodes: dict[str, Path], node_id: str, bootstrap: str) -> Path:
    """A producer config (OpenMSIStream's serializer names, which ours accept) with
    ``[kafkacrypto] node_id``, beside the node directories."""
    cfg = nodes[node_id].parent.parent / f"producer_{node_id}.config"
    cfg.write_text(
        f"[kafkacrypto]\nnode_id = {node_id}\n\n"
        f"[broker]\nbootstrap.servers = {bootstrap}\n\n"
        "[producer]\nbatch.size = 200000\nlinger.ms = 100\ncompression.type = lz4\n"
        "key.serializer = StringSerializer\nvalue.serializer = DataFileChunkSerializer\n",
        encoding="utf-8",
    )
    return cfg


def keys_saved(config: Path) -> bool:
    """Whether KafkaCrypto saved a producer node's keys (``oldkeys``) in its file."""
    saved = configparser.ConfigParser(delimiters=(":",), interpolation=None)
    node_id = config.stem
    return bool(saved.read(config)) and saved.has_option(f"{node_id}-crypto", "oldkeys")


def assert_no_plaintext(
    raw: list[tuple[int, int, bytes | None, bytes]],
    topic: str,
    marker: bytes,
    names: list[str],
) -> None:
    """No raw key or value holds the marker or a file name, and all are KafkaCrypto's."""
    assert raw, f"nothing in {topic}"
    for partition, offset, key, value in raw:
        where = f"{topic}[{partition}]@{offset}"
        assert marker not in value, f"{where}: file bytes in the clear"
        assert key is not None, f"{where}: no key"
        for name in names:
            assert name.encode() not in key, f"{where}: key in the clear"
            assert name.encode() not in value, f"{where}: file name in the clear"
        assert value[:1] == b"\x01" and key[:1] == b"\x01", f"{where}: not KafkaCrypto output"


@dataclass
class Encrypted:
    topic: str
    source: bytes
    name: str
    marker: bytes
    nodes: dict[str, Path]
    # (partition, offset, key, value) of every raw message
    raw: list[tuple[int, int, bytes | None, bytes]]
    holder: CryptoNode
    broker: dict[str, str]


def read_raw(
    bootstrap: str, topic: str, timeout: float = 60
) -> list[tuple[int, int, bytes | None, bytes]]:
    consumer = Consumer(
        {"bootstrap.servers": bootstrap, "group.id": f"raw-{uuid.uuid4().hex[:8]}"}
        | {"enable.auto.commit": False}
    )
    try:
        parts = sorted(consumer.list_topics(topic, timeout=10).topics[topic].partitions)
        ends = {p: consumer.get_watermark_offsets(TopicPartition(topic, p), 10)[1] for p in parts}
        consumer.assign([TopicPartition(topic, p, 0) for p in parts])
        pos = dict.fromkeys(parts, 0)
        out: list[tuple[int, int, bytes | None, bytes]] = []
        deadline = time.monotonic() + timeout
        while any(pos[p] < ends[p] for p in parts):
            assert time.monotonic() < deadline, f"could not read {topic} to its end"
            msg = consumer.poll(0.5)
            if msg is None or msg.error():
                continue
            out.append((msg.partition(), msg.offset(), msg.key(), msg.value()))
            pos[msg.partition()] = msg.offset() + 1
        return out
    finally:
        consumer.close()


def crypto_peer() -> Path:
    """The OpenMSIStream peer's python; skips without the crypto extra."""
    if importlib.util.find_spec("kafkacrypto") is None:
        pytest.skip("the crypto extra is not installed (bash services/kafkacrypto.sh install)")
    try:
        return install_peer()
    except RuntimeError as exc:
        pytest.fail(str(exc))


@pytest.fixture(scope="module")
def encrypted(
    kafka_bootstrap: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Encrypted]:
    peer_python = crypto_peer()
    tmp = tmp_path_factory.mktemp("crypto")
    with encrypted_topic(kafka_bootstrap, 3) as topic:
        yield from _oms_encrypted(kafka_bootstrap, tmp, topic, peer_python)


def _oms_encrypted(
    kafka_bootstrap: str, tmp: Path, topic: str, peer_python: Path
) -> Iterator[Encrypted]:
    prefix = f"n{uuid.uuid4().hex[:6]}"
    nodes = provision(tmp, topic, prefix)
    producer_node = f"{prefix}_producer"
    source, marker = marked_file(12, 40)
    name = f"secret-name-{uuid.uuid4().hex[:8]}.dat"
    upload_dir = tmp / "upload"
    upload_dir.mkdir()
    (upload_dir / name).write_bytes(source)
    cfg = producer_config(nodes, producer_node, kafka_bootstrap)
    up = Program(
        "oms-UploadDataFile-encrypted",
        [
            *(str(peer_python.parent / "UploadDataFile"), str(upload_dir / name)),
            *("--config", str(cfg), "--topic_name", topic, "--chunk_size", str(CHUNK)),
        ],
        tmp,
        cwd=tmp,
    )
    rc = up.wait(120)
    assert rc == 0, f"OpenMSIStream UploadDataFile exited {rc}:\n{tail(up.output())}"
    raw = read_raw(kafka_bootstrap, topic)
    assert keys_saved(nodes[producer_node]), (
        "UploadDataFile exited before KafkaCrypto saved the keys it used; no consumer can "
        f"ever get them:\n{tail(up.output())}"
    )

    broker = {"bootstrap.servers": kafka_bootstrap}
    # KafkaCrypto hands keys over only from a running producer node, and UploadDataFile
    # has exited: the same node, started again, answers the consumers' requests.
    holder = CryptoNode(KafkaCryptoSettings(nodes[producer_node]), broker)
    holder.serve_keys(topic)
    try:
        yield Encrypted(topic, source, name, marker, nodes, raw, holder, broker)
    finally:
        holder.close()


@pytest.mark.integration
def test_the_raw_topic_holds_no_plaintext(encrypted: Encrypted) -> None:
    """OpenMSIStream's UploadDataFile; ours: test_our_upload_data_file_through_openmsistream
    and test_our_upload_directory_through_our_processor."""
    assert len(encrypted.raw) == -(-len(encrypted.source) // CHUNK)
    assert_no_plaintext(encrypted.raw, encrypted.topic, encrypted.marker, [encrypted.name])


@pytest.mark.integration
def test_the_consumer_node_decrypts_into_chunks_of_the_identical_file(
    encrypted: Encrypted,
) -> None:
    consumer = encrypted.nodes[node_named(encrypted, "consumer")]
    node = CryptoNode(KafkaCryptoSettings(consumer), encrypted.broker)
    try:
        pieces: dict[int, bytes] = {}
        seen: set[int] = set()
        for partition, offset, key, value in encrypted.raw:
            got = node.decrypt(encrypted.topic, partition, offset, key, value)
            assert isinstance(got, Decrypted), str(got)
            chunk = _core.decode_chunk(got.value)
            assert chunk.filename == encrypted.name and chunk.subdir_str == ""
            assert chunk.file_hash == _core.sha512(encrypted.source)
            assert got.key is not None
            assert got.key.decode() == _core.message_key(
                "", chunk.filename, chunk.chunk_i, chunk.n_total_chunks
            )
            assert chunk.chunk_i not in seen
            seen.add(chunk.chunk_i)
            pieces[chunk.chunk_offset_write] = chunk.data
        assert seen == set(range(1, len(encrypted.raw) + 1))
        assert b"".join(pieces[o] for o in sorted(pieces)) == encrypted.source
    finally:
        node.close()


@pytest.mark.integration
def test_a_node_under_another_root_of_trust_cannot_decrypt_and_says_where(
    encrypted: Encrypted,
) -> None:
    outsider = encrypted.nodes[node_named(encrypted, "outsider")]
    options = DecryptOptions(max_wait_per_decrypt=1.0, max_initial_wait_per_decrypt=3.0)
    node = CryptoNode(KafkaCryptoSettings(outsider), encrypted.broker, options=options)
    try:
        partition, offset, key, value = encrypted.raw[0]
        got = node.decrypt(encrypted.topic, partition, offset, key, value)
        assert isinstance(got, NotYetDecryptable), got
        assert got.possibly_decryptable and got.parts == ("key", "value")
        text = str(got)
        assert f"topic {encrypted.topic} partition {partition} offset {offset}" in text
        assert "no decryption key" in text and f"{encrypted.topic}.reqs" in text
        # After the first failure the shorter per-message wait applies.
        partition, offset, key, value = encrypted.raw[-1]
        again = node.decrypt(encrypted.topic, partition, offset, key, value)
        assert isinstance(again, NotYetDecryptable) and again.waited < 3.0 + 2.0
    finally:
        node.close()


@pytest.mark.integration
def test_plaintext_in_an_encrypted_topic_is_refused_unless_asked_for(
    encrypted: Encrypted,
) -> None:
    consumer = encrypted.nodes[node_named(encrypted, "consumer")]
    value = _core.encode_chunk(
        filename="p.dat",
        data=b"plain",
        chunk_offset_write=0,
        chunk_i=1,
        n_total_chunks=1,
        file_hash=_core.sha512(b"plain"),
        chunk_hash=_core.sha512(b"plain"),
        subdir_str="",
        filename_append="",
    )
    key = b"_p.dat_chunk_1_of_1"
    node = CryptoNode(KafkaCryptoSettings(consumer), encrypted.broker)
    try:
        got = node.decrypt(encrypted.topic, 2, 99, key, bytes(value))
        assert isinstance(got, NotYetDecryptable) and not got.possibly_decryptable
        assert "partition 2 offset 99" in str(got)
        node.options.treat_undecryptable_as_plaintext = True
        passed = node.decrypt(encrypted.topic, 2, 99, key, bytes(value))
        assert isinstance(passed, Decrypted) and passed.passed_through
        assert passed.value == bytes(value) and passed.key == key
    finally:
        node.close()


# --------------------------------------------------------------------- our processor


def still_held(log: str, topic: str, partition: int, offset: int) -> list[str]:
    where = f"message at topic {topic} partition {partition} offset {offset} not decryptable"
    return [line for line in log.splitlines() if where in line and "Still held after" in line]


def node_named(encrypted: Encrypted, role: str) -> str:
    return node_named_in(encrypted.nodes, role)


def node_named_in(nodes: dict[str, Path], role: str) -> str:
    return next(n for n in nodes if n.endswith(f"_{role}"))


def processor_config(nodes: dict[str, Path], node_id: str) -> Path:
    """OpenMSIStream's local S3 config plus ``[kafkacrypto] node_id``, beside the node
    directories (where OpenMSIStream, and we, look for a node id)."""
    cfg = nodes[node_id].parent.parent / f"processor_{node_id}.config"
    cfg.write_text(PEER_CONFIG + f"\n[kafkacrypto]\nnode_id = {node_id}\n", encoding="utf-8")
    return cfg


def run_to_completion(
    run: ProcessorRun,
    s3_client: Any,
    bootstrap: str,
    bucket: str,
    topic: str,
    group: str,
    expected: dict[str, bytes],
) -> str:
    """Waits for ``expected`` (key -> bytes) in the bucket and every offset committed,
    quits the processor and returns its log."""
    sizes = {key: len(data) for key, data in expected.items()}
    ends = {p: end for p, end in log_ends(bootstrap, topic).items() if end > 0}
    try:
        run.wait_for(lambda: list_objects(s3_client, bucket) == sizes, 120, f"objects {sizes}")
        run.wait_for(
            lambda: committed_offsets(bootstrap, topic, group) == ends, 60, f"commits at {ends}"
        )
        rc = run.quit(60)
    finally:
        if run.proc.poll() is None:
            run.proc.kill()
    log = run.stderr()
    assert rc == 0, f"our processor exited {rc}:\n{tail(log)}"
    for key, data in expected.items():
        assert read_object(s3_client, bucket, key) == data, key
    return log


@pytest.mark.integration
def test_openmsistream_upload_through_our_processor_gives_the_identical_object(
    encrypted: Encrypted,
    s3_client: Any,
    new_bucket: Any,
    kafka_bootstrap: str,
    tmp_path: Path,
) -> None:
    bucket = new_bucket()
    group = f"g-{uuid.uuid4().hex[:8]}"
    node = node_named(encrypted, "consumer")
    cfg = processor_config(encrypted.nodes, node)
    run = ProcessorRun(bucket, encrypted.topic, group, tmp_path / "out", "--config", str(cfg))
    log = run_to_completion(
        run,
        s3_client,
        kafka_bootstrap,
        bucket,
        encrypted.topic,
        group,
        {f"{encrypted.topic}/{encrypted.name}": encrypted.source},
    )
    assert f"with KafkaCrypto node {encrypted.nodes[node]}" in log
    assert "[kafkacrypto]" not in log, "the section must not be reported as ignored"
    assert "messages were skipped as unusable" not in log
    # A fresh node asks for a key only when a message needs it: the first message of
    # each partition is held until the key arrives, then read again in the same run.
    assert "decrypted after being held" in log, tail(log)


@pytest.mark.integration
def test_a_node_without_the_keys_holds_commits_nothing_then_the_right_node_completes(
    encrypted: Encrypted,
    s3_client: Any,
    new_bucket: Any,
    kafka_bootstrap: str,
    tmp_path: Path,
) -> None:
    bucket = new_bucket()
    group = f"g-{uuid.uuid4().hex[:8]}"
    topic = encrypted.topic
    outsider = processor_config(encrypted.nodes, node_named(encrypted, "outsider"))
    waits = ("--max_initial_wait_per_decrypt", "2", "--max_wait_per_decrypt", "1")
    run = ProcessorRun(
        bucket, topic, group, tmp_path / "out", "--config", str(outsider), *waits, tag="outsider"
    )
    first = min(encrypted.raw)[0]
    try:
        # The first warning comes after the initial wait, the next after the shorter one.
        run.wait_for(
            lambda: len(still_held(run.stderr(), topic, first, 0)) >= 2,
            90,
            f"two 'still held' warnings for partition {first}",
        )
        assert committed_offsets(kafka_bootstrap, topic, group) == {}
        assert list_objects(s3_client, bucket) == {}
        rc = run.quit(60)
    finally:
        if run.proc.poll() is None:
            run.proc.kill()
    log = run.stderr()
    assert rc == 0, tail(log)
    # Nothing was decryptable, so no partition got a position to commit, not even at quit.
    assert committed_offsets(kafka_bootstrap, topic, group) == {}
    assert list_objects(s3_client, bucket) == {}
    partitions = {p for p, _, _, _ in encrypted.raw}
    for p in partitions:
        line = f"message at topic {topic} partition {p} offset 0 not decryptable (value)"
        assert log.count(line + ": node ") >= 1, f"no hold line for partition {p}:\n{tail(log)}"
    assert "no decryption key for root topic" in log and f"{topic}.reqs" in log
    assert "it is never skipped" in log
    assert "messages were skipped as unusable" not in log

    consumer = processor_config(encrypted.nodes, node_named(encrypted, "consumer"))
    again = ProcessorRun(
        bucket, topic, group, tmp_path / "out", "--config", str(consumer), tag="consumer"
    )
    run_to_completion(
        again,
        s3_client,
        kafka_bootstrap,
        bucket,
        topic,
        group,
        {f"{topic}/{encrypted.name}": encrypted.source},
    )


@pytest.mark.integration
def test_a_message_whose_key_comes_late_is_held_at_its_offset_then_completes(
    s3_client: Any,
    new_bucket: Any,
    kafka_bootstrap: str,
    tmp_path: Path,
) -> None:
    """Two producer nodes of one trust domain encrypt a file each into one partition.
    The first keeps serving its keys; the second has stopped, so the second file's first
    message is held: the commit must stop exactly there, with the first file stored. Once
    the second node serves its keys again, the same run completes."""
    if importlib.util.find_spec("kafkacrypto") is None:
        pytest.skip("the crypto extra is not installed (bash services/kafkacrypto.sh install)")
    with encrypted_topic(kafka_bootstrap, 1, "enc_late") as topic:
        _key_comes_late(s3_client, new_bucket, kafka_bootstrap, tmp_path, topic)


def _key_comes_late(
    s3_client: Any, new_bucket: Any, kafka_bootstrap: str, tmp_path: Path, topic: str
) -> None:
    # In another process: KafkaCrypto keeps a lock on a node's config file that only
    # the end of the process that opened it surely lets go of.
    env = os.environ | {
        "S3TS_KC_ROT_PASSWORD": uuid.uuid4().hex,
        "S3TS_KC_PROVISIONING_PASSWORD": uuid.uuid4().hex,
    }
    res = subprocess.run(
        [
            *(sys.executable, "-m", "s3transfer_stream.crypto", "provision"),
            *(str(tmp_path / "nodes"), "--bootstrap-servers", kafka_bootstrap),
            *("--sub-interval", "5", "--node", f"late_p1:producer:{topic}"),
            *("--node", f"late_p2:producer:{topic}", "--node", f"late_c:consumer:{topic}"),
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert res.returncode == 0, tail(res.stderr)
    nodes = {
        node_id: Path(path)
        for node_id, path in (line.split("\t", 1) for line in res.stdout.splitlines())
    }
    broker = {"bootstrap.servers": kafka_bootstrap}
    rng = random.Random(21)
    files = {"first.bin": rng.randbytes(5 * CHUNK + 7), "second.bin": rng.randbytes(3 * CHUNK)}
    src = tmp_path / "src"
    src.mkdir()
    for rel, data in files.items():
        (src / rel).write_bytes(data)

    def encrypted_chunks(node: CryptoNode, rel: str) -> list[tuple[Any, bytes, int]]:
        out = []
        for key, value in encoded_chunks(src, rel, CHUNK):
            enc_key, enc_value = node.encrypt(topic, key.encode(), bytes(value))
            out.append((enc_key, enc_value, 0))
        return out

    first = CryptoNode(KafkaCryptoSettings(nodes["late_p1"]), broker)
    server: CryptoNode | None = None
    try:
        n_first = produce(kafka_bootstrap, topic, encrypted_chunks(first, "first.bin"))
        second = CryptoNode(KafkaCryptoSettings(nodes["late_p2"]), broker)
        try:
            n_second = produce(kafka_bootstrap, topic, encrypted_chunks(second, "second.bin"))
            deadline = time.monotonic() + 20
            while not keys_saved(nodes["late_p2"]):
                assert time.monotonic() < deadline, "KafkaCrypto never saved late_p2's keys"
                time.sleep(0.5)
        finally:
            second.close()

        bucket = new_bucket()
        group = f"g-{uuid.uuid4().hex[:8]}"
        cfg = processor_config(nodes, "late_c")
        run = ProcessorRun(
            bucket,
            topic,
            group,
            tmp_path / "out",
            *("--config", str(cfg), "--max_initial_wait_per_decrypt", "3"),
            *("--max_wait_per_decrypt", "2"),
        )
        try:
            run.wait_for(
                lambda: list_objects(s3_client, bucket) == {f"{topic}/first.bin": 5 * CHUNK + 7},
                120,
                "the first file in the bucket",
            )
            run.wait_for(
                lambda: bool(still_held(run.stderr(), topic, 0, n_first)),
                60,
                f"a 'still held' warning for offset {n_first}",
            )
            run.wait_for(
                lambda: committed_offsets(kafka_bootstrap, topic, group) == {0: n_first},
                30,
                f"the commit at the held offset {n_first}",
            )
            # A few more commit rounds: it must not move past the held message.
            time.sleep(5)
            assert committed_offsets(kafka_bootstrap, topic, group) == {0: n_first}
            assert list(list_objects(s3_client, bucket)) == [f"{topic}/first.bin"]

            server = CryptoNode(KafkaCryptoSettings(nodes["late_p2"]), broker)
            server.serve_keys(topic)
            log = run_to_completion(
                run,
                s3_client,
                kafka_bootstrap,
                bucket,
                topic,
                group,
                {f"{topic}/{rel}": data for rel, data in files.items()},
            )
        finally:
            if run.proc.poll() is None:
                run.proc.kill()
        assert committed_offsets(kafka_bootstrap, topic, group) == {0: n_first + n_second}
        assert f"{topic}[0]@{n_first} decrypted after being held" in log, tail(log)
        assert "it is never skipped" in log
    finally:
        first.close()
        if server is not None:
            server.close()


# --------------------------------------------------------------------- our producers


def our_files(seed: int) -> tuple[dict[str, bytes], bytes]:
    """Files for our producers (one holds a marker in every 4 KiB) and the marker."""
    marked, marker = marked_file(seed, 48)  # 12 chunks
    rng = random.Random(seed)
    files = {
        f"secret-{uuid.uuid4().hex[:8]}.dat": marked,
        "ünïcødé_名前.dat": rng.randbytes(2 * CHUNK + 5),
        "one_byte.bin": b"\x07",
    }
    return files, marker


@dataclass
class OursToOms:
    topic: str
    bucket: str
    files: dict[str, bytes]
    marker: bytes
    nodes: dict[str, Path]
    raw: list[tuple[int, int, bytes | None, bytes]]
    oms_log: str
    our_logs: list[str]


@pytest.fixture(scope="module")
def ours_to_oms(
    kafka_bootstrap: str, s3_client: Any, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[OursToOms]:
    """Our UploadDataFile (one process per file, so a new key index each) encrypts with
    the producer node while OpenMSIStream's S3TransferStreamProcessor, with the consumer
    node, runs: its keys come only from our producers, which serve them a little
    after their last message and then exit."""
    peer_python = crypto_peer()
    tmp = tmp_path_factory.mktemp("ours_to_oms")
    bucket = f"b-{uuid.uuid4().hex[:12]}"
    s3_client.create_bucket(Bucket=bucket)
    with encrypted_topic(kafka_bootstrap, 3, "enc_ours") as topic:
        nodes = provision(tmp, topic, f"o{uuid.uuid4().hex[:6]}")
        files, marker = our_files(41)
        write_tree(tmp / "src", files)
        group = f"oms-{uuid.uuid4().hex[:8]}"
        oms = Program(
            "oms-S3TransferStreamProcessor-encrypted",
            [
                *(str(peer_python.parent / "S3TransferStreamProcessor"), bucket),
                *("--config", str(processor_config(nodes, node_named_in(nodes, "consumer")))),
                *("--topic_name", topic, "--consumer_group_id", group),
                *("--output_dir", str(tmp / "oms_out"), "--logger_stream_level", "debug"),
            ],
            tmp,
            cwd=tmp,
        )
        our_logs: list[str] = []
        try:
            oms.wait_for(lambda: "Listening to the" in oms.output(), 90, "its 'Listening' line")
            cfg = producer_config(nodes, node_named_in(nodes, "producer"), kafka_bootstrap)
            for i, rel in enumerate(files):
                up = Program(
                    f"our-UploadDataFile-encrypted-{i}",
                    [
                        *(str(OUR_BIN / "UploadDataFile"), str(tmp / "src" / rel)),
                        *("--config", str(cfg), "--topic_name", topic),
                        *("--chunk_size", str(CHUNK)),
                    ],
                    tmp,
                )
                rc = up.wait(120)
                our_logs.append(up.output())
                assert rc == 0, f"our UploadDataFile {rel} exited {rc}:\n{tail(up.output())}"
            expected = {f"{topic}/{rel}": len(data) for rel, data in files.items()}
            oms.wait_for(
                lambda: list_objects(s3_client, bucket) == expected, 120, f"objects {expected}"
            )
            oms.wait_for(
                lambda: all(
                    f"Fully-read file {rel} successfully processed" in oms.output() for rel in files
                ),
                30,
                "its 'successfully processed' line for every file",
            )
            rc = oms.quit("q", 60)
        finally:
            oms.kill()
        oms_log = oms.output()
        # OpenMSIStream 1.8.8 closes its consumers' KafkaCrypto twice at quit, and the
        # second time it is None: exit status 1 with this one traceback, after the work.
        upstream_bug = (
            oms_log.count("Traceback") == 1
            and 'self.__c_kwargs["kafkacrypto"].close()' in oms_log
            and oms_log.rstrip().endswith(
                "AttributeError: 'NoneType' object has no attribute 'close'"
            )
        )
        assert rc == 0 or (rc == 1 and upstream_bug), (
            f"OpenMSIStream's processor exited {rc}:\n{tail(oms_log)}"
        )
        raw = read_raw(kafka_bootstrap, topic)
        try:
            yield OursToOms(topic, bucket, files, marker, nodes, raw, oms_log, our_logs)
        finally:
            for key in list_objects(s3_client, bucket):
                s3_client.delete_object(Bucket=bucket, Key=key)
            s3_client.delete_bucket(Bucket=bucket)


@pytest.mark.integration
def test_our_upload_data_file_through_openmsistream_processor_gives_identical_objects(
    ours_to_oms: OursToOms, s3_client: Any
) -> None:
    run = ours_to_oms
    for rel, data in run.files.items():
        assert read_object(s3_client, run.bucket, f"{run.topic}/{rel}") == data, rel
    assert "failed to transfer" not in run.oms_log, tail(run.oms_log)
    assert "does not match the file originally read" not in run.oms_log, tail(run.oms_log)
    # It decrypted every message (an undecryptable one makes it raise: docs/encryption.md).
    for rel in run.files:
        assert f"Fully-read file {rel} successfully processed" in run.oms_log, rel
    producer = node_named_in(run.nodes, "producer")
    for log in run.our_logs:
        assert f"Encrypting with KafkaCrypto node {producer}" in log, log
    # Saved before exiting: the same node, started again, can serve late consumers.
    assert keys_saved(run.nodes[producer])


@pytest.mark.integration
def test_the_raw_topic_written_by_our_upload_data_file_holds_no_plaintext(
    ours_to_oms: OursToOms,
) -> None:
    run = ours_to_oms
    assert len(run.raw) == sum(-(-len(data) // CHUNK) for data in run.files.values())
    assert_no_plaintext(run.raw, run.topic, run.marker, list(run.files))


@pytest.mark.integration
def test_our_upload_directory_through_our_processor_gives_identical_objects(
    kafka_bootstrap: str, s3_client: Any, new_bucket: Any, tmp_path: Path
) -> None:
    """Our DataFileUploadDirectory encrypts with the producer node and serves its keys
    while it runs; our processor, started once everything was sent, with the consumer
    node, stores every file; the raw topic holds no plaintext."""
    crypto_peer()
    with encrypted_topic(kafka_bootstrap, 3, "enc_dir") as topic:
        nodes = provision(tmp_path, topic, f"d{uuid.uuid4().hex[:6]}")
        flat, marker = our_files(43)
        files = {f"sub/{rel}": data for rel, data in flat.items()} | {"top.bin": b"top"}
        write_tree(tmp_path / "src", files)
        cfg = producer_config(nodes, node_named_in(nodes, "producer"), kafka_bootstrap)
        up = Program(
            "our-DataFileUploadDirectory-encrypted",
            [
                *(str(OUR_BIN / "DataFileUploadDirectory"), str(tmp_path / "src")),
                *("--config", str(cfg), "--topic_name", topic, "--upload_existing"),
                *("--chunk_size", str(CHUNK), "--watchdog_lag_time", "1"),
            ],
            tmp_path,
        )
        try:
            up.wait_for(
                lambda: all(f"Uploaded {rel} (" in up.output() for rel in files),
                60,
                "an 'Uploaded' line for every file",
            )
            # Started after the upload: the running uploader serves the keys.
            bucket = new_bucket()
            group = f"g-{uuid.uuid4().hex[:8]}"
            consumer = processor_config(nodes, node_named_in(nodes, "consumer"))
            run = ProcessorRun(bucket, topic, group, tmp_path / "out", "--config", str(consumer))
            run_to_completion(
                run,
                s3_client,
                kafka_bootstrap,
                bucket,
                topic,
                group,
                {f"{topic}/{rel}": data for rel, data in files.items()},
            )
            rc = up.quit("quit", 60)
        finally:
            up.kill()
        assert rc == 0, f"our DataFileUploadDirectory exited {rc}:\n{tail(up.output())}"
        assert "Encrypting with KafkaCrypto node" in up.output()
        assert keys_saved(nodes[node_named_in(nodes, "producer")])
        raw = read_raw(kafka_bootstrap, topic)
        assert len(raw) == sum(max(1, -(-len(data) // CHUNK)) for data in files.values())
        assert_no_plaintext(raw, topic, marker, [Path(rel).name for rel in files])


# --------------------------------------------------------------------- the hold, as a unit


@dataclass
class FakeMessage:
    p: int
    o: int
    v: bytes | None

    def partition(self) -> int:
        return self.p

    def offset(self) -> int:
        return self.o

    def value(self) -> bytes | None:
        return self.v

    def error(self) -> None:
        return None

    def __len__(self) -> int:
        return len(self.v or b"")


class FakeNode:
    """Decrypts every value by dropping a b"enc:" prefix, except at offsets whose key
    has not come yet."""

    def __init__(self) -> None:
        self.missing: set[tuple[int, int]] = set()
        self.calls: list[tuple[int, int]] = []
        self.waited_out_parts: list[Any] = []

    def decrypt(
        self,
        topic: str,
        partition: int,
        offset: int,
        key: bytes | None,
        value: bytes,
        *,
        max_wait: float | None = None,
    ) -> Decrypted | NotYetDecryptable:
        assert max_wait == 0.0, "the loop must not wait inside decrypt"
        self.calls.append((partition, offset))
        if (partition, offset) in self.missing:
            return NotYetDecryptable(
                topic, partition, offset, ("value",), True, 0.0, "no key yet (test)"
            )
        return Decrypted(topic, partition, offset, None, value.removeprefix(b"enc:"))

    def wait_budget(self, parts: Any) -> float:
        return 60.0

    def waited_out(self, parts: Any) -> None:
        self.waited_out_parts.append(parts)


class SeekingConsumer:
    def __init__(self) -> None:
        self.seeks: list[tuple[int, int]] = []

    def seek(self, tp: TopicPartition) -> None:
        self.seeks.append((tp.partition, tp.offset))


class NoUploads:
    def handle(self, events: Any) -> None:
        pass


def test_the_loop_holds_the_first_undecryptable_message_and_never_commits_past_it(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    import logging
    import threading

    from s3transfer_stream.processor import ProcessorOptions
    from s3transfer_stream.processor.ledger import Ledger
    from s3transfer_stream.processor.loop import ConsumerLoop
    from s3transfer_stream.processor.options import Stats

    log = logging.getLogger("test_crypto.hold")
    ledger = Ledger(5 << 20, 64 << 20)
    node = FakeNode()
    stats = Stats()
    loop = ConsumerLoop(
        0,
        options=ProcessorOptions(bucket="b", topic="t", group_id="g", output_dir=tmp_path),
        settings={},
        incremental=False,
        ledger=ledger,
        uploader=NoUploads(),  # type: ignore[arg-type]
        stats=stats,
        log=log,
        stop=threading.Event(),
        crypto=node,  # type: ignore[arg-type]
    )
    loop.owned = {0, 1}
    for p in (0, 1):
        ledger.assigned(p, 0, None)
    consumer = SeekingConsumer()

    def batch(*spans: tuple[int, range]) -> list[Any]:
        # Values the ledger rejects as junk: each counts as read, so the commit
        # position is simply the next offset to read.
        return [FakeMessage(p, o, b"enc:junk") for p, offsets in spans for o in offsets]

    def committable() -> dict[int, int]:
        return {p: o for p, o, _ in ledger.commit_offsets([0, 1])}

    node.missing = {(0, 2)}
    with caplog.at_level(logging.INFO, logger=log.name):
        loop._handle_batch(consumer, batch((0, range(5)), (1, range(3))))
    # Partition 0 stops at the held message; nothing after it was even tried.
    assert (0, 3) not in node.calls and (0, 4) not in node.calls
    assert consumer.seeks == [(0, 2)]
    assert committable() == {0: 2, 1: 3}
    assert 0 in loop._rest_until and 1 not in loop._rest_until
    assert [m for m in caplog.messages if "partition 0 offset 2 not decryptable" in m], (
        caplog.messages
    )
    assert stats.messages_held == 1

    # Read ahead before the seek took effect: dropped without being tried.
    node.calls.clear()
    loop._handle_batch(consumer, batch((0, range(3, 5))))
    assert node.calls == [] and consumer.seeks[-1] == (0, 2)
    assert committable() == {0: 2, 1: 3}

    # Still missing on the retry: held again, logged once only.
    caplog.clear()
    with caplog.at_level(logging.INFO, logger=log.name):
        loop._handle_batch(consumer, batch((0, range(2, 5))))
    assert committable() == {0: 2, 1: 3}
    assert not [m for m in caplog.messages if "not decryptable" in m]
    assert loop.holds()[0][:2] == (0, 2)

    # Its wait budget passed: one warning, and the shorter budget from now on.
    loop._holds[0].warn_at = 0.0
    with caplog.at_level(logging.INFO, logger=log.name):
        loop._handle_batch(consumer, batch((0, range(2, 5))))
    warned = [r for r in caplog.records if "Still held after" in r.getMessage()]
    assert len(warned) == 1 and warned[0].levelno == logging.WARNING
    assert "offset 2" in warned[0].getMessage() and "never skipped" in warned[0].getMessage()
    assert node.waited_out_parts == [("value",)]
    assert committable() == {0: 2, 1: 3}

    # The key came: the same offsets go on, and the hold is gone.
    node.missing.clear()
    with caplog.at_level(logging.INFO, logger=log.name):
        loop._handle_batch(consumer, batch((0, range(2, 5))))
    assert committable() == {0: 5, 1: 3}
    assert loop.holds() == []
    assert any("t[0]@2 decrypted after being held" in m for m in caplog.messages)

    # A revoked partition forgets its hold: its next owner starts from the commit.
    node.missing = {(1, 3)}
    loop._handle_batch(consumer, batch((1, range(3, 4))))
    assert loop.holds()[0][:2] == (1, 3)
    loop._holds.pop(1)  # what _release does, without an uploader to tell
    assert loop.holds() == []


def test_a_plaintext_run_hands_the_batch_to_the_ledger_as_it_is(tmp_path: Path) -> None:
    import logging
    import threading

    from s3transfer_stream.processor import ProcessorOptions
    from s3transfer_stream.processor.ledger import Ledger
    from s3transfer_stream.processor.loop import ConsumerLoop
    from s3transfer_stream.processor.options import Stats

    fed: list[Any] = []

    class SpyLedger(Ledger):
        def feed(self, messages: Any, reader: int = 0) -> Any:
            fed.append(messages)
            return super().feed(messages, reader)

    loop = ConsumerLoop(
        0,
        options=ProcessorOptions(bucket="b", topic="t", group_id="g", output_dir=tmp_path),
        settings={},
        incremental=False,
        ledger=SpyLedger(5 << 20, 64 << 20),
        uploader=NoUploads(),  # type: ignore[arg-type]
        stats=Stats(),
        log=logging.getLogger("test_crypto.plain"),
        stop=threading.Event(),
    )
    msgs: list[Any] = [FakeMessage(0, o, b"\x01not decrypted") for o in range(3)]
    loop._handle_batch(SeekingConsumer(), msgs)
    assert fed == [msgs] and fed[0] is msgs


@pytest.mark.integration
def test_plaintext_chunks_in_an_encrypted_run_are_held_unless_treated_as_plaintext(
    encrypted: Encrypted,
    s3_client: Any,
    new_bucket: Any,
    new_topic: Any,
    kafka_bootstrap: str,
    tmp_path: Path,
) -> None:
    topic = new_topic(1)
    src = tmp_path / "src"
    src.mkdir()
    data = random.Random(5).randbytes(3 * CHUNK + 1)
    (src / "plain.bin").write_bytes(data)
    n = produce(
        kafka_bootstrap, topic, [(k, v, 0) for k, v in encoded_chunks(src, "plain.bin", CHUNK)]
    )
    bucket = new_bucket()
    group = f"g-{uuid.uuid4().hex[:8]}"
    cfg = processor_config(encrypted.nodes, node_named(encrypted, "consumer"))
    waits = ("--max_initial_wait_per_decrypt", "1", "--max_wait_per_decrypt", "1")
    run = ProcessorRun(
        bucket, topic, group, tmp_path / "out", "--config", str(cfg), *waits, tag="held"
    )
    try:
        run.wait_for(lambda: bool(still_held(run.stderr(), topic, 0, 0)), 60, "a held warning")
        rc = run.quit(60)
    finally:
        if run.proc.poll() is None:
            run.proc.kill()
    log = run.stderr()
    assert rc == 0, tail(log)
    assert "ERROR: message at topic" in log and "no key can ever open it" in log
    assert "--treat_undecryptable_as_plaintext" in log
    assert committed_offsets(kafka_bootstrap, topic, group) == {}
    assert list_objects(s3_client, bucket) == {}

    passing = ProcessorRun(
        bucket,
        topic,
        group,
        tmp_path / "out",
        *("--config", str(cfg), "--treat_undecryptable_as_plaintext"),
        tag="passing",
    )
    log = run_to_completion(
        passing, s3_client, kafka_bootstrap, bucket, topic, group, {f"{topic}/plain.bin": data}
    )
    assert committed_offsets(kafka_bootstrap, topic, group) == {0: n}
    assert "not decryptable" not in log


def test_the_processor_stops_at_start_naming_a_missing_node(tmp_path: Path) -> None:
    from s3transfer_stream.cli.common import EXIT_USAGE

    cfg = tmp_path / "enc.config"
    cfg.write_text(
        "[broker]\nbootstrap.servers = 127.0.0.1:1\n[consumer]\ngroup.id = g\n"
        "[s3]\naccess_key_id = a\nsecret_key_id = b\nendpoint_url = http://127.0.0.1:1\n"
        "region = r\n[kafkacrypto]\nnode_id = nowhere\n"
    )
    res = subprocess.run(
        [
            *(sys.executable, "-m", "s3transfer_stream.cli.processor", "bkt"),
            *("--config", str(cfg), "--output_dir", str(tmp_path / "out")),
        ],
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
        timeout=60,
    )
    assert res.returncode == EXIT_USAGE, res.stderr
    assert "node_id = 'nowhere'" in res.stderr and str(cfg) in res.stderr
    assert "nowhere/nowhere.config" in res.stderr
