//! The same computations on every compiled-in backend agree with flex.
//!
//! `ndarray` and `wgpu` are cargo features; CI runs this module with both enabled (wgpu on
//! Mesa's lavapipe there, a real GPU elsewhere).

#![cfg_attr(not(any(feature = "ndarray", feature = "wgpu")), allow(dead_code))]

use burn::tensor::{Device, Tensor, TensorData};
use rand::SeedableRng;
use rand::rngs::StdRng;
use scorefield::analytic::{Gaussian, GaussianMixture};
use scorefield::schedule::{VeSde, VpSde};
use scorefield::{NoiseLevel, NoiseSchedule, ScoreJvp, ScoreModel};

use crate::common::{flex, values};

/// Oracle scores, JVPs, log-densities and prior log-densities on `device`, from inputs drawn
/// on the host with a fixed seed (so every backend sees the same numbers).
fn workload(device: &Device) -> Vec<(&'static str, Vec<f64>)> {
    let mut rng = StdRng::seed_from_u64(11);
    let n = 64;
    let mixture = GaussianMixture::new(
        &[0.3, 0.7],
        &[vec![-2.0, 1.0, 0.0], vec![1.5, -0.5, 1.0]],
        &[0.5, 0.8],
    )
    .unwrap();
    let vp = VpSde::new(0.1, 20.0).unwrap();
    let ve = VeSde::new(0.01, 50.0).unwrap();
    let x = vp.prior_sample([n, 3], device, &mut rng);
    let v = vp.prior_sample([n, 3], device, &mut rng);
    let times: Vec<f64> = (0..n).map(|i| 0.01 + 0.98 * i as f64 / (n - 1) as f64).collect();
    let level = NoiseLevel::at_times(&vp, &times, device);
    let (score, jvp) = mixture.score_jvp(x.clone(), &level, v);
    let gaussian = Gaussian::diagonal(&[0.5, -1.0, 2.0], &[0.3, 1.0, 2.5]).unwrap();
    let ve_level = NoiseLevel::at_times(&ve, &times, device);
    vec![
        ("mixture score", values(score)),
        ("mixture jvp", values(jvp)),
        ("mixture log p", values(mixture.log_prob_at(x.clone(), &level))),
        ("gaussian score (ve)", values(gaussian.score(x.clone(), &ve_level))),
        ("prior log p", values(ve.prior_log_prob(x.clone().mul_scalar(10.0)))),
        (
            "clean log p",
            values(mixture.log_prob(Tensor::<2>::from_data(
                TensorData::new(vec![0.5f32; 3 * 4], [4, 3]),
                device,
            ))),
        ),
    ]
}

fn assert_agrees_with_flex(device: &Device) {
    let want = workload(&flex());
    let got = workload(device);
    for ((name, a), (_, b)) in got.iter().zip(&want) {
        assert_eq!(a.len(), b.len());
        for (x, y) in a.iter().zip(b) {
            let tol = 1e-5 * y.abs().max(1.0);
            assert!((x - y).abs() <= tol, "{name}: {x} on {device:?} vs {y} on flex");
        }
    }
}

#[cfg(feature = "ndarray")]
#[test]
fn ndarray_agrees_with_flex() {
    assert_agrees_with_flex(&scorefield::device("ndarray").unwrap());
}

#[cfg(feature = "wgpu")]
#[test]
fn wgpu_agrees_with_flex() {
    assert_agrees_with_flex(&scorefield::device("wgpu").unwrap());
}
