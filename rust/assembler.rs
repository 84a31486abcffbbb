//! Reassembles files from chunk messages into upload-sized parts.
//!
//! Every chunk is decoded and hash-checked, then copied once into the part
//! buffer(s) its byte range falls in. A part that is complete is sealed and
//! handed out (shared, not copied) for a multipart upload as soon as the file is
//! known to be bigger than one part; a file that fits in one part goes as a
//! single PUT. The whole-file SHA-512 and CRC64NVME advance over the contiguous
//! prefix as bytes arrive, and a part is forgotten once it is both hashed and
//! handed out, so memory follows the parts in flight and the out-of-order
//! window, never the file size.
//!
//! Re-produced files follow OpenMSIStream's generation rules (compat notes §2),
//! with one fix: the chunk that triggers a reset is kept, not dropped.
//!
//! Thread safety: one lock for the file table, one per file. The table lock is
//! held only to find or retire a file; copies and hashing run under the file's
//! own lock, so consumer threads working on different files do not wait on each other.

use std::collections::btree_map::Entry;
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use crate::checksum::{crc64nvme, Running};
use crate::intervals::IntervalSet;
use crate::wire::{self, Chunk, WireError};

/// A sealed part (or whole small file). Shared with whoever uploads it.
pub type Buffer = Arc<Vec<u8>>;

/// S3 allows at most this many parts per multipart upload.
pub const MAX_PARTS: u64 = 10_000;
/// S3's minimum size of every part but the last.
pub const MIN_PART_SIZE: u64 = 5 << 20;
/// How many finished files are remembered to recognise redelivered chunks.
const FINISHED_MEMORY: usize = 100_000;
/// Part buffers start at most this big and grow as bytes arrive, so a size a
/// message merely claims never becomes an allocation by itself.
const INITIAL_PART_CAPACITY: u64 = 16 << 20;

/// The bytes all unfinished files may hold in part buffers (out-of-order
/// chunks, parts not yet handed out). A file that would go over it fails with
/// a clear reason instead of the process running out of memory.
#[derive(Debug)]
pub struct MemoryBudget {
    used: AtomicU64,
    limit: u64,
}

impl MemoryBudget {
    pub fn new(limit: u64) -> Self {
        Self { used: AtomicU64::new(0), limit }
    }

    fn take(&self, n: u64) -> bool {
        self.used
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |u| {
                u.checked_add(n).filter(|t| *t <= self.limit)
            })
            .is_ok()
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

/// Where a message came from; pins the offsets a file still needs.
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
    /// duplicates of its chunks (a producer retry). Its bytes are already
    /// accounted for, so it pins no offsets: if it never completes, nothing
    /// that is not already in the bucket is lost.
    pub echo: bool,
}

/// Per partition, the lowest offset of a chunk of the file.
pub type Pins = Vec<(i32, i64)>;
/// Per partition, the half-open offset ranges of a file's messages.
pub type OffsetRuns = Vec<(i32, Vec<(i64, i64)>)>;

#[derive(Debug)]
pub enum Event {
    /// First chunk of a new file instance.
    Started(FileInfo),
    /// A complete part of a file known to need a multipart upload.
    Part { file: FileInfo, number: u32, data: Buffer, crc64nvme: u64 },
    /// All chunks arrived and the file hash matched.
    Complete {
        file: FileInfo,
        size: u64,
        /// The whole file when it fits in one part (single PUT); `None` for multipart.
        single: Option<Buffer>,
        crc64nvme: u64,
        parts: u32,
        pins: Pins,
        offsets: OffsetRuns,
    },
    /// The file cannot be completed from these chunks (hash mismatch, corrupted
    /// or contradictory chunks). Nothing of it may become visible.
    Failed { file: FileInfo, reason: String, hash_mismatch: bool, pins: Pins, offsets: OffsetRuns },
    /// A newer generation of the file replaced this unfinished one.
    Superseded { file: FileInfo },
    /// The message is not a usable chunk; no file state was touched.
    Rejected { position: Position, error: WireError },
}

/// What became of one message, for counting.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Disposition {
    Stored,
    Duplicate,
    Stale,
    Rejected,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Generation {
    Same,
    Reset,
    Stale,
    Contradiction,
}

/// OpenMSIStream's rules for a chunk whose file is already being assembled.
fn compare_generation(file: &FileInfo, chunk: &Chunk<'_>) -> Generation {
    let same_hash = file.file_hash == *chunk.file_hash;
    let same_n = file.n_chunks == chunk.n_total_chunks;
    match (same_hash, same_n) {
        (true, true) => Generation::Same,
        (true, false) => Generation::Contradiction,
        (false, false) if chunk.n_total_chunks > file.n_chunks => Generation::Reset,
        (false, false) => Generation::Stale,
        (false, true) => match (file.mtime.filter(|m| *m > 0.0), chunk.known_mtime()) {
            (Some(old), Some(new)) if new > old => Generation::Reset,
            _ => Generation::Stale,
        },
    }
}

enum SlotData {
    Filling(Vec<u8>),
    Sealed(Buffer),
}

struct Slot {
    data: SlotData,
    filled: u64,
    released: bool,
    budget: Arc<MemoryBudget>,
    accounted: u64,
}

impl Drop for Slot {
    fn drop(&mut self) {
        // A sealed part may live on in the uploader; from here on the uploader's
        // own limit on parts in flight bounds it.
        self.budget.give(self.accounted);
    }
}

impl Slot {
    fn bytes(&self) -> &[u8] {
        match &self.data {
            SlotData::Filling(v) => v,
            SlotData::Sealed(b) => b,
        }
    }

    fn seal(&mut self) -> Buffer {
        if let SlotData::Filling(v) = &mut self.data {
            let v = std::mem::take(v);
            self.data = SlotData::Sealed(Arc::new(v));
        }
        match &self.data {
            SlotData::Sealed(b) => Arc::clone(b),
            SlotData::Filling(_) => unreachable!("sealed just above"),
        }
    }
}

struct FileAssembly {
    info: FileInfo,
    part_size: u64,
    chunks: IntervalSet,
    bytes: IntervalSet,
    total: Option<u64>,
    parts: BTreeMap<u64, Slot>,
    hashed_upto: u64,
    running: Running,
    /// Exact Kafka offsets of this file's messages (duplicates included), per partition.
    offsets: BTreeMap<i32, IntervalSet>,
    budget: Arc<MemoryBudget>,
    parts_released: u32,
    /// Set when the file has left the table; a thread that still holds it retries.
    retired: bool,
}

/// What is remembered of a finished (transferred or failed) file instance.
struct Finished {
    info: FileInfo,
    succeeded: bool,
    chunks: IntervalSet,
    max_offsets: BTreeMap<i32, i64>,
}

#[derive(Default)]
struct Table {
    files: HashMap<String, Arc<Mutex<FileAssembly>>>,
    finished: HashMap<String, Finished>,
    finished_order: VecDeque<(String, u64)>,
    next_instance: u64,
}

pub struct Assembler {
    part_size: u64,
    budget: Arc<MemoryBudget>,
    table: Mutex<Table>,
    /// Offsets of messages already accounted for (their files are in the bucket
    /// or recorded as bad), learnt from the committed offset's metadata: they are
    /// skipped before any decoding when a restart reads them again.
    skip: Mutex<HashMap<i32, IntervalSet>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding a lock is a bug we cannot recover from cleanly, but
    // poisoning every later call would turn one bad file into a dead process.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Assembler {
    /// `part_size` is the multipart part size (at least 5 MiB, S3's minimum);
    /// `max_buffered` bounds the bytes held in part buffers by all unfinished files.
    pub fn new(part_size: u64, max_buffered: u64) -> Result<Self, String> {
        if part_size < MIN_PART_SIZE {
            return Err(format!(
                "part size {part_size} is below S3's minimum part size of {MIN_PART_SIZE} bytes"
            ));
        }
        if max_buffered < 2 * part_size {
            return Err(format!(
                "the reassembly memory limit ({max_buffered} bytes) must hold at least two parts of {part_size} bytes"
            ));
        }
        Ok(Self {
            part_size,
            budget: Arc::new(MemoryBudget::new(max_buffered)),
            table: Mutex::new(Table::default()),
            skip: Mutex::default(),
        })
    }

    pub fn budget(&self) -> &MemoryBudget {
        &self.budget
    }

    /// Test-only constructor that allows tiny parts.
    #[doc(hidden)]
    pub fn with_any_part_size(part_size: u64) -> Self {
        Self {
            part_size: part_size.max(1),
            budget: Arc::new(MemoryBudget::new(u64::MAX)),
            table: Mutex::new(Table::default()),
            skip: Mutex::default(),
        }
    }

    pub fn part_size(&self) -> u64 {
        self.part_size
    }

    /// Decodes, verifies and stores one message; events are appended to `out`.
    pub fn add(&self, pos: Position, message: &[u8], out: &mut Vec<Event>) -> Disposition {
        if pos.offset >= 0 {
            let skip = lock(&self.skip);
            if skip.get(&pos.partition).is_some_and(|s| s.contains(pos.offset as u64)) {
                return Disposition::Duplicate;
            }
        }
        let chunk = match wire::decode(message) {
            Ok(c) => c,
            Err(error) => {
                // A chunk whose data fails its hash still tells us which file it
                // belongs to: that file can never be completed correctly from
                // this log position, so it fails as a whole rather than hanging.
                if error.kind == wire::ErrorKind::ChunkHash {
                    if let Ok(chunk) = wire::decode_unverified(message) {
                        if self.fail_file_of(pos, &chunk, &error, out) {
                            return Disposition::Rejected;
                        }
                    }
                }
                out.push(Event::Rejected { position: pos, error });
                return Disposition::Rejected;
            }
        };
        self.add_chunk(pos, &chunk, out)
    }

    /// Fails the file a corrupted chunk belongs to; false if the chunk is not
    /// part of a current file instance (a redelivery or a stale generation).
    fn fail_file_of(
        &self,
        pos: Position,
        chunk: &Chunk<'_>,
        error: &WireError,
        out: &mut Vec<Event>,
    ) -> bool {
        let rel_path = chunk.rel_path();
        let Ok(file) = self.lookup(&rel_path, pos, chunk, out) else {
            return false;
        };
        let mut fa = lock(&file);
        if fa.retired || compare_generation(&fa.info, chunk) != Generation::Same {
            return false;
        }
        let _ = fa.chunks.insert(chunk.chunk_i, chunk.chunk_i + 1);
        fa.record(pos);
        drop(fa);
        let reason =
            format!("chunk {}/{} is corrupted ({})", chunk.chunk_i, chunk.n_total_chunks, error.detail);
        self.fail(&file, reason, false, out);
        true
    }

    pub fn add_chunk(&self, pos: Position, chunk: &Chunk<'_>, out: &mut Vec<Event>) -> Disposition {
        let rel_path = chunk.rel_path();
        loop {
            let file = match self.lookup(&rel_path, pos, chunk, out) {
                Ok(f) => f,
                Err(d) => return d,
            };
            let mut fa = lock(&file);
            if fa.retired {
                continue;
            }
            match compare_generation(&fa.info, chunk) {
                Generation::Same => {}
                Generation::Stale => return Disposition::Stale,
                Generation::Contradiction => {
                    let reason = format!(
                        "chunk {} says the file has {} chunks, earlier chunks with the same file hash said {}",
                        chunk.chunk_i, chunk.n_total_chunks, fa.info.n_chunks
                    );
                    drop(fa);
                    self.fail(&file, reason, false, out);
                    return Disposition::Rejected;
                }
                Generation::Reset => {
                    fa.retired = true;
                    out.push(Event::Superseded { file: fa.info.clone() });
                    drop(fa);
                    let mut t = lock(&self.table);
                    if t.files.get(&rel_path).is_some_and(|f| Arc::ptr_eq(f, &file)) {
                        t.files.remove(&rel_path);
                    }
                    continue;
                }
            }
            if chunk.filename_append != output_append(&fa.info) {
                let reason = format!(
                    "chunk {} names the output file {:?}, earlier chunks named {:?}",
                    chunk.chunk_i,
                    chunk.rel_output_path(),
                    fa.info.rel_output_path
                );
                drop(fa);
                self.fail(&file, reason, false, out);
                return Disposition::Rejected;
            }
            return match fa.store(pos, chunk, out) {
                Ok(Stored::Duplicate) => Disposition::Duplicate,
                Ok(Stored::Partial) => Disposition::Stored,
                Ok(Stored::Done(succeeded)) => {
                    drop(fa);
                    self.retire(&file, succeeded);
                    Disposition::Stored
                }
                Err(reason) => {
                    drop(fa);
                    self.fail(&file, reason, false, out);
                    Disposition::Rejected
                }
            };
        }
    }

    /// Finds the file a chunk belongs to, or starts it, or says why the chunk is
    /// not needed (a redelivery of a finished file, or a stale generation).
    fn lookup(
        &self,
        rel_path: &str,
        pos: Position,
        chunk: &Chunk<'_>,
        out: &mut Vec<Event>,
    ) -> Result<Arc<Mutex<FileAssembly>>, Disposition> {
        let mut t = lock(&self.table);
        if let Some(f) = t.files.get(rel_path) {
            return Ok(Arc::clone(f));
        }
        let mut echo = false;
        if let Some(done) = t.finished.get_mut(rel_path) {
            match compare_generation(&done.info, chunk) {
                Generation::Same => {
                    let redelivered =
                        done.max_offsets.get(&pos.partition).is_some_and(|&max| pos.offset <= max);
                    if redelivered {
                        return Err(Disposition::Duplicate);
                    }
                    // An index the finished instance never saw is the tail of a
                    // failed file; one it saw, at a later offset, is the file
                    // produced again.
                    if done.chunks.insert(chunk.chunk_i, chunk.chunk_i + 1).is_ok() {
                        let max = done.max_offsets.entry(pos.partition).or_insert(pos.offset);
                        *max = (*max).max(pos.offset);
                        return Err(Disposition::Stale);
                    }
                }
                Generation::Stale => return Err(Disposition::Stale),
                Generation::Reset => {}
                Generation::Contradiction => {
                    out.push(Event::Rejected {
                        position: pos,
                        error: WireError {
                            kind: wire::ErrorKind::Malformed,
                            field: "n_total_chunks",
                            filename: Some(chunk.filename.to_owned()),
                            detail: format!(
                                "{} contradicts the {} chunks of the already finished file with the same hash",
                                chunk.n_total_chunks, done.info.n_chunks
                            ),
                        },
                    });
                    return Err(Disposition::Rejected);
                }
            }
            echo = t
                .finished
                .remove(rel_path)
                .is_some_and(|d| d.succeeded && compare_generation(&d.info, chunk) == Generation::Same);
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
        };
        out.push(Event::Started(info.clone()));
        let fa =
            Arc::new(Mutex::new(FileAssembly::new(info, self.part_size, chunk, Arc::clone(&self.budget))));
        t.files.insert(rel_path.to_owned(), Arc::clone(&fa));
        Ok(fa)
    }

    fn retire(&self, file: &Arc<Mutex<FileAssembly>>, succeeded: bool) {
        let mut fa = lock(file);
        fa.retired = true;
        let done = Finished {
            info: fa.info.clone(),
            succeeded,
            chunks: std::mem::take(&mut fa.chunks),
            max_offsets: fa.offsets.iter().map(|(p, set)| (*p, set.max_end() as i64 - 1)).collect(),
        };
        fa.parts.clear();
        drop(fa);
        let mut t = lock(&self.table);
        let key = done.info.rel_path.clone();
        if t.files.get(&key).is_some_and(|f| Arc::ptr_eq(f, file)) {
            t.files.remove(&key);
        }
        t.finished_order.push_back((key.clone(), done.info.instance));
        t.finished.insert(key, done);
        while t.finished_order.len() > FINISHED_MEMORY {
            if let Some((k, inst)) = t.finished_order.pop_front() {
                if t.finished.get(&k).is_some_and(|d| d.info.instance == inst) {
                    t.finished.remove(&k);
                }
            }
        }
    }

    fn fail(
        &self,
        file: &Arc<Mutex<FileAssembly>>,
        reason: String,
        hash_mismatch: bool,
        out: &mut Vec<Event>,
    ) {
        let (info, pins, offsets) = {
            let fa = lock(file);
            (fa.info.clone(), fa.pin_list(), fa.offset_runs())
        };
        out.push(Event::Failed { file: info, reason, hash_mismatch, pins, offsets });
        self.retire(file, false);
    }

    /// Marks offset ranges (half-open) of `partition` as already accounted for.
    pub fn skip_offsets(&self, partition: i32, ranges: &[(i64, i64)]) {
        let mut skip = lock(&self.skip);
        let set = skip.entry(partition).or_default();
        for &(a, b) in ranges {
            if a >= 0 && b > a {
                // Overlaps only mean the range was given twice.
                for (lo, hi) in set.missing(a as u64, b as u64) {
                    let _ = set.insert(lo, hi);
                }
            }
        }
    }

    /// If `offset` of `partition` starts or lies in a skipped range, where that range ends.
    pub fn skip_end(&self, partition: i32, offset: i64) -> Option<i64> {
        if offset < 0 {
            return None;
        }
        lock(&self.skip).get(&partition)?.end_of_run(offset as u64).map(|e| e as i64)
    }

    /// Forgets the skip ranges of `partitions` (they were revoked).
    pub fn clear_skips(&self, partitions: &[i32]) {
        let mut skip = lock(&self.skip);
        for p in partitions {
            skip.remove(p);
        }
    }

    /// Per partition, the lowest offset still needed by a file being assembled.
    pub fn pinned_offsets(&self) -> BTreeMap<i32, i64> {
        let files: Vec<_> = lock(&self.table).files.values().cloned().collect();
        let mut out = BTreeMap::new();
        for f in files {
            let fa = lock(&f);
            if fa.info.echo {
                continue;
            }
            for (p, min) in fa.pin_list() {
                let e = out.entry(p).or_insert(min);
                *e = (*e).min(min);
            }
        }
        out
    }

    /// Forgets every unfinished file that has a chunk in one of `partitions`
    /// (they were revoked: their new owner re-reads them from the committed
    /// offset). Returns the files dropped, so their uploads can be aborted.
    pub fn drop_partitions(&self, partitions: &[i32]) -> Vec<FileInfo> {
        let mut t = lock(&self.table);
        let mut dropped = Vec::new();
        t.files.retain(|_, f| {
            let mut fa = lock(f);
            if fa.offsets.keys().any(|p| partitions.contains(p)) {
                fa.retired = true;
                dropped.push(fa.info.clone());
                false
            } else {
                true
            }
        });
        dropped
    }

    /// Unfinished files: (info, chunks received, bytes buffered, partitions its chunks came from).
    pub fn in_progress(&self) -> Vec<(FileInfo, u64, u64, Vec<i32>)> {
        let files: Vec<_> = lock(&self.table).files.values().cloned().collect();
        files
            .iter()
            .map(|f| {
                let fa = lock(f);
                let buffered = fa.parts.values().map(|s| s.bytes().len() as u64).sum();
                (fa.info.clone(), fa.chunks.covered(), buffered, fa.offsets.keys().copied().collect())
            })
            .collect()
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

fn over_budget(budget: &MemoryBudget, wanted: u64) -> String {
    format!(
        "reassembling it would need {wanted} more bytes of buffer memory, but unfinished files already \
         hold {} of the {} allowed (chunks far out of order, or a file that never completes?)",
        budget.used(),
        budget.limit()
    )
}

enum Stored {
    Duplicate,
    Partial,
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
            chunks: IntervalSet::new(),
            bytes: IntervalSet::new(),
            total: None,
            parts: BTreeMap::new(),
            hashed_upto: 0,
            running: Running::default(),
            offsets: BTreeMap::new(),
            budget,
            parts_released: 0,
            retired: false,
        }
    }

    fn record(&mut self, pos: Position) {
        // Offsets are never negative for consumed messages; a duplicate at the same
        // offset (a redelivery) is already recorded.
        let o = pos.offset.max(0) as u64;
        let _ = self.offsets.entry(pos.partition).or_default().insert(o, o + 1);
    }

    fn pin_list(&self) -> Pins {
        self.offsets.iter().filter_map(|(p, set)| set.min_start().map(|m| (*p, m as i64))).collect()
    }

    fn offset_runs(&self) -> OffsetRuns {
        self.offsets
            .iter()
            .map(|(p, set)| (*p, set.ranges().map(|(a, b)| (a as i64, b as i64)).collect()))
            .collect()
    }

    fn part_len(&self, k: u64) -> u64 {
        match self.total {
            Some(t) => self.part_size.min(t.saturating_sub(k * self.part_size)),
            None => self.part_size,
        }
    }

    fn store(&mut self, pos: Position, chunk: &Chunk<'_>, out: &mut Vec<Event>) -> Result<Stored, String> {
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
                return Err(format!(
                    "last chunk {i}/{n} ends the file at byte {end}, but earlier chunks reach byte {}",
                    self.bytes.max_end()
                ));
            }
            self.total = Some(end);
        } else if let Some(total) = self.total {
            if end > total {
                return Err(format!(
                    "chunk {i}/{n} reaches byte {end}, past the end of the file at byte {total}"
                ));
            }
        }
        if self.bytes.insert(start, end).is_err() {
            return Err(format!("chunk {i}/{n} (bytes {start}..{end}) overlaps bytes of another chunk"));
        }
        if end > 0 && (end - 1) / self.part_size >= MAX_PARTS {
            return Err(format!(
                "chunk {i}/{n} reaches byte {end}, beyond {MAX_PARTS} parts of {} bytes",
                self.part_size
            ));
        }
        self.chunks.insert(i, i + 1).expect("checked absent above");
        self.record(pos);

        self.write(start, chunk.data)?;
        self.advance_hash();
        self.release_complete_parts(out);

        if !self.chunks.is_exactly(1, n + 1) {
            return Ok(Stored::Partial);
        }
        Ok(Stored::Done(self.finish(out)?))
    }

    fn write(&mut self, start: u64, data: &[u8]) -> Result<(), String> {
        let p = self.part_size;
        let end = start + data.len() as u64;
        let mut at = start;
        while at < end {
            let k = at / p;
            let local = (at - k * p) as usize;
            let take = (end.min((k + 1) * p) - at) as usize;
            let needed = (local + take) as u64;
            let part_len = self.part_len(k).max(needed);
            let hint = self.capacity_hint(k, data.len() as u64);
            let slot = match self.parts.entry(k) {
                Entry::Occupied(o) => o.into_mut(),
                Entry::Vacant(v) => {
                    let capacity = hint.min(INITIAL_PART_CAPACITY).max(needed).min(part_len);
                    if !self.budget.take(capacity) {
                        return Err(over_budget(&self.budget, capacity));
                    }
                    v.insert(Slot {
                        data: SlotData::Filling(Vec::with_capacity(capacity as usize)),
                        filled: 0,
                        released: false,
                        budget: Arc::clone(&self.budget),
                        accounted: capacity,
                    })
                }
            };
            let SlotData::Filling(buf) = &mut slot.data else {
                unreachable!("a sealed part is complete, and overlapping writes are refused");
            };
            if (buf.capacity() as u64) < needed {
                // Grow geometrically within the part, so in-order chunks cost few copies.
                let target = needed.max((buf.capacity() as u64 * 2).min(part_len));
                let extra = target - slot.accounted.max(buf.capacity() as u64);
                if !self.budget.take(extra) {
                    return Err(over_budget(&self.budget, extra));
                }
                slot.accounted += extra;
                buf.reserve_exact(target as usize - buf.len());
            }
            if buf.len() < local + take {
                buf.resize(local + take, 0);
            }
            let from = (at - start) as usize;
            buf[local..local + take].copy_from_slice(&data[from..from + take]);
            slot.filled += take as u64;
            at += take as u64;
        }
        Ok(())
    }

    /// Capacity for a new part buffer: never more than a part, and never more
    /// than the file can hold judging by the chunk sizes seen, so a one-byte
    /// file does not cost a whole part of memory.
    fn capacity_hint(&self, k: u64, chunk_len: u64) -> u64 {
        let upper = match self.total {
            Some(t) => t,
            None => self.info.n_chunks.saturating_mul(chunk_len).max(self.bytes.max_end()),
        };
        upper.saturating_sub(k * self.part_size).min(self.part_size)
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
            let slot = self.parts.get(&k).expect("bytes in a covered run live in a part");
            self.running.update(&slot.bytes()[local..local_end]);
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
            .filter(|(k, s)| !s.released && s.filled == self.part_len(**k))
            .map(|(k, _)| *k)
            .collect();
        for k in ready {
            let slot = self.parts.get_mut(&k).expect("listed above");
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

    fn finish(&mut self, out: &mut Vec<Event>) -> Result<bool, String> {
        let total = self.total.expect("the last chunk sets the total");
        if !self.bytes.is_exactly(0, total) || self.hashed_upto != total {
            return Err(format!(
                "all {} chunks arrived but they cover {} of the file's {total} bytes",
                self.info.n_chunks,
                self.bytes.covered()
            ));
        }
        let running = std::mem::take(&mut self.running);
        let (sha, crc) = running.finish();
        if sha != self.info.file_hash {
            out.push(Event::Failed {
                file: self.info.clone(),
                reason: format!(
                    "the SHA-512 of the {total} reassembled bytes does not match the producer's file hash"
                ),
                hash_mismatch: true,
                pins: self.pin_list(),
                offsets: self.offset_runs(),
            });
            return Ok(false);
        }
        let single = if total <= self.part_size {
            Some(match self.parts.get_mut(&0) {
                Some(slot) => slot.seal(),
                None => Arc::new(Vec::new()),
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
            pins: self.pin_list(),
            offsets: self.offset_runs(),
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

    fn content(len: usize, seed: u8) -> Vec<u8> {
        (0..len).map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed)).collect()
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
        assert!(events.iter().any(|e| matches!(e, Event::Failed { hash_mismatch: true, .. })));
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
            Event::Failed { file, reason, .. } if file.filename == "bad.dat" && reason.contains("chunk 3/5 is corrupted"))));
        let mut events = Vec::new();
        let d = asm.add(Position { partition: 0, offset: 1 }, &msgs[0].bytes[..40], &mut events);
        assert_eq!(d, Disposition::Rejected);
        match &events[..] {
            [Event::Rejected { error, position }] => {
                assert_eq!(error.kind, wire::ErrorKind::Malformed);
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
            Event::Complete { offsets, pins, .. } => Some((offsets.clone(), pins.clone())),
            _ => None,
        });
        assert_eq!(runs, Some((vec![(0, vec![(10, 13), (14, 15)])], vec![(0, 10)])));
        assert_eq!(asm.skip_end(0, 1), Some(2));
        assert_eq!(asm.skip_end(0, 2), None);
        asm.clear_skips(&[0]);
        let d = asm.add(Position { partition: 0, offset: 1 }, b"not even msgpack", &mut ev);
        assert_eq!(d, Disposition::Rejected);
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
    fn claimed_sizes_do_not_allocate_and_the_budget_is_enforced_and_returned() {
        let asm = Assembler::new(MIN_PART_SIZE, 64 << 20).unwrap();
        let mut ev = Vec::new();
        // A chunk claiming 2^40 chunks of its size costs at most the initial part capacity.
        let m = crafted("huge", 1, 1 << 40, 0, &[1; 1000]);
        assert_eq!(asm.add(Position { partition: 0, offset: 0 }, &m, &mut ev), Disposition::Stored);
        assert!(asm.budget().used() <= INITIAL_PART_CAPACITY);
        // One far into a huge part would need hundreds of MiB: that file fails, nothing aborts.
        let m = crafted("huge", 500_000, 1 << 40, 499_999_000, &[2; 1000]);
        assert_eq!(asm.add(Position { partition: 0, offset: 1 }, &m, &mut ev), Disposition::Rejected);
        assert!(ev
            .iter()
            .any(|e| matches!(e, Event::Failed { reason, .. } if reason.contains("buffer memory"))));
        assert_eq!(asm.budget().used(), 0);
        // A normal multipart file still goes through, and gives its memory back.
        let data = content(12 << 20, 3);
        let msgs = chunks_of("ok.bin", "", &data, 512 << 10, 1.0);
        let feed: Vec<_> = msgs.iter().enumerate().map(|(i, m)| (1, i as i64, m.bytes.as_slice())).collect();
        let (objs, _) = run(&asm, &feed);
        assert_eq!(objs["ok.bin"], data);
        assert_eq!(asm.budget().used(), 0);
    }

    #[test]
    fn pins_follow_unfinished_files() {
        let asm = Assembler::with_any_part_size(1000);
        let a = chunks_of("a", "", &content(300, 8), 100, 1.0);
        let mut events = Vec::new();
        asm.add(Position { partition: 3, offset: 40 }, &a[0].bytes, &mut events);
        asm.add(Position { partition: 3, offset: 41 }, &a[1].bytes, &mut events);
        assert_eq!(asm.pinned_offsets().get(&3), Some(&40));
        let dropped = asm.drop_partitions(&[3]);
        assert_eq!(dropped.len(), 1);
        assert!(asm.pinned_offsets().is_empty());
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
}
