//! Says whether this build has CUDA kernels and where it runs, then runs a
//! Pattention layer there. With `beside-candle`, also shows that tf-host's
//! re-exported cudarc is the program's own (one version, one set of features).

use std::sync::Arc;

use tf_host::{Device, Norm, PattentionArgs, PattentionOptions, Tensor, View, ViewMut};

/// The program's own cudarc stream type, as tf-host re-exports it.
#[cfg(feature = "beside-candle")]
fn _same_cudarc(s: Arc<cudarc::driver::CudaStream>) -> Arc<tf_host::cudarc::driver::CudaStream> {
    s
}

/// Zero-copy interop with the program's own cudarc stream and buffers (needs a
/// GPU to run; here it is only type-checked): tf-host reads and writes the
/// program's `CudaSlice`s and views in place, and hands its tensors back as
/// `CudaSlice`s.
fn _interop(stream: Arc<tf_host::cudarc::driver::CudaStream>) -> Result<Vec<f32>, tf_host::Error> {
    let dev = Device::from_stream(stream.clone())?;
    let x = stream.clone_htod(&[1.0f32, 2.0, 3.0, 4.0])?;
    let w = stream.clone_htod(&[0.0f32, 1.0, 1.0, 0.0])?;
    let mut y = stream.alloc_zeros::<f32>(4)?;
    {
        let xv = View::from_cuda(&dev, x.slice(..), &[2, 2])?;
        let wv = View::from_cuda(&dev, &w, &[2, 2])?;
        let mut yv = ViewMut::from_cuda(&dev, y.slice_mut(..), &[2, 2])?;
        tf_host::linear_into(&dev, &xv, &wv, &mut yv)?;
    }
    let t = Tensor::from_cuda_slice(&dev, y, &[2, 2])?;
    let z = tf_host::linear(&dev, &t, &Tensor::from_cuda_slice(&dev, w, &[2, 2])?)?;
    let back: tf_host::cudarc::driver::CudaSlice<f32> = z.into_cuda_slice()?;
    Ok(stream.clone_dtoh(&back)?)
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
