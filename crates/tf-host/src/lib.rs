//! `tf-host`: the API users link to run the TokenFormer kernels, on a CUDA GPU
//! (through cudarc) or on the CPU SIMT emulator that runs the same kernel source.
//!
//! ```no_run
//! use tf_host::{Device, Tensor};
//! # fn main() -> tf_host::Result<()> {
//! let dev = Device::cuda(0).unwrap_or_else(|_| Device::emulator());
//! let x: Tensor<f32> = dev.upload(&[1.0, 2.0, 3.0, 4.0], &[2, 2])?;
//! assert_eq!(x.to_vec()?, vec![1.0, 2.0, 3.0, 4.0]);
//! # Ok(()) }
//! ```

pub mod bench;
pub mod device;
pub mod dtype;
pub mod error;
pub mod layer;
pub mod model;
pub mod ops;
pub mod tensor;
pub mod workspace;

/// The cudarc this crate is built with (same version and features), for programs
/// that pass their own streams and buffers (`Device::from_stream`,
/// `Tensor::from_cuda_slice`) without matching cudarc's version by hand.
pub use cudarc;
pub use device::{Device, EmuOptions, Geometry, LaneOrder};
pub use dtype::{from_f32_vec, to_f32_vec, DType};
pub use error::{Error, Result};
pub use half::{bf16, f16};
pub use layer::{Init, Pattention, ValueInit};
pub use model::{CheckpointInfo, KvCache, LoadOptions, ModelParams, Sampling, Slot, Tokenformer, TokenformerConfig};
pub use ops::attention::{attention, attention_into, AttnOptions};
pub use ops::grow::{grow_batch, GrowInit, GrowItem};
pub use ops::linear::{linear, linear_into};
pub use ops::pattention::{pattention, pattention_into, pattention_workspace_bytes, Norm, PattentionOptions};
pub use tensor::{Tensor, View, ViewMut};
pub use workspace::Workspace;

/// The kernels' fatbin was compiled: false only in a build without CUDA kernels
/// (the `emulator-only` feature or `TF_NO_NVCC`).
pub fn cuda_kernels_built() -> bool {
    tf_kernels::FATBIN.is_some()
}
