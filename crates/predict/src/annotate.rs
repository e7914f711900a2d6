//! `--annotate`: a copy of each photo with its faces boxed and named.

use crate::run::PhotoResult;
use plotters::prelude::*;
use preprocess::decode::Rgb;
use std::path::{Path, PathBuf};

const KNOWN: RGBColor = RGBColor(40, 200, 60);
const UNKNOWN: RGBColor = RGBColor(240, 140, 0);
const FAILED: RGBColor = RGBColor(220, 40, 40);

/// Why a photo got no annotated copy.
#[derive(Debug, thiserror::Error)]
pub enum AnnotateError {
    #[error("drawing: {0}")]
    Draw(#[from] draw::DrawError),
    #[error("a {width}x{height} photo whose pixels do not fill it")]
    Buffer { width: u32, height: u32 },
    #[error("encoding {}: {error}", path.display())]
    Encode {
        path: PathBuf,
        error: image::ImageError,
    },
    #[error("{}: {error}", path.display())]
    Folder {
        path: PathBuf,
        error: std::io::Error,
    },
    #[error(transparent)]
    Write(#[from] artifacts::ArtifactError),
}

/// Draws the faces of `photo` on its decoded image and writes it to `out` (PNG or JPEG
/// by the extension), atomically. The font must be registered
/// ([`draw::load_font`]).
pub fn annotate(img: &Rgb, photo: &PhotoResult, out: &Path) -> Result<(), AnnotateError> {
    let (w, h) = (img.width as u32, img.height as u32);
    let mut buf = img.data.clone();
    {
        let root = BitMapBackend::with_buffer(&mut buf, (w, h)).into_drawing_area();
        let thick = (w.max(h) / 300).clamp(2, 8);
        let text_px = (w.max(h) as f64 / 40.0).clamp(12.0, 48.0);
        let font = ("sans-serif", text_px).into_font().color(&BLACK);
        for f in &photo.faces {
            let colour = match (&f.error, f.unknown) {
                (Some(_), _) => FAILED,
                (None, true) => UNKNOWN,
                (None, false) => KNOWN,
            };
            let r = f.rect.map(|v| v / img.scale);
            let (x0, y0) = (r[0].round() as i32, r[1].round() as i32);
            let (x1, y1) = ((r[0] + r[2]).round() as i32, (r[1] + r[3]).round() as i32);
            for k in 0..thick as i32 {
                root.draw(&Rectangle::new(
                    [(x0 - k, y0 - k), (x1 + k, y1 + k)],
                    colour.stroke_width(1),
                ))?;
            }
            // Short, so that neighbouring faces' labels stay apart (the table has the rest).
            let label = match (&f.best, &f.person, &f.error) {
                (_, _, Some(_)) => "not aligned".to_string(),
                (Some(b), Some(p), None) => format!("{p} {:.2}", b.probability),
                _ => "unknown".to_string(),
            };
            let (tw, th) = root.estimate_text_size(&label, &font)?;
            // Above the box when there is room, else inside its top edge.
            let ty = if y0 - th as i32 - 4 >= 0 {
                y0 - th as i32 - 4
            } else {
                y0 + 2
            };
            root.draw(&Rectangle::new(
                [
                    (x0 - thick as i32, ty - 2),
                    (x0 + tw as i32 + 4, ty + th as i32 + 2),
                ],
                colour.filled(),
            ))?;
            root.draw(&Text::new(label, (x0 + 2, ty), font.clone()))?;
        }
        root.present()?;
    }
    let picture = image::RgbImage::from_raw(w, h, buf).ok_or(AnnotateError::Buffer {
        width: w,
        height: h,
    })?;
    let format = match out
        .extension()
        .and_then(|e| e.to_str())
        .map(str::to_ascii_lowercase)
    {
        Some(e) if e == "jpg" || e == "jpeg" => image::ImageFormat::Jpeg,
        _ => image::ImageFormat::Png,
    };
    let mut bytes = std::io::Cursor::new(Vec::new());
    picture
        .write_to(&mut bytes, format)
        .map_err(|error| AnnotateError::Encode {
            path: out.to_path_buf(),
            error,
        })?;
    if let Some(dir) = out.parent() {
        std::fs::create_dir_all(dir).map_err(|error| AnnotateError::Folder {
            path: dir.to_path_buf(),
            error,
        })?;
    }
    artifacts::write_atomic(out, bytes.get_ref())?;
    Ok(())
}

/// The annotated copy's path: the photo's path below the folder it was found in (or its
/// file name), under `dir`; PNG unless the photo was a JPEG.
pub fn annotated_path(dir: &Path, relative: &Path) -> std::path::PathBuf {
    let keep = matches!(
        relative
            .extension()
            .and_then(|e| e.to_str())
            .map(str::to_ascii_lowercase)
            .as_deref(),
        Some("jpg" | "jpeg" | "png")
    );
    let p = dir.join(relative);
    if keep {
        p
    } else {
        p.with_extension(format!(
            "{}png",
            relative
                .extension()
                .map(|e| format!("{}.", e.to_string_lossy()))
                .unwrap_or_default()
        ))
    }
}
