//! Operations: one module per kernel family, each with its `plan`.

pub mod grow;
pub mod linear;
