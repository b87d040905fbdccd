//! Plots drawn with [`plotters`]: scatter plots, quiver plots of a vector field, line plots
//! (a loss curve, optionally on a log scale), with titles, tick-labelled axes, axis labels and
//! legends in an embedded DejaVu Sans font (no system fonts needed), and panels side by side,
//! as RGB [`Image`]s that [`Image::save`] writes as PNG. Behind the `plot` feature (on by
//! default in this crate; the `scorefield` facade's feature of the same name).
//!
//! A [`Canvas`] records what to draw in data coordinates; [`Canvas::render`] lays out the
//! chart (title, tick labels, axis labels) and draws it. Data map onto the plot area, the
//! pixels `left..=right × top..=bottom` that the layout leaves, linearly or, on a
//! [logarithmic](Canvas::log_y) axis, linearly in `log₁₀`, with y growing upwards:
//!
//! ```text
//! fx = (x − x_min)/(x_max − x_min)         (log axis: (lg x − lg x_min)/(lg x_max − lg x_min))
//! px = left   + fx·(right − left)
//! py = bottom − fy·(bottom − top)
//! ```
//!
//! Points, lines and arrows are clipped to the plot area; text may go anywhere.
//!
//! ```
//! use scorefield_data::plot::{self, Canvas, BLUE, RED};
//!
//! let mut canvas = Canvas::new(240, 260, (-4.0, 4.0), (-4.0, 4.0))?;
//! canvas.axes();
//! canvas.scatter(&[[1.0, 2.0], [-3.0, 0.5]], BLUE, 2.0, 1.0);
//! let grid = plot::grid_points((-4.0, 4.0), (-4.0, 4.0), 8); // 64 arrows, capped at 0.9
//! canvas.quiver(&grid, &[[1.0, 0.0]; 64], 0.5, 0.9, RED);
//! canvas.legend("points", BLUE);
//! canvas.title("points and arrows");
//! let panel = canvas.render()?;
//! let both = plot::hconcat(&[panel.clone(), panel], 10);
//! assert_eq!((both.width, both.height), (490, 260));
//! # Ok::<(), scorefield_data::plot::PlotError>(())
//! ```

use std::ops::Range;
use std::sync::OnceLock;

use plotters::coord::Shift;
use plotters::coord::ranged1d::{KeyPointHint, NoDefaultFormatting, Ranged, ValueFormatter};
use plotters::coord::types::RangedCoordf64;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};
use thiserror::Error;

use crate::image::Image;
use crate::plot_backend::FontBackend;

/// A colour, `[red, green, blue]`.
pub type Rgb = [u8; 3];

/// White, the background.
pub const WHITE: Rgb = [255, 255, 255];
/// Black, for text.
pub const BLACK: Rgb = [0, 0, 0];
/// The light grey of the lines through zero, and of background points.
pub const LIGHT_GREY: Rgb = [200, 200, 200];
/// Blue.
pub const BLUE: Rgb = [31, 119, 180];
/// Orange.
pub const ORANGE: Rgb = [255, 127, 14];
/// Green.
pub const GREEN: Rgb = [44, 160, 44];
/// Red.
pub const RED: Rgb = [214, 39, 40];

/// The smallest canvas: room for a title, tick labels and a plot area.
pub const MIN_SIZE: (usize, usize) = (120, 100);
/// The largest canvas side, in pixels.
pub const MAX_SIDE: usize = 16_384;

/// The very light grey of the grid lines at the labelled ticks.
const GRID: Rgb = [232, 232, 232];
/// The font family registered with plotters (DejaVu Sans, embedded).
const FONT: &str = "sans-serif";

/// What can go wrong making a plot.
#[derive(Debug, Error)]
pub enum PlotError {
    /// An axis range is not finite and increasing, or not positive on a logarithmic axis.
    #[error("invalid {axis} range ({lo}, {hi}): {reason}")]
    Range {
        /// `"x"` or `"y"`.
        axis: &'static str,
        /// The lower end.
        lo: f64,
        /// The upper end.
        hi: f64,
        /// What a valid range is.
        reason: &'static str,
    },
    /// The canvas is smaller than [`MIN_SIZE`] or a side exceeds [`MAX_SIDE`].
    #[error(
        "a {width} × {height} canvas is outside the sizes a plot can have \
         ({} × {} to {MAX_SIDE} × {MAX_SIDE})",
        MIN_SIZE.0,
        MIN_SIZE.1
    )]
    Size {
        /// The width asked for.
        width: usize,
        /// The height asked for.
        height: usize,
    },
    /// The embedded font could not be loaded.
    #[error("the embedded plot font could not be loaded")]
    Font,
    /// plotters failed to draw (a layout that does not fit, a glyph it cannot render).
    #[error("drawing the plot failed: {0}")]
    Draw(String),
}

fn draw_error(e: impl std::fmt::Display) -> PlotError {
    PlotError::Draw(e.to_string())
}

/// Registers DejaVu Sans (regular and bold) as plotters' `sans-serif`, once per process.
fn register_fonts() -> Result<(), PlotError> {
    static REGISTERED: OnceLock<bool> = OnceLock::new();
    let ok = *REGISTERED.get_or_init(|| {
        let regular =
            plotters::style::register_font(FONT, FontStyle::Normal, dejavu::sans::regular());
        let bold = plotters::style::register_font(FONT, FontStyle::Bold, dejavu::sans::bold());
        regular.is_ok() && bold.is_ok()
    });
    if ok { Ok(()) } else { Err(PlotError::Font) }
}

/// One axis: its range and whether it is logarithmic. Also plotters' coordinate for it, with
/// tick positions at round numbers (1-2-5 steps; on a log axis powers of ten, then 1-2-5 or
/// 1…9 multiples of them).
#[derive(Debug, Clone, Copy, PartialEq)]
struct Axis {
    lo: f64,
    hi: f64,
    log: bool,
}

impl Axis {
    fn new(name: &'static str, (lo, hi): (f64, f64)) -> Result<Self, PlotError> {
        if !(lo.is_finite() && hi.is_finite() && lo < hi) {
            let reason = "the ends must be finite and increasing";
            return Err(PlotError::Range { axis: name, lo, hi, reason });
        }
        Ok(Axis { lo, hi, log: false })
    }

    fn logarithmic(self, name: &'static str) -> Result<Self, PlotError> {
        if self.lo <= 0.0 {
            let reason = "a logarithmic axis needs positive ends";
            return Err(PlotError::Range { axis: name, lo: self.lo, hi: self.hi, reason });
        }
        Ok(Axis { log: true, ..self })
    }

    /// Where `v` lies along the axis, 0 at `lo` and 1 at `hi` (outside [0, 1] out of range);
    /// `None` for a non-finite value, or one ≤ 0 on a log axis.
    fn fraction(&self, v: f64) -> Option<f64> {
        let f = if self.log {
            if v <= 0.0 {
                return None;
            }
            (v.log10() - self.lo.log10()) / (self.hi.log10() - self.lo.log10())
        } else {
            (v - self.lo) / (self.hi - self.lo)
        };
        f.is_finite().then_some(f)
    }

    /// Tick positions inside the range, at most `max` of them: round numbers of a linear
    /// axis; on a log axis the densest of 1…9, 1-2-5 or 1 times powers of ten that fits, else
    /// every k-th power, and linear ticks where the range holds fewer than two of them.
    fn ticks(&self, max: usize) -> Vec<f64> {
        let linear = || {
            let coord: RangedCoordf64 = (self.lo..self.hi).into();
            coord.key_points(max)
        };
        if !self.log {
            return linear();
        }
        let (a, b) = (self.lo.log10().floor() as i32, self.hi.log10().ceil() as i32);
        let inside = |v: &f64| *v >= self.lo * (1.0 - 1e-12) && *v <= self.hi * (1.0 + 1e-12);
        let multiples = |mantissas: &[f64]| -> Vec<f64> {
            (a..=b)
                .flat_map(|e| mantissas.iter().map(move |m| m * 10f64.powi(e)))
                .filter(inside)
                .collect()
        };
        let sets = [&[1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0][..], &[1.0, 2.0, 5.0], &[1.0]];
        for mantissas in sets {
            let ticks = multiples(mantissas);
            if ticks.len() <= max.max(2) {
                return if ticks.len() >= 2.min(max) { ticks } else { linear() };
            }
        }
        // More decades than ticks: every k-th power of ten.
        let powers = multiples(&[1.0]);
        let k = powers.len().div_ceil(max.max(1));
        powers.into_iter().step_by(k).collect()
    }
}

impl Ranged for Axis {
    type FormatOption = NoDefaultFormatting;
    type ValueType = f64;

    fn map(&self, value: &f64, limit: (i32, i32)) -> i32 {
        let f = self.fraction(*value).unwrap_or(0.0);
        limit.0 + (f * f64::from(limit.1 - limit.0)).round() as i32
    }

    fn key_points<H: KeyPointHint>(&self, hint: H) -> Vec<f64> {
        self.ticks(hint.max_num_points())
    }

    fn range(&self) -> Range<f64> {
        self.lo..self.hi
    }
}

impl ValueFormatter<f64> for Axis {
    fn format_ext(&self, value: &f64) -> String {
        // A tick that rounding left a hair away from 0 is 0.
        let tiny = !self.log && value.abs() < 1e-9 * (self.hi - self.lo);
        short_number(if tiny { 0.0 } else { *value })
    }
}

/// What a [`Canvas`] draws, in the order it was asked for.
#[derive(Debug, Clone)]
enum Mark {
    Scatter { points: Vec<[f64; 2]>, color: Rgb, radius: f64, alpha: f32 },
    Line { points: Vec<[f64; 2]>, color: Rgb, width: f64 },
    Arrow { from: [f64; 2], to: [f64; 2], color: Rgb },
    Text { at: [f64; 2], text: String, color: Rgb, size: f64 },
}

/// A plot in the making: axes over data ranges and the marks on them (see the
/// [module docs](self)). Configure it with the builder methods ([`log_x`](Self::log_x),
/// [`labels`](Self::labels)), add marks, then [`render`](Self::render) it.
#[derive(Debug, Clone)]
pub struct Canvas {
    width: usize,
    height: usize,
    x: Axis,
    y: Axis,
    title: Option<String>,
    x_label: Option<String>,
    y_label: Option<String>,
    marks: Vec<Mark>,
    legend: Vec<(String, Rgb)>,
}

/// The pixel rectangle of the plot area: columns `left..=right`, rows `top..=bottom`.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Frame {
    left: f64,
    top: f64,
    right: f64,
    bottom: f64,
}

impl Frame {
    /// The pixel position (column, row), fractional, of `p` on these axes.
    fn pixel_of(self, x: &Axis, y: &Axis, p: [f64; 2]) -> Option<(f64, f64)> {
        let (fx, fy) = (x.fraction(p[0])?, y.fraction(p[1])?);
        Some((
            self.left + fx * (self.right - self.left),
            self.bottom - fy * (self.bottom - self.top),
        ))
    }

    fn contains(self, (px, py): (f64, f64)) -> bool {
        (self.left..=self.right).contains(&px) && (self.top..=self.bottom).contains(&py)
    }

    /// The part of the segment `a → b` inside the frame (Liang–Barsky), if any.
    fn clip(self, a: (f64, f64), b: (f64, f64)) -> Option<((f64, f64), (f64, f64))> {
        let (dx, dy) = (b.0 - a.0, b.1 - a.1);
        let (mut t0, mut t1) = (0.0f64, 1.0f64);
        for (p, q) in [
            (-dx, a.0 - self.left),
            (dx, self.right - a.0),
            (-dy, a.1 - self.top),
            (dy, self.bottom - a.1),
        ] {
            if p == 0.0 {
                if q < 0.0 {
                    return None;
                }
            } else {
                let t = q / p;
                if p < 0.0 {
                    t0 = t0.max(t);
                } else {
                    t1 = t1.min(t);
                }
            }
        }
        (t0 <= t1).then_some(((a.0 + t0 * dx, a.1 + t0 * dy), (a.0 + t1 * dx, a.1 + t1 * dy)))
    }
}

fn color(c: Rgb) -> RGBColor {
    RGBColor(c[0], c[1], c[2])
}

fn pixel((px, py): (f64, f64)) -> (i32, i32) {
    (px.round() as i32, py.round() as i32)
}

impl Canvas {
    /// An empty `width × height` canvas with linear axes over `x_range × y_range`.
    ///
    /// Errors with [`PlotError::Range`] unless both ranges are finite and increasing, and with
    /// [`PlotError::Size`] if the canvas is smaller than [`MIN_SIZE`] or a side is larger than
    /// [`MAX_SIDE`].
    pub fn new(
        width: usize,
        height: usize,
        x_range: (f64, f64),
        y_range: (f64, f64),
    ) -> Result<Self, PlotError> {
        let fits = width >= MIN_SIZE.0 && height >= MIN_SIZE.1;
        if !fits || width > MAX_SIDE || height > MAX_SIDE {
            return Err(PlotError::Size { width, height });
        }
        Ok(Canvas {
            width,
            height,
            x: Axis::new("x", x_range)?,
            y: Axis::new("y", y_range)?,
            title: None,
            x_label: None,
            y_label: None,
            marks: Vec::new(),
            legend: Vec::new(),
        })
    }

    /// The same canvas with a logarithmic x axis (ticks at powers of ten and their 1-2-5
    /// multiples). Points with `x ≤ 0` are left out. Errors with [`PlotError::Range`] unless
    /// the x range is positive.
    pub fn log_x(self) -> Result<Self, PlotError> {
        Ok(Canvas { x: self.x.logarithmic("x")?, ..self })
    }

    /// The same canvas with a logarithmic y axis; see [`log_x`](Self::log_x).
    pub fn log_y(self) -> Result<Self, PlotError> {
        Ok(Canvas { y: self.y.logarithmic("y")?, ..self })
    }

    /// The same canvas with the axes labelled `x` (below the x axis) and `y` (left of the
    /// y axis, turned); an empty label is left out.
    pub fn labels(self, x: &str, y: &str) -> Self {
        let label = |s: &str| (!s.is_empty()).then(|| s.to_string());
        Canvas { x_label: label(x), y_label: label(y), ..self }
    }

    /// Light grey lines through 0 on each linear axis whose range contains 0.
    pub fn axes(&mut self) {
        let (x, y) = (self.x, self.y);
        if !x.log && x.lo <= 0.0 && 0.0 <= x.hi {
            self.polyline(&[[0.0, y.lo], [0.0, y.hi]], LIGHT_GREY, 1.0);
        }
        if !y.log && y.lo <= 0.0 && 0.0 <= y.hi {
            self.horizontal(0.0, LIGHT_GREY);
        }
    }

    /// A horizontal line across the plot area at data height `y`, 1 pixel wide.
    pub fn horizontal(&mut self, y: f64, color: Rgb) {
        self.polyline(&[[self.x.lo, y], [self.x.hi, y]], color, 1.0);
    }

    /// One disc of `radius` pixels per point (radius below ½: a single pixel), blended with
    /// opacity `alpha` ∈ [0, 1] (below 1, dense regions show darker). Points outside the plot
    /// area or not finite are left out.
    pub fn scatter(&mut self, points: &[[f64; 2]], color: Rgb, radius: f64, alpha: f32) {
        let (radius, alpha) = (radius.max(0.0), alpha.clamp(0.0, 1.0));
        self.marks.push(Mark::Scatter { points: points.to_vec(), color, radius, alpha });
    }

    /// A line through `points` (data coordinates, in order), `width` pixels thick (rounded,
    /// at least 1); it breaks at a point that is not finite.
    pub fn polyline(&mut self, points: &[[f64; 2]], color: Rgb, width: f64) {
        self.marks.push(Mark::Line { points: points.to_vec(), color, width });
    }

    /// An arrow from `from` to `to` (data coordinates), its head two strokes of up to 5 pixels
    /// at ±26° from the shaft.
    pub fn arrow(&mut self, from: [f64; 2], to: [f64; 2], color: Rgb) {
        self.marks.push(Mark::Arrow { from, to, color });
    }

    /// A quiver plot: an arrow from each origin along its vector `v`, drawn with length
    /// `min(scale·|v|, max_length)` in data units (so long vectors are capped, directions
    /// kept). Non-finite or zero vectors draw nothing.
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

    /// `text` in `size`-pixel type, its left end and vertical centre at the data point `at`
    /// (it is not clipped to the plot area).
    pub fn text(&mut self, at: [f64; 2], text: &str, color: Rgb, size: f64) {
        self.marks.push(Mark::Text { at, text: text.to_string(), color, size });
    }

    /// A legend entry: a swatch of `color` and `label`, in a box at the top right of the plot
    /// area, in the order the entries were added.
    pub fn legend(&mut self, label: &str, color: Rgb) {
        self.legend.push((label.to_string(), color));
    }

    /// The title, centred above the plot area.
    pub fn title(&mut self, text: &str) {
        self.title = Some(text.to_string());
    }

    /// Draws the plot: white background, title, axes with tick labels and light grid lines,
    /// axis labels, the marks in the order they were added, and the legend.
    ///
    /// Errors with [`PlotError::Font`] or [`PlotError::Draw`] if plotters cannot draw it.
    pub fn render(&self) -> Result<Image, PlotError> {
        self.render_with_frame().map(|(image, _)| image)
    }

    /// Ends drawing: the [rendered](Self::render) image.
    pub fn into_image(self) -> Result<Image, PlotError> {
        self.render()
    }

    /// The image and the pixel rectangle of its plot area.
    fn render_with_frame(&self) -> Result<(Image, Frame), PlotError> {
        register_fonts()?;
        let (w, h) = (self.width as u32, self.height as u32);
        let mut pixels = WHITE.repeat(self.width * self.height);
        let frame = {
            let backend = BitMapBackend::with_buffer(&mut pixels, (w, h));
            let root = FontBackend(backend).into_drawing_area();
            let frame = self.draw(&root)?;
            root.present().map_err(draw_error)?;
            frame
        };
        Ok((Image { width: self.width, height: self.height, channels: 3, pixels }, frame))
    }

    fn draw(&self, root: &DrawingArea<FontBackend<'_>, Shift>) -> Result<Frame, PlotError> {
        let mut builder = ChartBuilder::on(root);
        builder
            .margin(10)
            .x_label_area_size(if self.x_label.is_some() { 44 } else { 26 })
            .y_label_area_size(if self.y_label.is_some() { 70 } else { 50 });
        if let Some(title) = &self.title {
            builder.caption(title, (FONT, 17.0));
        }
        let mut chart = builder.build_cartesian_2d(self.x, self.y).map_err(draw_error)?;
        let (xs, ys) = chart.plotting_area().get_pixel_range();
        let frame = Frame {
            left: f64::from(xs.start),
            right: f64::from(xs.end - 1),
            top: f64::from(ys.start),
            bottom: f64::from(ys.end - 1),
        };
        let mut mesh = chart.configure_mesh();
        mesh.bold_line_style(color(GRID))
            .max_light_lines(0)
            .x_labels((self.width / 70).clamp(3, 10))
            .y_labels((self.height / 45).clamp(3, 10))
            .label_style((FONT, 12.0))
            .axis_desc_style((FONT, 13.0));
        if let Some(label) = &self.x_label {
            mesh.x_desc(label);
        }
        if let Some(label) = &self.y_label {
            mesh.y_desc(label);
        }
        mesh.draw().map_err(draw_error)?;
        for mark in &self.marks {
            self.draw_mark(root, &frame, mark)?;
        }
        for (label, c) in &self.legend {
            let c = color(*c);
            chart
                .draw_series(std::iter::empty::<Circle<(f64, f64), i32>>())
                .map_err(draw_error)?
                .label(label)
                .legend(move |(x, y)| Rectangle::new([(x, y - 4), (x + 14, y + 4)], c.filled()));
        }
        if !self.legend.is_empty() {
            chart
                .configure_series_labels()
                .position(SeriesLabelPosition::UpperRight)
                .background_style(color(WHITE).mix(0.85))
                .border_style(color(LIGHT_GREY))
                .label_font((FONT, 13.0))
                .draw()
                .map_err(draw_error)?;
        }
        Ok(frame)
    }

    fn draw_mark(
        &self,
        root: &DrawingArea<FontBackend<'_>, Shift>,
        frame: &Frame,
        mark: &Mark,
    ) -> Result<(), PlotError> {
        let at = |p: [f64; 2]| frame.pixel_of(&self.x, &self.y, p);
        match mark {
            Mark::Scatter { points, color: c, radius, alpha } => {
                let style = color(*c).mix(f64::from(*alpha));
                for p in points.iter().filter_map(|p| at(*p)).filter(|p| frame.contains(*p)) {
                    if *radius < 0.5 {
                        root.draw_pixel(pixel(p), &style).map_err(draw_error)?;
                    } else {
                        let disc = Circle::new(pixel(p), radius.round() as i32, style.filled());
                        root.draw(&disc).map_err(draw_error)?;
                    }
                }
            }
            Mark::Line { points, color: c, width } => {
                let style = color(*c).stroke_width(width.round().max(1.0) as u32);
                // Runs of consecutive segments inside the frame, each drawn as one path so
                // that thick lines join cleanly.
                let mut run: Vec<(i32, i32)> = Vec::new();
                for pair in points.windows(2) {
                    let segment = match (at(pair[0]), at(pair[1])) {
                        (Some(a), Some(b)) => frame.clip(a, b).map(|c| (a, b, c)),
                        _ => None,
                    };
                    let Some((a, b, (ca, cb))) = segment else {
                        flush(root, &mut run, style)?;
                        continue;
                    };
                    if ca != a || run.is_empty() {
                        flush(root, &mut run, style)?;
                        run.push(pixel(ca));
                    }
                    run.push(pixel(cb));
                    if cb != b {
                        flush(root, &mut run, style)?;
                    }
                }
                flush(root, &mut run, style)?;
            }
            Mark::Arrow { from, to, color: c } => {
                let (Some(a), Some(b)) = (at(*from), at(*to)) else { return Ok(()) };
                let mut strokes = vec![(a, b)];
                let (dx, dy) = (a.0 - b.0, a.1 - b.1);
                let len = dx.hypot(dy);
                if len >= 1.0 {
                    let head = (0.4 * len).min(5.0) / len;
                    let (cos, sin) = (0.45f64.cos(), 0.45f64.sin());
                    for s in [sin, -sin] {
                        let (hx, hy) = ((cos * dx - s * dy) * head, (s * dx + cos * dy) * head);
                        strokes.push((b, (b.0 + hx, b.1 + hy)));
                    }
                }
                for (a, b) in strokes.into_iter().filter_map(|(a, b)| frame.clip(a, b)) {
                    let path = PathElement::new(vec![pixel(a), pixel(b)], color(*c));
                    root.draw(&path).map_err(draw_error)?;
                }
            }
            Mark::Text { at: p, text, color: c, size } => {
                if let Some(p) = at(*p) {
                    let style = (FONT, *size)
                        .into_font()
                        .color(&color(*c))
                        .pos(Pos::new(HPos::Left, VPos::Center));
                    root.draw(&Text::new(text.as_str(), pixel(p), style)).map_err(draw_error)?;
                }
            }
        }
        Ok(())
    }
}

/// Draws the path `run` (if it has a segment) and empties it.
fn flush(
    root: &DrawingArea<FontBackend<'_>, Shift>,
    run: &mut Vec<(i32, i32)>,
    style: ShapeStyle,
) -> Result<(), PlotError> {
    if run.len() >= 2 {
        root.draw(&PathElement::new(std::mem::take(run), style)).map_err(draw_error)?;
    }
    run.clear();
    Ok(())
}

/// `n × n` points at the centres of the cells of a regular grid over `x_range × y_range`, row
/// by row from the bottom left: point `j·n + i` is
/// `(x_min + (i + ½)·Δx, y_min + (j + ½)·Δy)` with `Δ = range/n`.
pub fn grid_points(x_range: (f64, f64), y_range: (f64, f64), n: usize) -> Vec<[f64; 2]> {
    let at = |(lo, hi): (f64, f64), i: usize| lo + (i as f64 + 0.5) * (hi - lo) / n as f64;
    (0..n * n).map(|k| [at(x_range, k % n), at(y_range, k / n)]).collect()
}

/// A line plot of `series` (points `(x, y)`, in order) on a `width × height` canvas with a
/// title and tick-labelled axes spanning the data (y with 4 % room above and below). With
/// `log_y` the y axis is logarithmic and labelled "log scale", and points with `y ≤ 0` are
/// left out. Non-finite points are left out; an empty series gives empty axes.
///
/// Errors as [`Canvas::new`] and [`Canvas::render`] do.
pub fn line_plot(
    series: &[[f64; 2]],
    size: (usize, usize),
    log_y: bool,
    color: Rgb,
    title: &str,
) -> Result<Image, PlotError> {
    line_canvas(series, size, log_y, color, title)?.render()
}

/// The canvas of [`line_plot`], before rendering.
fn line_canvas(
    series: &[[f64; 2]],
    (width, height): (usize, usize),
    log_y: bool,
    color: Rgb,
    title: &str,
) -> Result<Canvas, PlotError> {
    // Ranges are computed on the axis's own scale: log₁₀ y on a log axis.
    let map = |p: &[f64; 2]| [p[0], if log_y { p[1].log10() } else { p[1] }];
    let kept = |p: &&[f64; 2]| map(p).iter().all(|v| v.is_finite());
    let points: Vec<[f64; 2]> = series.iter().filter(kept).copied().collect();
    let range = |i: usize| {
        let (lo, hi) = points
            .iter()
            .map(map)
            .fold((f64::INFINITY, f64::NEG_INFINITY), |r, p| (r.0.min(p[i]), r.1.max(p[i])));
        match (lo.is_finite(), hi - lo > 1e-12 * lo.abs().max(1.0)) {
            (false, _) => (0.0, 1.0),
            (true, false) => (lo - 0.5, lo + 0.5),
            (true, true) => (lo, hi),
        }
    };
    let ((x0, x1), (y0, y1)) = (range(0), range(1));
    let pad = 0.04 * (y1 - y0);
    let (y0, y1) = (y0 - pad, y1 + pad);
    let mut canvas = if log_y {
        Canvas::new(width, height, (x0, x1), (10f64.powf(y0), 10f64.powf(y1)))?
            .log_y()?
            .labels("", "log scale")
    } else {
        Canvas::new(width, height, (x0, x1), (y0, y1))?
    };
    canvas.axes();
    canvas.polyline(&points, color, 2.0);
    canvas.title(title);
    Ok(canvas)
}

/// A number in at most about 8 characters: 3 significant decimals, or scientific notation.
fn short_number(v: f64) -> String {
    let a = v.abs();
    if a == 0.0 {
        "0".to_string()
    } else if !(1e-2..1e4).contains(&a) {
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

#[cfg(test)]
mod tests {
    use super::*;

    fn px(img: &Image, x: usize, y: usize) -> Rgb {
        let i = (y * img.width + x) * 3;
        [img.pixels[i], img.pixels[i + 1], img.pixels[i + 2]]
    }

    fn count(img: &Image, mut f: impl FnMut(usize, usize, Rgb) -> bool) -> usize {
        (0..img.width * img.height)
            .filter(|&i| f(i % img.width, i / img.width, px(img, i % img.width, i / img.width)))
            .count()
    }

    /// Dark enough to be text (anti-aliased glyphs blend black into white).
    fn dark(c: Rgb) -> bool {
        c.iter().all(|&v| v < 128)
    }

    /// The pixel of the data point `(x, y)` by the module docs' formula, on linear axes.
    fn expected(
        frame: &Frame,
        (x0, x1): (f64, f64),
        (y0, y1): (f64, f64),
        x: f64,
        y: f64,
    ) -> (usize, usize) {
        let fx = (x - x0) / (x1 - x0);
        let fy = (y - y0) / (y1 - y0);
        let px = frame.left + fx * (frame.right - frame.left);
        let py = frame.bottom - fy * (frame.bottom - frame.top);
        (px.round() as usize, py.round() as usize)
    }

    #[test]
    fn a_point_lands_where_the_mapping_says_and_outside_points_are_clipped() {
        let mut canvas = Canvas::new(200, 180, (-1.0, 1.0), (-1.0, 1.0)).unwrap();
        canvas.scatter(&[[0.5, -0.5]], RED, 0.0, 1.0);
        canvas.scatter(&[[1.5, 0.0], [0.0, f64::NAN]], BLUE, 3.0, 1.0);
        let (img, frame) = canvas.render_with_frame().unwrap();
        assert_eq!((img.width, img.height, img.channels), (200, 180, 3));
        // The plot area lies inside the image, right of the tick labels.
        assert!(40.0 < frame.left && frame.left < frame.right && frame.right < 200.0);
        assert!(0.0 <= frame.top && frame.top < frame.bottom && frame.bottom < 160.0);
        let (x, y) = expected(&frame, (-1.0, 1.0), (-1.0, 1.0), 0.5, -0.5);
        assert_eq!(px(&img, x, y), RED);
        assert_eq!(count(&img, |_, _, c| c == RED), 1, "a radius-0 point is one pixel");
        assert_eq!(count(&img, |_, _, c| c == BLUE), 0, "out of range or NaN: nothing drawn");
        // The corners of the range map onto the corners of the plot area.
        let corner = expected(&frame, (-1.0, 1.0), (-1.0, 1.0), -1.0, 1.0);
        assert_eq!(corner, (frame.left as usize, frame.top as usize));
    }

    #[test]
    fn axes_pass_through_zero_and_ticks_are_labelled() {
        let (xr, yr) = ((-1.0, 3.0), (-2.0, 2.0));
        let mut canvas = Canvas::new(240, 200, xr, yr).unwrap();
        canvas.axes();
        let (img, frame) = canvas.render_with_frame().unwrap();
        let (zx, zy) = expected(&frame, xr, yr, 0.0, 0.0);
        let (_, y_top) = expected(&frame, xr, yr, 0.0, 1.7);
        let (x_right, _) = expected(&frame, xr, yr, 2.7, 0.0);
        assert_eq!(px(&img, zx, y_top), LIGHT_GREY, "the vertical line through x = 0");
        assert_eq!(px(&img, x_right, zy), LIGHT_GREY, "the horizontal line through y = 0");
        let left_of = |x: usize, y: usize, c: Rgb| {
            (x as f64) < frame.left - 2.0 && (y as f64) < frame.bottom && dark(c)
        };
        let below = |x: usize, y: usize, c: Rgb| {
            (y as f64) > frame.bottom + 2.0 && (x as f64) > frame.left && dark(c)
        };
        assert!(count(&img, left_of) > 20, "y tick labels");
        assert!(count(&img, below) > 20, "x tick labels");
    }

    #[test]
    fn an_arrow_starts_at_its_grid_point_and_is_capped() {
        let range = (0.0, 10.0);
        let origins = grid_points(range, range, 5);
        assert_eq!(origins.len(), 25);
        assert_eq!((origins[0], origins[7]), ([1.0, 1.0], [5.0, 3.0]));
        let mut canvas = Canvas::new(240, 240, range, range).unwrap();
        let mut vectors = vec![[0.0; 2]; 25];
        vectors[7] = [100.0, 0.0]; // capped at length 1.5: from (5, 3) to (6.5, 3)
        vectors[12] = [0.0, 1.0]; // scaled by 0.5: from (5, 5) to (5, 5.5)
        vectors[13] = [f64::NAN, 1.0];
        canvas.quiver(&origins, &vectors, 0.5, 1.5, RED);
        let (img, frame) = canvas.render_with_frame().unwrap();
        let at = |x: f64, y: f64| {
            let (px_, py) = expected(&frame, range, range, x, y);
            px(&img, px_, py)
        };
        assert_eq!(at(5.0, 3.0), RED, "starts at its grid point");
        assert_eq!(at(6.5, 3.0), RED, "reaches its capped tip");
        assert_ne!(at(7.0, 3.0), RED, "and stops there");
        assert_ne!(at(4.6, 3.0), RED, "nothing behind the origin");
        assert_eq!(at(5.0, 5.0), RED);
        assert_eq!(at(5.0, 5.5), RED);
        assert_ne!(at(5.0, 6.0), RED);
        assert_ne!(at(1.0, 1.0), RED, "zero vectors draw nothing");
        assert_ne!(at(7.0, 5.0), RED, "non-finite vectors draw nothing");
        // The head: strokes back from the tip on both sides of the shaft (anti-aliased, so
        // red blended with white).
        let (tx, ty) = expected(&frame, range, range, 6.5, 3.0);
        let reddish = |c: Rgb| c[0] > 200 && c[1] < 150 && c[2] < 150;
        assert!(reddish(px(&img, tx - 3, ty - 1)) && reddish(px(&img, tx - 3, ty + 1)));
        assert!(!reddish(px(&img, tx - 3, ty - 4)) && !reddish(px(&img, tx + 3, ty - 1)));
        let red = count(&img, |_, _, c| c == RED);
        assert!(red < 80, "two short arrows, {red} red pixels");
    }

    #[test]
    fn lines_are_clipped_to_the_plot_area() {
        let mut canvas = Canvas::new(200, 200, (0.0, 1.0), (0.0, 1.0)).unwrap();
        canvas.polyline(&[[-1.0, 0.5], [2.0, 0.5]], RED, 1.0);
        canvas.polyline(&[[0.2, -5.0], [0.2, -1.0]], BLUE, 1.0);
        let (img, frame) = canvas.render_with_frame().unwrap();
        let inside = |x: usize, y: usize| {
            (frame.left..=frame.right).contains(&(x as f64))
                && (frame.top..=frame.bottom).contains(&(y as f64))
        };
        let red: Vec<(usize, usize)> = (0..200 * 200)
            .map(|i| (i % 200, i / 200))
            .filter(|&(x, y)| px(&img, x, y) == RED)
            .collect();
        let width = (frame.right - frame.left) as usize + 1;
        assert_eq!(red.len(), width, "one row across the plot area, no further");
        assert!(red.iter().all(|&(x, y)| inside(x, y)));
        assert_eq!(count(&img, |_, _, c| c == BLUE), 0, "wholly outside: nothing");
        let f = Frame { left: 0.0, top: 0.0, right: 10.0, bottom: 10.0 };
        assert_eq!(f.clip((-5.0, 5.0), (5.0, 5.0)), Some(((0.0, 5.0), (5.0, 5.0))));
        assert_eq!(f.clip((-5.0, -5.0), (15.0, 15.0)), Some(((0.0, 0.0), (10.0, 10.0))));
        assert_eq!(f.clip((11.0, 0.0), (20.0, 5.0)), None);
    }

    #[test]
    fn title_text_and_legend_are_drawn_in_the_font() {
        let plain = Canvas::new(300, 200, (0.0, 1.0), (0.0, 1.0)).unwrap();
        let (img, frame) = plain.render_with_frame().unwrap();
        // Above the plot area (right of the y tick labels, which may reach above it).
        let above = |f: Frame| {
            move |x: usize, y: usize, c: Rgb| {
                (y as f64) < f.top - 1.0 && (x as f64) >= f.left && c != WHITE
            }
        };
        assert_eq!(count(&img, above(frame)), 0, "no title: blank above the plot");
        let mut titled = plain.clone();
        titled.title("σ = 0.05, ε");
        titled.text([0.1, 0.5], "note", RED, 14.0);
        titled.legend("samples", ORANGE);
        let (img, frame) = titled.render_with_frame().unwrap();
        assert!(frame.top > 15.0, "the title takes room");
        assert!(count(&img, above(frame)) > 100, "the title's glyphs");
        // The note: red-ish glyph pixels right of (0.1, 0.5), within its line.
        let (nx, ny) = expected(&frame, (0.0, 1.0), (0.0, 1.0), 0.1, 0.5);
        let reddish = |c: Rgb| c[0] > 150 && c[1] < 150 && c[2] < 150;
        let note = count(&img, |x, y, c| {
            x >= nx && x < nx + 60 && y + 10 > ny && y < ny + 10 && reddish(c)
        });
        assert!(note > 15, "{note} red pixels of the note");
        // The legend: an orange swatch and its dark label in the upper right of the plot.
        let upper_right = |x: usize, y: usize| {
            (x as f64) > frame.left + 0.5 * (frame.right - frame.left)
                && (y as f64) < frame.top + 0.4 * (frame.bottom - frame.top)
        };
        assert!(count(&img, |x, y, c| upper_right(x, y) && c == ORANGE) >= 50);
        assert!(count(&img, |x, y, c| upper_right(x, y) && dark(c)) > 20);
    }

    /// Each glyph's ink starts where the font puts it: at the pen plus the glyph's left side
    /// bearing (plotters 0.3.7's own text path drops the bearing: run through it, this test
    /// found the `l` at column 84 where the font puts it at 86.9). The oracle is DejaVu
    /// Sans's own metrics.
    #[test]
    fn glyphs_sit_at_the_pen_plus_their_side_bearing() {
        use ab_glyph::{Font, FontRef, ScaleFont};
        let size = 48.0;
        let mut canvas = Canvas::new(300, 200, (0.0, 1.0), (0.0, 1.0)).unwrap();
        canvas.text([0.1, 0.5], "l.", RED, size);
        let (img, frame) = canvas.render_with_frame().unwrap();
        let (nx, ny) = expected(&frame, (0.0, 1.0), (0.0, 1.0), 0.1, 0.5);
        // Columns holding a strongly red pixel in the text's rows, as runs of columns.
        let red = |c: Rgb| c[0] > 200 && c[1] < 120 && c[2] < 120;
        let inked: Vec<usize> =
            (0..img.width).filter(|&x| (ny - 30..ny + 30).any(|y| red(px(&img, x, y)))).collect();
        let mut starts = vec![inked[0]];
        starts.extend(inked.windows(2).filter(|w| w[1] > w[0] + 1).map(|w| w[1]));
        assert_eq!(starts.len(), 2, "two glyphs apart: {inked:?}");
        let font = FontRef::try_from_slice(dejavu::sans::regular()).unwrap();
        let font = font.as_scaled(size as f32);
        let (l, dot) = (font.glyph_id('l'), font.glyph_id('.'));
        let want = [
            nx as f32 + font.h_side_bearing(l),
            nx as f32 + font.h_advance(l) + font.kern(l, dot) + font.h_side_bearing(dot),
        ];
        for (got, want) in starts.iter().zip(want) {
            assert!((*got as f32 - want).abs() <= 1.5, "ink from column {got}, font says {want}");
        }
    }

    #[test]
    fn line_plot_spans_its_area_on_a_log_scale_and_skips_what_it_cannot_draw() {
        let series: Vec<[f64; 2]> = (0..50).map(|i| [i as f64, 10f64.powi(-(i / 10))]).collect();
        let (img, frame) = line_canvas(&series, (300, 220), true, GREEN, "loss")
            .unwrap()
            .render_with_frame()
            .unwrap();
        assert_eq!((img.width, img.height, img.channels), (300, 220, 3));
        // log₁₀ y spans [−4, 0], padded by 0.16 on each side: the first point (0, 1) sits
        // 0.16/4.32 of the height below the top, the last (49, 10⁻⁴) as far above the bottom.
        let h = frame.bottom - frame.top;
        let y_first = (frame.top + 0.16 / 4.32 * h).round() as usize;
        let y_last = (frame.bottom - 0.16 / 4.32 * h).round() as usize;
        assert_eq!(px(&img, frame.left as usize, y_first), GREEN);
        // A thick line's polygon ends within a pixel of its end point.
        assert_eq!(px(&img, frame.right as usize - 1, y_last), GREEN);
        let mut with_bad = series.clone();
        with_bad.extend([[50.0, 0.0], [51.0, -1.0], [52.0, f64::NAN]]);
        let skipped = line_plot(&with_bad, (300, 220), true, GREEN, "loss").unwrap();
        assert_eq!(skipped.pixels, img.pixels, "points a log axis cannot show are left out");
        let linear = line_plot(&[[0.0, -1.0], [1.0, -1.0]], (150, 120), false, RED, "").unwrap();
        assert!(linear.pixels.chunks(3).any(|c| c == RED), "a flat series is drawn");
        let empty = line_plot(&[], (150, 120), true, RED, "empty").unwrap();
        assert!(!empty.pixels.chunks(3).any(|c| c == RED));
    }

    #[test]
    fn bad_ranges_and_sizes_are_errors() {
        let ok = (0.0, 1.0);
        assert!(matches!(
            Canvas::new(200, 200, (1.0, 1.0), ok),
            Err(PlotError::Range { axis: "x", .. })
        ));
        assert!(matches!(
            Canvas::new(200, 200, ok, (0.0, f64::NAN)),
            Err(PlotError::Range { axis: "y", .. })
        ));
        assert!(matches!(Canvas::new(100, 200, ok, ok), Err(PlotError::Size { .. })));
        assert!(matches!(Canvas::new(200, MAX_SIDE + 1, ok, ok), Err(PlotError::Size { .. })));
        let canvas = Canvas::new(200, 200, ok, (-1.0, 1.0)).unwrap();
        assert!(matches!(canvas.clone().log_y(), Err(PlotError::Range { axis: "y", .. })));
        assert!(matches!(canvas.log_x(), Err(PlotError::Range { axis: "x", .. })));
        assert!(line_plot(&[[0.0, 1.0]], (80, 60), false, RED, "").is_err());
    }

    #[test]
    fn log_ticks_are_round_numbers_inside_the_range() {
        let axis = |lo, hi| Axis::new("y", (lo, hi)).unwrap().logarithmic("y").unwrap();
        let close = |a: &[f64], b: &[f64]| {
            a.len() == b.len() && a.iter().zip(b).all(|(x, y)| (x - y).abs() <= 1e-12 * y)
        };
        let ticks = axis(1e-4, 1.5).ticks(10);
        assert!(close(&ticks, &[1e-4, 1e-3, 1e-2, 0.1, 1.0]), "{ticks:?}");
        let ticks = axis(0.15, 0.95).ticks(10);
        assert!(close(&ticks, &[0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9]), "{ticks:?}");
        let ticks = axis(0.15, 12.0).ticks(8);
        assert!(close(&ticks, &[0.2, 0.5, 1.0, 2.0, 5.0, 10.0]), "{ticks:?}");
        // Within one step of 1…9: linear ticks, still inside the range.
        let ticks = axis(0.61, 0.69).ticks(6);
        assert!(ticks.len() >= 2 && ticks.iter().all(|t| (0.61..=0.69).contains(t)), "{ticks:?}");
        // More decades than ticks: every k-th power.
        let ticks = axis(1e-30, 1e30).ticks(10);
        assert!(ticks.len() <= 10 && ticks.len() >= 5, "{ticks:?}");
        assert!(ticks.windows(2).all(|w| (w[1] / w[0]).log10().round() == 7.0), "{ticks:?}");
        // A log axis maps its ends onto the limits and 10^(mid) half-way.
        let a = axis(1e-2, 1e2);
        assert_eq!(
            (a.map(&1e-2, (10, 110)), a.map(&1.0, (10, 110)), a.map(&1e2, (10, 110))),
            (10, 60, 110)
        );
        assert_eq!(a.fraction(-1.0), None);
    }

    #[test]
    fn png_round_trip_of_a_plot() {
        let mut canvas = Canvas::new(160, 120, (-1.0, 1.0), (-1.0, 1.0)).unwrap();
        canvas.axes();
        canvas.scatter(&[[0.2, 0.3], [-0.5, -0.1]], ORANGE, 2.0, 0.5);
        canvas.title("σ = 0.05");
        let img = canvas.into_image().unwrap();
        let bytes = img.to_png().unwrap();
        let decoder = png::Decoder::new(std::io::Cursor::new(bytes));
        let mut reader = decoder.read_info().unwrap();
        let mut buf = vec![0; reader.output_buffer_size().unwrap()];
        let info = reader.next_frame(&mut buf).unwrap();
        assert_eq!((info.width, info.height), (160, 120));
        assert_eq!(info.color_type, png::ColorType::Rgb);
        assert_eq!(&buf[..info.buffer_size()], &img.pixels[..]);
        assert!(img.pixels.chunks(3).filter(|c| *c != WHITE).count() > 200, "not blank");
    }

    #[test]
    fn short_numbers() {
        assert_eq!(short_number(0.25), "0.25");
        assert_eq!(short_number(3.0), "3");
        assert_eq!(short_number(-0.0), "0");
        assert_eq!(short_number(0.001234), "1.2e-3");
        assert_eq!(short_number(-25000.0), "-2.5e4");
        assert_eq!(short_number(2000.0), "2000");
        let axis = Axis::new("x", (-1.0, 1.0)).unwrap();
        assert_eq!(axis.format_ext(&5.5e-17), "0");
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
}
