//! The decode-step case: one token through a whole bf16 model at a fixed cache
//! length, uncaptured (`forward_cached_into`, about thirty launches a layer)
//! and as a replayed decode graph (`DecodeGraph::step`). At one row the step
//! reads every weight once, so its floor is memory: the parameter bytes plus
//! the cache's keys and values.

use half::bf16;

use super::{median_time, Hook, Row, Variant, Work};
use crate::device::Device;
use crate::error::Result;
use crate::model::{Tokenformer, TokenformerConfig};

/// A decode-step case: a released config and the cache length the step runs at.
#[derive(Debug, Clone)]
pub struct DecodeCase {
    /// Config name (`150m`, `354m`, ...).
    pub config: &'static str,
    /// Positions in the cache before the step.
    pub kv: usize,
}

/// The decode cases: 354m at 512 and 2048 cached positions (quick), and 150m
/// and 1.5b at 2048 as well (full).
pub fn decode_cases(set: super::BenchSet) -> Vec<DecodeCase> {
    let mut v = vec![DecodeCase { config: "354m", kv: 512 }, DecodeCase { config: "354m", kv: 2048 }];
    if set == super::BenchSet::Full {
        v.push(DecodeCase { config: "150m", kv: 2048 });
        v.push(DecodeCase { config: "1.5b", kv: 2048 });
    }
    v
}

/// Times one decode step of the case, both ways. Bytes: every parameter once
/// (bf16) plus the keys and values of `kv + 1` positions; FLOPs: two per
/// parameter of the products and `4·(kv + 1)·d` per layer of attention.
pub fn run_decode(dev: &Device, case: &DecodeCase, hook: Hook<'_>) -> Result<Vec<Row>> {
    let cfg = TokenformerConfig::by_name(case.config)
        .map_err(|e| crate::error::Error::InvalidArgument { op: "bench", msg: e.to_string() })?;
    let model = Tokenformer::<bf16>::new(dev, &cfg, 1)?;
    let params: usize = model.param_views().iter().map(|v| v.shape().iter().product::<usize>()).sum();
    let kv = case.kv;
    let d = cfg.d;
    let bytes = 2.0 * params as f64 + 2.0 * 2.0 * ((kv + 1) * d * cfg.layers) as f64;
    let flops = 2.0 * params as f64 + 4.0 * ((kv + 1) * d * cfg.layers) as f64;
    let prompt: Vec<u32> = (0..kv).map(|i| (i * 7919 % cfg.vocab) as u32).collect();
    let mut cache = model.new_cache(kv + 1)?;
    let mut logits = dev.zeros::<bf16>(&[1, cfg.vocab])?;
    model.forward_cached_into(&prompt, &mut cache, &mut logits.view_mut())?;
    let param = format!("{}_kv{kv}", case.config);
    let group = "decode/bf16".to_string();
    let tok = 1u32;

    let mut step = || {
        cache.truncate(kv)?;
        model.forward_cached_into(&[tok], &mut cache, &mut logits.view_mut())
    };
    hook(&mut Variant {
        group: group.clone(),
        function: "uncaptured".into(),
        param: param.clone(),
        work: Work::Bytes(bytes),
        run: &mut step,
    });
    let t_plain = median_time(dev, 7, 10, &mut step)?;

    let mut graph = model.capture_decode(&mut cache)?;
    let mut replay = || {
        graph.truncate(kv)?;
        graph.step(tok).map(drop)
    };
    hook(&mut Variant {
        group,
        function: "graph".into(),
        param: param.clone(),
        work: Work::Bytes(bytes),
        run: &mut replay,
    });
    let t_graph = median_time(dev, 7, 10, &mut replay)?;

    let row = |variant: &str, time| Row {
        family: "decode",
        case: format!("bf16/{param}"),
        variant: variant.into(),
        flops,
        min_bytes: bytes,
        time,
        n: 0,
        d,
    };
    Ok(vec![row("uncaptured", t_plain), row(&format!("graph ({} launches)", graph.launches()), t_graph)])
}
