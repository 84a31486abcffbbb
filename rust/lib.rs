//! Rust core of s3transfer-stream. Plain Rust modules, tested with `cargo test`;
//! the Python bindings in `python` are compiled only with the `python` feature
//! (maturin turns it on), so this crate knows nothing of Kafka, S3 or Python.

// Tests build offsets and sizes from small loop counters.
#![cfg_attr(test, allow(clippy::cast_possible_wrap, clippy::cast_sign_loss))]

pub mod assembler;
pub mod checksum;
pub mod chunker;
pub mod error;
pub mod intervals;
pub mod libcrypto;
pub mod sha512x8;
pub mod wire;

#[cfg(feature = "python")]
mod python;
