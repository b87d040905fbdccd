//! The error type of scorefield.
//!
//! Every fallible operation returns [`Result<T>`]; bad input (invalid schedule parameters,
//! wrong shapes, non-finite values, a backend that is not compiled in) is reported as a typed
//! [`Error`](enum@Error) instead of a panic or a silent NaN.

use thiserror::Error;

/// Shorthand for `core::result::Result<T, scorefield_core::Error>`.
pub type Result<T> = core::result::Result<T, Error>;

/// Everything that can go wrong in scorefield.
#[derive(Debug, Error, Clone, PartialEq)]
#[non_exhaustive]
pub enum Error {
    /// A parameter is outside its valid range (a schedule's σ_min ≥ σ_max, β outside (0, 1),
    /// fewer than two levels, a NaN, ...).
    #[error("invalid parameter `{name}` = {value}: {reason}")]
    InvalidParameter {
        /// The parameter's name as it appears in the constructor.
        name: &'static str,
        /// The offending value, formatted.
        value: String,
        /// What the valid range is.
        reason: String,
    },
    /// A tensor or slice has the wrong shape.
    #[error("shape mismatch in {context}: expected {expected}, got {got}")]
    ShapeMismatch {
        /// Where the mismatch was detected.
        context: &'static str,
        /// The expected shape, formatted.
        expected: String,
        /// The shape that was passed, formatted.
        got: String,
    },
    /// A tensor has another element type than the computation it enters (an f64 batch given
    /// to an f32 model, a model whose output dtype differs from its input's).
    #[error("dtype mismatch in {context}: expected {expected}, got {got}")]
    DTypeMismatch {
        /// Where the mismatch was detected.
        context: &'static str,
        /// The expected dtype, formatted.
        expected: String,
        /// The dtype that was passed, formatted.
        got: String,
    },
    /// A value that must be finite is NaN or infinite (input data, or a sampler that diverged).
    #[error("non-finite value in {context}")]
    NonFinite {
        /// Where the non-finite value was found, e.g. `"sampler step 17"`.
        context: String,
    },
    /// An adaptive solver could not reach its end point: it ran out of steps, or its step size
    /// underflowed because the tolerance is too tight for the precision.
    #[error("{solver} failed: {reason}")]
    SolverFailed {
        /// The solver, e.g. `"Dormand–Prince"`.
        solver: &'static str,
        /// What went wrong, with the time reached.
        reason: String,
    },
    /// A conditional model was asked for a score without its condition: bind one with
    /// [`Given`](crate::condition::Given) (or the null class, [`Labels::null`](crate::condition::Labels::null),
    /// for the unconditional model of classifier-free guidance).
    #[error(
        "{model} is conditional: give it a condition with `Given` (Labels::null for the unconditional model)"
    )]
    MissingCondition {
        /// The model, e.g. `"NcsnUnet with 10 classes"`.
        model: String,
    },
    /// A backend name that scorefield does not know.
    #[error("unknown backend `{0}`: expected one of flex, ndarray, wgpu, cuda")]
    UnknownBackend(String),
    /// A known backend whose cargo feature was not enabled at compile time.
    #[error("backend `{name}` is not compiled in: rebuild with `--features {name}`")]
    BackendNotCompiled {
        /// The backend (and cargo feature) name.
        name: &'static str,
    },
}

impl Error {
    /// Builds an [`Error::InvalidParameter`].
    pub fn invalid(
        name: &'static str,
        value: impl core::fmt::Display,
        reason: impl Into<String>,
    ) -> Self {
        Error::InvalidParameter { name, value: value.to_string(), reason: reason.into() }
    }
}

/// Checks that `value` is finite, returning [`Error::InvalidParameter`] otherwise.
pub fn ensure_finite(name: &'static str, value: f64) -> Result<f64> {
    if value.is_finite() { Ok(value) } else { Err(Error::invalid(name, value, "must be finite")) }
}

/// Checks that `value` is finite and strictly positive.
pub fn ensure_positive(name: &'static str, value: f64) -> Result<f64> {
    ensure_finite(name, value)?;
    if value > 0.0 { Ok(value) } else { Err(Error::invalid(name, value, "must be > 0")) }
}

/// Checks that `value` is finite and `≥ 0`.
pub fn ensure_non_negative(name: &'static str, value: f64) -> Result<f64> {
    ensure_finite(name, value)?;
    if value >= 0.0 { Ok(value) } else { Err(Error::invalid(name, value, "must be ≥ 0")) }
}

/// Checks that `lo < hi` for two already-validated bounds named `lo_name` and `hi_name`.
pub fn ensure_less(lo_name: &'static str, lo: f64, hi_name: &'static str, hi: f64) -> Result<()> {
    if lo < hi {
        Ok(())
    } else {
        Err(Error::invalid(lo_name, lo, format!("must be < {hi_name} = {hi}")))
    }
}
