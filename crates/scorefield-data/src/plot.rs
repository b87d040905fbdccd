//! Small raster plots without a plotting library: scatter plots, quiver plots of a vector
//! field, line plots (a loss curve, optionally on a log scale), titles in a built-in 5×7
//! bitmap font, and panels side by side, as RGB [`Image`]s that [`Image::save`] writes as PNG.
//!
//! A [`Canvas`] maps data coordinates onto its plot area, the image less its margins
//! (`left`, `top`, `w × h` pixels), with y growing upwards in the data and downwards in pixels:
//!
//! ```text
//! px = left + (x − x_min)/(x_max − x_min)·(w − 1)
//! py = top  + (y_max − y)/(y_max − y_min)·(h − 1)
//! ```
//!
//! Data-space drawing (points, lines, arrows) is clipped to the plot area; text may go
//! anywhere on the image. Letters are drawn as capitals.
//!
//! ```
//! use scorefield_data::plot::{self, Canvas, BLUE, RED};
//!
//! let mut canvas = Canvas::new(200, 220, (-4.0, 4.0), (-4.0, 4.0));
//! canvas.axes();
//! canvas.scatter(&[[1.0, 2.0], [-3.0, 0.5]], BLUE, 2.0, 1.0);
//! let grid = plot::grid_points((-4.0, 4.0), (-4.0, 4.0), 8); // 64 arrows, capped at 0.9
//! canvas.quiver(&grid, &[[1.0, 0.0]; 64], 0.5, 0.9, RED);
//! canvas.title("points and arrows");
//! let panel = canvas.into_image();
//! let both = plot::hconcat(&[panel.clone(), panel], 10);
//! assert_eq!((both.width, both.height), (410, 220));
//! ```

use crate::image::Image;

/// A colour, `[red, green, blue]`.
pub type Rgb = [u8; 3];

/// White, the background.
pub const WHITE: Rgb = [255, 255, 255];
/// Black, for text.
pub const BLACK: Rgb = [0, 0, 0];
/// The light grey of axes and frames.
pub const LIGHT_GREY: Rgb = [200, 200, 200];
/// Blue.
pub const BLUE: Rgb = [31, 119, 180];
/// Orange.
pub const ORANGE: Rgb = [255, 127, 14];
/// Green.
pub const GREEN: Rgb = [44, 160, 44];
/// Red.
pub const RED: Rgb = [214, 39, 40];

/// Glyph cells: 5 pixels wide, 7 high, advancing 6 pixels per character (times the scale).
const GLYPH_W: usize = 5;
const GLYPH_H: usize = 7;
const ADVANCE: usize = 6;

/// A white RGB image with a data→pixel mapping over a plot area (see the [module docs](self)).
#[derive(Debug, Clone)]
pub struct Canvas {
    image: Image,
    x_range: (f64, f64),
    y_range: (f64, f64),
    /// The plot area: left, top, width, height in pixels.
    area: (usize, usize, usize, usize),
}

impl Canvas {
    /// A white `width × height` canvas mapping `x_range × y_range` onto the plot area, with
    /// margins of 8 pixels and 24 at the top (room for a [`title`](Self::title)).
    ///
    /// # Panics
    /// If a range is not finite and increasing, or the image is too small for the margins.
    pub fn new(width: usize, height: usize, x_range: (f64, f64), y_range: (f64, f64)) -> Self {
        for (lo, hi) in [x_range, y_range] {
            assert!(lo.is_finite() && hi.is_finite() && lo < hi, "bad range ({lo}, {hi})");
        }
        let image = Image { width, height, channels: 3, pixels: WHITE.repeat(width * height) };
        Canvas { image, x_range, y_range, area: (0, 0, width, height) }.with_margins(24, 8, 8, 8)
    }

    /// The same canvas with the given margins (`top, right, bottom, left`, in pixels).
    ///
    /// # Panics
    /// If the margins leave a plot area smaller than 2 × 2 pixels.
    pub fn with_margins(self, top: usize, right: usize, bottom: usize, left: usize) -> Self {
        let (w, h) = (self.image.width, self.image.height);
        assert!(w >= left + right + 2 && h >= top + bottom + 2, "margins leave no plot area");
        Canvas { area: (left, top, w - left - right, h - top - bottom), ..self }
    }

    /// The plot area `(left, top, width, height)` in pixels.
    pub fn area(&self) -> (usize, usize, usize, usize) {
        self.area
    }

    /// The pixel position (column, row), fractional, of the data point `(x, y)`.
    pub fn to_pixel(&self, x: f64, y: f64) -> (f64, f64) {
        let (left, top, w, h) = self.area;
        let ((x0, x1), (y0, y1)) = (self.x_range, self.y_range);
        let px = left as f64 + (x - x0) / (x1 - x0) * (w - 1) as f64;
        let py = top as f64 + (y1 - y) / (y1 - y0) * (h - 1) as f64;
        (px, py)
    }

    /// The colour of the pixel at column `px`, row `py`.
    ///
    /// # Panics
    /// If the pixel is outside the image.
    pub fn pixel(&self, px: usize, py: usize) -> Rgb {
        assert!(px < self.image.width && py < self.image.height, "pixel outside the image");
        let i = (py * self.image.width + px) * 3;
        [self.image.pixels[i], self.image.pixels[i + 1], self.image.pixels[i + 2]]
    }

    /// Blends `color` with opacity `alpha` ∈ [0, 1] into one pixel; outside the plot area
    /// (with `clip`) or the image (without) nothing happens.
    fn blend(&mut self, px: i64, py: i64, color: Rgb, alpha: f32, clip: bool) {
        let (x0, y0, w, h) =
            if clip { self.area } else { (0, 0, self.image.width, self.image.height) };
        let inside = |p: i64, lo: usize, len: usize| p >= lo as i64 && p < (lo + len) as i64;
        if !(inside(px, x0, w) && inside(py, y0, h)) {
            return;
        }
        let i = (py as usize * self.image.width + px as usize) * 3;
        for (c, &new) in self.image.pixels[i..i + 3].iter_mut().zip(&color) {
            *c = (f32::from(*c) * (1.0 - alpha) + f32::from(new) * alpha).round() as u8;
        }
    }

    /// A filled disc centred on the pixel nearest `(px, py)`: the pixels whose centres lie
    /// within `radius + ½` of it (radius 0: one pixel, ½: a plus, 1: a 3 × 3 square).
    fn disc(&mut self, px: f64, py: f64, radius: f64, color: Rgb, alpha: f32) {
        let (cx, cy, r) = (px.round() as i64, py.round() as i64, radius.max(0.0));
        let reach = r.ceil() as i64;
        for dy in -reach..=reach {
            for dx in -reach..=reach {
                if ((dx * dx + dy * dy) as f64) <= (r + 0.5) * (r + 0.5) {
                    self.blend(cx + dx, cy + dy, color, alpha, true);
                }
            }
        }
    }

    /// A straight segment between two pixel positions, `width` pixels thick.
    fn segment(&mut self, a: (f64, f64), b: (f64, f64), color: Rgb, width: f64) {
        if !(a.0.is_finite() && a.1.is_finite() && b.0.is_finite() && b.1.is_finite()) {
            return;
        }
        let n = ((b.0 - a.0).abs().max((b.1 - a.1).abs()) * 2.0).ceil().min(1e5) as usize;
        for k in 0..=n {
            let f = if n == 0 { 0.0 } else { k as f64 / n as f64 };
            let (x, y) = (a.0 + f * (b.0 - a.0), a.1 + f * (b.1 - a.1));
            self.disc(x, y, (width - 1.0) / 2.0, color, 1.0);
        }
    }

    /// Light grey axes through 0 (where 0 is in range) and a light grey [frame](Self::frame).
    pub fn axes(&mut self) {
        let ((x0, x1), (y0, y1)) = (self.x_range, self.y_range);
        if x0 <= 0.0 && 0.0 <= x1 {
            self.segment(self.to_pixel(0.0, y0), self.to_pixel(0.0, y1), LIGHT_GREY, 1.0);
        }
        if y0 <= 0.0 && 0.0 <= y1 {
            self.horizontal(0.0, LIGHT_GREY);
        }
        self.frame();
    }

    /// A horizontal line across the plot area at data height `y`.
    pub fn horizontal(&mut self, y: f64, color: Rgb) {
        let (x0, x1) = self.x_range;
        self.segment(self.to_pixel(x0, y), self.to_pixel(x1, y), color, 1.0);
    }

    /// A light grey frame around the plot area.
    pub fn frame(&mut self) {
        let (left, top, w, h) = self.area;
        let (l, t, r, b) = (left as f64, top as f64, (left + w - 1) as f64, (top + h - 1) as f64);
        for (a, z) in [((l, t), (r, t)), ((r, t), (r, b)), ((r, b), (l, b)), ((l, b), (l, t))] {
            self.segment(a, z, LIGHT_GREY, 1.0);
        }
    }

    /// One disc of `radius` pixels per point, blended with opacity `alpha` (below 1, dense
    /// regions show darker).
    pub fn scatter(&mut self, points: &[[f64; 2]], color: Rgb, radius: f64, alpha: f32) {
        for p in points.iter().filter(|p| p[0].is_finite() && p[1].is_finite()) {
            let (px, py) = self.to_pixel(p[0], p[1]);
            self.disc(px, py, radius, color, alpha.clamp(0.0, 1.0));
        }
    }

    /// A line through `points` (data coordinates), `width` pixels thick.
    pub fn polyline(&mut self, points: &[[f64; 2]], color: Rgb, width: f64) {
        for pair in points.windows(2) {
            let (a, b) =
                (self.to_pixel(pair[0][0], pair[0][1]), self.to_pixel(pair[1][0], pair[1][1]));
            self.segment(a, b, color, width);
        }
    }

    /// An arrow from `from` to `to` (data coordinates), its head two strokes of up to 5 pixels.
    pub fn arrow(&mut self, from: [f64; 2], to: [f64; 2], color: Rgb) {
        let (a, b) = (self.to_pixel(from[0], from[1]), self.to_pixel(to[0], to[1]));
        self.segment(a, b, color, 1.0);
        let (dx, dy) = (a.0 - b.0, a.1 - b.1);
        let len = dx.hypot(dy);
        if len < 1.0 {
            return;
        }
        let head = (0.4 * len).min(5.0) / len;
        let (c, s) = (0.45f64.cos(), 0.45f64.sin()); // strokes at ±26° from the shaft
        for s in [s, -s] {
            let (hx, hy) = ((c * dx - s * dy) * head, (s * dx + c * dy) * head);
            self.segment(b, (b.0 + hx, b.1 + hy), color, 1.0);
        }
    }

    /// A quiver plot: an arrow from each origin along its vector `v`, drawn with length
    /// `min(scale·|v|, max_length)` in data units (so long vectors are capped, directions kept).
    /// Non-finite or zero vectors draw nothing.
    pub fn quiver(
        &mut self,
        origins: &[[f64; 2]],
        vectors: &[[f64; 2]],
        scale: f64,
        max_length: f64,
        color: Rgb,
    ) {
        for (o, v) in origins.iter().zip(vectors) {
            let norm = v[0].hypot(v[1]);
            if !(norm.is_finite() && norm > 0.0) {
                continue;
            }
            let k = (scale * norm).min(max_length) / norm;
            self.arrow(*o, [o[0] + k * v[0], o[1] + k * v[1]], color);
        }
    }

    /// Writes `text` with its top-left corner at pixel `(px, py)`, each font pixel drawn as a
    /// `scale × scale` block. Letters are drawn as capitals; characters without a glyph as
    /// blanks.
    pub fn text(&mut self, px: i64, py: i64, text: &str, color: Rgb, scale: usize) {
        let scale = scale.max(1);
        for (k, ch) in text.chars().enumerate() {
            let rows = glyph(ch);
            let x0 = px + (k * ADVANCE * scale) as i64;
            for (r, bits) in rows.iter().enumerate() {
                for c in 0..GLYPH_W {
                    if (bits >> (GLYPH_W - 1 - c)) & 1 == 1 {
                        for (dx, dy) in (0..scale * scale).map(|i| (i % scale, i / scale)) {
                            let (x, y) =
                                (x0 + (c * scale + dx) as i64, py + (r * scale + dy) as i64);
                            self.blend(x, y, color, 1.0, false);
                        }
                    }
                }
            }
        }
    }

    /// A title centred in the top margin, in black, twice the font size if it fits.
    pub fn title(&mut self, text: &str) {
        let width = self.image.width as i64;
        let chars = text.chars().count();
        let scale = if (chars * ADVANCE * 2) as i64 <= width - 8 { 2 } else { 1 };
        let text_w = (chars * ADVANCE * scale) as i64 - scale as i64;
        let top = ((self.area.1 as i64 - (GLYPH_H * scale) as i64) / 2).max(1);
        self.text((width - text_w) / 2, top, text, BLACK, scale);
    }

    /// The image drawn so far.
    pub fn image(&self) -> &Image {
        &self.image
    }

    /// Ends drawing: the image.
    pub fn into_image(self) -> Image {
        self.image
    }
}

/// `n × n` points at the centres of the cells of a regular grid over `x_range × y_range`, row
/// by row from the bottom left: point `j·n + i` is
/// `(x_min + (i + ½)·Δx, y_min + (j + ½)·Δy)` with `Δ = range/n`.
pub fn grid_points(x_range: (f64, f64), y_range: (f64, f64), n: usize) -> Vec<[f64; 2]> {
    let at = |(lo, hi): (f64, f64), i: usize| lo + (i as f64 + 0.5) * (hi - lo) / n as f64;
    (0..n * n).map(|k| [at(x_range, k % n), at(y_range, k / n)]).collect()
}

/// A line plot of `series` (points `(x, y)`, in order) on a `width × height` canvas with a
/// title and the ranges' ends labelled. With `log_y` the y axis is logarithmic, with a light
/// grey line at every power of ten, and points with `y ≤ 0` are left out. Non-finite points
/// are left out.
///
/// # Panics
/// If the image is smaller than 80 × 60 pixels.
pub fn line_plot(
    series: &[[f64; 2]],
    (width, height): (usize, usize),
    log_y: bool,
    color: Rgb,
    title: &str,
) -> Image {
    assert!(width >= 80 && height >= 60, "a line plot needs at least 80 × 60 pixels");
    let map = |p: &[f64; 2]| [p[0], if log_y { p[1].log10() } else { p[1] }];
    let points: Vec<[f64; 2]> =
        series.iter().map(map).filter(|p| p[0].is_finite() && p[1].is_finite()).collect();
    let range = |i: usize| {
        let (lo, hi) = points
            .iter()
            .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), p| (lo.min(p[i]), hi.max(p[i])));
        match (lo.is_finite(), hi - lo > 1e-12 * lo.abs().max(1.0)) {
            (false, _) => (0.0, 1.0),
            (true, false) => (lo - 0.5, lo + 0.5),
            (true, true) => (lo, hi),
        }
    };
    let ((x0, x1), (y0, y1)) = (range(0), range(1));
    let pad = 0.04 * (y1 - y0);
    let mut canvas =
        Canvas::new(width, height, (x0, x1), (y0 - pad, y1 + pad)).with_margins(24, 10, 20, 62);
    let (left, top, w, h) = canvas.area();
    let y_label = |canvas: &mut Canvas, y: f64, text: &str| {
        let px = left as i64 - 4 - (text.len() * ADVANCE) as i64;
        canvas.text(px, canvas.to_pixel(x0, y).1.round() as i64 - 3, text, BLACK, 1);
    };
    // The ends of the y range; on a log scale also every power of ten between them, with a
    // light grey line, unless it would crowd an end's label.
    let label = |v: f64| short_number(if log_y { 10f64.powf(v) } else { v });
    for y in [y0, y1] {
        y_label(&mut canvas, y, &label(y));
    }
    if log_y {
        let room = 10.0 * (y1 - y0 + 2.0 * pad) / h as f64;
        for k in (y0.ceil() as i64..=y1.floor() as i64).map(|k| k as f64) {
            canvas.horizontal(k, LIGHT_GREY);
            if (k - y0).abs() > room && (y1 - k).abs() > room {
                y_label(&mut canvas, k, &short_number(10f64.powf(k)));
            }
        }
    } else if y0 < 0.0 && 0.0 < y1 {
        canvas.horizontal(0.0, LIGHT_GREY);
    }
    canvas.frame();
    canvas.polyline(&points, color, 1.5);
    canvas.title(title);
    let (right, bottom) = ((left + w) as i64, (top + h) as i64);
    let x_hi = label_x(x1);
    canvas.text(left as i64, bottom + 6, &label_x(x0), BLACK, 1);
    canvas.text(right - (x_hi.len() * ADVANCE) as i64 + 1, bottom + 6, &x_hi, BLACK, 1);
    if log_y {
        canvas.text(4, 4, "log scale", BLACK, 1);
    }
    canvas.into_image()
}

/// An x-axis label: integers without decimals.
fn label_x(v: f64) -> String {
    if v.fract() == 0.0 && v.abs() < 1e9 { format!("{v:.0}") } else { short_number(v) }
}

/// A number in at most about 8 characters: 3 significant decimals, or scientific notation.
fn short_number(v: f64) -> String {
    let a = v.abs();
    if a != 0.0 && !(1e-2..1e4).contains(&a) {
        format!("{v:.1e}")
    } else {
        let s = format!("{v:.3}");
        s.trim_end_matches('0').trim_end_matches('.').to_string()
    }
}

/// Panels side by side, top-aligned, `gap` white pixels apart (RGB; grey panels are
/// converted).
pub fn hconcat(panels: &[Image], gap: usize) -> Image {
    concat(panels, gap, true)
}

/// Panels one above the other, left-aligned, `gap` white pixels apart.
pub fn vconcat(panels: &[Image], gap: usize) -> Image {
    concat(panels, gap, false)
}

fn concat(panels: &[Image], gap: usize, across: bool) -> Image {
    let gaps = gap * panels.len().saturating_sub(1);
    let (width, height) = if across {
        (panels.iter().map(|p| p.width).sum::<usize>() + gaps, max(panels, |p| p.height))
    } else {
        (max(panels, |p| p.width), panels.iter().map(|p| p.height).sum::<usize>() + gaps)
    };
    let mut pixels = WHITE.repeat(width * height);
    let mut offset = 0;
    for p in panels {
        let (ox, oy) = if across { (offset, 0) } else { (0, offset) };
        for y in 0..p.height {
            for x in 0..p.width {
                let src = (y * p.width + x) * p.channels;
                let dst = ((oy + y) * width + ox + x) * 3;
                for c in 0..3 {
                    pixels[dst + c] = p.pixels[src + if p.channels == 3 { c } else { 0 }];
                }
            }
        }
        offset += gap + if across { p.width } else { p.height };
    }
    Image { width, height, channels: 3, pixels }
}

fn max(panels: &[Image], f: impl Fn(&Image) -> usize) -> usize {
    panels.iter().map(f).max().unwrap_or(0)
}

/// The 5×7 glyph of a character, one byte per row from the top, bit 4 the leftmost pixel.
/// Lower-case letters use the capitals; unknown characters are blank.
fn glyph(ch: char) -> [u8; 7] {
    match ch.to_ascii_uppercase() {
        'A' => [14, 17, 17, 31, 17, 17, 17],
        'B' => [30, 17, 17, 30, 17, 17, 30],
        'C' => [14, 17, 16, 16, 16, 17, 14],
        'D' => [28, 18, 17, 17, 17, 18, 28],
        'E' => [31, 16, 16, 30, 16, 16, 31],
        'F' => [31, 16, 16, 30, 16, 16, 16],
        'G' => [14, 17, 16, 23, 17, 17, 15],
        'H' => [17, 17, 17, 31, 17, 17, 17],
        'I' => [14, 4, 4, 4, 4, 4, 14],
        'J' => [7, 2, 2, 2, 2, 18, 12],
        'K' => [17, 18, 20, 24, 20, 18, 17],
        'L' => [16, 16, 16, 16, 16, 16, 31],
        'M' => [17, 27, 21, 21, 17, 17, 17],
        'N' => [17, 17, 25, 21, 19, 17, 17],
        'O' => [14, 17, 17, 17, 17, 17, 14],
        'P' => [30, 17, 17, 30, 16, 16, 16],
        'Q' => [14, 17, 17, 17, 21, 18, 13],
        'R' => [30, 17, 17, 30, 20, 18, 17],
        'S' => [15, 16, 16, 14, 1, 1, 30],
        'T' => [31, 4, 4, 4, 4, 4, 4],
        'U' => [17, 17, 17, 17, 17, 17, 14],
        'V' => [17, 17, 17, 17, 17, 10, 4],
        'W' => [17, 17, 17, 21, 21, 21, 10],
        'X' => [17, 17, 10, 4, 10, 17, 17],
        'Y' => [17, 17, 10, 4, 4, 4, 4],
        'Z' => [31, 1, 2, 4, 8, 16, 31],
        '0' => [14, 17, 19, 21, 25, 17, 14],
        '1' => [4, 12, 4, 4, 4, 4, 14],
        '2' => [14, 17, 1, 2, 4, 8, 31],
        '3' => [31, 2, 4, 2, 1, 17, 14],
        '4' => [2, 6, 10, 18, 31, 2, 2],
        '5' => [31, 16, 30, 1, 1, 17, 14],
        '6' => [6, 8, 16, 30, 17, 17, 14],
        '7' => [31, 1, 2, 4, 8, 8, 8],
        '8' => [14, 17, 17, 14, 17, 17, 14],
        '9' => [14, 17, 17, 15, 1, 2, 12],
        '.' => [0, 0, 0, 0, 0, 12, 12],
        ',' => [0, 0, 0, 0, 12, 4, 8],
        ':' => [0, 12, 12, 0, 12, 12, 0],
        '-' => [0, 0, 0, 31, 0, 0, 0],
        '+' => [0, 4, 4, 31, 4, 4, 0],
        '=' => [0, 0, 31, 0, 31, 0, 0],
        '(' => [2, 4, 8, 8, 8, 4, 2],
        ')' => [8, 4, 2, 2, 2, 4, 8],
        '/' => [0, 1, 2, 4, 8, 16, 0],
        '%' => [24, 25, 2, 4, 8, 19, 3],
        '<' => [2, 4, 8, 16, 8, 4, 2],
        '>' => [8, 4, 2, 1, 2, 4, 8],
        'σ' => [0, 0, 15, 18, 17, 17, 14],
        _ => [0; 7],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn is_white(c: Rgb) -> bool {
        c == WHITE
    }

    #[test]
    fn a_point_lands_where_the_mapping_says() {
        let canvas = Canvas::new(101, 101, (-1.0, 1.0), (-1.0, 1.0)).with_margins(0, 0, 0, 0);
        assert_eq!(canvas.to_pixel(-1.0, 1.0), (0.0, 0.0));
        assert_eq!(canvas.to_pixel(0.5, -0.5), (75.0, 75.0));
        let mut canvas = Canvas::new(120, 130, (-1.0, 1.0), (-1.0, 1.0)).with_margins(20, 9, 9, 10);
        let (px, py) = canvas.to_pixel(0.5, -0.5);
        assert_eq!((px, py), (10.0 + 0.75 * 100.0, 20.0 + 0.75 * 100.0));
        canvas.scatter(&[[0.5, -0.5]], RED, 0.0, 1.0);
        assert_eq!(canvas.pixel(85, 95), RED);
        let red = (0..120 * 130).filter(|&i| canvas.pixel(i % 120, i / 120) == RED).count();
        assert_eq!(red, 1, "a radius-0 point is one pixel");
        // Outside the range: clipped to the plot area, nothing drawn.
        canvas.scatter(&[[1.5, 0.0]], BLUE, 3.0, 1.0);
        assert!((0..120 * 130).all(|i| canvas.pixel(i % 120, i / 120) != BLUE));
    }

    #[test]
    fn axes_pass_through_zero_inside_a_frame() {
        let mut canvas = Canvas::new(101, 101, (-1.0, 3.0), (-2.0, 2.0)).with_margins(0, 0, 0, 0);
        canvas.axes();
        let (zx, zy) = canvas.to_pixel(0.0, 0.0);
        assert_eq!((zx, zy), (25.0, 50.0));
        assert_eq!(canvas.pixel(25, 10), LIGHT_GREY);
        assert_eq!(canvas.pixel(70, 50), LIGHT_GREY);
        assert_eq!((canvas.pixel(0, 0), canvas.pixel(100, 100)), (LIGHT_GREY, LIGHT_GREY));
        assert!(is_white(canvas.pixel(60, 20)));
    }

    #[test]
    fn an_arrow_starts_at_its_grid_point_and_is_capped() {
        let range = (0.0, 10.0);
        let origins = grid_points(range, range, 5);
        assert_eq!(origins.len(), 25);
        assert_eq!((origins[0], origins[7]), ([1.0, 1.0], [5.0, 3.0]));
        let mut canvas = Canvas::new(101, 101, range, range).with_margins(0, 0, 0, 0);
        let mut vectors = vec![[0.0; 2]; 25];
        vectors[7] = [100.0, 0.0]; // capped at length 1.5: from (5, 3) to (6.5, 3)
        vectors[12] = [0.0, 1.0]; // scaled by 0.5: from (5, 5) to (5, 5.5)
        canvas.quiver(&origins, &vectors, 0.5, 1.5, RED);
        let at = |c: &Canvas, x: f64, y: f64| {
            let (px, py) = c.to_pixel(x, y);
            c.pixel(px.round() as usize, py.round() as usize)
        };
        assert_eq!(at(&canvas, 5.0, 3.0), RED, "starts at its grid point");
        assert_eq!(at(&canvas, 6.5, 3.0), RED, "reaches its capped tip");
        assert!(is_white(at(&canvas, 7.0, 3.0)), "and stops there");
        assert!(is_white(at(&canvas, 4.6, 3.0)), "nothing behind the origin");
        assert_eq!(at(&canvas, 5.0, 5.0), RED);
        assert_eq!(at(&canvas, 5.0, 5.5), RED);
        assert!(is_white(at(&canvas, 5.0, 6.0)));
        assert!(is_white(at(&canvas, 1.0, 1.0)), "zero vectors draw nothing");
        // The head: strokes back from the tip on both sides of the shaft.
        let (tx, ty) = canvas.to_pixel(6.5, 3.0);
        let (tx, ty) = (tx.round() as usize, ty.round() as usize);
        assert_eq!((canvas.pixel(tx - 3, ty - 1), canvas.pixel(tx - 3, ty + 1)), (RED, RED));
    }

    #[test]
    fn concatenation_sizes_gaps_and_contents() {
        let panel = |w: usize, h: usize, color: Rgb| Image {
            width: w,
            height: h,
            channels: 3,
            pixels: color.repeat(w * h),
        };
        let (a, b) = (panel(30, 20, RED), panel(10, 40, BLUE));
        let row = hconcat(&[a.clone(), b.clone()], 5);
        assert_eq!((row.width, row.height, row.pixels.len()), (45, 40, 45 * 40 * 3));
        let px = |img: &Image, x: usize, y: usize| {
            let i = (y * img.width + x) * 3;
            [img.pixels[i], img.pixels[i + 1], img.pixels[i + 2]]
        };
        assert_eq!((px(&row, 29, 19), px(&row, 32, 0), px(&row, 35, 39)), (RED, WHITE, BLUE));
        assert_eq!(px(&row, 0, 30), WHITE, "below the shorter panel");
        let column = vconcat(&[a, b], 3);
        assert_eq!((column.width, column.height), (30, 63));
        assert_eq!(
            (px(&column, 0, 21), px(&column, 9, 62), px(&column, 20, 50)),
            (WHITE, BLUE, WHITE)
        );
        let grey = Image { width: 2, height: 1, channels: 1, pixels: vec![7, 9] };
        assert_eq!(hconcat(&[grey], 0).pixels, [7, 7, 7, 9, 9, 9]);
        assert_eq!(hconcat(&[], 4).pixels.len(), 0);
    }

    #[test]
    fn text_draws_the_glyphs_at_its_corner() {
        let mut canvas = Canvas::new(40, 40, (0.0, 1.0), (0.0, 1.0));
        canvas.text(3, 4, "1-", BLACK, 1);
        // '1' = [4, 12, 4, 4, 4, 4, 14]: its stem is column 2, its foot row 6 columns 1–3.
        assert_eq!(canvas.pixel(5, 4), BLACK);
        assert!(is_white(canvas.pixel(4, 4)));
        assert_eq!((canvas.pixel(4, 10), canvas.pixel(6, 10)), (BLACK, BLACK));
        // '-' is the next cell, 6 pixels on: row 3 fully set.
        assert!((9..14).all(|x| canvas.pixel(x, 7) == BLACK));
        assert!(is_white(canvas.pixel(9, 6)));
        canvas.text(20, 4, "a", RED, 2);
        assert_eq!(glyph('a'), glyph('A'));
        assert_eq!((canvas.pixel(22, 4), canvas.pixel(23, 5)), (RED, RED)); // 2×2 blocks
        assert!(is_white(canvas.pixel(20, 4)));
    }

    #[test]
    fn line_plot_spans_its_area_and_skips_non_positive_values_on_a_log_scale() {
        let series: Vec<[f64; 2]> = (0..50).map(|i| [i as f64, 10f64.powi(-(i / 10))]).collect();
        let img = line_plot(&series, (300, 200), true, GREEN, "loss");
        assert_eq!((img.width, img.height, img.channels), (300, 200, 3));
        let green = |x: usize, y: usize| img.pixels[(y * 300 + x) * 3..][..3] == GREEN;
        // Plot area: left 62, top 24, 228 × 156; the first point is the top-left of the
        // curve's range, the last the bottom-right.
        let pad = 0.04f64 * 4.0;
        let top = 24.0 + pad / (4.0 + 2.0 * pad) * 155.0;
        assert!(green(62, top.round() as usize));
        assert!(green(289, (24.0 + 155.0 - (top - 24.0)).round() as usize));
        let mut with_zero = series.clone();
        with_zero.push([50.0, 0.0]);
        with_zero.push([51.0, f64::NAN]);
        let skipped = line_plot(&with_zero, (300, 200), true, GREEN, "loss");
        assert_eq!(skipped.pixels.len(), img.pixels.len());
        let linear = line_plot(&[[0.0, -1.0], [1.0, -1.0]], (100, 80), false, RED, "");
        assert!(linear.pixels.chunks(3).any(|c| c == RED), "a flat series is drawn");
    }

    #[test]
    fn png_round_trip() {
        let mut canvas = Canvas::new(64, 48, (-1.0, 1.0), (-1.0, 1.0));
        canvas.axes();
        canvas.scatter(&[[0.2, 0.3], [-0.5, -0.1]], ORANGE, 2.0, 0.5);
        canvas.title("σ = 0.05");
        let img = canvas.into_image();
        let bytes = img.to_png().unwrap();
        let decoder = png::Decoder::new(std::io::Cursor::new(bytes));
        let mut reader = decoder.read_info().unwrap();
        let mut buf = vec![0; reader.output_buffer_size().unwrap()];
        let info = reader.next_frame(&mut buf).unwrap();
        assert_eq!((info.width, info.height), (64, 48));
        assert_eq!(info.color_type, png::ColorType::Rgb);
        assert_eq!(&buf[..info.buffer_size()], &img.pixels[..]);
    }

    #[test]
    fn short_numbers() {
        assert_eq!(short_number(0.25), "0.25");
        assert_eq!(short_number(3.0), "3");
        assert_eq!(short_number(0.001234), "1.2e-3");
        assert_eq!(short_number(-25000.0), "-2.5e4");
        assert_eq!(label_x(2000.0), "2000");
    }
}
