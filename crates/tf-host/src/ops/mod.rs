//! Operations: one module per kernel family, each with its `plan`.

pub mod adamw;
pub mod attention;
pub mod attention_backward;
mod attention_backward_tc;
pub mod block;
pub mod block_backward;
pub(crate) mod gemm;
pub mod grow;
pub(crate) mod head_copy;
pub mod linear;
pub mod pattention;
pub mod pattention_backward;
pub mod rownorm;
