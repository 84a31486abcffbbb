"""docs/configuration.md is generated from the code and must be up to date; the
config schema it is generated from must say what the code does."""

from __future__ import annotations

import logging
from pathlib import Path

from s3transfer_stream import config, docs_gen, heartbeats, kafka
from s3transfer_stream.processor import loop

ROOT = Path(__file__).resolve().parent.parent
CONFIGURATION = ROOT / docs_gen.DEFAULT_OUTPUT


def _keys(section: str) -> dict[str, config.ConfigKey]:
    return {entry.key: entry for entry in config.CONFIG_KEYS if entry.section == section}


def test_configuration_md_is_up_to_date() -> None:
    current = CONFIGURATION.read_text(encoding="utf-8") if CONFIGURATION.exists() else ""
    assert current == docs_gen.render(), (
        f"{CONFIGURATION.relative_to(ROOT)} is out of date: regenerate it with "
        f"`{docs_gen.COMMAND}` (run in {ROOT}) and commit the result"
    )


def test_check_mode_reports_a_stale_file(tmp_path: Path) -> None:
    stale = tmp_path / "configuration.md"
    stale.write_text("old\n", encoding="utf-8")
    assert docs_gen.main(["--check", "--output", str(stale)]) == 1
    assert docs_gen.main(["--output", str(stale)]) == 0
    assert docs_gen.main(["--check", "--output", str(stale)]) == 0


def test_every_option_of_every_program_is_documented() -> None:
    text = docs_gen.render()
    for _program, build in docs_gen.PROGRAMS:
        for action in build()._actions:
            for option in action.option_strings:
                if option not in ("-h", "--help"):
                    assert f"`{option}`" in text or f"{option}`" in text, option


def test_schema_sections_are_the_ones_loaded() -> None:
    names = [section.name for section in config.CONFIG_SECTIONS]
    assert set(config._KAFKA_SECTIONS) | set(config._SIDE_SECTIONS) | {"s3"} <= set(names)
    assert {entry.section for entry in config.CONFIG_KEYS} <= set(names)
    assert [k for k, v in _keys("s3").items() if v.required] == list(config._S3_KEYS)


def test_schema_consumer_defaults_match_the_consumer_settings() -> None:
    settings, _ = loop.consumer_settings({}, logging.getLogger("test"), warn=False)
    documented = _keys("consumer")
    for key, value in settings.items():
        assert key in documented, f"[consumer] {key} is set by the code but not in CONFIG_KEYS"
        assert documented[key].default == value, key
    for key in loop.CONSUMER_PROTOCOL_FORBIDDEN[:3]:
        assert key in documented["group.protocol"].meaning


def test_schema_producer_defaults_match_the_producer_settings() -> None:
    settings = kafka.producer_settings({"bootstrap.servers": "x:9092"})
    documented = _keys("producer")
    for key in settings:
        if key == "bootstrap.servers":
            continue
        assert key in documented, f"[producer] {key} is set by the code but not in CONFIG_KEYS"
        assert documented[key].default, key
    assert documented["linger.ms"].default == settings["linger.ms"]
    assert documented["compression.type"].default == settings["compression.type"]
    assert str(kafka.DEFAULT_QUEUE_KBYTES) in documented["queue.buffering.max.kbytes"].default
    assert str(kafka.CHUNK_MESSAGE_OVERHEAD) in documented["message.max.bytes"].default
    assert str(kafka._LIBRDKAFKA_DEFAULT_MESSAGE_MAX) in documented["message.max.bytes"].default


def test_schema_heartbeat_and_log_keys_match_heartbeats_module() -> None:
    for section in ("heartbeat", "log"):
        assert heartbeats._SEPARATE in _keys(section)
    log_keys = _keys("log")
    for key in heartbeats._LOG_KEYS:
        assert key in log_keys
    assert log_keys["max.logs.per.message"].default == str(heartbeats.DEFAULT_MAX_LOGS)


def test_cli_types_all_have_descriptions() -> None:
    # render() raises for an argparse type it cannot describe; this names the types.
    for _program, build in docs_gen.PROGRAMS:
        for action in build()._actions:
            if action.nargs != 0 and action.choices is None:
                assert action.type in docs_gen._TYPES, (action.dest, action.type)
