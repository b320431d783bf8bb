//! Safetensors checkpoints with the official GPT-NeoX key names.

use super::config::TokenformerConfig;
use super::params::{BlockParams, ModelParams, Slot};
use crate::golden::F32Tensor;
use crate::{Element, Error, Result};
use half::{bf16, f16};
use safetensors::tensor::{Dtype, SafeTensors, TensorView};
use std::collections::{BTreeSet, HashMap};
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

impl ModelParams {
    /// Writes the parameters to a safetensors file at `path`: every tensor of
    /// [`TokenformerConfig::tensor_names`] in f32 (each value rounded to nearest),
    /// under the official GPT-NeoX key names, plus string metadata `format = pt`
    /// and, for each pinned Pattention, `sequential.{i+2}.<module>.n_ref` (e.g.
    /// `sequential.2.attention.query.n_ref = 768`).
    ///
    /// Errors: an invalid config, parameters not matching it (naming the key), I/O.
    pub fn save_safetensors(&self, cfg: &TokenformerConfig, path: impl AsRef<Path>) -> Result<()> {
        cfg.validate()?;
        self.check(cfg)?;
        let tensors: Vec<(String, F32Tensor)> = self
            .named_tensors(cfg)
            .into_iter()
            .map(|(name, shape, data)| {
                let bytes = data.iter().flat_map(|&v| f32::from_f64(v).to_le_bytes()).collect();
                (name, F32Tensor { shape, bytes })
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
        let views = tensors.iter().map(|(n, t)| (n.as_str(), t));
        let bytes = safetensors::serialize(views, Some(meta))?;
        std::fs::write(path.as_ref(), bytes)
            .map_err(|e| Error::Io(std::io::Error::new(e.kind(), format!("{SAVE}: {}: {e}", path.as_ref().display()))))
    }

    /// Reads parameters for `cfg` from a safetensors file with the official key
    /// names (as written by [`save_safetensors`](Self::save_safetensors); F32, F64,
    /// F16 and BF16 tensors are accepted and widened to f64). Pinned `n_ref`s are
    /// read from the `….n_ref` metadata if present; other metadata is ignored.
    ///
    /// Errors (each naming the key): a tensor the config does not have (extra key),
    /// a tensor it needs that the file lacks (missing key), a shape other than the
    /// config's (both shapes named), an unsupported dtype, an `n_ref` that is not an
    /// integer ≥ 1; also an invalid config, I/O, or a malformed file.
    pub fn load_safetensors(cfg: &TokenformerConfig, path: impl AsRef<Path>) -> Result<Self> {
        cfg.validate()?;
        let path = path.as_ref();
        let buf = std::fs::read(path)
            .map_err(|e| Error::Io(std::io::Error::new(e.kind(), format!("{LOAD}: {}: {e}", path.display()))))?;
        let st = SafeTensors::deserialize(&buf)?;
        let (_, header) = SafeTensors::read_metadata(&buf)?;
        let expected = cfg.tensor_names();

        let wanted: BTreeSet<&str> = expected.iter().map(|(n, _)| n.as_str()).collect();
        let extra: BTreeSet<&str> = st.names().into_iter().filter(|n| !wanted.contains(n)).collect();
        if let Some(first) = extra.first() {
            let shape = st.tensor(first)?.shape().to_vec();
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
            values.push(decode(name, &view)?);
        }

        let meta = header.metadata().clone().unwrap_or_default();
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
                let key = n_ref_key(i, slot);
                if let Some(s) = meta.get(&key) {
                    match s.parse::<usize>() {
                        Ok(n) if n >= 1 => b.n_ref[slot.index()] = Some(n),
                        _ => {
                            return Err(Error::InvalidArgument {
                                op: LOAD,
                                msg: format!("{}: metadata {key} = {s:?} is not an integer >= 1", path.display()),
                            })
                        }
                    }
                }
            }
            blocks.push(b);
        }
        let params = ModelParams { embedding, blocks, final_norm_weight: next(), final_norm_bias: next() };
        params.check(cfg)?;
        Ok(params)
    }
}
