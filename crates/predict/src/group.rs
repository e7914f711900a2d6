//! Who are the unknowns: the faces a run called unknown, over all its photos, grouped into
//! people by dlib's face descriptor (Chinese whispers, as dlib clusters faces), each group
//! a folder of face crops with a montage, for the user to look at and name.
//!
//! Two faces are linked when their descriptors are closer than a distance calibrated on
//! the model's own training faces (its gallery): the largest distance that links at most
//! [`MAX_DIFFERENT_LINKED`] of different people's pairs, and never above dlib's 0.6.
//!
//! Chinese whispers splits a person whose faces form two tight sets (glasses and not, two
//! ages) that only a few weak links join. So groups are then merged by their centres, a
//! mean of several faces being nearer its person's than one face is: two groups merge when
//! their centres are closer than the largest distance that joins at most
//! [`MAX_MERGED_DIFFERENT`] of the gallery's different-person sets of those two sizes
//! (calibrated per pair of sizes; again never above 0.6).

use crate::run::PhotoResult;
use eval_tsne::identity::dist;
use preprocess::AlignedFace;
use std::path::{Path, PathBuf};

/// dlib's same-person distance for its face descriptor (the link without a gallery).
pub const DLIB_SAME_PERSON: f32 = 0.6;

/// The share of different people's training pairs a link may join. Chinese whispers
/// follows links, so a loose threshold chains strangers together; a tight one only splits
/// a person into more groups, which the user merges by naming both alike.
pub const MAX_DIFFERENT_LINKED: f64 = 0.005;

/// The share of different people's set pairs (of the two groups' sizes) a centre merge
/// may join. Merging joins whole groups, so a false merge costs more than a false link;
/// chosen on msceleb-samples' people left out of the gallery (test
/// `merge_rate_on_left_out_people`), never on the strangers the aim is measured on.
pub const MAX_MERGED_DIFFERENT: f64 = 0.002;

/// Each group folder's own record (its group and faces), which survives its renaming.
pub const GROUP_FILE: &str = "group.json";

/// Faces at most this many apart in the calibration (every k-th face beyond it): the pairs
/// grow with its square.
const CALIBRATION_FACES: usize = 2000;

/// Group sizes the centre merge is calibrated for; a larger group counts as the largest.
const CENTRE_SIZES: [usize; 4] = [1, 2, 4, 8];

/// Different-person set pairs drawn from the gallery per pair of sizes.
const CENTRE_SAMPLES: usize = 4000;

/// Chinese whispers' sweeps and seed (dlib's example uses 100 sweeps; 20 settle here).
const SWEEPS: usize = 20;
const SEED: u64 = 42;

/// A face called unknown, with what grouping and the group folders need.
#[derive(Debug, Clone)]
pub struct UnknownFace {
    pub photo: PathBuf,
    /// `[x, y, w, h]` in the photo's pixels.
    pub rect: [f32; 4],
    /// dlib's 128-d face descriptor (filled in by [`describe`] where the model's teacher
    /// did not compute it).
    pub descriptor: Option<Vec<f32>>,
    /// The aligned face as the model saw it (`size x size` RGB).
    pub crop: Vec<u8>,
    pub size: usize,
    /// dlib's face chip, for the descriptor.
    pub chip: Vec<u8>,
}

/// The unknown faces of every photo of a run, gathered as the photos come.
#[derive(Debug, Default)]
pub struct Unknowns {
    pub faces: Vec<UnknownFace>,
}

impl Unknowns {
    /// Keeps `photo`'s faces called unknown (`aligned[k]` is its face `k`, as predict
    /// aligned it); known faces and faces that could not be aligned are never kept.
    pub fn take(&mut self, photo: &PhotoResult, aligned: &[Option<AlignedFace>]) {
        for (f, a) in photo.faces.iter().zip(aligned) {
            let (true, Some(a)) = (f.unknown, a) else {
                continue;
            };
            let size = (a.pixels.len() / 3).isqrt();
            self.faces.push(UnknownFace {
                photo: photo.path.clone(),
                rect: f.rect,
                descriptor: f.descriptor.clone(),
                crop: a.pixels.clone(),
                size,
                chip: if f.descriptor.is_some() {
                    Vec::new()
                } else {
                    a.chip.clone()
                },
            });
        }
    }
}

/// Fills in the descriptors the model's teacher did not compute (a model without the
/// face teacher), with dlib's face descriptor on each face's chip.
pub fn describe(
    faces: &mut [UnknownFace],
    device: kernels::device::DeviceChoice,
) -> Result<(), inception_bottleneck::Error> {
    let todo: Vec<usize> = (0..faces.len())
        .filter(|&i| faces[i].descriptor.is_none())
        .collect();
    if todo.is_empty() {
        return Ok(());
    }
    let teacher = inception_bottleneck::Teacher::load(&inception_bottleneck::ExtractConfig {
        teacher: inception_bottleneck::face_teacher::FACE_TEACHER.into(),
        device,
        cache_dir: None,
        ..Default::default()
    })?;
    let c = artifacts::CHIP_SIZE;
    for part in todo.chunks(8) {
        let prepared: Vec<f32> = part
            .iter()
            .flat_map(|&i| teacher.prepare(&faces[i].chip, c, c))
            .collect();
        let rows = teacher.embed(&prepared, part.len())?;
        for (k, &i) in part.iter().enumerate() {
            faces[i].descriptor = Some(rows[k * teacher.dim()..(k + 1) * teacher.dim()].to_vec());
        }
    }
    Ok(())
}

/// The distance below which two faces are linked as one person, and where it came from.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Link {
    pub threshold: f32,
    /// `training faces` (calibrated on the model's gallery) or `dlib` (its 0.6).
    pub source: &'static str,
    /// The shares of same-person and different-person training pairs it links.
    pub same_linked: Option<f64>,
    pub different_linked: Option<f64>,
    pub training_faces: usize,
    /// When groups' centres are close enough to merge (none: groups are not merged).
    pub centres: Option<CentreLink>,
}

/// The distance below which two groups' centres merge them, by the groups' sizes:
/// `thresholds[a][b]` for groups of (at least) `sizes[a]` and `sizes[b]` faces.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct CentreLink {
    pub sizes: Vec<usize>,
    pub thresholds: Vec<Vec<f32>>,
}

impl CentreLink {
    /// The threshold for groups of `m` and `n` faces.
    pub fn threshold(&self, m: usize, n: usize) -> f32 {
        let at = |k: usize| self.sizes.iter().rposition(|&s| s <= k).unwrap_or(0);
        self.thresholds[at(m)][at(n)]
    }

    /// Calibrated on labelled descriptors: for each pair of sizes, [`CENTRE_SAMPLES`]
    /// random sets of two different people (a set of one person's faces each), and the
    /// largest centre distance joining at most `rate` of them, capped at dlib's 0.6. None
    /// when fewer than two people have enough faces.
    pub fn calibrate(
        features: &[f32],
        dim: usize,
        labels: &[u32],
        rate: f64,
    ) -> Option<CentreLink> {
        let n = labels.len().min(features.len() / dim.max(1));
        let mut people: std::collections::BTreeMap<u32, Vec<usize>> = Default::default();
        for (i, &l) in labels[..n].iter().enumerate() {
            people.entry(l).or_default().push(i);
        }
        let people: Vec<Vec<usize>> = people.into_values().collect();
        let row = |i: usize| &features[i * dim..(i + 1) * dim];
        let mut draw = kernels::stats::XorShift::new(SEED);
        // `size` of `person`'s faces drawn at random, and their centre.
        let centre_of = |person: &[usize], size: usize, draw: &mut kernels::stats::XorShift| {
            let mut pick = person.to_vec();
            draw.pick_front(&mut pick, size);
            mean(pick[..size].iter().map(|&i| row(i)))
        };
        let sizes = CENTRE_SIZES.to_vec();
        let mut thresholds = vec![vec![0f32; sizes.len()]; sizes.len()];
        for a in 0..sizes.len() {
            for b in a..sizes.len() {
                let (m, k) = (sizes[a], sizes[b]);
                let fit: Vec<&Vec<usize>> = people.iter().filter(|p| p.len() >= k).collect();
                let small: Vec<&Vec<usize>> = people.iter().filter(|p| p.len() >= m).collect();
                if fit.is_empty() || small.len() < 2 {
                    return None;
                }
                let mut d = Vec::with_capacity(CENTRE_SAMPLES);
                while d.len() < CENTRE_SAMPLES {
                    let p = fit[draw.below(fit.len())];
                    let q = small[draw.below(small.len())];
                    if std::ptr::eq(p, q) {
                        continue;
                    }
                    let (cp, cq) = (centre_of(p, k, &mut draw), centre_of(q, m, &mut draw));
                    d.push(dist(&cp, &cq));
                }
                d.sort_by(f32::total_cmp);
                let at = (rate * d.len() as f64).floor() as usize;
                let t = d[at.min(d.len() - 1)].min(DLIB_SAME_PERSON);
                thresholds[a][b] = t;
                thresholds[b][a] = t;
            }
        }
        Some(CentreLink { sizes, thresholds })
    }
}

impl Link {
    /// dlib's published same-person distance, when there are no training faces to learn
    /// from.
    pub fn dlib() -> Link {
        Link {
            threshold: DLIB_SAME_PERSON,
            source: "dlib",
            same_linked: None,
            different_linked: None,
            training_faces: 0,
            centres: None,
        }
    }

    /// Calibrated on labelled descriptors (`labels[i]` of row `i`): the largest distance
    /// that links at most [`MAX_DIFFERENT_LINKED`] of the different-person pairs, capped at
    /// dlib's 0.6. dlib's 0.6 when there are no pairs of one of the two kinds.
    pub fn calibrate(features: &[f32], dim: usize, labels: &[u32]) -> Link {
        Link::calibrate_with(features, dim, labels, Some(MAX_MERGED_DIFFERENT))
    }

    /// [`Link::calibrate`] with the centre merge's share of different people's set pairs
    /// given (`None`: groups are not merged), to choose that share on people left out.
    pub fn calibrate_with(
        features: &[f32],
        dim: usize,
        labels: &[u32],
        merge_rate: Option<f64>,
    ) -> Link {
        let n = labels.len().min(features.len() / dim.max(1));
        let step = n.div_ceil(CALIBRATION_FACES).max(1);
        let rows: Vec<usize> = (0..n).step_by(step).collect();
        let row = |i: usize| &features[i * dim..(i + 1) * dim];
        let (mut same, mut different) = (Vec::new(), Vec::new());
        for (a, &i) in rows.iter().enumerate() {
            for &j in &rows[a + 1..] {
                let d = dist(row(i), row(j));
                if labels[i] == labels[j] {
                    same.push(d);
                } else {
                    different.push(d);
                }
            }
        }
        if same.is_empty() || different.is_empty() {
            return Link::dlib();
        }
        different.sort_by(f32::total_cmp);
        let k = (MAX_DIFFERENT_LINKED * different.len() as f64).floor() as usize;
        let threshold = different[k.min(different.len() - 1)].min(DLIB_SAME_PERSON);
        let share =
            |v: &[f32]| v.iter().filter(|&&d| d < threshold).count() as f64 / v.len() as f64;
        Link {
            threshold,
            source: "training faces",
            same_linked: Some(share(&same)),
            different_linked: Some(share(&different)),
            training_faces: rows.len(),
            centres: merge_rate.and_then(|r| CentreLink::calibrate(features, dim, labels, r)),
        }
    }
}

/// The faces (by index into `descriptors`) grouped into people: Chinese whispers over the
/// face links, then groups merged by their centres (where `link` has a centre rule);
/// largest group first, ties by the first face; faces alike no other (singletons) last, as
/// groups of one.
pub fn group(descriptors: &[&[f32]], link: &Link) -> Vec<Vec<usize>> {
    let labels = eval_tsne::identity::chinese_whispers(descriptors, link.threshold, SWEEPS, SEED);
    let mut groups: Vec<Vec<usize>> = Vec::new();
    let mut slot = std::collections::HashMap::new();
    for (i, l) in labels.into_iter().enumerate() {
        let g = *slot.entry(l).or_insert_with(|| {
            groups.push(Vec::new());
            groups.len() - 1
        });
        groups[g].push(i);
    }
    if let Some(centres) = &link.centres {
        groups = merge_by_centres(descriptors, groups, centres);
    }
    groups.sort_by(|a, b| b.len().cmp(&a.len()).then(a[0].cmp(&b[0])));
    groups
}

/// Repeatedly merges the two groups whose centres are closest relative to their sizes'
/// threshold, while one pair is under it. Distances are kept in a matrix and only the
/// merged group's row recomputed, so 1,000 faces stay well under a second.
fn merge_by_centres(
    descriptors: &[&[f32]],
    mut groups: Vec<Vec<usize>>,
    rule: &CentreLink,
) -> Vec<Vec<usize>> {
    let g = groups.len();
    let mut centre: Vec<Vec<f32>> = groups
        .iter()
        .map(|m| mean(m.iter().map(|&i| descriptors[i])))
        .collect();
    let mut alive = vec![true; g];
    // ratio[a][b] = distance / threshold: a merge when below 1.
    let ratio_of = |centre: &[Vec<f32>], groups: &[Vec<usize>], a: usize, b: usize| {
        dist(&centre[a], &centre[b]) / rule.threshold(groups[a].len(), groups[b].len())
    };
    let mut ratio: Vec<Vec<f32>> = (0..g)
        .map(|a| {
            (0..g)
                .map(|b| match a == b {
                    true => f32::INFINITY,
                    false => ratio_of(&centre, &groups, a, b),
                })
                .collect()
        })
        .collect();
    loop {
        let mut best = (1f32, usize::MAX, usize::MAX);
        for a in (0..g).filter(|&a| alive[a]) {
            for b in (a + 1..g).filter(|&b| alive[b]) {
                if ratio[a][b] < best.0 {
                    best = (ratio[a][b], a, b);
                }
            }
        }
        let (_, a, b) = best;
        if a == usize::MAX {
            break;
        }
        let moved = std::mem::take(&mut groups[b]);
        groups[a].extend(moved);
        groups[a].sort_unstable();
        alive[b] = false;
        centre[a] = mean(groups[a].iter().map(|&i| descriptors[i]));
        for c in (0..g).filter(|&c| alive[c] && c != a) {
            let r = ratio_of(&centre, &groups, a, c);
            ratio[a][c] = r;
            ratio[c][a] = r;
        }
    }
    groups.into_iter().filter(|m| !m.is_empty()).collect()
}

/// The adjusted Rand index of two labellings of the same items (1: the same partition,
/// about 0: no better than chance): how well groups recover the people.
pub fn adjusted_rand_index(a: &[usize], b: &[usize]) -> f64 {
    use std::collections::HashMap;
    let pairs = |n: usize| (n * n.saturating_sub(1) / 2) as f64;
    let mut cells: HashMap<(usize, usize), usize> = HashMap::new();
    let (mut rows, mut cols): (HashMap<usize, usize>, HashMap<usize, usize>) = Default::default();
    for (&x, &y) in a.iter().zip(b) {
        *cells.entry((x, y)).or_default() += 1;
        *rows.entry(x).or_default() += 1;
        *cols.entry(y).or_default() += 1;
    }
    let index: f64 = cells.values().map(|&n| pairs(n)).sum();
    let (ra, cb): (f64, f64) = (
        rows.values().map(|&n| pairs(n)).sum(),
        cols.values().map(|&n| pairs(n)).sum(),
    );
    let expected = ra * cb / pairs(a.len()).max(1.0);
    let max = (ra + cb) / 2.0;
    if (max - expected).abs() < 1e-12 {
        return 1.0;
    }
    (index - expected) / (max - expected)
}

/// The whole of `--group-unknowns`: the missing descriptors computed, the link calibrated
/// on the model's gallery (its training faces, when its teacher is the face teacher; else
/// dlib's 0.6), the groups written under `dir`.
pub fn group_unknowns(
    model: &crate::Model,
    mut unknowns: Unknowns,
    device: kernels::device::DeviceChoice,
    dir: &Path,
) -> Result<GroupSummary, GroupError> {
    check_target(dir)?;
    describe(&mut unknowns.faces, device)?;
    let face_gallery = model
        .gallery
        .as_ref()
        .filter(|_| model.teacher.as_ref().is_some_and(|t| t.uses_chips()));
    let link = match face_gallery {
        Some(g) => Link::calibrate(&g.features, g.dim, &g.labels),
        None => Link::dlib(),
    };
    write_groups(dir, &unknowns.faces, link)
}

/// Why the groups were not written.
#[derive(Debug, thiserror::Error)]
pub enum GroupError {
    /// A folder of groups may hold the user's names: it is never overwritten.
    #[error("{0} exists and is not empty (its groups may already be named): move it away or pick another folder")]
    Exists(PathBuf),
    #[error("{0}: {1}")]
    Io(PathBuf, std::io::Error),
    #[error("{0}: {1}")]
    Image(PathBuf, image::ImageError),
    #[error(transparent)]
    Artifact(#[from] artifacts::ArtifactError),
    #[error("a face has no descriptor (call group::describe first)")]
    NoDescriptor,
    #[error("the face descriptor: {0}")]
    Descriptor(#[from] inception_bottleneck::Error),
}

/// What was written.
#[derive(Debug, Clone, serde::Serialize)]
pub struct GroupSummary {
    pub dir: PathBuf,
    pub faces: usize,
    pub groups: usize,
    /// Groups of one face.
    pub singletons: usize,
    pub link: Link,
    /// Seconds spent clustering (the descriptors already computed).
    pub cluster_seconds: f64,
}

impl GroupSummary {
    pub fn line(&self) -> String {
        format!(
            "grouped {} unknown faces into {} people ({} seen once) -> {} (linked below {:.3}, from {})",
            self.faces,
            self.groups,
            self.singletons,
            self.dir.display(),
            self.link.threshold,
            self.link.source
        )
    }
}

/// Refuses a folder that exists and is not empty (checked before a run, so that a long
/// run does not end in this error).
pub fn check_target(dir: &Path) -> Result<(), GroupError> {
    if std::fs::read_dir(dir).is_ok_and(|mut d| d.next().is_some()) {
        return Err(GroupError::Exists(dir.to_path_buf()));
    }
    Ok(())
}

/// The name of group `g` (0-based) among `count`: `unknown-001`, ... (wider when needed).
pub fn group_name(g: usize, count: usize) -> String {
    let width = count.to_string().len().max(3);
    format!("unknown-{:0width$}", g + 1)
}

/// Groups `faces` and writes them under `dir`: one folder per group (`unknown-001/` with
/// `face-01.png`, ... the aligned crops, `photo-01.<ext>` links to the photos they come
/// from, `montage.png`, `group.json`), `groups.csv` (group, face, photo, box, distance to the group's
/// centre) and `groups.json`. Everything is written into a sibling folder first and moved
/// into place at the end, so a failed run leaves no half of one; an existing non-empty
/// `dir` is refused.
pub fn write_groups(
    dir: &Path,
    faces: &[UnknownFace],
    link: Link,
) -> Result<GroupSummary, GroupError> {
    check_target(dir)?;
    let descriptors: Vec<&[f32]> = faces
        .iter()
        .map(|f| f.descriptor.as_deref().ok_or(GroupError::NoDescriptor))
        .collect::<Result<_, _>>()?;
    let t = std::time::Instant::now();
    let groups = group(&descriptors, &link);
    let cluster_seconds = t.elapsed().as_secs_f64();
    let parent = dir
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    std::fs::create_dir_all(parent).map_err(|e| GroupError::Io(parent.to_path_buf(), e))?;
    let name = dir
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = parent.join(format!(".{name}.partial-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&tmp);
    let written = write_into(&tmp, faces, &descriptors, &groups, &link);
    if let Err(e) = written {
        let _ = std::fs::remove_dir_all(&tmp);
        return Err(e);
    }
    // An empty `dir` (made by the user beforehand) gives way to the new one.
    let _ = std::fs::remove_dir(dir);
    std::fs::rename(&tmp, dir).map_err(|e| GroupError::Io(dir.to_path_buf(), e))?;
    Ok(GroupSummary {
        dir: dir.to_path_buf(),
        faces: faces.len(),
        groups: groups.len(),
        singletons: groups.iter().filter(|g| g.len() == 1).count(),
        link,
        cluster_seconds,
    })
}

fn write_into(
    tmp: &Path,
    faces: &[UnknownFace],
    descriptors: &[&[f32]],
    groups: &[Vec<usize>],
    link: &Link,
) -> Result<(), GroupError> {
    let io = |p: &Path| {
        let p = p.to_path_buf();
        move |e| GroupError::Io(p, e)
    };
    std::fs::create_dir_all(tmp).map_err(io(tmp))?;
    let mut csv = String::from("group,face,photo,x,y,w,h,distance_to_centre\n");
    let mut json_groups = Vec::new();
    for (g, members) in groups.iter().enumerate() {
        let name = group_name(g, groups.len());
        let gdir = tmp.join(&name);
        std::fs::create_dir_all(&gdir).map_err(io(&gdir))?;
        let centre = mean(members.iter().map(|&i| descriptors[i]));
        let mut json_faces = Vec::new();
        for (k, &i) in members.iter().enumerate() {
            let f = &faces[i];
            let file = format!("face-{:02}.png", k + 1);
            let png = gdir.join(&file);
            image::save_buffer(
                &png,
                &f.crop,
                f.size as u32,
                f.size as u32,
                image::ExtendedColorType::Rgb8,
            )
            .map_err(|e| GroupError::Image(png.clone(), e))?;
            link_photo(&gdir, k, &f.photo);
            let d = dist(descriptors[i], &centre);
            let [x, y, w, h] = f.rect;
            csv.push_str(&format!(
                "{name},{file},{},{x:.0},{y:.0},{w:.0},{h:.0},{d:.4}\n",
                crate::output::csv_field(&f.photo.display().to_string())
            ));
            json_faces.push(serde_json::json!({
                "face": file, "photo": f.photo, "box": f.rect, "distance_to_centre": d,
            }));
        }
        let crops: Vec<&[u8]> = members
            .iter()
            .take(64)
            .map(|&i| faces[i].crop.as_slice())
            .collect();
        let rows: Vec<u32> = (0..crops.len()).map(|k| (k / 8) as u32).collect();
        let size = faces[members[0]].size;
        let montage = gdir.join("montage.png");
        preprocess::montage::write_montage(
            &montage,
            size,
            &|k| crops[k].into(),
            &rows,
            crops.len().div_ceil(8),
            8,
            64,
        )
        .map_err(|e| GroupError::Io(montage, std::io::Error::other(e.to_string())))?;
        let entry = serde_json::json!({ "group": name, "faces": json_faces });
        // Beside the faces too: the folder keeps saying which group it is once renamed.
        artifacts::write_json_atomic(&gdir.join(GROUP_FILE), &entry)?;
        json_groups.push(entry);
    }
    artifacts::write_atomic(&tmp.join("groups.csv"), csv.as_bytes())?;
    artifacts::write_json_atomic(
        &tmp.join("groups.json"),
        &serde_json::json!({
            "faces": faces.len(),
            "link": link,
            "groups": json_groups,
        }),
    )?;
    Ok(())
}

/// A link to the photo a face comes from, named like the face (best effort: the CSV and
/// JSON name the photo too).
fn link_photo(gdir: &Path, k: usize, photo: &Path) {
    let ext = photo
        .extension()
        .map(|e| e.to_string_lossy().into_owned())
        .unwrap_or_default();
    let at = gdir.join(format!("photo-{:02}.{ext}", k + 1));
    let target = std::fs::canonicalize(photo).unwrap_or_else(|_| photo.to_path_buf());
    #[cfg(unix)]
    if let Err(e) = std::os::unix::fs::symlink(&target, &at) {
        tracing::warn!("{}: no link to its photo: {e}", at.display());
    }
    #[cfg(not(unix))]
    let _ = (target, at);
}

fn mean<'a>(rows: impl Iterator<Item = &'a [f32]>) -> Vec<f32> {
    let mut sum: Vec<f32> = Vec::new();
    let mut n = 0;
    for r in rows {
        if sum.is_empty() {
            sum = vec![0.0; r.len()];
        }
        sum.iter_mut().zip(r).for_each(|(s, v)| *s += v);
        n += 1;
    }
    sum.iter_mut().for_each(|s| *s /= n.max(1) as f32);
    sum
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Points around `centres`, each `spread` from its centre in one coordinate.
    fn cloud(centres: &[(f32, usize)], spread: f32) -> (Vec<Vec<f32>>, Vec<usize>) {
        let (mut pts, mut who) = (Vec::new(), Vec::new());
        for (c, &(at, n)) in centres.iter().enumerate() {
            for k in 0..n {
                let mut p = vec![0f32; 8];
                p[0] = at;
                p[1 + k % 7] = spread * if k % 2 == 0 { 1.0 } else { -1.0 };
                pts.push(p);
                who.push(c);
            }
        }
        (pts, who)
    }

    #[test]
    fn people_are_recovered_largest_first_singletons_last() {
        let (pts, who) = cloud(&[(0.0, 5), (10.0, 9), (20.0, 1), (30.0, 3)], 0.2);
        let refs: Vec<&[f32]> = pts.iter().map(|p| p.as_slice()).collect();
        let groups = group(&refs, &Link::dlib());
        let sizes: Vec<usize> = groups.iter().map(|g| g.len()).collect();
        assert_eq!(sizes, [9, 5, 3, 1]);
        let mut got = vec![0; pts.len()];
        for (g, m) in groups.iter().enumerate() {
            m.iter().for_each(|&i| got[i] = g);
        }
        assert!((adjusted_rand_index(&got, &who) - 1.0).abs() < 1e-9);
    }

    #[test]
    fn a_person_split_by_the_links_is_merged_by_the_centres_and_strangers_are_not() {
        // One person in two tight sets 0.7 apart (no face link at 0.6), another 3 away.
        let (pts, _) = cloud(&[(0.0, 4), (0.7, 3), (3.7, 5)], 0.05);
        let refs: Vec<&[f32]> = pts.iter().map(|p| p.as_slice()).collect();
        let sizes = |g: &[Vec<usize>]| g.iter().map(|m| m.len()).collect::<Vec<_>>();
        assert_eq!(sizes(&group(&refs, &Link::dlib())), [5, 4, 3]);
        let mut link = Link::dlib();
        link.centres = Some(CentreLink {
            sizes: vec![1, 2, 4],
            thresholds: vec![
                vec![0.6, 0.6, 0.6],
                vec![0.6, 0.65, 0.75],
                vec![0.6, 0.75, 0.8],
            ],
        });
        let merged = group(&refs, &link);
        assert_eq!(sizes(&merged), [7, 5]);
        assert_eq!(merged[0], (0..7).collect::<Vec<_>>());
        // Sizes past the last calibrated one use it; below the first, the first.
        let c = link.centres.unwrap();
        assert_eq!((c.threshold(3, 9), c.threshold(0, 1)), (0.75, 0.6));
    }

    #[test]
    fn the_centre_rule_is_calibrated_below_most_different_sets() {
        let (pts, who) = cloud(&[(0.0, 20), (0.5, 20), (3.0, 20)], 0.1);
        let features: Vec<f32> = pts.concat();
        let labels: Vec<u32> = who.iter().map(|&c| c as u32).collect();
        let c = CentreLink::calibrate(&features, 8, &labels, 0.005).unwrap();
        // The nearest two people's faces and centres are 0.5 or a little more apart
        // (0.1 in one other coordinate each): every threshold sits there, under dlib's 0.6.
        for row in &c.thresholds {
            assert!(row.iter().all(|&t| (0.5..0.55).contains(&t)), "{c:?}");
        }
        assert!(CentreLink::calibrate(&features[..8 * 20], 8, &labels[..20], 0.005).is_none());
    }

    #[test]
    fn the_adjusted_rand_index_is_one_for_a_relabelling_and_low_for_a_mix() {
        assert!((adjusted_rand_index(&[0, 0, 1, 1, 2], &[5, 5, 3, 3, 9]) - 1.0).abs() < 1e-12);
        let mixed = adjusted_rand_index(&[0, 1, 0, 1, 0, 1], &[0, 0, 0, 1, 1, 1]);
        assert!(mixed < 0.1, "{mixed}");
    }

    #[test]
    fn the_link_is_calibrated_below_most_different_pairs() {
        let (pts, who) = cloud(&[(0.0, 20), (0.5, 20), (3.0, 20)], 0.1);
        let features: Vec<f32> = pts.concat();
        let labels: Vec<u32> = who.iter().map(|&c| c as u32).collect();
        let l = Link::calibrate(&features, 8, &labels);
        assert_eq!(l.source, "training faces");
        assert!(l.threshold <= 0.5 && l.threshold > 0.14, "{l:?}");
        assert!(l.different_linked.unwrap() <= MAX_DIFFERENT_LINKED, "{l:?}");
        assert_eq!(l.same_linked, Some(1.0), "{l:?}");
        assert_eq!(
            Link::calibrate(&features[..8 * 20], 8, &labels[..20]),
            Link::dlib()
        );
    }

    fn face(photo: &Path, d: Vec<f32>) -> UnknownFace {
        UnknownFace {
            photo: photo.to_path_buf(),
            rect: [1.0, 2.0, 3.0, 4.0],
            descriptor: Some(d),
            crop: vec![128; 16 * 16 * 3],
            size: 16,
            chip: Vec::new(),
        }
    }

    #[test]
    fn groups_are_written_whole_and_never_over_named_ones() {
        let tmp = tempfile::tempdir().unwrap();
        let photo = tmp.path().join("p.jpg");
        std::fs::write(&photo, b"x").unwrap();
        let faces = vec![
            face(&photo, vec![0.0, 0.0]),
            face(&photo, vec![5.0, 0.0]),
            face(&photo, vec![0.1, 0.0]),
        ];
        let dir = tmp.path().join("groups");
        let s = write_groups(&dir, &faces, Link::dlib()).unwrap();
        assert_eq!((s.groups, s.singletons), (2, 1));
        for f in [
            "unknown-001/face-01.png",
            "unknown-001/face-02.png",
            "unknown-001/montage.png",
            "unknown-002/face-01.png",
            "groups.csv",
            "groups.json",
        ] {
            assert!(dir.join(f).is_file(), "{f}");
        }
        #[cfg(unix)]
        assert!(dir.join("unknown-001/photo-01.jpg").exists());
        let csv = std::fs::read_to_string(dir.join("groups.csv")).unwrap();
        assert_eq!(csv.lines().count(), 4, "{csv}");
        assert!(
            csv.lines()
                .nth(1)
                .unwrap()
                .starts_with("unknown-001,face-01.png,"),
            "{csv}"
        );
        // The user renames a group; a second run must not overwrite the folder.
        std::fs::rename(dir.join("unknown-002"), dir.join("Ada")).unwrap();
        let e = write_groups(&dir, &faces, Link::dlib()).unwrap_err();
        assert!(matches!(e, GroupError::Exists(_)), "{e}");
        assert!(dir.join("Ada/face-01.png").is_file());
        // Nothing half-written beside it.
        let left: Vec<_> = std::fs::read_dir(tmp.path())
            .unwrap()
            .flatten()
            .map(|e| e.file_name())
            .collect();
        assert_eq!(left.len(), 2, "{left:?}");
    }

    #[test]
    fn names_widen_past_999_groups() {
        assert_eq!(group_name(0, 3), "unknown-001");
        assert_eq!(group_name(1233, 1500), "unknown-1234");
    }
}
