//! The crate's error type.

/// Everything that can go wrong in tf-ref. User input never panics: it yields one of these.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Operand shapes that do not fit together, or a buffer whose length does not
    /// match its shape. The message names the offending shapes.
    #[error("{op}: {msg}")]
    Shape {
        /// The operation that rejected its arguments, e.g. `"pattention"`.
        op: &'static str,
        /// What is wrong, naming the shapes, e.g. `"x is [37, 48] but k_p is [70, 47]: d_in differs"`.
        msg: String,
    },
    /// A scalar argument out of its domain (e.g. `n_ref = 0`, a negative `eps`).
    #[error("{op}: {msg}")]
    InvalidArgument {
        /// The operation that rejected its arguments.
        op: &'static str,
        /// What is wrong, naming the value.
        msg: String,
    },
    /// Reading or writing a file failed.
    #[error("I/O error: {0}")]
    Io(#[from] std::io::Error),
    /// A safetensors file could not be written or parsed.
    #[error("safetensors error: {0}")]
    SafeTensors(#[from] safetensors::SafeTensorError),
}

/// `std::result::Result` with this crate's [`Error`].
pub type Result<T> = std::result::Result<T, Error>;
