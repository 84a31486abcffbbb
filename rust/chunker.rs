//! The producer side: cut a file into OpenMSIStream chunk messages.
//!
//! A first pass hashes the whole file and every chunk (the file hash goes into
//! every message, so it must be known before the first one is sent), the file
//! hash and the chunk hashes of each block on two threads. Messages
//! are then built on demand by reading the chunk again at its offset, straight
//! into the message buffer behind its header, and checked there against the
//! first pass, so a file that changes while it is being sent is reported
//! instead of producing chunks that cannot agree. A chunk sent again later (its
//! delivery failed) is read and checked alone, against its recorded chunk hash.

use std::fs::File;
use std::io::{self, Read};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::time::UNIX_EPOCH;

use crate::checksum::Sha512;

use crate::error::{Error, Result};
use crate::wire::Chunk;

pub struct FilePlan {
    pub path: PathBuf,
    pub size: u64,
    pub chunk_size: u64,
    pub file_hash: [u8; 64],
    pub chunk_hashes: Vec<[u8; 64]>,
    /// CRC64NVME of each chunk: re-reading a chunk checks it against this, which
    /// is far cheaper than hashing the chunk with SHA-512 a second time.
    chunk_crcs: Vec<u64>,
    /// `st_mtime` as Python computes it (seconds + nanoseconds * 1e-9), 0.0 if unknown.
    pub mtime: f64,
}

/// How much of the file the first pass reads at a time.
const READ_BLOCK: usize = 8 << 20;

/// Below this many bytes a block is hashed on one thread (a thread costs more).
const PARALLEL_BLOCK_MIN: usize = 1 << 20;

/// Reads until `buf` is full or the file ends; the bytes read.
fn read_full(f: &mut File, buf: &mut [u8]) -> io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match f.read(&mut buf[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(filled)
}

/// The SHA-512 and CRC64NVME of each chunk, fed the file's bytes in order.
struct ChunkSums {
    chunk_size: u64,
    in_chunk: u64,
    hash: Sha512,
    crc: crc_fast::Digest,
    hashes: Vec<[u8; 64]>,
    crcs: Vec<u64>,
}

impl ChunkSums {
    fn new(chunk_size: u64) -> Self {
        Self {
            chunk_size,
            in_chunk: 0,
            hash: Sha512::new(),
            crc: crc_fast::Digest::new(crc_fast::CrcAlgorithm::Crc64Nvme),
            hashes: Vec::new(),
            crcs: Vec::new(),
        }
    }

    fn update(&mut self, mut data: &[u8]) {
        while !data.is_empty() {
            let take = (self.chunk_size - self.in_chunk).min(data.len() as u64) as usize;
            let (piece, rest) = data.split_at(take);
            self.hash.update(piece);
            self.crc.update(piece);
            self.in_chunk += take as u64;
            if self.in_chunk == self.chunk_size {
                self.hashes.push(self.hash.finish_reset());
                self.crcs.push(self.crc.finalize_reset());
                self.in_chunk = 0;
            }
            data = rest;
        }
    }

    fn finish(mut self, size: u64) -> (Vec<[u8; 64]>, Vec<u64>) {
        // An empty file still travels as one empty chunk so it is reconstructed.
        if self.in_chunk > 0 || size == 0 {
            self.hashes.push(self.hash.finish());
            self.crcs.push(self.crc.finalize());
        }
        (self.hashes, self.crcs)
    }
}

fn python_mtime(meta: &std::fs::Metadata) -> f64 {
    match meta.modified().ok().and_then(|t| t.duration_since(UNIX_EPOCH).ok()) {
        Some(d) => d.as_secs() as f64 + f64::from(d.subsec_nanos()) * 1e-9,
        None => 0.0,
    }
}

impl FilePlan {
    /// Reads the file once: its mtime first (as OpenMSIStream does), then every byte.
    pub fn new(path: &Path, chunk_size: u64) -> Result<Self> {
        let io_err = |source| Error::io(path, source);
        if chunk_size == 0 {
            return Err(Error::ChunkSizeZero);
        }
        let mut f = File::open(path).map_err(io_err)?;
        let meta = f.metadata().map_err(io_err)?;
        let mtime = python_mtime(&meta);
        let mut file_hash = Sha512::new();
        let mut chunks = ChunkSums::new(chunk_size);
        let mut buf = vec![0u8; meta.len().clamp(64 << 10, READ_BLOCK as u64) as usize];
        let mut size = 0u64;
        let parallel = std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get) >= 2;
        loop {
            let n = read_full(&mut f, &mut buf).map_err(io_err)?;
            if n == 0 {
                break;
            }
            let block = &buf[..n];
            size += n as u64;
            if parallel && n >= PARALLEL_BLOCK_MIN {
                // The file hash on another thread while this one hashes the chunks:
                // one SHA-512 pass of wall time per byte, not two (issue 8).
                let joined = std::thread::scope(|scope| {
                    let worker = scope.spawn(|| file_hash.update(block));
                    chunks.update(block);
                    worker.join()
                });
                if joined.is_err() {
                    return Err(io_err(io::Error::other("the thread hashing the file failed")));
                }
            } else {
                file_hash.update(block);
                chunks.update(block);
            }
        }
        let (chunk_hashes, chunk_crcs) = chunks.finish(size);
        Ok(Self {
            path: path.to_owned(),
            size,
            chunk_size,
            file_hash: file_hash.finish(),
            chunk_hashes,
            chunk_crcs,
            mtime,
        })
    }

    pub fn n_chunks(&self) -> u64 {
        self.chunk_hashes.len() as u64
    }

    /// Encodes chunk `chunk_i` (1-based), reading its bytes from `file` again
    /// into the message and checking them there as `check` says.
    pub fn encode_chunk(&self, file: &File, chunk_i: u64, names: Names<'_>, check: Check) -> Result<Vec<u8>> {
        let n = self.n_chunks();
        if chunk_i == 0 || chunk_i > n {
            return Err(Error::BadChunkIndex { chunk_i, n });
        }
        let index = (chunk_i - 1) as usize;
        let (Some(chunk_hash), Some(&crc)) = (self.chunk_hashes.get(index), self.chunk_crcs.get(index))
        else {
            return Err(Error::BadChunkIndex { chunk_i, n });
        };
        let offset = (chunk_i - 1) * self.chunk_size;
        let changed = || Error::Changed { path: self.path.clone(), chunk_i };
        let frame = Chunk {
            filename: names.filename,
            file_hash: &self.file_hash,
            chunk_hash,
            chunk_offset_write: offset,
            chunk_i,
            n_total_chunks: n,
            subdir_str: names.subdir,
            filename_append: names.append,
            data: &[],
            file_mtime: Some(self.mtime),
        }
        .frame_for(self.chunk_size.min(self.size - offset) as usize);
        let message = frame.encode_with(|data| {
            file.read_exact_at(data, offset).map_err(|source| match source.kind() {
                io::ErrorKind::UnexpectedEof => changed(),
                _ => Error::io(&self.path, source),
            })?;
            let same = match check {
                Check::Crc => crate::checksum::crc64nvme(data) == crc,
                Check::ChunkHash => crate::checksum::sha512(data) == *chunk_hash,
            };
            if same {
                Ok(())
            } else {
                Err(changed())
            }
        })?;
        if chunk_i == n {
            // Bytes appended after hashing would be silently left out.
            let now = file.metadata().map_err(|source| Error::io(&self.path, source))?;
            if now.len() != self.size {
                return Err(changed());
            }
        }
        Ok(message)
    }
}

/// The names a chunk message carries: the file's subdir and name, and the
/// append for its output name.
#[derive(Debug, Clone, Copy)]
pub struct Names<'a> {
    pub subdir: &'a str,
    pub filename: &'a str,
    pub append: &'a str,
}

/// What a chunk read again is checked against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Check {
    /// The file the plan hashed, still open: the chunk's CRC64NVME from the
    /// first pass, far cheaper than SHA-512 and as good against accidents.
    Crc,
    /// A file opened again by its path, which may name another file by now:
    /// the chunk's SHA-512 recorded in the first pass, which its message
    /// carries and the consumer checks.
    ChunkHash,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checksum::sha512;
    use crate::wire;
    use std::io::Write;

    fn names<'a>(subdir: &'a str, filename: &'a str) -> Names<'a> {
        Names { subdir, filename, append: "" }
    }

    fn temp_file(content: &[u8]) -> (PathBuf, File) {
        let dir = std::env::temp_dir().join(format!("s3ts-chunker-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join(format!("f{}", content.len()));
        let mut f = File::create(&path).unwrap();
        f.write_all(content).unwrap();
        (path.clone(), File::open(&path).unwrap())
    }

    #[test]
    fn chunks_decode_back_to_the_file() {
        let content: Vec<u8> = (0..10_000u32).map(|i| (i % 251) as u8).collect();
        let (path, file) = temp_file(&content);
        let plan = FilePlan::new(&path, 4096).unwrap();
        assert_eq!(plan.n_chunks(), 3);
        assert_eq!(plan.file_hash, sha512(&content));
        let mut rebuilt = Vec::new();
        for i in 1..=3 {
            let msg = plan.encode_chunk(&file, i, names("a/b", "f.dat"), Check::Crc).unwrap();
            let c = wire::decode(&msg).unwrap();
            assert_eq!(c.chunk_offset_write, (i - 1) * 4096);
            rebuilt.extend_from_slice(c.data);
        }
        assert_eq!(rebuilt, content);
        assert!(plan.encode_chunk(&file, 4, names("", "f"), Check::Crc).is_err());
    }

    #[test]
    fn chunk_and_file_hashes_are_right_across_read_blocks() {
        // Over two read blocks (hashed on two threads) with chunks that straddle
        // the block edges; and chunk sizes above the block and the file.
        let content: Vec<u8> = (0..(2 * READ_BLOCK + 12_345) as u32).map(|i| (i % 247) as u8).collect();
        let (path, _file) = temp_file(&content);
        for chunk_size in [(3 << 20) + 7, READ_BLOCK + 1, 64 << 20] {
            let plan = FilePlan::new(&path, chunk_size as u64).unwrap();
            assert_eq!(plan.file_hash, sha512(&content));
            let want: Vec<[u8; 64]> = content.chunks(chunk_size).map(sha512).collect();
            assert_eq!(plan.chunk_hashes, want, "chunk size {chunk_size}");
            let crcs: Vec<u64> = content.chunks(chunk_size).map(crate::checksum::crc64nvme).collect();
            assert_eq!(plan.chunk_crcs, crcs, "chunk size {chunk_size}");
        }
    }

    #[test]
    fn empty_file_is_one_empty_chunk() {
        let (path, file) = temp_file(b"");
        let plan = FilePlan::new(&path, 4096).unwrap();
        assert_eq!(plan.n_chunks(), 1);
        let msg = plan.encode_chunk(&file, 1, names("", "e"), Check::Crc).unwrap();
        assert!(wire::decode(&msg).unwrap().data.is_empty());
    }

    #[test]
    fn a_changed_file_is_reported() {
        let (path, file) = temp_file(&[1u8; 5000]);
        let plan = FilePlan::new(&path, 4096).unwrap();
        std::fs::write(&path, [2u8; 5000]).unwrap();
        let err = plan.encode_chunk(&file, 1, names("", "f"), Check::Crc).unwrap_err();
        assert!(err.to_string().contains("changed while it was being sent"), "{err}");
        assert!(matches!(err, Error::Changed { chunk_i: 1, .. }), "{err:?}");
    }

    #[test]
    fn messages_read_in_place_are_the_canonical_encoding() {
        let content: Vec<u8> = (0..70_000u32).map(|i| (i % 253) as u8).collect();
        let (path, file) = temp_file(&content);
        let plan = FilePlan::new(&path, 65_536).unwrap();
        for (i, data) in content.chunks(65_536).enumerate() {
            let chunk_i = i as u64 + 1;
            let chunk_hash = sha512(data);
            let expected = wire::encode(&Chunk {
                filename: "f.dat",
                file_hash: &plan.file_hash,
                chunk_hash: &chunk_hash,
                chunk_offset_write: i as u64 * 65_536,
                chunk_i,
                n_total_chunks: 2,
                subdir_str: "a/b",
                filename_append: "_x",
                data,
                file_mtime: Some(plan.mtime),
            });
            let names = Names { subdir: "a/b", filename: "f.dat", append: "_x" };
            for check in [Check::Crc, Check::ChunkHash] {
                assert_eq!(plan.encode_chunk(&file, chunk_i, names, check).unwrap(), expected);
            }
        }
    }

    #[test]
    fn a_chunk_checked_alone_ignores_changes_elsewhere_in_the_file() {
        let mut content = vec![1u8; 3 * 4096];
        let (path, _) = temp_file(&content);
        let plan = FilePlan::new(&path, 4096).unwrap();
        content[2 * 4096] = 2; // in chunk 3
        std::fs::write(&path, &content).unwrap();
        let reopened = File::open(&path).unwrap();
        let msg = plan.encode_chunk(&reopened, 2, names("", "f"), Check::ChunkHash).unwrap();
        assert_eq!(wire::decode(&msg).unwrap().data, &content[4096..2 * 4096]);
        let err = plan.encode_chunk(&reopened, 3, names("", "f"), Check::ChunkHash).unwrap_err();
        assert!(matches!(err, Error::Changed { chunk_i: 3, .. }), "{err:?}");
    }

    #[test]
    fn a_chunk_size_of_zero_is_an_error() {
        let (path, _) = temp_file(b"x");
        assert!(matches!(FilePlan::new(&path, 0), Err(Error::ChunkSizeZero)));
    }
}
