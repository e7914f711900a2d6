//! The evaluation's pictures: which PNGs it makes from its results, under which names and
//! titles (`plots` draws them).

use crate::identity::{IdentityReport, SplitFolder};
use crate::plots::{self, PlotError, Tile};
use crate::suspects::Suspect;
use crate::tsne::TsneResult;
use artifacts::{Embeddings, Faces, Split};
use plotters::style::RGBColor;
use std::path::{Path, PathBuf};

/// Face tiles are shown at this size, this many to a row.
const THUMB: u32 = 96;
const PER_ROW: usize = 10;

/// A montage of `faces`' tiles at `path`.
fn montage(path: &Path, title: &str, tiles: &[Tile], faces: &Faces) -> Result<(), PlotError> {
    plots::montage_png(path, title, tiles, faces.width, THUMB, PER_ROW)
}

/// A source's file name, for a tile caption.
fn file_name(source: &str) -> String {
    source.rsplit('/').next().unwrap_or(source).to_string()
}

/// `tsne.png` (student and teacher maps), `confusion.png` (with a test split) and
/// `misclassified.png` (when a test face is wrong), titled for the report.
pub(crate) fn overview(
    out: &Path,
    faces: &Faces,
    emb: &Embeddings,
    student: &TsneResult,
    teacher: Option<&TsneResult>,
    test: Option<&crate::metrics::Metrics>,
) -> Result<Vec<(String, PathBuf)>, PlotError> {
    let predicted = &emb.predictions;
    let is_test: Vec<bool> = faces.splits.iter().map(|s| *s == Split::Test).collect();
    let wrong: Vec<bool> = (0..faces.len())
        .map(|i| predicted[i] != faces.labels[i] && faces.splits[i] != Split::Train)
        .collect();
    let mut panels = vec![plots::MapPanel {
        title: format!("student bottleneck (KL {:.3})", student.kl),
        points: &emb.tsne,
    }];
    if let (Some(t), Some(m)) = (&emb.teacher_tsne, teacher) {
        panels.push(plots::MapPanel {
            title: format!("teacher bottleneck (KL {:.3})", m.kl),
            points: t,
        });
    }
    let tsne_png = out.join("tsne.png");
    plots::tsne_png(
        &tsne_png,
        &panels,
        &faces.labels,
        &is_test,
        &wrong,
        &faces.class_names,
    )?;
    let mut images = vec![("t-SNE of the bottlenecks".to_string(), tsne_png)];
    if let Some(m) = test {
        let p = out.join("confusion.png");
        plots::confusion_png(&p, &m.confusion, &faces.class_names)?;
        images.push(("Confusion matrix (test)".into(), p));
    }
    let wrong_test: Vec<usize> = (0..faces.len())
        .filter(|&i| is_test[i] && predicted[i] != faces.labels[i])
        .collect();
    if !wrong_test.is_empty() {
        let tiles: Vec<Tile> = wrong_test
            .iter()
            .take(120)
            .map(|&i| Tile {
                pixels: faces.image(i),
                caption: vec![
                    format!("true {}", faces.class_names[faces.labels[i] as usize]),
                    format!("pred {}", faces.class_names[predicted[i] as usize]),
                ],
            })
            .collect();
        let p = out.join("misclassified.png");
        let title = format!("misclassified test faces ({})", wrong_test.len());
        montage(&p, &title, &tiles, faces)?;
        images.push(("Misclassified test faces".into(), p));
    }
    Ok(images)
}

/// `curve.png` from the checkpoint's metrics file (`<stem>.metrics.jsonl` beside it):
/// training and validation accuracy per epoch, the selected epochs marked. `None` when the
/// checkpoint has no metrics file (the probe, or a copied checkpoint).
pub(crate) fn curve(out: &Path, checkpoint: &Path) -> Result<Option<(String, PathBuf)>, PlotError> {
    // Where `train` writes it: one definition of the metrics file's name.
    let Some(metrics) = train::RunFiles::beside(checkpoint).metrics else {
        return Ok(None);
    };
    let Ok(text) = std::fs::read_to_string(&metrics) else {
        return Ok(None);
    };
    let lines: Vec<serde_json::Value> = text
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    if lines.is_empty() {
        return Ok(None);
    }
    let mut train = Vec::new();
    let mut val = Vec::new();
    for (x, m) in lines.iter().enumerate() {
        let x = (x + 1) as f64;
        if let Some(a) = m["train_acc"].as_f64() {
            train.push((x, a));
        }
        if let Some(a) = m["val_acc"].as_f64() {
            val.push((x, a));
        }
    }
    let best = |pts: &[(f64, f64)]| {
        pts.iter()
            .copied()
            .fold(None, |b: Option<(f64, f64)>, p| match b {
                Some(b) if b.1 >= p.1 => Some(b),
                _ => Some(p),
            })
    };
    let selected: Vec<f64> = best(&val).map(|b| vec![b.0]).unwrap_or_default();
    let series = [
        plots::Series {
            name: "training (augmented views)".into(),
            colour: RGBColor(120, 120, 120),
            points: train,
        },
        plots::Series {
            name: "validation".into(),
            colour: RGBColor(30, 90, 200),
            points: val,
        },
    ];
    let p = out.join("curve.png");
    plots::curve_png(
        &p,
        &format!("learning curve ({} epochs)", lines.len()),
        &series,
        &selected,
    )?;
    Ok(Some(("Learning curve".into(), p)))
}

/// `suspects-<class>.png`: up to 30 neighbour/medoid suspects per class that has any.
pub(crate) fn suspects(
    out: &Path,
    faces: &Faces,
    sus: &[Suspect],
) -> Result<Vec<PathBuf>, PlotError> {
    let mut images = Vec::new();
    for (c, name) in faces.class_names.iter().enumerate() {
        let tiles: Vec<Tile> = sus
            .iter()
            .filter(|s| faces.labels[s.index] as usize == c)
            .take(30)
            .map(|s| Tile {
                pixels: faces.image(s.index),
                caption: vec![file_name(&s.source), format!("score {:.2}", s.score)],
            })
            .collect();
        if tiles.is_empty() {
            continue;
        }
        let p = out.join(format!("suspects-{}.png", sanitize(name)));
        montage(&p, &format!("suspects labelled {name}"), &tiles, faces)?;
        images.push(p);
    }
    Ok(images)
}

/// `identity-suspects-<class>.png` (up to 40 per class), then `split-<class>-<k>.png` for
/// each person of each folder that holds two or more.
pub(crate) fn identity(
    out: &Path,
    faces: &Faces,
    id: &IdentityReport,
) -> Result<Vec<PathBuf>, PlotError> {
    let mut images = Vec::new();
    for (c, name) in faces.class_names.iter().enumerate() {
        let tiles: Vec<Tile> = id
            .suspects
            .iter()
            .filter(|s| faces.labels[s.index] as usize == c)
            .take(40)
            .map(|s| {
                let caption = format!("{} {:.2}", s.verdict.describe(), s.own_distance);
                identity_tile(faces, s.index, caption)
            })
            .collect();
        if tiles.is_empty() {
            continue;
        }
        let p = out.join(format!("identity-suspects-{}.png", sanitize(name)));
        let title = format!("{name}: faces far from the folder's person (distance to it)");
        montage(&p, &title, &tiles, faces)?;
        images.push(p);
    }
    for f in &id.split_folders {
        split_folder(out, faces, f, &mut images)?;
    }
    Ok(images)
}

/// One montage per person of a folder that holds several, the folder's own first.
fn split_folder(
    out: &Path,
    faces: &Faces,
    f: &SplitFolder,
    images: &mut Vec<PathBuf>,
) -> Result<(), PlotError> {
    for (k, members) in f.members.iter().enumerate() {
        let tiles: Vec<Tile> = members
            .iter()
            .take(30)
            .map(|&i| identity_tile(faces, i, format!("cluster {}", k + 1)))
            .collect();
        let p = out.join(format!("split-{}-{}.png", sanitize(&f.class), k + 1));
        let title = format!(
            "{}: person {} of {} ({} faces{})",
            f.class,
            k + 1,
            f.sizes.len(),
            members.len(),
            if k == 0 {
                ", taken as the folder's"
            } else {
                ""
            }
        );
        montage(&p, &title, &tiles, faces)?;
        images.push(p);
    }
    Ok(())
}

/// Face `i` captioned with its file name and `caption`.
fn identity_tile(faces: &Faces, i: usize, caption: String) -> Tile<'_> {
    Tile {
        pixels: faces.image(i),
        caption: vec![file_name(&faces.sources[i]), caption],
    }
}

/// A class name as a file-name part.
fn sanitize(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '.' || c == '_' || c == '-' {
                c
            } else {
                '_'
            }
        })
        .collect()
}
