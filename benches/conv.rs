//! The fused convolution (`scorefield::nn::conv2d`) against Burn's stock `conv2d` on flex, for
//! every convolution shape of `NcsnUnetConfig::new()` at batch 64 (workload B's): each rep runs
//! the forward, and the forward + backward of `Σ v·y` (input, weight and bias gradients), once
//! stock, once fused with im2col only and once fused with Winograd where it applies (3×3
//! same), in turn; prints the median milliseconds of each and the ratios to stock.
//!
//! ```text
//! cargo bench --bench conv -- [--threads T] [--reps R] [--width W]
//! ```
//! `--width W` scales every channel count but the image's (1) by `W/32` (the main example's
//! default network is width 16).
//! Results in `docs/performance.md`.

use std::time::Instant;

use burn::tensor::{Device, Tensor, TensorData};
use rand::SeedableRng;
use rand::rngs::StdRng;
use rand_distr::{Distribution, StandardNormal};
use scorefield::nn::{Conv2dOptions, ConvAlgorithm, conv2d};

/// `(name, c_in, c_out, side of the input, kernel, stride, padding, count in one U-Net
/// forward)`.
type Shape = (&'static str, usize, usize, usize, usize, usize, usize, usize);
const SHAPES: [Shape; 11] = [
    ("conv_in 1→32 28²", 1, 32, 28, 3, 1, 1, 1),
    ("32→32 28²", 32, 32, 28, 3, 1, 1, 3),
    ("down 32→64 28²/2", 32, 64, 28, 3, 2, 1, 1),
    ("64→64 14²", 64, 64, 14, 3, 1, 1, 3),
    ("down 64→128 14²/2", 64, 128, 14, 3, 2, 1, 1),
    ("128→128 7²", 128, 128, 7, 3, 1, 1, 2),
    ("up 128→64 14²", 128, 64, 14, 3, 1, 1, 2),
    ("skip 1×1 128→64 14²", 128, 64, 14, 1, 1, 0, 1),
    ("up 64→32 28²", 64, 32, 28, 3, 1, 1, 2),
    ("skip 1×1 64→32 28²", 64, 32, 28, 1, 1, 0, 1),
    ("conv_out 32→1 28²", 32, 1, 28, 3, 1, 1, 1),
];
const BATCH: usize = 64;

fn normal<const D: usize>(shape: [usize; D], rng: &mut StdRng, device: &Device) -> Tensor<D> {
    let n = shape.iter().product();
    let v: Vec<f32> = (0..n).map(|_| StandardNormal.sample(rng)).collect();
    Tensor::from_data(TensorData::new(v, shape), device)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// mimalloc, keeping the memory it frees (see the module).
#[path = "../examples/common/alloc.rs"]
mod alloc;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let flag = |name: &str, default: usize| {
        args.iter()
            .position(|a| a == name)
            .map_or(default, |i| args[i + 1].parse().expect("a number after the flag"))
    };
    let (threads, reps, width) = (flag("--threads", 0), flag("--reps", 5), flag("--width", 32));
    let scale = |c: usize| if c == 1 { 1 } else { c * width / 32 };
    if threads > 0 {
        rayon::ThreadPoolBuilder::new().num_threads(threads).build_global().unwrap();
    }
    let device = scorefield::device("flex").unwrap().autodiff();
    let mut rng = StdRng::seed_from_u64(0);
    println!(
        "{:<22} {:>8} {:>7} {:>7} | {:>8} {:>7} {:>7}   (ms; fused/stock ratios: im2col, Winograd)",
        "shape", "fwd", "im2col", "wino", "f+b", "im2col", "wino"
    );
    let mut totals = [0.0; 3];
    for (name, cin, cout, side, k, stride, pad, count) in SHAPES {
        let (cin, cout) = (scale(cin), scale(cout));
        // The name with this width's channel counts in place of its `a→b`.
        let arrow = name.find('→').expect("a→b in every name");
        let start = name[..arrow].rfind(|c: char| !c.is_ascii_digit()).map_or(0, |i| i + 1);
        let after = &name[arrow + '→'.len_utf8()..];
        let end = after.find(|c: char| !c.is_ascii_digit()).unwrap_or(after.len());
        let name = format!("{}{cin}→{cout}{}", &name[..start], &after[end..]);
        let x = normal([BATCH, cin, side, side], &mut rng, &device).require_grad();
        let w = normal([cout, cin, k, k], &mut rng, &device).require_grad();
        let b = normal([cout], &mut rng, &device).require_grad();
        let options = Conv2dOptions::new(stride, pad);
        let out = conv2d(x.clone(), w.clone(), None, options).unwrap().dims();
        let v = normal(out, &mut rng, &device);
        let variants = [
            options.with_fused(false),
            options.with_algorithm(ConvAlgorithm::Im2col),
            options.with_algorithm(ConvAlgorithm::Winograd),
        ];
        let mut times: [Vec<f64>; 6] = Default::default();
        for _ in 0..reps + 1 {
            for (i, o) in variants.into_iter().enumerate() {
                let t = Instant::now();
                let y = conv2d(x.clone().detach(), w.clone().detach(), Some(b.clone().detach()), o);
                let _ = y.unwrap().into_data();
                times[i].push(t.elapsed().as_secs_f64());
                let t = Instant::now();
                let y = conv2d(x.clone(), w.clone(), Some(b.clone()), o).unwrap();
                let grads = y.mul(v.clone()).sum().backward();
                for g in
                    [x.grad(&grads).map(|g| g.into_data()), w.grad(&grads).map(|g| g.into_data())]
                {
                    g.expect("a gradient");
                }
                times[3 + i].push(t.elapsed().as_secs_f64());
            }
        }
        let [fs, fi, fw, bs, bi, bw] = times.map(|mut t| median(t.split_off(1)));
        for (total, t) in totals.iter_mut().zip([bs, bi, bw]) {
            *total += count as f64 * t;
        }
        println!(
            "{name:<22} {:>8.2} {:>7.2} {:>7.2} | {:>8.2} {:>7.2} {:>7.2}",
            fs * 1e3,
            fi / fs,
            fw / fs,
            bs * 1e3,
            bi / bs,
            bw / bs
        );
    }
    let [s, i, w] = totals;
    println!(
        "one U-Net's convolutions, forward + backward: stock {s:.3} s, im2col {i:.3} s ({:.2}), Winograd {w:.3} s ({:.2})",
        i / s,
        w / s
    );
}
