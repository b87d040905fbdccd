//! Toy two-dimensional data sets, each an exact [`GaussianMixture`] so that the true
//! (perturbed) score is known everywhere.

use scorefield_core::Result;
use scorefield_core::analytic::GaussianMixture;

/// `k` equally weighted components of standard deviation `std`, their means evenly spaced on
/// a circle of the given `radius` (the "8 Gaussians" set for `k = 8`).
pub fn ring(k: usize, radius: f64, std: f64) -> Result<GaussianMixture> {
    let means: Vec<Vec<f64>> = (0..k)
        .map(|i| {
            let a = 2.0 * core::f64::consts::PI * i as f64 / k as f64;
            vec![radius * a.cos(), radius * a.sin()]
        })
        .collect();
    GaussianMixture::new(&vec![1.0; k], &means, &vec![std; k])
}

/// The mode-weight experiment of Song & Ermon (2019) and the CS236 lecture: two
/// well-separated components at `(−5, −5)` and `(5, 5)`, standard deviation 1, with weights
/// 2/3 and 1/3. Plain Langevin with the clean score gets the weights wrong; annealed Langevin
/// recovers them.
pub fn unequal_modes() -> Result<GaussianMixture> {
    GaussianMixture::new(&[2.0 / 3.0, 1.0 / 3.0], &[vec![-5.0, -5.0], vec![5.0, 5.0]], &[1.0, 1.0])
}

#[cfg(test)]
mod tests {
    use super::*;
    use approx::assert_relative_eq;

    #[test]
    fn ring_means_lie_on_the_circle_evenly_spaced() {
        let m = ring(8, 4.0, 0.1).unwrap();
        assert_eq!(m.weights().len(), 8);
        for (i, mean) in m.means().iter().enumerate() {
            assert_relative_eq!(mean[0].hypot(mean[1]), 4.0, epsilon = 1e-12);
            let next = &m.means()[(i + 1) % 8];
            let gap = (mean[0] - next[0]).hypot(mean[1] - next[1]);
            assert_relative_eq!(
                gap,
                2.0 * 4.0 * (core::f64::consts::PI / 8.0).sin(),
                epsilon = 1e-12
            );
        }
        assert!(ring(0, 1.0, 1.0).is_err());
        assert!(ring(4, 1.0, 0.0).is_err());
    }

    #[test]
    fn unequal_modes_weights() {
        let m = unequal_modes().unwrap();
        assert_relative_eq!(m.weights()[0], 2.0 / 3.0, epsilon = 1e-12);
        assert_relative_eq!(m.weights()[1], 1.0 / 3.0, epsilon = 1e-12);
    }
}
