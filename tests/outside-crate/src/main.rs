//! Says whether this build has CUDA kernels and where it runs, then runs a
//! Pattention layer there. With `beside-candle`, also shows that tf-host's
//! re-exported cudarc is the program's own (one version, one set of features).

use tf_host::{Device, Norm, PattentionArgs, PattentionOptions};

/// The program's own cudarc stream type, as tf-host re-exports it.
#[cfg(feature = "beside-candle")]
fn _same_cudarc(s: std::sync::Arc<cudarc::driver::CudaStream>) -> std::sync::Arc<tf_host::cudarc::driver::CudaStream> {
    s
}

fn main() -> Result<(), tf_host::Error> {
    println!("CUDA kernels built: {}", if tf_host::cuda_kernels_built() { "yes" } else { "no" });
    let dev = Device::cuda(0).unwrap_or_else(|e| {
        println!("CUDA is not used: {e}");
        Device::emulator()
    });
    println!("device: {}", dev.name());
    let x = dev.upload(&[0.5f32, -1.0, 0.25, 2.0], &[2, 2])?;
    let k = dev.upload(&[1.0f32, 0.0, 0.0, 1.0, 1.0, 1.0], &[3, 2])?;
    let v = dev.upload(&[1.0f32, 2.0, 3.0, 4.0, 5.0, 6.0], &[3, 2])?;
    let o = PattentionOptions { norm: Norm::L2NormGelu, ..Default::default() };
    let y = tf_host::pattention(&dev, &PattentionArgs { x: x.view(), k_p: k.view(), v_p: v.view(), opts: o })?;
    println!("pattention: {:?}", y.to_vec()?);
    Ok(())
}
