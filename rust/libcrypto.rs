//! OpenSSL's SHA-512, from a libcrypto already in the process.
//!
//! `ring` (the default SHA-512 of `checksum`) carries OpenSSL's x86-64 code
//! for SHA-512 only up to its AVX variant; OpenSSL itself also has the
//! AVX2/BMI2 one, about 15% faster on the test machines (`openssl speed`,
//! `benches/micro.py`). The Python interpreter's `hashlib` links OpenSSL, so
//! the extension uses the libcrypto the interpreter has loaded for it: nothing
//! to build or ship, and the same code `hashlib.sha512` runs. Linking OpenSSL
//! into the wheel would mean building it from source in every fresh build.
//!
//! A library is used only once it passed a self-test against `ring`; without
//! one (no OpenSSL 1.1+ symbols, not Linux, `S3TS_SHA512=ring`), `checksum`
//! keeps to `ring`.

use std::ffi::{c_int, c_uint, c_void, OsStr};
use std::path::PathBuf;
use std::ptr::NonNull;
use std::sync::OnceLock;

use libloading::Library;

type NewFn = unsafe extern "C" fn() -> *mut c_void;
type FreeFn = unsafe extern "C" fn(*mut c_void);
type CopyFn = unsafe extern "C" fn(*mut c_void, *const c_void) -> c_int;
type MdFn = unsafe extern "C" fn() -> *const c_void;
type InitFn = unsafe extern "C" fn(*mut c_void, *const c_void, *mut c_void) -> c_int;
type UpdateFn = unsafe extern "C" fn(*mut c_void, *const c_void, usize) -> c_int;
type FinalFn = unsafe extern "C" fn(*mut c_void, *mut u8, *mut c_uint) -> c_int;

/// The EVP digest functions of one libcrypto (OpenSSL 1.1 and 3 export them all).
pub struct LibCrypto {
    path: String,
    md: usize, // the `const EVP_MD *` of SHA-512: a static of the library
    new: NewFn,
    free: FreeFn,
    copy: CopyFn,
    init: InitFn,
    update: UpdateFn,
    fin: FinalFn,
    // Last: keeps the library, so the function pointers above, alive.
    _lib: Library,
}

static ACTIVE: OnceLock<LibCrypto> = OnceLock::new();
static REFUSED: OnceLock<String> = OnceLock::new();

/// The library `checksum` hashes with, if one was activated.
pub fn active() -> Option<&'static LibCrypto> {
    ACTIVE.get()
}

/// Makes `lib` the one `checksum` uses from now on; the first activation wins.
pub fn activate(lib: LibCrypto) -> &'static LibCrypto {
    ACTIVE.get_or_init(|| lib)
}

/// Why no library was activated (the first reason given), for `checksum::sha512_backend`.
pub fn refuse(reason: String) {
    let _ = REFUSED.set(reason);
}

pub fn refused() -> Option<&'static str> {
    REFUSED.get().map(String::as_str)
}

/// The path of the first libcrypto mapped into this process (Linux), e.g. the
/// one Python's `_hashlib` loaded.
pub fn mapped_path() -> Option<PathBuf> {
    let maps = std::fs::read_to_string("/proc/self/maps").ok()?;
    maps.lines().filter_map(|line| line.split_whitespace().nth(5)).map(PathBuf::from).find(|p| {
        p.file_name().and_then(OsStr::to_str).is_some_and(|n| n.starts_with("libcrypto") && n.contains(".so"))
    })
}

impl LibCrypto {
    /// Opens the libcrypto at `path` (a path, or a file name the dynamic loader
    /// resolves) and checks its SHA-512 against `ring`'s.
    pub fn open(path: &OsStr) -> Result<Self, String> {
        let shown = path.to_string_lossy().into_owned();
        // SAFETY: loading runs the library's initialisers; a libcrypto's only
        // set up its own globals (and one already mapped is not initialised again).
        let lib = unsafe { Library::new(path) }.map_err(|e| format!("cannot open {shown}: {e}"))?;
        let lib = Self::bind(lib, shown)?;
        lib.self_test()?;
        Ok(lib)
    }

    fn bind(lib: Library, path: String) -> Result<Self, String> {
        macro_rules! sym {
            ($t:ty, $name:literal) => {{
                // SAFETY: the symbol is OpenSSL's public function of this name,
                // whose C signature `$t` spells; the pointer is used only while
                // `_lib` keeps the library loaded.
                let f: $t = *unsafe { lib.get::<$t>(concat!($name, "\0").as_bytes()) }
                    .map_err(|e| format!("{path} has no {}: {e}", $name))?;
                f
            }};
        }
        let sha512 = sym!(MdFn, "EVP_sha512");
        let (new, free, copy) = (
            sym!(NewFn, "EVP_MD_CTX_new"),
            sym!(FreeFn, "EVP_MD_CTX_free"),
            sym!(CopyFn, "EVP_MD_CTX_copy_ex"),
        );
        let (init, update, fin) = (
            sym!(InitFn, "EVP_DigestInit_ex"),
            sym!(UpdateFn, "EVP_DigestUpdate"),
            sym!(FinalFn, "EVP_DigestFinal_ex"),
        );
        // SAFETY: EVP_sha512 takes nothing and returns a pointer to a static.
        let md = unsafe { sha512() } as usize;
        if md == 0 {
            return Err(format!("{path}: EVP_sha512 returned no digest"));
        }
        Ok(Self { path, md, new, free, copy, init, update, fin, _lib: lib })
    }

    /// Where the library was opened from.
    pub fn path(&self) -> &str {
        &self.path
    }

    fn self_test(&self) -> Result<(), String> {
        let data: Vec<u8> =
            (0..(3u32 << 18) + 77).map(|i| (i.wrapping_mul(2_654_435_761) >> 11) as u8).collect();
        let mut ctx = Ctx::new(self).ok_or_else(|| format!("{}: cannot make a digest context", self.path))?;
        ctx.update(&data[..1000]);
        let copy = ctx.try_clone();
        ctx.update(&data[1000..]);
        let whole = ctx.finish();
        let head = copy.finish();
        let ring = |d: &[u8]| crate::checksum::ring_sha512(d);
        if whole != Some(ring(&data)) || head != Some(ring(&data[..1000])) {
            return Err(format!("{}: its SHA-512 disagrees with ring's", self.path));
        }
        Ok(())
    }
}

/// One `EVP_MD_CTX` set up for SHA-512.
pub struct Ctx<'a> {
    lib: &'a LibCrypto,
    // None once an OpenSSL call failed: the digest is then refused, not guessed.
    ptr: Option<NonNull<c_void>>,
}

// SAFETY: the context is memory this value alone owns and only touches through
// `&mut self` (or `&self` to copy from it); OpenSSL lets a context be used from
// any thread, one at a time.
unsafe impl Send for Ctx<'_> {}
// SAFETY: through `&self` a context is only copied from (EVP_MD_CTX_copy_ex
// reads its source); every write takes `&mut self`.
unsafe impl Sync for Ctx<'_> {}

impl<'a> Ctx<'a> {
    /// A fresh SHA-512 context, or None if OpenSSL could not make one.
    pub fn new(lib: &'a LibCrypto) -> Option<Self> {
        // SAFETY: EVP_MD_CTX_new takes nothing; it returns an owned context or null.
        let ptr = NonNull::new(unsafe { (lib.new)() })?;
        let ctx = Self { lib, ptr: Some(ptr) };
        // SAFETY: `ptr` is a live context and `md` the library's SHA-512; no engine.
        let ok = unsafe { (lib.init)(ptr.as_ptr(), lib.md as *const c_void, std::ptr::null_mut()) } == 1;
        ok.then_some(ctx)
    }

    pub fn update(&mut self, data: &[u8]) {
        let Some(ptr) = self.ptr else { return };
        // SAFETY: `ptr` is a live, initialised context; `data` is valid for its length.
        if unsafe { (self.lib.update)(ptr.as_ptr(), data.as_ptr().cast(), data.len()) } != 1 {
            self.fail();
        }
    }

    /// The digest, or None if any call on this context failed.
    pub fn finish(mut self) -> Option<[u8; 64]> {
        let ptr = self.ptr?;
        let mut out = [0u8; 64];
        let mut len: c_uint = 0;
        // SAFETY: `ptr` is a live context; `out` has room for SHA-512's 64 bytes.
        let ok = unsafe { (self.lib.fin)(ptr.as_ptr(), out.as_mut_ptr(), &mut len) } == 1;
        if !ok || len != 64 {
            self.fail();
            return None;
        }
        Some(out)
    }

    /// A copy of the state; a failed copy fails the copy, not this context.
    pub fn try_clone(&self) -> Self {
        let lib = self.lib;
        let mut copy = Self { lib, ptr: None };
        if let Some(from) = self.ptr {
            // SAFETY: EVP_MD_CTX_new takes nothing; it returns an owned context or null.
            copy.ptr = NonNull::new(unsafe { (lib.new)() });
            if let Some(to) = copy.ptr {
                // SAFETY: both are live contexts, `from` initialised; OpenSSL
                // copies the digest state into `to`.
                if unsafe { (lib.copy)(to.as_ptr(), from.as_ptr()) } != 1 {
                    copy.fail();
                }
            }
        }
        copy
    }

    fn fail(&mut self) {
        if let Some(ptr) = self.ptr.take() {
            // SAFETY: `ptr` is a context this value owns and no longer uses.
            unsafe { (self.lib.free)(ptr.as_ptr()) };
        }
    }
}

impl Drop for Ctx<'_> {
    fn drop(&mut self) {
        self.fail();
    }
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use super::*;

    fn system() -> &'static LibCrypto {
        // Test processes have no Python to load it; the machine's OpenSSL 3 is
        // what the interpreter's hashlib uses.
        activate(LibCrypto::open(OsStr::new("libcrypto.so.3")).expect("the system's libcrypto.so.3"))
    }

    #[test]
    fn the_system_libcrypto_passes_and_matches_ring_at_any_split() {
        let lib = system();
        let data: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
        for split in [0, 1, 127, 128, 129, 4096, 199_999, 200_000] {
            let mut ctx = Ctx::new(lib).expect("a context");
            ctx.update(&data[..split]);
            let copy = ctx.try_clone();
            ctx.update(&data[split..]);
            assert_eq!(ctx.finish(), Some(crate::checksum::ring_sha512(&data)));
            assert_eq!(copy.finish(), Some(crate::checksum::ring_sha512(&data[..split])));
        }
    }

    #[test]
    fn a_library_without_the_symbols_is_refused_with_its_name() {
        let err = LibCrypto::open(OsStr::new("libm.so.6")).err().expect("libm has no EVP functions");
        assert!(err.contains("libm.so.6") && err.contains("EVP_"), "{err}");
        let err = LibCrypto::open(OsStr::new("/nonexistent/libcrypto.so.3")).err().expect("no such file");
        assert!(err.contains("/nonexistent/libcrypto.so.3"), "{err}");
    }
}
