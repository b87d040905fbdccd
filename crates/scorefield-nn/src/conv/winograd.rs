//! Winograd's minimal filtering F(2×2, 3×3) for the 3×3 convolutions of stride 1 and padding 1
//! (the U-Net's "same" convolutions): the forward; the input gradient, which is the same
//! convolution of `∂ℓ/∂y` with the kernel flipped and its channel axes swapped; and the weight
//! gradient by the transposed algorithm F(3×3, 2×2) ([`weight_gradient`]).
//!
//! Each output tile `Y` (2×2) comes from the input tile `d` (4×4, the tile's pixels and a
//! one-pixel border, 0 outside the image) of every input channel (Lavin & Gray, *Fast
//! Algorithms for Convolutional Neural Networks*, 2016):
//! ```text
//! U = G·w·Gᵀ   (per output and input channel: 4×4 from the 3×3 kernel)
//! V = Bᵀ·d·B   (per input channel and tile)
//! M_ξ = U_ξ·V_ξ            for each of the 16 positions ξ: a [C', C]·[C, tiles] product
//! Y = Aᵀ·M·A (+ b)
//!     ⎡1  0 −1  0⎤        ⎡1    0    0 ⎤
//! Bᵀ= ⎢0  1  1  0⎥    G = ⎢½    ½    ½ ⎥    Aᵀ = ⎡1 1  1  0⎤
//!     ⎢0 −1  1  0⎥        ⎢½   −½    ½ ⎥         ⎣0 1 −1 −1⎦
//!     ⎣0  1  0 −1⎦        ⎣0    0    1 ⎦
//! ```
//! 16 products per tile of 4 outputs instead of 36: the multiplications drop 2.25×, and the
//! 16 matrix products run through the same `gemm` kernels as the im2col path. The samples are
//! taken in chunks of about [`TILES`] tiles (at least 8 chunks), a size fixed by the geometry
//! (not the thread count), so the result is the same on any number of threads.

use std::mem::MaybeUninit;

use rayon::prelude::*;

use super::ConvAlgorithm;
use super::fused::kernel::Geometry;
use crate::flex::{Real, assume_init, matmul, sum_in_order, uninit, zeroed};

/// Tiles per task (whole samples, at least one): small enough that a task's `V` and `M`
/// (`16·(C + C')` values per tile, 1 MB at 128 + 128 channels) stay near the core's cache.
/// 256 measured 4–5 % slower on the U-Net's training step on a host with busy neighbours
/// (`docs/performance.md`).
const TILES: usize = 64;

/// Whether `algorithm` runs Winograd for this convolution: a 3×3 of stride 1 with one pixel of
/// padding on every side, and for [`ConvAlgorithm::Auto`] at least 16 input channels. (With
/// the plane-wise transforms it beat im2col on every such convolution of the U-Net at widths
/// 16 and 32, down to 16 → 16 and 16 → 1, and lost on the 1-channel input's; `benches/conv.rs`,
/// `docs/performance.md`.)
pub(super) fn applies(g: &Geometry, algorithm: ConvAlgorithm) -> bool {
    let same = (g.kh, g.kw, g.sh, g.sw, g.pt, g.pl) == (3, 3, 1, 1, 1, 1);
    let wide = match algorithm {
        ConvAlgorithm::Auto => g.c >= 16,
        ConvAlgorithm::Im2col => return false,
        ConvAlgorithm::Winograd => true,
    };
    same && g.oh == g.h && g.ow == g.w && wide
}

/// `U = G·w·Gᵀ` of every (output, input) channel pair, `[16, C', C]`.
fn transform_weights<E: Real>(w: &[E], cout: usize, c: usize) -> Vec<E> {
    let half = E::of(0.5);
    let mut u = vec![E::default(); 16 * cout * c];
    for (pair, k) in w.chunks_exact(9).enumerate() {
        // G·w: rows 0 and 3 are w's first and last rows, rows 1 and 2 ½(w₀ ± w₁ + w₂).
        let mut t = [[E::default(); 3]; 4];
        for j in 0..3 {
            let (a, b, d) = (k[j], k[3 + j], k[6 + j]);
            t[0][j] = a;
            t[1][j] = (a + b + d) * half;
            t[2][j] = (a - b + d) * half;
            t[3][j] = d;
        }
        for (r, t) in t.iter().enumerate() {
            let row = [t[0], (t[0] + t[1] + t[2]) * half, (t[0] - t[1] + t[2]) * half, t[2]];
            for (s, v) in row.into_iter().enumerate() {
                u[(r * 4 + s) * cout * c + pair] = v;
            }
        }
    }
    u
}

/// Scratch of one task: `V` (`[16, C, tiles]`), `M` (`[16, C', tiles]`; the weight gradient
/// keeps the transformed output gradient `D`, of the same shape, there), and the transforms'
/// `rows` and `half` ([`Scratch::fit`]).
#[derive(Default)]
struct Scratch<E> {
    v: Vec<E>,
    m: Vec<E>,
    rows: Vec<E>,
    half: Vec<E>,
}

impl<E: Real> Scratch<E> {
    /// Sizes `rows` and `half` for planes of `th × tw` tiles: `rows` holds a padded row's even
    /// and odd columns (`2(tw + 1)`) or a plane's even and odd output columns (`4·tiles`),
    /// `half` the row-transformed padded rows (`8(th + 1)·tw`) or a plane's `Aᵀ·M` (`8·tiles`).
    fn fit(&mut self, th: usize, tw: usize) {
        let zero = E::default();
        self.rows.resize((2 * (tw + 1)).max(4 * th * tw), zero);
        self.half.resize(8 * (th + 1) * tw, zero);
    }
}

/// `out[b] = f(a[b], b_[b], c[b], d[b])` over four equal slices (a loop that vectorises).
#[inline(always)]
fn map4<E: Real>(out: &mut [E], a: &[E], b: &[E], c: &[E], d: &[E], f: impl Fn(E, E, E, E) -> E) {
    let n = out.len();
    let (a, b, c, d) = (&a[..n], &b[..n], &c[..n], &d[..n]);
    for i in 0..n {
        out[i] = f(a[i], b[i], c[i], d[i]);
    }
}

/// Splits an input row `x` into its padded row's even columns `e[k] = x[2k − 1]` and odd
/// columns `o[k] = x[2k]` (`⌈w/2⌉ + 1` each, 0 outside the row): pairs of `x`, no branch.
#[inline(always)]
fn deinterleave<E: Real>(x: &[E], e: &mut [E], o: &mut [E]) {
    let (zero, pairs) = (E::default(), x.len() / 2);
    e[0] = zero;
    for ((pair, ok), ek) in x.chunks_exact(2).zip(&mut o[..pairs]).zip(&mut e[1..=pairs]) {
        *ok = pair[0];
        *ek = pair[1];
    }
    let odd_tail = x.len() % 2;
    if odd_tail == 1 {
        o[pairs] = x[x.len() - 1];
    }
    o[pairs + odd_tail..].fill(zero);
    e[pairs + 1..].fill(zero);
}

/// Row `y` of a `plane` of `h` rows of `w` split as [`deinterleave`] splits it, or zeros for a
/// row outside the plane (the padding: `y ≥ h`, including `usize::MAX` for the row above).
#[inline(always)]
fn padded_row<E: Real>(plane: &[E], (h, w): (usize, usize), y: usize, e: &mut [E], o: &mut [E]) {
    if y < h {
        deinterleave(&plane[y * w..][..w], e, o);
    } else {
        e.fill(E::default());
        o.fill(E::default());
    }
}

/// An output row from its even columns `even[k] = y[2k]` and odd ones `odd[k] = y[2k + 1]`.
#[inline(always)]
fn interleave<E: Real>(even: &[E], odd: &[E], y: &mut [E]) {
    let pairs = y.len() / 2;
    for ((pair, &a), &b) in y.chunks_exact_mut(2).zip(&even[..pairs]).zip(&odd[..pairs]) {
        pair[0] = a;
        pair[1] = b;
    }
    if y.len() % 2 == 1 {
        y[2 * pairs] = even[pairs];
    }
}

/// `V = Bᵀ·d·B` of every input channel and tile of the samples in `x` into `v`
/// (`[16, C, tiles]`, the tiles of sample `s` from column `s·tiles`); `rows` and `half` are
/// scratch ([`Scratch::fit`]). Each channel's plane is transformed whole, so that the loops run
/// along all its tiles and vectorise: each padded input row (row `p` is input row `p − 1`,
/// 0 outside) is split into even and odd columns and transformed along the row (`d·B`) once,
/// into `half` by the row's parity; then `Bᵀ·(d·B)` down the columns, for tile `(a, b)` from
/// padded rows `2a … 2a + 3`, is one pass over four shifted runs of `half`.
#[inline(always)]
fn input_transform<E: Real>(g: &Geometry, x: &[E], v: &mut [E], rows: &mut [E], half: &mut [E]) {
    let (h, w, c) = (g.h, g.w, g.c);
    let (th, tw) = (h.div_ceil(2), w.div_ceil(2));
    let tiles = th * tw;
    let samples = x.len() / (c * h * w);
    let nt = v.len() / (16 * c);
    // half[(q·2 + parity)·run + a·tw + b]: (d·B)_q of padded row 2a + parity, column b.
    let run = (th + 1) * tw;
    for s in 0..samples {
        let xn = &x[s * c * h * w..][..c * h * w];
        for (ci, plane) in xn.chunks_exact(h * w).enumerate() {
            for p in 0..2 * th + 2 {
                let (e, o) = rows[..2 * (tw + 1)].split_at_mut(tw + 1);
                padded_row(plane, (h, w), p.wrapping_sub(1), e, o);
                // d·B along the row, d = (e[b], o[b], e[b+1], o[b+1]).
                let (e0, o0, e1, o1) = (&e[..tw], &o[..tw], &e[1..], &o[1..]);
                let at = |q: usize| ((q * 2 + p % 2) * (th + 1) + p / 2) * tw;
                map4(&mut half[at(0)..][..tw], e0, o0, e1, o1, |d0, _, d2, _| d0 - d2);
                map4(&mut half[at(1)..][..tw], e0, o0, e1, o1, |_, d1, d2, _| d1 + d2);
                map4(&mut half[at(2)..][..tw], e0, o0, e1, o1, |_, d1, d2, _| d2 - d1);
                map4(&mut half[at(3)..][..tw], e0, o0, e1, o1, |_, d1, _, d3| d1 - d3);
            }
            // Bᵀ·(d·B) down the columns: rows 2a, 2a + 1 (parity 0 and 1 at a), 2a + 2 and
            // 2a + 3 (at a + 1), for all tiles at once, into V's run of this sample.
            let col = s * tiles;
            for q in 0..4 {
                let (even, odd) = (&half[q * 2 * run..][..run], &half[(q * 2 + 1) * run..][..run]);
                let (h0, h1) = (&even[..tiles], &odd[..tiles]);
                let (h2, h3) = (&even[tw..][..tiles], &odd[tw..][..tiles]);
                for r in 0..4 {
                    let out = &mut v[((r * 4 + q) * c + ci) * nt + col..][..tiles];
                    match r {
                        0 => map4(out, h0, h1, h2, h3, |a, _, c, _| a - c),
                        1 => map4(out, h0, h1, h2, h3, |_, b, c, _| b + c),
                        2 => map4(out, h0, h1, h2, h3, |_, b, c, _| c - b),
                        _ => map4(out, h0, h1, h2, h3, |_, b, _, d| b - d),
                    }
                }
            }
        }
    }
}

/// The convolution of the samples `first..first + y.len()/(C'·H·W)` into `y`: the input
/// transform into `V`, 16 products into `M`, the output transform. Both transforms run a
/// channel's plane at a time, along all its tiles (contiguous in `V` and `M`), so that their
/// loops vectorise.
#[inline(always)]
fn chunk<E: Real>(
    g: &Geometry,
    x: &[E],
    u: &[E],
    b: Option<&[E]>,
    first: usize,
    y: &mut [E],
    sc: &mut Scratch<E>,
) {
    let (h, w, c, cout) = (g.h, g.w, g.c, g.cout);
    let (th, tw) = (h.div_ceil(2), w.div_ceil(2));
    let tiles = th * tw;
    let samples = y.len() / (cout * h * w);
    let nt = samples * tiles;
    let zero = E::default();
    sc.v.resize(16 * c * nt, zero);
    sc.m.resize(16 * cout * nt, zero);
    sc.fit(th, tw);
    let xs = &x[first * c * h * w..][..samples * c * h * w];
    input_transform(g, xs, &mut sc.v, &mut sc.rows, &mut sc.half);
    let (v, rows, half) = (&sc.v, &mut sc.rows, &mut sc.half);
    for xi in 0..16 {
        let (uxi, vxi) = (&u[xi * cout * c..][..cout * c], &v[xi * c * nt..][..c * nt]);
        let mxi = &mut sc.m[xi * cout * nt..][..cout * nt];
        matmul(cout, nt, c, mxi, false, (uxi, c, 1), (vxi, nt, 1));
    }
    let m = &sc.m;
    // Aᵀ·M down the columns into half ([i·4 + q][tile], output rows i = 0, 1 of each tile),
    // then ·A along the rows into rows ([i·2 + odd][tile]: the even and odd output columns),
    // for all tiles of a plane at once; then each output row from its even and odd columns.
    for (s, ys) in y.chunks_exact_mut(cout * h * w).enumerate() {
        for (co, plane) in ys.chunks_exact_mut(h * w).enumerate() {
            let bias = b.map_or(zero, |b| b[co]);
            let col = s * tiles;
            for q in 0..4 {
                let mr = |r: usize| &m[((r * 4 + q) * cout + co) * nt + col..][..tiles];
                let (m0, m1, m2, m3) = (mr(0), mr(1), mr(2), mr(3));
                let (top, bottom) = half[q * tiles..].split_at_mut(4 * tiles);
                map4(&mut top[..tiles], m0, m1, m2, m3, |a, b, c, _| a + b + c);
                map4(&mut bottom[..tiles], m0, m1, m2, m3, |_, b, c, d| b - c - d);
            }
            for i in 0..2 {
                let hq = |q: usize| &half[(i * 4 + q) * tiles..][..tiles];
                let (h0, h1, h2, h3) = (hq(0), hq(1), hq(2), hq(3));
                let (even, odd) = rows[i * 2 * tiles..][..2 * tiles].split_at_mut(tiles);
                map4(even, h0, h1, h2, h3, |a, b, c, _| a + b + c + bias);
                map4(odd, h0, h1, h2, h3, |_, b, c, d| b - c - d + bias);
            }
            for (yy, out) in plane.chunks_exact_mut(w).enumerate() {
                let (a, i) = (yy / 2, yy % 2);
                let at = |odd: usize| &rows[(i * 2 + odd) * tiles + a * tw..][..tw];
                interleave(at(0), at(1), out);
            }
        }
    }
}

crate::flex::avx2_twin!(chunk, chunk_avx2, chunk_dispatch,
    (g: &Geometry, x: &[E], u: &[E], b: Option<&[E]>, first: usize, y: &mut [E],
     sc: &mut Scratch<E>));

/// `y = conv(x, w) + b` for a geometry that [`applies`], all samples, in parallel over chunks.
pub(super) fn forward<E: Real>(
    g: &Geometry,
    x: &[E],
    w: &[E],
    b: Option<&[E]>,
    y: &mut [MaybeUninit<E>],
) {
    let u = transform_weights(w, g.cout, g.c);
    let tiles = g.h.div_ceil(2) * g.w.div_ceil(2);
    // About TILES tiles per task, at least 8 tasks from 8 samples.
    let per = (TILES / tiles).min(g.n.div_ceil(8)).max(1);
    let y_len = g.cout * g.h * g.w;
    y.par_chunks_mut(per * y_len).enumerate().for_each_init(Scratch::default, |sc, (t, y)| {
        chunk_dispatch(g, x, &u, b, t * per, zeroed(y), sc)
    });
}

/// `∂ℓ/∂x` from `∂ℓ/∂y` for a geometry that [`applies`]: the same convolution of `∂ℓ/∂y` with
/// `w̃[c, c', i, j] = w[c', c, 2 − i, 2 − j]`.
pub(super) fn input_gradient<E: Real>(g: &Geometry, w: &[E], dy: &[E]) -> Vec<E> {
    let mut flipped = vec![E::default(); w.len()];
    for (co, wo) in w.chunks_exact(g.c * 9).enumerate() {
        for (ci, k) in wo.chunks_exact(9).enumerate() {
            for (ij, &e) in k.iter().enumerate() {
                flipped[(ci * g.cout + co) * 9 + 8 - ij] = e;
            }
        }
    }
    let transposed = Geometry { c: g.cout, cout: g.c, ..*g }; // the same pairs, so `applies`
    let mut dx = uninit(g.n * g.c * g.h * g.w);
    forward(&transposed, dy, &flipped, None, &mut dx);
    // SAFETY: `forward`'s tasks cover `dx` and each initialises its chunk.
    unsafe { assume_init(dx) }
}

/// `D = A·u·Aᵀ` of every output-gradient tile `u` (2×2, 0 outside the image) of the samples
/// in `dy` into `d` (`[16, C', tiles]`, as [`input_transform`]'s `V`), `A = (Aᵀ)ᵀ`:
/// `A·(u₀, u₁) = (u₀, u₀ + u₁, u₀ − u₁, −u₁)`. `rows` and `half` are scratch
/// ([`Scratch::fit`]). As [`input_transform`], a plane at a time: each row along its columns
/// (`u·Aᵀ`) into `half` by the row's parity, then down the columns for all tiles at once.
#[inline(always)]
fn gradient_transform<E: Real>(
    g: &Geometry,
    dy: &[E],
    d: &mut [E],
    rows: &mut [E],
    half: &mut [E],
) {
    let (h, w, cout) = (g.h, g.w, g.cout);
    let (th, tw) = (h.div_ceil(2), w.div_ceil(2));
    let tiles = th * tw;
    let nt = d.len() / (16 * cout);
    let zero = E::default();
    for (s, dys) in dy.chunks_exact(cout * h * w).enumerate() {
        for (co, plane) in dys.chunks_exact(h * w).enumerate() {
            // u·Aᵀ along row y (tile row y/2, its row y % 2): half[(q·2 + y % 2)·tiles + …]
            // from the even and odd columns e = u[y][2b], o = u[y][2b + 1] (0 past the edge),
            // which are `deinterleave`'s odd columns and its even ones shifted by one.
            for y in 0..2 * th {
                let (shifted, e) = rows[..2 * (tw + 1)].split_at_mut(tw + 1);
                padded_row(plane, (h, w), y, shifted, e);
                let (e, o) = (&e[..tw], &shifted[1..]);
                let at = |q: usize| (q * 2 + y % 2) * tiles + (y / 2) * tw;
                half[at(0)..][..tw].copy_from_slice(e);
                map4(&mut half[at(1)..][..tw], e, o, e, o, |e, o, _, _| e + o);
                map4(&mut half[at(2)..][..tw], e, o, e, o, |e, o, _, _| e - o);
                map4(&mut half[at(3)..][..tw], e, o, e, o, |_, o, _, _| zero - o);
            }
            // A·(u·Aᵀ) down the columns, for all tiles at once, into D's run of this sample.
            let col = s * tiles;
            for q in 0..4 {
                let (h0, h1) =
                    (&half[q * 2 * tiles..][..tiles], &half[(q * 2 + 1) * tiles..][..tiles]);
                for r in 0..4 {
                    let out = &mut d[((r * 4 + q) * cout + co) * nt + col..][..tiles];
                    match r {
                        0 => out.copy_from_slice(h0),
                        1 => map4(out, h0, h1, h0, h1, |a, b, _, _| a + b),
                        2 => map4(out, h0, h1, h0, h1, |a, b, _, _| a - b),
                        _ => map4(out, h0, h1, h0, h1, |_, b, _, _| zero - b),
                    }
                }
            }
        }
    }
}

/// One task's share of the weight gradient: `M_ξ += D_ξ·V_ξᵀ` (`[16, C', C]`) over the tiles
/// of the samples in `x` and `dy`, a group of about [`TILES`] tiles at a time, and `∂ℓ/∂b`'s
/// sums.
#[inline(always)]
fn weight_gradient_chunk<E: Real>(
    g: &Geometry,
    x: &[E],
    dy: &[E],
    m: &mut [E],
    db: &mut [f64],
    sc: &mut Scratch<E>,
) {
    let (h, w, c, cout) = (g.h, g.w, g.c, g.cout);
    let tw = w.div_ceil(2);
    let tiles = h.div_ceil(2) * tw;
    let zero = E::default();
    let group = (TILES / tiles).max(1);
    let (xs, ys) = (x.chunks(group * c * h * w), dy.chunks(group * cout * h * w));
    for (xg, dyg) in xs.zip(ys) {
        let nt = xg.len() / (c * h * w) * tiles;
        sc.v.resize(16 * c * nt, zero);
        sc.m.resize(16 * cout * nt, zero);
        sc.fit(h.div_ceil(2), tw);
        input_transform(g, xg, &mut sc.v, &mut sc.rows, &mut sc.half);
        gradient_transform(g, dyg, &mut sc.m, &mut sc.rows, &mut sc.half);
        for xi in 0..16 {
            let (dxi, vxi) = (&sc.m[xi * cout * nt..][..cout * nt], &sc.v[xi * c * nt..][..c * nt]);
            // M_ξ (C'×C) += D_ξ (C'×tiles) · V_ξᵀ (tiles×C: row stride 1, column stride nt).
            let mxi = &mut m[xi * cout * c..][..cout * c];
            matmul(cout, c, nt, mxi, true, (dxi, nt, 1), (vxi, 1, nt));
        }
        for (i, plane) in dyg.chunks_exact(h * w).enumerate() {
            db[i % cout] += plane.iter().map(|&e| e.into()).sum::<f64>();
        }
    }
}

crate::flex::avx2_twin!(weight_gradient_chunk, weight_gradient_chunk_avx2,
    weight_gradient_chunk_dispatch,
    (g: &Geometry, x: &[E], dy: &[E], m: &mut [E], db: &mut [f64], sc: &mut Scratch<E>));

/// `(∂ℓ/∂W, ∂ℓ/∂b)` for a geometry that [`applies`], by the transposed algorithm F(3×3, 2×2):
/// `∂ℓ/∂W = Gᵀ·[Σ_tiles (A·u·Aᵀ) ⊙ (Bᵀ·d·B)]·G` per channel pair, with `u` the output
/// gradient's 2×2 tile and `d` the input's 4×4 tile of the forward (the sum over tiles and
/// samples runs before the linear `Gᵀ·M·G`, so it is 16 matrix products `[C', tiles]·[tiles, C]`).
/// 16 products per tile instead of 36. At most 16 tasks, their sums added in a fixed order:
/// the same result on any number of threads.
pub(super) fn weight_gradient<E: Real>(g: &Geometry, x: &[E], dy: &[E]) -> (Vec<E>, Vec<E>) {
    let (c, cout, hw) = (g.c, g.cout, g.h * g.w);
    let per = g.n.div_ceil(16).max(1);
    let partial: Vec<(Vec<E>, Vec<f64>)> = x
        .par_chunks(per * c * hw)
        .zip(dy.par_chunks(per * cout * hw))
        .map_init(Scratch::default, |sc, (x, dy)| {
            let mut m = vec![E::default(); 16 * cout * c];
            let mut db = vec![0.0; cout];
            weight_gradient_chunk_dispatch(g, x, dy, &mut m, &mut db, sc);
            (m, db)
        })
        .collect();
    let (m, db) = sum_in_order(&partial, (16 * cout * c, cout));
    // ∂ℓ/∂W = Gᵀ·M·G per pair, Gᵀ·(m₀, m₁, m₂, m₃) = (m₀ + ½(m₁ + m₂), ½(m₁ − m₂), ½(m₁ + m₂) + m₃).
    let half = E::of(0.5);
    let gt = |m0: E, m1: E, m2: E, m3: E| {
        [m0 + (m1 + m2) * half, (m1 - m2) * half, (m1 + m2) * half + m3]
    };
    let mut dw = vec![E::default(); cout * c * 9];
    for (pair, k) in dw.chunks_exact_mut(9).enumerate() {
        let at = |r: usize, q: usize| m[(r * 4 + q) * cout * c + pair];
        // Gᵀ along the columns q of each row r, then down the rows.
        let rows: [[E; 3]; 4] = std::array::from_fn(|r| gt(at(r, 0), at(r, 1), at(r, 2), at(r, 3)));
        for j in 0..3 {
            let col = gt(rows[0][j], rows[1][j], rows[2][j], rows[3][j]);
            for i in 0..3 {
                k[i * 3 + j] = col[i];
            }
        }
    }
    (dw, db.into_iter().map(E::of).collect())
}
