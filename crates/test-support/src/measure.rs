//! The measurements behind predict's claims: agreement with eval-tsne's labels on the
//! faces artifact's own photos, and the open-set rule on people the model never saw
//! (their folders left out of training). Experiment code: it trains models, so it lives
//! here for predict's tests and its `strangers` example, not in predict's library.

use anyhow::{bail, Context, Result};
use artifacts::{Bottlenecks, Faces, Split};
use predict::{FaceResult, Model, ModelOptions, PhotoResult, UnknownRule};
use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};

/// `ck` opened on the CPU with the given unknown rule and face search.
pub fn open(ck: &Path, unknown: UnknownRule, faces: preprocess::FaceSearch) -> Model {
    Model::open(
        ck,
        &ModelOptions {
            device: kernels::device::DeviceChoice::Cpu,
            unknown,
            faces,
        },
    )
    .unwrap()
}

/// The face of `photo` whose box is the one a faces artifact recorded (`[x, y, w, h]` in
/// decoded pixels): the best overlap, at least 0.5 IoU.
pub fn matching_face(photo: &PhotoResult, recorded: [f32; 4]) -> Option<&FaceResult> {
    let r = recorded.map(|v| v * photo.decoded_scale);
    photo
        .faces
        .iter()
        .map(|f| (f, preprocess::detect::iou(f.rect, r)))
        .filter(|(_, o)| *o >= 0.5)
        .max_by(|a, b| a.1.total_cmp(&b.1))
        .map(|(f, _)| f)
}

/// Writes `faces` without the classes `leave_out` (labels renumbered) and the rows of `b`
/// that remain, as artifacts in `dir`: training data in which those people never were.
pub fn write_without(
    faces: &Faces,
    b: &Bottlenecks,
    leave_out: &[String],
    dir: &Path,
) -> Result<(PathBuf, PathBuf)> {
    for c in leave_out {
        if !faces.class_names.contains(c) {
            bail!("no class `{c}` to leave out");
        }
    }
    let keep_class: Vec<bool> = faces
        .class_names
        .iter()
        .map(|c| !leave_out.contains(c))
        .collect();
    let rows: Vec<usize> = (0..faces.len())
        .filter(|&i| keep_class[faces.labels[i] as usize])
        .collect();
    let sub = faces_rows(faces, &keep_class, &rows);
    std::fs::create_dir_all(dir).with_context(|| dir.display().to_string())?;
    let fp = dir.join("faces.safetensors");
    sub.write(&fp)?;
    let sb = Bottlenecks {
        views: None,
        dim: b.dim,
        features: rows
            .iter()
            .flat_map(|&i| b.row(i).iter().copied())
            .collect(),
        mirrored: None,
        teacher: b.teacher.clone(),
        layer: b.layer.clone(),
        faces_digest: artifacts::digest_file(&fp)?,
        provenance: b.provenance.clone(),
    };
    let bp = dir.join("bottlenecks.safetensors");
    sb.write(&bp)?;
    Ok((fp, bp))
}

/// The faces `rows` of `faces`, of the classes kept (`keep_class`), labels renumbered.
fn faces_rows(faces: &Faces, keep_class: &[bool], rows: &[usize]) -> Faces {
    let mut new_label = vec![u32::MAX; faces.class_names.len()];
    let mut names = Vec::new();
    for (c, name) in faces.class_names.iter().enumerate() {
        if keep_class[c] {
            new_label[c] = names.len() as u32;
            names.push(name.clone());
        }
    }
    let mut sub = Faces {
        height: faces.height,
        width: faces.width,
        images: rows
            .iter()
            .flat_map(|&i| faces.image(i).into_owned())
            .collect(),
        labels: rows
            .iter()
            .map(|&i| new_label[faces.labels[i] as usize])
            .collect(),
        splits: rows.iter().map(|&i| faces.splits[i]).collect(),
        class_names: names,
        sources: rows.iter().map(|&i| faces.sources[i].clone()).collect(),
        geometry: None,
        provenance: faces.provenance.clone(),
    };
    sub.geometry = faces.geometry.as_ref().map(|g| artifacts::FaceGeometry {
        boxes: rows.iter().map(|&i| g.boxes[i]).collect(),
        landmarks: rows
            .iter()
            .flat_map(|&i| g.landmarks[i * 136..(i + 1) * 136].iter().copied())
            .collect(),
        transforms: rows
            .iter()
            .flat_map(|&i| g.transforms[i * 6..(i + 1) * 6].iter().copied())
            .collect(),
        chips: g.chips.as_ref().map(|_| {
            rows.iter()
                .flat_map(|&i| g.chip(i).expect("present").into_owned())
                .collect()
        }),
    });
    sub
}

/// The open-set rule on strangers and on known people's test photos.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct OpenSetFigures {
    pub left_out: Vec<String>,
    pub threshold: Option<f32>,
    pub strangers_photos: usize,
    /// Every face found in the strangers' photos (aligned ones).
    pub strangers_faces: usize,
    pub strangers_unknown: usize,
    /// The strangers' main faces (the ones preprocess kept from their photos).
    pub strangers_main_faces: usize,
    pub strangers_main_unknown: usize,
    /// Known people's test faces (the faces artifact's test split), and how many of them
    /// predict did not find again (counted as errors below).
    pub known_faces: usize,
    pub known_not_found: usize,
    pub known_correct_closed: usize,
    pub known_correct_open: usize,
    pub known_unknown: usize,
    /// The same over the faces the identity analysis (eval-tsne's, on all the data's
    /// descriptors) takes as their folder's person: the labels there are right, so a face
    /// called unknown is a loss, not a stranger in a dirty folder caught.
    pub clean_known_faces: usize,
    pub clean_known_correct_closed: usize,
    pub clean_known_correct_open: usize,
    pub clean_strangers_faces: usize,
    pub clean_strangers_unknown: usize,
    /// Known test faces the model names right but the rule calls unknown (to look at).
    pub known_rejected: Vec<String>,
}

impl OpenSetFigures {
    pub fn strangers_rejected(&self) -> f64 {
        self.strangers_unknown as f64 / self.strangers_faces.max(1) as f64
    }
    pub fn accuracy_closed(&self) -> f64 {
        self.known_correct_closed as f64 / self.known_faces.max(1) as f64
    }
    pub fn accuracy_open(&self) -> f64 {
        self.known_correct_open as f64 / self.known_faces.max(1) as f64
    }
    pub fn summary(&self) -> serde_json::Value {
        let mut v = serde_json::to_value(self).expect("plain");
        v["strangers_rejected"] = self.strangers_rejected().into();
        v["strangers_main_rejected"] =
            (self.strangers_main_unknown as f64 / self.strangers_main_faces.max(1) as f64).into();
        v["known_accuracy_closed"] = self.accuracy_closed().into();
        v["known_accuracy_open"] = self.accuracy_open().into();
        v["known_accuracy_drop_points"] =
            (100.0 * (self.accuracy_closed() - self.accuracy_open())).into();
        let share = |a: usize, b: usize| a as f64 / b.max(1) as f64;
        let (c, o) = (
            share(self.clean_known_correct_closed, self.clean_known_faces),
            share(self.clean_known_correct_open, self.clean_known_faces),
        );
        v["clean_known_accuracy_closed"] = c.into();
        v["clean_known_accuracy_open"] = o.into();
        v["clean_known_accuracy_drop_points"] = (100.0 * (c - o)).into();
        v["clean_strangers_rejected"] =
            share(self.clean_strangers_unknown, self.clean_strangers_faces).into();
        v
    }
}

/// A leave-people-out run: `faces`/`b` (all people, from `data`'s photos), the classes to
/// leave out, how to train, where to work.
pub struct LeaveOut<'a> {
    pub faces: &'a Faces,
    pub bottlenecks: &'a Bottlenecks,
    pub data: &'a Path,
    pub leave_out: Vec<String>,
    pub train: train::TrainConfig,
    pub dir: PathBuf,
}

/// Trains without the left-out people, then predicts their photos and the known people's
/// test photos from the raw files.
pub fn leave_out(run: &LeaveOut) -> Result<OpenSetFigures> {
    let model = train_without(run)?;
    let f = run.faces;
    let boxes = recorded_boxes(f)?;
    let known: Vec<usize> = (0..f.len())
        .filter(|&i| {
            f.splits[i] == Split::Test
                && !run.leave_out.contains(&f.class_names[f.labels[i] as usize])
        })
        .collect();
    let known_photos: Vec<PathBuf> = known
        .iter()
        .map(|&i| run.data.join(&f.sources[i]))
        .collect();
    let (strangers, _) = predict::predict_photos(&model, &stranger_photos(run)?, |_, _, _| Ok(()))?;
    let (known_res, _) = predict::predict_photos(&model, &known_photos, |_, _, _| Ok(()))?;
    let flagged = flagged_by_identity(run);
    let mut fig = OpenSetFigures {
        left_out: run.leave_out.clone(),
        threshold: model.rule.as_ref().map(|r| r.threshold),
        strangers_photos: strangers.len(),
        ..Default::default()
    };
    count_strangers(&mut fig, run, &strangers, boxes, &flagged);
    count_known(&mut fig, f, known_res.iter().zip(&known), boxes, &flagged);
    Ok(fig)
}

/// The model trained on `run`'s data without its left-out people, opened on the CPU.
fn train_without(run: &LeaveOut) -> Result<Model> {
    let (fp, bp) = write_without(run.faces, run.bottlenecks, &run.leave_out, &run.dir)?;
    let teacher = run.train.mode.needs_teacher().then_some(bp.as_path());
    let data = train::Dataset::load(&fp, teacher)?;
    let ck = run
        .dir
        .join(format!("student-{}.safetensors", run.train.mode.name()));
    let mut files = train::RunFiles::beside(&ck);
    files.progress = false;
    train::train(&data, &run.train, &train::stored_partition(&data), &files).context("training")?;
    Ok(Model::open(
        &ck,
        &ModelOptions {
            device: kernels::device::DeviceChoice::Cpu,
            unknown: UnknownRule::Stored,
            faces: preprocess::FaceSearch::Every,
        },
    )?)
}

fn recorded_boxes(f: &Faces) -> Result<&[[f32; 4]]> {
    Ok(&f
        .geometry
        .as_ref()
        .context("the faces artifact records no boxes")?
        .boxes)
}

/// The strangers' photos: every file of their folders, faces kept by preprocess or not.
fn stranger_photos(run: &LeaveOut) -> Result<Vec<PathBuf>> {
    let mut photos = Vec::new();
    for c in &run.leave_out {
        let dir = run.data.join(c);
        photos.extend(
            predict::list_photos(std::slice::from_ref(&dir))?
                .into_iter()
                .map(|i| i.path),
        );
    }
    Ok(photos)
}

/// The faces eval-tsne's identity analysis takes for someone other than their folder's
/// person.
fn flagged_by_identity(run: &LeaveOut) -> HashSet<usize> {
    let f = run.faces;
    eval_tsne::identity::analyse(
        &run.bottlenecks.features,
        run.bottlenecks.dim,
        &f.labels,
        &f.class_names,
        &f.sources,
        &eval_tsne::identity::IdentityConfig::default(),
    )
    .suspects
    .iter()
    .map(|s| s.index)
    .collect()
}

fn count_strangers(
    fig: &mut OpenSetFigures,
    run: &LeaveOut,
    strangers: &[PhotoResult],
    boxes: &[[f32; 4]],
    flagged: &HashSet<usize>,
) {
    let by_source: BTreeMap<&str, usize> = run
        .faces
        .sources
        .iter()
        .enumerate()
        .map(|(i, s)| (s.as_str(), i))
        .collect();
    for p in strangers {
        for face in p.faces.iter().filter(|x| x.error.is_none()) {
            fig.strangers_faces += 1;
            fig.strangers_unknown += usize::from(face.unknown);
        }
        let rel = p
            .path
            .strip_prefix(run.data)
            .unwrap_or(&p.path)
            .to_string_lossy()
            .into_owned();
        if let Some(&i) = by_source.get(rel.as_str()) {
            if let Some(face) = matching_face(p, boxes[i]) {
                fig.strangers_main_faces += 1;
                fig.strangers_main_unknown += usize::from(face.unknown);
                if !flagged.contains(&i) {
                    fig.clean_strangers_faces += 1;
                    fig.clean_strangers_unknown += usize::from(face.unknown);
                }
            }
        }
    }
}

fn count_known<'a>(
    fig: &mut OpenSetFigures,
    f: &Faces,
    known: impl Iterator<Item = (&'a PhotoResult, &'a usize)>,
    boxes: &[[f32; 4]],
    flagged: &HashSet<usize>,
) {
    for (p, &i) in known {
        fig.known_faces += 1;
        let truth = &f.class_names[f.labels[i] as usize];
        let clean = !flagged.contains(&i);
        fig.clean_known_faces += usize::from(clean);
        let Some(face) = matching_face(p, boxes[i]) else {
            fig.known_not_found += 1;
            continue;
        };
        let best = face.best.as_ref().map(|b| &b.person);
        let (closed, open) = (best == Some(truth), face.person.as_ref() == Some(truth));
        fig.known_correct_closed += usize::from(closed);
        fig.known_correct_open += usize::from(open);
        fig.known_unknown += usize::from(face.unknown);
        if closed && face.unknown {
            fig.known_rejected.push(format!(
                "{}{}",
                f.sources[i],
                if clean { "" } else { " (flagged)" }
            ));
        }
        if clean {
            fig.clean_known_correct_closed += usize::from(closed);
            fig.clean_known_correct_open += usize::from(open);
        }
    }
}

/// Labels of predict on the photos of `faces`' faces `idx` against `expected` (class per
/// face, e.g. eval-tsne's `predictions`), for each model with its expected labels (the
/// photos are aligned once for all): (agreeing, compared, the disagreements) per model.
pub fn agreement(
    checks: &[(&Model, &[u32])],
    faces: &Faces,
    data: &Path,
    idx: &[usize],
) -> Result<Vec<(usize, usize, Vec<String>)>> {
    let boxes = recorded_boxes(faces)?;
    let photos: Vec<PathBuf> = idx.iter().map(|&i| data.join(&faces.sources[i])).collect();
    let models: Vec<&Model> = checks.iter().map(|(m, _)| *m).collect();
    let results = predict::run::predict_photos_many(&models, &photos)?;
    let mut out = Vec::new();
    for ((model, expected), res) in checks.iter().zip(&results) {
        let mut agree = 0;
        let mut differ = Vec::new();
        for (p, &i) in res.iter().zip(idx) {
            let want = &model.class_names[expected[i] as usize];
            match matching_face(p, boxes[i]).and_then(|f| f.best.as_ref()) {
                Some(b) if &b.person == want => agree += 1,
                Some(b) => differ.push(format!(
                    "{}: predict {} ({:.3}), eval {want}",
                    faces.sources[i], b.person, b.probability
                )),
                None => differ.push(format!(
                    "{}: the recorded face was not found again ({} faces: {:?})",
                    faces.sources[i],
                    p.faces.len(),
                    p.faces.iter().map(|f| f.rect).collect::<Vec<_>>()
                )),
            }
        }
        out.push((agree, idx.len(), differ));
    }
    Ok(out)
}
