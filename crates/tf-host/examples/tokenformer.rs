//! Linking tf-host into another program: a TokenFormer on the GPU (or the CPU
//! emulator), greedy generation through the KV cache, a function-preserving
//! growth and a checkpoint.
//!
//! ```sh
//! cargo run -p tf-host --example tokenformer
//! ```

use tf_host::{bf16, Device, Sampling, SlotCounts, Tokenformer, TokenformerConfig};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    // CUDA device 0, or say why not and use the CPU emulator (same kernels, far slower).
    let dev = match Device::cuda(0) {
        Ok(d) => d,
        Err(e) => {
            eprintln!("no CUDA ({e}); running on the CPU emulator");
            Device::emulator()
        }
    };
    // A released config ("150m", "354m", ...) on a GPU; the tiny one runs anywhere.
    let name = if dev.is_cuda() { "354m" } else { "tiny" };
    let cfg = TokenformerConfig::by_name(name)?;
    // The official initialisation, made on the device (or Tokenformer::load(&dev, &cfg, path)).
    let mut model = Tokenformer::<bf16>::new(&dev, &cfg, 42)?;

    let prompt = [1u32, 2, 3];
    let logits = model.forward(&prompt)?; // [3, vocab]
    println!("{} on {}: logits {:?}", cfg.name, dev.name(), logits.shape());

    let ids = model.generate(&prompt, 8, Sampling::Greedy)?;
    println!("greedy: {ids:?}");

    // Grow every Pattention at once (one kernel launch) without changing the function.
    let to = SlotCounts { qkv: cfg.qkv_slots * 2, proj: cfg.proj_slots * 2, ffn: cfg.ffn_slots * 2 };
    model.grow_preserving(to, 7)?;
    let after = model.forward(&prompt)?;
    let same = logits.to_vec()? == after.to_vec()?;
    println!("grown to {to:?}; logits unchanged: {same}");

    let path = std::env::temp_dir().join("tokenformer-example.safetensors");
    model.save(&path)?; // GPT-NeoX key names, n_ref pins in the metadata
    println!("saved {}", path.display());
    Ok(())
}
