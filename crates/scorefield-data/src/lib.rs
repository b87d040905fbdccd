//! # scorefield-data
//!
//! Data for scorefield: the MNIST IDX reader and download ([`mnist`], [`idx`]), PNG image grids
//! ([`image`]) and plots (`plot`, drawn with plotters; the default feature `plot`), toy
//! two-dimensional data sets built from the analytic oracles ([`toy`]). The sample-quality
//! classifier and metrics live in their own crate, `scorefield-eval`.
#![deny(missing_docs)]

pub mod idx;
pub mod image;
pub mod mnist;
#[cfg(feature = "plot")]
pub mod plot;
#[cfg(feature = "plot")]
mod plot_backend;
pub mod toy;
