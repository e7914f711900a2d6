//! A contact sheet for a visual check: one row per class.

use std::borrow::Cow;
use std::path::Path;

/// Why the contact sheet was not written (a run warns and goes on).
#[derive(Debug, thiserror::Error)]
pub enum MontageError {
    #[error("bad image buffer")]
    BadBuffer,
    #[error("{0}")]
    Encode(image::ImageError),
    #[error("{0}")]
    Write(artifacts::ArtifactError),
}

/// Writes a PNG with up to `per_row` thumbnails (`thumb` px) of each class, in row order.
/// `image(i)` gives image `i` (HWC RGB, `size x size`) of those labelled `labels[i]`; only
/// the images shown are asked for.
pub fn write_montage<'a>(
    path: &Path,
    size: usize,
    image: &dyn Fn(usize) -> Cow<'a, [u8]>,
    labels: &[u32],
    classes: usize,
    per_row: usize,
    thumb: u32,
) -> Result<(), MontageError> {
    let rows = classes.max(1) as u32;
    let mut sheet = image::RgbImage::from_pixel(
        per_row as u32 * thumb,
        rows * thumb,
        image::Rgb([32, 32, 32]),
    );
    let mut filled = vec![0usize; classes];
    for (i, &l) in labels.iter().enumerate() {
        let l = l as usize;
        if l >= classes || filled[l] >= per_row {
            continue;
        }
        let src = image::RgbImage::from_raw(size as u32, size as u32, image(i).into_owned())
            .ok_or(MontageError::BadBuffer)?;
        let t = image::imageops::resize(&src, thumb, thumb, image::imageops::FilterType::Triangle);
        image::imageops::replace(
            &mut sheet,
            &t,
            (filled[l] as u32 * thumb) as i64,
            (l as u32 * thumb) as i64,
        );
        filled[l] += 1;
    }
    let mut buf = std::io::Cursor::new(Vec::new());
    sheet
        .write_to(&mut buf, image::ImageFormat::Png)
        .map_err(MontageError::Encode)?;
    artifacts::write_atomic(path, buf.get_ref()).map_err(MontageError::Write)
}
