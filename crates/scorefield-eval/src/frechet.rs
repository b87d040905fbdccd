//! The Fréchet distance between two sets of feature vectors, each summarised by its mean and
//! covariance as a Gaussian:
//!
//! ```text
//! d²(N(μ₁, C₁), N(μ₂, C₂)) = ‖μ₁ − μ₂‖² + tr(C₁ + C₂ − 2(C₁C₂)^{1/2})
//! tr (C₁C₂)^{1/2}          = tr (C₁^{1/2} C₂ C₁^{1/2})^{1/2} = Σⱼ √λⱼ(C₁^{1/2} C₂ C₁^{1/2})
//! ```
//!
//! the squared 2-Wasserstein distance of the two Gaussians (Dowson & Landau 1982; FID, Heusel
//! et al. 2017, on Inception features). The matrix square roots are taken in f64 on the host
//! from symmetric eigendecompositions (nalgebra's `SymmetricEigen`); `C₁^{1/2} C₂ C₁^{1/2}` is
//! symmetric positive semi-definite and similar to `C₁C₂`, so the trace of its square root is
//! the trace in the formula. Negative eigenvalues left by rounding are treated as 0.

use nalgebra::{DMatrix, SymmetricEigen};
use scorefield_core::Error;

/// The mean and covariance of a set of feature vectors, in f64.
#[derive(Debug, Clone, PartialEq)]
pub struct FeatureStatistics {
    /// The number of vectors.
    pub count: usize,
    /// The mean `μ`, length `F`.
    pub mean: Vec<f64>,
    /// The covariance `C = Σ (fᵢ − μ)(fᵢ − μ)ᵀ / (N − 1)`, row-major `F × F`.
    pub covariance: Vec<f64>,
}

impl FeatureStatistics {
    /// The statistics of the rows of a row-major `[N, F]` slice. Errors with
    /// [`Error::ShapeMismatch`] unless `N ≥ 2` and the length is a multiple of `F ≥ 1`, and
    /// with [`Error::NonFinite`] on a NaN or infinity.
    pub fn from_rows(values: &[f64], dim: usize) -> scorefield_core::Result<Self> {
        let n = values.len().checked_div(dim).unwrap_or(0);
        if dim == 0 || n < 2 || n * dim != values.len() {
            return Err(Error::ShapeMismatch {
                context: "FeatureStatistics::from_rows",
                expected: format!("N ≥ 2 rows of F = {dim} ≥ 1 features"),
                got: format!("{} values", values.len()),
            });
        }
        if values.iter().any(|v| !v.is_finite()) {
            return Err(Error::NonFinite { context: "FeatureStatistics::from_rows".into() });
        }
        let mut mean = vec![0.0; dim];
        for row in values.chunks(dim) {
            for (m, v) in mean.iter_mut().zip(row) {
                *m += v;
            }
        }
        mean.iter_mut().for_each(|m| *m /= n as f64);
        let mut covariance = vec![0.0; dim * dim];
        let mut centred = vec![0.0; dim];
        for row in values.chunks(dim) {
            for (c, (v, m)) in centred.iter_mut().zip(row.iter().zip(&mean)) {
                *c = v - m;
            }
            for a in 0..dim {
                for b in a..dim {
                    covariance[a * dim + b] += centred[a] * centred[b];
                }
            }
        }
        for a in 0..dim {
            for b in a..dim {
                let v = covariance[a * dim + b] / (n - 1) as f64;
                covariance[a * dim + b] = v;
                covariance[b * dim + a] = v;
            }
        }
        Ok(Self { count: n, mean, covariance })
    }

    /// The Fréchet distance between these statistics and `other` ([`frechet_distance`]).
    pub fn frechet_distance(&self, other: &Self) -> scorefield_core::Result<f64> {
        frechet_distance(&self.mean, &self.covariance, &other.mean, &other.covariance)
    }
}

/// The Fréchet distance between `N(μ₁, C₁)` and `N(μ₂, C₂)`:
/// `‖μ₁ − μ₂‖² + tr(C₁ + C₂ − 2(C₁C₂)^{1/2})`, the squared 2-Wasserstein distance of the two
/// Gaussians, computed in f64 (see the [module docs](self)); the covariances are row-major
/// `F × F`, symmetric positive semi-definite. Rounding can leave a tiny negative result,
/// which is returned as 0.
///
/// Errors with [`Error::ShapeMismatch`] if the lengths disagree and with [`Error::NonFinite`]
/// on a NaN or infinity.
///
/// ```
/// use scorefield_eval::frechet_distance;
///
/// // Equal covariances: the squared distance of the means.
/// let (mu1, mu2, c) = ([0.0, 0.0], [3.0, 4.0], [2.0, 0.5, 0.5, 1.0]);
/// assert!((frechet_distance(&mu1, &c, &mu2, &c)? - 25.0).abs() < 1e-9);
/// // Equal means, C₁ = I and C₂ = 4I: Σ (√1 − √4)² = 2 in two dimensions.
/// let (i, four) = ([1.0, 0.0, 0.0, 1.0], [4.0, 0.0, 0.0, 4.0]);
/// assert!((frechet_distance(&mu1, &i, &mu1, &four)? - 2.0).abs() < 1e-12);
/// # Ok::<(), scorefield_core::Error>(())
/// ```
pub fn frechet_distance(
    mu1: &[f64],
    cov1: &[f64],
    mu2: &[f64],
    cov2: &[f64],
) -> scorefield_core::Result<f64> {
    let d = mu1.len();
    if mu2.len() != d || cov1.len() != d * d || cov2.len() != d * d {
        return Err(Error::ShapeMismatch {
            context: "frechet_distance",
            expected: format!("means of length {d} and {d}×{d} covariances"),
            got: format!(
                "means of length {} and {}, covariances of {} and {} values",
                d,
                mu2.len(),
                cov1.len(),
                cov2.len()
            ),
        });
    }
    if [mu1, cov1, mu2, cov2].iter().any(|s| s.iter().any(|v| !v.is_finite())) {
        return Err(Error::NonFinite { context: "frechet_distance".into() });
    }
    let mean_term: f64 = mu1.iter().zip(mu2).map(|(a, b)| (a - b) * (a - b)).sum();
    let (c1, c2) = (symmetric(cov1, d), symmetric(cov2, d));
    let root1 = sqrt_psd(&c1);
    let middle = &root1 * &c2 * &root1;
    let middle = (&middle + middle.transpose()) * 0.5;
    let trace_root: f64 = middle.symmetric_eigenvalues().iter().map(|l| l.max(0.0).sqrt()).sum();
    Ok((mean_term + c1.trace() + c2.trace() - 2.0 * trace_root).max(0.0))
}

/// The row-major `n × n` matrix `a`, symmetrised: `(A + Aᵀ)/2`.
fn symmetric(a: &[f64], n: usize) -> DMatrix<f64> {
    let m = DMatrix::from_row_slice(n, n, a);
    (&m + m.transpose()) * 0.5
}

/// The symmetric square root `V diag(√max(λ, 0)) Vᵀ` of a symmetric positive semi-definite
/// matrix `A = V diag(λ) Vᵀ` (nalgebra's symmetric eigendecomposition: Householder
/// tridiagonalisation and implicit QR).
fn sqrt_psd(a: &DMatrix<f64>) -> DMatrix<f64> {
    let eigen = SymmetricEigen::new(a.clone());
    let roots = eigen.eigenvalues.map(|l| l.max(0.0).sqrt());
    &eigen.eigenvectors * DMatrix::from_diagonal(&roots) * eigen.eigenvectors.transpose()
}
#[cfg(test)]
mod tests {
    use super::*;
    use approx::assert_relative_eq;
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};

    fn diag(values: &[f64]) -> Vec<f64> {
        let n = values.len();
        let mut m = vec![0.0; n * n];
        for (i, v) in values.iter().enumerate() {
            m[i * n + i] = *v;
        }
        m
    }

    /// A random symmetric positive definite matrix `B Bᵀ + δI`.
    fn random_spd(n: usize, rng: &mut StdRng) -> Vec<f64> {
        let b: Vec<f64> = (0..n * n).map(|_| rng.random_range(-1.0..1.0)).collect();
        let mut m = vec![0.0; n * n];
        for i in 0..n {
            for j in 0..n {
                m[i * n + j] = (0..n).map(|k| b[i * n + k] * b[j * n + k]).sum::<f64>();
            }
            m[i * n + i] += 0.1;
        }
        m
    }

    #[test]
    fn the_square_root_squares_back_and_clips_negative_eigenvalues() {
        let mut rng = StdRng::seed_from_u64(1);
        let n = 12;
        let c = random_spd(n, &mut rng);
        let r = sqrt_psd(&symmetric(&c, n));
        assert_relative_eq!(r.clone(), r.transpose(), epsilon = 1e-12);
        let squared = &r * &r;
        for (x, y) in squared.transpose().iter().zip(&c) {
            assert_relative_eq!(*x, *y, epsilon = 1e-10);
        }
        // diag(4, −1) rotated by 30°: its root is diag(2, 0) rotated alike.
        let (cos, sin) = (30f64.to_radians().cos(), 30f64.to_radians().sin());
        let q = [cos, sin, -sin, cos];
        let root = sqrt_psd(&symmetric(&with_eigen(&q, &[4.0, -1.0]), 2));
        for (x, y) in root.transpose().iter().zip(&with_eigen(&q, &[2.0, 0.0])) {
            assert_relative_eq!(*x, *y, epsilon = 1e-12);
        }
    }

    #[test]
    fn frechet_distance_matches_closed_forms() {
        let mut rng = StdRng::seed_from_u64(2);
        let n = 6;
        let c = random_spd(n, &mut rng);
        let mu: Vec<f64> = (0..n).map(|i| i as f64 * 0.3 - 1.0).collect();
        // Identical Gaussians: 0.
        assert!(frechet_distance(&mu, &c, &mu, &c).unwrap().abs() < 1e-9);
        // Shifted means, same covariance: ‖Δμ‖².
        let shifted: Vec<f64> = mu.iter().enumerate().map(|(i, m)| m + i as f64).collect();
        let expected: f64 = (0..n).map(|i| (i * i) as f64).sum();
        assert_relative_eq!(
            frechet_distance(&mu, &c, &shifted, &c).unwrap(),
            expected,
            max_relative = 1e-9
        );
        // Diagonal covariances: Σ(√a − √b)², plus the mean term.
        let (a, b) = ([1.0, 4.0, 0.25, 9.0], [4.0, 1.0, 0.25, 0.0]);
        let expected: f64 =
            a.iter().zip(&b).map(|(x, y): (&f64, &f64)| (x.sqrt() - y.sqrt()).powi(2)).sum();
        let zero = [0.0; 4];
        let one = [1.0, 0.0, 0.0, 0.0];
        assert_relative_eq!(
            frechet_distance(&zero, &diag(&a), &one, &diag(&b)).unwrap(),
            expected + 1.0,
            max_relative = 1e-12
        );
        // Non-commuting 2×2 covariances: tr √(C₁C₂) = √(tr(C₁C₂) + 2√(det C₁ det C₂)).
        let (c1, c2) = ([2.0, 0.7, 0.7, 1.0], [0.5, -0.3, -0.3, 3.0]);
        let p = mul(&c1, &c2, 2);
        let det = |m: &[f64]| m[0] * m[3] - m[1] * m[2];
        let trace_root = (p[0] + p[3] + 2.0 * (det(&c1) * det(&c2)).sqrt()).sqrt();
        let expected = c1[0] + c1[3] + c2[0] + c2[3] - 2.0 * trace_root;
        assert_relative_eq!(
            frechet_distance(&[0.0; 2], &c1, &[0.0; 2], &c2).unwrap(),
            expected,
            max_relative = 1e-12
        );
        // Symmetric in its arguments.
        let d = random_spd(n, &mut rng);
        assert_relative_eq!(
            frechet_distance(&mu, &c, &shifted, &d).unwrap(),
            frechet_distance(&shifted, &d, &mu, &c).unwrap(),
            max_relative = 1e-9
        );
        assert!(matches!(
            frechet_distance(&mu, &c, &mu[1..], &c),
            Err(Error::ShapeMismatch { .. })
        ));
        assert!(matches!(
            frechet_distance(&[f64::NAN; 2], &c1, &[0.0; 2], &c2),
            Err(Error::NonFinite { .. })
        ));
    }

    /// `A·B` for row-major `n × n` matrices, written out for the oracles.
    fn mul(a: &[f64], b: &[f64], n: usize) -> Vec<f64> {
        let mut out = vec![0.0; n * n];
        for i in 0..n {
            for j in 0..n {
                out[i * n + j] = (0..n).map(|k| a[i * n + k] * b[k * n + j]).sum();
            }
        }
        out
    }

    /// A random orthogonal matrix: Gram–Schmidt on the rows of a random matrix.
    fn random_orthogonal(n: usize, rng: &mut StdRng) -> Vec<f64> {
        let mut q: Vec<f64> = (0..n * n).map(|_| rng.random_range(-1.0..1.0)).collect();
        for i in 0..n {
            for j in 0..i {
                let dot: f64 = (0..n).map(|k| q[i * n + k] * q[j * n + k]).sum();
                for k in 0..n {
                    q[i * n + k] -= dot * q[j * n + k];
                }
            }
            let norm = (0..n).map(|k| q[i * n + k] * q[i * n + k]).sum::<f64>().sqrt();
            (0..n).for_each(|k| q[i * n + k] /= norm);
        }
        q
    }

    /// `Q diag(λ) Qᵀ`: the symmetric matrix with eigenvalues `λ` and eigenvectors the rows of `Q`
    /// (as columns of `Qᵀ`).
    fn with_eigen(q: &[f64], values: &[f64]) -> Vec<f64> {
        let n = values.len();
        let mut m = vec![0.0; n * n];
        for i in 0..n {
            for j in 0..n {
                m[i * n + j] = (0..n).map(|k| q[k * n + i] * values[k] * q[k * n + j]).sum();
            }
        }
        m
    }

    #[test]
    fn frechet_distance_of_commuting_non_diagonal_covariances() {
        // C₁ = Q diag(a) Qᵀ and C₂ = Q diag(b) Qᵀ share their eigenvectors, so
        // d² = ‖μ₁ − μ₂‖² + Σ(√aᵢ − √bᵢ)², whatever the rotation Q.
        let mut rng = StdRng::seed_from_u64(3);
        let n = 16;
        let q = random_orthogonal(n, &mut rng);
        let a: Vec<f64> = (0..n).map(|_| rng.random_range(0.01..4.0)).collect();
        let mut b: Vec<f64> = (0..n).map(|_| rng.random_range(0.01..4.0)).collect();
        b[5] = 0.0; // positive semi-definite: one direction without variance
        let mu1: Vec<f64> = (0..n).map(|_| rng.random_range(-1.0..1.0)).collect();
        let mu2: Vec<f64> = (0..n).map(|_| rng.random_range(-1.0..1.0)).collect();
        let expected: f64 = mu1.iter().zip(&mu2).map(|(x, y)| (x - y).powi(2)).sum::<f64>()
            + a.iter().zip(&b).map(|(x, y)| (x.sqrt() - y.sqrt()).powi(2)).sum::<f64>();
        let got = frechet_distance(&mu1, &with_eigen(&q, &a), &mu2, &with_eigen(&q, &b)).unwrap();
        // The zero eigenvalue comes out as ±ε·‖C‖: its root, √ε ≈ 10⁻⁸, bounds the accuracy.
        assert_relative_eq!(got, expected, max_relative = 1e-7);
        b[5] = 0.5;
        let expected = expected - a[5].sqrt().powi(2) + (a[5].sqrt() - 0.5f64.sqrt()).powi(2);
        let got = frechet_distance(&mu1, &with_eigen(&q, &a), &mu2, &with_eigen(&q, &b)).unwrap();
        assert_relative_eq!(got, expected, max_relative = 1e-10);
    }

    #[test]
    fn frechet_distance_of_non_commuting_covariances_with_a_known_root() {
        // C₁ = P² and C₂ = P⁻¹M²P⁻¹ with P, M symmetric positive definite and different
        // eigenvectors: C₁^{1/2} C₂ C₁^{1/2} = M², so tr (C₁C₂)^{1/2} = tr M = Σ mᵢ and
        // d² = Σ pᵢ² + tr C₂ − 2 Σ mᵢ (equal means).
        let mut rng = StdRng::seed_from_u64(4);
        let n = 12;
        let (qp, qm) = (random_orthogonal(n, &mut rng), random_orthogonal(n, &mut rng));
        let p: Vec<f64> = (0..n).map(|_| rng.random_range(0.3..2.0)).collect();
        let m: Vec<f64> = (0..n).map(|_| rng.random_range(0.1..3.0)).collect();
        let p_inv = with_eigen(&qp, &p.iter().map(|v| 1.0 / v).collect::<Vec<_>>());
        let m2 = with_eigen(&qm, &m.iter().map(|v| v * v).collect::<Vec<_>>());
        let c1 = with_eigen(&qp, &p.iter().map(|v| v * v).collect::<Vec<_>>());
        let c2 = mul(&mul(&p_inv, &m2, n), &p_inv, n);
        let c2: Vec<f64> = (0..n * n).map(|k| 0.5 * (c2[k] + c2[(k % n) * n + k / n])).collect();
        let trace_c2: f64 = (0..n).map(|i| c2[i * n + i]).sum();
        let expected =
            p.iter().map(|v| v * v).sum::<f64>() + trace_c2 - 2.0 * m.iter().sum::<f64>();
        assert!(expected > 1.0, "a case far from 0: {expected}");
        let mu = vec![0.5; n];
        assert_relative_eq!(
            frechet_distance(&mu, &c1, &mu, &c2).unwrap(),
            expected,
            max_relative = 1e-9
        );
        assert_relative_eq!(
            frechet_distance(&mu, &c2, &mu, &c1).unwrap(),
            expected,
            max_relative = 1e-9
        );
    }

    #[test]
    fn feature_statistics_are_the_sample_mean_and_unbiased_covariance() {
        let rows = [1.0, 2.0, 3.0, 6.0, 5.0, 4.0];
        let s = FeatureStatistics::from_rows(&rows, 2).unwrap();
        assert_eq!(s.count, 3);
        assert_eq!(s.mean, [3.0, 4.0]);
        // Centred rows (−2, −2), (0, 2), (2, 0): C = [[8, 4], [4, 8]] / 2.
        assert_eq!(s.covariance, [4.0, 2.0, 2.0, 4.0]);
        assert!(FeatureStatistics::from_rows(&rows[..2], 2).is_err());
        assert!(FeatureStatistics::from_rows(&rows[..5], 2).is_err());
        assert!(FeatureStatistics::from_rows(&[1.0, f64::INFINITY, 0.0, 0.0], 2).is_err());
    }
}
