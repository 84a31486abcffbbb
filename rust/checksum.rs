//! Whole-object checksums: SHA-512 (the producer's file hash) and CRC64NVME
//! (the checksum S3 servers can combine across multipart parts into a
//! full-object value, so the server verifies what we computed over verified bytes).
//!
//! SHA-512 comes from `ring`, whose x86-64 and aarch64 code is OpenSSL's own
//! assembly (AVX2 where the CPU has it): `hashlib.sha512` is OpenSSL, so with
//! RustCrypto's `sha2` (portable and intrinsics backends) the core hashed at
//! about 0.75x the speed of the Python path it is meant to beat (issue 8,
//! `benches/micro.py`). `sha2` stays as a dev-dependency: the tests check the
//! two agree.

use crc_fast::{CrcAlgorithm, Digest as CrcDigest};
use ring::digest::{Context, SHA512};

pub fn sha512(data: &[u8]) -> [u8; 64] {
    to_array(ring::digest::digest(&SHA512, data).as_ref())
}

fn to_array(digest: &[u8]) -> [u8; 64] {
    // ring's SHA-512 output is always 64 bytes; the min only keeps this panic-free.
    let mut out = [0u8; 64];
    let n = digest.len().min(64);
    out[..n].copy_from_slice(&digest[..n]);
    out
}

/// Incremental SHA-512.
#[derive(Clone)]
pub struct Sha512 {
    ctx: Context,
}

impl Default for Sha512 {
    fn default() -> Self {
        Self { ctx: Context::new(&SHA512) }
    }
}

impl Sha512 {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn update(&mut self, data: &[u8]) {
        self.ctx.update(data);
    }

    pub fn finish(self) -> [u8; 64] {
        to_array(self.ctx.finish().as_ref())
    }

    /// The digest so far, leaving the state as it is.
    pub fn peek(&self) -> [u8; 64] {
        self.clone().finish()
    }

    /// The digest so far, and a fresh state for the next input.
    pub fn finish_reset(&mut self) -> [u8; 64] {
        std::mem::take(self).finish()
    }
}

pub fn crc64nvme(data: &[u8]) -> u64 {
    let mut d = CrcDigest::new(CrcAlgorithm::Crc64Nvme);
    d.update(data);
    d.finalize()
}

/// Both whole-object checksums, advanced together over the in-order prefix of a file.
#[derive(Clone)]
pub struct Running {
    sha: Sha512,
    crc: CrcDigest,
    len: u64,
}

impl Default for Running {
    fn default() -> Self {
        Self { sha: Sha512::new(), crc: CrcDigest::new(CrcAlgorithm::Crc64Nvme), len: 0 }
    }
}

impl Running {
    pub fn update(&mut self, data: &[u8]) {
        self.sha.update(data);
        self.crc.update(data);
        self.len += data.len() as u64;
    }

    /// Feeds the CRC64NVME only: for bytes whose SHA-512 is already known.
    pub fn update_crc(&mut self, data: &[u8]) {
        self.crc.update(data);
        self.len += data.len() as u64;
    }

    pub fn len(&self) -> u64 {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn finish(self) -> ([u8; 64], u64) {
        (self.sha.finish(), self.crc.finalize())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_values() {
        // CRC-64/NVME check value from the CRC catalogue.
        assert_eq!(crc64nvme(b"123456789"), 0xae8b_1486_0a79_9888);
        assert_eq!(crc64nvme(b""), 0);
        let mut r = Running::default();
        r.update(b"1234");
        r.update(b"56789");
        let (sha, crc) = r.finish();
        assert_eq!(crc, 0xae8b_1486_0a79_9888);
        assert_eq!(sha, sha512(b"123456789"));
    }

    fn reference(data: &[u8]) -> [u8; 64] {
        use sha2::Digest;
        sha2::Sha512::digest(data).into()
    }

    proptest::proptest! {
        /// ring and RustCrypto agree, one-shot and fed in pieces at any split.
        #[test]
        fn ring_matches_rustcrypto(data in proptest::collection::vec(proptest::num::u8::ANY, 0..4096), split in 0usize..4096) {
            let split = split.min(data.len());
            proptest::prop_assert_eq!(sha512(&data), reference(&data));
            let mut h = Sha512::new();
            h.update(&data[..split]);
            let before = h.peek();
            proptest::prop_assert_eq!(before, reference(&data[..split]));
            h.update(&data[split..]);
            let mut again = h.clone();
            proptest::prop_assert_eq!(again.finish_reset(), reference(&data));
            proptest::prop_assert_eq!(again.finish(), reference(b""));
            proptest::prop_assert_eq!(h.finish(), reference(&data));
        }
    }

    #[test]
    fn known_sha512_of_abc() {
        let d = sha512(b"abc");
        assert_eq!(&d[..4], &[0xdd, 0xaf, 0x35, 0xa1]);
        assert_eq!(&d[60..], &[0xa5, 0x4c, 0xa4, 0x9f]);
    }
}
