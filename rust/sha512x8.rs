//! SHA-512 of up to eight independent messages at once, one per 64-bit lane of
//! AVX-512 registers.
//!
//! SHA-512 of one message is a chain: each 128-byte block needs the state the
//! previous one left, so one stream runs at the speed of scalar code (OpenSSL's
//! best is about 5 cycles per byte here). The chunk checks of a batch are many
//! independent messages, so eight of them can go through the rounds side by side:
//! AVX-512 has 64-bit rotates and three-input logic (`vprolq`, `vpternlogq`), so a
//! round costs about as many instructions for eight lanes as scalar code spends on
//! one (issue 8: every byte is hashed twice, once for its chunk, once for its file).
//!
//! Machines without AVX-512 get `None` from [`digests`] and hash one at a time.

use std::sync::OnceLock;

/// SHA-512 of each message, eight at a time, when the lanes are usable here
/// ([`available`]); `None` otherwise (the caller hashes them one by one).
pub fn digests(messages: &[&[u8]]) -> Option<Vec<[u8; 64]>> {
    available().then(|| hash_all(messages)).flatten()
}

/// Whether [`digests`] hashes here: the CPU has AVX-512F, the lanes agree with
/// `ring` on a few inputs (checked once), and `S3TS_SHA512_LANES` is not `1`.
pub fn available() -> bool {
    static USABLE: OnceLock<bool> = OnceLock::new();
    *USABLE.get_or_init(|| std::env::var("S3TS_SHA512_LANES").as_deref() != Ok("1") && self_test())
}

/// How many messages one pass hashes here: 8, or 1 without the lanes.
pub fn lanes() -> usize {
    if available() {
        LANES
    } else {
        1
    }
}

fn self_test() -> bool {
    // Lengths around the padding edges, a multi-block message, and lanes of
    // unequal lengths in one group.
    let data: Vec<u8> = (0..3000u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8).collect();
    let messages: Vec<&[u8]> = [0, 1, 111, 112, 127, 128, 129, 3000].iter().map(|&n| &data[..n]).collect();
    hash_all(&messages)
        .is_some_and(|got| messages.iter().zip(&got).all(|(m, d)| *d == crate::checksum::ring_sha512(m)))
}

/// The digests through the lanes when the CPU has them, without the checks of
/// [`available`].
fn hash_all(messages: &[&[u8]]) -> Option<Vec<[u8; 64]>> {
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx512f") {
            let mut out = vec![[0u8; 64]; messages.len()];
            for (group, digests) in messages.chunks(LANES).zip(out.chunks_mut(LANES)) {
                // SAFETY: the CPU was just found to have AVX-512F, the only
                // feature `avx512::hash_lanes` is compiled for.
                unsafe { avx512::hash_lanes(group, digests) };
            }
            return Some(out);
        }
    }
    let _ = messages;
    None
}

const LANES: usize = 8;
const BLOCK: usize = 128;

/// The padded last block or two of a message: its bytes after the last full
/// block, 0x80, zeros, and the length in bits (big-endian, 128 bits).
struct Tail {
    bytes: [u8; 2 * BLOCK],
    blocks: usize,
}

impl Tail {
    fn of(message: &[u8]) -> Self {
        let full = message.len() / BLOCK * BLOCK;
        let rest = &message[full..];
        let mut bytes = [0u8; 2 * BLOCK];
        bytes[..rest.len()].copy_from_slice(rest);
        bytes[rest.len()] = 0x80;
        let blocks = if rest.len() + 1 + 16 <= BLOCK { 1 } else { 2 };
        let bits = (message.len() as u128) * 8;
        bytes[blocks * BLOCK - 16..blocks * BLOCK].copy_from_slice(&bits.to_be_bytes());
        Self { bytes, blocks }
    }
}

const H0: [u64; 8] = [
    0x6a09_e667_f3bc_c908,
    0xbb67_ae85_84ca_a73b,
    0x3c6e_f372_fe94_f82b,
    0xa54f_f53a_5f1d_36f1,
    0x510e_527f_ade6_82d1,
    0x9b05_688c_2b3e_6c1f,
    0x1f83_d9ab_fb41_bd6b,
    0x5be0_cd19_137e_2179,
];

const K: [u64; 80] = [
    0x428a_2f98_d728_ae22,
    0x7137_4491_23ef_65cd,
    0xb5c0_fbcf_ec4d_3b2f,
    0xe9b5_dba5_8189_dbbc,
    0x3956_c25b_f348_b538,
    0x59f1_11f1_b605_d019,
    0x923f_82a4_af19_4f9b,
    0xab1c_5ed5_da6d_8118,
    0xd807_aa98_a303_0242,
    0x1283_5b01_4570_6fbe,
    0x2431_85be_4ee4_b28c,
    0x550c_7dc3_d5ff_b4e2,
    0x72be_5d74_f27b_896f,
    0x80de_b1fe_3b16_96b1,
    0x9bdc_06a7_25c7_1235,
    0xc19b_f174_cf69_2694,
    0xe49b_69c1_9ef1_4ad2,
    0xefbe_4786_384f_25e3,
    0x0fc1_9dc6_8b8c_d5b5,
    0x240c_a1cc_77ac_9c65,
    0x2de9_2c6f_592b_0275,
    0x4a74_84aa_6ea6_e483,
    0x5cb0_a9dc_bd41_fbd4,
    0x76f9_88da_8311_53b5,
    0x983e_5152_ee66_dfab,
    0xa831_c66d_2db4_3210,
    0xb003_27c8_98fb_213f,
    0xbf59_7fc7_beef_0ee4,
    0xc6e0_0bf3_3da8_8fc2,
    0xd5a7_9147_930a_a725,
    0x06ca_6351_e003_826f,
    0x1429_2967_0a0e_6e70,
    0x27b7_0a85_46d2_2ffc,
    0x2e1b_2138_5c26_c926,
    0x4d2c_6dfc_5ac4_2aed,
    0x5338_0d13_9d95_b3df,
    0x650a_7354_8baf_63de,
    0x766a_0abb_3c77_b2a8,
    0x81c2_c92e_47ed_aee6,
    0x9272_2c85_1482_353b,
    0xa2bf_e8a1_4cf1_0364,
    0xa81a_664b_bc42_3001,
    0xc24b_8b70_d0f8_9791,
    0xc76c_51a3_0654_be30,
    0xd192_e819_d6ef_5218,
    0xd699_0624_5565_a910,
    0xf40e_3585_5771_202a,
    0x106a_a070_32bb_d1b8,
    0x19a4_c116_b8d2_d0c8,
    0x1e37_6c08_5141_ab53,
    0x2748_774c_df8e_eb99,
    0x34b0_bcb5_e19b_48a8,
    0x391c_0cb3_c5c9_5a63,
    0x4ed8_aa4a_e341_8acb,
    0x5b9c_ca4f_7763_e373,
    0x682e_6ff3_d6b2_b8a3,
    0x748f_82ee_5def_b2fc,
    0x78a5_636f_4317_2f60,
    0x84c8_7814_a1f0_ab72,
    0x8cc7_0208_1a64_39ec,
    0x90be_fffa_2363_1e28,
    0xa450_6ceb_de82_bde9,
    0xbef9_a3f7_b2c6_7915,
    0xc671_78f2_e372_532b,
    0xca27_3ece_ea26_619c,
    0xd186_b8c7_21c0_c207,
    0xeada_7dd6_cde0_eb1e,
    0xf57d_4f7f_ee6e_d178,
    0x06f0_67aa_7217_6fba,
    0x0a63_7dc5_a2c8_98a6,
    0x113f_9804_bef9_0dae,
    0x1b71_0b35_131c_471b,
    0x28db_77f5_2304_7d84,
    0x32ca_ab7b_40c7_2493,
    0x3c9e_be0a_15c9_bebc,
    0x431d_67c4_9c10_0d4c,
    0x4cc5_d4be_cb3e_42b6,
    0x597f_299c_fc65_7e2a,
    0x5fcb_6fab_3ad6_faec,
    0x6c44_198c_4a47_5817,
];

#[cfg(target_arch = "x86_64")]
mod avx512 {
    use std::arch::x86_64::{
        __m512i, _mm512_add_epi64, _mm512_loadu_epi64, _mm512_mask_mov_epi64, _mm512_ror_epi64,
        _mm512_set1_epi64, _mm512_srli_epi64, _mm512_storeu_epi64, _mm512_ternarylogic_epi64,
    };

    use super::{Tail, BLOCK, H0, K, LANES};

    /// `vpternlogq` truth tables: a ^ b ^ c, a ? b : c, majority of a, b, c.
    const XOR3: i32 = 0x96;
    const CHOOSE: i32 = 0xca;
    const MAJORITY: i32 = 0xe8;

    #[inline]
    #[target_feature(enable = "avx512f")]
    fn add(a: __m512i, b: __m512i) -> __m512i {
        _mm512_add_epi64(a, b)
    }

    #[inline]
    #[target_feature(enable = "avx512f")]
    fn big_sigma0(a: __m512i) -> __m512i {
        _mm512_ternarylogic_epi64::<XOR3>(
            _mm512_ror_epi64::<28>(a),
            _mm512_ror_epi64::<34>(a),
            _mm512_ror_epi64::<39>(a),
        )
    }

    #[inline]
    #[target_feature(enable = "avx512f")]
    fn big_sigma1(e: __m512i) -> __m512i {
        _mm512_ternarylogic_epi64::<XOR3>(
            _mm512_ror_epi64::<14>(e),
            _mm512_ror_epi64::<18>(e),
            _mm512_ror_epi64::<41>(e),
        )
    }

    #[inline]
    #[target_feature(enable = "avx512f")]
    fn small_sigma0(w: __m512i) -> __m512i {
        _mm512_ternarylogic_epi64::<XOR3>(
            _mm512_ror_epi64::<1>(w),
            _mm512_ror_epi64::<8>(w),
            _mm512_srli_epi64::<7>(w),
        )
    }

    #[inline]
    #[target_feature(enable = "avx512f")]
    fn small_sigma1(w: __m512i) -> __m512i {
        _mm512_ternarylogic_epi64::<XOR3>(
            _mm512_ror_epi64::<19>(w),
            _mm512_ror_epi64::<61>(w),
            _mm512_srli_epi64::<6>(w),
        )
    }

    #[inline]
    #[target_feature(enable = "avx512f")]
    fn load(words: &[u64; LANES]) -> __m512i {
        // SAFETY: reads exactly the eight u64 of `words`; unaligned loads are allowed.
        unsafe { _mm512_loadu_epi64(words.as_ptr().cast::<i64>()) }
    }

    #[inline]
    #[target_feature(enable = "avx512f")]
    fn store(v: __m512i) -> [u64; LANES] {
        let mut out = [0u64; LANES];
        // SAFETY: writes exactly the eight u64 of `out`; unaligned stores are allowed.
        unsafe { _mm512_storeu_epi64(out.as_mut_ptr().cast::<i64>(), v) };
        out
    }

    /// Hashes `messages` (at most eight) into `out`, one lane each.
    #[target_feature(enable = "avx512f")]
    pub(super) fn hash_lanes(messages: &[&[u8]], out: &mut [[u8; 64]]) {
        let n = messages.len().min(LANES).min(out.len());
        let tails: Vec<Tail> = messages[..n].iter().map(|m| Tail::of(m)).collect();
        let full: Vec<usize> = messages[..n].iter().map(|m| m.len() / BLOCK).collect();
        let blocks: Vec<usize> = (0..n).map(|l| full[l] + tails[l].blocks).collect();
        let most = blocks.iter().copied().max().unwrap_or(0);

        let mut state: [__m512i; 8] = H0.map(|h| _mm512_set1_epi64(h.cast_signed()));
        let mut words = [[0u64; LANES]; 16];
        for j in 0..most {
            let mut active: u8 = 0;
            for l in 0..n {
                if j >= blocks[l] {
                    continue;
                }
                active |= 1 << l;
                let block = if j < full[l] {
                    &messages[l][j * BLOCK..(j + 1) * BLOCK]
                } else {
                    let t = j - full[l];
                    &tails[l].bytes[t * BLOCK..(t + 1) * BLOCK]
                };
                for (t, word) in block.chunks_exact(8).enumerate() {
                    let mut be = [0u8; 8];
                    be.copy_from_slice(word);
                    words[t][l] = u64::from_be_bytes(be);
                }
            }
            let w: [__m512i; 16] = std::array::from_fn(|t| load(&words[t]));
            let next = compress(&state, w);
            for (s, v) in state.iter_mut().zip(next) {
                // Lanes whose message has ended keep their final state.
                *s = _mm512_mask_mov_epi64(*s, active, v);
            }
        }

        let lanes: [[u64; LANES]; 8] = state.map(|v| store(v));
        for (l, digest) in out[..n].iter_mut().enumerate() {
            for (i, word) in lanes.iter().enumerate() {
                digest[i * 8..(i + 1) * 8].copy_from_slice(&word[l].to_be_bytes());
            }
        }
    }

    /// One block per lane: the state after it (added to the state before).
    #[inline]
    #[target_feature(enable = "avx512f")]
    fn compress(state: &[__m512i; 8], mut w: [__m512i; 16]) -> [__m512i; 8] {
        let [mut a, mut b, mut c, mut d, mut e, mut f, mut g, mut h] = *state;
        for (t, k) in K.iter().enumerate() {
            if t >= 16 {
                let s1 = small_sigma1(w[(t - 2) % 16]);
                let s0 = small_sigma0(w[(t - 15) % 16]);
                w[t % 16] = add(add(w[t % 16], s0), add(w[(t - 7) % 16], s1));
            }
            let t1 = add(
                add(h, big_sigma1(e)),
                add(
                    _mm512_ternarylogic_epi64::<CHOOSE>(e, f, g),
                    add(_mm512_set1_epi64(k.cast_signed()), w[t % 16]),
                ),
            );
            let t2 = add(big_sigma0(a), _mm512_ternarylogic_epi64::<MAJORITY>(a, b, c));
            h = g;
            g = f;
            f = e;
            e = add(d, t1);
            d = c;
            c = b;
            b = a;
            a = add(t1, t2);
        }
        let s = state;
        [
            add(s[0], a),
            add(s[1], b),
            add(s[2], c),
            add(s[3], d),
            add(s[4], e),
            add(s[5], f),
            add(s[6], g),
            add(s[7], h),
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checksum::ring_sha512;
    use proptest::prelude::*;

    #[test]
    fn the_lanes_pass_their_self_test_where_the_cpu_has_them() {
        #[cfg(target_arch = "x86_64")]
        assert_eq!(self_test(), std::arch::is_x86_feature_detected!("avx512f"));
        assert_eq!(lanes() == LANES, available());
    }

    #[test]
    fn padding_boundaries_match_ring() {
        if !available() {
            return;
        }
        // Every tail length from empty to two blocks, around the 112-byte edge
        // where the length no longer fits in the last data block.
        let data: Vec<u8> = (0..300u32).map(|i| (i * 7 + 3) as u8).collect();
        let messages: Vec<&[u8]> = (0..=260).map(|n| &data[..n]).collect();
        let got = digests(&messages).expect("available");
        for (m, d) in messages.iter().zip(&got) {
            assert_eq!(*d, ring_sha512(m), "length {}", m.len());
        }
    }

    proptest! {
        #[test]
        fn any_lengths_in_any_lanes_match_ring(lens in proptest::collection::vec(0usize..5000, 0..20), seed in any::<u8>()) {
            let data: Vec<Vec<u8>> = lens
                .iter()
                .enumerate()
                .map(|(i, &n)| (0..n).map(|j| (j as u8).wrapping_mul(31).wrapping_add(seed ^ i as u8)).collect())
                .collect();
            let messages: Vec<&[u8]> = data.iter().map(Vec::as_slice).collect();
            match digests(&messages) {
                Some(got) => {
                    prop_assert_eq!(got.len(), messages.len());
                    for (m, d) in messages.iter().zip(&got) {
                        prop_assert_eq!(*d, ring_sha512(m));
                    }
                }
                None => prop_assert!(!available()),
            }
        }
    }
}
