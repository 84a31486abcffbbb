"""One consumer thread: poll, hand messages to the ledger, pause, seek, rebalance, commit.

Commits: after every batch that moved a watermark (and on a timer), each
partition is committed at the position the ledger allows. A commit counts as
done only when its ``on_commit`` answer says so; one that failed is sent again,
and nothing is ever committed below what this member committed last for a
partition it still owns (the ledger's floor). Revoked partitions get a
synchronous final commit; lost ones get none (their generation is gone).

Eager and cooperative assignors, and Kafka 4's ``group.protocol=consumer``,
are told apart from the settings: the latter two take ``incremental_assign``.

Encrypted topics (``[kafkacrypto]``): each message is decrypted before the ledger
sees it. The first message of a partition that cannot be decrypted yet is held like a
deferred one: it and everything after it in that partition are left out of the batch
and read again from its offset after a rest, so the ledger never reads past it and no
commit can pass it. It is retried until it decrypts, never skipped.

About 560 lines: polling, pausing, seeking, the rebalance callbacks, commits and
the hold of undecryptable messages all act on one consumer's state, which is what
the delivery guarantee depends on; split, each part would reach into the others.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from confluent_kafka import Consumer, KafkaError, KafkaException, TopicPartition

from .. import failpoints
from ..metrics import NO_METRICS, ProcessorHooks
from .ledger import Ledger
from .options import ProcessorOptions, Stats
from .uploads import Uploader

if TYPE_CHECKING:
    from ..crypto import CryptoNode, NotYetDecryptable

#: How long a partition whose message was deferred (no reassembly memory) rests.
DEFER_PAUSE = 0.25
#: How long the loop waits, without reading, for room in the upload backlog before
#: it pauses its partitions. A pause costs librdkafka about a second to fetch again
#: after the resume, far more than a burst of small files takes to upload; while
#: the loop waits, librdkafka's own bounded queue (queued.max.messages.kbytes) fills.
FULL_WAIT = 1.0
#: The final commit at shutdown or revocation waits at most this long.
FINAL_COMMIT_TIMEOUT = 10.0
#: How long a partition rests after a message of it could not be decrypted. A key
#: arrives through KafkaCrypto's exchange topics within seconds at best (KafkaCrypto
#: itself waits in steps of 1 s), and each retry fetches the batch again.
HOLD_PAUSE = 1.0

#: Settings the consumer group protocol (KIP-848) moved to the broker.
CONSUMER_PROTOCOL_FORBIDDEN = (
    "session.timeout.ms",
    "heartbeat.interval.ms",
    "partition.assignment.strategy",
    "group.protocol.type",
)


def consumer_settings(
    base: dict[str, Any], log: logging.Logger, *, warn: bool = True
) -> tuple[dict[str, Any], bool]:
    """The consumer settings we run with, and whether assignments are incremental."""
    settings = dict(base)
    settings["enable.auto.commit"] = "false"
    settings["enable.auto.offset.store"] = "false"
    settings.setdefault("auto.offset.reset", "earliest")
    # Measured with benches/rss_big_file.py --sweep (BENCHMARKS.md): librdkafka's
    # default 1 s back-off once its prefetch queue is full idles the consumer for
    # most of a second at a time with 512 KiB messages (about 3x slower); a 16 MiB
    # queue per consumer bounds what is prefetched.
    settings.setdefault("fetch.queue.backoff.ms", "10")
    settings.setdefault("queued.max.messages.kbytes", "16384")
    new_protocol = str(settings.get("group.protocol", "classic")).lower() == "consumer"
    if new_protocol:
        for name in CONSUMER_PROTOCOL_FORBIDDEN:
            if name in settings:
                if warn:
                    log.warning(
                        f"Ignoring consumer setting {name}: with group.protocol=consumer the broker decides it"
                    )
                del settings[name]
        return settings, True
    # A crashed member's partitions move on after this; librdkafka's 45 s is long.
    settings.setdefault("session.timeout.ms", "10000")
    strategy = str(settings.get("partition.assignment.strategy", ""))
    return settings, "cooperative" in strategy.lower()


@dataclass
class _Hold:
    """A message of an owned partition held back because it is not decryptable yet."""

    offset: int
    since: float
    #: When the next "still held" warning is due.
    warn_at: float


class ConsumerLoop:
    def __init__(
        self,
        index: int,
        *,
        options: ProcessorOptions,
        settings: dict[str, Any],
        incremental: bool,
        ledger: Ledger,
        uploader: Uploader,
        stats: Stats,
        log: logging.Logger,
        stop: threading.Event,
        consumer_factory: Callable[[dict[str, Any]], Any] = Consumer,
        metrics: ProcessorHooks = NO_METRICS,
        crypto: CryptoNode | None = None,
    ) -> None:
        self.index = index
        self.o = options
        self.settings = settings
        self.incremental = incremental
        self.ledger = ledger
        self.uploader = uploader
        self.stats = stats
        self.log = log
        self.stop = stop
        self.consumer_factory = consumer_factory
        self.metrics = metrics
        self.owned: set[int] = set()
        #: Per partition: last (offset, metadata) the broker confirmed, and the one in flight.
        self.acked: dict[int, tuple[int, str]] = {}
        self.inflight: dict[int, tuple[int, str]] = {}
        self._paused: set[int] = set()
        self._rest_until: dict[int, float] = {}
        #: Per owned partition: the log end seen by the last lag check.
        self.log_end: dict[int, int] = {}
        self.caught_up = False
        self.n_partitions = 0
        self.shutting_down = False
        self.crypto = crypto
        #: Per owned partition: the message held until it can be decrypted.
        self._holds: dict[int, _Hold] = {}

    # -- the loop -------------------------------------------------------------------

    def run(self) -> None:
        o = self.o
        settings = dict(self.settings)
        settings["on_commit"] = self._on_commit
        consumer = self.consumer_factory(settings)
        self.consumer = consumer
        consumer.subscribe(
            [o.topic], on_assign=self._on_assign, on_revoke=self._on_revoke, on_lost=self._on_lost
        )
        last_commit = last_lag_check = time.monotonic()
        try:
            while not self.stop.is_set():
                if not self.uploader.can_accept():
                    self.uploader.wait_for_room(FULL_WAIT)
                self._apply_pauses(consumer)
                msgs = consumer.consume(num_messages=o.batch_size, timeout=o.poll_timeout)
                good = []
                for m in msgs:
                    err = m.error()
                    if err is None:
                        good.append(m)
                    elif err.code() != KafkaError._PARTITION_EOF:
                        self.log.error(f"Kafka error while consuming {o.topic}: {err}")
                moved = bool(good)
                if good:
                    self._handle_batch(consumer, good)
                    failpoints.hit("batch")
                # Let the batch's message buffers go before the next poll.
                msgs = good = []
                now = time.monotonic()
                if moved or now - last_commit >= o.commit_interval:
                    self.commit(consumer)
                    last_commit = now
                if now - last_lag_check >= 5.0:
                    self._check_lag(consumer)
                    last_lag_check = time.monotonic()
            self._finish(consumer)
        finally:
            consumer.close()

    def _handle_batch(self, consumer: Any, msgs: list[Any]) -> None:
        batch: Sequence[Any] = msgs
        held: dict[int, int] = {}
        if self.crypto is not None:
            batch, held = self._decrypt(msgs, self.crypto)
        events, n_stored, deferred = self.ledger.feed(batch, self.index)
        self.stats.add(
            messages_read=len(msgs),
            messages_processed=n_stored,
            messages_rejected=sum(1 for e in events if e.kind == "rejected"),
        )
        self.metrics.consumed(msgs)
        if self.log.isEnabledFor(logging.DEBUG):
            spans: dict[int, tuple[int, int, int]] = {}
            for m in msgs:
                lo, hi, n = spans.get(m.partition(), (m.offset(), m.offset(), 0))
                spans[m.partition()] = (min(lo, m.offset()), max(hi, m.offset()), n + 1)
            started = [
                f"{e.file.rel_path}#{e.file.instance}{' (echo)' if e.file.echo else ''}"
                for e in events
                if e.kind == "started"
            ]
            finished = [
                f"{e.file.rel_path}#{e.file.instance} {e.kind}"
                for e in events
                if e.kind in ("complete", "failed", "superseded")
            ]
            self.log.debug(
                f"Read {self.o.topic} (thread {self.index}): "
                + ", ".join(f"{p}@{lo}-{hi}({n})" for p, (lo, hi, n) in sorted(spans.items()))
                + f"; {n_stored} stored"
                + (f"; started {', '.join(started)}" if started else "")
                + (f"; {', '.join(finished)}" if finished else "")
                + f"; pins {self.ledger.pinned_offsets()}"
            )
        self.uploader.handle(events)
        topic = self.o.topic
        rest = time.monotonic() + DEFER_PAUSE
        for p, offset in deferred:
            self.stats.add(messages_deferred=1)
            self.log.debug(
                f"Reassembly memory is full; reading {topic}[{p}]@{offset} again shortly"
            )
            self._rest_until[p] = rest
            self._seek(consumer, p, offset)
        deferred_partitions = {p for p, _ in deferred}
        if held:
            rest = time.monotonic() + HOLD_PAUSE
            self.stats.add(messages_held=len(held))
            for p, offset in held.items():
                # A deferral in the same partition lies before the held message and
                # is read again first; the message is met (and held) again after it.
                if p not in deferred_partitions:
                    self._rest_until[p] = rest
                    self._seek(consumer, p, offset)
        for p in {m.partition() for m in msgs} - deferred_partitions - held.keys():
            end = self.ledger.skip_ahead(p, self.index)
            if end is not None:
                self._seek(consumer, p, end)

    def _decrypt(
        self, msgs: list[Any], node: CryptoNode
    ) -> tuple[list[tuple[int, int, bytes | None]], dict[int, int]]:
        """The batch as ``(partition, offset, plaintext value)`` up to the first message
        of each partition that cannot be decrypted yet, and ``{partition: its offset}``.

        Keys are not decrypted: reassembly never reads them. Each message is tried
        once, without waiting beyond KafkaCrypto's own first wait for a new key index;
        a held message is tried again when its partition is read again.
        """
        # Loaded already: the node exists. Kept out of the module's imports so that a
        # plaintext run never loads KafkaCrypto.
        from ..crypto import Decrypted

        topic = self.o.topic
        out: list[tuple[int, int, bytes | None]] = []
        held: dict[int, int] = {}
        for m in msgs:
            p = m.partition()
            if p in held:
                continue
            offset = m.offset()
            hold = self._holds.get(p)
            if hold is not None and offset > hold.offset:
                # Read ahead before the seek back took effect: never past a held message.
                held[p] = hold.offset
                continue
            raw = m.value()
            if raw is None:
                # A tombstone: the ledger reports it as it does in a plaintext topic.
                out.append((p, offset, None))
                continue
            got = node.decrypt(topic, p, offset, None, raw, max_wait=0.0)
            if not isinstance(got, Decrypted):
                held[p] = offset
                self._held(p, got, node)
                continue
            if hold is not None:
                del self._holds[p]
                self.log.info(
                    f"{topic}[{p}]@{offset} decrypted after being held "
                    f"{time.monotonic() - hold.since:.1f} s; reading {topic}[{p}] on"
                )
            # The decrypted bytes go to the ledger as they are (no copy in Python).
            out.append((p, offset, got.value))
        return out, held

    def _held(self, partition: int, result: NotYetDecryptable, node: CryptoNode) -> None:
        now = time.monotonic()
        hold = self._holds.get(partition)
        if hold is None or hold.offset != result.offset:
            self._holds[partition] = _Hold(result.offset, now, now + node.wait_budget(result.parts))
            what = (
                "it is held, and no key can ever open it: restart with "
                "--treat_undecryptable_as_plaintext if it is a plaintext chunk"
                if not result.possibly_decryptable
                else "it is held while its key is requested"
            )
            log = self.log.info if result.possibly_decryptable else self.log.error
            log(
                f"{result}. Waiting: {what}; nothing at or past offset {result.offset} of "
                f"partition {partition} is committed until it decrypts"
            )
            return
        if now < hold.warn_at:
            return
        # Waited out upstream's budget: from now on the shorter one applies, as there.
        node.waited_out(result.parts)
        hold.warn_at = now + node.wait_budget(result.parts)
        self.log.warning(
            f"{result}. Still held after {now - hold.since:.0f} s (past "
            "--max_initial_wait_per_decrypt / --max_wait_per_decrypt): it is never skipped; "
            f"nothing at or past offset {result.offset} of partition {partition} is committed "
            "until it decrypts, so keep a node that holds its key running"
        )

    def holds(self) -> list[tuple[int, int, float]]:
        """``(partition, offset, seconds held)`` of each message held undecryptable."""
        now = time.monotonic()
        return [(p, h.offset, now - h.since) for p, h in sorted(self._holds.items())]

    def _seek(self, consumer: Any, partition: int, offset: int) -> None:
        try:
            consumer.seek(TopicPartition(self.o.topic, partition, offset))
        except KafkaException as err:  # revoked meanwhile: its next owner reads from the commit
            self.log.debug(f"Could not seek {self.o.topic}[{partition}] to {offset}: {err}")

    def _apply_pauses(self, consumer: Any) -> None:
        """Pauses every owned partition while the upload backlog is at its bound,
        and partitions resting after a deferral; resumes the rest."""
        now = time.monotonic()
        want = set(self.owned) if not self.uploader.can_accept() else set()
        for p, until in list(self._rest_until.items()):
            if until > now and p in self.owned:
                want.add(p)
            else:
                del self._rest_until[p]
        topic = self.o.topic
        to_pause = want - self._paused
        to_resume = (self._paused - want) & self.owned
        try:
            if to_pause:
                consumer.pause([TopicPartition(topic, p) for p in sorted(to_pause)])
            if to_resume:
                consumer.resume([TopicPartition(topic, p) for p in sorted(to_resume)])
        except KafkaException as err:
            self.log.debug(f"Could not pause/resume {topic}: {err}")
            return
        self._paused = want

    # -- commits ----------------------------------------------------------------------

    def commit(
        self, consumer: Any, partitions: set[int] | None = None, *, sync: bool = False
    ) -> None:
        parts = self.owned if partitions is None else partitions
        offsets = []
        for p, offset, meta in self.ledger.commit_offsets(parts, self.index):
            value = (offset, meta)
            acked = self.acked.get(p)
            if acked == value or self.inflight.get(p) == value:
                continue
            if acked is not None and offset < acked[0]:
                continue  # never backwards (the ledger's floor should already say so)
            offsets.append(TopicPartition(self.o.topic, p, offset, meta))
            self.inflight[p] = value
        if not offsets:
            return
        try:
            if sync:
                answer = consumer.commit(offsets=offsets, asynchronous=False)
                self._on_commit(None, answer or offsets)
            else:
                consumer.commit(offsets=offsets, asynchronous=True)
        except KafkaException as err:
            for tp in offsets:
                self.inflight.pop(tp.partition, None)
            if err.args and err.args[0].code() == KafkaError._NO_OFFSET:
                return
            self.log.warning(f"Committing offsets of {self.o.topic} failed (will retry): {err}")
            return
        failpoints.hit("commit")

    def _on_commit(self, err: KafkaError | None, partitions: list[TopicPartition]) -> None:
        for tp in partitions:
            if tp.topic != self.o.topic:
                continue
            sent = self.inflight.get(tp.partition)
            if sent is None or sent[0] != tp.offset:
                continue
            del self.inflight[tp.partition]
            failed = err if err is not None else tp.error
            if failed is not None:
                if not self.shutting_down or tp.partition in self.owned:
                    self.log.warning(
                        f"Committing {self.o.topic}[{tp.partition}]@{tp.offset} failed (will retry): {failed}"
                    )
                continue
            self.acked[tp.partition] = sent
            self.ledger.committed(tp.partition, tp.offset)
        if self.log.isEnabledFor(logging.DEBUG) and err is None:
            self.log.debug(
                f"Committed {self.o.topic} (thread {self.index}): "
                + ", ".join(
                    f"{tp.partition}@{tp.offset}" + (f" [{tp.metadata}]" if tp.metadata else "")
                    for tp in partitions
                    if tp.error is None
                )
            )

    def _wait_for_commits(self, consumer: Any, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while self.inflight and time.monotonic() < deadline:
            consumer.poll(0.1)

    def _finish(self, consumer: Any) -> None:
        """Stopping: no more reading; commit what the uploads still settle within
        the grace period, then a last commit."""
        self.shutting_down = True
        try:
            consumer.pause([TopicPartition(self.o.topic, p) for p in self.owned])
        except KafkaException:
            pass
        deadline = time.monotonic() + self.o.shutdown_grace
        while self.uploader.busy() and time.monotonic() < deadline:
            self.commit(consumer)
            consumer.poll(0.2)
        self.commit(consumer)
        self._wait_for_commits(consumer, FINAL_COMMIT_TIMEOUT)
        for p, offset, seconds in self.holds():
            self.log.warning(
                f"{self.o.topic}[{p}]@{offset} was still held, not decryptable, after "
                f"{seconds:.0f} s: it and what follows it in partition {p} stay uncommitted "
                "and are read again by the next run"
            )

    # -- rebalancing ------------------------------------------------------------------

    def _on_assign(self, consumer: Any, partitions: list[TopicPartition]) -> None:
        topic = self.o.topic
        mine = [tp for tp in partitions if tp.topic == topic]
        try:
            committed = consumer.committed(mine, timeout=30) if mine else []
        except KafkaException as err:
            self.log.warning(
                f"Could not read committed offsets of {topic}: {err}; reading from librdkafka's stored offsets"
            )
            committed = [TopicPartition(topic, tp.partition) for tp in mine]
        starts = []
        for tp in committed:
            start, n_done = self.ledger.assigned(tp.partition, tp.offset, tp.metadata, self.index)
            if tp.offset < 0:
                self.log.info(
                    f"Partition {tp.partition} of {topic}: no committed offset, starting from auto.offset.reset"
                )
                starts.append(TopicPartition(topic, tp.partition))
            else:
                starts.append(TopicPartition(topic, tp.partition, start))
                self.log.info(
                    f"Partition {tp.partition} of {topic}: resuming at offset {tp.offset}"
                    + (f", reading from {start}" if start != tp.offset else "")
                    + (
                        f" ({n_done} messages of files already transferred above it are skipped)"
                        if n_done
                        else ""
                    )
                )
            self.acked[tp.partition] = (max(tp.offset, 0), tp.metadata or "")
            self.owned.add(tp.partition)
            # Read from the commit again: what was held is met again there.
            self._holds.pop(tp.partition, None)
        others = [tp for tp in partitions if tp.topic != topic]
        try:
            if self.incremental:
                consumer.incremental_assign(starts + others)
            else:
                consumer.assign(starts + others)
        except KafkaException as err:
            # The other kind of assignment, if the settings misled us.
            self.log.debug(f"assign() refused ({err}); trying the other protocol")
            self.incremental = not self.incremental
            if self.incremental:
                consumer.incremental_assign(starts + others)
            else:
                consumer.assign(starts + others)
        # librdkafka keeps an application pause across reassignment: a partition we
        # paused (upload backlog full) and get back would never be fetched again.
        try:
            consumer.resume(starts)
        except KafkaException as err:
            self.log.debug(f"Could not resume assigned partitions of {topic}: {err}")
        self._paused -= {tp.partition for tp in starts}

    def _on_revoke(self, consumer: Any, partitions: list[TopicPartition]) -> None:
        revoked = {tp.partition for tp in partitions if tp.topic == self.o.topic} & self.owned
        if revoked:
            # Files finishing now can still be committed by us; when stopping,
            # _finish has already given them the whole grace.
            if not self.shutting_down:
                deadline = time.monotonic() + min(self.o.shutdown_grace, 30.0)
                while time.monotonic() < deadline and self._busy_in(revoked):
                    time.sleep(0.05)
            self.commit(consumer, revoked, sync=True)
        self._release(revoked)

    def _on_lost(self, consumer: Any, partitions: list[TopicPartition]) -> None:
        self.log.warning(
            f"Partitions {sorted(tp.partition for tp in partitions)} of {self.o.topic} were lost "
            "(this member was too slow or cut off); their next owner reads them from the committed offsets"
        )
        self._release({tp.partition for tp in partitions if tp.topic == self.o.topic})

    def _busy_in(self, partitions: set[int]) -> bool:
        for fu in self.uploader.uploads():
            if fu.state in ("uploading", "finishing") and any(
                p in partitions for p, _ in fu.offsets
            ):
                return True
        return False

    def _release(self, revoked: set[int]) -> None:
        if not revoked:
            return
        self.uploader.revoked(self.ledger.revoked(sorted(revoked), self.index), revoked)
        self.owned -= revoked
        self._paused -= revoked
        for p in revoked:
            self.acked.pop(p, None)
            self.inflight.pop(p, None)
            self._rest_until.pop(p, None)
            self.log_end.pop(p, None)
            self._holds.pop(p, None)
        if not self.stop.is_set():
            self.log.info(
                f"Partitions {sorted(revoked)} of {self.o.topic} were reassigned; their next "
                "owner goes on from the committed offsets"
            )

    # -- lag --------------------------------------------------------------------------

    def _check_lag(self, consumer: Any) -> None:
        """Notes the log end of each owned partition and whether all are read to it."""
        topic = self.o.topic
        caught_up = True
        try:
            self.n_partitions = len(consumer.list_topics(topic, timeout=5).topics[topic].partitions)
            for tp in consumer.position([TopicPartition(topic, p) for p in self.owned]):
                low, high = consumer.get_watermark_offsets(
                    TopicPartition(topic, tp.partition), timeout=5, cached=False
                )
                self.log_end[tp.partition] = high
                position = tp.offset if tp.offset >= 0 else low
                caught_up &= position >= high
        except (KafkaException, KeyError):
            caught_up = False
        self.caught_up = caught_up
