"""The file names of the registries and the transfer journal, and whose a name can be.

OpenMSIStream finds its per-thread files with the prefix glob ``<stem>*<suffix>``,
so the names it uses cannot tell every topic/group pair apart: group ``g`` takes
group ``g_t1``'s ``processed_from_x_by_g_t1.csv`` for a per-thread file of its own,
topic ``test``'s producer registry takes topic ``test_p1``'s ``uploaded_to_test_p1.csv``
for a per-producer file, and topic ``a_by_b``/group ``c`` and topic ``a``/group
``b_by_c`` have *the same* ``processed_from_a_by_b_by_c.csv``. This module therefore
sorts the files in ``LOGS/`` in three kinds:

1. **Files upstream reads keep upstream's names** (``processed_from_<topic>_by_<group>.csv``,
   ``consuming_from_<topic>_by_<group>_in_progress.csv``, ``upload_to_<topic>_in_progress.csv``,
   ``uploaded_to_<topic>.csv``), with byte-identical tables: upstream readers and the
   interop tests find them where they always were. Each is opened by its exact name.
2. **Files only we read have private, unambiguous names**: the per-thread processed
   files (``s3transfer-stream_processed_<T>_by_<G>_t<ident>[_<ts>].csv``), the transfer
   journal (``transfers_<T>_by_<G>.jsonl``) and the claim described below, where
   ``<T>``/``<G>`` are the topic and group percent-encoded (everything but ASCII
   letters, digits, ``.`` and ``-``, so ``_`` is ``%5F``): no ``_`` is left in either
   part, so the name determines the pair, and no OpenMSIStream file starts with
   ``s3transfer-stream_`` or ``transfers_``. Plain names (``lab``, ``g-42``) encode to
   themselves, so their journal keeps its name; a pair too long for a file name is
   replaced by a SHA-256 of it. Private files are found by exact name or by a
   regular expression that only that pair's names can match.
3. **Upstream-named files we merge and delete** (OpenMSIStream's per-thread and
   per-producer files, left by a crash of upstream or of an earlier version of this
   package; and upstream's in-progress file ``consuming_from_<topic>_in_progress_by_<group>.csv``,
   which is only read) are taken only if no other pair can claim them: every other
   reading of the name (e.g. "the processed file of group ``g_t1``") is looked up, and
   if that pair shows any sign of having used this directory -- its claim, its
   journal, or an in-progress file of its own whose name could not also be ours
   (OpenMSIStream and this package both create the in-progress file of every pair they
   run, at start, before anything else) -- the file is left alone with a warning.

Where upstream's own name is ambiguous (``processed_from_a_by_b_by_c.csv``, or an
in-progress name that is also another pair's legacy in-progress name), nothing in the
file can say whose it is without changing the table format, which must stay
upstream's byte for byte. So the pair writes a small **claim** next to it,
``s3transfer-stream_claim_<T>_by_<G>.json`` (its exact, private name; content for
humans: topic, group, the shared names), and a processor whose names are shared with
another pair that shows a sign of use (its claim, journal or unambiguous in-progress
file) **refuses to start** with an error that names the file and both readings,
rather than mixing two consumers' rows. Refusing is the only safe choice: the files
of the first pair are already in upstream's format and upstream's names, and any
renaming would hide them from upstream readers. The claim is created before the
check and removed again on refusal, so of two processors starting at the same moment
at most one goes on. Files with an ambiguous name that exist but are unclaimed (an
upstream run, or an earlier version of this package) are taken as ours with a
warning, unless the other reading shows a sign of use.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import string
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from .table import RegistryError

# One logger for the whole package: its name is in every JSON log line.
_LOG = logging.getLogger("s3transfer_stream.registry")

#: Every file of ours in ``LOGS/`` that OpenMSIStream does not read starts with this
#: (or with ``transfers_``, the journal); no OpenMSIStream file does.
PRIVATE_PREFIX = "s3transfer-stream_"
_PLAIN_CHARS = frozenset(string.ascii_letters + string.digits + ".-")
#: Longer encoded pairs are replaced by a hash so that names stay under 255 bytes.
_MAX_TOKEN = 150
#: What Kafka accepts as a topic name: a reading with another topic is impossible.
_KAFKA_TOPIC = re.compile(r"[A-Za-z0-9._-]{1,249}")

PROCESSED = "processed file"
_PER_THREAD = "per-thread processed file"
IN_PROGRESS = "in-progress file"
_LEGACY_IN_PROGRESS = "in-progress file (OpenMSIStream 1.8 name)"
# OpenMSIStream's names, each with the separator between topic and group.
_UPSTREAM_NAME_FORMS = (
    (re.compile(r"processed_from_(.+)\.csv", re.DOTALL), "_by_", PROCESSED),
    (
        re.compile(r"processed_from_(.+)_t\d+(?:_\d+_\d+)?\.csv", re.DOTALL),
        "_by_",
        _PER_THREAD,
    ),
    (re.compile(r"consuming_from_(.+)_in_progress\.csv", re.DOTALL), "_by_", IN_PROGRESS),
    (re.compile(r"consuming_from_(.+)\.csv", re.DOTALL), "_in_progress_by_", _LEGACY_IN_PROGRESS),
)


def check_name_part(what: str, value: str) -> None:
    """Refuse a topic or group that would not stay inside ``LOGS/`` as part of a name."""
    if not _is_name_part(value):
        raise RegistryError(
            f"the {what} {value!r} cannot be part of a registry file name "
            "(it is empty or contains a path separator or NUL)"
        )


def _encode_part(value: str) -> str:
    """``value`` percent-encoded: ASCII letters, digits, ``.`` and ``-`` stay, every
    other character (``_`` and ``%`` included) becomes its UTF-8 bytes as ``%XX``."""
    out: list[str] = []
    for char in value:
        if char in _PLAIN_CHARS:
            out.append(char)
        else:
            out.extend(f"%{byte:02X}" for byte in char.encode("utf-8", "surrogatepass"))
    return "".join(out)


def private_name_token(topic: str, group: str) -> str:
    """The part of our private file names that stands for ``topic`` and ``group``:
    ``<encoded topic>_by_<encoded group>`` (neither part holds a ``_``, so the token
    determines the pair), or ``h<sha-256>`` of the pair when that would be too long."""
    token = f"{_encode_part(topic)}_by_{_encode_part(group)}"
    if len(token) <= _MAX_TOKEN:
        return token
    digest = hashlib.sha256(f"{topic}\0{group}".encode("utf-8", "surrogatepass"))
    return f"h{digest.hexdigest()[:40]}"


def journal_name(topic: str, group: str) -> str:
    """File name of the transfer journal of ``topic`` and ``group`` (exact, private)."""
    return f"transfers_{private_name_token(topic, group)}.jsonl"


def claim_name(topic: str, group: str) -> str:
    return f"{PRIVATE_PREFIX}claim_{private_name_token(topic, group)}.json"


@dataclass(frozen=True, order=True)
class NameReading:
    """One way to read an OpenMSIStream registry file name: whose file it would be."""

    topic: str
    group: str
    kind: str

    def describe(self) -> str:
        return f"the {self.kind} of topic {self.topic!r} / group {self.group!r}"


def _splits(text: str, separator: str) -> list[tuple[str, str]]:
    """Every ``(before, after)`` of ``text`` around one occurrence of ``separator``."""
    found = []
    start = text.find(separator)
    while start != -1:
        found.append((text[:start], text[start + len(separator) :]))
        start = text.find(separator, start + 1)
    return found


def _is_name_part(value: str) -> bool:
    return bool(value) and not any(c in value for c in "/\\\0") and value not in (".", "..")


def name_readings(name: str) -> set[NameReading]:
    """Every topic/group pair (with a topic Kafka accepts) whose OpenMSIStream registry
    files (consolidated or per-thread processed file, in-progress file under our or
    upstream's 1.8 name) include a file called ``name``."""
    readings = set()
    for pattern, separator, kind in _UPSTREAM_NAME_FORMS:
        match = pattern.fullmatch(name)
        if match is None:
            continue
        for topic, group in _splits(match.group(1), separator):
            if _KAFKA_TOPIC.fullmatch(topic) and _is_name_part(group):
                readings.add(NameReading(topic, group, kind))
    return readings


def _pairs(readings: Iterable[NameReading]) -> set[tuple[str, str]]:
    return {(r.topic, r.group) for r in readings}


def is_file(path: Path) -> bool:
    try:
        return path.is_file()
    except OSError:  # e.g. a name too long for the file system: no such file
        return False


def _journal_topics(path: Path) -> set[str]:
    """The topics named by the object keys (``<topic>/<path>``) of a journal file."""
    topics = set()
    try:
        with open(path, encoding="utf-8", errors="replace") as handle:
            for line in handle:
                try:
                    key = json.loads(line)["key"]
                except (ValueError, KeyError, TypeError):
                    continue
                if isinstance(key, str) and "/" in key:
                    topics.add(key.split("/", 1)[0])
    except OSError:
        pass
    return topics


def sign_of_use(logs_dir: Path, topic: str, group: str, us: tuple[str, str]) -> Path | None:
    """A file showing that ``topic``/``group`` has used ``logs_dir``: its claim, its
    journal, an in-progress file (ours or upstream's, both are created at start) whose
    name could not also be one of ``us``'s, or a journal of an earlier version whose
    object keys name ``topic``. None if there is no such file."""
    candidates = [logs_dir / claim_name(topic, group), logs_dir / journal_name(topic, group)]
    for name in (
        f"consuming_from_{topic}_by_{group}_in_progress.csv",
        f"consuming_from_{topic}_in_progress_by_{group}.csv",
    ):
        if us not in _pairs(name_readings(name)):
            candidates.append(logs_dir / name)
    for path in candidates:
        if is_file(path):
            return path
    old_journal = logs_dir / f"transfers_{topic}_by_{group}.jsonl"
    if is_file(old_journal) and topic in _journal_topics(old_journal):
        return old_journal
    return None


def foreign_sign(
    logs_dir: Path, us: tuple[str, str], path: Path
) -> tuple[NameReading, Path] | None:
    """Another reading of the upstream name ``path`` whose pair has used ``logs_dir``
    (with the file showing it), or None: then the file is ``us``'s."""
    for other in sorted(name_readings(path.name)):
        if (other.topic, other.group) == us:
            continue
        sign = sign_of_use(logs_dir, other.topic, other.group, us)
        if sign is not None:
            return other, sign
    return None


def is_per_producer_file(logs_dir: Path, path: Path, completed: Path) -> bool:
    """False if ``path``, an upstream per-producer name of ``completed``'s topic, may be
    the completed file of the topic its name spells: every producer registry, upstream's
    and ours, creates its in-progress file at start, before it can write a completed
    file, so that file (or our version log) marks the topic as present."""
    other = path.name[len("uploaded_to_") : -len(".csv")]
    for sign in (
        logs_dir / f"upload_to_{other}_in_progress.csv",
        logs_dir / f"upload_to_{other}_versions.jsonl",
    ):
        if is_file(sign):
            _LOG.warning(
                "not merging %s into %s: it is also the completed file of topic %r, "
                "which has used this directory (%s exists)",
                path,
                completed,
                other,
                sign.name,
            )
            return False
    return True


def _old_journal_is_ours(path: Path, topic: str, group: str) -> bool:
    """Whether a journal under the name earlier versions used
    (``transfers_<topic>_by_<group>.jsonl``, ambiguous) belongs to ``topic``/``group``."""
    stem = path.name[len("transfers_") : -len(".jsonl")]
    readings = {
        (t, g) for t, g in _splits(stem, "_by_") if _KAFKA_TOPIC.fullmatch(t) and _is_name_part(g)
    }
    if readings <= {(topic, group)}:
        return True
    # Several pairs have this name; the object keys (<topic>/...) tell whose it is.
    return _journal_topics(path) == {topic}


def journal_path(logs_dir: Path, topic: str, group: str) -> Path:
    """Where the transfer journal of ``topic``/``group`` lives (:func:`journal_name`).

    A journal an earlier version left under the old, ambiguous name
    ``transfers_<topic>_by_<group>.jsonl`` is renamed to it when it is this pair's;
    one that may be another pair's is left alone (a warning says so)."""
    path = logs_dir / journal_name(topic, group)
    old = logs_dir / f"transfers_{topic}_by_{group}.jsonl"
    if old == path or is_file(path) or not is_file(old):
        return path
    if _old_journal_is_ours(old, topic, group):
        try:
            os.replace(old, path)
            _LOG.info("renamed the transfer journal %s to %s", old, path)
        except OSError as exc:
            _LOG.warning("could not rename the transfer journal %s to %s: %s", old, path, exc)
    else:
        _LOG.warning(
            "not using %s as the transfer journal of topic %r / group %r: its name is also "
            "that of another topic/group pair and its entries are not this topic's",
            old,
            topic,
            group,
        )
    return path


# --------------------------------------------------------------------------- registry paths


@dataclass(frozen=True)
class StreamRegistryPaths:
    """Where a :class:`StreamRegistry` keeps its files."""

    logs_dir: Path
    #: ``consuming_from_<topic>_by_<group>_in_progress.csv`` (OpenMSIStream's documented name).
    in_progress: Path
    #: ``consuming_from_<topic>_in_progress_by_<group>.csv`` (OpenMSIStream 1.8's, read only).
    legacy_in_progress: Path
    #: ``processed_from_<topic>_by_<group>.csv``, the consolidated processed file.
    processed: Path
    #: Matches the names of our per-thread processed files, and no other pair's.
    processed_pattern: re.Pattern[str]
    #: Matches OpenMSIStream's per-thread names of this pair (and, possibly, another
    #: pair's processed file: see :func:`name_readings`).
    legacy_processed_pattern: re.Pattern[str]
    #: ``s3transfer-stream_claim_<T>_by_<G>.json`` when an upstream name of this pair
    #: is also another pair's, else None.
    claim: Path | None
    #: Our per-thread files are ``<thread_file_stem>_t<ident>[_<ts>].csv``.
    thread_file_stem: str

    def processed_for_thread(self, ident: int) -> Path:
        return self.logs_dir / f"{self.thread_file_stem}_t{ident}.csv"


#: The upstream-named files of a pair that other pairs' names share, with those readings.
SharedNames = dict[Path, list[NameReading]]


def stream_registry_paths(
    logs_dir: Path, topic: str, group: str
) -> tuple[StreamRegistryPaths, SharedNames]:
    """The files of ``topic``/``group``'s stream registry, and which of the upstream-named
    ones we write are also another pair's (a claim is needed exactly when any are)."""
    in_progress = logs_dir / f"consuming_from_{topic}_by_{group}_in_progress.csv"
    processed = logs_dir / f"processed_from_{topic}_by_{group}.csv"
    us = (topic, group)
    shared = {
        path: sorted(r for r in name_readings(path.name) if (r.topic, r.group) != us)
        for path in (processed, in_progress)
    }
    shared = {path: others for path, others in shared.items() if others}
    thread_file_stem = f"{PRIVATE_PREFIX}processed_{private_name_token(topic, group)}"
    paths = StreamRegistryPaths(
        logs_dir=logs_dir,
        in_progress=in_progress,
        legacy_in_progress=logs_dir / f"consuming_from_{topic}_in_progress_by_{group}.csv",
        processed=processed,
        processed_pattern=re.compile(
            rf"^{re.escape(thread_file_stem)}_t\d+(_\d+_\d+)?\.csv$", re.DOTALL
        ),
        legacy_processed_pattern=re.compile(
            rf"^processed_from_{re.escape(topic)}_by_{re.escape(group)}_t\d+(_\d+_\d+)?\.csv$",
            re.DOTALL,
        ),
        claim=logs_dir / claim_name(topic, group) if shared else None,
        thread_file_stem=thread_file_stem,
    )
    return paths, shared


def claim_shared_names(
    paths: StreamRegistryPaths, topic: str, group: str, shared: SharedNames
) -> None:
    """Where an upstream name of ``topic``/``group`` is another pair's too: refuse
    (:class:`RegistryError`) if that pair has used the directory, else write our claim
    (see the module docstring)."""
    claim = paths.claim
    if claim is None:
        return
    us = (topic, group)
    existing = sorted(path.name for path in shared if is_file(path))
    created = False
    if not is_file(claim):
        record = {
            "topic": topic,
            "group": group,
            "files": sorted(path.name for path in shared),
            "why": "these OpenMSIStream file names are also another topic/group pair's; "
            "this pair uses them, so the other one is refused in this directory",
        }
        try:
            with open(claim, "x", encoding="utf-8") as handle:
                handle.write(json.dumps(record, ensure_ascii=False, indent=1) + "\n")
            created = True
        except FileExistsError:
            pass
    for path, others in shared.items():
        for other in others:
            if other.kind not in (PROCESSED, IN_PROGRESS):
                # A reader (upstream's 1.8 in-progress name) or a merger (a per-thread
                # name): that pair leaves the file alone when it sees our claim.
                continue
            sign = sign_of_use(paths.logs_dir, other.topic, other.group, us)
            if sign is None:
                continue
            if created:
                try:
                    claim.unlink()
                except OSError:
                    pass
            hint = (
                f" If that pair no longer uses this directory, delete {sign}."
                if sign.name.startswith(PRIVATE_PREFIX)
                else ""
            )
            raise RegistryError(
                f"{path} cannot be used: OpenMSIStream's file name reads both as the "
                f"{other.kind} of topic {topic!r} / group {group!r} (this "
                f"processor) and as {other.describe()}, which has used "
                f"{paths.logs_dir} ({sign.name} exists). Give one of them another "
                f"--output_dir or --consumer_group_id.{hint}"
            )
    if created and existing:
        readings = "; ".join(other.describe() for others in shared.values() for other in others)
        _LOG.warning(
            "%s already exist(s) in %s and the name(s) could also be %s; no sign that "
            "another topic/group used this directory, so they are taken as topic %r / "
            "group %r's (claimed in %s)",
            ", ".join(existing),
            paths.logs_dir,
            readings,
            topic,
            group,
            claim.name,
        )


@dataclass(frozen=True)
class ProducerRegistryPaths:
    """Where a :class:`ProducerRegistry` keeps its files."""

    logs_dir: Path
    #: ``upload_to_<topic>_in_progress.csv`` (created at start, as upstream does).
    in_progress: Path
    #: ``uploaded_to_<topic>.csv``.
    completed: Path
    #: ``upload_to_<topic>_versions.jsonl``, the upload directory's own version log.
    versions: Path
    #: Matches OpenMSIStream's per-producer names of this topic (and, possibly, the
    #: completed file of a topic named ``<topic>_p<hex>``: see :func:`is_per_producer_file`).
    upstream_per_producer_pattern: re.Pattern[str]


def producer_registry_paths(logs_dir: Path, topic: str) -> ProducerRegistryPaths:
    return ProducerRegistryPaths(
        logs_dir=logs_dir,
        in_progress=logs_dir / f"upload_to_{topic}_in_progress.csv",
        completed=logs_dir / f"uploaded_to_{topic}.csv",
        versions=logs_dir / f"upload_to_{topic}_versions.jsonl",
        upstream_per_producer_pattern=re.compile(
            rf"^uploaded_to_{re.escape(topic)}_p[0-9a-f]+(_\d+_\d+)?\.csv$", re.DOTALL
        ),
    )
