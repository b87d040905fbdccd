//! Two-sample statistics for testing samplers against true samples.
//!
//! The energy distance `E(X, Y) = 2 E|X − Y| − E|X − X'| − E|Y − Y'|` is zero exactly when the
//! two distributions are equal; its null distribution is estimated by permutation of the
//! pooled samples, so a test rejects only when the observed value exceeds what relabelling
//! produces.

use rand::SeedableRng;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;

/// Rows of a flattened `[n, d]` sample.
fn rows(x: &[f64], d: usize) -> Vec<&[f64]> {
    x.chunks(d).collect()
}

fn mean_distance(a: &[&[f64]], b: &[&[f64]], same: bool) -> f64 {
    let mut total = 0.0;
    let mut count = 0usize;
    for (i, p) in a.iter().enumerate() {
        for (j, q) in b.iter().enumerate() {
            if same && i == j {
                continue;
            }
            total += p.iter().zip(q.iter()).map(|(u, v)| (u - v).powi(2)).sum::<f64>().sqrt();
            count += 1;
        }
    }
    total / count as f64
}

/// The (U-statistic) energy distance between two samples of dimension `d`.
pub fn energy_distance(x: &[f64], y: &[f64], d: usize) -> f64 {
    let (a, b) = (rows(x, d), rows(y, d));
    2.0 * mean_distance(&a, &b, false) - mean_distance(&a, &a, true) - mean_distance(&b, &b, true)
}

/// The `1 − alpha` quantile of the energy distance under the null, from `permutations`
/// random relabellings of the pooled samples. The pooled distance matrix is computed once;
/// each permutation only re-sums it.
pub fn permutation_threshold(
    x: &[f64],
    y: &[f64],
    d: usize,
    permutations: usize,
    alpha: f64,
    seed: u64,
) -> f64 {
    let pooled: Vec<&[f64]> = rows(x, d).into_iter().chain(rows(y, d)).collect();
    let (n, total) = (x.len() / d, pooled.len());
    let mut dist = vec![0.0; total * total];
    for i in 0..total {
        for j in 0..i {
            let v =
                pooled[i].iter().zip(pooled[j]).map(|(u, w)| (u - w).powi(2)).sum::<f64>().sqrt();
            dist[i * total + j] = v;
            dist[j * total + i] = v;
        }
    }
    let mut rng = StdRng::seed_from_u64(seed);
    let mut order: Vec<usize> = (0..total).collect();
    let mut group = vec![false; total];
    let mut stats: Vec<f64> = (0..permutations)
        .map(|_| {
            order.shuffle(&mut rng);
            for (k, &i) in order.iter().enumerate() {
                group[i] = k < n;
            }
            // Sums of distances within the first group, within the second, and across.
            let (mut aa, mut bb, mut ab) = (0.0, 0.0, 0.0);
            for i in 0..total {
                let row = &dist[i * total..i * total + i];
                for (j, &v) in row.iter().enumerate() {
                    match (group[i], group[j]) {
                        (true, true) => aa += v,
                        (false, false) => bb += v,
                        _ => ab += v,
                    }
                }
            }
            let m = (total - n) as f64;
            let nf = n as f64;
            2.0 * ab / (nf * m) - 2.0 * aa / (nf * (nf - 1.0)) - 2.0 * bb / (m * (m - 1.0))
        })
        .collect();
    stats.sort_by(f64::total_cmp);
    stats[((1.0 - alpha) * permutations as f64).ceil() as usize - 1]
}

/// Asserts that `x` and `y` (flattened `[n, d]`) are not distinguishable by the energy
/// distance at level `alpha`, with the null threshold from 200 permutations.
pub fn assert_same_distribution(name: &str, x: &[f64], y: &[f64], d: usize, alpha: f64) {
    let observed = energy_distance(x, y, d);
    let threshold = permutation_threshold(x, y, d, 200, alpha, 99);
    eprintln!(
        "{name}: energy distance {observed:.5} (null {:.0}% quantile {threshold:.5})",
        100.0 * (1.0 - alpha)
    );
    assert!(
        observed <= threshold,
        "{name}: energy distance {observed} > null threshold {threshold}"
    );
}

/// Per-coordinate mean and the covariance matrix (row-major `d × d`) of a flattened sample.
pub fn mean_cov(x: &[f64], d: usize) -> (Vec<f64>, Vec<f64>) {
    let n = (x.len() / d) as f64;
    let mut mean = vec![0.0; d];
    for r in x.chunks(d) {
        for (m, v) in mean.iter_mut().zip(r) {
            *m += v / n;
        }
    }
    let mut cov = vec![0.0; d * d];
    for r in x.chunks(d) {
        for i in 0..d {
            for j in 0..d {
                cov[i * d + j] += (r[i] - mean[i]) * (r[j] - mean[j]) / (n - 1.0);
            }
        }
    }
    (mean, cov)
}

/// Asserts that the mean and covariance of `got` match `want` within `k` standard errors of
/// the difference of two independent sample estimates (normal approximation, using the
/// fourth moments of `want` for the covariance entries).
pub fn assert_moments_match(name: &str, got: &[f64], want: &[f64], d: usize, k: f64) {
    let (mg, cg) = mean_cov(got, d);
    let (mw, cw) = mean_cov(want, d);
    let (ng, nw) = ((got.len() / d) as f64, (want.len() / d) as f64);
    for i in 0..d {
        let se = (cw[i * d + i] / ng + cw[i * d + i] / nw).sqrt();
        assert!(
            (mg[i] - mw[i]).abs() <= k * se,
            "{name}: mean[{i}] {} vs {} (se {se})",
            mg[i],
            mw[i]
        );
        for j in 0..d {
            // Var of the sample covariance entry: E[(xi − μi)²(xj − μj)²] − cov², estimated from `want`.
            let m4: f64 =
                want.chunks(d).map(|r| ((r[i] - mw[i]) * (r[j] - mw[j])).powi(2)).sum::<f64>() / nw;
            let var = m4 - cw[i * d + j].powi(2);
            let se = (var / ng + var / nw).sqrt();
            let (a, b) = (cg[i * d + j], cw[i * d + j]);
            assert!((a - b).abs() <= k * se, "{name}: cov[{i},{j}] {a} vs {b} (se {se})");
        }
    }
}

#[test]
fn energy_distance_separates_shifted_samples_and_accepts_equal_ones() {
    use rand_distr::{Distribution, StandardNormal};
    let mut rng = StdRng::seed_from_u64(5);
    let mut draw = |shift: f64| -> Vec<f64> {
        (0..600)
            .map(|_| {
                let z: f64 = StandardNormal.sample(&mut rng);
                z + shift
            })
            .collect()
    };
    let (a, b, c) = (draw(0.0), draw(0.0), draw(0.5));
    let threshold = permutation_threshold(&a, &b, 2, 200, 0.01, 1);
    assert!(energy_distance(&a, &b, 2) <= threshold);
    assert!(energy_distance(&a, &c, 2) > permutation_threshold(&a, &c, 2, 200, 0.01, 1));
}
