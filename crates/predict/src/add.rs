//! Naming the unknowns: the groups the user renamed (or named with `--name`) become
//! training photos of those people in the data folder, all of them or none.
//!
//! Each face is added as a crop of its photo around its box (three boxes wide), so the
//! face preprocess then keeps from it is that face, even from a group photo. A crop's
//! file name is a digest of its photo and box: the same group added twice is refused.

use crate::group::GROUP_FILE;
use std::path::{Path, PathBuf};

/// Where a group folder still has its generated name, it is not named yet.
const UNNAMED_PREFIX: &str = "unknown-";

/// A crop around the box: this many box sides on each side of it.
const CONTEXT: f32 = 1.0;

/// Why nothing was added.
#[derive(Debug, thiserror::Error)]
pub enum AddError {
    #[error("{0}: no groups here (expected the folder `predict --group-unknowns` wrote)")]
    NoGroups(PathBuf),
    #[error("{path}: {error}")]
    Io {
        path: PathBuf,
        error: std::io::Error,
    },
    #[error("{path}: not a group record ({error})")]
    Record {
        path: PathBuf,
        error: serde_json::Error,
    },
    #[error("group {group}: `{name}` cannot be a person's folder name: {why}")]
    BadName {
        group: String,
        name: String,
        why: &'static str,
    },
    #[error("--name {0}: expected GROUP=NAME, e.g. unknown-003=Ada")]
    NameOption(String),
    #[error("--name {0}: there is no such group folder")]
    NoSuchGroup(String),
    #[error("group {group} ({name}) has no faces left (all its face files were deleted)")]
    Empty { group: String, name: String },
    #[error("group {group} was already added as {name} ({file} exists)")]
    AlreadyAdded {
        group: String,
        name: String,
        file: PathBuf,
    },
    #[error("{path}: its photo cannot be read again ({why})")]
    Photo { path: PathBuf, why: String },
    #[error("no group is named: rename a group's folder to the person's name, or pass --name unknown-001=NAME")]
    NothingNamed,
}

/// One face to add.
#[derive(Debug, Clone)]
struct NewPhoto {
    photo: PathBuf,
    rect: [f32; 4],
    file: String,
}

/// What an add will do, checked whole before anything is written.
#[derive(Debug, Default)]
pub struct Plan {
    /// Each person and the faces added to their folder.
    people: Vec<(String, Vec<NewPhoto>)>,
    /// Groups left alone (not named) and faces left out (their files deleted).
    pub notes: Vec<String>,
}

/// What was added.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Added {
    /// Person, faces added, and whether the person is new to the data.
    pub people: Vec<(String, usize, bool)>,
    pub notes: Vec<String>,
}

#[derive(serde::Deserialize)]
struct GroupRecord {
    group: String,
    faces: Vec<FaceRecord>,
}

#[derive(serde::Deserialize)]
struct FaceRecord {
    face: String,
    photo: PathBuf,
    #[serde(rename = "box")]
    rect: [f32; 4],
}

/// Reads the group folders under `dir` and checks every named one against `data`:
/// `names` are `GROUP=NAME` overrides for folders not renamed. Any problem refuses the
/// whole add.
pub fn plan(dir: &Path, names: &[String], data: &Path) -> Result<Plan, AddError> {
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |error| AddError::Io { path, error }
    };
    let mut overrides = std::collections::BTreeMap::new();
    for n in names {
        let (g, name) = n
            .split_once('=')
            .ok_or_else(|| AddError::NameOption(n.clone()))?;
        overrides.insert(g.to_string(), name.to_string());
    }
    let mut folders: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(io(dir))?
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.join(GROUP_FILE).is_file())
        .collect();
    folders.sort();
    if folders.is_empty() {
        return Err(AddError::NoGroups(dir.to_path_buf()));
    }
    let mut plan = Plan::default();
    let mut used = std::collections::BTreeSet::new();
    for folder in &folders {
        let record_path = folder.join(GROUP_FILE);
        let text = std::fs::read_to_string(&record_path).map_err(io(&record_path))?;
        let record: GroupRecord =
            serde_json::from_str(&text).map_err(|error| AddError::Record {
                path: record_path.clone(),
                error,
            })?;
        let folder_name = folder
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let name = match overrides.get(&folder_name) {
            Some(n) => {
                used.insert(folder_name.clone());
                n.clone()
            }
            None if folder_name.starts_with(UNNAMED_PREFIX) => {
                plan.notes
                    .push(format!("{folder_name}: not named, left out"));
                continue;
            }
            None => folder_name.clone(),
        };
        check_name(&record.group, &name)?;
        let mut faces = Vec::new();
        for f in &record.faces {
            if !folder.join(&f.face).is_file() {
                plan.notes
                    .push(format!("{folder_name}/{}: deleted, so left out", f.face));
                continue;
            }
            let key = format!("{}|{:?}", f.photo.display(), f.rect);
            let digest = artifacts::digest_bytes(key.as_bytes());
            let file = format!("added-{}.png", &digest.trim_start_matches("sha256:")[..16]);
            let at = data.join(&name).join(&file);
            if at.exists() {
                return Err(AddError::AlreadyAdded {
                    group: record.group.clone(),
                    name,
                    file: at,
                });
            }
            faces.push(NewPhoto {
                photo: f.photo.clone(),
                rect: f.rect,
                file,
            });
        }
        if faces.is_empty() {
            return Err(AddError::Empty {
                group: record.group,
                name,
            });
        }
        match plan.people.iter_mut().find(|(n, _)| *n == name) {
            Some((_, v)) => v.extend(faces),
            None => plan.people.push((name, faces)),
        }
    }
    if let Some(missing) = overrides.keys().find(|g| !used.contains(*g)) {
        return Err(AddError::NoSuchGroup(missing.clone()));
    }
    if plan.people.is_empty() {
        return Err(AddError::NothingNamed);
    }
    Ok(plan)
}

/// A person's name must be one folder name of the data: no separators, not hidden, not
/// `.` or `..`, no control characters.
fn check_name(group: &str, name: &str) -> Result<(), AddError> {
    let why = if name.trim().is_empty() {
        Some("it is empty")
    } else if name.contains(['/', '\\']) {
        Some("it holds a path separator")
    } else if name.starts_with('.') {
        Some("a name starting with `.` is a hidden folder, which preprocess skips")
    } else if name.chars().any(char::is_control) {
        Some("it holds a control character")
    } else if name.starts_with(UNNAMED_PREFIX) {
        Some("that is a group's generated name")
    } else {
        None
    };
    match why {
        Some(why) => Err(AddError::BadName {
            group: group.to_string(),
            name: name.to_string(),
            why,
        }),
        None => Ok(()),
    }
}

/// Writes the plan's crops into `data`: all into a staging folder beside the classes
/// first, then moved into place (a new person's folder in one rename); a failure undoes
/// what was moved, so the data holds all of the new faces or none.
pub fn apply(plan: Plan, data: &Path) -> Result<Added, AddError> {
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |error| AddError::Io { path, error }
    };
    let stage = data.join(format!(".adding-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&stage);
    let staged = stage_crops(&plan, &stage);
    if let Err(e) = staged {
        let _ = std::fs::remove_dir_all(&stage);
        return Err(e);
    }
    let mut moved: Vec<(PathBuf, PathBuf)> = Vec::new();
    let mut added = Vec::new();
    let result = (|| -> Result<(), AddError> {
        for (name, faces) in &plan.people {
            let (from, to) = (stage.join(name), data.join(name));
            if !to.exists() {
                std::fs::rename(&from, &to).map_err(io(&to))?;
                moved.push((to, from));
                added.push((name.clone(), faces.len(), true));
                continue;
            }
            for f in faces {
                let (a, b) = (from.join(&f.file), to.join(&f.file));
                std::fs::rename(&a, &b).map_err(io(&b))?;
                moved.push((b, a));
            }
            added.push((name.clone(), faces.len(), false));
        }
        Ok(())
    })();
    if let Err(e) = result {
        for (now, was) in moved.iter().rev() {
            let _ = std::fs::rename(now, was);
        }
        let _ = std::fs::remove_dir_all(&stage);
        return Err(e);
    }
    let _ = std::fs::remove_dir_all(&stage);
    Ok(Added {
        people: added,
        notes: plan.notes,
    })
}

fn stage_crops(plan: &Plan, stage: &Path) -> Result<(), AddError> {
    for (name, faces) in &plan.people {
        let dir = stage.join(name);
        std::fs::create_dir_all(&dir).map_err(|error| AddError::Io {
            path: dir.clone(),
            error,
        })?;
        for f in faces {
            let crop = crop_around(&f.photo, f.rect)?;
            let at = dir.join(&f.file);
            crop.save(&at).map_err(|e| AddError::Photo {
                path: at.clone(),
                why: e.to_string(),
            })?;
        }
    }
    Ok(())
}

/// The photo cut around `rect` (photo pixels), [`CONTEXT`] box sides on each side.
fn crop_around(photo: &Path, rect: [f32; 4]) -> Result<image::RgbImage, AddError> {
    let bad = |why: String| AddError::Photo {
        path: photo.to_path_buf(),
        why,
    };
    let img = preprocess::decode::decode(photo).map_err(|e| bad(e.to_string()))?;
    let s = img.scale.max(1e-6);
    let [x, y, w, h] = rect.map(|v| v / s);
    let (x0, y0) = ((x - CONTEXT * w).max(0.0), (y - CONTEXT * h).max(0.0));
    let x1 = (x + w + CONTEXT * w).min(img.width as f32);
    let y1 = (y + h + CONTEXT * h).min(img.height as f32);
    if x1 - x0 < 2.0 || y1 - y0 < 2.0 {
        return Err(bad(format!("the face's box {rect:?} lies outside it")));
    }
    let full = image::RgbImage::from_raw(img.width as u32, img.height as u32, img.data)
        .ok_or_else(|| bad("bad buffer".into()))?;
    Ok(image::imageops::crop_imm(
        &full,
        x0 as u32,
        y0 as u32,
        (x1 - x0) as u32,
        (y1 - y0) as u32,
    )
    .to_image())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A group folder as `--group-unknowns` writes it, its faces from `photo`.
    fn group(dir: &Path, folder: &str, group: &str, photo: &Path, faces: usize) {
        let g = dir.join(folder);
        std::fs::create_dir_all(&g).unwrap();
        let mut list = Vec::new();
        for k in 0..faces {
            let face = format!("face-{:02}.png", k + 1);
            std::fs::write(g.join(&face), b"png").unwrap();
            list.push(serde_json::json!({
                "face": face, "photo": photo, "box": [10.0 + k as f32, 10.0, 20.0, 20.0],
            }));
        }
        let rec = serde_json::json!({ "group": group, "faces": list });
        std::fs::write(g.join(GROUP_FILE), rec.to_string()).unwrap();
    }

    fn setup() -> (tempfile::TempDir, PathBuf, PathBuf, PathBuf) {
        let t = tempfile::tempdir().unwrap();
        let photo = t.path().join("party.png");
        image::RgbImage::from_pixel(64, 48, image::Rgb([200, 100, 50]))
            .save(&photo)
            .unwrap();
        let groups = t.path().join("groups");
        let data = t.path().join("data");
        std::fs::create_dir_all(data.join("Bob")).unwrap();
        std::fs::write(data.join("Bob/1.jpg"), b"x").unwrap();
        (t, photo, groups, data)
    }

    fn listing(dir: &Path) -> Vec<String> {
        let mut v: Vec<String> = walk(dir);
        v.sort();
        v
    }

    fn walk(dir: &Path) -> Vec<String> {
        let mut out = Vec::new();
        for e in std::fs::read_dir(dir).unwrap().flatten() {
            let p = e.path();
            if p.is_dir() {
                out.extend(walk(&p));
            } else {
                out.push(p.display().to_string());
            }
        }
        out
    }

    #[test]
    fn named_groups_are_added_and_unnamed_ones_left() {
        let (_t, photo, groups, data) = setup();
        group(&groups, "Ada", "unknown-001", &photo, 3);
        group(&groups, "unknown-002", "unknown-002", &photo, 2);
        group(&groups, "unknown-003", "unknown-003", &photo, 1);
        std::fs::remove_file(groups.join("Ada/face-02.png")).unwrap();
        let p = plan(&groups, &["unknown-003=Bob".into()], &data).unwrap();
        let added = apply(p, &data).unwrap();
        assert_eq!(
            added.people,
            [("Ada".to_string(), 2, true), ("Bob".to_string(), 1, false)]
        );
        assert!(
            added.notes.iter().any(|n| n.contains("face-02.png")),
            "{:?}",
            added.notes
        );
        assert!(
            added.notes.iter().any(|n| n.contains("unknown-002")),
            "{:?}",
            added.notes
        );
        assert_eq!(std::fs::read_dir(data.join("Ada")).unwrap().count(), 2);
        assert_eq!(std::fs::read_dir(data.join("Bob")).unwrap().count(), 2);
        let crop = image::open(
            std::fs::read_dir(data.join("Ada"))
                .unwrap()
                .next()
                .unwrap()
                .unwrap()
                .path(),
        )
        .unwrap();
        // A 20 px box with 20 px on each side, clipped to the 64x48 photo (faces 1 and 3
        // are at x = 10 and 12).
        assert!(
            [(50, 48), (52, 48)].contains(&(crop.width(), crop.height())),
            "{}x{}",
            crop.width(),
            crop.height()
        );
        // The same again: refused, nothing changed.
        let before = listing(&data);
        let e = plan(&groups, &["unknown-003=Bob".into()], &data).unwrap_err();
        assert!(matches!(e, AddError::AlreadyAdded { .. }), "{e}");
        assert_eq!(listing(&data), before);
    }

    #[test]
    fn bad_names_empty_groups_and_missing_photos_change_nothing() {
        let (_t, photo, groups, data) = setup();
        group(&groups, "unknown-001", "unknown-001", &photo, 1);
        group(&groups, "Eve", "unknown-002", &photo, 1);
        let before = listing(&data);
        for (names, want) in [
            (vec!["unknown-001=a/b".to_string()], "path separator"),
            (vec!["unknown-001=..".to_string()], "hidden"),
            (vec!["unknown-001".to_string()], "GROUP=NAME"),
            (vec!["unknown-009=Zed".to_string()], "no such group"),
        ] {
            let e = plan(&groups, &names, &data).unwrap_err().to_string();
            assert!(e.contains(want), "{names:?}: {e}");
        }
        std::fs::remove_file(groups.join("Eve/face-01.png")).unwrap();
        let e = plan(&groups, &[], &data).unwrap_err().to_string();
        assert!(e.contains("no faces left"), "{e}");
        // A photo gone since: the crops are staged first, so nothing lands.
        group(&groups, "Eve", "unknown-002", &photo, 1);
        group(&groups, "Zoe", "unknown-004", &groups.join("gone.jpg"), 1);
        let p = plan(&groups, &[], &data).unwrap();
        let e = apply(p, &data).unwrap_err().to_string();
        assert!(e.contains("gone.jpg"), "{e}");
        assert_eq!(listing(&data), before);
        assert!(plan(&data.join("Bob"), &[], &data).is_err());
    }
}
