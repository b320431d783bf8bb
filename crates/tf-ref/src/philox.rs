//! Philox4x32-10, the counter-based generator of Salmon, Moraes, Dror and Shaw,
//! "Parallel random numbers: as easy as 1, 2, 3" (SC'11), as in Random123, and
//! the Box–Muller normal stream the growth initialiser draws from it.

/// First round multiplier (applied to counter word 0).
const M0: u32 = 0xD251_1F53;
/// Second round multiplier (applied to counter word 2).
const M1: u32 = 0xCD9E_8D57;
/// Weyl increment of key word 0 (golden ratio).
const W0: u32 = 0x9E37_79B9;
/// Weyl increment of key word 1 (sqrt(3) - 1).
const W1: u32 = 0xBB67_AE85;

/// The high and low 32-bit halves of the 64-bit product `a·b`.
fn mulhilo(a: u32, b: u32) -> (u32, u32) {
    let p = u64::from(a) * u64::from(b);
    ((p >> 32) as u32, p as u32)
}

/// One Philox round.
fn round(c: [u32; 4], k: [u32; 2]) -> [u32; 4] {
    let (hi0, lo0) = mulhilo(M0, c[0]);
    let (hi1, lo1) = mulhilo(M1, c[2]);
    [hi1 ^ c[1] ^ k[0], lo1, hi0 ^ c[3] ^ k[1], lo0]
}

/// Philox4x32 with 10 rounds: maps a 128-bit `counter` under a 64-bit `key` to
/// 128 random bits. The key is bumped by the Weyl constants between rounds (not
/// after the last). Matches the Random123 known-answer vectors (see the tests).
pub fn philox4x32_10(counter: [u32; 4], key: [u32; 2]) -> [u32; 4] {
    let mut c = counter;
    let mut k = key;
    for r in 0..10 {
        if r > 0 {
            k = [k[0].wrapping_add(W0), k[1].wrapping_add(W1)];
        }
        c = round(c, k);
    }
    c
}

/// `2^32` as f64.
const TWO_POW_32: f64 = 4_294_967_296.0;

/// Element `element` of the normal stream `N(0, std²)` with seed `seed`: the
/// growth initialiser's definition, shared with the emulator and the GPU.
///
/// Exact definition:
/// - key = `[seed as u32, (seed >> 32) as u32]`; counter =
///   `[element as u32, (element >> 32) as u32, 0, 0]`; `[w0, w1, _, _] =`
///   [`philox4x32_10`]`(counter, key)`. For a tensor of `cols` columns, `element`
///   is `row·cols + col` with `row` the absolute row in the grown tensor.
/// - in f64: `u1 = (w0 + 1) / 2^32` (in `(0, 1]`, so the log is finite),
///   `u2 = w1 / 2^32` (in `[0, 1)`), and
///   `value = std · sqrt(−2·ln u1) · cos(2π·u2)` with `std` the f32 widened
///   exactly (so `0.02` means `0.0199999995529651641845703125`); the result is that f64 rounded
///   once to f32 (nearest, ties to even). Words 2 and 3 are unused.
///
/// A device implementation that evaluates the same formula in f64 (cheap in a
/// memory-bound growth kernel) reproduces this up to the last-ulp differences of
/// its `log`/`cos`, i.e. almost always bit-for-bit. One that evaluates it in f32
/// (`u1`, `u2`, `logf`, `cosf`) agrees to within about `1e-5·std` in absolute
/// terms, and up to about `4e-4·std` in the rare case (probability ~2⁻²⁴) where
/// `w0` is so close to `2^32 − 1` that `u1` rounds to 1 in f32: compare with an
/// absolute tolerance scaled by `std`, not in relative ulps (values near zero
/// have no relative accuracy in f32).
pub fn philox_normal(seed: u64, element: u64, std: f32) -> f32 {
    let key = [seed as u32, (seed >> 32) as u32];
    let counter = [element as u32, (element >> 32) as u32, 0, 0];
    let [w0, w1, _, _] = philox4x32_10(counter, key);
    let u1 = (f64::from(w0) + 1.0) / TWO_POW_32;
    let u2 = f64::from(w1) / TWO_POW_32;
    let value = f64::from(std) * (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos();
    value as f32
}
