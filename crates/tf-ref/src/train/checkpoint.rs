//! Training checkpoints: parameters, AdamW moments and the run's position in
//! one safetensors file, exact (f64), written atomically.
//!
//! Tensors, all F64, in [`TokenformerConfig::tensor_names`] order:
//! `<key>` (the parameter, official GPT-NeoX key names),
//! `optimizer.exp_avg.<key>` and `optimizer.exp_avg_sq.<key>` (the moments).
//! String metadata: `format = pt`, `tokenformer.kind = train`, the base config
//! (`tokenformer.base`), slot counts (`tokenformer.slots = qkv,proj,ffn`),
//! completed steps (`tokenformer.step`), the schedule length (`tokenformer.steps`),
//! `tokenformer.batch`, `tokenformer.seq`, `tokenformer.seed` (the batches are
//! counter-based in seed and step, so these are the data position), every AdamW
//! field (`tokenformer.adamw.<field>`, shortest round-trip decimal), the growth
//! plan (`tokenformer.grow = at:qkv,proj,ffn:preserving|random`), the corpus
//! fingerprint (`tokenformer.data`) and the pinned `n_ref`s under the model
//! checkpoints' keys (`sequential.{i+2}.<module>.n_ref`). A device backend
//! keeps its own state under `tokenformer.device.*` ([`Trainer::save_with`],
//! [`Trainer::load_with`]); this module stores those keys without reading them.

use super::trainer::{Backend, GrowPlan, RunConfig, Trainer};
use crate::golden::RawTensor;
use crate::TokenformerConfig;
use crate::{param_tensors, AdamWConfig, AdamWState, Error, ModelParams, Result, Slot};
use safetensors::tensor::{Dtype, SafeTensors};
use std::collections::{BTreeMap, HashMap};
use std::path::Path;

const OP: &str = "training checkpoint";
/// The prefix of the metadata keys a device backend adds to a checkpoint.
pub const DEVICE_PREFIX: &str = "tokenformer.device.";

fn n_ref_key(block: usize, slot: Slot) -> String {
    format!("{}.n_ref", slot.key_prefix(block))
}

fn adamw_fields(a: &AdamWConfig) -> [(&'static str, Option<f64>); 8] {
    [
        ("lr", Some(a.lr)),
        ("beta1", Some(a.beta1)),
        ("beta2", Some(a.beta2)),
        ("eps", Some(a.eps)),
        ("weight_decay", Some(a.weight_decay)),
        ("max_grad_norm", a.max_grad_norm),
        ("warmup_frac", Some(a.warmup_frac)),
        ("min_lr", Some(a.min_lr)),
    ]
}

impl Trainer {
    /// Writes the run to `path` (format in the module docs), replacing any file
    /// there atomically. `data` is the corpus [`fingerprint`](super::Corpus::fingerprint).
    pub fn save(&self, path: &Path, data: u64) -> Result<()> {
        self.save_with(path, data, &BTreeMap::new())
    }

    /// [`save`](Self::save) with a device backend's own metadata, every key of
    /// which starts with [`DEVICE_PREFIX`] (else an error, nothing written).
    pub fn save_with(&self, path: &Path, data: u64, device: &BTreeMap<String, String>) -> Result<()> {
        if let Some(k) = device.keys().find(|k| !k.starts_with(DEVICE_PREFIX)) {
            return Err(Error::InvalidArgument {
                op: OP,
                msg: format!("device metadata key {k:?} does not start with {DEVICE_PREFIX:?}"),
            });
        }
        let names = self.cfg.tensor_names();
        let params = param_tensors(&self.params);
        let bytes = |v: &[f64]| v.iter().flat_map(|x| x.to_le_bytes()).collect::<Vec<u8>>();
        let mut tensors = Vec::new();
        for (i, ((name, shape), p)) in names.iter().zip(&params).enumerate() {
            tensors.push((name.clone(), RawTensor { dtype: Dtype::F64, shape: shape.clone(), bytes: bytes(p) }));
            for (kind, m) in [("exp_avg", &self.opt.m[i]), ("exp_avg_sq", &self.opt.v[i])] {
                tensors.push((
                    format!("optimizer.{kind}.{name}"),
                    RawTensor { dtype: Dtype::F64, shape: shape.clone(), bytes: bytes(m) },
                ));
            }
        }
        let run = &self.run;
        let c = &self.cfg;
        let mut meta: HashMap<String, String> = HashMap::new();
        let mut put = |k: &str, v: String| meta.insert(k.to_string(), v);
        put("format", "pt".into());
        put("tokenformer.kind", "train".into());
        put("tokenformer.base", run.base.clone());
        put("tokenformer.slots", format!("{},{},{}", c.qkv_slots, c.proj_slots, c.ffn_slots));
        put("tokenformer.step", self.opt.step.to_string());
        put("tokenformer.steps", run.steps.to_string());
        put("tokenformer.batch", run.batch.to_string());
        put("tokenformer.seq", run.seq.to_string());
        put("tokenformer.seed", run.seed.to_string());
        put("tokenformer.data", format!("{data:016x}"));
        for (k, v) in adamw_fields(&run.adamw) {
            put(&format!("tokenformer.adamw.{k}"), v.map_or("none".into(), |v| v.to_string()));
        }
        if let Some(g) = &run.grow {
            let how = if g.preserving { "preserving" } else { "random" };
            put("tokenformer.grow", format!("{}:{},{},{}:{how}", g.at, g.qkv, g.proj, g.ffn));
        }
        for (i, b) in self.params.blocks.iter().enumerate() {
            for slot in Slot::ALL {
                if let Some(n) = b.n_ref(slot) {
                    put(&n_ref_key(i, slot), n.to_string());
                }
            }
        }
        for (k, v) in device {
            put(k, v.clone());
        }
        let views = tensors.iter().map(|(n, t)| (n.as_str(), t));
        let bytes = safetensors::serialize(views, Some(meta))?;
        crate::atomic::write_atomic(path, &bytes).map_err(Error::Io)
    }

    /// Reads a run written by [`save`](Self::save); returns it and the corpus
    /// fingerprint it was trained on.
    ///
    /// Errors (naming the file): I/O, not a safetensors file, not a training
    /// checkpoint, a missing or malformed metadata field or tensor.
    pub fn load(path: &Path) -> Result<(Trainer, u64)> {
        Self::load_with(path).map(|(t, data, _)| (t, data))
    }

    /// [`load`](Self::load), also returning the device backend's metadata (the
    /// keys starting with [`DEVICE_PREFIX`]; empty for a reference run's file).
    pub fn load_with(path: &Path) -> Result<(Trainer, u64, BTreeMap<String, String>)> {
        let buf = std::fs::read(path)
            .map_err(|e| Error::Io(std::io::Error::new(e.kind(), format!("{}: {e}", path.display()))))?;
        let bad = |msg: String| Error::InvalidArgument { op: OP, msg: format!("{}: {msg}", path.display()) };
        let st = SafeTensors::deserialize(&buf).map_err(|e| bad(format!("not a safetensors file: {e}")))?;
        let (_, header) = SafeTensors::read_metadata(&buf).map_err(|e| bad(format!("{e}")))?;
        let meta = header.metadata().clone().unwrap_or_default();
        let get = |k: &str| meta.get(k).ok_or_else(|| bad(format!("metadata {k} is missing")));
        if get("tokenformer.kind").map(String::as_str).ok() != Some("train") {
            return Err(bad("not a training checkpoint (no tokenformer.kind = train)".into()));
        }
        fn num<T: std::str::FromStr>(bad: &dyn Fn(String) -> Error, k: &str, v: &str) -> Result<T> {
            v.parse().map_err(|_| bad(format!("metadata {k} = {v:?} is not a number")))
        }
        let n = |k: &str| -> Result<u64> { num(&bad, k, get(k)?) };
        let f = |k: &str| -> Result<Option<f64>> {
            let k = format!("tokenformer.adamw.{k}");
            let v = get(&k)?;
            if v == "none" {
                Ok(None)
            } else {
                num(&bad, &k, v).map(Some)
            }
        };
        let need = |k: &str| -> Result<f64> { f(k)?.ok_or_else(|| bad(format!("tokenformer.adamw.{k} is none"))) };
        let adamw = AdamWConfig {
            lr: need("lr")?,
            beta1: need("beta1")?,
            beta2: need("beta2")?,
            eps: need("eps")?,
            weight_decay: need("weight_decay")?,
            max_grad_norm: f("max_grad_norm")?,
            warmup_frac: need("warmup_frac")?,
            min_lr: need("min_lr")?,
        };
        let counts = |k: &str, v: &str| -> Result<(usize, usize, usize)> {
            let c: Vec<usize> = v.split(',').map(|s| num(&bad, k, s)).collect::<Result<_>>()?;
            match c[..] {
                [q, p, f] => Ok((q, p, f)),
                _ => Err(bad(format!("metadata {k} = {v:?} is not qkv,proj,ffn"))),
            }
        };
        let grow = match meta.get("tokenformer.grow") {
            None => None,
            Some(v) => {
                let parts: Vec<&str> = v.split(':').collect();
                let [at, slots, how] = parts[..] else {
                    return Err(bad(format!("metadata tokenformer.grow = {v:?} is not at:qkv,proj,ffn:how")));
                };
                let (qkv, proj, ffn) = counts("tokenformer.grow", slots)?;
                let preserving = match how {
                    "preserving" => true,
                    "random" => false,
                    _ => {
                        return Err(bad(format!(
                            "metadata tokenformer.grow = {v:?}: {how:?} is not preserving or random"
                        )))
                    }
                };
                Some(GrowPlan { at: num(&bad, "tokenformer.grow", at)?, qkv, proj, ffn, preserving })
            }
        };
        let run = RunConfig {
            base: get("tokenformer.base")?.clone(),
            steps: n("tokenformer.steps")?,
            batch: n("tokenformer.batch")? as usize,
            seq: n("tokenformer.seq")? as usize,
            seed: n("tokenformer.seed")?,
            adamw,
            grow,
        };
        let base = TokenformerConfig::by_name(&run.base)?;
        run.check(&base)?;
        let (q, p, fs) = counts("tokenformer.slots", get("tokenformer.slots")?)?;
        let cfg = base.with_slots(q, p, fs)?;
        let read = |name: &str, shape: &[usize]| -> Result<Vec<f64>> {
            let t = st.tensor(name).map_err(|_| bad(format!("missing tensor {name:?}")))?;
            if t.dtype() != Dtype::F64 || t.shape() != shape {
                return Err(bad(format!("tensor {name:?} is {:?} {:?}, expected F64 {shape:?}", t.dtype(), t.shape())));
            }
            Ok(t.data().chunks_exact(8).map(|c| f64::from_le_bytes(c.try_into().unwrap_or([0; 8]))).collect())
        };
        let (mut values, mut m, mut v) = (Vec::new(), Vec::new(), Vec::new());
        for (name, shape) in cfg.tensor_names() {
            values.push(read(&name, &shape)?);
            m.push(read(&format!("optimizer.exp_avg.{name}"), &shape)?);
            v.push(read(&format!("optimizer.exp_avg_sq.{name}"), &shape)?);
        }
        let params = ModelParams::from_ordered(&cfg, values, |i, slot| {
            meta.get(&n_ref_key(i, slot)).map(|s| num(&bad, &n_ref_key(i, slot), s)).transpose()
        })?;
        params.check(&cfg)?;
        let step = n("tokenformer.step")?;
        let data = u64::from_str_radix(get("tokenformer.data")?, 16)
            .map_err(|_| bad("metadata tokenformer.data is not a hexadecimal fingerprint".into()))?;
        let opt = AdamWState { step, m, v };
        let device = meta.iter().filter(|(k, _)| k.starts_with(DEVICE_PREFIX)).map(|(k, v)| (k.clone(), v.clone()));
        Ok((Trainer { run, cfg, params, opt, backend: Backend::Reference, threads: 1 }, data, device.collect()))
    }
}
