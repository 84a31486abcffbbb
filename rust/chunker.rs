//! The producer side: cut a file into OpenMSIStream chunk messages.
//!
//! A first pass hashes the whole file and every chunk (the file hash goes into
//! every message, so it must be known before the first one is sent). Messages
//! are then built on demand by reading the chunk again at its offset, and the
//! chunk hash is checked against the first pass, so a file that changes while
//! it is being sent is reported instead of producing chunks that cannot agree.

use std::fs::File;
use std::io::{self, Read};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::time::UNIX_EPOCH;

use sha2::{Digest, Sha512};

use crate::error::{Error, Result};
use crate::wire::{self, Chunk};

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
        let mtime = python_mtime(&f.metadata().map_err(io_err)?);
        let mut file_hash = Sha512::new();
        let mut chunk_hashes = Vec::new();
        let mut buf = vec![0u8; chunk_size.min(8 << 20) as usize];
        let mut size = 0u64;
        let mut chunk_hash = Sha512::new();
        let mut chunk_crcs = Vec::new();
        let mut chunk_crc = crc_fast::Digest::new(crc_fast::CrcAlgorithm::Crc64Nvme);
        let mut in_chunk = 0u64;
        loop {
            let want = (chunk_size - in_chunk).min(buf.len() as u64) as usize;
            let n = f.read(&mut buf[..want]).map_err(io_err)?;
            if n == 0 {
                break;
            }
            file_hash.update(&buf[..n]);
            chunk_hash.update(&buf[..n]);
            chunk_crc.update(&buf[..n]);
            size += n as u64;
            in_chunk += n as u64;
            if in_chunk == chunk_size {
                chunk_hashes.push(chunk_hash.finalize_reset().into());
                chunk_crcs.push(chunk_crc.finalize_reset());
                in_chunk = 0;
            }
        }
        // An empty file still travels as one empty chunk so it is reconstructed.
        if in_chunk > 0 || size == 0 {
            chunk_hashes.push(chunk_hash.finalize().into());
            chunk_crcs.push(chunk_crc.finalize());
        }
        Ok(Self {
            path: path.to_owned(),
            size,
            chunk_size,
            file_hash: file_hash.finalize().into(),
            chunk_hashes,
            chunk_crcs,
            mtime,
        })
    }

    pub fn n_chunks(&self) -> u64 {
        self.chunk_hashes.len() as u64
    }

    /// Encodes chunk `chunk_i` (1-based), reading its bytes from the file again.
    pub fn encode_chunk(
        &self,
        file: &File,
        chunk_i: u64,
        subdir: &str,
        filename: &str,
        append: &str,
    ) -> Result<Vec<u8>> {
        let n = self.n_chunks();
        if chunk_i == 0 || chunk_i > n {
            return Err(Error::BadChunkIndex { chunk_i, n });
        }
        let offset = (chunk_i - 1) * self.chunk_size;
        let len = self.chunk_size.min(self.size - offset) as usize;
        let mut data = vec![0u8; len];
        file.read_exact_at(&mut data, offset).map_err(|source| match source.kind() {
            io::ErrorKind::UnexpectedEof => Error::Changed { path: self.path.clone(), chunk_i },
            _ => Error::io(&self.path, source),
        })?;
        if chunk_i == n {
            // Bytes appended after hashing would be silently left out.
            let now = file.metadata().map_err(|source| Error::io(&self.path, source))?;
            if now.len() != self.size {
                return Err(Error::Changed { path: self.path.clone(), chunk_i });
            }
        }
        let chunk_hash = &self.chunk_hashes[(chunk_i - 1) as usize];
        if crate::checksum::crc64nvme(&data) != self.chunk_crcs[(chunk_i - 1) as usize] {
            return Err(Error::Changed { path: self.path.clone(), chunk_i });
        }
        let chunk = Chunk {
            filename,
            file_hash: &self.file_hash,
            chunk_hash,
            chunk_offset_write: offset,
            chunk_i,
            n_total_chunks: n,
            subdir_str: subdir,
            filename_append: append,
            data: &data,
            file_mtime: Some(self.mtime),
        };
        Ok(wire::encode(&chunk))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checksum::sha512;
    use std::io::Write;

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
            let msg = plan.encode_chunk(&file, i, "a/b", "f.dat", "").unwrap();
            let c = wire::decode(&msg).unwrap();
            assert_eq!(c.chunk_offset_write, (i - 1) * 4096);
            rebuilt.extend_from_slice(c.data);
        }
        assert_eq!(rebuilt, content);
        assert!(plan.encode_chunk(&file, 4, "", "f", "").is_err());
    }

    #[test]
    fn empty_file_is_one_empty_chunk() {
        let (path, file) = temp_file(b"");
        let plan = FilePlan::new(&path, 4096).unwrap();
        assert_eq!(plan.n_chunks(), 1);
        let msg = plan.encode_chunk(&file, 1, "", "e", "").unwrap();
        assert!(wire::decode(&msg).unwrap().data.is_empty());
    }

    #[test]
    fn a_changed_file_is_reported() {
        let (path, file) = temp_file(&[1u8; 5000]);
        let plan = FilePlan::new(&path, 4096).unwrap();
        std::fs::write(&path, [2u8; 5000]).unwrap();
        let err = plan.encode_chunk(&file, 1, "", "f", "").unwrap_err();
        assert!(err.to_string().contains("changed while it was being sent"), "{err}");
        assert!(matches!(err, Error::Changed { chunk_i: 1, .. }), "{err:?}");
    }

    #[test]
    fn a_chunk_size_of_zero_is_an_error() {
        let (path, _) = temp_file(b"x");
        assert!(matches!(FilePlan::new(&path, 0), Err(Error::ChunkSizeZero)));
    }
}
