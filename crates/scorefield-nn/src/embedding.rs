//! Sinusoidal noise-level embedding.
//!
//! A scalar `c` per batch element (NCSN++ and the NCSN U-Net use `c = ln σ`, DDPM the step
//! index) becomes `dim` features `[sin(c·ω₀), …, sin(c·ω_{h−1}), cos(c·ω₀), …, cos(c·ω_{h−1})]`
//! with `h = dim/2` and geometric frequencies `ωⱼ = max_period^(−j/h)`, `j = 0..h`.
//! The embedding depends on the noise level only, so its Jacobian with respect to the
//! network's input `x` is zero.

use burn::nn::Embedding;
use burn::tensor::{Int, Tensor, TensorData};
use scorefield_core::condition::Labels;
use scorefield_core::{Error, Result};

/// The frequencies `ωⱼ = max_period^(−j/h)`, `j = 0..h`, in f64.
pub fn sinusoidal_frequencies(dim: usize, max_period: f64) -> Result<Vec<f64>> {
    if dim == 0 || !dim.is_multiple_of(2) {
        return Err(Error::invalid("dim", dim, "must be a positive even number"));
    }
    scorefield_core::error::ensure_positive("max_period", max_period)?;
    let half = dim / 2;
    Ok((0..half).map(|j| (-(max_period.ln()) * j as f64 / half as f64).exp()).collect())
}

/// Embeds each value of `c` (shape `[B]`) as `dim` sinusoidal features, shape `[B, dim]`.
///
/// ```
/// let device = scorefield_core::device("flex")?;
/// let log_sigma = burn::tensor::Tensor::<1>::from_floats([0.0, -4.6], &device);
/// let features = scorefield_nn::embedding::sinusoidal_embedding(log_sigma, 64, 10_000.0)?;
/// assert_eq!(features.dims(), [2, 64]);
/// # Ok::<(), scorefield_core::Error>(())
/// ```
pub fn sinusoidal_embedding(c: Tensor<1>, dim: usize, max_period: f64) -> Result<Tensor<2>> {
    let freqs = sinusoidal_frequencies(dim, max_period)?;
    let half = freqs.len();
    let b = c.dims()[0];
    let freqs = Tensor::<2>::from_data(TensorData::new(freqs, [1, half]), (&c.device(), c.dtype()));
    let angles = c.reshape([b, 1]).mul(freqs);
    Ok(Tensor::cat(vec![angles.clone().sin(), angles.cos()], 1))
}

/// The rows `E[y]` of a class-embedding table of `classes + 1` rows for `b` samples, `[b,
/// dim]`: row `y` for label `y`, row `classes` for the null class and for every sample when
/// `labels` is `None`. A label past `classes` (refused earlier by the models' validation)
/// maps to the null row, and a label batch of another size than `b` to `b` null rows: the
/// output always has `b` rows, so a forward pass cannot panic.
pub fn class_embedding(
    table: &Embedding,
    labels: Option<&Labels>,
    b: usize,
    classes: usize,
) -> Tensor<2> {
    let ids: Vec<i64> = match labels {
        Some(y) if y.len() == b => {
            y.ids().iter().map(|c| c.filter(|&c| c < classes).unwrap_or(classes) as i64).collect()
        }
        _ => vec![classes as i64; b],
    };
    let device = table.weight.val().device();
    let ids = Tensor::<2, Int>::from_data(TensorData::new(ids, [b, 1]), &device);
    let rows = table.forward(ids);
    let dim = rows.dims()[2];
    rows.reshape([b, dim])
}

/// A class-conditional network (`classes > 0`) used without labels: the
/// [`Error::MissingCondition`] its `validate` returns, naming `network`; `Ok` for an
/// unconditional one.
pub fn check_unconditional_use(network: &str, classes: usize) -> Result<()> {
    if classes > 0 {
        return Err(Error::MissingCondition { model: format!("{network} with {classes} classes") });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use approx::assert_relative_eq;

    #[test]
    fn matches_closed_form() {
        let device = crate::testing::device();
        let values = [0.0f64, -2.3, 1.7];
        let c = Tensor::<1>::from_data(TensorData::new(values.to_vec(), [3]), &device);
        let got = sinusoidal_embedding(c, 8, 100.0).unwrap().try_into_vec_as::<f32>().unwrap();
        for (i, &v) in values.iter().enumerate() {
            for j in 0..4 {
                let w = 100f64.powf(-(j as f64) / 4.0);
                assert_relative_eq!(got[i * 8 + j] as f64, (v * w).sin(), epsilon = 1e-6);
                assert_relative_eq!(got[i * 8 + 4 + j] as f64, (v * w).cos(), epsilon = 1e-6);
            }
        }
    }

    #[test]
    fn rejects_odd_or_zero_dim_and_bad_period() {
        for dim in [0, 3] {
            assert!(matches!(
                sinusoidal_frequencies(dim, 10.0),
                Err(Error::InvalidParameter { name: "dim", .. })
            ));
        }
        assert!(matches!(
            sinusoidal_frequencies(4, f64::NAN),
            Err(Error::InvalidParameter { name: "max_period", .. })
        ));
    }
}
