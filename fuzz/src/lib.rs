//! What the fuzz targets run, shared with the seed-corpus generator
//! (`examples/gen_corpus.rs`) and the replay tests (`cargo test` in `fuzz/`).
//!
//! * [`decoder`]: the wire decoder on arbitrary bytes.
//! * [`assembler`]: an [`Assembler`] with small limits fed a sequence of messages
//!   that the input chooses: mostly valid chunks of a few small files made with the
//!   crate's own encoder, in any order, duplicated, re-read, corrupted, truncated,
//!   forged, or plain garbage. After every message and at the end it checks what
//!   must always hold (see [`assembler`]).

use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap};
use std::rc::Rc;
use std::sync::Arc;

use s3transfer_core::assembler::{Assembler, Buffer, Disposition, Event, OffsetRuns, Position};
use s3transfer_core::checksum::{crc64nvme, sha512};
use s3transfer_core::intervals::IntervalSet;
use s3transfer_core::error::Error;
use s3transfer_core::wire::{self, Chunk};

// ---------------------------------------------------------------------------
// Decoder

/// Decodes `data` and checks what a successful decode promises.
pub fn decoder(data: &[u8]) {
    let verified = wire::decode(data);
    let unverified = wire::decode_unverified(data);
    match (&verified, &unverified) {
        (Ok(a), Ok(b)) => assert_eq!(a, b),
        (Err(e), Ok(c)) => {
            assert!(matches!(e, Error::ChunkHash { .. }), "{e}");
            assert!(c.verify_hash().is_err());
        }
        (Ok(_), Err(e)) => panic!("decode accepted what decode_unverified refused: {e}"),
        (Err(a), Err(b)) => {
            assert_eq!(std::mem::discriminant(a), std::mem::discriminant(b));
            assert_eq!(a.to_string(), b.to_string());
        }
    }
    for e in [&verified, &unverified].into_iter().filter_map(|r| r.as_ref().err()) {
        let text = e.to_string();
        assert!(!text.is_empty());
        assert!(e.is_bad_message(), "{e:?}");
        assert!(e.field().is_some_and(|f| text.contains(&format!("{f}: "))), "{e:?}");
    }
    if let Ok(chunk) = &unverified {
        check_chunk(chunk, data);
    }
    if let Ok(text) = std::str::from_utf8(data) {
        if let Some((prefix, i, n)) = wire::parse_message_key(text) {
            assert!(1 <= i && i <= n, "{text:?}");
            assert!(text.starts_with(prefix));
        }
    }
}

fn check_chunk(c: &Chunk<'_>, message: &[u8]) {
    assert!((1..=wire::MAX_CHUNKS).contains(&c.n_total_chunks));
    assert!((1..=c.n_total_chunks).contains(&c.chunk_i));
    let end = c.chunk_offset_write.checked_add(c.data.len() as u64);
    assert!(end.is_some_and(|e| e <= wire::MAX_FILE_SIZE));
    assert!(c.file_mtime.is_none_or(f64::is_finite));
    // Whatever the names say, the paths built from them stay below the prefix.
    for path in [c.rel_path(), c.rel_output_path()] {
        assert!(!path.contains('\0'), "{path:?}");
        for part in path.split('/') {
            assert!(!part.is_empty() && part != "." && part != "..", "{path:?}");
        }
    }
    // Re-encoding is canonical: it decodes to the same chunk and is a fixed point.
    let encoded = wire::encode(c);
    assert!(encoded.len() <= wire::encoded_len(c));
    let back = wire::decode_unverified(&encoded).expect("a decoded chunk re-encodes to a valid message");
    assert_eq!(&back, c);
    assert_eq!(wire::encode(&back), encoded);
    // A message one byte shorter or longer is never a chunk.
    assert!(wire::decode_unverified(&message[..message.len() - 1]).is_err());
    let mut longer = message.to_vec();
    longer.push(0);
    assert!(wire::decode_unverified(&longer).is_err());
}

// ---------------------------------------------------------------------------
// Reading the fuzz input

/// Reads the input front to back; past its end every byte reads as 0.
pub struct Input<'a> {
    data: &'a [u8],
    at: usize,
}

impl<'a> Input<'a> {
    pub fn new(data: &'a [u8]) -> Self {
        Self { data, at: 0 }
    }

    fn done(&self) -> bool {
        self.at >= self.data.len()
    }

    fn u8(&mut self) -> u8 {
        let b = self.data.get(self.at).copied().unwrap_or(0);
        self.at += 1;
        b
    }

    fn u16(&mut self) -> u16 {
        u16::from_le_bytes([self.u8(), self.u8()])
    }

    fn take(&mut self, n: usize) -> &'a [u8] {
        let start = self.at.min(self.data.len());
        let end = start.saturating_add(n).min(self.data.len());
        self.at = start + n;
        &self.data[start..end]
    }
}

// ---------------------------------------------------------------------------
// The files the messages come from

/// Names and subdirs the files are drawn from: few, so that files share paths
/// (generations of one path, re-productions of one file).
const NAMES: [&str; 2] = ["a.dat", "b"];
const SUBDIRS: [&str; 2] = ["", "d/e"];

/// What the input says about one file; [`FileSpec::build`] makes its messages.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub struct FileSpec {
    pub name: u8,
    pub subdir: u8,
    pub len: u32,
    pub seed: u8,
    pub chunk: u32,
    pub mtime: u8,
    pub append: bool,
}

pub struct File {
    pub spec: FileSpec,
    pub content: Vec<u8>,
    pub hash: [u8; 64],
    pub msgs: Vec<Vec<u8>>,
}

fn content(len: usize, seed: u8) -> Vec<u8> {
    (0..len).map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed) ^ ((i >> 8) as u8)).collect()
}

impl FileSpec {
    pub fn name(&self) -> &'static str {
        NAMES[usize::from(self.name) % NAMES.len()]
    }

    pub fn subdir(&self) -> &'static str {
        SUBDIRS[usize::from(self.subdir) % SUBDIRS.len()]
    }

    pub fn append(&self) -> &'static str {
        if self.append {
            "_v2"
        } else {
            ""
        }
    }

    pub fn mtime(&self) -> Option<f64> {
        match self.mtime % 4 {
            0 => None,
            1 => Some(0.0),
            2 => Some(10.0),
            _ => Some(20.0),
        }
    }

    /// The file's chunk messages, as an OpenMSIStream producer would send them.
    pub fn build(&self) -> File {
        let content = content(self.len as usize, self.seed);
        let hash = sha512(&content);
        let size = (self.chunk as usize).max(1);
        let pieces: Vec<&[u8]> =
            if content.is_empty() { vec![&content[..0]] } else { content.chunks(size).collect() };
        let n = pieces.len() as u64;
        let mut offset = 0u64;
        let msgs = pieces
            .iter()
            .enumerate()
            .map(|(i, data)| {
                let chunk_hash = sha512(data);
                let m = wire::encode(&Chunk {
                    filename: self.name(),
                    file_hash: &hash,
                    chunk_hash: &chunk_hash,
                    chunk_offset_write: offset,
                    chunk_i: i as u64 + 1,
                    n_total_chunks: n,
                    subdir_str: self.subdir(),
                    filename_append: self.append(),
                    data,
                    file_mtime: self.mtime(),
                });
                offset += data.len() as u64;
                m
            })
            .collect();
        File { spec: *self, content, hash, msgs }
    }
}

thread_local! {
    /// Files are rebuilt for every input otherwise; the big ones cost more than the run.
    static FILES: RefCell<HashMap<FileSpec, Rc<File>>> = RefCell::new(HashMap::new());
}

fn file(spec: FileSpec) -> Rc<File> {
    FILES.with(|cache| {
        let mut cache = cache.borrow_mut();
        if let Some(f) = cache.get(&spec) {
            return Rc::clone(f);
        }
        // Bounded, or the big files of many inputs would add up.
        let held: usize = cache.values().map(|f| 2 * f.content.len() + 200 * f.msgs.len()).sum();
        if held > 16 << 20 || cache.len() >= 256 {
            cache.clear();
        }
        let f = Rc::new(spec.build());
        cache.insert(spec, Rc::clone(&f));
        f
    })
}

// ---------------------------------------------------------------------------
// The input format (also written by `seeds`)

/// Config byte: bit 0 settles each file as soon as it is complete or failed
/// (otherwise only `OP_SETTLE` and the end settle); bits 1 and 2 both set is the
/// big mode (parts above the assembler's 64 KiB growth step, files of up to 192 KiB,
/// at most two), slower, so a quarter of the inputs.
pub const CFG_SETTLE_AT_ONCE: u8 = 1;
pub const CFG_BIG_MASK: u8 = 6;

/// Operations, `op % 16`. Each is followed by its arguments (see [`assembler`]).
pub const OP_NEXT: u8 = 0; // next chunk of a file, in its order: [file]
pub const OP_CHUNK: u8 = 1; // any chunk: [file] [chunk]   (1..=7 too)
pub const OP_CORRUPT: u8 = 8; // a chunk with a byte flipped: [file] [chunk] [at:u16] [xor]  (9 too)
pub const OP_TRUNCATE: u8 = 10; // a chunk cut short: [file] [chunk] [len:u16]
pub const OP_FORGE: u8 = 11; // a crafted chunk with a valid chunk hash: see `forge`
pub const OP_RAW: u8 = 12; // arbitrary bytes: [len] [bytes]
pub const OP_SETTLE: u8 = 13; // settle one owned file: [which]
pub const OP_DEFERRED: u8 = 14; // read the oldest deferred message again
pub const OP_REREAD: u8 = 15; // read a partition again from an offset: [partition] [from:u16] [count]

/// Most operations that produce a message take a placement byte after the op:
/// bits 0-1 the partition.
const MAX_OPS: usize = 3000;
/// The assembler charges this much per out-of-order piece and per offset range.
const PIECE_OVERHEAD: u64 = 64;
/// The first step of a part buffer's growth (the assembler's `MIN_GROWTH`).
const MIN_GROWTH: u64 = 64 << 10;

struct Config {
    part_size: u64,
    limit: u64,
    settle_at_once: bool,
    files: Vec<Rc<File>>,
}

fn read_config(input: &mut Input<'_>) -> Config {
    let cfg = input.u8();
    let big = cfg & CFG_BIG_MASK == CFG_BIG_MASK;
    let part_size;
    let limit;
    if big {
        part_size = (64 << 10) + u64::from(input.u16());
        limit = u64::from(input.u16()) * 16;
    } else {
        part_size = 8 + u64::from(input.u8());
        limit = u64::from(input.u16()) % 8192;
    }
    let n_files = 1 + usize::from(input.u8() % if big { 2 } else { 3 });
    let mut files: Vec<Rc<File>> = Vec::new();
    for _ in 0..n_files {
        let flags = input.u8();
        let len = u32::from(input.u16());
        let seed = input.u8();
        let chunk = u32::from(input.u16());
        let mut spec = FileSpec {
            name: flags & 1,
            subdir: (flags >> 1) & 1,
            len: if big { len * 3 } else { len % 1500 },
            seed,
            chunk: if big { 4096 + chunk } else { 1 + chunk % 600 },
            mtime: (flags >> 2) & 3,
            append: flags & 0x10 != 0,
        };
        // The same content as the file before (same hash), chunked as this one says.
        if flags & 0x60 == 0x60 {
            if let Some(prev) = files.last() {
                spec.len = prev.spec.len;
                spec.seed = prev.spec.seed;
            }
        }
        files.push(file(spec));
    }
    Config { part_size, limit, settle_at_once: cfg & CFG_SETTLE_AT_ONCE != 0, files }
}

// ---------------------------------------------------------------------------
// Assembler

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Receiving,
    /// Complete or failed: waits to be settled.
    Owned,
    Superseded,
    Settled,
}

struct Instance {
    key: (String, [u8; 64]),
    state: State,
    /// Byte ranges of the chunks stored into it.
    bytes: IntervalSet,
    /// Where those chunks were read.
    stored_at: Vec<Position>,
    parts: BTreeMap<u32, Buffer>,
}

impl Instance {
    /// Where the contiguous prefix ends: the next in-order byte.
    fn prefix_end(&self) -> u64 {
        self.bytes.end_of_run(0).unwrap_or(0)
    }
}

/// What one input did, for the tests that check the seeds reach what they are meant to.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Stats {
    pub messages: usize,
    pub stored: usize,
    pub deferred: usize,
    pub rejected: usize,
    pub duplicate: usize,
    pub stale: usize,
    pub started: usize,
    pub parts: usize,
    pub complete: usize,
    pub failed: usize,
    pub superseded: usize,
    pub abandoned: usize,
}

struct Harness<'f> {
    stats: Stats,
    asm: Assembler,
    limit: u64,
    contents: HashMap<[u8; 64], &'f [u8]>,
    instances: HashMap<u64, Instance>,
    /// Receiving instance by (rel_path, file hash): the assembler's own lookup key.
    receiving: HashMap<(String, [u8; 64]), u64>,
    to_settle: Vec<u64>,
    settle_at_once: bool,
    deferred: Vec<Position>,
    /// The messages of each partition by offset, as the broker keeps them.
    log: [Vec<Vec<u8>>; 4],
}

fn covers(runs: &OffsetRuns, pos: Position) -> bool {
    runs.iter()
        .any(|(p, rs)| *p == pos.partition && rs.iter().any(|&(a, b)| a <= pos.offset && pos.offset < b))
}

impl Harness<'_> {
    fn produce(&mut self, partition: usize, message: Vec<u8>) {
        self.log[partition].push(message);
        let offset = self.log[partition].len() as i64 - 1;
        self.read(Position { partition: partition as i32, offset });
    }

    /// Hands the message at `pos` to the assembler and checks the outcome.
    fn read(&mut self, pos: Position) {
        let message = self.log[pos.partition as usize][pos.offset as usize].clone();
        // Unverified: the assembler checks the chunk hash; what it stores must decode.
        let chunk = wire::decode_unverified(&message).ok();
        let key = chunk.as_ref().map(|c| (c.rel_path(), *c.file_hash));
        let known = key.as_ref().and_then(|k| self.receiving.get(k).copied());
        let in_order = match (known, &chunk) {
            (Some(id), Some(c)) => c.chunk_offset_write == self.instances[&id].prefix_end(),
            _ => false,
        };
        let before = self.asm.budget().used();
        let mut events = Vec::new();
        let disposition = self.asm.add(pos, &message, &mut events);
        self.stats.messages += 1;
        let after = self.asm.budget().used();
        let ctx = || format!("{disposition:?} at {pos:?}, memory {before} -> {after} of {}", self.limit);

        match disposition {
            Disposition::Stored => self.stats.stored += 1,
            Disposition::Deferred => self.stats.deferred += 1,
            Disposition::Rejected => self.stats.rejected += 1,
            Disposition::Stale => self.stats.stale += 1,
            Disposition::Duplicate => self.stats.duplicate += 1,
            #[allow(unreachable_patterns)]
            _ => {}
        }
        for e in &events {
            match e {
                Event::Started(_) => self.stats.started += 1,
                Event::Part { .. } => self.stats.parts += 1,
                Event::Complete { .. } => self.stats.complete += 1,
                Event::Failed { .. } => self.stats.failed += 1,
                Event::Superseded { .. } => self.stats.superseded += 1,
                Event::Rejected { .. } => {}
            }
        }
        for e in &events {
            if let Event::Started(f) = e {
                let key = (f.rel_path.clone(), f.file_hash);
                assert!(!self.instances.contains_key(&f.instance), "instance {} started twice", f.instance);
                assert!(!self.receiving.contains_key(&key), "two receiving instances of {key:?}");
                assert_eq!(f.first, pos);
                self.receiving.insert(key.clone(), f.instance);
                self.instances.insert(
                    f.instance,
                    Instance {
                        key,
                        state: State::Receiving,
                        bytes: IntervalSet::new(),
                        stored_at: Vec::new(),
                        parts: BTreeMap::new(),
                    },
                );
            }
        }
        match disposition {
            Disposition::Stored => {
                let c = chunk
                    .as_ref()
                    .unwrap_or_else(|| panic!("stored a message that does not decode: {}", ctx()));
                // Out-of-order bytes wait while memory is short; only bytes that
                // extend a file's contiguous prefix may go over the limit.
                if !in_order {
                    assert!(after <= self.limit, "out-of-order chunk took memory over the limit: {}", ctx());
                }
                let key = key.as_ref().unwrap_or_else(|| unreachable!());
                let id = self.receiving.get(key).copied();
                let id =
                    id.unwrap_or_else(|| panic!("stored chunk of {key:?} belongs to no instance: {}", ctx()));
                let inst = self.instances.get_mut(&id).unwrap_or_else(|| unreachable!());
                let end = c.chunk_offset_write + c.data.len() as u64;
                assert!(
                    inst.bytes.insert(c.chunk_offset_write, end).is_ok(),
                    "stored overlapping bytes: {}",
                    ctx()
                );
                inst.stored_at.push(pos);
            }
            Disposition::Deferred => {
                assert!(events.is_empty(), "a deferred message changed something: {events:?}");
                assert_eq!(after, before, "a deferred message took memory: {}", ctx());
                self.deferred.push(pos);
            }
            Disposition::Rejected => assert!(after <= before, "a rejected message took memory: {}", ctx()),
            Disposition::Stale => assert_eq!(after, before, "a stale message took memory: {}", ctx()),
            Disposition::Duplicate => {
                assert!(after <= before + PIECE_OVERHEAD, "a duplicate took memory: {}", ctx())
            }
            // Others (such as whose partition it is) are add_batch's business, not add's.
            #[allow(unreachable_patterns)]
            other => panic!("add() returned {other:?}"),
        }

        for e in &events {
            match e {
                Event::Started(_) => {}
                Event::Part { file, number, data, crc64nvme: crc } => {
                    let inst = self.instances.get_mut(&file.instance).expect("part of an unknown instance");
                    assert_eq!(inst.state, State::Receiving, "part {number} of a finished instance");
                    assert!(*number >= 1 && !data.is_empty());
                    assert_eq!(*crc, crc64nvme(data));
                    assert!(
                        inst.parts.insert(*number, Arc::clone(data)).is_none(),
                        "part {number} sent twice"
                    );
                }
                Event::Complete { file, size, single, crc64nvme: crc, parts, offsets } => {
                    let inst = self.instances.get_mut(&file.instance).expect("unknown instance completed");
                    assert_eq!(inst.state, State::Receiving, "instance {} finished twice", file.instance);
                    let bytes: Vec<u8> = match single {
                        Some(b) => {
                            assert!(inst.parts.is_empty() && *parts == 0, "a single PUT that also has parts");
                            b.to_vec()
                        }
                        None => {
                            let numbers: Vec<u32> = inst.parts.keys().copied().collect();
                            assert_eq!(numbers, (1..=*parts).collect::<Vec<_>>(), "parts of a complete file");
                            let lens: Vec<usize> = inst.parts.values().map(|b| b.len()).collect();
                            if let Some((last, rest)) = lens.split_last() {
                                assert!(
                                    rest.iter().all(|l| *l == rest[0] && l >= last),
                                    "part sizes {lens:?}"
                                );
                            }
                            inst.parts.values().flat_map(|b| b.iter().copied()).collect()
                        }
                    };
                    assert_eq!(bytes.len() as u64, *size);
                    assert_eq!(
                        sha512(&bytes),
                        file.file_hash,
                        "complete file does not hash to its file hash"
                    );
                    assert_eq!(crc64nvme(&bytes), *crc);
                    if let Some(content) = self.contents.get(&file.file_hash) {
                        assert!(bytes == *content, "complete file differs from the file produced");
                    }
                    for p in &inst.stored_at {
                        assert!(
                            covers(offsets, *p),
                            "offset {p:?} of a stored chunk is missing from {offsets:?}"
                        );
                    }
                    self.finished(file.instance, State::Owned);
                }
                Event::Failed { file, offsets, error, position } => {
                    assert!(error.is_file_failure(), "{error:?}");
                    assert_eq!(*position, pos);
                    let inst = self.instances.get(&file.instance).expect("unknown instance failed");
                    assert_eq!(inst.state, State::Receiving, "instance {} finished twice", file.instance);
                    for p in &inst.stored_at {
                        assert!(
                            covers(offsets, *p),
                            "offset {p:?} of a stored chunk is missing from {offsets:?}"
                        );
                    }
                    self.finished(file.instance, State::Owned);
                }
                Event::Superseded { file, by } => {
                    let inst = self.instances.get(&file.instance).expect("unknown instance superseded");
                    assert_eq!(inst.state, State::Receiving, "instance {} finished twice", file.instance);
                    assert_eq!(self.instances.get(&by.instance).map(|i| i.state), Some(State::Owned));
                    self.finished(file.instance, State::Superseded);
                }
                Event::Rejected { position, error } => {
                    assert_eq!(*position, pos);
                    assert!(error.is_bad_message(), "{error:?}");
                    assert!(!error.to_string().is_empty());
                }
            }
        }
        if self.settle_at_once {
            while let Some(id) = self.to_settle.pop() {
                self.settle(id);
            }
        }
    }

    fn finished(&mut self, id: u64, state: State) {
        let inst = self.instances.get_mut(&id).unwrap_or_else(|| unreachable!());
        inst.state = state;
        inst.parts.clear();
        assert_eq!(self.receiving.remove(&inst.key), Some(id));
        if state == State::Owned {
            self.to_settle.push(id);
        }
    }

    fn settle(&mut self, id: u64) {
        assert!(self.asm.settle(id), "settle({id}) of an owned instance failed");
        assert!(!self.asm.settle(id), "settle({id}) succeeded twice");
        if let Some(inst) = self.instances.get_mut(&id) {
            inst.state = State::Settled;
        }
    }

    /// All files settled or given up: nothing may be pinned or held.
    fn end(&mut self) {
        while let Some(id) = self.to_settle.pop() {
            self.settle(id);
        }
        let mut listed: Vec<u64> = self.asm.in_progress().iter().map(|p| p.info.instance).collect();
        listed.sort_unstable();
        let mut receiving: Vec<u64> = self.receiving.values().copied().collect();
        receiving.sort_unstable();
        assert_eq!(listed, receiving, "in_progress() and the receiving instances differ");
        for id in receiving {
            let (info, runs) = self.asm.abandon(id).expect("a receiving instance could not be abandoned");
            assert_eq!(info.instance, id);
            for p in &self.instances[&id].stored_at {
                assert!(covers(&runs, *p), "offset {p:?} of a stored chunk is missing from {runs:?}");
            }
            assert!(self.asm.settle(id));
            self.stats.abandoned += 1;
        }
        assert!(self.asm.in_progress().is_empty());
        assert!(self.asm.pinned_offsets().is_empty(), "{:?}", self.asm.pinned_offsets());
        assert_eq!(self.asm.budget().used(), 0, "reassembly memory still charged with every file settled");
    }
}

/// One valid chunk message of a file, chosen by the input.
fn pick<'f>(input: &mut Input<'_>, files: &'f [Rc<File>]) -> (&'f File, usize) {
    let f = &files[usize::from(input.u8()) % files.len()];
    let k = usize::from(input.u16()) % f.msgs.len();
    (f, k)
}

/// A chunk crafted from a file's name and hash with fields the input chooses,
/// and a chunk hash that matches its data (so it passes the decoder):
/// [file] [flags] [chunk_i] [n_total] [offset:u16] [from:u16] [len:u16].
fn forge(input: &mut Input<'_>, files: &[Rc<File>]) -> Vec<u8> {
    let f = &files[usize::from(input.u8()) % files.len()];
    let flags = input.u8();
    let n = f.msgs.len() as u64;
    let n_total = match flags & 3 {
        0 => n,
        1 => n + 1,
        2 => 1 + u64::from(input.u8()),
        _ => wire::MAX_CHUNKS >> (input.u8() % 41),
    };
    let chunk_i = (1 + u64::from(input.u8())).min(n_total);
    let offset = u64::from(input.u16()) << (4 * ((flags >> 2) & 3));
    let from = usize::from(input.u16()).min(f.content.len());
    let len = usize::from(input.u16()) % 2048;
    let data = &f.content[from..(from + len).min(f.content.len())];
    let other_hash = sha512(data);
    let chunk_hash = sha512(data);
    wire::encode(&Chunk {
        filename: f.spec.name(),
        file_hash: if flags & 0x10 != 0 { &other_hash } else { &f.hash },
        chunk_hash: &chunk_hash,
        chunk_offset_write: offset,
        chunk_i,
        n_total_chunks: n_total,
        subdir_str: f.spec.subdir(),
        filename_append: if flags & 0x20 != 0 { "_x" } else { f.spec.append() },
        data,
        file_mtime: if flags & 0x40 != 0 { Some(30.0) } else { f.spec.mtime() },
    })
}

/// Runs one input; panics on any broken invariant:
///
/// * no panic inside the assembler;
/// * a chunk stored out of order (not extending its file's contiguous prefix)
///   never leaves the reassembly memory above the limit; deferred and stale
///   messages take no memory, rejected ones free or keep it, a duplicate costs
///   at most the bookkeeping of one more offset range;
/// * instances start once and finish (complete, fail or are superseded) at most
///   once; parts are numbered 1..=n without repeats, all of one size but the last;
/// * every Complete event's bytes (single PUT, or its parts in order) have the
///   announced size, CRC64NVME and the file hash, and are the file produced;
/// * a finished or abandoned instance's offsets cover every message stored into it;
/// * settle succeeds exactly once for each complete or failed instance;
/// * at the end, with everything settled or abandoned, nothing is in progress,
///   nothing is pinned and no reassembly memory is charged.
pub fn assembler(data: &[u8]) {
    assembler_stats(data);
}

/// [`assembler`], returning what the input did.
pub fn assembler_stats(data: &[u8]) -> Stats {
    let mut input = Input::new(data);
    let cfg = read_config(&mut input);
    let mut h = Harness {
        stats: Stats::default(),
        asm: Assembler::with_limits(cfg.part_size, cfg.limit),
        limit: cfg.limit,
        contents: cfg.files.iter().map(|f| (f.hash, f.content.as_slice())).collect(),
        instances: HashMap::new(),
        receiving: HashMap::new(),
        to_settle: Vec::new(),
        settle_at_once: cfg.settle_at_once,
        deferred: Vec::new(),
        log: Default::default(),
    };
    let mut next_chunk = vec![0usize; cfg.files.len()];
    for _ in 0..MAX_OPS {
        if input.done() {
            break;
        }
        let op = input.u8();
        let partition = usize::from(op >> 4) % 4;
        let message = match op % 16 {
            OP_NEXT => {
                let i = usize::from(input.u8()) % cfg.files.len();
                let f = &cfg.files[i];
                let k = next_chunk[i] % f.msgs.len();
                next_chunk[i] = k + 1;
                f.msgs[k].clone()
            }
            1..=7 => {
                let (f, k) = pick(&mut input, &cfg.files);
                f.msgs[k].clone()
            }
            8 | 9 => {
                let (f, k) = pick(&mut input, &cfg.files);
                let mut m = f.msgs[k].clone();
                let at = usize::from(input.u16()) % m.len();
                m[at] ^= input.u8() | 1;
                m
            }
            OP_TRUNCATE => {
                let (f, k) = pick(&mut input, &cfg.files);
                let mut m = f.msgs[k].clone();
                m.truncate(usize::from(input.u16()) % m.len());
                m
            }
            OP_FORGE => forge(&mut input, &cfg.files),
            OP_RAW => {
                let n = usize::from(input.u8());
                input.take(n).to_vec()
            }
            OP_SETTLE => {
                let which = usize::from(input.u8());
                if !h.to_settle.is_empty() {
                    let id = h.to_settle.remove(which % h.to_settle.len());
                    h.settle(id);
                }
                continue;
            }
            OP_DEFERRED => {
                if !h.deferred.is_empty() {
                    let pos = h.deferred.remove(0);
                    h.read(pos);
                }
                continue;
            }
            _ => {
                // OP_REREAD: a consumer that reads the partition again (restart, rebalance).
                let from = usize::from(input.u16());
                let count = 1 + usize::from(input.u8() % 16);
                let len = h.log[partition].len();
                if len > 0 {
                    let from = from % len;
                    for o in from..(from + count).min(len) {
                        h.read(Position { partition: partition as i32, offset: o as i64 });
                    }
                }
                continue;
            }
        };
        h.produce(partition, message);
    }
    h.end();
    h.stats
}

// ---------------------------------------------------------------------------
// Seeds

/// Builds assembler inputs in the format [`assembler`] reads.
pub struct Script(pub Vec<u8>);

impl Script {
    /// Config for small files: `files` are (flags, len, seed, chunk) as `read_config` reads them.
    pub fn small(cfg: u8, part_size: u8, limit: u16, files: &[(u8, u16, u8, u16)]) -> Self {
        let mut s = Script(vec![cfg & !CFG_BIG_MASK, part_size]);
        s.0.extend_from_slice(&limit.to_le_bytes());
        s.files(files);
        s
    }

    pub fn big(cfg: u8, part_size: u16, limit: u16, files: &[(u8, u16, u8, u16)]) -> Self {
        let mut s = Script(vec![cfg | CFG_BIG_MASK]);
        s.0.extend_from_slice(&part_size.to_le_bytes());
        s.0.extend_from_slice(&limit.to_le_bytes());
        s.files(files);
        s
    }

    fn files(&mut self, files: &[(u8, u16, u8, u16)]) {
        self.0.push((files.len() as u8).saturating_sub(1));
        for &(flags, len, seed, chunk) in files {
            self.0.push(flags);
            self.0.extend_from_slice(&len.to_le_bytes());
            self.0.push(seed);
            self.0.extend_from_slice(&chunk.to_le_bytes());
        }
    }

    pub fn next(&mut self, partition: u8, file: u8) -> &mut Self {
        self.0.extend_from_slice(&[OP_NEXT | (partition << 4), file]);
        self
    }

    pub fn chunk(&mut self, partition: u8, file: u8, chunk: u16) -> &mut Self {
        self.0.extend_from_slice(&[OP_CHUNK | (partition << 4), file]);
        self.0.extend_from_slice(&chunk.to_le_bytes());
        self
    }

    pub fn corrupt(&mut self, partition: u8, file: u8, chunk: u16, at: u16, xor: u8) -> &mut Self {
        self.0.extend_from_slice(&[OP_CORRUPT | (partition << 4), file]);
        self.0.extend_from_slice(&chunk.to_le_bytes());
        self.0.extend_from_slice(&at.to_le_bytes());
        self.0.push(xor);
        self
    }

    pub fn truncate(&mut self, partition: u8, file: u8, chunk: u16, len: u16) -> &mut Self {
        self.0.extend_from_slice(&[OP_TRUNCATE | (partition << 4), file]);
        self.0.extend_from_slice(&chunk.to_le_bytes());
        self.0.extend_from_slice(&len.to_le_bytes());
        self
    }

    #[allow(clippy::too_many_arguments)]
    pub fn forge(
        &mut self,
        partition: u8,
        file: u8,
        flags: u8,
        n_total: u8,
        chunk_i: u8,
        offset: u16,
        from: u16,
        len: u16,
    ) -> &mut Self {
        self.0.extend_from_slice(&[OP_FORGE | (partition << 4), file, flags]);
        if flags & 3 >= 2 {
            self.0.push(n_total);
        }
        self.0.push(chunk_i);
        for v in [offset, from, len] {
            self.0.extend_from_slice(&v.to_le_bytes());
        }
        self
    }

    pub fn raw(&mut self, partition: u8, bytes: &[u8]) -> &mut Self {
        self.0.extend_from_slice(&[OP_RAW | (partition << 4), bytes.len() as u8]);
        self.0.extend_from_slice(&bytes[..bytes.len().min(255)]);
        self
    }

    pub fn settle(&mut self, which: u8) -> &mut Self {
        self.0.extend_from_slice(&[OP_SETTLE, which]);
        self
    }

    pub fn deferred(&mut self) -> &mut Self {
        self.0.push(OP_DEFERRED);
        self
    }

    pub fn reread(&mut self, partition: u8, from: u16, count: u8) -> &mut Self {
        self.0.push(OP_REREAD | (partition << 4));
        self.0.extend_from_slice(&from.to_le_bytes());
        self.0.push(count.saturating_sub(1));
        self
    }
}

/// The seed corpus of both targets: (target, file name, bytes).
pub fn seeds() -> Vec<(&'static str, String, Vec<u8>)> {
    let mut out = Vec::new();
    for (name, bytes) in decoder_seeds() {
        out.push(("wire_decode", name, bytes));
    }
    for (name, bytes) in assembler_seeds() {
        out.push(("assembler", name, bytes));
    }
    out
}

fn decoder_seeds() -> Vec<(String, Vec<u8>)> {
    let data = content(300, 7);
    let fh = sha512(&data);
    let ch = sha512(&data[..100]);
    let base = Chunk {
        filename: "x.dat",
        file_hash: &fh,
        chunk_hash: &ch,
        chunk_offset_write: 0,
        chunk_i: 1,
        n_total_chunks: 3,
        subdir_str: "a/b",
        filename_append: "",
        data: &data[..100],
        file_mtime: Some(1_700_000_000.0),
    };
    let mut out = vec![("chunk10".to_owned(), wire::encode(&base))];
    out.push(("chunk9".to_owned(), wire::encode(&Chunk { file_mtime: None, ..base.clone() })));
    let ch3 = sha512(&data[200..]);
    out.push((
        "last_chunk_append".to_owned(),
        wire::encode(&Chunk {
            chunk_hash: &ch3,
            chunk_offset_write: 200,
            chunk_i: 3,
            subdir_str: "",
            filename_append: "_2",
            data: &data[200..],
            file_mtime: Some(0.0),
            ..base.clone()
        }),
    ));
    let empty = sha512(b"");
    out.push((
        "empty_file".to_owned(),
        wire::encode(&Chunk {
            file_hash: &empty,
            chunk_hash: &empty,
            n_total_chunks: 1,
            subdir_str: "",
            data: b"",
            ..base.clone()
        }),
    ));
    let long_name = "n".repeat(300);
    let big = vec![5u8; 300];
    let big_hash = sha512(&big);
    out.push((
        "wide_fields".to_owned(),
        wire::encode(&Chunk {
            filename: &long_name,
            chunk_hash: &big_hash,
            chunk_offset_write: 5 << 38,
            chunk_i: 70_000_000,
            n_total_chunks: 1 << 33,
            subdir_str: "some/deeper/sub dir/with spaces",
            data: &big,
            ..base.clone()
        }),
    ));
    // Non-canonical forms the decoder accepts: bin for text, float32 and nil mtimes,
    // array16 header, wider int encodings.
    let mut m = vec![0xdc, 0x00, 0x0a, 0xc4, 5];
    m.extend_from_slice(b"x.dat");
    for h in [&fh, &ch] {
        m.extend_from_slice(&[0xc4, 64]);
        m.extend_from_slice(h);
    }
    m.extend_from_slice(&[0xcf, 0, 0, 0, 0, 0, 0, 0, 0, 0xd0, 1, 0xcd, 0, 3, 0xd9, 0, 0xc4, 0]);
    m.extend_from_slice(&[0xc5, 0, 100]);
    m.extend_from_slice(&data[..100]);
    let mut f32_form = m.clone();
    f32_form.extend_from_slice(&[0xca, 0x4e, 0xca, 0xa2, 0x12]);
    out.push(("noncanonical_f32".to_owned(), f32_form));
    let mut nil_form = m;
    nil_form.push(0xc0);
    out.push(("noncanonical_nil".to_owned(), nil_form));
    let mut bad = wire::encode(&base);
    bad.truncate(180);
    out.push(("truncated".to_owned(), bad));
    out.push(("key".to_owned(), b"a_b_x.dat_chunk_3_of_5".to_vec()));
    out
}

fn assembler_seeds() -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    // One small multipart file in order, settled at once.
    let mut s = Script::small(CFG_SETTLE_AT_ONCE, 56, 4000, &[(0, 500, 1, 60)]);
    for _ in 0..9 {
        s.next(0, 0);
    }
    out.push(("in_order".to_owned(), s.0));
    // Two files on two partitions, interleaved, with redeliveries and a re-read.
    let mut s = Script::small(0, 100, 3000, &[(0, 700, 2, 100), (0x03, 250, 3, 50)]);
    for i in 0..7 {
        s.next(0, 0).next(1, 1);
        if i % 3 == 0 {
            s.reread(0, 0, 2);
        }
    }
    s.settle(0).settle(0).reread(1, 0, 8);
    out.push(("two_files_rereads".to_owned(), s.0));
    // Out of order under a tight memory limit, then the deferred messages again.
    let mut s = Script::small(CFG_SETTLE_AT_ONCE, 64, 500, &[(0x01, 640, 4, 64)]);
    for k in [3u16, 5, 7, 9, 1, 0, 2, 4, 6, 8] {
        s.chunk(0, 0, k);
    }
    for _ in 0..12 {
        s.deferred();
    }
    out.push(("tight_memory".to_owned(), s.0));
    // A corrupted chunk and a truncated one, then the file again without them.
    let mut s = Script::small(CFG_SETTLE_AT_ONCE, 40, 5000, &[(0x02, 300, 5, 30)]);
    s.next(0, 0).corrupt(0, 0, 1, 290, 0x10).truncate(1, 0, 2, 50);
    for _ in 0..10 {
        s.next(1, 0);
    }
    out.push(("corrupt_truncate".to_owned(), s.0));
    // Two generations of one path: the newer (more chunks, later mtime) completes
    // while the older is received and supersedes it; late chunks of the older are stale.
    let mut s = Script::small(0, 80, 6000, &[(0x08, 400, 6, 100), (0x0c, 450, 7, 90)]);
    s.next(0, 0).next(0, 0);
    for _ in 0..5 {
        s.next(1, 1);
    }
    s.next(0, 0).next(0, 0).settle(0);
    out.push(("generations".to_owned(), s.0));
    // The same file produced again with another chunk size (same hash, other count),
    // and then again as it was (an echo of the finished file).
    let mut s = Script::small(CFG_SETTLE_AT_ONCE, 80, 6000, &[(0x04, 400, 6, 100), (0x64, 0, 0, 150)]);
    for _ in 0..4 {
        s.next(0, 0);
    }
    for _ in 0..3 {
        s.next(1, 1);
    }
    for _ in 0..4 {
        s.next(2, 0);
    }
    out.push(("same_file_rechunked".to_owned(), s.0));
    // Forged chunks (wrong count, far offset, other hash, other append) and garbage.
    let mut s = Script::small(0, 50, 3000, &[(0, 200, 8, 40)]);
    for _ in 0..5 {
        s.next(0, 0);
    }
    s.settle(0)
        .forge(0, 0, 0x00, 0, 2, 40, 40, 40)
        .forge(0, 0, 0x01, 0, 3, 80, 80, 40)
        .forge(1, 0, 0x0e, 9, 4, 0xffff, 0, 10)
        .forge(1, 0, 0x13, 0, 1, 0, 0, 200)
        .forge(2, 0, 0x20, 0, 5, 160, 160, 40)
        .raw(3, b"\x99\xa5x.dat\xc4\x40")
        .raw(3, b"not msgpack at all");
    out.push(("forged".to_owned(), s.0));
    // An empty file.
    let mut s = Script::small(CFG_SETTLE_AT_ONCE, 10, 100, &[(0, 0, 0, 1)]);
    s.next(0, 0).next(0, 0);
    out.push(("empty_file".to_owned(), s.0));
    // Big mode: parts above the 64 KiB growth step, chunks arriving out of order.
    let mut s = Script::big(CFG_SETTLE_AT_ONCE, 40_000, 3_125, &[(0, 60_000, 9, 12_000)]);
    for k in [1u16, 3, 2, 5, 4, 0, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19] {
        s.chunk(0, 0, k);
    }
    for _ in 0..12 {
        s.deferred();
    }
    out.push(("big_parts".to_owned(), s.0));
    out
}
