//! Pictures: the learning curve of a training run and 2-D scatter plots of vectors, as PNG or SVG.
//!
//! Each picture is drawn once for any plotters backend ([`Picture`]). For a PNG plotters draws into
//! an in-memory RGB bitmap and `png` encodes it; for an SVG plotters writes the text of the file.
//! Either is written through a temporary file and a rename, so a reader never sees half a picture.
//! Text is measured with a font embedded in the binary, so drawing needs no system font library
//! (fontconfig) at run time; an SVG names the `sans-serif` family and leaves the glyphs to its
//! viewer.

use std::ops::Range;
use std::path::Path;
use std::sync::OnceLock;

use anyhow::{Context, Result, bail};
use plotters::coord::Shift;
use plotters::data::float::FloatPrettyPrinter;
use plotters::element::DashedPathElement;
use plotters::prelude::*;
use plotters::style::colors::colormaps::{ColorMap, ViridisRGB};
use plotters::style::register_font;
use plotters::style::text_anchor::{HPos, Pos, VPos};

use crate::store::checkpoint::write_atomically;
use crate::store::metrics_log::MetricsRow;

/// DejaVu Sans; its licence is `assets/DejaVuSans-LICENSE.txt`.
const FONT_BYTES: &[u8] = include_bytes!("../../assets/DejaVuSans.ttf");
/// The family every text style below names, and plotters' own default for legends and labels.
const FONT: &str = "sans-serif";

const LEARNING_CURVE_SIZE: (u32, u32) = (1200, 700);
const SCATTER_SIZE: (u32, u32) = (1000, 800);
/// Width of the colour bar beside a scatter plot, labels included.
const COLOUR_BAR_WIDTH: u32 = 150;

const TITLE_SIZE: u32 = 28;
/// A title too wide for the picture at [`TITLE_SIZE`] shrinks down to this size, then loses its
/// middle to an ellipsis.
const SMALLEST_TITLE_SIZE: u32 = 16;
/// The margin every chart keeps around its caption and plotting area.
const CHART_MARGIN: u32 = 20;
const AXIS_TITLE_SIZE: u32 = 20;
const LABEL_SIZE: u32 = 16;

/// Points whose value is NaN or infinite, outside the colour map.
const NO_VALUE_COLOUR: RGBColor = RGBColor(160, 160, 160);
/// Largest magnitude an axis shows; plotters computes NaN ticks when an axis's width overflows.
const AXIS_LIMIT: f64 = 1e300;
/// Height of the strip under the learning curve that holds its legend: one row for training, one
/// for validation, so that the legend never hides a curve.
const LEGEND_HEIGHT: u32 = 70;
/// Width of one legend entry: one column per metric.
const LEGEND_COLUMN_WIDTH: i32 = 330;
/// Height of the strip under the learning curve that draws the gradient's norm, when the log has one.
const GRADIENT_STRIP_HEIGHT: u32 = 170;
/// The gradient norm's line: a colour no metric, text or grid line uses (matplotlib's tab:purple).
const GRADIENT_COLOUR: RGBColor = RGBColor(148, 103, 189);

/// Draws loss (left axis) and accuracies in % (right axis) against samples seen, training and
/// validation as separate series, into a 1200x700 picture at `path` (PNG or SVG, by its name).
/// Series that are `None` in every row are left out; without any accuracy (regression) there is
/// no right axis.
pub fn learning_curve(rows: &[MetricsRow], title: &str, path: &Path) -> Result<()> {
    if rows.is_empty() {
        bail!("cannot draw {}: the metrics log has no rows", path.display());
    }
    let curve = |metric, validation, value: fn(&MetricsRow) -> Option<f64>| Curve {
        metric,
        validation,
        points: rows
            .iter()
            .filter_map(|row| Some((row.samples_seen as f64, value(row)?)))
            .filter(|(_, value)| value.is_finite())
            .collect(),
    };
    let curves: Vec<Curve> = [
        curve(Metric::Loss, false, |row| Some(row.loss)),
        curve(Metric::Loss, true, |row| row.validation_loss),
        curve(Metric::CharAccuracy, false, |row| percent(row.char_accuracy)),
        curve(Metric::CharAccuracy, true, |row| percent(row.validation_char_accuracy)),
        curve(Metric::SequenceAccuracy, false, |row| percent(row.sequence_accuracy)),
        curve(Metric::SequenceAccuracy, true, |row| percent(row.validation_sequence_accuracy)),
    ]
    .into_iter()
    .filter(|curve| !curve.points.is_empty())
    .collect();

    let samples_range = 0.0..padded_range(rows.iter().map(|row| row.samples_seen as f64), 0.05).end;
    let loss_values =
        curves.iter().filter(|curve| curve.metric == Metric::Loss).flat_map(|curve| curve.points.iter().map(|p| p.1));
    let loss_range = padded_range(loss_values.clone(), 0.05);
    // Losses are never negative in practice: start the axis at 0 so that curves compare by height.
    let loss_range = if loss_values.fold(f64::INFINITY, f64::min) >= 0.0 { 0.0..loss_range.end } else { loss_range };
    let has_accuracy = curves.iter().any(|curve| curve.metric != Metric::Loss);
    let gradient_norms = rows
        .iter()
        .filter_map(|row| Some((row.samples_seen as f64, row.gradient_norm?)))
        .filter(|(_, norm)| norm.is_finite() && *norm > 0.0)
        .collect();
    render(path, &LearningCurve { title, curves, samples_range, loss_range, has_accuracy, gradient_norms })
}

/// The learning curve, ready to draw.
struct LearningCurve<'a> {
    title: &'a str,
    curves: Vec<Curve>,
    samples_range: Range<f64>,
    loss_range: Range<f64>,
    has_accuracy: bool,
    /// (samples seen, the last batch's gradient norm before clipping), drawn in a strip of their
    /// own: their scale is not the loss's.
    gradient_norms: Vec<(f64, f64)>,
}

impl LearningCurve<'_> {
    /// Right-axis room, so that the strip's plotting area lines up with the chart's.
    fn right_label_area(&self) -> u32 {
        if self.has_accuracy { 90 } else { 0 }
    }

    /// The gradient norms against samples seen, under the chart and aligned with it.
    fn draw_gradient_strip<DB: DrawingBackend>(&self, area: &DrawingArea<DB, Shift>) -> Result<()>
    where
        DB::ErrorType: 'static,
    {
        let norms = 0.0..padded_range(self.gradient_norms.iter().map(|&(_, norm)| norm), 0.1).end;
        let mut strip = ChartBuilder::on(area)
            .margin_left(CHART_MARGIN)
            .margin_right(CHART_MARGIN + self.right_label_area())
            .margin_top(10)
            .x_label_area_size(50)
            .y_label_area_size(90)
            .build_cartesian_2d(self.samples_range.clone(), norms)?;
        strip
            .configure_mesh()
            .x_desc("samples seen")
            .y_desc("gradient norm")
            .x_label_formatter(&|samples| format_count(*samples))
            .y_label_formatter(&tick_label)
            .y_labels(4)
            .label_style((FONT, LABEL_SIZE))
            .axis_desc_style((FONT, LABEL_SIZE))
            .draw()?;
        let style = GRADIENT_COLOUR.stroke_width(2);
        let area = strip.plotting_area();
        area.draw(&PathElement::new(self.gradient_norms.clone(), style))?;
        for &point in &self.gradient_norms {
            area.draw(&Circle::new(point, 3, GRADIENT_COLOUR.filled()))?;
        }
        Ok(())
    }
}

impl Picture for LearningCurve<'_> {
    const SIZE: (u32, u32) = LEARNING_CURVE_SIZE;

    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> Result<()>
    where
        DB::ErrorType: 'static,
    {
        let (chart_area, legend_area) = root.split_vertically(Self::SIZE.1 - LEGEND_HEIGHT);
        let (chart_area, strip_area) = match self.gradient_norms.is_empty() {
            true => (chart_area, None),
            false => {
                let (chart, strip) = chart_area.split_vertically(Self::SIZE.1 - LEGEND_HEIGHT - GRADIENT_STRIP_HEIGHT);
                (chart, Some(strip))
            }
        };
        let (title, title_size) = fitted_title(&chart_area, self.title)?;
        let mut chart = ChartBuilder::on(&chart_area)
            .caption(title, (FONT, title_size))
            .margin(CHART_MARGIN)
            .margin_bottom(0)
            .x_label_area_size(if strip_area.is_some() { 30 } else { 60 })
            .y_label_area_size(90)
            .right_y_label_area_size(self.right_label_area())
            .build_cartesian_2d(self.samples_range.clone(), self.loss_range.clone())?
            .set_secondary_coord(self.samples_range.clone(), 0.0..100.0);
        chart
            .configure_mesh()
            .x_desc(if strip_area.is_some() { "" } else { "samples seen" })
            .y_desc("loss")
            .x_label_formatter(&|samples| format_count(*samples))
            .y_label_formatter(&tick_label)
            .label_style((FONT, LABEL_SIZE))
            .axis_desc_style((FONT, AXIS_TITLE_SIZE))
            .draw()?;
        if self.has_accuracy {
            chart
                .configure_secondary_axes()
                .y_desc("accuracy (%)")
                .y_label_formatter(&|percent| format!("{percent:.0}"))
                .label_style((FONT, LABEL_SIZE))
                .axis_desc_style((FONT, AXIS_TITLE_SIZE))
                .draw()?;
        }
        for curve in &self.curves {
            match curve.metric {
                Metric::Loss => curve.draw(chart.plotting_area())?,
                Metric::CharAccuracy | Metric::SequenceAccuracy => curve.draw(chart.secondary_plotting_area())?,
            }
        }
        if let Some(strip_area) = &strip_area {
            self.draw_gradient_strip(strip_area)?;
        }
        // The legend starts level with the plotting area's left edge.
        let left = chart.plotting_area().get_pixel_range().0.start;
        for curve in &self.curves {
            let x = left + LEGEND_COLUMN_WIDTH * curve.metric as i32;
            let y = 14 + 28 * i32::from(curve.validation);
            curve.draw_legend_entry(&legend_area, (x, y))?;
        }
        Ok(())
    }
}

/// An accuracy as a percentage, for the right axis.
fn percent(fraction: Option<f64>) -> Option<f64> {
    fraction.map(|fraction| 100.0 * fraction)
}

/// What a learning-curve series measures; its position is its legend column.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Metric {
    Loss,
    CharAccuracy,
    SequenceAccuracy,
}

impl Metric {
    fn name(self) -> &'static str {
        match self {
            Metric::Loss => "loss",
            Metric::CharAccuracy => "char accuracy",
            Metric::SequenceAccuracy => "sequence accuracy",
        }
    }

    fn colour(self) -> RGBColor {
        match self {
            Metric::Loss => RGBColor(31, 119, 180),
            Metric::CharAccuracy => RGBColor(44, 160, 44),
            Metric::SequenceAccuracy => RGBColor(255, 127, 14),
        }
    }
}

/// One series of the learning curve: (samples seen, value) in the units of its axis.
struct Curve {
    metric: Metric,
    /// Validation is scored less often: dashed, with a dot at every score so that a single one shows.
    validation: bool,
    points: Vec<(f64, f64)>,
}

impl Curve {
    fn label(&self) -> String {
        format!("{} {}", if self.validation { "validation" } else { "training" }, self.metric.name())
    }

    fn style(&self) -> ShapeStyle {
        self.metric.colour().stroke_width(2)
    }

    /// Draws the curve on `area`, whose coordinates are those of the curve's axis.
    fn draw<DB: DrawingBackend, Coordinates: CoordTranslate<From = (f64, f64)>>(
        &self,
        area: &DrawingArea<DB, Coordinates>,
    ) -> Result<(), DrawingAreaErrorKind<DB::ErrorType>> {
        if !self.validation {
            return area.draw(&PathElement::new(self.points.clone(), self.style()));
        }
        area.draw(&DashedPathElement::new(self.points.iter().copied(), 10, 6, self.style()))?;
        let dot = self.metric.colour().filled();
        self.points.iter().try_for_each(|&point| area.draw(&Circle::new(point, 4, dot)))
    }

    /// A short sample of the line, and the label, with the sample's left end at `(x, y)` pixels.
    fn draw_legend_entry<DB: DrawingBackend>(
        &self,
        area: &DrawingArea<DB, Shift>,
        (x, y): (i32, i32),
    ) -> Result<(), DrawingAreaErrorKind<DB::ErrorType>> {
        let sample = [(x, y), (x + 36, y)];
        if self.validation {
            area.draw(&DashedPathElement::new(sample, 10, 6, self.style()))?;
            area.draw(&Circle::new((x + 18, y), 4, self.metric.colour().filled()))?;
        } else {
            area.draw(&PathElement::new(sample, self.style()))?;
        }
        let text_style = TextStyle::from((FONT, LABEL_SIZE).into_font()).pos(Pos::new(HPos::Left, VPos::Center));
        area.draw(&Text::new(self.label(), (x + 46, y), text_style))
    }
}

/// Draws `points` coloured by `values` (viridis, NaN in grey) with a colour bar showing the value
/// range, into a 1000x800 picture at `path` (PNG or SVG, by its name). Points with a NaN or
/// infinite coordinate are left out.
pub fn scatter(
    points: &[(f32, f32)],
    values: &[f64],
    title: &str,
    x_label: &str,
    y_label: &str,
    colour_label: &str,
    path: &Path,
) -> Result<()> {
    if points.len() != values.len() {
        bail!("cannot draw {}: {} points but {} values to colour them", path.display(), points.len(), values.len());
    }
    let shown: Vec<((f64, f64), f64)> = points
        .iter()
        .zip(values)
        .map(|(&(x, y), &value)| ((f64::from(x), f64::from(y)), value))
        .filter(|((x, y), _)| x.is_finite() && y.is_finite())
        .collect();
    if shown.is_empty() {
        bail!("cannot draw {}: no point has finite coordinates", path.display());
    }
    let x_range = padded_range(shown.iter().map(|((x, _), _)| *x), 0.05);
    let y_range = padded_range(shown.iter().map(|((_, y), _)| *y), 0.05);
    let value_range = padded_range(values.iter().copied(), 0.0);
    let labels = ScatterLabels { title, x_axis: x_label, y_axis: y_label, colour: colour_label };
    render(path, &Scatter { labels, shown, x_range, y_range, value_range })
}

/// The words around a scatter plot.
struct ScatterLabels<'a> {
    title: &'a str,
    x_axis: &'a str,
    y_axis: &'a str,
    /// What the colours stand for, beside the colour bar.
    colour: &'a str,
}

/// A scatter plot, ready to draw.
struct Scatter<'a> {
    labels: ScatterLabels<'a>,
    /// Points with finite coordinates, each with the value that colours it.
    shown: Vec<((f64, f64), f64)>,
    x_range: Range<f64>,
    y_range: Range<f64>,
    value_range: Range<f64>,
}

impl Scatter<'_> {
    /// Normalised here rather than by plotters, whose colour maps panic on a NaN position.
    fn colour_of(&self, value: f64) -> RGBColor {
        let position = (value - self.value_range.start) / (self.value_range.end - self.value_range.start);
        if position.is_finite() { ViridisRGB.get_color(position.clamp(0.0, 1.0)) } else { NO_VALUE_COLOUR }
    }

    /// A vertical strip of the colour map with the values it stands for on its right, spanning
    /// `plot_rows`, the pixel rows of the plotting area beside it.
    fn draw_colour_bar<DB: DrawingBackend>(&self, area: &DrawingArea<DB, Shift>, plot_rows: Range<i32>) -> Result<()>
    where
        DB::ErrorType: 'static,
    {
        const STEPS: usize = 200;
        let value_range = self.value_range.clone();
        let area_rows = area.get_pixel_range().1;
        let mut bar = ChartBuilder::on(area)
            .margin_top(plot_rows.start - area_rows.start)
            .margin_bottom(area_rows.end - plot_rows.end)
            .margin_right(10)
            .right_y_label_area_size(100)
            .build_cartesian_2d(0.0..1.0, value_range.clone())?;
        let step = (value_range.end - value_range.start) / STEPS as f64;
        bar.draw_series((0..STEPS).map(|index| {
            let low = value_range.start + step * index as f64;
            Rectangle::new([(0.0, low), (1.0, low + step)], self.colour_of(low + step / 2.0).filled())
        }))?;
        bar.configure_mesh()
            .disable_mesh()
            .disable_x_axis()
            .y_desc(self.labels.colour)
            .y_label_formatter(&tick_label)
            .label_style((FONT, LABEL_SIZE))
            .axis_desc_style((FONT, AXIS_TITLE_SIZE))
            .draw()?;
        Ok(())
    }
}

impl Picture for Scatter<'_> {
    const SIZE: (u32, u32) = SCATTER_SIZE;

    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> Result<()>
    where
        DB::ErrorType: 'static,
    {
        let (plot_area, bar_area) = root.split_horizontally(Self::SIZE.0 - COLOUR_BAR_WIDTH);
        let (title, title_size) = fitted_title(&plot_area, self.labels.title)?;
        let mut chart = ChartBuilder::on(&plot_area)
            .caption(title, (FONT, title_size))
            .margin(CHART_MARGIN)
            .x_label_area_size(60)
            .y_label_area_size(80)
            .build_cartesian_2d(self.x_range.clone(), self.y_range.clone())?;
        chart
            .configure_mesh()
            .x_desc(self.labels.x_axis)
            .y_desc(self.labels.y_axis)
            .x_label_formatter(&tick_label)
            .y_label_formatter(&tick_label)
            .label_style((FONT, LABEL_SIZE))
            .axis_desc_style((FONT, AXIS_TITLE_SIZE))
            .draw()?;
        chart.draw_series(
            self.shown.iter().map(|&(point, value)| Circle::new(point, 4, self.colour_of(value).mix(0.85).filled())),
        )?;
        let plot_rows = chart.plotting_area().get_pixel_range().1;
        self.draw_colour_bar(&bar_area, plot_rows)
    }
}

/// A picture drawn the same way on any plotters backend: a bitmap for PNG, text for SVG.
trait Picture {
    /// Width and height in pixels (SVG user units).
    const SIZE: (u32, u32);

    /// Draws the picture on `root`, which is white and `SIZE` large.
    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> Result<()>
    where
        DB::ErrorType: 'static;
}

/// The file formats a picture is written in, told apart by the file name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ImageFormat {
    Png,
    Svg,
}

impl ImageFormat {
    /// The format `path`'s extension names (`.png` or `.svg`, in any case). Any other name is
    /// refused, so that a picture never lands in a file whose name promises another format.
    pub fn of(path: &Path) -> Result<Self> {
        match path.extension().and_then(|extension| extension.to_str()).map(str::to_ascii_lowercase).as_deref() {
            Some("png") => Ok(Self::Png),
            Some("svg") => Ok(Self::Svg),
            _ => bail!(
                "cannot draw {}: a picture is written as PNG or SVG, so name the file .png or .svg",
                path.display()
            ),
        }
    }
}

/// Registers the embedded font with plotters, once per process.
fn ensure_font() -> Result<()> {
    static REGISTERED: OnceLock<bool> = OnceLock::new();
    if *REGISTERED.get_or_init(|| register_font(FONT, FontStyle::Normal, FONT_BYTES).is_ok()) {
        Ok(())
    } else {
        bail!("the embedded font assets/DejaVuSans.ttf cannot be read")
    }
}

/// Draws `picture` on white in the format `path` names, then writes it at `path` atomically.
/// `title` and a font size at which it fits across `area` within its margins: smaller for a long
/// title (a model of your own data names its file), and cut in the middle below
/// [`SMALLEST_TITLE_SIZE`], so that neither end is drawn off the picture.
fn fitted_title<DB: DrawingBackend>(area: &DrawingArea<DB, Shift>, title: &str) -> Result<(String, u32)>
where
    DB::ErrorType: 'static,
{
    let room = area.dim_in_pixel().0.saturating_sub(2 * CHART_MARGIN);
    let width = |text: &str, size: u32| -> Result<u32> {
        let style: TextStyle = (FONT, size).into();
        Ok(area.estimate_text_size(text, &style)?.0)
    };
    for size in (SMALLEST_TITLE_SIZE..=TITLE_SIZE).rev().step_by(2) {
        if width(title, size)? <= room {
            return Ok((title.to_owned(), size));
        }
    }
    let chars: Vec<char> = title.chars().collect();
    let mut kept = chars.len();
    while kept > 0 {
        kept -= 1;
        let head: String = chars[..kept.div_ceil(2)].iter().collect();
        let tail: String = chars[chars.len() - kept / 2..].iter().collect();
        let cut = format!("{head}…{tail}");
        if width(&cut, SMALLEST_TITLE_SIZE)? <= room {
            return Ok((cut, SMALLEST_TITLE_SIZE));
        }
    }
    Ok((String::new(), SMALLEST_TITLE_SIZE))
}

fn render<P: Picture>(path: &Path, picture: &P) -> Result<()> {
    let format = ImageFormat::of(path)?;
    ensure_font()?;
    let (width, height) = P::SIZE;
    let bytes = match format {
        ImageFormat::Png => {
            let mut pixels = vec![0u8; width as usize * height as usize * 3];
            draw_on(BitMapBackend::with_buffer(&mut pixels, P::SIZE), picture, path)?;
            let mut encoded = Vec::new();
            let mut encoder = png::Encoder::new(&mut encoded, width, height);
            encoder.set_color(png::ColorType::Rgb);
            encoder.set_depth(png::BitDepth::Eight);
            encoder
                .write_header()
                .and_then(|mut writer| writer.write_image_data(&pixels).and_then(|()| writer.finish()))
                .with_context(|| format!("cannot encode {} as PNG", path.display()))?;
            encoded
        }
        ImageFormat::Svg => {
            let mut text = String::new();
            draw_on(SVGBackend::with_string(&mut text, P::SIZE), picture, path)?;
            text.into_bytes()
        }
    };
    write_atomically(path, |temporary| std::fs::write(temporary, &bytes).map_err(anyhow::Error::from))
}

/// Fills `backend` with white, draws `picture` on it and finishes it.
fn draw_on<DB: DrawingBackend>(backend: DB, picture: &impl Picture, path: &Path) -> Result<()>
where
    DB::ErrorType: 'static,
{
    let root = backend.into_drawing_area();
    root.fill(&WHITE)
        .map_err(anyhow::Error::from)
        .and_then(|()| picture.draw(&root))
        .and_then(|()| root.present().map_err(anyhow::Error::from))
        .with_context(|| format!("cannot draw {}", path.display()))
}

/// The span of the finite `values`, widened by `margin` (a fraction of the span) on each side;
/// ±10% around a single value (±0.5 around 0), and `0..1` when there is none. Never empty, so
/// that axes and the colour map always have a width to divide by, and never wider than
/// ±[`AXIS_LIMIT`] (with the margin), so that the width stays finite.
fn padded_range(values: impl Iterator<Item = f64>, margin: f64) -> Range<f64> {
    let (low, high) = values
        .filter(|value| value.is_finite())
        .map(|value| value.clamp(-AXIS_LIMIT, AXIS_LIMIT))
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(low, high), value| (low.min(value), high.max(value)));
    if low > high {
        return 0.0..1.0;
    }
    if low == high {
        let tenth = low.abs() * 0.1;
        let half_width = if tenth >= f64::MIN_POSITIVE { tenth } else { 0.5 };
        return low - half_width..high + half_width;
    }
    let pad = (high - low) * margin;
    low - pad..high + pad
}

/// A tick's value as plotters writes it, except that a tick a rounding error below zero reads
/// `0.0`, not `-0.0`.
fn tick_label(value: &f64) -> String {
    let text = FloatPrettyPrinter { allow_scientific: false, min_decimal: 1, max_decimal: 5 }.print(*value);
    match text.strip_prefix('-') {
        Some(magnitude) if magnitude.chars().all(|digit| matches!(digit, '0' | '.')) => magnitude.to_owned(),
        _ => text,
    }
}

/// A sample count for an axis label: 500, 12.5k, 1.2M.
fn format_count(count: f64) -> String {
    let short = |value: f64| {
        let text = format!("{value:.2}");
        text.trim_end_matches('0').trim_end_matches('.').to_owned()
    };
    match count.abs() {
        magnitude if magnitude >= 1e6 => format!("{}M", short(count / 1e6)),
        magnitude if magnitude >= 1e3 => format!("{}k", short(count / 1e3)),
        _ => short(count),
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;
    use std::fs::File;

    use super::*;

    /// Decodes the PNG at `path`, checks its size, and returns the distinct colours in its central
    /// region (the middle half in each direction, inside the plotting area).
    fn central_colours(path: &Path, (width, height): (u32, u32)) -> HashSet<Vec<u8>> {
        colours_in(path, (width, height), (width / 4..width * 3 / 4, height / 4..height * 3 / 4))
    }

    /// The distinct colours of the pixels in `(x_range, y_range)` of the PNG at `path`, after
    /// checking its size.
    fn colours_in(path: &Path, (width, height): (u32, u32), region: (Range<u32>, Range<u32>)) -> HashSet<Vec<u8>> {
        let file = File::open(path).expect("the picture exists");
        let mut reader = png::Decoder::new(std::io::BufReader::new(file)).read_info().expect("a PNG header");
        let mut pixels = vec![0; reader.output_buffer_size().expect("a sensible PNG size")];
        let frame = reader.next_frame(&mut pixels).expect("PNG image data");
        assert_eq!((frame.width, frame.height), (width, height));
        let channels = frame.color_type.samples();
        let row_bytes = frame.line_size;
        let (x_range, y_range) = region;
        y_range
            .flat_map(|y| x_range.clone().map(move |x| (x, y)))
            .map(|(x, y)| {
                let start = y as usize * row_bytes + x as usize * channels;
                pixels[start..start + channels].to_vec()
            })
            .collect()
    }

    #[test]
    fn a_long_title_shrinks_then_loses_its_middle_but_keeps_both_ends() {
        ensure_font().expect("the embedded font registers");
        let mut pixels = vec![0u8; 600 * 100 * 3];
        let area = BitMapBackend::with_buffer(&mut pixels, (600, 100)).into_drawing_area();
        let room = 600 - 2 * CHART_MARGIN;
        let width = |text: &str, size: u32| area.estimate_text_size(text, &TextStyle::from((FONT, size))).unwrap().0;

        let short = "Learning curve: 3 terms";
        assert_eq!(fitted_title(&area, short).unwrap(), (short.to_owned(), TITLE_SIZE));

        let longer = "Learning curve: pairs of /data/words.tsv, sources of up to 8 characters";
        let (title, size) = fitted_title(&area, longer).unwrap();
        assert_eq!(title, longer);
        assert!((SMALLEST_TITLE_SIZE..TITLE_SIZE).contains(&size) && width(&title, size) <= room);

        let endless = format!("Learning curve: pairs of /{}/words.tsv (vocabulary 13)", "very-long-folder/".repeat(20));
        let (title, size) = fitted_title(&area, &endless).unwrap();
        assert_eq!(size, SMALLEST_TITLE_SIZE);
        assert!(width(&title, size) <= room, "{title}");
        let (head, tail) = title.split_once('…').expect("the middle is cut");
        assert!(head.len() > 10 && endless.starts_with(head), "{title}");
        assert!(tail.len() > 10 && endless.ends_with(tail), "{title}");
    }

    fn rows(with_accuracy: bool) -> Vec<MetricsRow> {
        (1..=20u32)
            .map(|step| {
                let progress = f64::from(step) / 20.0;
                let accuracy = |value: f64| with_accuracy.then_some(value);
                let validation = step % 5 == 0;
                MetricsRow {
                    samples_seen: u64::from(step) * 3_750,
                    epoch: if step <= 10 { 1 } else { 2 },
                    elapsed_seconds: f64::from(step) * 1.5,
                    loss: 2.5 * (1.0 - progress) + 0.1,
                    char_accuracy: accuracy(0.2 + 0.75 * progress),
                    sequence_accuracy: accuracy(progress * progress),
                    validation_loss: validation.then_some(2.6 * (1.0 - progress) + 0.15),
                    validation_char_accuracy: accuracy(0.2 + 0.7 * progress).filter(|_| validation),
                    validation_sequence_accuracy: accuracy(0.9 * progress * progress).filter(|_| validation),
                    gradient_norm: Some(1.0 - 0.5 * progress),
                }
            })
            .collect()
    }

    #[test]
    fn learning_curve_is_a_1200x700_png_with_a_drawing() {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let path = dir.path().join("learning_curve.png");
        learning_curve(&rows(true), "addition, 3 terms", &path).expect("draw the learning curve");
        assert!(central_colours(&path, (1200, 700)).len() > 1);
        let leftovers: Vec<_> = std::fs::read_dir(dir.path()).expect("list the directory").collect();
        assert_eq!(leftovers.len(), 1, "only the picture remains, no temporary file");
    }

    #[test]
    fn gradient_norms_are_drawn_in_a_strip_under_the_chart_when_the_log_has_them() {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let grey = vec![GRADIENT_COLOUR.0, GRADIENT_COLOUR.1, GRADIENT_COLOUR.2];
        let strip = (200..1000, 700 - LEGEND_HEIGHT - GRADIENT_STRIP_HEIGHT + 20..700 - LEGEND_HEIGHT - 60);
        let with = dir.path().join("with.png");
        learning_curve(&rows(true), "with norms", &with).expect("draw");
        assert!(colours_in(&with, (1200, 700), strip.clone()).contains(&grey), "no gradient line in the strip");

        let without_norms: Vec<MetricsRow> =
            rows(true).into_iter().map(|row| MetricsRow { gradient_norm: None, ..row }).collect();
        let without = dir.path().join("without.png");
        learning_curve(&without_norms, "an older log", &without).expect("draw");
        let whole = (0..1200, 0..700);
        assert!(!colours_in(&without, (1200, 700), whole).contains(&grey), "a strip without norms");
    }

    #[test]
    fn learning_curve_without_accuracies_draws_the_loss() {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let path = dir.path().join("regression.png");
        learning_curve(&rows(false), "regression", &path).expect("draw a loss-only curve");
        assert!(central_colours(&path, (1200, 700)).len() > 1);
    }

    #[test]
    fn learning_curve_of_one_row_with_a_nan_loss_still_draws() {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let path = dir.path().join("one.png");
        let mut single = rows(true)[4];
        learning_curve(&[single], "one report", &path).expect("draw a single report");
        single.loss = f64::NAN;
        learning_curve(&[single], "diverged", &path).expect("draw a report whose loss is NaN");
        assert!(central_colours(&path, (1200, 700)).len() > 1);
    }

    #[test]
    fn learning_curve_of_no_rows_is_an_error() {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let path = dir.path().join("empty.png");
        let message = format!("{:#}", learning_curve(&[], "nothing", &path).expect_err("no rows"));
        assert!(message.contains("empty.png"), "{message}");
        assert!(!path.exists());
    }

    #[test]
    fn scatter_is_a_1000x800_png_with_coloured_points() {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let path = dir.path().join("scatter.png");
        let points: Vec<(f32, f32)> = (0..400).map(|i| i as f32 * 0.1).map(|t| (t.cos() * t, t.sin() * t)).collect();
        let values: Vec<f64> = (0..400).map(|i| f64::from(i) * 2.5 - 100.0).collect();
        scatter(&points, &values, "encoder states", "PC 1 (62%)", "PC 2 (21%)", "sum", &path).expect("draw a scatter");
        assert!(central_colours(&path, (1000, 800)).len() > 2);
    }

    #[test]
    fn scatter_of_equal_values_and_a_single_point_draws() {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let path = dir.path().join("single.png");
        scatter(&[(1.0, 1.0)], &[7.0], "one", "x", "y", "value", &path).expect("draw one point");
        scatter(&[(0.0, 0.0), (f32::NAN, 1.0)], &[f64::NAN, 1.0], "nan", "x", "y", "value", &path)
            .expect("draw with NaN values and coordinates");
        assert!(central_colours(&path, (1000, 800)).len() > 1);
    }

    #[test]
    fn extreme_values_draw_without_panicking() {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let path = dir.path().join("extreme.png");
        let points = [(0.0, 0.0), (1.0, 1.0), (2.0, 0.5)];
        scatter(&points, &[-f64::MAX, f64::MAX, 0.0], "huge", "x", "y", "v", &path).expect("huge values");
        scatter(&points, &[5e-324; 3], "tiny", "x", "y", "v", &path).expect("equal subnormal values");
        let close = [(1.0, 1.0), (1.0 + f32::EPSILON, 1.0 - f32::EPSILON)];
        scatter(&close, &[1.0, 1.0 + f64::EPSILON], "close", "x", "y", "v", &path).expect("nearly equal values");
        let mut row = rows(true)[0];
        row.loss = 1e300;
        learning_curve(&[row, rows(true)[1]], "exploded", &path).expect("a huge loss");
    }

    #[test]
    fn scatter_rejects_mismatched_lengths() {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let path = dir.path().join("mismatch.png");
        let message = format!("{:#}", scatter(&[(0.0, 0.0)], &[], "t", "x", "y", "v", &path).expect_err("lengths"));
        assert!(message.contains("mismatch.png") && message.contains("1 points but 0 values"), "{message}");
    }

    #[test]
    fn unwritable_destination_is_an_error_naming_the_file() {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let path = dir.path().join("no-such-directory").join("curve.png");
        let message = format!("{:#}", learning_curve(&rows(true), "t", &path).expect_err("no directory"));
        assert!(message.contains(&path.display().to_string()), "{message}");
    }

    #[test]
    fn an_svg_name_gives_an_svg_with_the_same_drawing() {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let curve = dir.path().join("curve.svg");
        learning_curve(&rows(true), "addition, 3 terms", &curve).expect("draw the learning curve as SVG");
        let text = std::fs::read_to_string(&curve).expect("an SVG is text");
        assert!(text.starts_with("<svg") && text.trim_end().ends_with("</svg>"), "{}", &text[..80.min(text.len())]);
        assert!(text.contains(r#"width="1200" height="700""#));
        assert!(text.contains("addition, 3 terms") && text.contains("validation sequence accuracy"));
        let scatter_path = dir.path().join("Scatter.SVG");
        let points: Vec<(f32, f32)> = (0..50).map(|i| (i as f32, (i * i) as f32)).collect();
        let values: Vec<f64> = (0..50).map(f64::from).collect();
        scatter(&points, &values, "encoder states", "PC1", "PC2", "sum", &scatter_path).expect("draw a scatter as SVG");
        let text = std::fs::read_to_string(&scatter_path).expect("an SVG is text");
        assert!(text.contains(r#"width="1000" height="800""#));
        // One circle per point; the colour bar and the frame are rectangles and lines.
        assert_eq!(text.matches("<circle").count(), 50);
        let leftovers: Vec<_> = std::fs::read_dir(dir.path()).expect("list the directory").collect();
        assert_eq!(leftovers.len(), 2, "only the pictures remain, no temporary file");
    }

    #[test]
    fn a_name_that_is_neither_png_nor_svg_is_refused_before_drawing() {
        let dir = tempfile::tempdir().expect("a temporary directory");
        for name in ["curve.jpg", "curve", "curve.png.txt"] {
            let path = dir.path().join(name);
            let message = format!("{:#}", learning_curve(&rows(true), "t", &path).expect_err("not a picture name"));
            assert!(message.contains(name) && message.contains(".png or .svg"), "{message}");
            assert!(!path.exists());
        }
        assert_eq!(ImageFormat::of(Path::new("a/B.PNG")).expect("upper case"), ImageFormat::Png);
    }

    #[test]
    fn ranges_and_counts_are_sensible() {
        assert_eq!(padded_range([1.0, 3.0].into_iter(), 0.5), 0.0..4.0);
        assert_eq!(padded_range([f64::NAN].into_iter(), 0.5), 0.0..1.0);
        assert_eq!(padded_range([0.0].into_iter(), 0.5), -0.5..0.5);
        assert_eq!(padded_range([5e-324].into_iter(), 0.5), 5e-324 - 0.5..5e-324 + 0.5);
        assert_eq!(padded_range([-20.0].into_iter(), 0.5), -22.0..-18.0);
        assert_eq!(padded_range([-f64::MAX, f64::MAX].into_iter(), 0.0), -AXIS_LIMIT..AXIS_LIMIT);
        assert_eq!(tick_label(&-1e-17), "0.0");
        assert_eq!(tick_label(&-0.05), "-0.05");
        assert_eq!(tick_label(&0.1), "0.1");
        assert_eq!(tick_label(&-20.0), "-20.0");
        assert_eq!(format_count(0.0), "0");
        assert_eq!(format_count(750.0), "750");
        assert_eq!(format_count(12_500.0), "12.5k");
        assert_eq!(format_count(75_000.0), "75k");
        assert_eq!(format_count(1_200_000.0), "1.2M");
    }
}
