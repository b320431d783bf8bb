//! Safetensors checkpoints with the official GPT-NeoX key names.

use super::config::TokenformerConfig;
use super::params::{BlockParams, ModelParams, Slot};
use crate::golden::RawTensor;
use crate::{Element, Error, Result};
use half::{bf16, f16};
use safetensors::tensor::{Dtype, SafeTensorError, SafeTensors, TensorView};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::io::Read;
use std::path::Path;

const SAVE: &str = "ModelParams::save_safetensors";
const LOAD: &str = "ModelParams::load_safetensors";

/// The metadata key holding the pinned `n_ref` of a Pattention:
/// `sequential.{i+2}.attention.query.n_ref`, …, `sequential.{i+2}.mlp.n_ref`.
fn n_ref_key(block: usize, slot: Slot) -> String {
    format!("{}.n_ref", slot.key_prefix(block))
}

/// Little-endian elements of `view` widened to f64.
fn decode(name: &str, view: &TensorView<'_>) -> Result<Vec<f64>> {
    fn each<const N: usize>(bytes: &[u8], f: impl Fn([u8; N]) -> f64) -> Vec<f64> {
        bytes
            .chunks_exact(N)
            .map(|c| {
                let mut a = [0u8; N];
                a.copy_from_slice(c);
                f(a)
            })
            .collect()
    }
    let bytes = view.data();
    Ok(match view.dtype() {
        Dtype::F32 => each(bytes, |a| f64::from(f32::from_le_bytes(a))),
        Dtype::F64 => each(bytes, f64::from_le_bytes),
        Dtype::F16 => each(bytes, |a| f16::from_le_bytes(a).to_f64()),
        Dtype::BF16 => each(bytes, |a| bf16::from_le_bytes(a).to_f64()),
        other => {
            return Err(Error::InvalidArgument {
                op: LOAD,
                msg: format!("{name}: dtype {other:?} is not supported (F32, F64, F16, BF16)"),
            })
        }
    })
}

/// Options of [`ModelParams::load_safetensors_with`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LoadOptions {
    /// Accept NaN and infinite weights (refused by default: one NaN in a
    /// parameter token silently changes every output).
    pub allow_non_finite: bool,
}

/// What a checkpoint's header says, read without loading its tensors.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct CheckpointInfo {
    /// The string metadata (`__metadata__`).
    pub metadata: HashMap<String, String>,
    /// Every tensor's shape, by name.
    pub shapes: BTreeMap<String, Vec<usize>>,
}

impl CheckpointInfo {
    /// Reads the header of the safetensors file at `path` (only the header:
    /// cheap for a large checkpoint). Errors name the file.
    pub fn read(path: impl AsRef<Path>) -> Result<Self> {
        const OP: &str = "CheckpointInfo::read";
        let path = path.as_ref();
        let io = |e: std::io::Error| Error::Io(std::io::Error::new(e.kind(), format!("{OP}: {}: {e}", path.display())));
        let bad = |msg: String| Error::InvalidArgument { op: OP, msg: format!("{}: {msg}", path.display()) };
        let mut f = std::fs::File::open(path).map_err(io)?;
        let len = f.metadata().map_err(io)?.len();
        let mut n = [0u8; 8];
        f.read_exact(&mut n).map_err(|_| bad(format!("{len} bytes is too short for a safetensors file")))?;
        let n = u64::from_le_bytes(n);
        if n > len.saturating_sub(8) || n > 100_000_000 {
            return Err(bad(format!("the header length {n} does not fit the file's {len} bytes")));
        }
        let mut header = vec![0u8; n as usize];
        f.read_exact(&mut header).map_err(io)?;
        let json: serde_json::Value = serde_json::from_slice(&header)
            .map_err(|e| bad(format!("the header is not valid safetensors JSON: {e}")))?;
        let obj = json.as_object().ok_or_else(|| bad("the header is not a JSON object".into()))?;
        let mut info = CheckpointInfo::default();
        for (k, v) in obj {
            if k == "__metadata__" {
                let m = v.as_object().ok_or_else(|| bad("__metadata__ is not an object".into()))?;
                for (mk, mv) in m {
                    let s = mv.as_str().ok_or_else(|| bad(format!("metadata {mk:?} is not a string")))?;
                    info.metadata.insert(mk.clone(), s.to_string());
                }
                continue;
            }
            let shape = v
                .get("shape")
                .and_then(|s| s.as_array())
                .and_then(|a| a.iter().map(|d| d.as_u64().and_then(|d| usize::try_from(d).ok())).collect())
                .ok_or_else(|| bad(format!("tensor {k:?} has no valid shape")))?;
            info.shapes.insert(k.clone(), shape);
        }
        Ok(info)
    }

    /// The slot counts `(qkv, proj, ffn)` of the first block's key tokens, if
    /// the file has those tensors as 2-D matrices.
    pub fn slots(&self) -> Option<(usize, usize, usize)> {
        let rows = |slot: Slot| match self.shapes.get(&format!("{}.key_param_tokens", slot.key_prefix(0))) {
            Some(s) if s.len() == 2 => Some(s[0]),
            _ => None,
        };
        Some((rows(Slot::Query)?, rows(Slot::Proj)?, rows(Slot::Ffn)?))
    }
}

/// `flat` as an index `[i, j, …]` into `shape` (row-major).
fn multi_index(flat: usize, shape: &[usize]) -> String {
    let mut idx = vec![0; shape.len()];
    let mut rest = flat;
    for (i, &d) in shape.iter().enumerate().rev() {
        if d > 0 {
            idx[i] = rest % d;
            rest /= d;
        }
    }
    format!("{idx:?}")
}

/// A safetensors parse error naming the file and, where the header shows it, the
/// tensor at fault.
fn malformed(path: &Path, buf: &[u8], e: SafeTensorError) -> Error {
    let mut msg = format!("{}: not a valid safetensors file: {e}", path.display());
    if matches!(e, SafeTensorError::MetadataIncompleteBuffer | SafeTensorError::TensorInvalidInfo) {
        if let Some(detail) = data_fault(buf) {
            msg.push_str(&format!(" ({detail})"));
        }
    }
    Error::InvalidArgument { op: LOAD, msg }
}

/// Which tensor's data does not fit the file (a truncated or padded file): the
/// first one, in file order, whose byte range ends past the data or whose byte
/// count does not match its shape.
fn data_fault(buf: &[u8]) -> Option<String> {
    let n = usize::try_from(u64::from_le_bytes(buf.get(..8)?.try_into().ok()?)).ok()?;
    let data = buf.len().checked_sub(8)?.checked_sub(n)?;
    let json: serde_json::Value = serde_json::from_slice(buf.get(8..8 + n)?).ok()?;
    let mut ranges: Vec<(u64, u64, String, u64)> = Vec::new();
    for (k, v) in json.as_object()? {
        if k == "__metadata__" {
            continue;
        }
        let off = v.get("data_offsets")?.as_array()?;
        let (a, b) = (off.first()?.as_u64()?, off.get(1)?.as_u64()?);
        let size: u64 = match v.get("dtype")?.as_str()? {
            "F64" | "I64" | "U64" => 8,
            "F32" | "I32" | "U32" => 4,
            "F16" | "BF16" | "I16" | "U16" => 2,
            _ => 1,
        };
        let elems = v.get("shape")?.as_array()?.iter().try_fold(1u64, |acc, d| acc.checked_mul(d.as_u64()?))?;
        ranges.push((a, b, k.clone(), elems.saturating_mul(size)));
    }
    ranges.sort();
    for (a, b, name, want) in &ranges {
        if b < a || b - a != *want {
            return Some(format!("tensor {name:?} declares bytes {a}..{b} but its shape and dtype need {want}"));
        }
        if *b > data as u64 {
            return Some(format!(
                "tensor {name:?} needs bytes {a}..{b} but the file holds {data} data bytes: truncated?"
            ));
        }
    }
    let end = ranges.last().map_or(0, |r| r.1);
    (end < data as u64).then(|| format!("{} bytes after the last tensor's data", data as u64 - end))
}

impl ModelParams {
    /// The parameters from their tensors in checkpoint order
    /// ([`TokenformerConfig::tensor_names`]), each layer's pinned `n_ref` from
    /// `n_ref(layer, slot)`. Missing tensors are empty (the caller's `check` says so).
    pub(crate) fn from_ordered(
        cfg: &TokenformerConfig,
        values: Vec<Vec<f64>>,
        mut n_ref: impl FnMut(usize, Slot) -> Result<Option<usize>>,
    ) -> Result<Self> {
        let mut it = values.into_iter();
        let mut next = || it.next().unwrap_or_default();
        let embedding = next();
        let mut blocks = Vec::new();
        for i in 0..cfg.layers {
            let mut b = BlockParams {
                q: (next(), next()),
                k: (next(), next()),
                v: (next(), next()),
                proj: (next(), next()),
                ffn: (next(), next()),
                n_ref: [None; 5],
            };
            for slot in Slot::ALL {
                b.n_ref[slot.index()] = n_ref(i, slot)?;
            }
            blocks.push(b);
        }
        Ok(ModelParams { embedding, blocks, final_norm_weight: next(), final_norm_bias: next() })
    }
}

impl ModelParams {
    /// Writes the parameters to a safetensors file at `path`: every tensor of
    /// [`TokenformerConfig::tensor_names`] in f32 (each value rounded to nearest),
    /// under the official GPT-NeoX key names, plus string metadata `format = pt`
    /// and, for each pinned Pattention, `sequential.{i+2}.<module>.n_ref` (e.g.
    /// `sequential.2.attention.query.n_ref = 768`).
    ///
    /// Errors: an invalid config, parameters not matching it (naming the key), I/O.
    pub fn save_safetensors(&self, cfg: &TokenformerConfig, path: impl AsRef<Path>) -> Result<()> {
        self.save_safetensors_with_metadata(cfg, path, &[])
    }

    /// [`save_safetensors`](Self::save_safetensors) with extra string metadata
    /// (e.g. how the model was made); a key that the format itself uses
    /// (`format`, `….n_ref`) is an error.
    ///
    /// The file is replaced atomically ([`crate::atomic`]): on any error the
    /// old file at `path` is left byte-identical.
    pub fn save_safetensors_with_metadata(
        &self,
        cfg: &TokenformerConfig,
        path: impl AsRef<Path>,
        extra: &[(&str, &str)],
    ) -> Result<()> {
        cfg.validate()?;
        self.check(cfg)?;
        let tensors: Vec<(String, RawTensor)> = self
            .named_tensors(cfg)
            .into_iter()
            .map(|(name, shape, data)| {
                let bytes = data.iter().flat_map(|&v| f32::from_f64(v).to_le_bytes()).collect();
                (name, RawTensor { dtype: Dtype::F32, shape, bytes })
            })
            .collect();
        let mut meta = HashMap::new();
        meta.insert("format".to_string(), "pt".to_string());
        for (i, b) in self.blocks.iter().enumerate() {
            for slot in Slot::ALL {
                if let Some(n) = b.n_ref(slot) {
                    meta.insert(n_ref_key(i, slot), n.to_string());
                }
            }
        }
        for &(k, v) in extra {
            if meta.contains_key(k) {
                return Err(Error::InvalidArgument {
                    op: SAVE,
                    msg: format!("metadata key {k:?} is the format's own and cannot be set"),
                });
            }
            meta.insert(k.to_string(), v.to_string());
        }
        let views = tensors.iter().map(|(n, t)| (n.as_str(), t));
        let bytes = safetensors::serialize(views, Some(meta))?;
        crate::atomic::write_atomic(path.as_ref(), &bytes)
            .map_err(|e| Error::Io(std::io::Error::new(e.kind(), format!("{SAVE}: {e}"))))
    }

    /// Reads parameters for `cfg` from a safetensors file with the official key
    /// names (as written by [`save_safetensors`](Self::save_safetensors); F32, F64,
    /// F16 and BF16 tensors are accepted and widened to f64). Pinned `n_ref`s are
    /// read from the `….n_ref` metadata if present; other metadata is ignored.
    /// A training checkpoint (`tokenformer.kind = train`, written by
    /// [`Trainer::save`](crate::Trainer::save)) loads as its parameters: its
    /// `optimizer.*` tensors are skipped.
    ///
    /// Errors (each naming the key): a tensor the config does not have (extra key),
    /// a tensor it needs that the file lacks (missing key), a shape other than the
    /// config's (both shapes named), an unsupported dtype, an `n_ref` that is not an
    /// integer ≥ 1, a NaN or infinite value (naming the first bad index); also an
    /// invalid config, I/O, or a malformed file (naming the file, and the tensor
    /// where the fault lies in one).
    pub fn load_safetensors(cfg: &TokenformerConfig, path: impl AsRef<Path>) -> Result<Self> {
        Self::load_safetensors_with(cfg, path, &LoadOptions::default())
    }

    /// [`load_safetensors`](Self::load_safetensors) with [`LoadOptions`] (e.g.
    /// accepting non-finite values).
    pub fn load_safetensors_with(cfg: &TokenformerConfig, path: impl AsRef<Path>, opts: &LoadOptions) -> Result<Self> {
        cfg.validate()?;
        let path = path.as_ref();
        let buf = std::fs::read(path)
            .map_err(|e| Error::Io(std::io::Error::new(e.kind(), format!("{LOAD}: {}: {e}", path.display()))))?;
        let st = SafeTensors::deserialize(&buf).map_err(|e| malformed(path, &buf, e))?;
        let (_, header) = SafeTensors::read_metadata(&buf).map_err(|e| malformed(path, &buf, e))?;
        let expected = cfg.tensor_names();

        let wanted: BTreeSet<&str> = expected.iter().map(|(n, _)| n.as_str()).collect();
        // A training checkpoint (crates/tf-ref/src/train/checkpoint.rs) holds the
        // parameters under the same keys plus the optimizer's moments: those are
        // not the model's, and are skipped.
        let training =
            header.metadata().as_ref().and_then(|m| m.get("tokenformer.kind")).map(String::as_str) == Some("train");
        let extra: BTreeSet<&str> = st
            .names()
            .into_iter()
            .filter(|n| !(wanted.contains(n) || training && n.starts_with("optimizer.")))
            .collect();
        if let Some(first) = extra.first() {
            let shape = st.tensor(first).map_err(|e| malformed(path, &buf, e))?.shape().to_vec();
            return Err(Error::InvalidArgument {
                op: LOAD,
                msg: format!(
                    "{}: unexpected tensor {first:?} {shape:?}: config {:?} has no such key \
                     ({} unexpected in all)",
                    path.display(),
                    cfg.name,
                    extra.len()
                ),
            });
        }

        let mut values = Vec::with_capacity(expected.len());
        for (name, shape) in &expected {
            let view = st.tensor(name).map_err(|_| Error::InvalidArgument {
                op: LOAD,
                msg: format!("{}: missing tensor {name:?} (config {:?} expects {shape:?})", path.display(), cfg.name),
            })?;
            if view.shape() != shape.as_slice() {
                return Err(Error::Shape {
                    op: LOAD,
                    msg: format!(
                        "{}: tensor {name:?} is {:?} but config {:?} expects {shape:?}",
                        path.display(),
                        view.shape(),
                        cfg.name
                    ),
                });
            }
            let v = decode(name, &view).map_err(|e| match e {
                Error::InvalidArgument { op, msg } => {
                    Error::InvalidArgument { op, msg: format!("{}: {msg}", path.display()) }
                }
                other => other,
            })?;
            if !opts.allow_non_finite {
                if let Some(i) = v.iter().position(|x| !x.is_finite()) {
                    return Err(Error::InvalidArgument {
                        op: LOAD,
                        msg: format!(
                            "{}: tensor {name:?} {shape:?} holds {} at index {} (flat {i}){}; \
                             refusing a checkpoint with non-finite weights",
                            path.display(),
                            v[i],
                            multi_index(i, shape),
                            match v.iter().filter(|x| !x.is_finite()).count() {
                                1 => String::new(),
                                n => format!(", {n} non-finite values in all"),
                            }
                        ),
                    });
                }
            }
            values.push(v);
        }

        let meta = header.metadata().clone().unwrap_or_default();
        let params = ModelParams::from_ordered(cfg, values, |i, slot| {
            let key = n_ref_key(i, slot);
            match meta.get(&key).map(|s| (s, s.parse::<usize>())) {
                None => Ok(None),
                Some((_, Ok(n))) if n >= 1 => Ok(Some(n)),
                Some((s, _)) => Err(Error::InvalidArgument {
                    op: LOAD,
                    msg: format!("{}: metadata {key} = {s:?} is not an integer >= 1", path.display()),
                }),
            }
        })?;
        params.check(cfg)?;
        Ok(params)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::atomic::{inject_faults, Faults};

    #[test]
    fn a_failed_save_leaves_the_old_checkpoint_byte_identical() {
        let dir = std::env::temp_dir().join(format!("tf-ref-ckpt-faults-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("model.safetensors");
        let cfg = TokenformerConfig::by_name("tiny").unwrap();
        ModelParams::init(&cfg, 1).unwrap().save_safetensors(&cfg, &path).unwrap();
        let old = std::fs::read(&path).unwrap();
        let other = ModelParams::init(&cfg, 2).unwrap();
        for faults in [
            Faults { fail_after_bytes: Some(4096), fail_before_rename: false },
            Faults { fail_after_bytes: None, fail_before_rename: true },
        ] {
            inject_faults(faults);
            let r = other.save_safetensors(&cfg, &path);
            inject_faults(Faults::default());
            let e = r.unwrap_err().to_string();
            assert!(e.contains("injected failure") && e.contains("model.safetensors"), "{e}");
            assert!(std::fs::read(&path).unwrap() == old, "{faults:?}: the old checkpoint changed");
            assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 1, "{faults:?}: a temporary file was left");
        }
        // Without faults the same save replaces it.
        other.save_safetensors(&cfg, &path).unwrap();
        assert_eq!(ModelParams::load_safetensors(&cfg, &path).unwrap(), other);
        std::fs::remove_dir_all(&dir).ok();
    }

    #[test]
    fn indices_are_row_major() {
        assert_eq!(multi_index(0, &[3, 4]), "[0, 0]");
        assert_eq!(multi_index(7, &[3, 4]), "[1, 3]");
        assert_eq!(multi_index(23, &[2, 3, 4]), "[1, 2, 3]");
        assert_eq!(multi_index(5, &[64]), "[5]");
    }
}
