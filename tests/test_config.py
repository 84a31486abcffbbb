"""Config files in OpenMSIStream's format: lookup, expansion, checks, secrets."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest
from s3transfer_stream.config import (
    PACKAGED_CONFIG_DIR,
    S3Settings,
    TransferConfig,
    load_config,
    resolve_config_path,
)
from s3transfer_stream.errors import ConfigError

SECRET = "s3cr3t-V4lue-never-shown"
ACCESS = "AKIA-access-key-never-shown"
SASL = "sasl-pa55word-never-shown"

ENV_VARS = (
    "S3TRANSFER_STREAM_CONFIG_DIR",
    "OPENMSISTREAM_CONFIG_FILE_DIR",
    "LOCAL_KAFKA_BROKER_BOOTSTRAP_SERVERS",
    "ACCESS_KEY_ID",
    "SECRET_KEY_ID",
    "ENDPOINT_URL",
    "REGION",
    "CFG_TEST_UNSET",
)

FULL = """\
[broker]
bootstrap.servers = $LOCAL_KAFKA_BROKER_BOOTSTRAP_SERVERS
node_id = abc

[producer]
batch.size = 2000000
linger.ms = 100
compression.type = lz4
key.serializer = StringSerializer
value.serializer = DataFileChunkSerializer

[consumer]
group.id = create_new
auto.offset.reset = earliest
enable.auto.commit = False
fetch.min.bytes = 100000
key.deserializer = StringDeserializer
value.deserializer = DataFileChunkDeserializer

[s3]
access_key_id = $ACCESS_KEY_ID
secret_key_id = $SECRET_KEY_ID
endpoint_url = $ENDPOINT_URL
region = $REGION
"""


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ENV_VARS:
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def s3_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LOCAL_KAFKA_BROKER_BOOTSTRAP_SERVERS", "127.0.0.1:9092")
    monkeypatch.setenv("ACCESS_KEY_ID", ACCESS)
    monkeypatch.setenv("SECRET_KEY_ID", SECRET)
    monkeypatch.setenv("ENDPOINT_URL", "http://127.0.0.1:8333")
    monkeypatch.setenv("REGION", "us-east-1")


def write(tmp_path: Path, text: str, name: str = "my.config") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def assert_no_secret(text: str) -> None:
    for secret in (SECRET, ACCESS, SASL):
        assert secret not in text


# --------------------------------------------------------------------------- lookup


def test_missing_file_names_every_place_searched(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("S3TRANSFER_STREAM_CONFIG_DIR", str(tmp_path / "ours"))
    with pytest.raises(ConfigError) as info:
        resolve_config_path("nosuch")
    message = str(info.value)
    assert "'nosuch'" in message
    assert str(tmp_path / "ours" / "nosuch.config") in message
    assert str(PACKAGED_CONFIG_DIR / "nosuch.config") in message
    assert "nosuch," in message  # the name tried as a path first
    with pytest.raises(ConfigError, match="nosuch"):
        load_config("nosuch")


def test_existing_path_is_used_as_is(tmp_path: Path, s3_env: None) -> None:
    path = write(tmp_path, FULL, name="settings.ini")
    assert resolve_config_path(str(path)) == path.resolve()
    assert load_config(str(path)).path == path.resolve()


def test_packaged_configs(s3_env: None) -> None:
    for name in ("local", "local_broker_test_s3_transfer", "local.config"):
        config = load_config(name, require=("broker", "producer", "consumer", "s3"))
        assert config.path.parent == PACKAGED_CONFIG_DIR
        assert config.producer["bootstrap.servers"] == "127.0.0.1:9092"
        assert config.producer["batch.size"] == "2000000"
        assert config.producer["linger.ms"] == "100"
        assert config.producer["compression.type"] == "lz4"
        assert config.consumer["auto.offset.reset"] == "earliest"
        assert config.consumer["enable.auto.commit"] == "False"
        assert config.consumer["fetch.min.bytes"] == "100000"
        assert config.s3 == S3Settings(ACCESS, SECRET, "http://127.0.0.1:8333", "us-east-1")
        assert config.warnings() == []
    assert load_config("local").producer["message.max.bytes"] == "67108864"


def test_env_dirs_and_their_order(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    ours, upstream = tmp_path / "ours", tmp_path / "upstream"
    ours.mkdir()
    upstream.mkdir()
    write(ours, "[broker]\nbootstrap.servers = ours:1\n", name="x.config")
    write(upstream, "[broker]\nbootstrap.servers = upstream:1\n", name="x.config")
    write(upstream, "[broker]\nbootstrap.servers = upstream:2\n", name="only_upstream.config")

    monkeypatch.setenv("OPENMSISTREAM_CONFIG_FILE_DIR", str(upstream))
    assert load_config("x").broker["bootstrap.servers"] == "upstream:1"
    assert resolve_config_path("only_upstream") == (upstream / "only_upstream.config").resolve()

    monkeypatch.setenv("S3TRANSFER_STREAM_CONFIG_DIR", str(ours))
    assert load_config("x").broker["bootstrap.servers"] == "ours:1"
    # Only the first set variable is searched, then the packaged files.
    with pytest.raises(ConfigError, match="only_upstream"):
        resolve_config_path("only_upstream")
    assert resolve_config_path("local") == (PACKAGED_CONFIG_DIR / "local.config").resolve()


# --------------------------------------------------------------------------- sections and keys


def test_missing_required_section(tmp_path: Path, s3_env: None) -> None:
    path = write(tmp_path, "[broker]\nbootstrap.servers = b:1\n[producer]\nlinger.ms = 5\n")
    with pytest.raises(ConfigError) as info:
        load_config(str(path), require=("consumer", "s3"))
    message = str(info.value)
    assert str(path) in message
    assert "[consumer]" in message and "[s3]" in message
    assert load_config(str(path), require=("producer",)).producer["linger.ms"] == "5"


def test_missing_s3_key(tmp_path: Path, s3_env: None) -> None:
    path = write(tmp_path, FULL.replace("region = $REGION\n", ""))
    with pytest.raises(ConfigError) as info:
        load_config(str(path), require=("s3",))
    assert str(path) in str(info.value)
    assert "region" in str(info.value)
    assert_no_secret(str(info.value))


def test_unset_variable_names_file_section_key_and_variable(
    tmp_path: Path, s3_env: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("REGION")
    path = write(tmp_path, FULL)
    with pytest.raises(ConfigError) as info:
        load_config(str(path), require=("consumer", "s3"))
    message = str(info.value)
    assert str(path) in message
    assert "[s3]" in message and "region" in message and "$REGION" in message
    assert_no_secret(message)

    broker = write(tmp_path, "[broker]\nbootstrap.servers = ${CFG_TEST_UNSET}\n", "b.config")
    with pytest.raises(ConfigError, match=r"\[broker\] bootstrap.servers .*\$CFG_TEST_UNSET"):
        load_config(str(broker))


def test_unneeded_section_with_unset_variable_does_not_block(
    tmp_path: Path, s3_env: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A producer using a file whose [s3] needs variables only the processor sets.
    monkeypatch.delenv("SECRET_KEY_ID")
    path = write(tmp_path, FULL)
    config = load_config(str(path), require=("producer",))
    assert config.s3 is None
    assert config.producer["bootstrap.servers"] == "127.0.0.1:9092"
    assert any("[s3] not loaded" in w and "$SECRET_KEY_ID" in w for w in config.warnings())
    assert_no_secret(" ".join(config.warnings()))


def test_variable_expansion_forms(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CFG_HOST", "kafka.example")
    monkeypatch.setenv("CFG_DIR", "/etc/certs")
    path = write(
        tmp_path,
        "[broker]\n"
        "bootstrap.servers = $CFG_HOST\n"
        "sasl.mechanism = ${CFG_HOST}\n"
        "ssl.ca.location = $CFG_DIR/ca.pem\n"
        "client.id = id-$CFG_HOST\n",
    )
    broker = load_config(str(path)).broker
    assert broker["bootstrap.servers"] == "kafka.example"
    assert broker["sasl.mechanism"] == "kafka.example"
    assert broker["ssl.ca.location"] == "/etc/certs/ca.pem"
    assert broker["client.id"] == "id-$CFG_HOST"  # only values starting with $ are expanded


def test_percent_interpolation(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "[broker]\nbootstrap.servers = b:1\nsasl.password = 100%%sure\n"
        "base = x\nclient.id = %(base)s-client\n",
    )
    broker = load_config(str(path)).broker
    assert broker["sasl.password"] == "100%sure"
    assert broker["client.id"] == "x-client"

    bad = write(tmp_path, f"[broker]\nsasl.password = {SASL}%\n", name="bad.config")
    with pytest.raises(ConfigError) as info:
        load_config(str(bad))
    assert "%%" in str(info.value) and "sasl.password" in str(info.value)
    assert_no_secret(str(info.value))


def test_keys_lowercased_values_kept_as_strings(tmp_path: Path) -> None:
    path = write(tmp_path, "[producer]\nBatch.Size = 2000000\nenable.idempotence = True\n")
    producer = load_config(str(path)).producer
    assert producer == {"batch.size": "2000000", "enable.idempotence": "True"}


def test_broker_merged_into_producer_and_consumer(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "[broker]\nbootstrap.servers = b:1\nsecurity.protocol = PLAINTEXT\nnode_id = n1\n"
        "[producer]\nsecurity.protocol = SSL\nnode_id = n2\n"
        "[consumer]\ngroup.id = g\nnode_id = n3\n",
    )
    config = load_config(str(path))
    assert config.broker == {"bootstrap.servers": "b:1", "security.protocol": "PLAINTEXT"}
    assert config.producer == {"bootstrap.servers": "b:1", "security.protocol": "SSL"}
    assert config.consumer == {
        "bootstrap.servers": "b:1",
        "security.protocol": "PLAINTEXT",
        "group.id": "g",
    }
    assert config.sections == frozenset({"broker", "producer", "consumer"})


def test_create_new_group_and_offset_reset_none(tmp_path: Path) -> None:
    path = write(tmp_path, "[consumer]\ngroup.id = CREATE_NEW\nauto.offset.reset = none\n")
    first, second = load_config(str(path)), load_config(str(path))
    group = first.consumer["group.id"]
    assert uuid.UUID(group).version == 1
    assert first.consumer_settings(None)["group.id"] == group
    assert first.consumer_settings("create_new")["group.id"] == group
    assert group != second.consumer["group.id"]
    assert "auto.offset.reset" not in first.consumer


def test_command_line_group_always_wins(tmp_path: Path) -> None:
    path = write(tmp_path, "[broker]\nbootstrap.servers = b:1\n[consumer]\ngroup.id = from_file\n")
    config = load_config(str(path))
    assert config.consumer_settings(None)["group.id"] == "from_file"
    assert config.consumer_settings("from_cli")["group.id"] == "from_cli"
    fresh = config.consumer_settings("create_new")["group.id"]
    assert uuid.UUID(fresh).version == 1
    # One run, one group: every consumer thread asking again gets the same UUID.
    assert config.consumer_settings("Create_New")["group.id"] == fresh
    assert config.effective_group_id("create_new") == fresh == config.fresh_group_id
    assert config.effective_group_id(None) == "from_file"
    assert config.effective_group_id("cli") == "cli"
    assert load_config(str(path)).effective_group_id("create_new") != fresh
    assert config.consumer["group.id"] == "from_file"  # settings are copies

    no_group = load_config(str(write(tmp_path, "[consumer]\nfetch.min.bytes = 1\n", "n.config")))
    with pytest.raises(ConfigError, match=r"group\.id"):
        no_group.consumer_settings(None)
    assert no_group.consumer_settings("g")["group.id"] == "g"


def test_serializers_accepted_and_removed(tmp_path: Path, s3_env: None) -> None:
    config = load_config(str(write(tmp_path, FULL)), require=("producer", "consumer"))
    for settings in (config.producer, config.consumer):
        for key in ("key.serializer", "value.serializer", "key.deserializer", "value.deserializer"):
            assert key not in settings


@pytest.mark.parametrize(
    ("section", "line", "expected"),
    [
        ("producer", "value.serializer = IntegerSerializer", "DataFileChunkSerializer"),
        ("producer", "key.serializer = DataFileChunkSerializer", "StringSerializer"),
        ("consumer", "value.deserializer = DoubleDeserializer", "DataFileChunkDeserializer"),
        ("consumer", "key.deserializer = my.module.Thing", "StringDeserializer"),
    ],
)
def test_bad_serializer(tmp_path: Path, section: str, line: str, expected: str) -> None:
    path = write(tmp_path, f"[broker]\nbootstrap.servers = b:1\n[{section}]\n{line}\n")
    with pytest.raises(ConfigError) as info:
        load_config(str(path), require=(section,))
    message = str(info.value)
    assert str(path) in message
    assert f"[{section}] {line.split(' = ')[0]}" in message
    assert f"only {expected} is supported" in message


def test_endpoint_gets_https_scheme(
    tmp_path: Path, s3_env: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ENDPOINT_URL", "s3.example.org:9000")
    config = load_config(str(write(tmp_path, FULL)), require=("s3",))
    assert config.s3 is not None
    assert config.s3.endpoint_url == "https://s3.example.org:9000"


def test_malformed_file_errors_do_not_show_lines(tmp_path: Path) -> None:
    no_header = write(tmp_path, f"sasl.password = {SASL}\n[broker]\n", "a.config")
    with pytest.raises(ConfigError, match="line 1") as info:
        load_config(str(no_header))
    assert_no_secret(str(info.value))
    garbage = write(tmp_path, f"[broker]\n{SASL}\n", "b.config")
    with pytest.raises(ConfigError, match="lines that are not 'key = value': 2") as info:
        load_config(str(garbage))
    assert_no_secret(str(info.value))


# --------------------------------------------------------------------------- secrets, warnings


def test_secrets_never_leak(tmp_path: Path, s3_env: None) -> None:
    path = write(tmp_path, FULL.replace("[broker]\n", f"[broker]\nsasl.password = {SASL}\n"))
    config = load_config(str(path), require=("producer", "consumer", "s3"))
    assert config.s3 is not None
    assert config.s3.secret_key_id == SECRET and config.s3.access_key_id == ACCESS
    for text in (repr(config.s3), str(config.s3), repr(config), str(config), f"{config.s3}"):
        assert_no_secret(text)
    assert "***" in repr(config.s3) and "http://127.0.0.1:8333" in repr(config.s3)
    assert config.producer["sasl.password"] == SASL  # still handed to confluent-kafka

    errors: list[str] = []
    for broken in (
        FULL.replace("region = $REGION\n", ""),
        FULL.replace("region = $REGION", "region = $CFG_TEST_UNSET"),
        FULL.replace("endpoint_url = $ENDPOINT_URL", "endpoint_url ="),
        FULL.replace(
            "value.serializer = DataFileChunkSerializer", "value.serializer = $SECRET_KEY_ID"
        ),
    ):
        with pytest.raises(ConfigError) as info:
            load_config(str(write(tmp_path, broken, "broken.config")), require=("producer", "s3"))
        errors.append(str(info.value))
    for message in errors:
        assert_no_secret(message)
    assert len(set(errors)) == len(errors)


def test_warnings(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "[broker]\nbootstrap.servers = b:1\n[consumer]\ngroup.id = g\nenable.auto.commit = true\n"
        "[kafkacrypto]\nnode_id = n\n[heartbeat]\nx = 1\n",
    )
    config = load_config(str(path))
    warnings = config.warnings()
    assert any(
        w.startswith(f"enable.auto.commit is not False in [consumer] of {config.path}: ")
        for w in warnings
    )
    # Both sides use [kafkacrypto] now (the producers encrypt): nothing to warn about.
    assert not any("[kafkacrypto]" in w for w in warnings)
    assert "heartbeat" in config.sections
    quiet = write(tmp_path, "[consumer]\ngroup.id = g\nenable.auto.commit = False\n", "q.config")
    assert load_config(str(quiet)).warnings() == []


def test_transfer_config_is_frozen(tmp_path: Path) -> None:
    config = load_config(str(write(tmp_path, "[broker]\nbootstrap.servers = b:1\n")))
    assert isinstance(config, TransferConfig)
    with pytest.raises(AttributeError):
        config.s3 = None  # type: ignore[misc]
