//! The `s3transfer_stream._core` extension: a thin layer over the plain Rust
//! modules. Byte-heavy calls run with the GIL released; buffers go to Python
//! through the buffer protocol, never as copies.

// pyo3 extracts a Python list argument into an owned `Vec`, never a slice.
#![allow(clippy::needless_pass_by_value)]

use std::ffi::c_int;
use std::fs::File;
use std::path::PathBuf;
use std::sync::{Arc, PoisonError, RwLock};

use crate::checksum::Sha512 as Sha512State;
use pyo3::exceptions::{PyBufferError, PyOSError, PySystemError, PyValueError};
use pyo3::ffi;
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyBytes, PyDict, PyTuple, PyType};

use crate::assembler::{self, Assembler as RustAssembler, Disposition, Event as RustEvent, Position};
use crate::checksum;
use crate::chunker::{Check, FilePlan, Names};
use crate::error::Error;
use crate::libcrypto;
use crate::wire::{self, Chunk};

/// The classes of `s3transfer_stream.errors` the extension raises, imported
/// on first use (a failed import is raised in place of the error).
#[derive(Clone, Copy)]
enum Class {
    Config,
    Chunk,
    ChunkHash,
    FileAssembly,
    FileChanged,
}

impl Class {
    fn get(self, py: Python<'_>) -> PyResult<&Bound<'_, PyType>> {
        static CLASSES: [PyOnceLock<Py<PyType>>; 5] = [const { PyOnceLock::new() }; 5];
        let name = match self {
            Self::Config => "ConfigError",
            Self::Chunk => "ChunkError",
            Self::ChunkHash => "ChunkHashError",
            Self::FileAssembly => "FileAssemblyError",
            Self::FileChanged => "FileChangedError",
        };
        CLASSES[self as usize].import(py, "s3transfer_stream.errors", name)
    }

    /// `cls(message, **attributes)`; if that fails, the failure.
    fn new_err(
        self,
        py: Python<'_>,
        message: String,
        attributes: impl FnOnce(&Bound<'_, PyDict>) -> PyResult<()>,
    ) -> PyErr {
        let build = || -> PyResult<PyErr> {
            let kwargs = PyDict::new(py);
            attributes(&kwargs)?;
            Ok(PyErr::from_value(self.get(py)?.call((message,), Some(&kwargs))?))
        };
        build().unwrap_or_else(|failure| failure)
    }
}

/// What the error itself does not know: where its message was read, and the
/// name of the file it is about.
#[derive(Clone, Copy, Default)]
struct Context<'a> {
    position: Option<Position>,
    filename: Option<&'a str>,
}

/// The one mapping from the crate's errors to Python exceptions. Chunk,
/// file and setting errors become classes of `s3transfer_stream.errors` that
/// carry `field`, `filename`, `partition` and `offset` (the message's) where
/// known; an unreadable file is an `OSError` (with its errno subclass), and
/// a chunk index out of range, a caller's mistake, a `ValueError`.
fn to_pyerr(py: Python<'_>, e: &Error, ctx: Context<'_>) -> PyErr {
    let message = e.to_string();
    let filename = ctx.filename.or(match e {
        Error::Malformed { filename, .. } => filename.as_deref(),
        Error::ChunkHash { filename, .. } => Some(filename),
        _ => None,
    });
    let located = |kw: &Bound<'_, PyDict>| -> PyResult<()> {
        kw.set_item("field", e.field())?;
        kw.set_item("filename", filename)?;
        kw.set_item("partition", ctx.position.map(|p| p.partition))?;
        kw.set_item("offset", ctx.position.map(|p| p.offset))
    };
    match e {
        Error::Malformed { .. } | Error::DigestLength { .. } => Class::Chunk.new_err(py, message, located),
        Error::ChunkHash { .. } => Class::ChunkHash.new_err(py, message, located),
        Error::ChunkCount { .. }
        | Error::OutputName { .. }
        | Error::ShortLastChunk { .. }
        | Error::PastEnd { .. }
        | Error::Overlap { .. }
        | Error::TooManyParts { .. }
        | Error::Incomplete { .. }
        | Error::FileHash { .. }
        | Error::CorruptChunk { .. } => Class::FileAssembly.new_err(py, message, |kw| {
            located(kw)?;
            kw.set_item("chunk_i", e.chunk_i())
        }),
        Error::PartSizeTooSmall { .. } | Error::MemoryLimitTooSmall { .. } | Error::ChunkSizeZero => {
            Class::Config.new_err(py, message, |kw| kw.set_item("field", e.field()))
        }
        // OSError(errno, strerror, filename) becomes FileNotFoundError etc. in Python.
        Error::Io { path, source } => match source.raw_os_error() {
            Some(errno) => PyOSError::new_err((errno, source.to_string(), path.display().to_string())),
            None => PyOSError::new_err(message),
        },
        Error::Changed { path, chunk_i } => Class::FileChanged.new_err(py, message, |kw| {
            kw.set_item("filename", path.display().to_string())?;
            kw.set_item("chunk_i", chunk_i)
        }),
        Error::BadChunkIndex { .. } => PyValueError::new_err(message),
    }
}

impl From<Error> for PyErr {
    fn from(e: Error) -> Self {
        Python::attach(|py| to_pyerr(py, &e, Context::default()))
    }
}

fn digest64<'a>(field: &'static str, b: &'a [u8]) -> Result<&'a [u8; 64], Error> {
    b.try_into().map_err(|_| Error::DigestLength { field, len: b.len() })
}

/// Read-only bytes owned by Rust, shared with Python without copying
/// (`memoryview(buf)`, `bytes(buf)`, or any API that takes a bytes-like object).
#[pyclass(frozen, module = "s3transfer_stream._core")]
pub struct Buffer {
    data: assembler::Buffer,
}

#[pymethods]
impl Buffer {
    fn __len__(&self) -> usize {
        self.data.len()
    }

    fn __repr__(&self) -> String {
        format!("<Buffer of {} bytes>", self.data.len())
    }

    unsafe fn __getbuffer__(slf: Bound<'_, Self>, view: *mut ffi::Py_buffer, flags: c_int) -> PyResult<()> {
        if view.is_null() {
            return Err(PyBufferError::new_err("buffer view is null"));
        }
        if (flags & ffi::PyBUF_WRITABLE) == ffi::PyBUF_WRITABLE {
            return Err(PyBufferError::new_err("s3transfer_stream buffers are read-only"));
        }
        let data: &[u8] = &slf.get().data;
        // A Vec never holds more than isize::MAX bytes.
        let len = isize::try_from(data.len()).map_err(|_| PyBufferError::new_err("buffer too large"))?;
        // SAFETY: `view` is a valid Py_buffer supplied by CPython. The bytes live
        // in an Arc owned by `slf`, which the view keeps alive through `obj`,
        // and they are never mutated after the Buffer is created.
        unsafe {
            (*view).buf = data.as_ptr() as *mut std::ffi::c_void;
            (*view).len = len;
            (*view).readonly = 1;
            (*view).itemsize = 1;
            (*view).format = if (flags & ffi::PyBUF_FORMAT) == ffi::PyBUF_FORMAT {
                c"B".as_ptr() as *mut _
            } else {
                std::ptr::null_mut()
            };
            (*view).ndim = 1;
            (*view).shape = if (flags & ffi::PyBUF_ND) == ffi::PyBUF_ND {
                &mut (*view).len
            } else {
                std::ptr::null_mut()
            };
            (*view).strides = if (flags & ffi::PyBUF_STRIDES) == ffi::PyBUF_STRIDES {
                &mut (*view).itemsize
            } else {
                std::ptr::null_mut()
            };
            (*view).suboffsets = std::ptr::null_mut();
            (*view).internal = std::ptr::null_mut();
            (*view).obj = slf.into_any().into_ptr();
        }
        Ok(())
    }
}

fn buffer(py: Python<'_>, data: assembler::Buffer) -> PyResult<Py<Buffer>> {
    Py::new(py, Buffer { data })
}

/// One decoded chunk message (a copy of its fields, for tests and tools; the
/// consumer's hot path never builds these).
#[pyclass(frozen, get_all, module = "s3transfer_stream._core")]
pub struct DecodedChunk {
    filename: String,
    file_hash: Py<PyBytes>,
    chunk_hash: Py<PyBytes>,
    chunk_offset_write: u64,
    chunk_i: u64,
    n_total_chunks: u64,
    subdir_str: String,
    filename_append: String,
    data: Py<PyBytes>,
    file_mtime: Option<f64>,
    n_fields: u8,
    rel_path: String,
    rel_output_path: String,
}

#[pyfunction]
#[pyo3(signature = (value, *, verify = true))]
fn decode_chunk(py: Python<'_>, value: &[u8], verify: bool) -> PyResult<DecodedChunk> {
    let decoded = py.detach(|| if verify { wire::decode(value) } else { wire::decode_unverified(value) });
    let c = decoded?;
    Ok(DecodedChunk {
        filename: c.filename.to_owned(),
        file_hash: PyBytes::new(py, c.file_hash).unbind(),
        chunk_hash: PyBytes::new(py, c.chunk_hash).unbind(),
        chunk_offset_write: c.chunk_offset_write,
        chunk_i: c.chunk_i,
        n_total_chunks: c.n_total_chunks,
        subdir_str: c.subdir_str.to_owned(),
        filename_append: c.filename_append.to_owned(),
        data: PyBytes::new(py, c.data).unbind(),
        file_mtime: c.file_mtime,
        n_fields: if c.file_mtime.is_some() { 10 } else { 9 },
        rel_path: c.rel_path(),
        rel_output_path: c.rel_output_path(),
    })
}

#[pyfunction]
#[pyo3(signature = (filename, file_hash, chunk_hash, chunk_offset_write, chunk_i, n_total_chunks,
                    subdir_str, filename_append, data, file_mtime = None))]
#[allow(clippy::too_many_arguments)]
fn encode_chunk<'py>(
    py: Python<'py>,
    filename: &str,
    file_hash: &[u8],
    chunk_hash: &[u8],
    chunk_offset_write: u64,
    chunk_i: u64,
    n_total_chunks: u64,
    subdir_str: &str,
    filename_append: &str,
    data: &[u8],
    file_mtime: Option<f64>,
) -> PyResult<Bound<'py, PyBytes>> {
    let chunk = Chunk {
        filename,
        file_hash: digest64("file_hash", file_hash)?,
        chunk_hash: digest64("chunk_hash", chunk_hash)?,
        chunk_offset_write,
        chunk_i,
        n_total_chunks,
        subdir_str,
        filename_append,
        data,
        file_mtime,
    };
    // Encoded straight into the bytes object: it is not shared with anything
    // before it is returned, so writing it with the GIL released is sound.
    PyBytes::new_with(py, wire::encoded_len(&chunk), |out| {
        py.detach(|| wire::encode_to_slice(&chunk, out))
            .ok_or_else(|| PySystemError::new_err("encode_chunk: the message length was computed wrongly"))
    })
}

#[pyfunction]
fn message_key(subdir_str: &str, filename: &str, chunk_i: u64, n_total_chunks: u64) -> String {
    wire::message_key(subdir_str, filename, chunk_i, n_total_chunks)
}

#[pyfunction]
fn key_prefix(subdir_str: &str, filename: &str) -> String {
    wire::key_prefix(subdir_str, filename)
}

#[pyfunction]
fn parse_message_key(key: &str) -> Option<(String, u64, u64)> {
    wire::parse_message_key(key).map(|(p, i, n)| (p.to_owned(), i, n))
}

#[pyfunction]
fn sha512<'py>(py: Python<'py>, data: &[u8]) -> Bound<'py, PyBytes> {
    let d = py.detach(|| checksum::sha512(data));
    PyBytes::new(py, &d)
}

#[pyfunction]
fn sha512_backend() -> String {
    checksum::sha512_backend()
}

#[pyfunction]
fn sha512_lanes() -> usize {
    crate::sha512x8::lanes()
}

/// Hashes with the OpenSSL that `hashlib` loaded, unless `S3TS_SHA512=ring`
/// (for A/B measurements) or it cannot be found or fails its self-test.
fn use_the_interpreters_libcrypto(py: Python<'_>) {
    match std::env::var("S3TS_SHA512").as_deref() {
        Ok("ring") => return libcrypto::refuse("S3TS_SHA512=ring".to_owned()),
        Ok("") | Ok("openssl") | Err(_) => {}
        Ok(other) => {
            return libcrypto::refuse(format!("S3TS_SHA512={other:?} is neither \"ring\" nor \"openssl\""))
        }
    }
    if let Err(e) = py.import("_hashlib") {
        return libcrypto::refuse(format!("this Python has no OpenSSL hashlib: {e}"));
    }
    let Some(path) = libcrypto::mapped_path() else {
        return libcrypto::refuse("no libcrypto mapped into the process".to_owned());
    };
    match libcrypto::LibCrypto::open(path.as_os_str()) {
        Ok(lib) => {
            libcrypto::activate(lib);
        }
        Err(why) => libcrypto::refuse(why),
    }
}

#[pyfunction]
fn crc64nvme(py: Python<'_>, data: &[u8]) -> u64 {
    py.detach(|| checksum::crc64nvme(data))
}

/// Incremental SHA-512, for re-reading an object in pieces.
#[pyclass(module = "s3transfer_stream._core")]
pub struct Sha512 {
    state: Sha512State,
}

#[pymethods]
impl Sha512 {
    #[new]
    fn new() -> Self {
        Self { state: Sha512State::new() }
    }

    fn update(&mut self, py: Python<'_>, data: &[u8]) {
        let state = &mut self.state;
        py.detach(|| state.update(data));
    }

    fn digest<'py>(&self, py: Python<'py>) -> Bound<'py, PyBytes> {
        PyBytes::new(py, &self.state.peek())
    }
}

#[pyclass(frozen, get_all, module = "s3transfer_stream._core")]
pub struct FileInfo {
    instance: u64,
    rel_path: String,
    rel_output_path: String,
    filename: String,
    n_chunks: u64,
    file_hash: Py<PyBytes>,
    file_mtime: Option<f64>,
    /// Same hash and chunk count as a file already reassembled earlier in the
    /// log (produced again, or stray duplicate chunks); it pins no offsets.
    echo: bool,
    /// Where its first chunk was read.
    first_partition: i32,
    first_offset: i64,
}

#[pymethods]
impl FileInfo {
    fn __repr__(&self) -> String {
        format!("<FileInfo #{} {:?} ({} chunks)>", self.instance, self.rel_output_path, self.n_chunks)
    }
}

fn file_info(py: Python<'_>, f: &assembler::FileInfo) -> PyResult<Py<FileInfo>> {
    Py::new(
        py,
        FileInfo {
            instance: f.instance,
            rel_path: f.rel_path.clone(),
            rel_output_path: f.rel_output_path.clone(),
            filename: f.filename.clone(),
            n_chunks: f.n_chunks,
            file_hash: PyBytes::new(py, &f.file_hash).unbind(),
            file_mtime: f.mtime,
            echo: f.echo,
            first_partition: f.first.partition,
            first_offset: f.first.offset,
        },
    )
}

/// Something the assembler wants the pipeline to act on. `kind` is one of
/// `started`, `part`, `complete`, `failed`, `superseded`, `rejected`.
fn pins_of(offsets: &assembler::OffsetRuns) -> Vec<(i32, i64)> {
    offsets.iter().filter_map(|(p, runs)| runs.iter().map(|r| r.0).min().map(|m| (*p, m))).collect()
}

/// First chunk of a new file instance.
#[pyclass(frozen, get_all, module = "s3transfer_stream._core")]
pub struct FileStarted {
    file: Py<FileInfo>,
}

/// A complete part of a file that needs a multipart upload.
#[pyclass(frozen, get_all, module = "s3transfer_stream._core")]
pub struct PartReady {
    file: Py<FileInfo>,
    part_number: u32,
    data: Py<Buffer>,
    size: u64,
    crc64nvme: u64,
}

/// Every chunk arrived and the file hash matched; owned until settled.
#[pyclass(frozen, get_all, module = "s3transfer_stream._core")]
pub struct FileComplete {
    file: Py<FileInfo>,
    data: Option<Py<Buffer>>,
    size: u64,
    crc64nvme: u64,
    parts: u32,
    offsets: Vec<(i32, Vec<(i64, i64)>)>,
    pins: Vec<(i32, i64)>,
}

/// The file cannot be completed from these chunks; owned until its failure is recorded and it is settled.
#[pyclass(frozen, get_all, module = "s3transfer_stream._core")]
pub struct FileFailed {
    file: Py<FileInfo>,
    reason: String,
    hash_mismatch: bool,
    /// A `FileAssemblyError` about the message at which the file failed.
    error: PyErr,
    offsets: Vec<(i32, Vec<(i64, i64)>)>,
    pins: Vec<(i32, i64)>,
}

/// A newer generation of the path completed; this unfinished one is not needed.
#[pyclass(frozen, get_all, module = "s3transfer_stream._core")]
pub struct FileSuperseded {
    file: Py<FileInfo>,
    by: Py<FileInfo>,
}

/// The message is not a usable chunk; no file state was touched.
#[pyclass(frozen, get_all, module = "s3transfer_stream._core")]
pub struct MessageRejected {
    partition: i32,
    offset: i64,
    reason: String,
    error: PyErr,
}

macro_rules! event_kind {
    ($cls:ident, $kind:literal) => {
        #[pymethods]
        impl $cls {
            #[getter]
            fn kind(&self) -> &'static str {
                $kind
            }

            fn __repr__(&self, py: Python<'_>) -> String {
                format!("<{} {}>", stringify!($cls), self.describe(py))
            }
        }
    };
}

trait Describe {
    fn describe(&self, py: Python<'_>) -> String;
}

macro_rules! describe_file {
    ($($cls:ident),*) => {$(
        impl Describe for $cls {
            fn describe(&self, py: Python<'_>) -> String {
                format!("{:?}", self.file.bind(py).get().rel_output_path)
            }
        }
    )*};
}
describe_file!(FileStarted, PartReady, FileComplete, FileFailed, FileSuperseded);

impl Describe for MessageRejected {
    fn describe(&self, _py: Python<'_>) -> String {
        format!("[{}]@{}", self.partition, self.offset)
    }
}

event_kind!(FileStarted, "started");
event_kind!(PartReady, "part");
event_kind!(FileComplete, "complete");
event_kind!(FileFailed, "failed");
event_kind!(FileSuperseded, "superseded");

#[pymethods]
impl MessageRejected {
    #[getter]
    fn kind(&self) -> &'static str {
        "rejected"
    }

    /// Always `None`: a rejected message belongs to no file instance.
    #[getter]
    fn file(&self) -> Option<Py<FileInfo>> {
        None
    }

    fn __repr__(&self, py: Python<'_>) -> String {
        format!("<MessageRejected {}>", self.describe(py))
    }
}

fn event_object(py: Python<'_>, e: RustEvent) -> PyResult<Py<PyAny>> {
    Ok(match e {
        RustEvent::Started(f) => Py::new(py, FileStarted { file: file_info(py, &f)? })?.into_any(),
        RustEvent::Superseded { file, by } => {
            Py::new(py, FileSuperseded { file: file_info(py, &file)?, by: file_info(py, &by)? })?.into_any()
        }
        RustEvent::Part { file, number, data, crc64nvme } => Py::new(
            py,
            PartReady {
                file: file_info(py, &file)?,
                part_number: number,
                size: data.len() as u64,
                data: buffer(py, data)?,
                crc64nvme,
            },
        )?
        .into_any(),
        RustEvent::Complete { file, size, single, crc64nvme, parts, offsets } => Py::new(
            py,
            FileComplete {
                file: file_info(py, &file)?,
                data: single.map(|b| buffer(py, b)).transpose()?,
                size,
                crc64nvme,
                parts,
                pins: pins_of(&offsets),
                offsets,
            },
        )?
        .into_any(),
        RustEvent::Failed { file, error, position, offsets } => Py::new(
            py,
            FileFailed {
                file: file_info(py, &file)?,
                reason: error.to_string(),
                hash_mismatch: matches!(error, Error::FileHash { .. }),
                error: to_pyerr(
                    py,
                    &error,
                    Context { position: Some(position), filename: Some(&file.filename) },
                ),
                pins: pins_of(&offsets),
                offsets,
            },
        )?
        .into_any(),
        RustEvent::Rejected { position, error } => Py::new(
            py,
            MessageRejected {
                partition: position.partition,
                offset: position.offset,
                reason: error.to_string(),
                error: to_pyerr(py, &error, Context { position: Some(position), filename: None }),
            },
        )?
        .into_any(),
    })
}

/// A file instance not yet settled, as `check` and the stall monitor see it.
#[pyclass(frozen, get_all, module = "s3transfer_stream._core")]
pub struct Progress {
    file: Py<FileInfo>,
    chunks: u64,
    buffered: u64,
    partitions: Vec<i32>,
    max_offsets: Vec<(i32, i64)>,
    idle_seconds: f64,
    state: &'static str,
}

type InProgress = (Py<FileInfo>, u64, u64, Vec<i32>);
type Batch = (Vec<Py<PyAny>>, usize, Vec<(i32, i64)>);
type Commit = (i32, i64, Vec<(i64, i64)>);
type Abandoned = (Py<FileInfo>, Vec<(i32, Vec<(i64, i64)>)>);

#[pyclass(frozen, module = "s3transfer_stream._core")]
pub struct Assembler {
    inner: RustAssembler,
}

impl Assembler {
    fn feed_inner(&self, py: Python<'_>, messages: Vec<Bound<'_, PyAny>>, reader: u32) -> PyResult<Batch> {
        let mut owned: Vec<(Position, Option<Bound<'_, PyBytes>>)> = Vec::with_capacity(messages.len());
        for m in &messages {
            let (partition, offset, value): (i32, i64, Bound<'_, PyAny>) = if let Ok(t) = m.cast::<PyTuple>()
            {
                t.extract()?
            } else {
                (
                    m.call_method0("partition")?.extract()?,
                    m.call_method0("offset")?.extract()?,
                    m.call_method0("value")?,
                )
            };
            let value = if value.is_none() { None } else { Some(value.cast_into::<PyBytes>()?) };
            owned.push((Position { partition, offset }, value));
        }
        let borrowed: Vec<(Position, Option<&[u8]>)> =
            owned.iter().map(|(p, v)| (*p, v.as_ref().map(PyBytesMethods::as_bytes))).collect();
        let inner = &self.inner;
        let (events, dispositions, deferred) = py.detach(|| {
            let mut events = Vec::new();
            let (d, deferred) = inner.add_batch(&borrowed, reader, &mut events);
            (events, d, deferred)
        });
        let stored = dispositions
            .iter()
            .filter(|d| !matches!(d, Disposition::Rejected | Disposition::Deferred | Disposition::NotOurs))
            .count();
        let events = events.into_iter().map(|e| event_object(py, e)).collect::<PyResult<_>>()?;
        Ok((events, stored, deferred))
    }
}

#[pymethods]
impl Assembler {
    #[new]
    #[pyo3(signature = (part_size = 8 << 20, max_buffered = 1 << 30))]
    fn new(part_size: u64, max_buffered: u64) -> PyResult<Self> {
        Ok(Self { inner: RustAssembler::new(part_size, max_buffered)? })
    }

    #[getter]
    fn buffered_bytes(&self) -> u64 {
        self.inner.budget().used()
    }

    #[getter]
    fn buffer_limit(&self) -> u64 {
        self.inner.budget().limit()
    }

    #[staticmethod]
    #[pyo3(signature = (part_size, max_buffered = None))]
    fn _with_tiny_parts(part_size: u64, max_buffered: Option<u64>) -> Self {
        match max_buffered {
            Some(limit) => Self { inner: RustAssembler::with_limits(part_size, limit) },
            None => Self { inner: RustAssembler::with_any_part_size(part_size) },
        }
    }

    #[getter]
    fn part_size(&self) -> u64 {
        self.inner.part_size()
    }

    /// Feeds a batch of messages: confluent-kafka `Message` objects or
    /// `(partition, offset, value)` tuples. Returns `(events, n_stored)`, where
    /// `n_stored` counts messages that were usable chunks (new or duplicate).
    #[pyo3(signature = (messages, reader = 0))]
    fn add_messages(
        &self,
        py: Python<'_>,
        messages: Vec<Bound<'_, PyAny>>,
        reader: u32,
    ) -> PyResult<(Vec<Py<PyAny>>, usize)> {
        let (events, stored, _) = self.feed_inner(py, messages, reader)?;
        Ok((events, stored))
    }

    /// Like `add_messages`, and also returns the `(partition, offset)` of each
    /// partition whose messages were deferred for lack of memory (read them again from there).
    /// `reader` is the consumer thread that read them: messages of a partition
    /// another thread reads now change nothing.
    #[pyo3(signature = (messages, reader = 0))]
    fn feed(&self, py: Python<'_>, messages: Vec<Bound<'_, PyAny>>, reader: u32) -> PyResult<Batch> {
        self.feed_inner(py, messages, reader)
    }

    /// The instance is durably done or durably given up: its offsets may be committed past.
    fn settle(&self, instance: u64) -> bool {
        self.inner.settle(instance)
    }

    /// Gives up a file still being received; it stays owned until settled.
    fn abandon(&self, py: Python<'_>, instance: u64) -> PyResult<Option<Abandoned>> {
        self.inner.abandon(instance).map(|(f, runs)| Ok((file_info(py, &f)?, runs))).transpose()
    }

    /// The partition was assigned to consumer thread `reader` with this
    /// committed offset (-1 for none) and these done runs above it; returns the
    /// offset to start reading from.
    #[pyo3(signature = (partition, committed, done_above, reader = 0))]
    fn assigned(&self, partition: i32, committed: i64, done_above: Vec<(i64, i64)>, reader: u32) -> i64 {
        self.inner.assigned(partition, reader, committed, &done_above)
    }

    /// If the read position of `partition` starts a done run, where to seek instead.
    #[pyo3(signature = (partition, reader = 0))]
    fn skip_ahead(&self, partition: i32, reader: u32) -> Option<i64> {
        self.inner.skip_ahead(partition, reader)
    }

    /// A commit of `offset` to `partition` succeeded: never commit below it again.
    fn committed(&self, partition: i32, offset: i64) {
        self.inner.committed(partition, offset);
    }

    /// The partitions left consumer thread `reader` (those another thread was
    /// assigned meanwhile stay its); returns files dropped with them.
    #[pyo3(signature = (partitions, reader = 0))]
    fn revoked(&self, py: Python<'_>, partitions: Vec<i32>, reader: u32) -> PyResult<Vec<Py<FileInfo>>> {
        self.inner.revoked(&partitions, reader).iter().map(|f| file_info(py, f)).collect()
    }

    /// `[(partition, offset to commit, done runs above it)]` for the partitions
    /// `reader` has read so far.
    #[pyo3(signature = (partitions, reader = 0))]
    fn commit_positions(&self, partitions: Vec<i32>, reader: u32) -> Vec<Commit> {
        self.inner
            .commit_positions(&partitions, reader)
            .into_iter()
            .map(|c| (c.partition, c.offset, c.done_above))
            .collect()
    }

    /// Marks half-open offset ranges of `partition` as already accounted for:
    /// messages there are skipped without being decoded.
    fn skip_offsets(&self, partition: i32, ranges: Vec<(i64, i64)>) {
        self.inner.skip_offsets(partition, &ranges);
    }

    /// Where the skipped range holding `offset` ends, if `offset` is in one.
    fn skip_end(&self, partition: i32, offset: i64) -> Option<i64> {
        self.inner.skip_end(partition, offset)
    }

    /// Per partition, the lowest offset still needed by a file not yet settled.
    fn pinned_offsets<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let d = PyDict::new(py);
        for (p, o) in self.inner.pinned_offsets() {
            d.set_item(p, o)?;
        }
        Ok(d)
    }

    /// `(file, chunks received, bytes buffered, partitions)` for every file being received.
    fn in_progress(&self, py: Python<'_>) -> PyResult<Vec<InProgress>> {
        self.inner
            .in_progress()
            .into_iter()
            .filter(|p| p.state == "receiving")
            .map(|p| Ok((file_info(py, &p.info)?, p.chunks, p.buffered, p.partitions)))
            .collect()
    }

    /// Every instance not yet settled: being received, uploaded or recorded.
    fn progress(&self, py: Python<'_>) -> PyResult<Vec<Progress>> {
        self.inner
            .in_progress()
            .into_iter()
            .map(|p| {
                Ok(Progress {
                    file: file_info(py, &p.info)?,
                    chunks: p.chunks,
                    buffered: p.buffered,
                    partitions: p.partitions,
                    max_offsets: p.max_offsets,
                    idle_seconds: p.idle_seconds,
                    state: p.state,
                })
            })
            .collect()
    }
}

/// Cuts one file into chunk messages. The constructor reads and hashes the
/// whole file (GIL released); `messages` re-reads chunks on demand.
#[pyclass(frozen, module = "s3transfer_stream._core")]
pub struct FileChunker {
    plan: FilePlan,
    /// The file the plan hashed, until `close`. Shared by `messages` calls on
    /// several threads (positioned reads need no exclusive access).
    file: RwLock<Option<File>>,
}

#[pymethods]
impl FileChunker {
    #[new]
    #[pyo3(signature = (path, chunk_size = 524_288))]
    fn new(py: Python<'_>, path: PathBuf, chunk_size: u64) -> PyResult<Self> {
        let chunker = py.detach(|| -> Result<Self, Error> {
            // The plan first: a chunk size of 0 is refused before the file is opened.
            let plan = FilePlan::new(&path, chunk_size)?;
            let file = File::open(&path).map_err(|source| Error::io(&path, source))?;
            Ok(Self { plan, file: RwLock::new(Some(file)) })
        })?;
        Ok(chunker)
    }

    #[getter]
    fn size(&self) -> u64 {
        self.plan.size
    }

    #[getter]
    fn n_chunks(&self) -> u64 {
        self.plan.n_chunks()
    }

    #[getter]
    fn chunk_size(&self) -> u64 {
        self.plan.chunk_size
    }

    #[getter]
    fn file_mtime(&self) -> f64 {
        self.plan.mtime
    }

    #[getter]
    fn file_hash<'py>(&self, py: Python<'py>) -> Bound<'py, PyBytes> {
        PyBytes::new(py, &self.plan.file_hash)
    }

    /// Encoded messages for chunks `first..first+count` (1-based, clipped to the file).
    ///
    /// Each chunk is read straight into its message behind the header and
    /// checked there, with the GIL released, and handed over as a `Buffer` of
    /// that same allocation. Not `PyBytes::new_with`: that allocates and
    /// zeroes the message under the GIL (a chunk's worth of memset per message
    /// that every other sending thread waits for), while a `Vec` is allocated,
    /// filled and hashed entirely without it and shared without a copy.
    #[pyo3(signature = (first, count, subdir_str, filename, filename_append = ""))]
    fn messages(
        &self,
        py: Python<'_>,
        first: u64,
        count: u64,
        subdir_str: &str,
        filename: &str,
        filename_append: &str,
    ) -> PyResult<Vec<Py<Buffer>>> {
        let last = first.saturating_add(count).min(self.plan.n_chunks() + 1);
        let names = Names { subdir: subdir_str, filename, append: filename_append };
        let encoded = py.detach(|| -> Result<Vec<Vec<u8>>, Error> {
            let held = self.file.read().unwrap_or_else(PoisonError::into_inner);
            let reopened;
            let (file, check) = match held.as_ref() {
                Some(file) => (file, Check::Crc),
                None => {
                    // Closed: read the path again, which may name another file
                    // by now, so each chunk is checked against its SHA-512.
                    let path = &self.plan.path;
                    reopened = File::open(path).map_err(|source| Error::io(path, source))?;
                    (&reopened, Check::ChunkHash)
                }
            };
            (first..last).map(|i| self.plan.encode_chunk(file, i, names, check)).collect()
        })?;
        encoded.into_iter().map(|m| buffer(py, Arc::new(m.into()))).collect()
    }

    /// Closes the file. Later `messages` calls open the path again for each
    /// call and check every chunk they read against its recorded chunk hash.
    fn close(&self, py: Python<'_>) {
        // Waits (GIL released) for `messages` calls reading the file.
        let file = py.detach(|| self.file.write().unwrap_or_else(PoisonError::into_inner).take());
        drop(file);
    }

    /// Whether `close` was called.
    #[getter]
    fn closed(&self) -> bool {
        self.file.read().unwrap_or_else(PoisonError::into_inner).is_none()
    }
}

#[pymodule]
fn _core(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<Buffer>()?;
    m.add_class::<DecodedChunk>()?;
    m.add_class::<FileInfo>()?;
    m.add_class::<FileStarted>()?;
    m.add_class::<PartReady>()?;
    m.add_class::<FileComplete>()?;
    m.add_class::<FileFailed>()?;
    m.add_class::<FileSuperseded>()?;
    m.add_class::<MessageRejected>()?;
    m.add_class::<Progress>()?;
    m.add_class::<Assembler>()?;
    m.add_class::<FileChunker>()?;
    m.add_class::<Sha512>()?;
    m.add_function(wrap_pyfunction!(decode_chunk, m)?)?;
    m.add_function(wrap_pyfunction!(encode_chunk, m)?)?;
    m.add_function(wrap_pyfunction!(message_key, m)?)?;
    m.add_function(wrap_pyfunction!(key_prefix, m)?)?;
    m.add_function(wrap_pyfunction!(parse_message_key, m)?)?;
    m.add_function(wrap_pyfunction!(sha512, m)?)?;
    m.add_function(wrap_pyfunction!(crc64nvme, m)?)?;
    m.add_function(wrap_pyfunction!(sha512_backend, m)?)?;
    m.add_function(wrap_pyfunction!(sha512_lanes, m)?)?;
    use_the_interpreters_libcrypto(m.py());
    // `Event`, the union of the event classes, as the stub declares it.
    let py = m.py();
    let event = py
        .get_type::<FileStarted>()
        .into_any()
        .bitor(py.get_type::<PartReady>())?
        .bitor(py.get_type::<FileComplete>())?
        .bitor(py.get_type::<FileFailed>())?
        .bitor(py.get_type::<FileSuperseded>())?
        .bitor(py.get_type::<MessageRejected>())?;
    m.add("Event", event)?;
    m.add("MIN_PART_SIZE", assembler::MIN_PART_SIZE)?;
    m.add("MAX_PARTS", assembler::MAX_PARTS)?;
    Ok(())
}
