//! Golden files: small safetensors files of inputs and reference outputs that
//! other implementations (the emulator, the GPU kernels) are checked against.
//!
//! Every tensor is f32. Inputs are generated in f64 by a small deterministic
//! generator (SplitMix64 + Box–Muller, seeded per case from the run seed and the
//! case name), rounded to f32, and the outputs are computed by this crate from
//! those rounded inputs, then rounded to f32. String metadata describes the case:
//!
//! | file | tensors | metadata |
//! |---|---|---|
//! | `pattention_<norm>.safetensors` (3 norms), `pattention_l2_norm_gelu_nref64.safetensors` | `x [37,48]`, `k_p [70,48]`, `v_p [70,40]`, `y [37,40]` | `op=pattention`, `norm`, `n_ref` (only when pinned), `eps`, `seed` |
//! | `attention_causal`, `attention_noncausal` (`[2,33,3,16]`), `attention_causal_tq5_tk29` | `q [B,Tq,H,D]`, `k`, `v [B,Tk,H,D]`, `o [B,Tq,H,D]`, `lse [B,H,Tq]` | `op=attention`, `causal=true\|false`, `scale`, `seed` |
//! | `grow_zeros`, `grow_normal` | `old [50,24]`, `new [77,24]` | `op=grow`, `init=zeros\|normal`, `std`, `seed` |
//!
//! For `grow_normal` the Philox seed of [`Init::Normal`] is the file's `seed`.

use crate::{attention, grow, pattention, Error, Init, MatRef, Norm, PattentionOpts, Result, Tensor4Ref};
use safetensors::tensor::{Dtype, SafeTensors, View};
use std::borrow::Cow;
use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// Tensors of a golden file: name → (shape, f32 values, row-major).
pub type Tensors = HashMap<String, (Vec<usize>, Vec<f32>)>;
/// String metadata of a golden file.
pub type Metadata = HashMap<String, String>;

/// Pattention golden shapes: T, d_in, n, d_out (tails on purpose).
const PATT: (usize, usize, usize, usize) = (37, 48, 70, 40);
/// The pinned n_ref of the `nref64` pattention case.
const PINNED_N_REF: usize = 64;
/// Attention golden shapes: B, T, H, D.
const ATTN: (usize, usize, usize, usize) = (2, 33, 3, 16);
/// The short-query causal case: Tq < Tk.
const ATTN_TQ_TK: (usize, usize) = (5, 29);
/// Growth golden shapes: n_old, n_new, cols, and the init std.
const GROW: (usize, usize, usize, f32) = (50, 77, 24, 0.02);

/// SplitMix64 (Steele, Lea, Flood 2014): a tiny, well-mixed 64-bit generator.
struct SplitMix64(u64);

impl SplitMix64 {
    /// A stream for one case: the run seed mixed with a hash of the case name,
    /// so every file has its own inputs and adding a case changes no other file.
    fn for_case(seed: u64, case: &str) -> Self {
        // FNV-1a of the name.
        let h =
            case.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3));
        let mut g = SplitMix64(seed ^ h);
        g.next_u64(); // one warm-up step decorrelates nearby seeds further
        g
    }

    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `[0, 1)` with 53 random bits.
    fn uniform(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }

    /// Standard normal by Box–Muller (one value per pair of uniforms; simple over fast).
    fn normal(&mut self) -> f64 {
        let u1 = 1.0 - self.uniform(); // (0, 1]: the log is finite
        let u2 = self.uniform();
        (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
    }

    /// `len` values of `N(0, std²)`, rounded to f32.
    fn normal_f32(&mut self, len: usize, std: f64) -> Vec<f32> {
        (0..len).map(|_| (std * self.normal()) as f32).collect()
    }
}

/// A tensor's raw little-endian bytes ready for safetensors serialisation (golden
/// files and both kinds of checkpoint): its dtype, shape and data.
pub(crate) struct RawTensor {
    pub(crate) dtype: Dtype,
    pub(crate) shape: Vec<usize>,
    pub(crate) bytes: Vec<u8>,
}

impl RawTensor {
    fn f32(shape: &[usize], values: &[f32]) -> Self {
        RawTensor {
            dtype: Dtype::F32,
            shape: shape.to_vec(),
            bytes: values.iter().flat_map(|v| v.to_le_bytes()).collect(),
        }
    }
}

impl View for &RawTensor {
    fn dtype(&self) -> Dtype {
        self.dtype
    }
    fn shape(&self) -> &[usize] {
        &self.shape
    }
    fn data(&self) -> Cow<'_, [u8]> {
        Cow::Borrowed(&self.bytes)
    }
    fn data_len(&self) -> usize {
        self.bytes.len()
    }
}

/// Rounds f64 reference outputs to f32 for storage.
fn to_f32(v: &[f64]) -> Vec<f32> {
    v.iter().map(|&x| x as f32).collect()
}

/// One golden case being assembled.
struct Case {
    name: String,
    tensors: Vec<(&'static str, RawTensor)>,
    meta: Metadata,
}

impl Case {
    fn new(name: impl Into<String>, op: &str, seed: u64) -> Self {
        let mut meta = Metadata::new();
        meta.insert("op".into(), op.into());
        meta.insert("seed".into(), seed.to_string());
        Case { name: name.into(), tensors: Vec::new(), meta }
    }

    fn tensor(&mut self, name: &'static str, shape: &[usize], values: &[f32]) {
        self.tensors.push((name, RawTensor::f32(shape, values)));
    }

    fn meta(&mut self, key: &str, value: impl ToString) {
        self.meta.insert(key.into(), value.to_string());
    }

    fn write(self, dir: &Path) -> Result<PathBuf> {
        let path = dir.join(format!("{}.safetensors", self.name));
        let views = self.tensors.iter().map(|(n, t)| (*n, t));
        // Serialised in memory, then replaced atomically: an old golden file is
        // never left half-written.
        let bytes = safetensors::serialize(views, Some(self.meta))?;
        crate::atomic::write_atomic(&path, &bytes)?;
        Ok(path)
    }
}

fn pattention_case(seed: u64, norm: Norm, n_ref: Option<usize>) -> Result<Case> {
    let name = match n_ref {
        None => format!("pattention_{}", norm.name()),
        Some(r) => format!("pattention_{}_nref{r}", norm.name()),
    };
    let (t, d_in, n, d_out) = PATT;
    let mut g = SplitMix64::for_case(seed, &name);
    // Keys scaled by 1/sqrt(d_in) so that A = X·K_Pᵀ is O(1) (a non-degenerate softmax).
    let x = g.normal_f32(t * d_in, 1.0);
    let k_p = g.normal_f32(n * d_in, 1.0 / (d_in as f64).sqrt());
    let v_p = g.normal_f32(n * d_out, 1.0);
    let opts = PattentionOpts { norm, n_ref, eps: 0.0 };
    let y = pattention(MatRef::new(&x, t, d_in)?, MatRef::new(&k_p, n, d_in)?, MatRef::new(&v_p, n, d_out)?, &opts)?;
    let mut c = Case::new(name, "pattention", seed);
    c.tensor("x", &[t, d_in], &x);
    c.tensor("k_p", &[n, d_in], &k_p);
    c.tensor("v_p", &[n, d_out], &v_p);
    c.tensor("y", &[t, d_out], &to_f32(&y.data));
    c.meta("norm", norm.name());
    if let Some(r) = n_ref {
        c.meta("n_ref", r);
    }
    c.meta("eps", opts.eps);
    Ok(c)
}

fn attention_case(seed: u64, name: &str, causal: bool, t_q: usize, t_k: usize) -> Result<Case> {
    let (b, _, h, d) = ATTN;
    let mut g = SplitMix64::for_case(seed, name);
    let q = g.normal_f32(b * t_q * h * d, 1.0);
    let k = g.normal_f32(b * t_k * h * d, 1.0);
    let v = g.normal_f32(b * t_k * h * d, 1.0);
    let scale = 1.0 / (d as f64).sqrt();
    let out = attention(
        Tensor4Ref::new(&q, [b, t_q, h, d])?,
        Tensor4Ref::new(&k, [b, t_k, h, d])?,
        Tensor4Ref::new(&v, [b, t_k, h, d])?,
        causal,
        Some(scale),
    )?;
    let mut c = Case::new(name, "attention", seed);
    c.tensor("q", &[b, t_q, h, d], &q);
    c.tensor("k", &[b, t_k, h, d], &k);
    c.tensor("v", &[b, t_k, h, d], &v);
    c.tensor("o", &out.shape_o, &to_f32(&out.o));
    c.tensor("lse", &[b, h, t_q], &to_f32(&out.lse));
    c.meta("causal", causal);
    c.meta("scale", scale);
    Ok(c)
}

fn grow_case(seed: u64, normal: bool) -> Result<Case> {
    let (n_old, n_new, cols, std) = GROW;
    let name = if normal { "grow_normal" } else { "grow_zeros" };
    let mut g = SplitMix64::for_case(seed, name);
    let old = g.normal_f32(n_old * cols, f64::from(std));
    let init = if normal { Init::Normal { std, seed } } else { Init::Zeros };
    let new = grow(MatRef::new(&old, n_old, cols)?, n_new, &init)?;
    let mut c = Case::new(name, "grow", seed);
    c.tensor("old", &[n_old, cols], &old);
    c.tensor("new", &[n_new, cols], &new);
    c.meta("init", if normal { "normal" } else { "zeros" });
    c.meta("std", if normal { std } else { 0.0 });
    Ok(c)
}

/// Writes every golden case into `dir` (created if missing), one safetensors file
/// per case, and returns the paths written. The same `seed` gives the same files.
/// Each file is replaced atomically ([`crate::atomic`]); the folder is checked to
/// be writable before anything is computed.
pub fn write_all(dir: &Path, seed: u64) -> Result<Vec<PathBuf>> {
    std::fs::create_dir_all(dir)?;
    crate::atomic::check_writable(&dir.join("pattention_l2_norm_gelu.safetensors"))?;
    let (_, t, _, _) = ATTN;
    let (t_q, t_k) = ATTN_TQ_TK;
    let cases = [
        pattention_case(seed, Norm::L2NormGelu, None)?,
        pattention_case(seed, Norm::GeluL2Norm, None)?,
        pattention_case(seed, Norm::Softmax, None)?,
        pattention_case(seed, Norm::L2NormGelu, Some(PINNED_N_REF))?,
        attention_case(seed, "attention_causal", true, t, t)?,
        attention_case(seed, "attention_noncausal", false, t, t)?,
        attention_case(seed, &format!("attention_causal_tq{t_q}_tk{t_k}"), true, t_q, t_k)?,
        grow_case(seed, false)?,
        grow_case(seed, true)?,
    ];
    cases.into_iter().map(|c| c.write(dir)).collect()
}

/// Reads a golden file: its tensors (all must be f32) and its metadata.
pub fn read(path: &Path) -> Result<(Tensors, Metadata)> {
    let buf = std::fs::read(path)?;
    let st = SafeTensors::deserialize(&buf)?;
    let (_, header) = SafeTensors::read_metadata(&buf)?;
    let meta = header.metadata().clone().unwrap_or_default();
    let mut tensors = Tensors::new();
    for (name, view) in st.tensors() {
        if view.dtype() != Dtype::F32 {
            return Err(Error::InvalidArgument {
                op: "golden::read",
                msg: format!("{}: tensor {name:?} is {:?}, expected F32", path.display(), view.dtype()),
            });
        }
        let values = view.data().chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect();
        tensors.insert(name, (view.shape().to_vec(), values));
    }
    Ok((tensors, meta))
}

const VERIFY: &str = "golden::verify";

fn get<'t>(tensors: &'t Tensors, name: &str) -> Result<&'t (Vec<usize>, Vec<f32>)> {
    tensors.get(name).ok_or_else(|| Error::InvalidArgument { op: VERIFY, msg: format!("missing tensor {name:?}") })
}

fn get_meta<'m>(meta: &'m Metadata, key: &str) -> Result<&'m str> {
    meta.get(key)
        .map(String::as_str)
        .ok_or_else(|| Error::InvalidArgument { op: VERIFY, msg: format!("missing metadata key {key:?}") })
}

fn parse<F: std::str::FromStr>(key: &str, s: &str) -> Result<F> {
    s.parse().map_err(|_| Error::InvalidArgument { op: VERIFY, msg: format!("metadata {key}={s:?} does not parse") })
}

fn mat<'a>(tensors: &'a Tensors, name: &str) -> Result<MatRef<'a, f32>> {
    let (shape, data) = get(tensors, name)?;
    match shape.as_slice() {
        &[r, c] => MatRef::new(data, r, c),
        s => Err(Error::Shape { op: VERIFY, msg: format!("tensor {name:?} is {s:?}, expected 2 dimensions") }),
    }
}

fn t4<'a>(tensors: &'a Tensors, name: &str) -> Result<Tensor4Ref<'a, f32>> {
    let (shape, data) = get(tensors, name)?;
    match shape.as_slice() {
        &[a, b, c, d] => Tensor4Ref::new(data, [a, b, c, d]),
        s => Err(Error::Shape { op: VERIFY, msg: format!("tensor {name:?} is {s:?}, expected 4 dimensions") }),
    }
}

/// Largest `|stored − recomputed|` over `stored` (both as f32); an error on a length
/// mismatch. NaN anywhere gives NaN.
fn max_diff(name: &str, stored: &[f32], recomputed: &[f32]) -> Result<f64> {
    if stored.len() != recomputed.len() {
        return Err(Error::Shape {
            op: VERIFY,
            msg: format!(
                "tensor {name:?} holds {} values but the recomputation gives {}",
                stored.len(),
                recomputed.len()
            ),
        });
    }
    Ok(stored.iter().zip(recomputed).map(|(&a, &b)| (f64::from(a) - f64::from(b)).abs()).fold(0.0, |m, d| {
        if d.is_nan() || m.is_nan() {
            f64::NAN
        } else {
            m.max(d)
        }
    }))
}

/// Recomputes a golden file's outputs from its inputs and metadata with this crate
/// and returns the largest absolute difference from the stored outputs (0 for a
/// file written by [`write_all`] of the same version of this crate).
pub fn verify(path: &Path) -> Result<f64> {
    let (tensors, meta) = read(path)?;
    match get_meta(&meta, "op")? {
        "pattention" => {
            let norm: Norm = get_meta(&meta, "norm")?.parse()?;
            let n_ref = match meta.get("n_ref") {
                Some(s) => Some(parse("n_ref", s)?),
                None => None,
            };
            let eps = match meta.get("eps") {
                Some(s) => parse("eps", s)?,
                None => 0.0,
            };
            let opts = PattentionOpts { norm, n_ref, eps };
            let y = pattention(mat(&tensors, "x")?, mat(&tensors, "k_p")?, mat(&tensors, "v_p")?, &opts)?;
            max_diff("y", &get(&tensors, "y")?.1, &y.to_vec::<f32>())
        }
        "attention" => {
            let causal = parse("causal", get_meta(&meta, "causal")?)?;
            let scale = parse("scale", get_meta(&meta, "scale")?)?;
            let out = attention(t4(&tensors, "q")?, t4(&tensors, "k")?, t4(&tensors, "v")?, causal, Some(scale))?;
            let d_o = max_diff("o", &get(&tensors, "o")?.1, &to_f32(&out.o))?;
            let d_lse = max_diff("lse", &get(&tensors, "lse")?.1, &to_f32(&out.lse))?;
            Ok(if d_o.is_nan() || d_lse.is_nan() { f64::NAN } else { d_o.max(d_lse) })
        }
        "grow" => {
            let old = mat(&tensors, "old")?;
            let new = mat(&tensors, "new")?;
            let init = match get_meta(&meta, "init")? {
                "zeros" => Init::Zeros,
                "normal" => Init::Normal {
                    std: parse("std", get_meta(&meta, "std")?)?,
                    seed: parse("seed", get_meta(&meta, "seed")?)?,
                },
                other => return Err(Error::InvalidArgument { op: VERIFY, msg: format!("unknown init {other:?}") }),
            };
            let grown = grow(old, new.rows, &init)?;
            max_diff("new", new.data, &grown)
        }
        other => Err(Error::InvalidArgument { op: VERIFY, msg: format!("unknown op {other:?}") }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::atomic::{inject_faults, Faults};

    #[test]
    fn a_failed_rewrite_leaves_every_old_golden_file_intact() {
        let dir = std::env::temp_dir().join(format!("tf-ref-golden-faults-{}", std::process::id()));
        std::fs::remove_dir_all(&dir).ok();
        let files = write_all(&dir, 1).unwrap();
        let old: Vec<Vec<u8>> = files.iter().map(|f| std::fs::read(f).unwrap()).collect();
        for faults in [
            Faults { fail_after_bytes: Some(100), fail_before_rename: false },
            Faults { fail_after_bytes: None, fail_before_rename: true },
        ] {
            inject_faults(faults);
            let r = write_all(&dir, 2);
            inject_faults(Faults::default());
            assert!(r.is_err(), "{faults:?}");
            for (f, o) in files.iter().zip(&old) {
                assert!(&std::fs::read(f).unwrap() == o, "{faults:?}: {} changed", f.display());
            }
            assert_eq!(std::fs::read_dir(&dir).unwrap().count(), files.len(), "{faults:?}: a temporary file was left");
        }
        std::fs::remove_dir_all(&dir).ok();
    }
}
