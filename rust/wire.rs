//! The OpenMSIStream file-chunk message: a msgpack array of 9 or 10 fields.
//!
//! Decoding borrows every byte field from the message (no copies) and never
//! trusts a declared length before checking it against the bytes that are
//! really there, so a hostile or truncated message can neither panic nor make
//! us allocate. Encoding writes the canonical form OpenMSIStream's serializer
//! produces (smallest int encodings, `str8` for short strings, float64 for the
//! mtime), so a decoded message re-encodes to the identical bytes.

use crate::checksum::sha512;

use crate::error::{Error, Result};

/// S3 refuses objects above 5 TiB; no valid chunk can reach past that.
pub const MAX_FILE_SIZE: u64 = 5 << 40;
/// An upper bound on chunks per file that still allows 1-byte chunks of a large file
/// while keeping every count we derive from it comfortably inside u64 arithmetic.
pub const MAX_CHUNKS: u64 = 1 << 40;

/// One decoded chunk. Byte fields borrow from the message.
#[derive(Debug, Clone, PartialEq)]
pub struct Chunk<'a> {
    pub filename: &'a str,
    pub file_hash: &'a [u8; 64],
    pub chunk_hash: &'a [u8; 64],
    pub chunk_offset_write: u64,
    pub chunk_i: u64,
    pub n_total_chunks: u64,
    pub subdir_str: &'a str,
    pub filename_append: &'a str,
    pub data: &'a [u8],
    /// `None` for the 9-field form; `Some(x)` for the 10-field form, `x` as sent
    /// (OpenMSIStream sends `0.0` for "unknown").
    pub file_mtime: Option<f64>,
}

impl<'a> Chunk<'a> {
    /// The mtime if the producer knew it (OpenMSIStream treats `<= 0.0` as unknown).
    pub fn known_mtime(&self) -> Option<f64> {
        self.file_mtime.filter(|m| *m > 0.0)
    }

    /// Name of the reconstructed file: stem + `filename_append` + suffix,
    /// where the suffix is the last `.ext` of the name, as Python's `Path.suffix`.
    pub fn output_filename(&self) -> String {
        with_append(self.filename, self.filename_append)
    }

    /// `subdir/filename` without the append: the key under which the consumer
    /// tracks a file, as OpenMSIStream does.
    pub fn rel_path(&self) -> String {
        join_rel(self.subdir_str, self.filename)
    }

    /// `subdir/output_filename`: the object key below the topic prefix.
    pub fn rel_output_path(&self) -> String {
        join_rel(self.subdir_str, &self.output_filename())
    }

    /// Re-checks the chunk hash; `decode` already does this, encoders use it too.
    pub fn verify_hash(&self) -> Result<()> {
        if sha512(self.data).as_slice() != self.chunk_hash.as_slice() {
            return Err(self.hash_error());
        }
        Ok(())
    }

    /// The error of a chunk whose data does not match its hash.
    pub fn hash_error(&self) -> Error {
        Error::ChunkHash {
            filename: self.filename.to_owned(),
            chunk_i: self.chunk_i,
            n_total_chunks: self.n_total_chunks,
            len: self.data.len(),
        }
    }
}

fn join_rel(subdir: &str, name: &str) -> String {
    let parts: Vec<&str> = subdir_parts(subdir).collect();
    if parts.is_empty() {
        name.to_owned()
    } else {
        format!("{}/{}", parts.join("/"), name)
    }
}

/// Components of a POSIX subdir string, skipping empty and `.` parts the way
/// `PurePosixPath(subdir).parts` does for relative paths.
pub fn subdir_parts(subdir: &str) -> impl Iterator<Item = &str> {
    subdir.split('/').filter(|p| !p.is_empty() && *p != ".")
}

/// Python's `Path(name).suffix` rule: the last dot that is not the first character.
pub fn with_append(filename: &str, append: &str) -> String {
    if append.is_empty() {
        return filename.to_owned();
    }
    match filename.rfind('.') {
        Some(dot) if dot > 0 && dot + 1 < filename.len() => {
            format!("{}{}{}", &filename[..dot], append, &filename[dot..])
        }
        _ => format!("{filename}{append}"),
    }
}

// ---------------------------------------------------------------------------
// Decoding

struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
    filename: Option<&'a str>,
}

enum Value<'a> {
    Uint(u64),
    Int(i64),
    Float(f64),
    Str(&'a [u8]),
    Bin(&'a [u8]),
    Nil,
    Other(&'static str),
}

impl<'a> Reader<'a> {
    fn err(&self, field: &'static str, detail: impl Into<String>) -> Error {
        Error::malformed(field, self.filename, detail)
    }

    fn take(&mut self, n: usize, field: &'static str) -> Result<&'a [u8]> {
        let remaining = self.buf.len() - self.pos;
        if n > remaining {
            return Err(self.err(
                field,
                format!(
                    "message is truncated: needs {n} more bytes at byte {}, only {remaining} left",
                    self.pos
                ),
            ));
        }
        let out = &self.buf[self.pos..self.pos + n];
        self.pos += n;
        Ok(out)
    }

    /// The next `N` bytes.
    fn array<const N: usize>(&mut self, field: &'static str) -> Result<[u8; N]> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.take(N, field)?);
        Ok(out)
    }

    fn be(&mut self, n: usize, field: &'static str) -> Result<u64> {
        Ok(self.take(n, field)?.iter().fold(0u64, |acc, b| (acc << 8) | u64::from(*b)))
    }

    fn value(&mut self, field: &'static str) -> Result<Value<'a>> {
        let tag = self.take(1, field)?[0];
        Ok(match tag {
            0x00..=0x7f => Value::Uint(u64::from(tag)),
            0xe0..=0xff => Value::Int(i64::from(i8::from_be_bytes([tag]))),
            0xcc => Value::Uint(self.be(1, field)?),
            0xcd => Value::Uint(self.be(2, field)?),
            0xce => Value::Uint(self.be(4, field)?),
            0xcf => Value::Uint(self.be(8, field)?),
            0xd0 => Value::Int(i64::from(i8::from_be_bytes(self.array(field)?))),
            0xd1 => Value::Int(i64::from(i16::from_be_bytes(self.array(field)?))),
            0xd2 => Value::Int(i64::from(i32::from_be_bytes(self.array(field)?))),
            0xd3 => Value::Int(i64::from_be_bytes(self.array(field)?)),
            0xca => Value::Float(f64::from(f32::from_bits(self.be(4, field)? as u32))),
            0xcb => Value::Float(f64::from_bits(self.be(8, field)?)),
            0xa0..=0xbf => Value::Str(self.take(usize::from(tag & 0x1f), field)?),
            0xd9 => {
                let n = self.be(1, field)? as usize;
                Value::Str(self.take(n, field)?)
            }
            0xda => {
                let n = self.be(2, field)? as usize;
                Value::Str(self.take(n, field)?)
            }
            0xdb => {
                let n = self.be(4, field)? as usize;
                Value::Str(self.take(n, field)?)
            }
            0xc4 => {
                let n = self.be(1, field)? as usize;
                Value::Bin(self.take(n, field)?)
            }
            0xc5 => {
                let n = self.be(2, field)? as usize;
                Value::Bin(self.take(n, field)?)
            }
            0xc6 => {
                let n = self.be(4, field)? as usize;
                Value::Bin(self.take(n, field)?)
            }
            0xc0 => Value::Nil,
            0xc2 | 0xc3 => Value::Other("a boolean"),
            0x80..=0x8f | 0xde | 0xdf => Value::Other("a map"),
            0x90..=0x9f | 0xdc | 0xdd => Value::Other("an array"),
            0xd4..=0xd8 | 0xc7..=0xc9 => Value::Other("an extension type"),
            0xc1 => Value::Other("the reserved byte 0xc1"),
        })
    }

    /// Text fields: msgpack str (what OpenMSIStream sends); bin is accepted too
    /// because its deserializer reads with `raw=True` and decodes either.
    fn text(&mut self, field: &'static str) -> Result<&'a str> {
        match self.value(field)? {
            Value::Str(b) | Value::Bin(b) => {
                std::str::from_utf8(b).map_err(|e| self.err(field, format!("is not valid UTF-8 ({e})")))
            }
            other => Err(self.err(field, format!("must be a string, got {}", describe(&other)))),
        }
    }

    fn bytes(&mut self, field: &'static str) -> Result<&'a [u8]> {
        match self.value(field)? {
            Value::Bin(b) | Value::Str(b) => Ok(b),
            other => Err(self.err(field, format!("must be binary data, got {}", describe(&other)))),
        }
    }

    fn digest(&mut self, field: &'static str) -> Result<&'a [u8; 64]> {
        let b = self.bytes(field)?;
        b.try_into()
            .map_err(|_| self.err(field, format!("must be a 64-byte SHA-512 digest, got {} bytes", b.len())))
    }

    fn uint(&mut self, field: &'static str) -> Result<u64> {
        match self.value(field)? {
            Value::Uint(v) => Ok(v),
            Value::Int(v) => {
                u64::try_from(v).map_err(|_| self.err(field, format!("must not be negative, got {v}")))
            }
            other => Err(self.err(field, format!("must be an integer, got {}", describe(&other)))),
        }
    }

    fn mtime(&mut self, field: &'static str) -> Result<f64> {
        match self.value(field)? {
            Value::Float(v) if v.is_finite() => Ok(v),
            Value::Float(v) => Err(self.err(field, format!("must be a finite number, got {v}"))),
            Value::Uint(v) => Ok(v as f64),
            Value::Int(v) => Ok(v as f64),
            Value::Nil => Ok(0.0),
            other => Err(self.err(field, format!("must be a number, got {}", describe(&other)))),
        }
    }
}

fn describe(v: &Value<'_>) -> String {
    match v {
        Value::Uint(x) => format!("the integer {x}"),
        Value::Int(x) => format!("the integer {x}"),
        Value::Float(x) => format!("the float {x}"),
        Value::Str(b) => format!("a string of {} bytes", b.len()),
        Value::Bin(b) => format!("binary data of {} bytes", b.len()),
        Value::Nil => "nil".to_owned(),
        Value::Other(what) => (*what).to_owned(),
    }
}

/// Decodes a chunk message without verifying its chunk hash.
pub fn decode_unverified(buf: &[u8]) -> Result<Chunk<'_>> {
    let mut r = Reader { buf, pos: 0, filename: None };
    let tag = r.take(1, "message")?[0];
    let n_fields = match tag {
        0x90..=0x9f => u64::from(tag & 0x0f),
        0xdc => r.be(2, "message")?,
        0xdd => r.be(4, "message")?,
        _ => return Err(r.err("message", format!("must be a msgpack array, starts with byte 0x{tag:02x}"))),
    };
    if n_fields != 9 && n_fields != 10 {
        return Err(r.err("message", format!("must be an array of 9 or 10 fields, got {n_fields}")));
    }
    let filename = r.text("filename")?;
    r.filename = Some(filename);
    let file_hash = r.digest("file_hash")?;
    let chunk_hash = r.digest("chunk_hash")?;
    let chunk_offset_write = r.uint("chunk_offset_write")?;
    let chunk_i = r.uint("chunk_i")?;
    let n_total_chunks = r.uint("n_total_chunks")?;
    let subdir_str = r.text("subdir_str")?;
    let filename_append = r.text("filename_append")?;
    let data = r.bytes("data")?;
    let file_mtime = if n_fields == 10 { Some(r.mtime("file_mtime")?) } else { None };
    if r.pos != buf.len() {
        return Err(
            r.err("message", format!("has {} unexpected bytes after the last field", buf.len() - r.pos))
        );
    }

    validate_name(&r, filename)?;
    validate_subdir(&r, subdir_str)?;
    if filename_append.contains('/') || filename_append.contains('\0') {
        return Err(r.err("filename_append", "must not contain '/' or NUL"));
    }
    if n_total_chunks == 0 || n_total_chunks > MAX_CHUNKS {
        return Err(r.err("n_total_chunks", format!("must be within 1..={MAX_CHUNKS}, got {n_total_chunks}")));
    }
    if chunk_i == 0 || chunk_i > n_total_chunks {
        return Err(
            r.err("chunk_i", format!("must be within 1..={n_total_chunks} (n_total_chunks), got {chunk_i}"))
        );
    }
    let end = chunk_offset_write.checked_add(data.len() as u64);
    if !matches!(end, Some(e) if e <= MAX_FILE_SIZE) {
        return Err(r.err(
            "chunk_offset_write",
            format!(
                "offset {chunk_offset_write} + {} data bytes reaches past the 5 TiB object limit",
                data.len()
            ),
        ));
    }
    Ok(Chunk {
        filename,
        file_hash,
        chunk_hash,
        chunk_offset_write,
        chunk_i,
        n_total_chunks,
        subdir_str,
        filename_append,
        data,
        file_mtime,
    })
}

/// Decodes a chunk message and verifies its data against its chunk hash.
pub fn decode(buf: &[u8]) -> Result<Chunk<'_>> {
    let chunk = decode_unverified(buf)?;
    chunk.verify_hash()?;
    Ok(chunk)
}

fn validate_name(r: &Reader<'_>, name: &str) -> Result<()> {
    if name.is_empty() || name == "." || name == ".." {
        return Err(r.err("filename", format!("{name:?} is not a file name")));
    }
    if name.contains('/') || name.contains('\0') {
        return Err(r.err("filename", "must be a base name without '/' or NUL"));
    }
    Ok(())
}

fn validate_subdir(r: &Reader<'_>, subdir: &str) -> Result<()> {
    // An absolute or `..` subdir would let a producer write outside the topic's
    // prefix (or outside an output directory); refuse it rather than guess.
    if subdir.starts_with('/') {
        return Err(r.err("subdir_str", format!("{subdir:?} must be a relative path")));
    }
    if subdir.contains('\0') {
        return Err(r.err("subdir_str", "must not contain NUL"));
    }
    if subdir_parts(subdir).any(|p| p == "..") {
        return Err(r.err("subdir_str", format!("{subdir:?} must not contain '..'")));
    }
    Ok(())
}

// ---------------------------------------------------------------------------
// Encoding

/// A chunk message but for its data bytes: all a producer needs to lay out the
/// message before it reads the chunk from the file straight into the data field.
#[derive(Debug, Clone, PartialEq)]
pub struct Frame<'a> {
    /// Every field but `data`, which is not used.
    fields: Chunk<'a>,
    data_len: usize,
}

impl<'a> Chunk<'a> {
    /// The chunk's message without its data.
    pub fn frame(&self) -> Frame<'a> {
        self.frame_for(self.data.len())
    }

    /// The message of this chunk's fields with `data_len` bytes of data in place
    /// of `data` (which is not used).
    pub fn frame_for(&self, data_len: usize) -> Frame<'a> {
        Frame { fields: Chunk { data: &[], ..self.clone() }, data_len }
    }
}

/// Where encoded bytes go. The lengths are computed by encoding into a
/// [`Count`], so a buffer sized from them can never disagree with the encoder.
trait Sink {
    fn put(&mut self, bytes: &[u8]);
}

impl Sink for Vec<u8> {
    fn put(&mut self, bytes: &[u8]) {
        self.extend_from_slice(bytes);
    }
}

struct Count(usize);

impl Sink for Count {
    fn put(&mut self, bytes: &[u8]) {
        self.0 = self.0.saturating_add(bytes.len());
    }
}

/// Writes into a slice front to back; `fits` turns false (and nothing more is
/// written) if the bytes do not fit, instead of panicking.
struct SliceSink<'b> {
    rest: &'b mut [u8],
    fits: bool,
}

impl Sink for SliceSink<'_> {
    fn put(&mut self, bytes: &[u8]) {
        let rest = std::mem::take(&mut self.rest);
        match rest.split_at_mut_checked(bytes.len()) {
            Some((dst, after)) if self.fits => {
                dst.copy_from_slice(bytes);
                self.rest = after;
            }
            _ => self.fits = false,
        }
    }
}

fn put_uint(out: &mut impl Sink, v: u64) {
    if v < 0x80 {
        out.put(&[v as u8]);
    } else if v <= 0xff {
        out.put(&[0xcc, v as u8]);
    } else if v <= 0xffff {
        out.put(&[0xcd]);
        out.put(&(v as u16).to_be_bytes());
    } else if v <= 0xffff_ffff {
        out.put(&[0xce]);
        out.put(&(v as u32).to_be_bytes());
    } else {
        out.put(&[0xcf]);
        out.put(&v.to_be_bytes());
    }
}

fn put_str(out: &mut impl Sink, s: &str) {
    let n = s.len();
    if n < 32 {
        out.put(&[0xa0 | n as u8]);
    } else if n <= 0xff {
        out.put(&[0xd9, n as u8]);
    } else if n <= 0xffff {
        out.put(&[0xda]);
        out.put(&(n as u16).to_be_bytes());
    } else {
        out.put(&[0xdb]);
        out.put(&(n as u32).to_be_bytes());
    }
    out.put(s.as_bytes());
}

fn put_bin_header(out: &mut impl Sink, n: usize) {
    if n <= 0xff {
        out.put(&[0xc4, n as u8]);
    } else if n <= 0xffff {
        out.put(&[0xc5]);
        out.put(&(n as u16).to_be_bytes());
    } else {
        out.put(&[0xc6]);
        out.put(&(n as u32).to_be_bytes());
    }
}

impl Frame<'_> {
    /// Every field before the data's payload, the data's bin header last.
    fn put_header(&self, out: &mut impl Sink) {
        let c = &self.fields;
        out.put(&[if c.file_mtime.is_some() { 0x9a } else { 0x99 }]);
        put_str(out, c.filename);
        put_bin_header(out, 64);
        out.put(c.file_hash);
        put_bin_header(out, 64);
        out.put(c.chunk_hash);
        put_uint(out, c.chunk_offset_write);
        put_uint(out, c.chunk_i);
        put_uint(out, c.n_total_chunks);
        put_str(out, c.subdir_str);
        put_str(out, c.filename_append);
        put_bin_header(out, self.data_len);
    }

    /// What follows the data: the mtime of the 10-field form.
    fn put_trailer(&self, out: &mut impl Sink) {
        if let Some(m) = self.fields.file_mtime {
            out.put(&[0xcb]);
            out.put(&m.to_bits().to_be_bytes());
        }
    }

    /// Bytes of the message before the data's payload.
    pub fn header_len(&self) -> usize {
        let mut n = Count(0);
        self.put_header(&mut n);
        n.0
    }

    /// Bytes of the whole message.
    pub fn encoded_len(&self) -> usize {
        let mut n = Count(self.header_len().saturating_add(self.data_len));
        self.put_trailer(&mut n);
        n.0
    }

    /// The message, its data filled in place by `fill` (given exactly
    /// `data_len` bytes, zeroed) after the header was written into the same
    /// buffer: the data is never copied from one buffer into another.
    pub fn encode_with<E>(&self, fill: impl FnOnce(&mut [u8]) -> Result<(), E>) -> Result<Vec<u8>, E> {
        let mut out = Vec::with_capacity(self.encoded_len());
        self.put_header(&mut out);
        let start = out.len();
        out.resize(start + self.data_len, 0);
        if let Some(data) = out.get_mut(start..) {
            fill(data)?;
        }
        self.put_trailer(&mut out);
        Ok(out)
    }
}

/// Exact length of `chunk`'s encoding: lets a producer size one buffer for the
/// header and the data it then reads in place ([`Frame::encode_with`]).
pub fn encoded_len(chunk: &Chunk<'_>) -> usize {
    chunk.frame().encoded_len()
}

/// Appends the canonical encoding of `chunk` to `out`.
pub fn encode_into(chunk: &Chunk<'_>, out: &mut Vec<u8>) {
    let frame = chunk.frame();
    out.reserve(frame.encoded_len());
    frame.put_header(out);
    out.put(chunk.data);
    frame.put_trailer(out);
}

pub fn encode(chunk: &Chunk<'_>) -> Vec<u8> {
    let mut out = Vec::new();
    encode_into(chunk, &mut out);
    out
}

/// Writes the canonical encoding of `chunk` into `out`, which must be exactly
/// [`encoded_len`] bytes long; `None` (with `out` partly written) if it is not.
pub fn encode_to_slice(chunk: &Chunk<'_>, out: &mut [u8]) -> Option<()> {
    let frame = chunk.frame();
    let mut sink = SliceSink { rest: out, fits: true };
    frame.put_header(&mut sink);
    sink.put(chunk.data);
    frame.put_trailer(&mut sink);
    (sink.fits && sink.rest.is_empty()).then_some(())
}

// ---------------------------------------------------------------------------
// Message keys

/// The per-chunk message key OpenMSIStream producers send:
/// `<subdir with / as _>_<filename>_chunk_<i>_of_<n>` (note the leading `_` at top level).
pub fn message_key(subdir: &str, filename: &str, chunk_i: u64, n_total: u64) -> String {
    format!("{}_chunk_{chunk_i}_of_{n_total}", key_prefix(subdir, filename))
}

/// The part of the key shared by all chunks of a file, `<subdir_>_<filename>`.
pub fn key_prefix(subdir: &str, filename: &str) -> String {
    format!("{}_{filename}", subdir.replace('/', "_"))
}

/// Splits a key into (prefix, chunk_i, n_total); `None` if it is not a chunk key.
pub fn parse_message_key(key: &str) -> Option<(&str, u64, u64)> {
    let (head, n) = key.rsplit_once("_of_")?;
    let (prefix, i) = head.rsplit_once("_chunk_")?;
    let (i, n) = (decimal(i)?, decimal(n)?);
    (1..=n).contains(&i).then_some((prefix, i, n))
}

/// Plain ASCII digits only: `str::parse` would also take a leading `+`.
fn decimal(s: &str) -> Option<u64> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample<'a>(data: &'a [u8], fh: &'a [u8; 64], ch: &'a [u8; 64]) -> Chunk<'a> {
        Chunk {
            filename: "x.dat",
            file_hash: fh,
            chunk_hash: ch,
            chunk_offset_write: 16384,
            chunk_i: 2,
            n_total_chunks: 381,
            subdir_str: "a/b",
            filename_append: "",
            data,
            file_mtime: Some(1_700_000_000.0),
        }
    }

    fn digest(data: &[u8]) -> [u8; 64] {
        sha512(data)
    }

    #[test]
    fn round_trip_10_and_9_fields() {
        let data = b"hello world";
        let fh = [7u8; 64];
        let ch = digest(data);
        let mut c = sample(data, &fh, &ch);
        let bytes = encode(&c);
        assert_eq!(bytes[0], 0x9a);
        assert_eq!(decode(&bytes).unwrap(), c);
        c.file_mtime = None;
        let bytes = encode(&c);
        assert_eq!(bytes[0], 0x99);
        assert_eq!(decode(&bytes).unwrap(), c);
    }

    #[test]
    fn matches_documented_prefix() {
        // The start of OpenMSIStream's golden chunk 1 as documented in the compat notes.
        let name = "1a0ceb89-b5f0-45dc-9c12-63d3020e2217.dat"; // 40 bytes
        let data = vec![0u8; 16384];
        let fh = [1u8; 64];
        let ch = digest(&data);
        let c = Chunk {
            filename: name,
            file_hash: &fh,
            chunk_hash: &ch,
            chunk_offset_write: 0,
            chunk_i: 1,
            n_total_chunks: 381,
            subdir_str: "test_file_sub_dir",
            filename_append: "",
            data: &data,
            file_mtime: Some(1_700_000_000.0),
        };
        let b = encode(&c);
        assert_eq!(&b[..3], &[0x9a, 0xd9, 0x28]);
        let after_hashes = 3 + 40 + 2 * 66;
        assert_eq!(&b[after_hashes..after_hashes + 6], &[0x00, 0x01, 0xcd, 0x01, 0x7d, 0xb1]);
        assert_eq!(&b[b.len() - 9..], &[0xcb, 0x41, 0xd9, 0x54, 0xfc, 0x40, 0, 0, 0]);
        assert_eq!(b.len(), 16595);
    }

    #[test]
    fn in_place_and_slice_encodings_are_the_canonical_bytes() {
        let fh = [3u8; 64];
        // Around every boundary where an integer, string or bin header grows.
        for len in [0usize, 1, 255, 256, 65_535, 65_536, 70_000] {
            let data: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
            let ch = digest(&data);
            for mtime in [None, Some(1_700_000_000.5)] {
                for name in ["x", &"n".repeat(31), &"n".repeat(32), &"n".repeat(256)] {
                    let c = Chunk { filename: name, file_mtime: mtime, ..sample(&data, &fh, &ch) };
                    let canonical = encode(&c);
                    assert_eq!(encoded_len(&c), canonical.len());
                    let frame = c.frame();
                    assert_eq!(&canonical[frame.header_len()..][..len], &data[..]);
                    let in_place = frame
                        .encode_with(|buf: &mut [u8]| {
                            assert_eq!(buf.len(), len);
                            buf.copy_from_slice(&data);
                            Ok::<(), ()>(())
                        })
                        .unwrap();
                    assert_eq!(in_place, canonical);
                    let mut out = vec![0u8; canonical.len()];
                    assert_eq!(encode_to_slice(&c, &mut out), Some(()));
                    assert_eq!(out, canonical);
                }
            }
        }
    }

    #[test]
    fn a_slice_of_the_wrong_size_is_refused_without_panicking() {
        let fh = [3u8; 64];
        let data = [9u8; 300];
        let ch = digest(&data);
        let c = sample(&data, &fh, &ch);
        let n = encoded_len(&c);
        for len in [0, 1, n - 1, n + 1] {
            assert_eq!(encode_to_slice(&c, &mut vec![0u8; len]), None, "{len}");
        }
        assert_eq!(c.frame().encode_with(|_| Err("no")), Err("no"));
    }

    #[test]
    fn chunk_hash_is_checked() {
        let data = b"abc";
        let fh = [0u8; 64];
        let ch = [0u8; 64];
        let bytes = encode(&sample(data, &fh, &ch));
        let e = decode(&bytes).unwrap_err();
        assert!(
            matches!(&e, Error::ChunkHash { filename, chunk_i: 2, n_total_chunks: 381, len: 3 } if filename == "x.dat"),
            "{e:?}"
        );
        assert!(decode_unverified(&bytes).is_ok());
    }

    #[test]
    fn output_names() {
        assert_eq!(with_append("x.dat", "_2"), "x_2.dat");
        assert_eq!(with_append("a.tar.gz", "_2"), "a.tar_2.gz");
        assert_eq!(with_append(".bashrc", "_2"), ".bashrc_2");
        assert_eq!(with_append("noext", "_2"), "noext_2");
        assert_eq!(with_append("trailing.", "_2"), "trailing._2");
        assert_eq!(join_rel("", "x"), "x");
        assert_eq!(join_rel("a//b/./", "x"), "a/b/x");
    }

    #[test]
    fn keys() {
        assert_eq!(message_key("", "x.dat", 1, 1), "_x.dat_chunk_1_of_1");
        assert_eq!(message_key("a/b", "x.dat", 3, 5), "a_b_x.dat_chunk_3_of_5");
        assert_eq!(parse_message_key("a_b_x.dat_chunk_3_of_5"), Some(("a_b_x.dat", 3, 5)));
        assert_eq!(parse_message_key("x_chunk_0_of_5"), None);
        assert_eq!(parse_message_key("x_chunk_6_of_5"), None);
        assert_eq!(parse_message_key("x_chunk_1_of_+5"), None);
        assert_eq!(parse_message_key("nonsense"), None);
    }
}
