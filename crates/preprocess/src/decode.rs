//! Decoding any photo into 8-bit RGB with bounded memory.

use image::{DynamicImage, ImageDecoder, ImageReader};
use std::path::Path;

/// Longest side kept for detection; larger photos are scaled down right after decoding.
pub const MAX_SIDE: u32 = 1600;
/// Above this many pixels a JPEG is decoded at reduced scale by libjpeg (via OpenCV), so a
/// 10000x10000 photo costs tens of MB, not gigabytes.
const REDUCED_DECODE_PIXELS: u64 = 24_000_000;
/// Photos whose shorter side is below this cannot hold a usable face.
pub const MIN_SIDE: u32 = 32;

/// An RGB image, row-major HWC.
pub struct Rgb {
    pub width: usize,
    pub height: usize,
    pub data: Vec<u8>,
    /// Rows above this hold decoded pixels; below it a truncated JPEG's decoder filled in
    /// a flat colour. `height` for a complete file.
    pub valid_rows: usize,
    /// The photo's side (after EXIF orientation) over the decoded side: 1 unless the photo
    /// was scaled down to [`MAX_SIDE`]; maps boxes back to the photo's own pixels.
    pub scale: f32,
}

/// Why a photo could not be decoded; each becomes a reject reason.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    #[error("empty file")]
    Empty,
    #[error("unreadable: {0}")]
    Io(String),
    #[error("not an image or unsupported format: {0}")]
    Format(String),
    #[error("truncated file (the JPEG ends before its end-of-image marker, and over half the photo is missing)")]
    Truncated,
    #[error("corrupt or truncated image: {0}")]
    Corrupt(String),
    #[error("too small ({0}x{1}); need at least {MIN_SIDE} px per side")]
    TooSmall(u32, u32),
    #[error("too large to decode ({0}x{1})")]
    TooLarge(u32, u32),
}

/// Whether a JPEG stops before its end-of-image marker (FF D9) after its last scan (FF DA).
/// The decoder fills a cut-off scan with a flat colour and reports no error. Measured on 56
/// msceleb photos cut to 95 / 85 / 70 / 50% of their bytes (dlib's detector and
/// descriptor): 56 / 55 / 53 / 33 still give the face, with the full photo's descriptor
/// (median distance 0.000 / 0.000 / 0.002 / 0.307). So a truncated photo is kept when its
/// face lies in the decoded rows, and rejected when the face reaches the missing part.
/// Byte stuffing keeps both markers out of entropy-coded data; an EXIF thumbnail's own
/// FF D9 comes before the main scan and does not count.
fn jpeg_truncated(path: &Path) -> Result<bool, DecodeError> {
    let bytes = std::fs::read(path).map_err(|e| DecodeError::Io(e.to_string()))?;
    let last = |m: u8| bytes.windows(2).rposition(|w| w[0] == 0xFF && w[1] == m);
    Ok(match (last(0xDA), last(0xD9)) {
        (Some(sos), Some(eoi)) => eoi < sos,
        (Some(_), None) => true,
        _ => false,
    })
}

/// Decodes a photo: EXIF orientation applied, grey/alpha/CMYK/16-bit converted to 8-bit
/// RGB, and scaled so the longer side is at most [`MAX_SIDE`].
pub fn decode(path: &Path) -> Result<Rgb, DecodeError> {
    let meta = std::fs::metadata(path).map_err(|e| DecodeError::Io(e.to_string()))?;
    if meta.len() == 0 {
        return Err(DecodeError::Empty);
    }
    let reader = ImageReader::open(path)
        .map_err(|e| DecodeError::Io(e.to_string()))?
        .with_guessed_format()
        .map_err(|e| DecodeError::Io(e.to_string()))?;
    let format = reader.format();
    let truncated = format == Some(image::ImageFormat::Jpeg) && jpeg_truncated(path)?;
    let mut decoder = reader
        .into_decoder()
        .map_err(|e| DecodeError::Format(e.to_string()))?;
    let (w, h) = decoder.dimensions();
    if w.min(h) < MIN_SIDE {
        return Err(DecodeError::TooSmall(w, h));
    }
    if w as u64 * h as u64 > REDUCED_DECODE_PIXELS {
        if format == Some(image::ImageFormat::Jpeg) {
            drop(decoder);
            return decode_reduced_jpeg(path, w, h);
        }
        return Err(DecodeError::TooLarge(w, h));
    }
    let orientation = decoder
        .orientation()
        .unwrap_or(image::metadata::Orientation::NoTransforms);
    if truncated && orientation != image::metadata::Orientation::NoTransforms {
        // Turned, the missing rows would be a side or the top: not worth the cases.
        return Err(DecodeError::Truncated);
    }
    let mut img =
        DynamicImage::from_decoder(decoder).map_err(|e| DecodeError::Corrupt(e.to_string()))?;
    img.apply_orientation(orientation);
    let mut rgb = to_rgb_bounded(img);
    if truncated {
        rgb.valid_rows = decoded_rows(&rgb);
        if rgb.valid_rows < rgb.height / 2 {
            return Err(DecodeError::Truncated);
        }
    }
    Ok(rgb)
}

/// Rows above the flat fill a truncated JPEG's decoder leaves at the bottom, less one
/// 16-px block row (the last decoded blocks are partial, and resizing blurs the seam).
fn decoded_rows(img: &Rgb) -> usize {
    let row = img.width * 3;
    let flat = (0..img.height)
        .rev()
        .take_while(|&y| {
            let r = &img.data[y * row..(y + 1) * row];
            r.chunks_exact(3).all(|p| p == &r[..3])
        })
        .count();
    (img.height - flat).saturating_sub(16)
}

fn to_rgb_bounded(img: DynamicImage) -> Rgb {
    let (w, h) = (img.width(), img.height());
    let img = if w.max(h) > MAX_SIDE {
        img.resize(MAX_SIDE, MAX_SIDE, image::imageops::FilterType::Triangle)
    } else {
        img
    };
    let rgb = img.into_rgb8();
    let (width, height) = (rgb.width() as usize, rgb.height() as usize);
    Rgb {
        width,
        height,
        data: rgb.into_raw(),
        valid_rows: height,
        scale: w.max(h) as f32 / width.max(height) as f32,
    }
}

/// Huge JPEGs: libjpeg's DCT scaling (1/2, 1/4, 1/8) decodes straight to a small image.
fn decode_reduced_jpeg(path: &Path, w: u32, h: u32) -> Result<Rgb, DecodeError> {
    use opencv::prelude::*;
    let factor = [2u32, 4, 8]
        .into_iter()
        .find(|f| (w / f) as u64 * (h / f) as u64 <= REDUCED_DECODE_PIXELS / 4)
        .unwrap_or(8);
    let flag = match factor {
        2 => opencv::imgcodecs::IMREAD_REDUCED_COLOR_2,
        4 => opencv::imgcodecs::IMREAD_REDUCED_COLOR_4,
        _ => opencv::imgcodecs::IMREAD_REDUCED_COLOR_8,
    };
    let p = path
        .to_str()
        .ok_or_else(|| DecodeError::Io("path is not UTF-8".into()))?;
    let bgr =
        opencv::imgcodecs::imread(p, flag).map_err(|e| DecodeError::Corrupt(e.to_string()))?;
    if bgr.empty() {
        return Err(DecodeError::TooLarge(w, h));
    }
    let mut rgb = Mat::default();
    opencv::imgproc::cvt_color_def(&bgr, &mut rgb, opencv::imgproc::COLOR_BGR2RGB)
        .map_err(|e| DecodeError::Corrupt(e.to_string()))?;
    let (cols, rows) = (rgb.cols() as u32, rgb.rows() as u32);
    let data = rgb
        .data_bytes()
        .map_err(|e| DecodeError::Corrupt(e.to_string()))?
        .to_vec();
    let img = image::RgbImage::from_raw(cols, rows, data)
        .ok_or_else(|| DecodeError::Corrupt("bad buffer".into()))?;
    let mut rgb = to_rgb_bounded(DynamicImage::ImageRgb8(img));
    rgb.scale = w.max(h) as f32 / rgb.width.max(rgb.height) as f32;
    Ok(rgb)
}
