//! Whole-object checksums: SHA-512 (the producer's file hash) and CRC64NVME
//! (the checksum S3 servers can combine across multipart parts into a
//! full-object value, so the server verifies what we computed over verified bytes).
//!
//! SHA-512 is OpenSSL's when a libcrypto was activated (`libcrypto`: the one
//! the Python interpreter loaded for `hashlib`, whose AVX2 code `ring` lacks),
//! and `ring`'s otherwise. `ring`'s x86-64 and aarch64 code is OpenSSL's own
//! assembly up to AVX; RustCrypto's `sha2` hashed at about 0.75x the speed of
//! `hashlib.sha512` (issue 8, `benches/micro.py`) and stays a dev-dependency:
//! the tests check all of them agree.

use crc_fast::{CrcAlgorithm, Digest as CrcDigest};
use ring::digest::{Context, SHA512};

use crate::libcrypto;

pub fn sha512(data: &[u8]) -> [u8; 64] {
    if let Some(lib) = libcrypto::active() {
        if let Some(mut ctx) = libcrypto::Ctx::new(lib) {
            ctx.update(data);
            if let Some(d) = ctx.finish() {
                return d;
            }
        }
    }
    ring_sha512(data)
}

pub(crate) fn ring_sha512(data: &[u8]) -> [u8; 64] {
    to_array(ring::digest::digest(&SHA512, data).as_ref())
}

/// Which SHA-512 new hashes use: OpenSSL and the libcrypto's path, or ring
/// (and why not OpenSSL, if it was tried).
pub fn sha512_backend() -> String {
    match (libcrypto::active(), libcrypto::refused()) {
        (Some(lib), _) => format!("OpenSSL ({})", lib.path()),
        (None, Some(why)) => format!("ring ({why})"),
        (None, None) => "ring".to_owned(),
    }
}

fn to_array(digest: &[u8]) -> [u8; 64] {
    // ring's SHA-512 output is always 64 bytes; the min only keeps this panic-free.
    let mut out = [0u8; 64];
    let n = digest.len().min(64);
    out[..n].copy_from_slice(&digest[..n]);
    out
}

// One per file or chunk being hashed: boxing ring's state would only add an
// allocation to each.
#[allow(clippy::large_enum_variant)]
enum State {
    Ring(Context),
    OpenSsl(libcrypto::Ctx<'static>),
}

/// Incremental SHA-512.
pub struct Sha512 {
    state: State,
}

impl Default for Sha512 {
    fn default() -> Self {
        let state = match libcrypto::active().and_then(libcrypto::Ctx::new) {
            Some(ctx) => State::OpenSsl(ctx),
            None => State::Ring(Context::new(&SHA512)),
        };
        Self { state }
    }
}

impl Clone for Sha512 {
    fn clone(&self) -> Self {
        let state = match &self.state {
            State::Ring(c) => State::Ring(c.clone()),
            State::OpenSsl(c) => State::OpenSsl(c.try_clone()),
        };
        Self { state }
    }
}

impl Sha512 {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn update(&mut self, data: &[u8]) {
        match &mut self.state {
            State::Ring(c) => c.update(data),
            State::OpenSsl(c) => c.update(data),
        }
    }

    pub fn finish(self) -> [u8; 64] {
        match self.state {
            State::Ring(c) => to_array(c.finish().as_ref()),
            // An OpenSSL call that failed (which it does not for SHA-512 short of
            // running out of memory) leaves no digest; zeros equal no producer's
            // hash, so the file fails its check rather than pass unchecked.
            State::OpenSsl(c) => c.finish().unwrap_or([0; 64]),
        }
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
        /// ring (or the libcrypto another test activated) and RustCrypto agree,
        /// one-shot and fed in pieces at any split.
        #[test]
        fn sha512_matches_rustcrypto(data in proptest::collection::vec(proptest::num::u8::ANY, 0..4096), split in 0usize..4096) {
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

    /// The wrapper over OpenSSL's contexts (clone, peek, reset) against RustCrypto,
    /// with the machine's libcrypto activated as the extension activates Python's.
    #[cfg(target_os = "linux")]
    #[test]
    fn sha512_through_the_system_libcrypto_matches_rustcrypto() {
        let lib = crate::libcrypto::LibCrypto::open(std::ffi::OsStr::new("libcrypto.so.3"))
            .expect("libcrypto.so.3");
        crate::libcrypto::activate(lib);
        assert!(sha512_backend().starts_with("OpenSSL"), "{}", sha512_backend());
        let data: Vec<u8> = (0..300_000u32).map(|i| (i * 7 % 253) as u8).collect();
        let mut h = Sha512::new();
        assert!(matches!(h.state, State::OpenSsl(_)));
        h.update(&data[..1234]);
        assert_eq!(h.peek(), reference(&data[..1234]));
        h.update(&data[1234..]);
        let again = h.clone();
        assert_eq!(h.finish_reset(), reference(&data));
        assert_eq!(h.finish(), reference(b""));
        assert_eq!(again.finish(), reference(&data));
        assert_eq!(sha512(&data), reference(&data));
    }

    #[test]
    fn known_sha512_of_abc() {
        let d = sha512(b"abc");
        assert_eq!(&d[..4], &[0xdd, 0xaf, 0x35, 0xa1]);
        assert_eq!(&d[60..], &[0xa5, 0x4c, 0xa4, 0x9f]);
    }
}
