//! The plotters set-up that eval-tsne's plots and predict's annotated copies share: the
//! TTF font registered once per process (ab_glyph, so no fontconfig is needed) and the
//! error type of drawing on a bitmap.

use plotters::backend::{BitMapBackend, DrawingBackend};
use plotters::drawing::DrawingAreaErrorKind;
use plotters::style::FontStyle;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

/// Debian's `fonts-dejavu-core`.
pub const DEFAULT_FONT: &str = "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf";

/// Why the font could not be registered.
#[derive(Debug, Clone, thiserror::Error)]
pub enum FontError {
    #[error(
        "font {}: {error}; install it with `apt-get install fonts-dejavu-core` or pass --font",
        path.display()
    )]
    Read {
        path: PathBuf,
        /// Shared, because the first load's outcome is kept for the whole process.
        error: Arc<std::io::Error>,
    },
    #[error("{}: not a usable TTF font", .0.display())]
    NotTtf(PathBuf),
}

/// What drawing on a bitmap (file or buffer) can fail with.
pub type DrawError = DrawingAreaErrorKind<<BitMapBackend<'static> as DrawingBackend>::ErrorType>;

static FONT: OnceLock<Result<(), FontError>> = OnceLock::new();

/// Registers the font at `path` as "sans-serif", once for the process: plotters keeps one
/// font table, so later calls return the first call's outcome whatever their path.
pub fn load_font(path: &Path) -> Result<(), FontError> {
    FONT.get_or_init(|| {
        let bytes = std::fs::read(path).map_err(|e| FontError::Read {
            path: path.to_path_buf(),
            error: Arc::new(e),
        })?;
        // plotters wants the bytes for the rest of the process.
        let leaked: &'static [u8] = Box::leak(bytes.into_boxed_slice());
        plotters::style::register_font("sans-serif", FontStyle::Normal, leaked)
            .map_err(|_| FontError::NotTtf(path.to_path_buf()))
    })
    .clone()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_font_says_how_to_install_one() {
        let e = load_font(Path::new("/nonexistent/font.ttf")).unwrap_err();
        assert!(matches!(e, FontError::Read { .. }));
        assert!(e.to_string().contains("fonts-dejavu-core"), "{e}");
        // The first outcome stays, whatever the path.
        assert!(load_font(Path::new(DEFAULT_FONT)).is_err());
    }
}
