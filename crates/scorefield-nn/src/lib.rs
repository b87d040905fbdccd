//! # scorefield-nn
//!
//! Score networks for scorefield. The time-conditioned MLP and the NCSN-style U-Net, with
//! their exact forward-mode Jacobian-vector products, arrive with the objectives; this crate
//! currently holds the noise-level embedding they share.
#![deny(missing_docs)]

pub mod embedding;
