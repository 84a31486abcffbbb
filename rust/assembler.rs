//! Reassembles files from chunk messages, and owns every file instance from its
//! first chunk until the caller settles it (durably done or durably given up).
//!
//! Every chunk is decoded and hash-checked, then copied once into the part
//! its byte range falls in. Bytes that extend a part's contiguous prefix are
//! appended to it; bytes that arrive out of order wait as separate pieces and
//! are appended when the gap before them fills, so memory follows the bytes
//! actually received, never a size a message claims. A complete part is
//! sealed and handed out (shared, not copied) for a multipart upload as soon as
//! the file is known to be bigger than one part; a file that fits in one part
//! goes as a single PUT. The whole-file SHA-512 and CRC64NVME advance over the
//! contiguous prefix as bytes arrive.
//!
//! The lifecycle (see docs/architecture.md): an instance is *receiving* while
//! chunks arrive, then *owned* (complete and being uploaded, or failed and being
//! recorded) until the caller calls [`Assembler::settle`]; only then do its
//! message offsets join the partition's *done* set. The commit position of a
//! partition ([`Assembler::commit_positions`]) is computed under the same lock
//! that moves instances between these states, so there is no moment at which a
//! file is neither pinned nor done, whichever thread finished it.
//!
//! Re-produced files: several generations of one path may be received at once
//! (a forged or stray chunk cannot push out a file in progress). When one
//! completes, OpenMSIStream's generation rule (compat notes §2) decides which of
//! the others it supersedes; a file that starts after another instance of its
//! path completed is a new transfer, whatever its size.
//!
//! Thread safety: one lock for the file table, one per file, one for the
//! partition positions; the order is table, then file, then positions. Copies
//! and hashing run under the file's own lock only.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Mutex, MutexGuard};
use std::time::Instant;

use crate::checksum::{crc64nvme, Running};
use crate::error::{Error, Result};
use crate::intervals::IntervalSet;
use crate::sha512x8;
use crate::wire::{self, Chunk};

/// A sealed part (or whole small file). Shared with whoever uploads it.
pub type Buffer = Arc<PartBytes>;

/// The bytes of a sealed part. A full-size part buffer goes back to its budget's
/// spares when the last holder (the uploader, a Python memoryview) lets go.
pub struct PartBytes {
    bytes: Vec<u8>,
    home: Option<Arc<MemoryBudget>>,
}

impl PartBytes {
    fn sealed(bytes: Vec<u8>, home: &Arc<MemoryBudget>) -> Self {
        Self { bytes, home: Some(Arc::clone(home)) }
    }
}

impl From<Vec<u8>> for PartBytes {
    fn from(bytes: Vec<u8>) -> Self {
        Self { bytes, home: None }
    }
}

impl std::ops::Deref for PartBytes {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        &self.bytes
    }
}

impl std::fmt::Debug for PartBytes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PartBytes({} bytes)", self.bytes.len())
    }
}

impl Drop for PartBytes {
    fn drop(&mut self) {
        if let Some(home) = &self.home {
            home.give_back(std::mem::take(&mut self.bytes));
        }
    }
}

/// S3 allows at most this many parts per multipart upload.
pub const MAX_PARTS: u64 = 10_000;
/// S3's minimum size of every part but the last.
pub const MIN_PART_SIZE: u64 = 5 << 20;
/// How many finished files are remembered to recognise redelivered chunks.
const FINISHED_MEMORY: usize = 100_000;
/// Smallest growth step of a part buffer.
const MIN_GROWTH: u64 = 64 << 10;
/// Bytes charged per out-of-order piece and per recorded offset range, for the
/// bookkeeping that tracks them.
const PIECE_OVERHEAD: u64 = 64;
/// Full-size part buffers kept for reuse. Without them every 8 MiB part was
/// freed to glibc, whose dynamic mmap threshold then rose past it, so later
/// parts came from per-thread arenas that rarely shrink: peak RSS on one 1 GiB
/// file varied from 159 to 234 MiB between identical runs (BENCHMARKS.md). Reused
/// buffers also skip the page faults a fresh mapping costs.
const SPARE_PARTS: usize = 8;

/// The bytes all unfinished files may hold for reassembly (part buffers,
/// out-of-order pieces, their bookkeeping). Going over it is back-pressure:
/// new out-of-order bytes are deferred until memory is freed.
#[derive(Debug)]
pub struct MemoryBudget {
    used: AtomicU64,
    limit: u64,
    /// The size of a full part (the assembler's part size); 0: no spares kept.
    spare_size: usize,
    spares: Mutex<Vec<Vec<u8>>>,
}

impl MemoryBudget {
    pub fn new(limit: u64) -> Self {
        Self::with_spares(limit, 0)
    }

    fn with_spares(limit: u64, spare_size: u64) -> Self {
        let spare_size =
            if spare_size >= MIN_PART_SIZE { usize::try_from(spare_size).unwrap_or(0) } else { 0 };
        Self { used: AtomicU64::new(0), limit, spare_size, spares: Mutex::new(Vec::new()) }
    }

    /// An empty buffer of one full part's capacity: a spare if there is one.
    fn full_part(&self) -> Vec<u8> {
        let spare = lock(&self.spares).pop();
        spare.unwrap_or_else(|| Vec::with_capacity(self.spare_size))
    }

    fn give_back(&self, mut bytes: Vec<u8>) {
        if self.spare_size == 0 || bytes.capacity() != self.spare_size {
            return;
        }
        let mut spares = lock(&self.spares);
        if spares.len() < SPARE_PARTS {
            bytes.clear();
            spares.push(bytes);
        }
    }

    /// Whether a part of `len` bytes fills one spare-size buffer exactly.
    fn is_full_part(&self, len: u64) -> bool {
        self.spare_size != 0 && usize::try_from(len) == Ok(self.spare_size)
    }

    /// Full-size part buffers kept for reuse now.
    pub fn spares(&self) -> usize {
        lock(&self.spares).len()
    }

    fn fits(&self, n: u64) -> bool {
        self.used().saturating_add(n) <= self.limit
    }

    fn force_take(&self, n: u64) {
        self.used.fetch_add(n, Ordering::AcqRel);
    }

    fn give(&self, n: u64) {
        self.used.fetch_sub(n, Ordering::AcqRel);
    }

    pub fn used(&self) -> u64 {
        self.used.load(Ordering::Acquire)
    }

    pub fn limit(&self) -> u64 {
        self.limit
    }
}

/// Where a message came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Position {
    pub partition: i32,
    pub offset: i64,
}

#[derive(Debug, Clone, PartialEq)]
pub struct FileInfo {
    /// Unique per file instance within this assembler.
    pub instance: u64,
    /// `subdir/filename` without the append; the registry's `rel_filepath`.
    pub rel_path: String,
    /// `subdir/filename` with the append: the object key below the topic.
    pub rel_output_path: String,
    pub filename: String,
    pub n_chunks: u64,
    pub file_hash: [u8; 64],
    pub mtime: Option<f64>,
    /// The same file (same hash and chunk count) was already reassembled from
    /// earlier in the log: this is either the file produced again or stray
    /// duplicates of its chunks (a producer retry). Its bytes are already in the
    /// bucket, so it pins no offsets: if it never completes, nothing is lost.
    pub echo: bool,
    /// Where its first chunk was read: stored with the object, so a late upload
    /// can tell a newer version of the key (later in the same partition) from an older one.
    pub first: Position,
}

/// Per partition, the half-open offset ranges of a file's messages.
pub type OffsetRuns = Vec<(i32, Vec<(i64, i64)>)>;

#[derive(Debug)]
pub enum Event {
    /// First chunk of a new file instance.
    Started(FileInfo),
    /// A complete part of a file known to need a multipart upload.
    Part { file: FileInfo, number: u32, data: Buffer, crc64nvme: u64 },
    /// All chunks arrived and the file hash matched. The instance is owned
    /// until it is settled.
    Complete {
        file: FileInfo,
        size: u64,
        /// The whole file when it fits in one part (single PUT); `None` for multipart.
        single: Option<Buffer>,
        crc64nvme: u64,
        parts: u32,
        offsets: OffsetRuns,
    },
    /// The file cannot be completed from these chunks (hash mismatch, corrupted
    /// or contradictory chunks: `error`, one for which [`Error::is_file_failure`]
    /// holds, found on the message at `position`). Nothing of it may become
    /// visible. The instance is owned until it is settled (after its failure is recorded).
    Failed { file: FileInfo, error: Error, position: Position, offsets: OffsetRuns },
    /// A newer generation of the path completed: this unfinished one is not
    /// needed any more (its offsets are released with the newer one).
    Superseded { file: FileInfo, by: FileInfo },
    /// The message is not a usable chunk (`error` is one for which
    /// [`Error::is_bad_message`] holds); no file state was touched.
    Rejected { position: Position, error: Error },
}

/// What became of one message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Disposition {
    Stored,
    Duplicate,
    Stale,
    Rejected,
    /// The partition is read by another consumer thread now (or by no one in
    /// this process): the message is left to its reader.
    NotOurs,
    /// Not stored for lack of reassembly memory; read it again later.
    Deferred,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Generation {
    Same,
    Newer,
    Older,
    Contradiction,
}

/// OpenMSIStream's rule between two generations of one path, as seen from
/// `chunk`: is it of the same file as `file`, a newer or an older generation?
fn compare_generation(file: &FileInfo, hash: &[u8; 64], n_chunks: u64, mtime: Option<f64>) -> Generation {
    let same_hash = file.file_hash == *hash;
    let same_n = file.n_chunks == n_chunks;
    match (same_hash, same_n) {
        (true, true) => Generation::Same,
        (true, false) => Generation::Contradiction,
        (false, false) if n_chunks > file.n_chunks => Generation::Newer,
        (false, false) => Generation::Older,
        (false, true) => match (file.mtime.filter(|m| *m > 0.0), mtime.filter(|m| *m > 0.0)) {
            (Some(old), Some(new)) if new > old => Generation::Newer,
            _ => Generation::Older,
        },
    }
}

fn compare_chunk(file: &FileInfo, chunk: &Chunk<'_>) -> Generation {
    compare_generation(file, chunk.file_hash, chunk.n_total_chunks, chunk.known_mtime())
}

/// One part of a file: the contiguous bytes from its start, and pieces that
/// arrived ahead of a gap.
struct Slot {
    buf: Vec<u8>,
    pending: BTreeMap<usize, Vec<u8>>,
    sealed: Option<Buffer>,
    filled: u64,
    released: bool,
    budget: Arc<MemoryBudget>,
    accounted: u64,
}

impl Drop for Slot {
    fn drop(&mut self) {
        // A sealed part may live on in the uploader; from there on the uploader's
        // own limit on parts in flight bounds it.
        self.budget.give(self.accounted);
        self.budget.give_back(std::mem::take(&mut self.buf));
    }
}

impl Slot {
    fn new(budget: Arc<MemoryBudget>) -> Self {
        Self {
            buf: Vec::new(),
            pending: BTreeMap::new(),
            sealed: None,
            filled: 0,
            released: false,
            budget,
            accounted: 0,
        }
    }

    fn bytes(&self) -> &[u8] {
        match &self.sealed {
            Some(b) => b,
            None => &self.buf,
        }
    }

    fn seal(&mut self) -> Buffer {
        let (buf, budget) = (&mut self.buf, &self.budget);
        Arc::clone(
            self.sealed.get_or_insert_with(|| Arc::new(PartBytes::sealed(std::mem::take(buf), budget))),
        )
    }

    fn charge(&mut self, n: u64) {
        self.budget.force_take(n);
        self.accounted += n;
    }

    fn refund(&mut self, n: u64) {
        let n = n.min(self.accounted);
        self.budget.give(n);
        self.accounted -= n;
    }

    /// Growth of `buf`'s capacity needed to append `extra` bytes to it.
    fn growth(&self, extra: usize, part_len: u64) -> u64 {
        let need = (self.buf.len() + extra) as u64;
        let cap = self.buf.capacity() as u64;
        if need <= cap {
            return 0;
        }
        need.max((cap * 2).max(MIN_GROWTH).min(part_len)) - cap
    }

    /// Bytes of the pending pieces that a write of `len` bytes at `local` would
    /// join onto the contiguous prefix.
    fn joined(&self, local: usize, len: usize) -> usize {
        let (mut end, mut total) = (local + len, 0);
        while let Some(piece) = self.pending.get(&end) {
            total += piece.len();
            end += piece.len();
        }
        total
    }

    /// Stores `data` at `local`; the caller has checked it overlaps nothing.
    /// `full` says the part is expected to fill a whole part buffer, which is
    /// then taken (and charged) at once instead of grown.
    fn write(&mut self, local: usize, data: &[u8], part_len: u64, full: bool) {
        if self.takes_full_buffer(full, part_len) {
            self.buf = self.budget.full_part();
            self.charge(part_len);
        }
        if local == self.buf.len() {
            // One reservation for the chunk and the pieces it joins, charged
            // before any piece is refunded: what `cost` said it would take.
            let grow = self.growth(data.len() + self.joined(local, data.len()), part_len);
            if grow > 0 {
                // Geometric growth within the part, so in-order chunks cost few copies.
                self.buf.reserve_exact((self.buf.capacity() as u64 + grow) as usize - self.buf.len());
                self.charge(grow);
            }
            self.buf.extend_from_slice(data);
            while let Some(piece) = self.pending.remove(&self.buf.len()) {
                self.buf.extend_from_slice(&piece);
                self.refund(piece.len() as u64 + PIECE_OVERHEAD);
            }
        } else {
            self.charge(data.len() as u64 + PIECE_OVERHEAD);
            self.pending.insert(local, data.to_vec());
        }
        self.filled += data.len() as u64;
    }

    /// Whether a write with `full` set starts this part in a full-size buffer.
    fn takes_full_buffer(&self, full: bool, part_len: u64) -> bool {
        full && self.buf.capacity() == 0 && self.budget.is_full_part(part_len)
    }

    /// What storing `data` at `local` would add to the budget (at its peak:
    /// pieces joined onto the prefix are refunded only once they are copied).
    fn cost(&self, local: usize, len: usize, part_len: u64, full: bool) -> u64 {
        if self.takes_full_buffer(full, part_len) {
            part_len
        } else if local == self.buf.len() {
            self.growth(len + self.joined(local, len), part_len)
        } else {
            len as u64 + PIECE_OVERHEAD
        }
    }
}

struct FileAssembly {
    info: FileInfo,
    part_size: u64,
    /// The file size the first chunk's message implies (an upper bound for
    /// uniform chunks; a claim, not a fact).
    size_hint: u64,
    chunks: IntervalSet,
    bytes: IntervalSet,
    total: Option<u64>,
    parts: BTreeMap<u64, Slot>,
    hashed_upto: u64,
    running: Running,
    /// The file hash is already proven: a one-chunk file whose verified chunk hash
    /// is the file hash covers the same bytes, so a second SHA-512 pass is skipped.
    hash_proven: bool,
    /// Exact Kafka offsets of this file's messages (duplicates included), per partition.
    offsets: BTreeMap<i32, IntervalSet>,
    budget: Arc<MemoryBudget>,
    parts_released: u32,
    /// Set when the file has left the receiving table; a thread that still holds it retries.
    retired: bool,
    last_chunk: Instant,
    /// Bytes charged for the offset bookkeeping.
    bookkeeping: u64,
}

impl Drop for FileAssembly {
    fn drop(&mut self) {
        self.budget.give(self.bookkeeping);
    }
}

/// A file instance that left the receiving table and waits to be settled.
struct Owned {
    info: FileInfo,
    offsets: BTreeMap<i32, IntervalSet>,
    failed: bool,
    since: Instant,
}

/// What is remembered of the last finished (completed or failed) instance of a path.
struct Finished {
    info: FileInfo,
    succeeded: bool,
    chunks: IntervalSet,
    /// Hashes of generations this one superseded: their late chunks are stale.
    losers: Vec<[u8; 64]>,
}

#[derive(Default)]
struct Table {
    /// Receiving instances by path (several generations may be received at once).
    files: HashMap<String, Vec<Arc<Mutex<FileAssembly>>>>,
    owned: HashMap<u64, Owned>,
    finished: HashMap<String, Finished>,
    finished_order: VecDeque<(String, u64)>,
    next_instance: u64,
}

/// Which consumer thread of this process reads a partition. A partition moves
/// between threads of one process through a rebalance whose callbacks run on
/// each thread in its own time: the old reader may learn that it lost the
/// partition (`on_lost`, or a revocation it handles late) after the new reader
/// was assigned it and began reading. Every change a reader makes to a
/// partition's state is therefore checked against who reads it now.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
enum Reader {
    /// Never assigned: a caller that does not track assignment (tests, tools).
    #[default]
    Unassigned,
    Thread(u32),
    /// Released by its last reader and not assigned again in this process.
    Released,
}

#[derive(Default)]
struct PartitionState {
    reader: Reader,
    /// The next offset to read (every message below it was handed to `add`), if read at all.
    next: Option<i64>,
    /// Never commit below this: what the group had committed when the partition
    /// was assigned, raised by every successful commit of ours.
    floor: i64,
    /// Offsets of messages accounted for: their files are settled, or they were
    /// learnt to be so from commit metadata or the journal. Skipped undecoded.
    done: IntervalSet,
}

impl PartitionState {
    fn is_read_by(&self, reader: u32) -> bool {
        match self.reader {
            Reader::Unassigned => true,
            Reader::Thread(r) => r == reader,
            Reader::Released => false,
        }
    }
}

/// Where a partition may be committed, and the done runs above that position.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommitPosition {
    pub partition: i32,
    pub offset: i64,
    pub done_above: Vec<(i64, i64)>,
}

/// One instance in progress, as `check` and the stall monitor see it.
#[derive(Debug, Clone)]
pub struct Progress {
    pub info: FileInfo,
    pub chunks: u64,
    pub buffered: u64,
    pub partitions: Vec<i32>,
    /// Per partition, the offset after the file's last message.
    pub max_offsets: Vec<(i32, i64)>,
    pub idle_seconds: f64,
    /// "receiving", "uploading" or "failed".
    pub state: &'static str,
}

pub struct Assembler {
    part_size: u64,
    budget: Arc<MemoryBudget>,
    table: Mutex<Table>,
    partitions: Mutex<HashMap<i32, PartitionState>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding a lock is a bug we cannot recover from cleanly, but
    // poisoning every later call would turn one bad file into a dead process.
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// A Kafka offset as the offset sets store it. Only offsets of read messages
/// (never negative) are stored; a negative one (librdkafka's "no offset") is 0.
fn stored(offset: i64) -> u64 {
    u64::try_from(offset).unwrap_or(0)
}

/// A stored offset as a Kafka offset again (every one came from an `i64`).
fn kafka(offset: u64) -> i64 {
    i64::try_from(offset).unwrap_or(i64::MAX)
}

fn runs_of(offsets: &BTreeMap<i32, IntervalSet>) -> OffsetRuns {
    offsets.iter().map(|(p, set)| (*p, set.ranges().map(|(a, b)| (kafka(a), kafka(b))).collect())).collect()
}

fn merge_offsets(into: &mut BTreeMap<i32, IntervalSet>, from: &BTreeMap<i32, IntervalSet>) {
    for (p, set) in from {
        let dst = into.entry(*p).or_default();
        for (a, b) in set.ranges() {
            dst.union(a, b);
        }
    }
}

/// A message as the consumer read it: where, and its value (None for a tombstone).
pub type Message<'a> = (Position, Option<&'a [u8]>);

/// Below this many bytes of chunk data in a batch, hashing on one thread is cheaper
/// than handing work to others.
const PARALLEL_HASH_MIN: usize = 4 << 20;

/// How many threads check a batch's chunk hashes while the calling thread runs the
/// in-order pass (copy into parts, file SHA-512, CRC64NVME): 0 when the batch is
/// small or the machine has one core, so it is checked in line.
fn hash_workers(messages: &[Message<'_>]) -> usize {
    let total: usize = messages.iter().map(|(_, v)| v.map_or(0, <[u8]>::len)).sum();
    let cores = std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get).min(8);
    if total < PARALLEL_HASH_MIN || cores < 2 || messages.len() < 2 {
        return 0;
    }
    cores - 1
}

/// How many messages a hash worker checks at once: one per lane of the
/// multi-lane SHA-512 (`sha512x8`).
const GROUP: usize = 8;

/// Whether each message's data matches its chunk hash; `None` for one that is
/// not a decodable chunk (the in-order pass reports why). Eight at a time where
/// the CPU has the lanes for it, else one by one.
fn check_hashes(values: &[Option<&[u8]>]) -> Vec<Option<bool>> {
    let chunks: Vec<Option<Chunk<'_>>> =
        values.iter().map(|v| v.and_then(|v| wire::decode_unverified(v).ok())).collect();
    let data: Vec<&[u8]> = chunks.iter().flatten().map(|c| c.data).collect();
    // A lone message gains nothing from the lanes and would pay for all eight.
    if let Some(digests) = (data.len() > 1).then(|| sha512x8::digests(&data)).flatten() {
        let mut digests = digests.into_iter();
        return chunks
            .iter()
            .map(|c| c.as_ref().map(|c| digests.next().is_some_and(|d| &d == c.chunk_hash)))
            .collect();
    }
    chunks.iter().map(|c| c.as_ref().map(|c| c.verify_hash().is_ok())).collect()
}

/// What the in-order pass over one batch has decided so far.
#[derive(Default)]
struct BatchPass {
    dispositions: Vec<Disposition>,
    deferred: Vec<(i32, i64)>,
    not_ours: Vec<i32>,
    ours: Vec<i32>,
}

impl Assembler {
    /// `part_size` is the multipart part size (at least 5 MiB, S3's minimum);
    /// `max_buffered` bounds the bytes held for reassembly by all unfinished files.
    pub fn new(part_size: u64, max_buffered: u64) -> Result<Self> {
        if part_size < MIN_PART_SIZE {
            return Err(Error::PartSizeTooSmall { part_size });
        }
        if max_buffered / 2 < part_size {
            return Err(Error::MemoryLimitTooSmall { max_buffered, part_size });
        }
        Ok(Self::build(part_size, max_buffered))
    }

    fn build(part_size: u64, max_buffered: u64) -> Self {
        Self {
            part_size,
            budget: Arc::new(MemoryBudget::with_spares(max_buffered, part_size)),
            table: Mutex::new(Table::default()),
            partitions: Mutex::default(),
        }
    }

    pub fn budget(&self) -> &MemoryBudget {
        &self.budget
    }

    /// Test-only constructor that allows tiny parts.
    #[doc(hidden)]
    pub fn with_any_part_size(part_size: u64) -> Self {
        Self::build(part_size.max(1), u64::MAX)
    }

    /// Test-only constructor that allows tiny parts and a tiny memory limit.
    #[doc(hidden)]
    pub fn with_limits(part_size: u64, max_buffered: u64) -> Self {
        Self::build(part_size.max(1), max_buffered)
    }

    pub fn part_size(&self) -> u64 {
        self.part_size
    }

    /// Feeds messages read by consumer thread `reader`, in log order. A
    /// partition whose message is deferred (no memory) takes no more messages
    /// from this batch, and its read position goes back to that message;
    /// returns the `(partition, offset)` to read again from. Messages of a
    /// partition another thread reads now (or none in this process) are
    /// `NotOurs` and change nothing: its reader reads them.
    pub fn add_batch(
        &self,
        messages: &[Message<'_>],
        reader: u32,
        out: &mut Vec<Event>,
    ) -> (Vec<Disposition>, Vec<(i32, i64)>) {
        let mut pass = BatchPass { dispositions: Vec::with_capacity(messages.len()), ..BatchPass::default() };
        let workers = hash_workers(messages);
        if workers == 0 {
            let verdicts = if sha512x8::available() && messages.len() > 1 {
                check_hashes(&messages.iter().map(|(_, v)| *v).collect::<Vec<_>>())
            } else {
                Vec::new()
            };
            for (i, (pos, value)) in messages.iter().enumerate() {
                let hash_ok = verdicts.get(i).copied().flatten();
                self.add_in_order(&mut pass, reader, *pos, *value, hash_ok, out);
            }
            return (pass.dispositions, pass.deferred);
        }
        // The chunk hashes are checked ahead on `workers` threads (group g of
        // GROUP messages on worker g % workers, each in log order) while this
        // thread takes the results in order: a batch costs about one SHA-512 pass
        // of its bytes in wall time, not two (issue 8), and with the lanes of
        // `sha512x8` the checks cost a fraction of a pass in CPU.
        let groups: Vec<&[Message<'_>]> = messages.chunks(GROUP).collect();
        std::thread::scope(|scope| {
            let results: Vec<mpsc::Receiver<Vec<Option<bool>>>> = (0..workers)
                .map(|w| {
                    let (tx, rx) = mpsc::channel();
                    let groups = &groups;
                    scope.spawn(move || {
                        for group in groups.iter().skip(w).step_by(workers) {
                            let values: Vec<Option<&[u8]>> = group.iter().map(|(_, v)| *v).collect();
                            if tx.send(check_hashes(&values)).is_err() {
                                break;
                            }
                        }
                    });
                    rx
                })
                .collect();
            let mut verdicts = Vec::new();
            for (i, (pos, value)) in messages.iter().enumerate() {
                if i % GROUP == 0 {
                    // A worker that panicked (it cannot: decoding returns errors)
                    // leaves the rest of its messages to be checked in line.
                    verdicts =
                        results.get(i / GROUP % workers).and_then(|rx| rx.recv().ok()).unwrap_or_default();
                }
                let hash_ok = verdicts.get(i % GROUP).copied().flatten();
                self.add_in_order(&mut pass, reader, *pos, *value, hash_ok, out);
            }
        });
        (pass.dispositions, pass.deferred)
    }

    /// One message of a batch, in log order; `hash_ok` as in `add_checked`.
    fn add_in_order(
        &self,
        pass: &mut BatchPass,
        reader: u32,
        pos: Position,
        value: Option<&[u8]>,
        hash_ok: Option<bool>,
        out: &mut Vec<Event>,
    ) {
        if pass.deferred.iter().any(|(p, _)| *p == pos.partition) {
            pass.dispositions.push(Disposition::Deferred);
            return;
        }
        if pass.not_ours.contains(&pos.partition) {
            pass.dispositions.push(Disposition::NotOurs);
            return;
        }
        if !pass.ours.contains(&pos.partition) {
            if self.reads(pos.partition, reader) {
                pass.ours.push(pos.partition);
            } else {
                pass.not_ours.push(pos.partition);
                pass.dispositions.push(Disposition::NotOurs);
                return;
            }
        }
        let d = match value {
            Some(v) => self.add_checked(pos, v, hash_ok, out),
            // A tombstone in a done range was accounted for (and reported) by an
            // earlier reader: it is only being read again.
            None if self.is_done(pos) => Disposition::Duplicate,
            None => {
                out.push(Event::Rejected {
                    position: pos,
                    error: Error::malformed("message", None, "has no value"),
                });
                Disposition::Rejected
            }
        };
        if d == Disposition::Deferred {
            pass.deferred.push((pos.partition, pos.offset));
            self.set_next(pos.partition, pos.offset);
        } else {
            self.consumed(pos);
        }
        pass.dispositions.push(d);
    }

    /// Whether `reader` reads `partition` now (or no thread was ever assigned it).
    fn reads(&self, partition: i32, reader: u32) -> bool {
        lock(&self.partitions).get(&partition).is_none_or(|st| st.is_read_by(reader))
    }

    fn consumed(&self, pos: Position) {
        if pos.offset < 0 {
            return;
        }
        let mut ps = lock(&self.partitions);
        let st = ps.entry(pos.partition).or_default();
        match st.next {
            Some(n) if n > pos.offset => {}
            _ => st.next = Some(pos.offset + 1),
        }
    }

    fn set_next(&self, partition: i32, offset: i64) {
        lock(&self.partitions).entry(partition).or_default().next = Some(offset);
    }

    /// Decodes, verifies and stores one message; events are appended to `out`.
    pub fn add(&self, pos: Position, message: &[u8], out: &mut Vec<Event>) -> Disposition {
        self.add_checked(pos, message, None, out)
    }

    fn is_done(&self, pos: Position) -> bool {
        pos.offset >= 0
            && lock(&self.partitions).get(&pos.partition).is_some_and(|s| s.done.contains(stored(pos.offset)))
    }

    /// `add`, with the chunk hash already checked (`Some(matches)`) or not (`None`).
    fn add_checked(
        &self,
        pos: Position,
        message: &[u8],
        hash_ok: Option<bool>,
        out: &mut Vec<Event>,
    ) -> Disposition {
        if self.is_done(pos) {
            return Disposition::Duplicate;
        }
        let decoded = match hash_ok {
            None => wire::decode(message),
            Some(ok) => {
                wire::decode_unverified(message).and_then(|c| if ok { Ok(c) } else { Err(c.hash_error()) })
            }
        };
        let chunk = match decoded {
            Ok(c) => c,
            Err(error) => {
                if matches!(error, Error::ChunkHash { .. }) {
                    if let Ok(chunk) = wire::decode_unverified(message) {
                        self.corrupted(pos, &chunk, error, out);
                        return Disposition::Rejected;
                    }
                }
                out.push(Event::Rejected { position: pos, error });
                return Disposition::Rejected;
            }
        };
        self.add_verified(pos, &chunk, true, out)
    }

    /// A chunk whose data fails its hash. If its file is being received and does
    /// not hold that chunk yet, the file can never complete correctly from this
    /// log position: it fails. A file that already holds the chunk is untouched.
    fn corrupted(&self, pos: Position, chunk: &Chunk<'_>, error: Error, out: &mut Vec<Event>) {
        let mut sink = Vec::new();
        let Ok((file, created)) = self.lookup(&chunk.rel_path(), pos, chunk, &mut sink) else {
            return out.push(Event::Rejected { position: pos, error });
        };
        let mut fa = lock(&file);
        if fa.retired
            || compare_chunk(&fa.info, chunk) != Generation::Same
            || fa.chunks.contains(chunk.chunk_i)
        {
            return out.push(Event::Rejected { position: pos, error });
        }
        let _ = fa.chunks.insert(chunk.chunk_i, chunk.chunk_i + 1);
        fa.record(pos);
        if created {
            out.push(Event::Started(fa.info.clone()));
        }
        drop(fa);
        let error = Error::CorruptChunk {
            chunk_i: chunk.chunk_i,
            n_total_chunks: chunk.n_total_chunks,
            len: chunk.data.len(),
        };
        self.fail(&file, error, pos, out);
    }

    /// Stores a decoded chunk whose hash has not been checked here.
    pub fn add_chunk(&self, pos: Position, chunk: &Chunk<'_>, out: &mut Vec<Event>) -> Disposition {
        self.add_verified(pos, chunk, false, out)
    }

    /// `verified`: the chunk's data is known to match its chunk hash.
    fn add_verified(
        &self,
        pos: Position,
        chunk: &Chunk<'_>,
        verified: bool,
        out: &mut Vec<Event>,
    ) -> Disposition {
        let rel_path = chunk.rel_path();
        loop {
            let (file, created) = match self.lookup(&rel_path, pos, chunk, out) {
                Ok(f) => f,
                Err(d) => return d,
            };
            let mut fa = lock(&file);
            if fa.retired {
                continue;
            }
            if fa.is_complete() {
                // Completed by another thread that is retiring it right now.
                return Disposition::Duplicate;
            }
            if fa.info.n_chunks != chunk.n_total_chunks {
                let error = Error::ChunkCount {
                    chunk_i: chunk.chunk_i,
                    n_total_chunks: chunk.n_total_chunks,
                    expected: fa.info.n_chunks,
                };
                drop(fa);
                self.fail(&file, error, pos, out);
                return Disposition::Rejected;
            }
            if chunk.filename_append != output_append(&fa.info) {
                let error = Error::OutputName {
                    chunk_i: chunk.chunk_i,
                    output: chunk.rel_output_path(),
                    expected: fa.info.rel_output_path.clone(),
                };
                drop(fa);
                self.fail(&file, error, pos, out);
                return Disposition::Rejected;
            }
            let mark = out.len();
            let result = fa.store(pos, chunk, !created, verified, out);
            if created && !matches!(result, Ok(Stored::Deferred)) {
                out.insert(mark, Event::Started(fa.info.clone()));
            }
            return match result {
                Ok(Stored::Duplicate) => Disposition::Duplicate,
                Ok(Stored::Partial) => Disposition::Stored,
                Ok(Stored::Deferred) => {
                    if created {
                        fa.retired = true;
                        drop(fa);
                        self.unlist(&rel_path, &file);
                    }
                    Disposition::Deferred
                }
                Ok(Stored::Done(succeeded)) => {
                    drop(fa);
                    // Only this thread can retire it now: every other chunk of
                    // the file is a duplicate of a complete file (below).
                    let _ = self.retire(&file, succeeded, out);
                    Disposition::Stored
                }
                Err(error) => {
                    drop(fa);
                    self.fail(&file, error, pos, out);
                    Disposition::Rejected
                }
            };
        }
    }

    /// Finds the instance a chunk belongs to, or starts one (returned with
    /// `true`), or says why the chunk is not needed.
    fn lookup(
        &self,
        rel_path: &str,
        pos: Position,
        chunk: &Chunk<'_>,
        out: &mut Vec<Event>,
    ) -> Result<(Arc<Mutex<FileAssembly>>, bool), Disposition> {
        let mut t = lock(&self.table);
        if let Some(files) = t.files.get(rel_path) {
            for f in files {
                if lock(f).info.file_hash == *chunk.file_hash {
                    return Ok((Arc::clone(f), false));
                }
            }
        }
        // A redelivery of a message of a file that is being uploaded or recorded.
        if pos.offset >= 0 {
            let o = stored(pos.offset);
            if t.owned.values().any(|w| {
                w.info.rel_path == rel_path && w.offsets.get(&pos.partition).is_some_and(|s| s.contains(o))
            }) {
                return Err(Disposition::Duplicate);
            }
        }
        let mut echo = false;
        if let Some(done) = t.finished.get_mut(rel_path) {
            if done.losers.contains(chunk.file_hash) {
                return Err(Disposition::Stale);
            }
            match compare_chunk(&done.info, chunk) {
                Generation::Same => {
                    // An index the finished instance never saw is the tail of a
                    // failed file; one it saw, at an offset not its own, is the
                    // file produced again (or a stray duplicate).
                    if done.chunks.insert(chunk.chunk_i, chunk.chunk_i + 1).is_ok() {
                        return Err(Disposition::Stale);
                    }
                    echo = done.succeeded;
                }
                Generation::Contradiction => {
                    out.push(Event::Rejected {
                        position: pos,
                        error: Error::malformed(
                            "n_total_chunks",
                            Some(chunk.filename),
                            format!(
                                "{} contradicts the {} chunks of the already finished file with the same hash",
                                chunk.n_total_chunks, done.info.n_chunks
                            ),
                        ),
                    });
                    return Err(Disposition::Rejected);
                }
                // A different file under the same path after the last one finished:
                // a new transfer, whatever its size or time stamp.
                Generation::Newer | Generation::Older => {}
            }
        }
        t.next_instance += 1;
        let info = FileInfo {
            instance: t.next_instance,
            rel_path: rel_path.to_owned(),
            rel_output_path: chunk.rel_output_path(),
            filename: chunk.filename.to_owned(),
            n_chunks: chunk.n_total_chunks,
            file_hash: *chunk.file_hash,
            mtime: chunk.file_mtime,
            echo,
            first: pos,
        };
        let fa =
            Arc::new(Mutex::new(FileAssembly::new(info, self.part_size, chunk, Arc::clone(&self.budget))));
        t.files.entry(rel_path.to_owned()).or_default().push(Arc::clone(&fa));
        Ok((fa, true))
    }

    fn unlist(&self, rel_path: &str, file: &Arc<Mutex<FileAssembly>>) {
        let mut t = lock(&self.table);
        Self::unlist_locked(&mut t, rel_path, file);
    }

    fn unlist_locked(t: &mut Table, rel_path: &str, file: &Arc<Mutex<FileAssembly>>) {
        if let Some(v) = t.files.get_mut(rel_path) {
            v.retain(|f| !Arc::ptr_eq(f, file));
            if v.is_empty() {
                t.files.remove(rel_path);
            }
        }
    }

    /// Moves a finished instance from the receiving table to the owned table,
    /// in one step under the table lock.
    /// Returns the instance's offsets, or None if another thread retired it first.
    fn retire(
        &self,
        file: &Arc<Mutex<FileAssembly>>,
        succeeded: bool,
        out: &mut Vec<Event>,
    ) -> Option<OffsetRuns> {
        // The table lock first (the order every path takes: table, then file):
        // the file's offsets must leave it and join the owned table while no
        // commit position can be computed, or another thread could see the file
        // pinned neither as received nor as owned and commit past its messages.
        let mut t = lock(&self.table);
        let mut fa = lock(file);
        if fa.retired {
            return None;
        }
        fa.retired = true;
        let runs = runs_of(&fa.offsets);
        let info = fa.info.clone();
        let chunks = std::mem::take(&mut fa.chunks);
        let mut offsets = std::mem::take(&mut fa.offsets);
        fa.parts.clear();
        drop(fa);
        Self::unlist_locked(&mut t, &info.rel_path, file);
        let mut losers = Vec::new();
        if succeeded {
            // Generations received alongside that this one supersedes.
            let others = t.files.get(&info.rel_path).cloned().unwrap_or_default();
            for other in others {
                let mut o = lock(&other);
                if o.retired
                    || compare_generation(&o.info, &info.file_hash, info.n_chunks, info.mtime)
                        != Generation::Newer
                {
                    continue;
                }
                o.retired = true;
                losers.push(o.info.file_hash);
                merge_offsets(&mut offsets, &o.offsets);
                out.push(Event::Superseded { file: o.info.clone(), by: info.clone() });
                o.parts.clear();
                drop(o);
                Self::unlist_locked(&mut t, &info.rel_path, &other);
            }
        }
        t.owned.insert(
            info.instance,
            Owned { info: info.clone(), offsets, failed: !succeeded, since: Instant::now() },
        );
        let key = info.rel_path.clone();
        if let Some(prev) = t.finished.get(&key) {
            // Late chunks of generations that lost earlier stay stale.
            for h in prev.losers.iter().rev().take(16) {
                if !losers.contains(h) && *h != info.file_hash {
                    losers.push(*h);
                }
            }
        }
        t.finished_order.push_back((key.clone(), info.instance));
        t.finished.insert(key, Finished { info, succeeded, chunks, losers });
        while t.finished_order.len() > FINISHED_MEMORY {
            if let Some((k, inst)) = t.finished_order.pop_front() {
                if t.finished.get(&k).is_some_and(|d| d.info.instance == inst) {
                    t.finished.remove(&k);
                }
            }
        }
        Some(runs)
    }

    fn fail(&self, file: &Arc<Mutex<FileAssembly>>, error: Error, position: Position, out: &mut Vec<Event>) {
        let info = lock(file).info.clone();
        let mark = out.len();
        if let Some(offsets) = self.retire(file, false, out) {
            out.insert(mark, Event::Failed { file: info, error, position, offsets });
        }
    }

    /// The instance is durably done (in the bucket and journaled) or durably
    /// given up (recorded): its offsets join the done set, atomically with it
    /// leaving the owned table. False if it was not owned.
    pub fn settle(&self, instance: u64) -> bool {
        let mut t = lock(&self.table);
        let Some(w) = t.owned.remove(&instance) else {
            return false;
        };
        let mut ps = lock(&self.partitions);
        for (p, set) in &w.offsets {
            let done = &mut ps.entry(*p).or_default().done;
            for (a, b) in set.ranges() {
                done.union(a, b);
            }
        }
        true
    }

    /// Gives up a file still being received (its producer stopped): it becomes
    /// owned as failed, to be settled once that is recorded.
    pub fn abandon(&self, instance: u64) -> Option<(FileInfo, OffsetRuns)> {
        let file = {
            let t = lock(&self.table);
            t.files.values().flatten().find(|f| lock(f).info.instance == instance).cloned()
        }?;
        let info = lock(&file).info.clone();
        let mut sink = Vec::new();
        let runs = self.retire(&file, false, &mut sink)?;
        Some((info, runs))
    }

    /// Marks offset ranges (half-open) of `partition` as already accounted for.
    pub fn skip_offsets(&self, partition: i32, ranges: &[(i64, i64)]) {
        let mut ps = lock(&self.partitions);
        let done = &mut ps.entry(partition).or_default().done;
        for &(a, b) in ranges {
            if a >= 0 && b > a {
                done.union(stored(a), stored(b));
            }
        }
    }

    /// If `offset` of `partition` starts or lies in a done range, where that range ends.
    pub fn skip_end(&self, partition: i32, offset: i64) -> Option<i64> {
        if offset < 0 {
            return None;
        }
        lock(&self.partitions).get(&partition)?.done.end_of_run(stored(offset)).map(kafka)
    }

    /// The partition was assigned to a reader that starts at `committed` (the
    /// group's committed offset, or -1 for none) with `done_above` known to be
    /// done. Returns the offset to start reading from (past done runs).
    pub fn assigned(&self, partition: i32, reader: u32, committed: i64, done_above: &[(i64, i64)]) -> i64 {
        self.skip_offsets(partition, done_above);
        let mut ps = lock(&self.partitions);
        let st = ps.entry(partition).or_default();
        st.reader = Reader::Thread(reader);
        st.floor = committed.max(0);
        if committed < 0 {
            st.next = None;
            return committed;
        }
        let start = st.done.end_of_run(stored(committed)).map_or(committed, kafka);
        st.next = Some(start);
        start
    }

    /// If the read position of `partition` is at the start of a done run, moves
    /// it past the run and returns where to seek.
    pub fn skip_ahead(&self, partition: i32, reader: u32) -> Option<i64> {
        let mut ps = lock(&self.partitions);
        let st = ps.get_mut(&partition).filter(|st| st.is_read_by(reader))?;
        let next = st.next?;
        let end = kafka(st.done.end_of_run(stored(next))?);
        st.next = Some(end);
        Some(end)
    }

    /// A commit of `offset` to `partition` succeeded.
    pub fn committed(&self, partition: i32, offset: i64) {
        let mut ps = lock(&self.partitions);
        let st = ps.entry(partition).or_default();
        st.floor = st.floor.max(offset);
    }

    /// The partitions left consumer thread `reader`. A partition another
    /// thread was assigned meanwhile (the old reader heard of the rebalance
    /// late) stays as that thread has it. Files being received none of whose
    /// messages lie in a partition still read in this process are dropped
    /// (their next reader reads them again from the committed offset) and
    /// returned, so their uploads can be aborted; a file with messages in a
    /// partition still read keeps its state. Owned files stay: they are
    /// uploaded and settled as usual.
    pub fn revoked(&self, partitions: &[i32], reader: u32) -> Vec<FileInfo> {
        let mut dropped = Vec::new();
        let mut t = lock(&self.table);
        let mut ps = lock(&self.partitions);
        for p in partitions {
            let st = ps.entry(*p).or_default();
            if st.is_read_by(reader) {
                st.reader = Reader::Released;
                st.next = None;
            }
        }
        let released = |p: &i32| ps.get(p).is_some_and(|st| st.reader == Reader::Released);
        for files in t.files.values_mut() {
            files.retain(|f| {
                let mut fa = lock(f);
                if !fa.offsets.is_empty() && fa.offsets.keys().all(released) {
                    fa.retired = true;
                    dropped.push(fa.info.clone());
                    false
                } else {
                    true
                }
            });
        }
        t.files.retain(|_, v| !v.is_empty());
        dropped
    }

    /// Per partition, the lowest offset still needed by a file that is not settled.
    pub fn pinned_offsets(&self) -> BTreeMap<i32, i64> {
        let t = lock(&self.table);
        Self::pins_locked(&t)
    }

    fn pins_locked(t: &Table) -> BTreeMap<i32, i64> {
        let mut out = BTreeMap::new();
        let mut note = |p: i32, min: i64| {
            let e = out.entry(p).or_insert(min);
            *e = (*e).min(min);
        };
        for f in t.files.values().flatten() {
            let fa = lock(f);
            if fa.info.echo {
                continue;
            }
            for (p, set) in &fa.offsets {
                if let Some(m) = set.min_start() {
                    note(*p, kafka(m));
                }
            }
        }
        for w in t.owned.values() {
            for (p, set) in &w.offsets {
                if let Some(m) = set.min_start() {
                    note(*p, kafka(m));
                }
            }
        }
        out
    }

    /// For each of `partitions` read so far: the offset that may be committed
    /// (the low watermark: the next offset to read, or the lowest offset of a
    /// file not yet settled if that is lower, never below the floor), and the
    /// done runs above it for the commit metadata.
    pub fn commit_positions(&self, partitions: &[i32], reader: u32) -> Vec<CommitPosition> {
        let t = lock(&self.table);
        let pins = Self::pins_locked(&t);
        let mut ps = lock(&self.partitions);
        let mut out = Vec::new();
        for p in partitions {
            let Some(st) = ps.get_mut(p).filter(|st| st.is_read_by(reader)) else { continue };
            let Some(next) = st.next else { continue };
            let mut pos = next;
            if let Some(&pin) = pins.get(p) {
                pos = pos.min(pin);
            }
            pos = pos.max(st.floor);
            // Only what a confirmed commit passed can be forgotten: if this commit
            // fails and the partition is read again from the older one, the done
            // runs between them still save those files from a second transfer.
            st.done.prune_below(stored(st.floor));
            let done_above = st
                .done
                .ranges()
                .filter(|&(_, b)| kafka(b) > pos)
                .map(|(a, b)| (kafka(a).max(pos), kafka(b)))
                .collect();
            out.push(CommitPosition { partition: *p, offset: pos, done_above });
        }
        out
    }

    /// Every instance not yet settled: being received, uploaded, or recorded as failed.
    pub fn in_progress(&self) -> Vec<Progress> {
        let t = lock(&self.table);
        let now = Instant::now();
        let mut out = Vec::new();
        for f in t.files.values().flatten() {
            let fa = lock(f);
            let buffered = fa.parts.values().map(|s| s.accounted).sum();
            out.push(Progress {
                info: fa.info.clone(),
                chunks: fa.chunks.covered(),
                buffered,
                partitions: fa.offsets.keys().copied().collect(),
                max_offsets: fa.offsets.iter().map(|(p, s)| (*p, kafka(s.max_end()))).collect(),
                idle_seconds: now.duration_since(fa.last_chunk).as_secs_f64(),
                state: "receiving",
            });
        }
        for w in t.owned.values() {
            out.push(Progress {
                info: w.info.clone(),
                chunks: w.info.n_chunks,
                buffered: 0,
                partitions: w.offsets.keys().copied().collect(),
                max_offsets: w.offsets.iter().map(|(p, s)| (*p, kafka(s.max_end()))).collect(),
                idle_seconds: now.duration_since(w.since).as_secs_f64(),
                state: if w.failed { "failed" } else { "uploading" },
            });
        }
        out
    }
}

fn output_append(info: &FileInfo) -> &str {
    // The append is the difference between the output name and the file name;
    // recomputing it keeps FileInfo free of a field only this check needs.
    let out_name = info.rel_output_path.rsplit('/').next().unwrap_or("");
    let (stem, suffix) = match info.filename.rfind('.') {
        Some(d) if d > 0 && d + 1 < info.filename.len() => info.filename.split_at(d),
        _ => (info.filename.as_str(), ""),
    };
    out_name.strip_prefix(stem).and_then(|rest| rest.strip_suffix(suffix)).unwrap_or("")
}

enum Stored {
    Duplicate,
    Partial,
    Deferred,
    /// All chunks are in; true when the file hash matched.
    Done(bool),
}

impl FileAssembly {
    fn new(info: FileInfo, min_part_size: u64, chunk: &Chunk<'_>, budget: Arc<MemoryBudget>) -> Self {
        // The producer's chunking tells us (for uniform chunks, an upper bound
        // of) the file size up front; grow parts so no file needs > MAX_PARTS.
        let estimate = if chunk.chunk_i == chunk.n_total_chunks {
            chunk.chunk_offset_write + chunk.data.len() as u64
        } else {
            chunk.n_total_chunks.saturating_mul(chunk.data.len() as u64)
        }
        .min(wire::MAX_FILE_SIZE);
        let needed = estimate.div_ceil(MAX_PARTS);
        let part_size = if needed > min_part_size { needed.div_ceil(1 << 20) << 20 } else { min_part_size };
        Self {
            info,
            part_size,
            size_hint: estimate,
            chunks: IntervalSet::new(),
            bytes: IntervalSet::new(),
            total: None,
            parts: BTreeMap::new(),
            hashed_upto: 0,
            running: Running::default(),
            hash_proven: false,
            offsets: BTreeMap::new(),
            budget,
            parts_released: 0,
            retired: false,
            last_chunk: Instant::now(),
            bookkeeping: 0,
        }
    }

    /// Every chunk has arrived (the file is complete, or failed its file hash).
    fn is_complete(&self) -> bool {
        self.chunks.covered() == self.info.n_chunks
    }

    fn record(&mut self, pos: Position) {
        // Offsets are never negative for consumed messages; a duplicate at the same
        // offset (a redelivery) is already recorded.
        let o = stored(pos.offset);
        let set = self.offsets.entry(pos.partition).or_default();
        let before = set.n_ranges();
        set.union(o, o + 1);
        if set.n_ranges() > before {
            self.bookkeeping += PIECE_OVERHEAD;
            self.budget.force_take(PIECE_OVERHEAD);
        }
        self.last_chunk = Instant::now();
    }

    fn part_len(&self, k: u64) -> u64 {
        match self.total {
            Some(t) => self.part_size.min(t.saturating_sub(k * self.part_size)),
            None => self.part_size,
        }
    }

    /// Splits `[start, start + len)` into `(part, local offset, from, take)` pieces.
    fn pieces(&self, start: u64, len: u64) -> Vec<(u64, usize, usize, usize)> {
        let p = self.part_size;
        let end = start + len;
        let mut at = start;
        let mut out = Vec::new();
        while at < end {
            let k = at / p;
            let take = end.min((k + 1) * p) - at;
            out.push((k, (at - k * p) as usize, (at - start) as usize, take as usize));
            at += take;
        }
        out
    }

    fn store(
        &mut self,
        pos: Position,
        chunk: &Chunk<'_>,
        existed: bool,
        verified: bool,
        out: &mut Vec<Event>,
    ) -> Result<Stored> {
        let i = chunk.chunk_i;
        let n = self.info.n_chunks;
        if self.chunks.contains(i) {
            self.record(pos);
            return Ok(Stored::Duplicate);
        }
        let start = chunk.chunk_offset_write;
        let end = start + chunk.data.len() as u64;
        if i == n {
            if end < self.bytes.max_end() {
                let reached = self.bytes.max_end();
                return Err(Error::ShortLastChunk { chunk_i: i, n_total_chunks: n, end, reached });
            }
        } else if let Some(size) = self.total {
            if end > size {
                return Err(Error::PastEnd { chunk_i: i, n_total_chunks: n, end, size });
            }
        }
        let overlap = Error::Overlap { chunk_i: i, n_total_chunks: n, start, end };
        if start < end && self.bytes.missing(start, end) != [(start, end)] {
            return Err(overlap);
        }
        if end > 0 && (end - 1) / self.part_size >= MAX_PARTS {
            return Err(Error::TooManyParts {
                chunk_i: i,
                n_total_chunks: n,
                end,
                part_size: self.part_size,
            });
        }
        // Bytes that extend the file's contiguous prefix always go in (they make
        // progress and free memory); others wait while memory is short.
        let in_order = existed && start == self.hashed_upto;
        if !in_order {
            let cost: u64 = self
                .pieces(start, end - start)
                .iter()
                .map(|&(k, local, _, take)| match self.parts.get(&k) {
                    Some(slot) => slot.cost(local, take, self.part_len(k), self.whole_part(k, local)),
                    None if self.whole_part(k, local) && self.budget.is_full_part(self.part_len(k)) => {
                        self.part_len(k)
                    }
                    None if local == 0 => (take as u64).max(MIN_GROWTH.min(self.part_len(k))),
                    None => take as u64 + PIECE_OVERHEAD,
                })
                .sum();
            if !self.budget.fits(cost + PIECE_OVERHEAD) {
                return Ok(Stored::Deferred);
            }
        }
        if i == n {
            self.total = Some(end);
        }
        self.bytes.insert(start, end).map_err(|_| overlap)?;
        let _ = self.chunks.insert(i, i + 1);
        self.record(pos);
        if verified && n == 1 && start == 0 && chunk.chunk_hash == &self.info.file_hash {
            self.hash_proven = true;
        }
        self.write(start, chunk.data);
        self.advance_hash();
        self.release_complete_parts(out);
        if !self.chunks.is_exactly(1, n + 1) {
            return Ok(Stored::Partial);
        }
        Ok(Stored::Done(self.finish(pos, out)?))
    }

    fn write(&mut self, start: u64, data: &[u8]) {
        for (k, local, from, take) in self.pieces(start, data.len() as u64) {
            let part_len = self.part_len(k);
            let full = self.whole_part(k, local);
            let budget = Arc::clone(&self.budget);
            let slot = self.parts.entry(k).or_insert_with(|| Slot::new(budget));
            slot.write(local, &data[from..from + take], part_len, full);
        }
    }

    /// Whether bytes at `local` of part `k` start a part that, by what the
    /// producer's chunking says, fills a whole part buffer: it then takes a
    /// reused full-size buffer. A crafted size only costs a charge that matches
    /// the buffer taken.
    fn whole_part(&self, k: u64, local: usize) -> bool {
        local == 0 && (k + 1).saturating_mul(self.part_size) <= self.size_hint
    }

    fn advance_hash(&mut self) {
        let Some(run_end) = self.bytes.end_of_run(self.hashed_upto) else {
            return;
        };
        let p = self.part_size;
        while self.hashed_upto < run_end {
            let k = self.hashed_upto / p;
            let local = (self.hashed_upto - k * p) as usize;
            let local_end = (run_end.min((k + 1) * p) - k * p) as usize;
            let Some(slot) = self.parts.get(&k) else { break };
            let bytes = slot.bytes();
            let local_end = local_end.min(bytes.len());
            if local_end <= local {
                break;
            }
            if self.hash_proven {
                self.running.update_crc(&bytes[local..local_end]);
            } else {
                self.running.update(&bytes[local..local_end]);
            }
            self.hashed_upto = k * p + local_end as u64;
        }
        self.forget_done_parts();
    }

    fn part_hashed(&self, k: u64) -> bool {
        let end = (k + 1) * self.part_size;
        self.hashed_upto >= end || self.total.is_some_and(|t| self.hashed_upto >= t)
    }

    fn forget_done_parts(&mut self) {
        let done: Vec<u64> =
            self.parts.iter().filter(|(k, s)| s.released && self.part_hashed(**k)).map(|(k, _)| *k).collect();
        for k in done {
            self.parts.remove(&k);
        }
    }

    /// A part goes out once it is complete and the file is known to be larger
    /// than one part (otherwise it may yet be the whole file: a single PUT).
    fn release_complete_parts(&mut self, out: &mut Vec<Event>) {
        if self.bytes.max_end() <= self.part_size {
            return;
        }
        let ready: Vec<u64> = self
            .parts
            .iter()
            .filter(|(k, s)| !s.released && s.filled == self.part_len(**k) && s.pending.is_empty())
            .map(|(k, _)| *k)
            .collect();
        for k in ready {
            let Some(slot) = self.parts.get_mut(&k) else { continue };
            let data = slot.seal();
            slot.released = true;
            self.parts_released += 1;
            out.push(Event::Part {
                file: self.info.clone(),
                number: (k + 1) as u32,
                crc64nvme: crc64nvme(&data),
                data,
            });
        }
        self.forget_done_parts();
    }

    fn finish(&mut self, position: Position, out: &mut Vec<Event>) -> Result<bool> {
        let total = self.total.unwrap_or(0);
        if !self.bytes.is_exactly(0, total) || self.hashed_upto != total {
            return Err(Error::Incomplete {
                n_chunks: self.info.n_chunks,
                covered: self.bytes.covered(),
                size: total,
            });
        }
        let running = std::mem::take(&mut self.running);
        let (sha, crc) = running.finish();
        if !self.hash_proven && sha != self.info.file_hash {
            out.push(Event::Failed {
                file: self.info.clone(),
                error: Error::FileHash { size: total },
                position,
                offsets: runs_of(&self.offsets),
            });
            return Ok(false);
        }
        let single = if total <= self.part_size {
            Some(match self.parts.get_mut(&0) {
                Some(slot) => slot.seal(),
                None => Arc::new(PartBytes::from(Vec::new())),
            })
        } else {
            self.release_complete_parts(out);
            None
        };
        out.push(Event::Complete {
            file: self.info.clone(),
            size: total,
            single,
            crc64nvme: crc,
            parts: self.parts_released,
            offsets: runs_of(&self.offsets),
        });
        Ok(true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checksum::sha512;
    use proptest::prelude::*;

    struct Msg {
        bytes: Vec<u8>,
    }

    fn chunks_of(name: &str, subdir: &str, content: &[u8], chunk: usize, mtime: f64) -> Vec<Msg> {
        let fh = sha512(content);
        let pieces: Vec<&[u8]> =
            if content.is_empty() { vec![&content[..0]] } else { content.chunks(chunk).collect() };
        let n = pieces.len() as u64;
        let mut off = 0u64;
        pieces
            .iter()
            .enumerate()
            .map(|(idx, data)| {
                let ch = sha512(data);
                let c = Chunk {
                    filename: name,
                    file_hash: &fh,
                    chunk_hash: &ch,
                    chunk_offset_write: off,
                    chunk_i: idx as u64 + 1,
                    n_total_chunks: n,
                    subdir_str: subdir,
                    filename_append: "",
                    data,
                    file_mtime: Some(mtime),
                };
                off += data.len() as u64;
                Msg { bytes: wire::encode(&c) }
            })
            .collect()
    }

    /// Feeds messages, then rebuilds each completed object from its events
    /// (as the uploader would) and returns rel_output_path -> bytes.
    fn run(asm: &Assembler, msgs: &[(i32, i64, &[u8])]) -> (BTreeMap<String, Vec<u8>>, Vec<Event>) {
        let mut events = Vec::new();
        for (p, o, m) in msgs {
            asm.add(Position { partition: *p, offset: *o }, m, &mut events);
        }
        settle_all(asm, &events);
        let mut parts: HashMap<u64, BTreeMap<u32, Buffer>> = HashMap::new();
        let mut objects = BTreeMap::new();
        for e in &events {
            match e {
                Event::Part { file, number, data, crc64nvme: c } => {
                    assert_eq!(*c, crc64nvme(data));
                    assert!(parts
                        .entry(file.instance)
                        .or_default()
                        .insert(*number, Arc::clone(data))
                        .is_none());
                }
                Event::Complete { file, size, single, crc64nvme: c, parts: n, .. } => {
                    let bytes = match single {
                        Some(b) => b.to_vec(),
                        None => {
                            let ps = parts.remove(&file.instance).unwrap_or_default();
                            assert_eq!(ps.len() as u32, *n);
                            assert_eq!(ps.keys().copied().collect::<Vec<_>>(), (1..=*n).collect::<Vec<_>>());
                            ps.values().flat_map(|b| b.iter().copied()).collect()
                        }
                    };
                    assert_eq!(bytes.len() as u64, *size);
                    assert_eq!(crc64nvme(&bytes), *c);
                    objects.insert(file.rel_output_path.clone(), bytes);
                }
                _ => {}
            }
        }
        (objects, events)
    }

    /// Settles every completed or failed instance, as the uploader does once the
    /// object is stored or the failure recorded.
    fn settle_all(asm: &Assembler, events: &[Event]) {
        for e in events {
            if let Event::Complete { file, .. } | Event::Failed { file, .. } = e {
                asm.settle(file.instance);
            }
        }
    }

    fn content(len: usize, seed: u8) -> Vec<u8> {
        (0..len).map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed)).collect()
    }

    #[test]
    fn full_part_buffers_are_reused_and_charged_in_full() {
        const P: usize = MIN_PART_SIZE as usize;
        let asm = Assembler::new(P as u64, 64 * P as u64).unwrap();
        let feed_file = |name: &str, data: &[u8], partition: i32| {
            let msgs = chunks_of(name, "", data, 512 << 10, 1.0);
            let mut events = Vec::new();
            for (i, m) in msgs.iter().enumerate() {
                asm.add(Position { partition, offset: i as i64 }, &m.bytes, &mut events);
            }
            events
        };
        let first = content(2 * P + 1000, 3);
        let events = feed_file("one", &first, 0);
        let parts: Vec<(u32, Buffer)> = events
            .iter()
            .filter_map(|e| match e {
                Event::Part { number, data, .. } => Some((*number, Arc::clone(data))),
                _ => None,
            })
            .collect();
        assert_eq!(parts.iter().map(|(n, _)| *n).collect::<Vec<_>>(), vec![1, 2, 3]);
        assert_eq!(&parts[0].1[..], &first[..P]);
        assert_eq!(&parts[1].1[..], &first[P..2 * P]);
        assert_eq!(&parts[2].1[..], &first[2 * P..]);
        let reused: Vec<*const u8> = parts[..2].iter().map(|(_, b)| b.as_ptr()).collect();
        settle_all(&asm, &events);
        assert_eq!(asm.budget().spares(), 0, "held by the uploader: not spare yet");
        drop(events);
        drop(parts);
        // The two full parts come back; the short last one is freed.
        assert_eq!(asm.budget().spares(), 2);
        assert_eq!(asm.budget().used(), 0);
        let second = content(P, 4);
        let events = feed_file("two", &second, 1);
        let single = events.iter().find_map(|e| match e {
            Event::Complete { single: Some(b), .. } => Some(Arc::clone(b)),
            _ => None,
        });
        let single = single.expect("a file of exactly one part is one PUT");
        assert_eq!(&single[..], &second[..]);
        assert!(reused.contains(&single.as_ptr()), "a spare buffer is reused");
        assert_eq!(asm.budget().spares(), 1);
        settle_all(&asm, &events);
        drop(events);
        drop(single);
        assert_eq!(asm.budget().spares(), 2);
        assert_eq!(asm.budget().used(), 0);
    }

    #[test]
    fn a_file_that_claims_to_be_big_costs_only_what_it_is_charged() {
        const P: usize = MIN_PART_SIZE as usize;
        let asm = Assembler::new(P as u64, 64 * P as u64).unwrap();
        // Chunk 1 of 40 of 512 KiB, so "20 MiB": the first part takes a full buffer
        // and the budget is charged for all of it; dropping the file gives it back.
        let data = content(512 << 10, 5);
        let m = crafted("liar", 1, 40, 0, &data);
        let mut events = Vec::new();
        asm.add(Position { partition: 0, offset: 0 }, &m, &mut events);
        // The part buffer, plus the bookkeeping of one offset range.
        assert_eq!(asm.budget().used(), P as u64 + PIECE_OVERHEAD);
        let instance = events
            .iter()
            .find_map(|e| match e {
                Event::Started(info) => Some(info.instance),
                _ => None,
            })
            .expect("started");
        assert!(asm.abandon(instance).is_some());
        asm.settle(instance);
        assert_eq!(asm.budget().used(), 0);
        assert_eq!(asm.budget().spares(), 1);
    }

    #[test]
    fn an_out_of_order_chunk_that_opens_a_whole_part_is_costed_as_one() {
        // The check before an out-of-order write must see the full-size buffer the
        // write will take, or each such chunk overshoots the limit by a part.
        const P: usize = MIN_PART_SIZE as usize;
        let limit = 2 * P as u64 + P as u64 / 2;
        let asm = Assembler::with_limits(P as u64, limit);
        let data = content(4 * P, 6);
        let msgs = chunks_of("w.bin", "", &data, 512 << 10, 1.0);
        let per_part = P / (512 << 10);
        let mut events = Vec::new();
        let mut add =
            |offset: i64, k: usize| asm.add(Position { partition: 0, offset }, &msgs[k].bytes, &mut events);
        assert_eq!(add(0, per_part), Disposition::Stored);
        assert_eq!(add(1, 2 * per_part), Disposition::Stored);
        assert_eq!(add(2, 3 * per_part), Disposition::Deferred);
        assert!(asm.budget().used() <= limit, "{} > {limit}", asm.budget().used());
    }

    #[test]
    fn small_file_is_one_put() {
        let asm = Assembler::with_any_part_size(1000);
        let data = content(999, 1);
        let msgs = chunks_of("a.dat", "sub/dir", &data, 100, 1.0);
        let feed: Vec<_> = msgs.iter().enumerate().map(|(i, m)| (0, i as i64, m.bytes.as_slice())).collect();
        let (objs, events) = run(&asm, &feed);
        assert_eq!(objs["sub/dir/a.dat"], data);
        assert!(events.iter().all(|e| !matches!(e, Event::Part { .. })));
        assert!(asm.pinned_offsets().is_empty());
    }

    #[test]
    fn empty_file_and_exact_part_multiple() {
        let asm = Assembler::with_any_part_size(100);
        let empty = chunks_of("e", "", b"", 10, 1.0);
        let exact = content(300, 2);
        let exact_msgs = chunks_of("x", "", &exact, 50, 1.0);
        let mut feed = vec![(0, 0, empty[0].bytes.as_slice())];
        feed.extend(exact_msgs.iter().enumerate().map(|(i, m)| (1, i as i64, m.bytes.as_slice())));
        let (objs, _) = run(&asm, &feed);
        assert_eq!(objs["e"], b"");
        assert_eq!(objs["x"], exact);
    }

    #[test]
    fn duplicates_after_completion_are_dropped_but_reproduction_is_new() {
        let asm = Assembler::with_any_part_size(100);
        let data = content(250, 3);
        let msgs = chunks_of("r", "", &data, 64, 1.0);
        let mut feed: Vec<_> =
            msgs.iter().enumerate().map(|(i, m)| (0, i as i64, m.bytes.as_slice())).collect();
        // Redelivery at the same offsets: dropped.
        feed.extend(msgs.iter().enumerate().map(|(i, m)| (0, i as i64, m.bytes.as_slice())));
        let (objs, events) = run(&asm, &feed);
        assert_eq!(objs.len(), 1);
        assert_eq!(events.iter().filter(|e| matches!(e, Event::Complete { .. })).count(), 1);
        // A stray duplicate at a later offset starts an echo that pins nothing.
        let mut ev = Vec::new();
        asm.add(Position { partition: 0, offset: 50 }, &msgs[1].bytes, &mut ev);
        assert!(matches!(&ev[..], [Event::Started(f)] if f.echo));
        assert!(asm.pinned_offsets().is_empty());
        // The same file produced again later in the log: transferred again.
        let again: Vec<_> =
            msgs.iter().enumerate().map(|(i, m)| (0, 100 + i as i64, m.bytes.as_slice())).collect();
        let (objs, _) = run(&asm, &again);
        assert_eq!(objs["r"], data);
    }

    #[test]
    fn hash_mismatch_fails_without_complete() {
        let asm = Assembler::with_any_part_size(100);
        let data = content(500, 4);
        let mut other = data.clone();
        other[7] ^= 1;
        // Chunks of `other` carrying the hash of `data`: each chunk is self-consistent.
        let fh = sha512(&data);
        let mut events = Vec::new();
        for (idx, piece) in other.chunks(100).enumerate() {
            let ch = sha512(piece);
            let c = Chunk {
                filename: "m",
                file_hash: &fh,
                chunk_hash: &ch,
                chunk_offset_write: idx as u64 * 100,
                chunk_i: idx as u64 + 1,
                n_total_chunks: 5,
                subdir_str: "",
                filename_append: "",
                data: piece,
                file_mtime: None,
            };
            asm.add(Position { partition: 0, offset: idx as i64 }, &wire::encode(&c), &mut events);
        }
        assert!(events.iter().any(|e| matches!(e, Event::Failed { error: Error::FileHash { .. }, .. })));
        assert!(!events.iter().any(|e| matches!(e, Event::Complete { .. })));
    }

    #[test]
    fn corrupted_chunk_fails_its_file_and_later_chunks_are_ignored() {
        let asm = Assembler::with_any_part_size(100);
        let msgs = chunks_of("bad.dat", "", &content(50, 5), 10, 1.0);
        let mut events = Vec::new();
        asm.add(Position { partition: 0, offset: 0 }, &msgs[0].bytes, &mut events);
        let mut m = msgs[1].bytes.clone();
        let last = m.len() - 12;
        m[last] ^= 0xff;
        assert_eq!(asm.add(Position { partition: 0, offset: 1 }, &m, &mut events), Disposition::Rejected);
        for (i, msg) in msgs.iter().enumerate().skip(2) {
            let d = asm.add(Position { partition: 0, offset: i as i64 }, &msg.bytes, &mut events);
            assert_eq!(d, Disposition::Stale);
        }
        let failed = events.iter().filter(|e| matches!(e, Event::Failed { .. })).count();
        assert_eq!(failed, 1);
        assert!(!events.iter().any(|e| matches!(e, Event::Complete { .. })));
        // Owned until its failure is recorded, then committed past.
        assert_eq!(asm.pinned_offsets().get(&0), Some(&0));
        settle_all(&asm, &events);
        assert!(asm.pinned_offsets().is_empty());
    }

    #[test]
    fn corrupted_first_chunk_fails_the_file_and_truncated_messages_are_rejected() {
        let asm = Assembler::with_any_part_size(100);
        let msgs = chunks_of("bad.dat", "", &content(50, 5), 10, 1.0);
        let mut m = msgs[2].bytes.clone();
        let last = m.len() - 12;
        m[last] ^= 0xff; // inside the data field
        let mut events = Vec::new();
        let d = asm.add(Position { partition: 0, offset: 0 }, &m, &mut events);
        assert_eq!(d, Disposition::Rejected);
        assert!(events.iter().any(|e| matches!(e,
            Event::Failed { file, error, .. } if file.filename == "bad.dat" && error.to_string().contains("chunk 3/5 is corrupted"))));
        let mut events = Vec::new();
        let d = asm.add(Position { partition: 0, offset: 1 }, &msgs[0].bytes[..40], &mut events);
        assert_eq!(d, Disposition::Rejected);
        match &events[..] {
            [Event::Rejected { error, position }] => {
                assert!(matches!(error, Error::Malformed { .. }), "{error:?}");
                assert_eq!(position.offset, 1);
                assert!(error.to_string().contains("bad.dat"), "{error}");
            }
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn generation_reset_keeps_the_triggering_chunk() {
        let asm = Assembler::with_any_part_size(1000);
        let old = content(300, 6);
        let new = content(400, 7);
        let old_msgs = chunks_of("g", "", &old, 100, 10.0);
        let new_msgs = chunks_of("g", "", &new, 100, 20.0);
        let mut feed = vec![(0, 0, old_msgs[0].bytes.as_slice())];
        feed.extend(new_msgs.iter().enumerate().map(|(i, m)| (0, 1 + i as i64, m.bytes.as_slice())));
        // Late chunks of the old generation are stale.
        feed.push((0, 10, old_msgs[1].bytes.as_slice()));
        let (objs, events) = run(&asm, &feed);
        assert_eq!(objs["g"], new);
        assert!(events.iter().any(|e| matches!(e, Event::Superseded { .. })));
    }

    #[test]
    fn skipped_offsets_are_not_decoded_and_events_carry_offset_runs() {
        let asm = Assembler::with_any_part_size(1000);
        let a = chunks_of("a", "", &content(300, 9), 100, 1.0);
        asm.skip_offsets(0, &[(0, 2)]);
        let mut ev = Vec::new();
        let d = asm.add(Position { partition: 0, offset: 1 }, b"not even msgpack", &mut ev);
        assert_eq!(d, Disposition::Duplicate);
        assert!(ev.is_empty());
        for (i, m) in a.iter().enumerate() {
            asm.add(Position { partition: 0, offset: 10 + 2 * i as i64 }, &m.bytes, &mut ev);
            if i == 0 {
                // A redelivery of chunk 1 at another offset belongs to the file too.
                asm.add(Position { partition: 0, offset: 11 }, &m.bytes, &mut ev);
            }
        }
        let runs = ev.iter().find_map(|e| match e {
            Event::Complete { offsets, .. } => Some(offsets.clone()),
            _ => None,
        });
        assert_eq!(runs, Some(vec![(0, vec![(10, 13), (14, 15)])]));
        assert_eq!(asm.pinned_offsets().get(&0), Some(&10));
        assert_eq!(asm.skip_end(0, 1), Some(2));
        assert_eq!(asm.skip_end(0, 2), None);
        settle_all(&asm, &ev);
        assert!(asm.pinned_offsets().is_empty());
        assert_eq!(asm.skip_end(0, 10), Some(13));
        let d = asm.add(Position { partition: 0, offset: 5 }, b"not even msgpack", &mut ev);
        assert_eq!(d, Disposition::Rejected);
    }

    fn one_chunk(name: &str, file_hash: &[u8; 64], chunk_hash: &[u8; 64], data: &[u8]) -> Vec<u8> {
        wire::encode(&Chunk {
            filename: name,
            file_hash,
            chunk_hash,
            chunk_offset_write: 0,
            chunk_i: 1,
            n_total_chunks: 1,
            subdir_str: "",
            filename_append: "",
            data,
            file_mtime: None,
        })
    }

    #[test]
    fn a_one_chunk_file_is_proven_by_its_chunk_hash_and_only_by_a_verified_one() {
        let asm = Assembler::with_any_part_size(1 << 20);
        let data = content(3000, 7);
        let h = sha512(&data);
        let mut events = Vec::new();
        // Chunk hash = file hash, data matches: complete, with the CRC of the bytes.
        asm.add(Position { partition: 0, offset: 0 }, &one_chunk("a", &h, &h, &data), &mut events);
        let crc = events.iter().find_map(|e| match e {
            Event::Complete { file, crc64nvme, single: Some(b), .. } if file.filename == "a" => {
                assert_eq!(&b[..], data.as_slice());
                Some(*crc64nvme)
            }
            _ => None,
        });
        assert_eq!(crc, Some(crate::checksum::crc64nvme(&data)));
        // Same hashes, data altered: the chunk check rejects it; nothing completes.
        let mut bad = data.clone();
        bad[100] ^= 1;
        events.clear();
        asm.add(Position { partition: 0, offset: 1 }, &one_chunk("b", &h, &h, &bad), &mut events);
        assert!(!events.iter().any(|e| matches!(e, Event::Complete { .. })));
        // A self-consistent chunk under another file hash still fails the file hash.
        events.clear();
        let hb = sha512(&bad);
        asm.add(Position { partition: 0, offset: 2 }, &one_chunk("c", &h, &hb, &bad), &mut events);
        assert!(events.iter().any(|e| matches!(e, Event::Failed { error: Error::FileHash { .. }, .. })));
        assert!(!events.iter().any(|e| matches!(e, Event::Complete { .. })));
        // Fed unchecked (add_chunk), altered data under matching hashes is caught by the file hash.
        events.clear();
        let message = one_chunk("d", &h, &h, &bad);
        let chunk = wire::decode_unverified(&message).unwrap_or_else(|e| panic!("{e}"));
        asm.add_chunk(Position { partition: 0, offset: 3 }, &chunk, &mut events);
        assert!(events.iter().any(|e| matches!(e, Event::Failed { error: Error::FileHash { .. }, .. })));
        assert!(!events.iter().any(|e| matches!(e, Event::Complete { .. })));
    }

    fn crafted(name: &str, chunk_i: u64, n: u64, offset: u64, data: &[u8]) -> Vec<u8> {
        let ch = sha512(data);
        wire::encode(&Chunk {
            filename: name,
            file_hash: &[9; 64],
            chunk_hash: &ch,
            chunk_offset_write: offset,
            chunk_i,
            n_total_chunks: n,
            subdir_str: "",
            filename_append: "",
            data,
            file_mtime: None,
        })
    }

    #[test]
    fn claimed_sizes_do_not_allocate_and_memory_pressure_defers() {
        let asm = Assembler::new(MIN_PART_SIZE, 64 << 20).unwrap();
        let mut ev = Vec::new();
        // A chunk claiming 2^40 chunks of its size costs about its own bytes.
        let m = crafted("huge", 1, 1 << 40, 0, &[1; 1000]);
        assert_eq!(asm.add(Position { partition: 0, offset: 0 }, &m, &mut ev), Disposition::Stored);
        assert!(asm.budget().used() <= MIN_GROWTH + 1000, "{}", asm.budget().used());
        // One byte at the end of a part of each of many files that claim 1000
        // chunks: memory follows the bytes, not the parts they fall in.
        for k in 0..200u64 {
            let m = crafted(&format!("stray{k}"), 2, 1000, MIN_PART_SIZE - 1, &[2]);
            assert_eq!(
                asm.add(Position { partition: 0, offset: 1 + k as i64 }, &m, &mut ev),
                Disposition::Stored
            );
        }
        assert!(asm.budget().used() < 1 << 20, "{}", asm.budget().used());
        assert!(!ev.iter().any(|e| matches!(e, Event::Failed { .. })));
        // A normal multipart file still goes through, and gives its memory back.
        let before = asm.budget().used();
        let data = content(12 << 20, 3);
        let msgs = chunks_of("ok.bin", "", &data, 512 << 10, 1.0);
        let feed: Vec<_> = msgs.iter().enumerate().map(|(i, m)| (1, i as i64, m.bytes.as_slice())).collect();
        let (objs, _) = run(&asm, &feed);
        assert_eq!(objs["ok.bin"], data);
        assert_eq!(asm.budget().used(), before);
    }

    #[test]
    fn out_of_order_bytes_wait_when_memory_is_short_and_in_order_bytes_go_on() {
        let asm = Assembler::with_limits(1 << 20, 350 << 10);
        let data = content(600 << 10, 5);
        let msgs = chunks_of("w.bin", "", &data, 100 << 10, 1.0);
        let mut ev = Vec::new();
        // Chunks 2..=4 arrive ahead of chunk 1 and fill the memory limit.
        for i in [1usize, 2, 3] {
            assert_eq!(
                asm.add(Position { partition: 0, offset: i as i64 }, &msgs[i].bytes, &mut ev),
                Disposition::Stored
            );
        }
        let (d, deferred) = asm.add_batch(
            &[
                (Position { partition: 0, offset: 4 }, Some(msgs[4].bytes.as_slice())),
                (Position { partition: 0, offset: 5 }, Some(msgs[5].bytes.as_slice())),
                (Position { partition: 1, offset: 0 }, Some(msgs[0].bytes.as_slice())),
            ],
            0,
            &mut ev,
        );
        assert_eq!(d, vec![Disposition::Deferred, Disposition::Deferred, Disposition::Stored]);
        assert_eq!(deferred, vec![(0, 4)]);
        assert!(!ev.iter().any(|e| matches!(e, Event::Failed { .. })));
        // With chunk 1 in, the prefix moves on, parts are freed, and the rest fits.
        for (i, m) in msgs.iter().enumerate().skip(4) {
            assert_eq!(
                asm.add(Position { partition: 0, offset: i as i64 }, &m.bytes, &mut ev),
                Disposition::Stored
            );
        }
        assert!(ev.iter().any(|e| matches!(e, Event::Complete { .. })));
    }

    #[test]
    fn pins_follow_unfinished_files_and_revocation_keeps_files_with_kept_partitions() {
        let asm = Assembler::with_any_part_size(1000);
        let a = chunks_of("a", "", &content(300, 8), 100, 1.0);
        let b = chunks_of("b", "", &content(300, 9), 100, 1.0);
        let mut events = Vec::new();
        asm.add(Position { partition: 3, offset: 40 }, &a[0].bytes, &mut events);
        asm.add(Position { partition: 3, offset: 41 }, &a[1].bytes, &mut events);
        asm.add(Position { partition: 3, offset: 42 }, &b[0].bytes, &mut events);
        asm.add(Position { partition: 4, offset: 7 }, &b[1].bytes, &mut events);
        assert_eq!(asm.pinned_offsets().get(&3), Some(&40));
        let dropped = asm.revoked(&[3], 0);
        assert_eq!(dropped.iter().map(|f| f.rel_path.as_str()).collect::<Vec<_>>(), vec!["a"]);
        // b keeps its chunks and its pins in both partitions, and completes.
        assert_eq!(asm.pinned_offsets().get(&3), Some(&42));
        assert_eq!(asm.pinned_offsets().get(&4), Some(&7));
        let mut ev = Vec::new();
        asm.add(Position { partition: 4, offset: 8 }, &b[2].bytes, &mut ev);
        assert!(ev.iter().any(|e| matches!(e, Event::Complete { file, .. } if file.rel_path == "b")));
    }

    #[test]
    fn big_files_grow_their_parts_to_fit_the_part_limit() {
        let asm = Assembler::new(MIN_PART_SIZE, 1 << 30).unwrap();
        let f = FileAssembly::new(
            FileInfo {
                instance: 1,
                rel_path: "x".into(),
                rel_output_path: "x".into(),
                filename: "x".into(),
                n_chunks: 200_000,
                file_hash: [0; 64],
                mtime: None,
                echo: false,
                first: Position { partition: 0, offset: 0 },
            },
            asm.part_size(),
            &Chunk {
                filename: "x",
                file_hash: &[0; 64],
                chunk_hash: &[0; 64],
                chunk_offset_write: 0,
                chunk_i: 1,
                n_total_chunks: 200_000,
                subdir_str: "",
                filename_append: "",
                data: &[0; 524_288],
                file_mtime: None,
            },
            Arc::clone(&asm.budget),
        );
        assert!(f.part_size * MAX_PARTS >= 200_000 * 524_288);
        assert_eq!(f.part_size % (1 << 20), 0);
    }

    #[test]
    fn a_finished_file_sent_again_is_transferred_again_whatever_its_size() {
        // Finding 1: fewer chunks and a newer mtime, then the same count.
        let asm = Assembler::with_any_part_size(1000);
        let v1 = content(500, 1);
        let v2 = content(300, 2);
        let v3 = content(300, 3);
        let m1 = chunks_of("f", "", &v1, 100, 10.0);
        let m2 = chunks_of("f", "", &v2, 100, 20.0);
        let m3 = chunks_of("f", "", &v3, 100, 20.0);
        let mut feed: Vec<_> =
            m1.iter().enumerate().map(|(i, m)| (0, i as i64, m.bytes.as_slice())).collect();
        feed.extend(m2.iter().enumerate().map(|(i, m)| (0, 10 + i as i64, m.bytes.as_slice())));
        let (objs, events) = run(&asm, &feed);
        assert_eq!(objs["f"], v2);
        assert_eq!(events.iter().filter(|e| matches!(e, Event::Complete { .. })).count(), 2);
        let feed: Vec<_> =
            m3.iter().enumerate().map(|(i, m)| (0, 20 + i as i64, m.bytes.as_slice())).collect();
        let (objs, _) = run(&asm, &feed);
        assert_eq!(objs["f"], v3);
        assert!(asm.pinned_offsets().is_empty());
    }

    #[test]
    fn a_completed_file_stays_pinned_until_settled_whichever_thread_commits() {
        // Finding 6: the file is spread over partitions 0 and 1; completing it in
        // partition 1 must not let partition 0 be committed past its chunks.
        let asm = Assembler::with_any_part_size(1000);
        let m = chunks_of("s", "", &content(300, 4), 100, 1.0);
        let mut ev = Vec::new();
        asm.assigned(0, 0, 0, &[]);
        asm.assigned(1, 1, 0, &[]);
        asm.add_batch(&[(Position { partition: 0, offset: 0 }, Some(m[0].bytes.as_slice()))], 0, &mut ev);
        asm.add_batch(
            &[
                (Position { partition: 1, offset: 0 }, Some(m[1].bytes.as_slice())),
                (Position { partition: 1, offset: 1 }, Some(m[2].bytes.as_slice())),
            ],
            1,
            &mut ev,
        );
        let complete = ev.iter().find_map(|e| match e {
            Event::Complete { file, .. } => Some(file.instance),
            _ => None,
        });
        let positions = |asm: &Assembler| {
            let mut v = asm.commit_positions(&[0], 0);
            v.extend(asm.commit_positions(&[1], 1));
            v.iter().map(|c| (c.partition, c.offset)).collect::<Vec<_>>()
        };
        assert_eq!(positions(&asm), vec![(0, 0), (1, 0)]);
        assert!(asm.settle(complete.unwrap()));
        assert_eq!(positions(&asm), vec![(0, 1), (1, 2)]);
        // The commit of 1 was not confirmed: the partition is read again from 0 and
        // the settled file's offsets are still known as done.
        assert_eq!(asm.assigned(0, 0, 0, &[]), 1);
        // Never below the floor (what the group committed when the partition came back).
        asm.assigned(0, 0, 5, &[]);
        assert_eq!(asm.commit_positions(&[0], 0)[0].offset, 5);
    }

    #[test]
    fn a_forged_chunk_does_not_push_out_a_file_in_progress() {
        // Finding 8a: same path, other hash, more chunks, one message.
        let asm = Assembler::with_any_part_size(1000);
        let data = content(300, 5);
        let m = chunks_of("x", "", &data, 100, 1.0);
        let mut feed = vec![(0, 0, m[0].bytes.as_slice())];
        let forged = crafted("x", 1, 50, 0, &[7; 10]);
        feed.push((0, 1, forged.as_slice()));
        feed.extend(m[1..].iter().enumerate().map(|(i, c)| (0, 2 + i as i64, c.bytes.as_slice())));
        let (objs, events) = run(&asm, &feed);
        assert_eq!(objs["x"], data);
        assert!(!events.iter().any(|e| matches!(e, Event::Failed { .. })));
        // The forgery is still waiting (to be given up by the stall monitor).
        assert_eq!(asm.pinned_offsets().get(&0), Some(&1));
    }

    #[test]
    fn a_corrupted_copy_of_a_chunk_already_held_does_not_fail_the_file() {
        // Finding 8b.
        let asm = Assembler::with_any_part_size(1000);
        let data = content(300, 6);
        let m = chunks_of("y", "", &data, 100, 1.0);
        let mut bad = m[0].bytes.clone();
        let at = bad.len() - 12;
        bad[at] ^= 0xff;
        let feed = vec![
            (0, 0, m[0].bytes.as_slice()),
            (0, 1, bad.as_slice()),
            (0, 2, m[1].bytes.as_slice()),
            (0, 3, m[2].bytes.as_slice()),
        ];
        let (objs, events) = run(&asm, &feed);
        assert_eq!(objs["y"], data);
        assert!(events.iter().any(|e| matches!(e, Event::Rejected { position, .. } if position.offset == 1)));
        assert!(!events.iter().any(|e| matches!(e, Event::Failed { .. })));
    }

    proptest! {
        #[test]
        fn any_order_with_duplicates_rebuilds_the_file(
            len in 0usize..3000,
            chunk in 1usize..400,
            part in 64u64..1500,
            order in proptest::collection::vec(any::<proptest::sample::Index>(), 0..40),
            seed in any::<u8>(),
        ) {
            let asm = Assembler::with_any_part_size(part);
            let data = content(len, seed);
            let msgs = chunks_of("p.bin", "d", &data, chunk, 1.0);
            // A shuffled order (with some duplicates) spread over 3 partitions.
            let mut idx: Vec<usize> = (0..msgs.len()).collect();
            for (k, o) in order.iter().enumerate() {
                let a = k % idx.len();
                let b = o.index(idx.len());
                idx.swap(a, b);
            }
            let mut feed: Vec<(i32, i64, &[u8])> = Vec::new();
            for (n, &i) in idx.iter().enumerate() {
                feed.push(((i % 3) as i32, n as i64, msgs[i].bytes.as_slice()));
                if n % 4 == 0 {
                    feed.push(((i % 3) as i32, n as i64, msgs[i].bytes.as_slice()));
                }
            }
            let (objs, events) = run(&asm, &feed);
            prop_assert_eq!(&objs["d/p.bin"], &data);
            prop_assert_eq!(events.iter().filter(|e| matches!(e, Event::Complete { .. })).count(), 1);
            prop_assert!(asm.pinned_offsets().is_empty());
        }
    }

    #[test]
    fn a_thread_that_hears_late_of_losing_a_partition_changes_nothing_for_its_new_reader() {
        // A spread file: chunks 0..3 in partition 1, chunk 3 in partition 0.
        // Thread 0 reads partition 1, then the partition moves to thread 1 of
        // the same process, which is assigned it and reads it again from the
        // committed offset *before* thread 0 hears that it lost it (`on_lost`
        // after a broker outage, or a revocation handled late).
        let asm = Assembler::with_any_part_size(1000);
        let m = chunks_of("s", "", &content(400, 6), 100, 1.0);
        let batch = |from: i64, n: usize| -> Vec<(Position, Option<&[u8]>)> {
            (0..n)
                .map(|i| (Position { partition: 1, offset: from + i as i64 }, Some(m[i].bytes.as_slice())))
                .collect()
        };
        let mut ev = Vec::new();
        asm.assigned(1, 0, 18, &[]);
        asm.add_batch(&batch(18, 3), 0, &mut ev);
        assert_eq!(asm.commit_positions(&[1], 0)[0].offset, 18);
        // Thread 1 takes over and re-reads the file's chunks (duplicates here).
        assert_eq!(asm.assigned(1, 1, 18, &[]), 18);
        let (d, _) = asm.add_batch(&batch(18, 3), 1, &mut ev);
        assert_eq!(d, vec![Disposition::Duplicate; 3]);
        // A late message fetched by thread 0 before it lost the partition.
        let (d, _) = asm.add_batch(
            &[(Position { partition: 1, offset: 40 }, Some(m[0].bytes.as_slice()))],
            0,
            &mut ev,
        );
        assert_eq!(d, vec![Disposition::NotOurs]);
        // Thread 0 now hears of it: the file stays (it lies in a partition still read here).
        assert!(asm.revoked(&[1], 0).is_empty());
        assert_eq!(asm.commit_positions(&[1], 0), vec![]);
        assert_eq!(asm.skip_ahead(1, 0), None);
        assert_eq!(asm.commit_positions(&[1], 1)[0].offset, 18);
        assert_eq!(asm.pinned_offsets().get(&1), Some(&18));
        // The last chunk arrives in partition 0 and the file completes.
        asm.assigned(0, 1, 0, &[]);
        asm.add_batch(&[(Position { partition: 0, offset: 0 }, Some(m[3].bytes.as_slice()))], 1, &mut ev);
        assert!(ev.iter().any(|e| matches!(e, Event::Complete { file, .. } if file.rel_path == "s")));
    }

    #[test]
    fn revocation_drops_a_file_once_none_of_its_partitions_is_read_here() {
        let asm = Assembler::with_any_part_size(1000);
        let m = chunks_of("s", "", &content(300, 7), 100, 1.0);
        let mut ev = Vec::new();
        asm.assigned(0, 0, 0, &[]);
        asm.assigned(1, 1, 0, &[]);
        asm.add_batch(&[(Position { partition: 0, offset: 0 }, Some(m[0].bytes.as_slice()))], 0, &mut ev);
        asm.add_batch(&[(Position { partition: 1, offset: 0 }, Some(m[1].bytes.as_slice()))], 1, &mut ev);
        assert!(asm.revoked(&[0], 0).is_empty());
        let dropped = asm.revoked(&[1], 1);
        assert_eq!(dropped.iter().map(|f| f.rel_path.as_str()).collect::<Vec<_>>(), vec!["s"]);
        assert!(asm.pinned_offsets().is_empty());
        // Assigned again: read from the commit, the file starts over.
        asm.assigned(0, 1, 0, &[]);
        let (d, _) =
            asm.add_batch(&[(Position { partition: 0, offset: 0 }, Some(m[0].bytes.as_slice()))], 1, &mut ev);
        assert_eq!(d, vec![Disposition::Stored]);
    }

    #[test]
    fn a_file_completing_on_one_thread_never_unpins_while_another_computes_commits() {
        // The spread loss of the crash matrix: thread 1 completes a file whose
        // other chunks thread 0 read; thread 0 computes its commit position at
        // that moment. The file must be pinned as receiving or as owned at
        // every instant, never neither.
        let asm = Arc::new(Assembler::with_any_part_size(1 << 20));
        asm.assigned(0, 0, 0, &[]);
        asm.assigned(1, 1, 0, &[]);
        for round in 0..300u32 {
            let base = i64::from(round) * 10;
            let m = chunks_of(&format!("s{round}"), "", &content(400, round as u8), 100, 1.0);
            let mut ev = Vec::new();
            // Chunks 0..3 in partition 0 (thread 0), the last one in partition 1.
            for (i, msg) in m.iter().take(3).enumerate() {
                asm.add_batch(
                    &[(Position { partition: 0, offset: base + i as i64 }, Some(msg.bytes.as_slice()))],
                    0,
                    &mut ev,
                );
            }
            let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
            let watcher = {
                let (asm, done) = (Arc::clone(&asm), Arc::clone(&done));
                std::thread::spawn(move || {
                    let mut worst = i64::MIN;
                    while !done.load(std::sync::atomic::Ordering::Acquire) {
                        worst = worst.max(asm.commit_positions(&[0], 0)[0].offset);
                    }
                    worst.max(asm.commit_positions(&[0], 0)[0].offset)
                })
            };
            let mut ev = Vec::new();
            let last = Position { partition: 1, offset: i64::from(round) };
            asm.add_batch(&[(last, Some(m[3].bytes.as_slice()))], 1, &mut ev);
            done.store(true, std::sync::atomic::Ordering::Release);
            let worst = watcher.join().unwrap();
            assert!(
                worst <= base,
                "round {round}: partition 0 committable at {worst}, past the file at {base}"
            );
            let instance = ev.iter().find_map(|e| match e {
                Event::Complete { file, .. } => Some(file.instance),
                _ => None,
            });
            assert!(asm.settle(instance.unwrap()));
        }
    }

    #[test]
    fn an_out_of_order_chunk_that_joins_a_waiting_piece_stays_within_the_memory_limit() {
        // Found by the fuzz harness (fuzz/findings/assembler): chunk 7 opens the
        // second part with a 64 KiB buffer, chunk 11 waits ahead in it, and
        // chunks 8..10 close the gap; the one that joins chunk 11 used to be
        // charged only its own growth, and the join grew the buffer again.
        let (part, limit) = ((64 << 10) + 40_000, 96_000);
        let asm = Assembler::with_limits(part, limit);
        let content: Vec<u8> = (0..180_000u32).map(|i| (i % 251) as u8).collect();
        let msgs = chunks_of("a.dat", "", &content, 16_096, 1.0);
        let mut events = Vec::new();
        for (offset, k) in [6usize, 10, 7, 8, 9].into_iter().enumerate() {
            let before = asm.budget().used();
            let d = asm.add(Position { partition: 0, offset: offset as i64 }, &msgs[k].bytes, &mut events);
            let after = asm.budget().used();
            if d == Disposition::Stored {
                assert!(after <= limit, "chunk {}: memory {before} -> {after}, limit {limit}", k + 1);
            }
        }
    }

    #[test]
    fn a_big_batch_is_checked_on_several_threads_with_the_same_outcome() {
        // 12 chunks of 512 KiB (over PARALLEL_HASH_MIN), one of them corrupted in
        // a copy sent again, plus a message that is no chunk at all.
        let data = content(12 << 19, 3);
        let msgs = chunks_of("p.bin", "", &data, 1 << 19, 1.0);
        let mut bad = msgs[4].bytes.clone();
        let last = bad.len() - 1;
        bad[last] ^= 1;
        let mut batch: Vec<(Position, Option<&[u8]>)> = Vec::new();
        for (i, m) in msgs.iter().enumerate() {
            batch.push((Position { partition: 0, offset: i as i64 }, Some(m.bytes.as_slice())));
        }
        batch.insert(6, (Position { partition: 1, offset: 0 }, Some(bad.as_slice())));
        batch.insert(2, (Position { partition: 1, offset: 1 }, Some(b"not a chunk".as_slice())));
        if std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get) >= 2 {
            assert!(hash_workers(&batch) > 0, "the batch is big enough to be checked on other threads");
        }
        let kinds = |ev: &[Event]| -> Vec<String> {
            ev.iter()
                .map(|e| match e {
                    Event::Rejected { position, error } => format!("rejected {position:?} {error}"),
                    Event::Failed { .. } => "failed".to_owned(),
                    Event::Complete { .. } => "complete".to_owned(),
                    Event::Started(_) => "started".to_owned(),
                    _ => "other".to_owned(),
                })
                .collect()
        };
        let parallel = Assembler::with_any_part_size(8 << 20);
        let mut ev = Vec::new();
        let (d, _) = parallel.add_batch(&batch, 0, &mut ev);
        let in_line = Assembler::with_any_part_size(8 << 20);
        let mut ev1 = Vec::new();
        let d1: Vec<_> =
            batch.iter().map(|(p, v)| in_line.add(*p, v.unwrap_or_default(), &mut ev1)).collect();
        assert_eq!(d, d1);
        assert_eq!(kinds(&ev), kinds(&ev1));
        // The garbage is rejected; the corrupted copy of a chunk the file already
        // holds changes nothing, on either path.
        assert_eq!(kinds(&ev).iter().filter(|k| k.starts_with("rejected")).count(), 1, "{:?}", kinds(&ev));
        assert!(!ev.iter().any(|e| matches!(e, Event::Failed { .. })));
        let single = ev.iter().find_map(|e| match e {
            Event::Complete { single: Some(b), .. } => Some(b.to_vec()),
            _ => None,
        });
        assert_eq!(single, Some(data));
    }

    #[test]
    fn a_tombstone_read_again_in_a_done_range_is_not_reported_again() {
        let asm = Assembler::with_any_part_size(1000);
        let mut ev = Vec::new();
        let tomb = [(Position { partition: 0, offset: 7 }, None)];
        assert_eq!(asm.add_batch(&tomb, 0, &mut ev).0, vec![Disposition::Rejected]);
        assert_eq!(ev.len(), 1);
        asm.skip_offsets(0, &[(7, 8)]);
        let mut ev = Vec::new();
        assert_eq!(asm.add_batch(&tomb, 0, &mut ev).0, vec![Disposition::Duplicate]);
        assert!(ev.is_empty());
    }
}
