"""Generates ``docs/configuration.md`` from the code: the config file's sections and
keys from :data:`s3transfer_stream.config.CONFIG_SECTIONS` and
:data:`~s3transfer_stream.config.CONFIG_KEYS`, and the options of the three programs
from their argparse parsers (``build_parser()`` of each ``cli`` module).

    python -m s3transfer_stream.docs_gen              # writes docs/configuration.md
    python -m s3transfer_stream.docs_gen --check      # exit status 1 if it is out of date

``tests/test_docs.py`` runs the check.
"""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from . import config
from .cli import common
from .cli import processor as processor_cli
from .cli import upload_directory as upload_directory_cli
from .cli import upload_file as upload_file_cli

__all__ = ["COMMAND", "DEFAULT_OUTPUT", "main", "render"]

#: The command that regenerates the file (named in the file and by the test).
COMMAND = ".venv/bin/python -m s3transfer_stream.docs_gen"
#: Where the file goes, relative to the repository root.
DEFAULT_OUTPUT = Path("docs") / "configuration.md"

PROGRAMS: tuple[tuple[str, Callable[[], argparse.ArgumentParser]], ...] = (
    (processor_cli.PROGRAM, processor_cli.build_parser),
    (upload_file_cli.PROG, upload_file_cli.build_parser),
    (upload_directory_cli.PROG, upload_directory_cli.build_parser),
)

# How each argparse ``type`` reads in the table. A type not listed here is an error,
# so that a new one gets a description instead of a function name.
_TYPES: dict[Any, str] = {
    None: "text",
    str: "text",
    int: "integer",
    float: "number",
    Path: "path",
    common.positive_int: "integer ≥ 1",
    common.non_negative_float: "number ≥ 0",
    common.positive_float: "number > 0",
    common.port_number: "port (0-65535)",
    common.chunk_size: f"power of two ≤ {common.MAX_CHUNK_SIZE}",
    common.existing_file: "path of an existing file",
    common.existing_dir: "path of an existing directory",
    common.regex: "regular expression",
    common._level: "log level (name or integer ≥ 0)",
    processor_cli.bucket_name: "S3 bucket name",
}

_ENVIRONMENT = (
    (
        config.CONFIG_DIR_ENV,
        "directory searched first for a config file given by name (--config)",
    ),
    (
        config.UPSTREAM_CONFIG_DIR_ENV,
        f"OpenMSIStream's variable for the same, used when ${config.CONFIG_DIR_ENV} is not set",
    ),
    (
        "LOCAL_KAFKA_BROKER_BOOTSTRAP_SERVERS",
        "the broker of the packaged configs (`local`, the default, and "
        "`local_broker_test_s3_transfer`)",
    ),
    (
        "ACCESS_KEY_ID, SECRET_KEY_ID, ENDPOINT_URL, REGION",
        "the [s3] settings of the packaged configs",
    ),
)


def _cell(text: str) -> str:
    """One Markdown table cell: a single line, with ``|`` escaped."""
    return " ".join(text.split()).replace("|", "\\|")


def _code(text: str) -> str:
    return f"`{text}`" if text else ""


def _type(action: argparse.Action) -> str:
    if action.nargs == 0:
        return "flag"
    if action.choices is not None:
        return "one of " + ", ".join(f"`{choice}`" for choice in action.choices)
    try:
        return _TYPES[action.type]
    except (KeyError, TypeError):
        raise ValueError(
            f"{action.dest}: argparse type {action.type!r} has no description in "
            "s3transfer_stream.docs_gen._TYPES"
        ) from None


def _default(action: argparse.Action) -> str:
    if not action.option_strings and action.nargs not in ("?", "*"):
        return "required"
    if action.nargs == 0:
        return "off"
    if action.default is None or action.default == "":
        return "none"
    if action.default is argparse.SUPPRESS:
        return ""
    return f"`{action.default}`"


def _help(action: argparse.Action) -> str:
    text = action.help or ""
    if "%(" in text:
        text = text % {"default": action.default, "prog": "", "dest": action.dest}
    return text


def _group_notes(parser: argparse.ArgumentParser) -> dict[int, str]:
    """The titles of the parser's own argument groups, by action."""
    notes: dict[int, str] = {}
    for group in parser._action_groups[2:]:
        for action in group._group_actions:
            notes[id(action)] = group.title or ""
    return notes


def _options_table(parser: argparse.ArgumentParser) -> list[str]:
    lines = ["| option | type | default | meaning |", "|---|---|---|---|"]
    notes = _group_notes(parser)
    for action in parser._actions:
        if isinstance(action, argparse._HelpAction | argparse._VersionAction):
            continue
        meaning = _help(action)
        if id(action) in notes:
            meaning = f"{meaning}: {notes[id(action)]}"
        name = ", ".join(action.option_strings) or action.dest
        if not action.option_strings:
            name += " (positional)"
        lines.append(
            f"| {_code(name)} | {_cell(_type(action))} | {_cell(_default(action))} "
            f"| {_cell(meaning)} |"
        )
    return lines


def _description(parser: argparse.ArgumentParser) -> list[str]:
    paragraphs = re.split(r"\n\s*\n", (parser.description or "").strip())
    out: list[str] = []
    for paragraph in paragraphs:
        out.extend([" ".join(paragraph.split()), ""])
    return out


def _config_part() -> list[str]:
    lines = [
        "## The config file",
        "",
        "An INI file in OpenMSIStream's format, read with Python's `configparser`: "
        "`[section]` headers, `key = value` lines, keys lowercased, `%` interpolation "
        "(write a literal `%` as `%%`). `--config` takes a path, or a name looked up (with "
        "`.config` appended when it has no `.`) in the directories named by the variables "
        "below and then among the packaged configs (`python/s3transfer_stream/config_files/`).",
        "",
        "**Environment variables in values.** A value that starts with `$` names environment "
        "variables (`$NAME`, `${NAME}`, `$NAME/suffix`) and is replaced by their values. An "
        "unset variable is an error that names the file, section, key and variable, never a "
        "value. Keep secrets (S3 keys, SASL passwords) in the environment, e.g. a systemd "
        "`EnvironmentFile=` or a Kubernetes secret, and only their names in the file. Other "
        "values are taken as they are. Values stay text (confluent-kafka accepts them).",
        "",
        "**Secrets are never shown.** The [s3] `access_key_id` and `secret_key_id` and every Kafka key whose name contains "
        + ", ".join(f"`{part}`" for part in config._SECRET_KEY_PARTS)
        + " are hidden (`***`) wherever a loaded config is printed.",
        "",
        "**Sections.** A section a program needs ([broker] and [producer] for the producers; "
        "[consumer] and [s3] for the processor) is checked strictly. Another [producer], "
        "[consumer] or [s3] section that cannot be loaded (say, it names a variable only the "
        "other side sets) is dropped with a note. [broker], [heartbeat] and [log] are always "
        "checked strictly.",
        "",
        "| section | meaning |",
        "|---|---|",
    ]
    for section in config.CONFIG_SECTIONS:
        lines.append(f"| `[{section.name}]` | {_cell(section.meaning)} |")
    lines += [
        "",
        "### Keys we read or set",
        "",
        "Every other key of [broker], [producer], [consumer], [heartbeat] and [log] goes to "
        "confluent-kafka unchanged (see librdkafka's CONFIGURATION.md). A default is what "
        "applies when the file does not set the key; a key with an only-value accepts "
        "nothing else.",
        "",
        "| section | key | required | default | only value | meaning |",
        "|---|---|---|---|---|---|",
    ]
    for key in config.CONFIG_KEYS:
        lines.append(
            f"| `[{key.section}]` | `{key.key}` | {'yes' if key.required else 'no'} "
            f"| {_cell(key.default)} | {_code(key.only)} | {_cell(key.meaning)} |"
        )
    lines += [
        "",
        "### Environment variables",
        "",
        "| variable | meaning |",
        "|---|---|",
    ]
    for name, meaning in _ENVIRONMENT:
        names = ", ".join(f"`{part.strip()}`" for part in name.split(","))
        lines.append(f"| {names} | {_cell(meaning)} |")
    return lines


def render() -> str:
    """The text of ``docs/configuration.md``."""
    lines = [
        "# Configuration reference",
        "",
        f"<!-- Generated from the code by `{COMMAND}`; do not edit by hand. -->",
        "",
        "Generated from the config schema (`python/s3transfer_stream/config.py`) and the "
        "three programs' argument parsers (`python/s3transfer_stream/cli/`). How to run the "
        "programs is in [operations.md](operations.md); what differs from OpenMSIStream is in "
        "[compatibility.md](compatibility.md).",
        "",
        *_config_part(),
        "",
        "## Command-line options",
        "",
        "Options keep OpenMSIStream's spelling (`--name_with_underscores`) and cannot be "
        "abbreviated. A usage or config error prints one line and exits with status 2.",
    ]
    for program, build in PROGRAMS:
        parser = build()
        lines += ["", f"### {program}", "", *_description(parser), *_options_table(parser)]
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m s3transfer_stream.docs_gen", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument(
        "--output", type=Path, default=DEFAULT_OUTPUT, help="the file to write or check"
    )
    parser.add_argument(
        "--check", action="store_true", help="only check that the file is up to date"
    )
    args = parser.parse_args(argv)
    text = render()
    if args.check:
        current = args.output.read_text(encoding="utf-8") if args.output.exists() else ""
        if current != text:
            print(f"{args.output} is out of date; regenerate it with {COMMAND}", file=sys.stderr)
            return 1
        return 0
    args.output.write_text(text, encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
