//! The library error: user errors (with every diagnostic), unsupported input, internal bugs.

use crate::diag::Diagnostics;

#[derive(Debug, thiserror::Error)]
pub enum IrError {
    /// The input is wrong; every problem found is listed.
    #[error("{0}")]
    Invalid(Diagnostics),
    /// The input is valid but asks for something hetpar does not do.
    #[error("unsupported: {0}")]
    Unsupported(String),
    /// A bug in hetpar.
    #[error("internal error (a bug in hetpar, please report it): {0}")]
    Internal(String),
}

impl From<Diagnostics> for IrError {
    fn from(d: Diagnostics) -> Self {
        IrError::Invalid(d)
    }
}
