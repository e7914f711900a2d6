//! Walking a folder of photos: each real directory once, however links point. A link back
//! up the tree (`loop -> ..`) would otherwise repeat every photo at every depth until the
//! path length runs out.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

/// What a walk found under one root.
#[derive(Debug, Default)]
pub struct Walk {
    /// Files whose name `wanted` accepts, sorted.
    pub files: Vec<PathBuf>,
    /// Directory links not followed because their target was already visited, with the
    /// real directory they point to.
    pub skipped_links: Vec<(PathBuf, PathBuf)>,
}

/// Every file under `root` (following directory links, skipping hidden entries) whose
/// path `wanted` accepts. A directory reached a second time (by a link to it or to one of
/// its parents) is not read again; the link is recorded in [`Walk::skipped_links`] and
/// logged. Unreadable subdirectories are skipped with a warning; an unreadable `root` is
/// the error.
pub fn walk(root: &Path, wanted: impl Fn(&Path) -> bool) -> std::io::Result<Walk> {
    let mut out = Walk::default();
    let mut seen: HashSet<PathBuf> = HashSet::new();
    seen.insert(std::fs::canonicalize(root)?);
    let mut stack = vec![root.to_path_buf()];
    let mut first = true;
    while let Some(dir) = stack.pop() {
        let rd = match std::fs::read_dir(&dir) {
            Ok(rd) => rd,
            Err(e) if first => return Err(e),
            Err(e) => {
                tracing::warn!("skipped unreadable folder {}: {e}", dir.display());
                continue;
            }
        };
        first = false;
        for e in rd.flatten() {
            if e.file_name().to_string_lossy().starts_with('.') {
                continue;
            }
            let p = e.path();
            match std::fs::metadata(&p) {
                Ok(m) if m.is_dir() => match std::fs::canonicalize(&p) {
                    Ok(real) if seen.insert(real.clone()) => stack.push(p),
                    Ok(real) => {
                        tracing::warn!(
                            "not following {}: it leads to {}, which is already read",
                            p.display(),
                            real.display()
                        );
                        out.skipped_links.push((p, real));
                    }
                    Err(e) => tracing::warn!("skipped {}: {e}", p.display()),
                },
                Ok(_) if wanted(&p) => out.files.push(p),
                _ => {}
            }
        }
    }
    out.files.sort();
    out.skipped_links.sort();
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[cfg(unix)]
    #[test]
    fn a_link_to_a_parent_is_read_once() {
        let dir = std::env::temp_dir().join(format!("walk-loop-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("a/b")).unwrap();
        for f in ["x.jpg", "a/y.jpg", "a/b/z.jpg", "a/notes.txt"] {
            std::fs::write(dir.join(f), b"").unwrap();
        }
        std::os::unix::fs::symlink("..", dir.join("a/b/loop")).unwrap();
        std::os::unix::fs::symlink("b", dir.join("a/alias")).unwrap();
        let w = walk(&dir, |p| p.extension().is_some_and(|e| e == "jpg")).unwrap();
        let rel: Vec<_> = w
            .files
            .iter()
            .map(|p| p.strip_prefix(&dir).unwrap().to_string_lossy().into_owned())
            .collect();
        // `a/b` is reached either directly or through `a/alias`: one of them is skipped.
        assert_eq!(rel.len(), 3, "{rel:?}");
        assert!(rel.contains(&"x.jpg".to_string()) && rel.contains(&"a/y.jpg".to_string()));
        assert_eq!(w.skipped_links.len(), 2, "{:?}", w.skipped_links);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_missing_root_is_an_error() {
        assert!(walk(Path::new("/nonexistent/photos"), |_| true).is_err());
    }
}
