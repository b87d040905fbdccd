//! # scorefield-data
//!
//! Data for scorefield: toy two-dimensional data sets built from the analytic oracles (MNIST,
//! image grids and sample-quality metrics arrive with the training issue).
#![deny(missing_docs)]

pub mod idx;
pub mod image;
pub mod mnist;
pub mod plot;
pub mod quality;
pub mod toy;
