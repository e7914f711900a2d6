//! PNG pictures: the t-SNE maps, the confusion matrix, and labelled face montages.
//! Text is rendered with the font `draw::load_font` registers.

use plotters::prelude::*;
use std::path::{Path, PathBuf};

/// The font's home is the `draw` crate (predict's annotated copies use it too).
pub use draw::{load_font, FontError, DEFAULT_FONT};

/// Why a picture could not be made.
#[derive(Debug, thiserror::Error)]
pub enum PlotError {
    #[error("drawing: {0}")]
    Draw(#[from] draw::DrawError),
    #[error("a face's pixels are not a {size}x{size} RGB image")]
    FaceBuffer { size: usize },
    #[error("a {width}x{height} montage canvas of the wrong size")]
    Canvas { width: u32, height: u32 },
    #[error("{}: {error}", path.display())]
    Save {
        path: PathBuf,
        error: image::ImageError,
    },
}

/// A distinct colour per class.
pub fn class_colour(c: usize, classes: usize) -> RGBColor {
    let h = (c as f64 / classes.max(1) as f64) * 360.0;
    let (s, l) = (0.75, if c.is_multiple_of(2) { 0.45 } else { 0.6 });
    let chroma = (1.0 - (2.0 * l - 1.0f64).abs()) * s;
    let x = chroma * (1.0 - ((h / 60.0) % 2.0 - 1.0).abs());
    let (r, g, b) = match (h / 60.0) as u32 {
        0 => (chroma, x, 0.0),
        1 => (x, chroma, 0.0),
        2 => (0.0, chroma, x),
        3 => (0.0, x, chroma),
        4 => (x, 0.0, chroma),
        _ => (chroma, 0.0, x),
    };
    let m = l - chroma / 2.0;
    RGBColor(
        ((r + m) * 255.0) as u8,
        ((g + m) * 255.0) as u8,
        ((b + m) * 255.0) as u8,
    )
}

/// One map panel's points.
pub struct MapPanel<'a> {
    pub title: String,
    pub points: &'a [f32],
}

/// `tsne.png`: one panel per map; colour = class, circle = train/val, triangle = test,
/// a black cross over misclassified points; a legend of class names.
pub fn tsne_png(
    path: &Path,
    panels: &[MapPanel],
    labels: &[u32],
    is_test: &[bool],
    wrong: &[bool],
    class_names: &[String],
) -> Result<(), PlotError> {
    let w = 760 * panels.len() as u32;
    let root = BitMapBackend::new(path, (w, 820)).into_drawing_area();
    root.fill(&WHITE)?;
    let areas = root.split_evenly((1, panels.len()));
    for (area, panel) in areas.iter().zip(panels) {
        let n = labels.len();
        let xs: Vec<f32> = (0..n).map(|i| panel.points[2 * i]).collect();
        let ys: Vec<f32> = (0..n).map(|i| panel.points[2 * i + 1]).collect();
        let pad = |v: &[f32]| {
            let lo = v.iter().cloned().fold(f32::INFINITY, f32::min);
            let hi = v.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
            let m = ((hi - lo) * 0.05).max(1e-3);
            (lo - m)..(hi + m)
        };
        let (area, legend) = area.split_vertically(640);
        let mut chart = ChartBuilder::on(&area)
            .caption(&panel.title, ("sans-serif", 22))
            .margin(10)
            .build_cartesian_2d(pad(&xs), pad(&ys))?;
        chart.configure_mesh().disable_mesh().draw()?;
        let classes = class_names.len();
        for i in 0..n {
            let col = class_colour(labels[i] as usize, classes);
            let p = (xs[i], ys[i]);
            if is_test[i] {
                chart.draw_series(std::iter::once(TriangleMarker::new(p, 6, col.filled())))?;
            } else {
                chart.draw_series(std::iter::once(Circle::new(p, 3, col.filled())))?;
            }
            if wrong[i] {
                chart.draw_series(std::iter::once(Cross::new(p, 6, BLACK.stroke_width(2))))?;
            }
        }
        // Legend: a colour chip and the class name per class, in columns.
        let per_col = classes.div_ceil(4).max(1);
        for (c, name) in class_names.iter().enumerate() {
            let x = 20 + (c / per_col) as i32 * 185;
            let y = 10 + (c % per_col) as i32 * 22;
            legend.draw(&Rectangle::new(
                [(x, y), (x + 14, y + 14)],
                class_colour(c, classes).filled(),
            ))?;
            legend.draw(&Text::new(name.clone(), (x + 20, y), ("sans-serif", 15)))?;
        }
        let y = 10 + per_col as i32 * 22 + 6;
        legend.draw(&Text::new(
            "circle = train/val   triangle = test   cross = misclassified",
            (20, y),
            ("sans-serif", 14),
        ))?;
    }
    root.present()?;
    Ok(())
}

/// `confusion.png`: counts with a blue scale; rows = true class, columns = predicted.
pub fn confusion_png(
    path: &Path,
    confusion: &[Vec<usize>],
    class_names: &[String],
) -> Result<(), PlotError> {
    let c = class_names.len().max(1);
    let cell = (560 / c as u32).clamp(24, 80);
    let left = 200u32;
    let top = 60u32;
    let size = (left + cell * c as u32 + 20, top + cell * c as u32 + 40);
    let root = BitMapBackend::new(path, size).into_drawing_area();
    root.fill(&WHITE)?;
    root.draw(&Text::new(
        "confusion (rows: true, columns: predicted)",
        (10, 10),
        ("sans-serif", 18),
    ))?;
    let max = confusion
        .iter()
        .flatten()
        .cloned()
        .max()
        .unwrap_or(1)
        .max(1) as f64;
    for (i, row) in confusion.iter().enumerate() {
        root.draw(&Text::new(
            format!("{i}: {}", class_names[i]),
            (10, (top + cell * i as u32 + cell / 3) as i32),
            ("sans-serif", 14),
        ))?;
        for (j, &v) in row.iter().enumerate() {
            let t = v as f64 / max;
            let col = RGBColor(
                (255.0 * (1.0 - 0.8 * t)) as u8,
                (255.0 * (1.0 - 0.6 * t)) as u8,
                255,
            );
            let x0 = (left + cell * j as u32) as i32;
            let y0 = (top + cell * i as u32) as i32;
            root.draw(&Rectangle::new(
                [(x0, y0), (x0 + cell as i32 - 1, y0 + cell as i32 - 1)],
                col.filled(),
            ))?;
            if v > 0 {
                root.draw(&Text::new(
                    v.to_string(),
                    (x0 + 4, y0 + cell as i32 / 3),
                    ("sans-serif", 14),
                ))?;
            }
        }
    }
    for j in 0..c {
        root.draw(&Text::new(
            j.to_string(),
            (
                (left + cell * j as u32 + 4) as i32,
                (top + cell * c as u32 + 6) as i32,
            ),
            ("sans-serif", 13),
        ))?;
    }
    root.present()?;
    Ok(())
}

/// One line of [`curve_png`]: its name, colour and (epoch, value) points.
pub struct Series {
    pub name: String,
    pub colour: RGBColor,
    pub points: Vec<(f64, f64)>,
}

/// `curve.png`: accuracy against epochs (every phase in a row), the training curve
/// a checkpoint's metrics file holds; a vertical line at each selected epoch.
pub fn curve_png(
    path: &Path,
    title: &str,
    series: &[Series],
    selected: &[f64],
) -> Result<(), PlotError> {
    let root = BitMapBackend::new(path, (720, 420)).into_drawing_area();
    root.fill(&WHITE)?;
    let last = series
        .iter()
        .flat_map(|s| s.points.iter().map(|p| p.0))
        .fold(1.0f64, f64::max);
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 18))
        .margin(12)
        .x_label_area_size(36)
        .y_label_area_size(48)
        .build_cartesian_2d(0f64..last, 0f64..1f64)?;
    chart
        .configure_mesh()
        .x_desc("epoch")
        .x_label_formatter(&|e| epoch_label(*e))
        .y_desc("accuracy")
        .label_style(("sans-serif", 13))
        .draw()?;
    for &e in selected {
        chart.draw_series(LineSeries::new([(e, 0.0), (e, 1.0)], BLACK.mix(0.3)))?;
    }
    for s in series {
        let colour = s.colour;
        chart
            .draw_series(LineSeries::new(
                s.points.iter().copied(),
                colour.stroke_width(2),
            ))?
            .label(s.name.as_str())
            .legend(move |(x, y)| PathElement::new([(x, y), (x + 18, y)], colour.stroke_width(2)));
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .label_font(("sans-serif", 13))
        .position(SeriesLabelPosition::LowerRight)
        .draw()?;
    root.present()?;
    Ok(())
}

/// An epoch tick's label: whole epochs without a decimal point ("400", not "400.0").
fn epoch_label(e: f64) -> String {
    if e.fract() == 0.0 {
        format!("{e:.0}")
    } else {
        format!("{e:.1}")
    }
}

/// A face with its caption lines.
pub struct Tile<'a> {
    pub pixels: std::borrow::Cow<'a, [u8]>,
    pub caption: Vec<String>,
}

/// A grid of faces (`size` px, shown at `thumb` px) with captions under each.
pub fn montage_png(
    path: &Path,
    title: &str,
    tiles: &[Tile],
    size: usize,
    thumb: u32,
    per_row: usize,
) -> Result<(), PlotError> {
    let rows = tiles.len().div_ceil(per_row).max(1) as u32;
    let cap_h = 36u32;
    let (w, h) = (
        per_row as u32 * (thumb + 8) + 8,
        34 + rows * (thumb + cap_h + 8),
    );
    let mut buf = vec![255u8; (w * h * 3) as usize];
    for (t, tile) in tiles.iter().enumerate() {
        let img = image::RgbImage::from_raw(size as u32, size as u32, tile.pixels.to_vec())
            .ok_or(PlotError::FaceBuffer { size })?;
        let small =
            image::imageops::resize(&img, thumb, thumb, image::imageops::FilterType::Triangle);
        let x0 = 8 + (t % per_row) as u32 * (thumb + 8);
        let y0 = 34 + (t / per_row) as u32 * (thumb + cap_h + 8);
        for (x, y, p) in small.enumerate_pixels() {
            let o = (((y0 + y) * w + x0 + x) * 3) as usize;
            buf[o..o + 3].copy_from_slice(&p.0);
        }
    }
    {
        let root = BitMapBackend::with_buffer(&mut buf, (w, h)).into_drawing_area();
        root.draw(&Text::new(title.to_string(), (8, 8), ("sans-serif", 18)))?;
        for (t, tile) in tiles.iter().enumerate() {
            let x0 = 8 + (t % per_row) as i32 * (thumb + 8) as i32;
            let y0 = 34 + (t / per_row) as i32 * (thumb + cap_h + 8) as i32 + thumb as i32 + 2;
            for (l, line) in tile.caption.iter().enumerate() {
                let text: String = line.chars().take(18).collect();
                root.draw(&Text::new(
                    text,
                    (x0, y0 + 16 * l as i32),
                    ("sans-serif", 13),
                ))?;
            }
        }
        root.present()?;
    }
    let img = image::RgbImage::from_raw(w, h, buf).ok_or(PlotError::Canvas {
        width: w,
        height: h,
    })?;
    img.save(path).map_err(|error| PlotError::Save {
        path: path.to_path_buf(),
        error,
    })
}

#[cfg(test)]
mod tests {
    use super::epoch_label;

    #[test]
    fn epoch_ticks_are_whole_numbers_unless_they_fall_between_epochs() {
        assert_eq!(epoch_label(0.0), "0");
        assert_eq!(epoch_label(1600.0), "1600");
        assert_eq!(epoch_label(2.5), "2.5");
    }
}
