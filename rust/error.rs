//! The one error type of the crate: what the wire codec, the assembler, the
//! chunker and the constructors can report.
//!
//! Each variant names what is at fault in terms a user can act on; its
//! `Display` is the message Python shows (the extension maps each variant to a
//! class of `s3transfer_stream.errors` in `python.rs`). The variants fall in
//! groups, by the question a caller asks of them:
//!
//! * a message is not a usable chunk ([`Error::Malformed`], [`Error::ChunkHash`]):
//!   the message is rejected, no file is touched ([`Error::DigestLength`] is
//!   the encoder's: a hash it was given is not a SHA-512 digest);
//! * the chunks of one file contradict each other or its file hash
//!   ([`Error::is_file_failure`]): that file fails;
//! * a setting is out of range ([`Error::PartSizeTooSmall`],
//!   [`Error::MemoryLimitTooSmall`], [`Error::ChunkSizeZero`]);
//! * the producer's source file cannot be read or changed under it
//!   ([`Error::Io`], [`Error::Changed`]), or a caller asked for a chunk the
//!   file does not have ([`Error::BadChunkIndex`]).

use std::fmt;
use std::io;
use std::path::PathBuf;
use std::sync::Arc;

use crate::assembler::{MAX_PARTS, MIN_PART_SIZE};

/// A `Result` whose error is the crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    // -- one message --------------------------------------------------------
    /// The bytes are not a well-formed chunk message.
    #[error("malformed file chunk{}: {field}: {detail}", OfFile(filename.as_deref()))]
    Malformed {
        /// The msgpack field at fault (`filename`, `chunk_i`, ... or `message`).
        field: &'static str,
        /// The file the chunk belongs to, when field 0 could be read.
        filename: Option<String>,
        detail: String,
    },
    /// The chunk's data does not hash to the chunk hash it carries.
    #[error("corrupted file chunk of file {filename:?}: chunk_hash: {}", HashDetail(*len, *chunk_i, *n_total_chunks))]
    ChunkHash { filename: String, chunk_i: u64, n_total_chunks: u64, len: usize },
    /// An encoder was given a hash that is not a SHA-512 digest.
    #[error("{field} must be a 64-byte SHA-512 digest, got {len} bytes")]
    DigestLength { field: &'static str, len: usize },

    // -- the chunks of one file ---------------------------------------------
    /// A chunk's count of chunks contradicts earlier chunks with the same file hash.
    #[error("chunk {chunk_i} says the file has {n_total_chunks} chunks, earlier chunks with the same file hash said {expected}")]
    ChunkCount { chunk_i: u64, n_total_chunks: u64, expected: u64 },
    /// A chunk names another output file (`filename_append`) than earlier chunks did.
    #[error("chunk {chunk_i} names the output file {output:?}, earlier chunks named {expected:?}")]
    OutputName { chunk_i: u64, output: String, expected: String },
    /// The last chunk ends the file before bytes other chunks wrote.
    #[error("last chunk {chunk_i}/{n_total_chunks} ends the file at byte {end}, but earlier chunks reach byte {reached}")]
    ShortLastChunk { chunk_i: u64, n_total_chunks: u64, end: u64, reached: u64 },
    /// A chunk reaches past the end the last chunk set.
    #[error("chunk {chunk_i}/{n_total_chunks} reaches byte {end}, past the end of the file at byte {size}")]
    PastEnd { chunk_i: u64, n_total_chunks: u64, end: u64, size: u64 },
    /// A chunk's bytes overlap bytes of another chunk.
    #[error("chunk {chunk_i}/{n_total_chunks} (bytes {start}..{end}) overlaps bytes of another chunk")]
    Overlap { chunk_i: u64, n_total_chunks: u64, start: u64, end: u64 },
    /// A chunk reaches beyond what [`MAX_PARTS`] parts can hold.
    #[error(
        "chunk {chunk_i}/{n_total_chunks} reaches byte {end}, beyond {MAX_PARTS} parts of {part_size} bytes"
    )]
    TooManyParts { chunk_i: u64, n_total_chunks: u64, end: u64, part_size: u64 },
    /// Every chunk arrived, yet they leave bytes of the file uncovered.
    #[error("all {n_chunks} chunks arrived but they cover {covered} of the file's {size} bytes")]
    Incomplete { n_chunks: u64, covered: u64, size: u64 },
    /// The reassembled bytes do not match the producer's file hash.
    #[error("the SHA-512 of the {size} reassembled bytes does not match the producer's file hash")]
    FileHash { size: u64 },
    /// A chunk of a file being received fails its chunk hash: the file cannot complete.
    #[error("chunk {chunk_i}/{n_total_chunks} is corrupted ({})", HashDetail(*len, *chunk_i, *n_total_chunks))]
    CorruptChunk { chunk_i: u64, n_total_chunks: u64, len: usize },

    // -- settings -----------------------------------------------------------
    #[error("part size {part_size} is below S3's minimum part size of {MIN_PART_SIZE} bytes")]
    PartSizeTooSmall { part_size: u64 },
    #[error("the reassembly memory limit ({max_buffered} bytes) must hold at least two parts of {part_size} bytes")]
    MemoryLimitTooSmall { max_buffered: u64, part_size: u64 },
    #[error("chunk size must be a positive number of bytes")]
    ChunkSizeZero,

    // -- the producer's source file -----------------------------------------
    /// The file cannot be opened, read or stat'ed.
    #[error("cannot read {}: {source}", path.display())]
    Io {
        path: PathBuf,
        /// Shared so that the error stays `Clone`.
        #[source]
        source: Arc<io::Error>,
    },
    /// The file changed since it was hashed: its chunks could not agree.
    #[error("{} changed while it was being sent (chunk {chunk_i} no longer matches its hash)", path.display())]
    Changed { path: PathBuf, chunk_i: u64 },
    /// A chunk index outside the file's chunks (a caller's mistake).
    #[error("chunk index {chunk_i} is outside 1..={n}")]
    BadChunkIndex { chunk_i: u64, n: u64 },
}

impl Error {
    /// A [`Error::Malformed`] error.
    pub fn malformed(field: &'static str, filename: Option<&str>, detail: impl Into<String>) -> Self {
        Self::Malformed { field, filename: filename.map(str::to_owned), detail: detail.into() }
    }

    /// An [`Error::Io`] error about `path`.
    pub fn io(path: impl Into<PathBuf>, source: io::Error) -> Self {
        Self::Io { path: path.into(), source: Arc::new(source) }
    }

    /// The message field (for chunk and file errors) or setting (for setting
    /// errors) at fault, where one is.
    pub fn field(&self) -> Option<&'static str> {
        Some(match self {
            Self::Malformed { field, .. } | Self::DigestLength { field, .. } => field,
            Self::ChunkHash { .. } | Self::CorruptChunk { .. } => "chunk_hash",
            Self::ChunkCount { .. } => "n_total_chunks",
            Self::OutputName { .. } => "filename_append",
            Self::ShortLastChunk { .. }
            | Self::PastEnd { .. }
            | Self::Overlap { .. }
            | Self::TooManyParts { .. } => "chunk_offset_write",
            Self::FileHash { .. } => "file_hash",
            Self::PartSizeTooSmall { .. } => "part_size",
            Self::MemoryLimitTooSmall { .. } => "max_buffered",
            Self::ChunkSizeZero => "chunk_size",
            Self::Incomplete { .. } | Self::Io { .. } | Self::Changed { .. } | Self::BadChunkIndex { .. } => {
                return None
            }
        })
    }

    /// The chunk at fault, where one is.
    pub fn chunk_i(&self) -> Option<u64> {
        match self {
            Self::ChunkHash { chunk_i, .. }
            | Self::ChunkCount { chunk_i, .. }
            | Self::OutputName { chunk_i, .. }
            | Self::ShortLastChunk { chunk_i, .. }
            | Self::PastEnd { chunk_i, .. }
            | Self::Overlap { chunk_i, .. }
            | Self::TooManyParts { chunk_i, .. }
            | Self::CorruptChunk { chunk_i, .. }
            | Self::Changed { chunk_i, .. }
            | Self::BadChunkIndex { chunk_i, .. } => Some(*chunk_i),
            _ => None,
        }
    }

    /// The message is not a usable chunk (nothing else is wrong).
    pub fn is_bad_message(&self) -> bool {
        matches!(self, Self::Malformed { .. } | Self::ChunkHash { .. })
    }

    /// The chunks of one file cannot make that file: it fails.
    pub fn is_file_failure(&self) -> bool {
        matches!(
            self,
            Self::ChunkCount { .. }
                | Self::OutputName { .. }
                | Self::ShortLastChunk { .. }
                | Self::PastEnd { .. }
                | Self::Overlap { .. }
                | Self::TooManyParts { .. }
                | Self::Incomplete { .. }
                | Self::FileHash { .. }
                | Self::CorruptChunk { .. }
        )
    }

    /// A setting is out of range.
    pub fn is_config(&self) -> bool {
        matches!(self, Self::PartSizeTooSmall { .. } | Self::MemoryLimitTooSmall { .. } | Self::ChunkSizeZero)
    }
}

/// ` of file "name"` when the name is known.
struct OfFile<'a>(Option<&'a str>);

impl fmt::Display for OfFile<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Some(name) => write!(f, " of file {name:?}"),
            None => Ok(()),
        }
    }
}

/// What a chunk hash mismatch says: data length, chunk index and count.
struct HashDetail(usize, u64, u64);

impl fmt::Display for HashDetail {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let Self(len, i, n) = self;
        write!(f, "SHA-512 of the {len} data bytes of chunk {i}/{n} does not match the chunk hash")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_name_the_file_and_field() {
        let e = Error::malformed("chunk_i", Some("x.dat"), "must be an integer, got nil");
        assert_eq!(
            e.to_string(),
            "malformed file chunk of file \"x.dat\": chunk_i: must be an integer, got nil"
        );
        let e = Error::malformed("message", None, "has no value");
        assert_eq!(e.to_string(), "malformed file chunk: message: has no value");
        let e = Error::ChunkHash { filename: "x.dat".into(), chunk_i: 2, n_total_chunks: 3, len: 5 };
        assert_eq!(
            e.to_string(),
            "corrupted file chunk of file \"x.dat\": chunk_hash: SHA-512 of the 5 data bytes of chunk 2/3 \
             does not match the chunk hash"
        );
        assert_eq!(e.field(), Some("chunk_hash"));
        assert!(e.is_bad_message() && !e.is_file_failure());
        let e = Error::CorruptChunk { chunk_i: 2, n_total_chunks: 3, len: 5 };
        assert!(e.to_string().starts_with("chunk 2/3 is corrupted (SHA-512 of the 5 data bytes"), "{e}");
        assert!(e.is_file_failure());
    }

    #[test]
    fn io_errors_keep_their_source() {
        let e = Error::io("/nope", io::Error::from_raw_os_error(2));
        assert!(e.to_string().starts_with("cannot read /nope: "), "{e}");
        assert!(std::error::Error::source(&e).is_some());
        assert_eq!(e.field(), None);
        assert!(Error::ChunkSizeZero.is_config());
    }
}
