//! Runs a Pattention layer on the emulator, and shows that tf-host's re-exported
//! cudarc is the program's own (one version, one set of features).

use tf_host::{Device, Norm, PattentionArgs, PattentionOptions};

/// The program's own cudarc stream type, as tf-host re-exports it.
fn _same_cudarc(s: std::sync::Arc<cudarc::driver::CudaStream>) -> std::sync::Arc<tf_host::cudarc::driver::CudaStream> {
    s
}

fn main() -> Result<(), tf_host::Error> {
    let dev = Device::emulator();
    let x = dev.upload(&[0.5f32, -1.0, 0.25, 2.0], &[2, 2])?;
    let k = dev.upload(&[1.0f32, 0.0, 0.0, 1.0, 1.0, 1.0], &[3, 2])?;
    let v = dev.upload(&[1.0f32, 2.0, 3.0, 4.0, 5.0, 6.0], &[3, 2])?;
    let o = PattentionOptions { norm: Norm::L2NormGelu, ..Default::default() };
    let y = tf_host::pattention(&dev, &PattentionArgs { x: x.view(), k_p: k.view(), v_p: v.view(), opts: o })?;
    println!("{:?}", y.to_vec()?);
    Ok(())
}
