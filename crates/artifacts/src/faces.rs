//! `Faces`: aligned face crops with labels and splits, made by `preprocess`.

use crate::io::{write_artifact, Loaded, OutTensor};
use crate::pixels::Pixels;
use crate::shards::{OpenShard, RowWriter, ShardRef, WholeTensor, Written};
use crate::{ArtifactError, Header, Provenance, Result, Split};
use std::borrow::Cow;
use std::path::Path;
use std::sync::Arc;

pub const FACES_SCHEMA: &str = "faces";
const VERSION: u32 = 1;
/// A shard of a sharded faces artifact: the pixels and geometry of some faces, without
/// labels and splits (those need every shard; the index holds them).
pub const FACES_SHARD_SCHEMA: &str = "faces-shard";

/// Where each face came from in its source photo (absent for `--as-is` inputs).
#[derive(Debug, Clone, PartialEq)]
pub struct FaceGeometry {
    /// Detection boxes `[x, y, w, h]` in source pixels, [N,4].
    pub boxes: Vec<[f32; 4]>,
    /// 68 source landmarks `(x, y)` per face, [N,68,2] flattened.
    pub landmarks: Vec<f32>,
    /// Source -> output affine transform `[a, b, tx; c, d, ty]` per face, [N,2,3] flattened.
    pub transforms: Vec<f32>,
    /// dlib's face chips (`get_face_chip_details(shape, 150, 0.25)` cut from the photo with
    /// our 68 landmarks), u8 [N,150,150,3] RGB: the input of dlib's face descriptor, which
    /// expects dlib's alignment rather than the study's masked crop. Absent in older files.
    pub chips: Option<Pixels>,
}

/// Side of dlib's face chips.
pub const CHIP_SIZE: usize = 150;

impl FaceGeometry {
    /// Pixels of chip `i`, HWC RGB.
    pub fn chip(&self, i: usize) -> Option<Cow<'_, [u8]>> {
        let s = CHIP_SIZE * CHIP_SIZE * 3;
        self.chips
            .as_ref()
            .filter(|c| (i + 1) * s <= c.len())
            .map(|c| c.slice(i * s, s))
    }
}

/// A set of face images: `images` u8 [N,H,W,3] RGB, `labels` u32 [N], `splits` u8 [N].
#[derive(Debug, Clone, PartialEq)]
pub struct Faces {
    pub height: usize,
    pub width: usize,
    /// In memory, or read from the shard files a row at a time (see [`Pixels`]).
    pub images: Pixels,
    pub labels: Vec<u32>,
    pub splits: Vec<Split>,
    pub class_names: Vec<String>,
    /// Source paths relative to the input folder (`<class>/<file>`), one per image.
    pub sources: Vec<String>,
    pub geometry: Option<FaceGeometry>,
    pub provenance: Provenance,
}

#[derive(serde::Serialize, serde::Deserialize)]
struct Extra {
    class_names: Vec<String>,
    sources: Vec<String>,
    /// Present in a sharded artifact's index: the pixels are in these files.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    shards: Option<Vec<ShardRef>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    size: Option<[usize; 2]>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    chips: bool,
}

impl Faces {
    pub fn len(&self) -> usize {
        self.labels.len()
    }
    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }
    /// Pixels of image `i`, HWC RGB (read from its shard when the artifact is sharded).
    pub fn image(&self, i: usize) -> Cow<'_, [u8]> {
        let s = self.height * self.width * 3;
        self.images.slice(i * s, s)
    }

    /// The shards of the sharded artifact at `path` (`None` for a single file), from its
    /// header alone.
    pub fn shards_of(path: &Path) -> Result<Option<Vec<ShardRef>>> {
        let h = crate::read_header(path)?;
        if h.schema != FACES_SCHEMA {
            return Err(ArtifactError::WrongSchema {
                path: path.to_path_buf(),
                expected: FACES_SCHEMA.into(),
                found: h.schema,
            });
        }
        let extra: Extra = serde_json::from_value(h.extra).map_err(|e| ArtifactError::BadMeta {
            path: path.to_path_buf(),
            problem: e.to_string(),
        })?;
        Ok(extra.shards)
    }

    /// Faces `start..end` as their own set (pixels shared, not read): one shard's rows.
    pub fn rows(&self, start: usize, end: usize) -> Faces {
        let px = self.height * self.width * 3;
        let chip = CHIP_SIZE * CHIP_SIZE * 3;
        Faces {
            height: self.height,
            width: self.width,
            images: self.images.sub(start * px, (end - start) * px),
            labels: self.labels[start..end].to_vec(),
            splits: self.splits[start..end].to_vec(),
            class_names: self.class_names.clone(),
            sources: self.sources[start..end].to_vec(),
            geometry: self.geometry.as_ref().map(|g| FaceGeometry {
                boxes: g.boxes[start..end].to_vec(),
                landmarks: g.landmarks[start * 136..end * 136].to_vec(),
                transforms: g.transforms[start * 6..end * 6].to_vec(),
                chips: g
                    .chips
                    .as_ref()
                    .map(|c| c.sub(start * chip, (end - start) * chip)),
            }),
            provenance: self.provenance.clone(),
        }
    }
    /// Indices of the images in `split`, in file order.
    pub fn indices(&self, split: Split) -> Vec<usize> {
        (0..self.len())
            .filter(|&i| self.splits[i] == split)
            .collect()
    }

    /// Writes the single-file form: every tensor, pixels included, in `path`.
    pub fn write(&self, path: &Path) -> Result<()> {
        let n = self.len();
        let mut tensors = vec![OutTensor::u8(
            "images",
            vec![n, self.height, self.width, 3],
            self.images.to_vec(),
        )];
        if let Some(chips) = self.geometry.as_ref().and_then(|g| g.chips.as_ref()) {
            if chips.len() != n * CHIP_SIZE * CHIP_SIZE * 3 {
                return Err(ArtifactError::Invalid {
                    path: path.to_path_buf(),
                    problem: format!("chips hold {} bytes for N = {n}", chips.len()),
                });
            }
            tensors.push(OutTensor::u8(
                "chips",
                vec![n, CHIP_SIZE, CHIP_SIZE, 3],
                chips.to_vec(),
            ));
        }
        self.write_with(path, tensors, None)
    }

    /// Writes the index of a sharded artifact: the per-face rows (labels, splits,
    /// sources, geometry) and `shards`, whose files hold the pixels in this row order.
    pub fn write_index(&self, path: &Path, shards: Vec<ShardRef>) -> Result<()> {
        let rows: usize = shards.iter().map(|s| s.rows).sum();
        if rows != self.len() {
            return Err(ArtifactError::Invalid {
                path: path.to_path_buf(),
                problem: format!("the shards hold {rows} faces, the index {}", self.len()),
            });
        }
        self.write_with(path, Vec::new(), Some(shards))
    }

    fn write_with(
        &self,
        path: &Path,
        mut tensors: Vec<OutTensor>,
        shards: Option<Vec<ShardRef>>,
    ) -> Result<()> {
        let n = self.len();
        tensors.push(OutTensor::u32("labels", vec![n], &self.labels));
        tensors.push(OutTensor::u8(
            "splits",
            vec![n],
            self.splits.iter().map(|s| *s as u8).collect(),
        ));
        if let Some(g) = &self.geometry {
            let boxes: Vec<f32> = g.boxes.iter().flatten().copied().collect();
            tensors.push(OutTensor::f32("boxes", vec![n, 4], &boxes));
            tensors.push(OutTensor::f32("landmarks", vec![n, 68, 2], &g.landmarks));
            tensors.push(OutTensor::f32("transforms", vec![n, 2, 3], &g.transforms));
        }
        let problem = if self.sources.len() != n || self.splits.len() != n {
            Some("sources/splits/labels lengths disagree")
        } else if self
            .labels
            .iter()
            .any(|&l| l as usize >= self.class_names.len())
        {
            Some("a label is out of range of class_names")
        } else {
            None
        };
        if let Some(problem) = problem {
            return Err(ArtifactError::Invalid {
                path: path.to_path_buf(),
                problem: problem.into(),
            });
        }
        let sharded = shards.is_some();
        let header = Header {
            schema: FACES_SCHEMA.into(),
            schema_version: VERSION,
            provenance: self.provenance.clone(),
            extra: serde_json::to_value(Extra {
                class_names: self.class_names.clone(),
                sources: self.sources.clone(),
                shards,
                size: sharded.then_some([self.height, self.width]),
                chips: sharded && self.geometry.as_ref().is_some_and(|g| g.chips.is_some()),
            })
            .expect("plain strings"),
        };
        write_artifact(path, &header, &tensors)
    }

    /// Reads a faces artifact: a single file (pixels loaded), or a sharded one's index
    /// (each shard checked, its pixels left in the file and read as asked for).
    pub fn read(path: &Path) -> Result<Faces> {
        let l = Loaded::open(path, FACES_SCHEMA, VERSION)?;
        let extra: Extra = l.extra()?;
        // N: the images' rows in a single file (the pixels are the data), else the labels'.
        let single = match &extra.shards {
            None => {
                let (shape, images) = l.u8("images", Some(4))?;
                if shape[3] != 3 {
                    return Err(l.bad("images", format!("shape {shape:?}, expected [N,H,W,3]")));
                }
                Some((shape, images))
            }
            Some(_) => None,
        };
        let (ls, labels) = l.u32("labels", Some(1))?;
        let n = single.as_ref().map(|(s, _)| s[0]).unwrap_or(ls[0]);
        l.expect_n("labels", &ls, n)?;
        let (ss, splits_raw) = l.u8("splits", Some(1))?;
        l.expect_n("splits", &ss, n)?;
        let splits = splits_raw
            .iter()
            .map(|&v| Split::from_u8(v).ok_or_else(|| l.bad("splits", format!("value {v}"))))
            .collect::<Result<Vec<_>>>()?;
        if extra.sources.len() != n {
            return Err(l.meta_err(format!("{} sources for N = {n}", extra.sources.len())));
        }
        if let Some(&bad) = labels
            .iter()
            .find(|&&v| v as usize >= extra.class_names.len())
        {
            return Err(l.bad(
                "labels",
                format!("label {bad} but only {} classes", extra.class_names.len()),
            ));
        }
        let (height, width, images, chips) = match (single, &extra.shards) {
            (Some((shape, images)), _) => {
                let chips = if l.has("chips") {
                    let (cs, chips) = l.u8("chips", Some(4))?;
                    l.expect_n("chips", &cs, n)?;
                    if cs[1..] != [CHIP_SIZE, CHIP_SIZE, 3] {
                        return Err(l.bad("chips", format!("shape {cs:?}, expected [N,150,150,3]")));
                    }
                    Some(Pixels::from(chips))
                } else {
                    None
                };
                (shape[1], shape[2], Pixels::from(images), chips)
            }
            (None, shards) => {
                let shards = shards.as_deref().unwrap_or_default();
                let [h, w] = extra
                    .size
                    .ok_or_else(|| l.meta_err("a sharded index without `size`"))?;
                let (images, chips) = open_shards(path, shards, [h, w], extra.chips, n)?;
                (h, w, images, chips)
            }
        };
        let geometry = if l.has("boxes") {
            Some(FaceGeometry {
                chips,
                ..read_geometry(&l, n)?
            })
        } else {
            None
        };
        Ok(Faces {
            height,
            width,
            images,
            labels,
            splits,
            class_names: extra.class_names,
            sources: extra.sources,
            geometry,
            provenance: l.header.provenance,
        })
    }
}

/// Boxes, landmarks and transforms of `n` faces (no chips), checked for shape.
fn read_geometry(l: &Loaded, n: usize) -> Result<FaceGeometry> {
    let (bs, boxes) = l.f32("boxes", Some(2))?;
    l.expect_n("boxes", &bs, n)?;
    let (lms, landmarks) = l.f32("landmarks", Some(3))?;
    l.expect_n("landmarks", &lms, n)?;
    let (ts, transforms) = l.f32("transforms", Some(3))?;
    l.expect_n("transforms", &ts, n)?;
    if bs[1] != 4 || lms[1..] != [68, 2] || ts[1..] != [2, 3] {
        return Err(l.bad("boxes", "geometry tensors have unexpected shapes"));
    }
    Ok(FaceGeometry {
        boxes: boxes
            .chunks_exact(4)
            .map(|c| [c[0], c[1], c[2], c[3]])
            .collect(),
        landmarks,
        transforms,
        chips: None,
    })
}

/// Opens every shard an index names; their pixels, in index order, as stored `Pixels`.
fn open_shards(
    index: &Path,
    shards: &[ShardRef],
    [h, w]: [usize; 2],
    with_chips: bool,
    n: usize,
) -> Result<(Pixels, Option<Pixels>)> {
    let rows: usize = shards.iter().map(|s| s.rows).sum();
    if rows != n {
        return Err(ArtifactError::BadMeta {
            path: index.to_path_buf(),
            problem: format!("the shards hold {rows} faces, the index {n}"),
        });
    }
    let mut images = Pixels::default();
    let mut chips = with_chips.then(Pixels::default);
    for r in shards {
        let s = OpenShard::open(index, r, FACES_SHARD_SCHEMA)?;
        let shown = Arc::new(s.path.clone());
        let (shape, at, len) = s.u8_rows(index, "images", r.rows)?;
        if shape[1..] != [h, w, 3] {
            return Err(ArtifactError::BadShard {
                index: index.to_path_buf(),
                shard: s.path.clone(),
                problem: format!("images {shape:?}, the index says {h}x{w}"),
            });
        }
        images.push_stored(s.file.clone(), shown.clone(), at, len);
        if let Some(c) = &mut chips {
            let (_, at, len) = s.u8_rows(index, "chips", r.rows)?;
            c.push_stored(s.file.clone(), shown, at, len);
        }
    }
    Ok((images, chips))
}

/// One face as a shard writer takes it.
pub struct ShardFace<'a> {
    pub image: &'a [u8],
    pub chip: Option<&'a [u8]>,
    pub source: String,
    pub rect: [f32; 4],
    pub landmarks: &'a [f32],
    pub transform: &'a [f32],
}

/// Writes one faces shard with bounded memory: pixels are spooled row by row.
pub struct FaceShardWriter {
    path: std::path::PathBuf,
    rows: RowWriter,
    size: [usize; 2],
    chips: bool,
    sources: Vec<String>,
    boxes: Vec<f32>,
    landmarks: Vec<f32>,
    transforms: Vec<f32>,
}

impl FaceShardWriter {
    pub fn create(path: &Path, [h, w]: [usize; 2], chips: bool) -> Result<Self> {
        let mut row_tensors = vec![("images", vec![h, w, 3])];
        if chips {
            row_tensors.push(("chips", vec![CHIP_SIZE, CHIP_SIZE, 3]));
        }
        Ok(FaceShardWriter {
            path: path.to_path_buf(),
            rows: RowWriter::create(path, &row_tensors)?,
            size: [h, w],
            chips,
            sources: Vec::new(),
            boxes: Vec::new(),
            landmarks: Vec::new(),
            transforms: Vec::new(),
        })
    }

    pub fn push(&mut self, f: ShardFace<'_>) -> Result<()> {
        let chip = f.chip.filter(|_| self.chips);
        if self.chips != chip.is_some() || f.landmarks.len() != 136 || f.transform.len() != 6 {
            return Err(ArtifactError::Invalid {
                path: self.path.clone(),
                problem: "a shard face without its chip or geometry".into(),
            });
        }
        match chip {
            Some(c) => self.rows.push(&[f.image, c])?,
            None => self.rows.push(&[f.image])?,
        }
        self.sources.push(f.source);
        self.boxes.extend(f.rect);
        self.landmarks.extend_from_slice(f.landmarks);
        self.transforms.extend_from_slice(f.transform);
        Ok(())
    }

    pub fn len(&self) -> usize {
        self.sources.len()
    }
    pub fn is_empty(&self) -> bool {
        self.sources.is_empty()
    }

    /// Writes the shard; `extra` joins the header beside the sources (the producer's
    /// per-face notes).
    pub fn finish(self, provenance: Provenance, mut extra: serde_json::Value) -> Result<Written> {
        let n = self.sources.len();
        extra["sources"] = serde_json::to_value(&self.sources).expect("strings");
        extra["size"] = serde_json::to_value(self.size).expect("numbers");
        let header = Header {
            schema: FACES_SHARD_SCHEMA.into(),
            schema_version: VERSION,
            provenance,
            extra,
        };
        self.rows.finish(
            &header,
            vec![
                WholeTensor::f32("boxes", vec![n, 4], &self.boxes),
                WholeTensor::f32("landmarks", vec![n, 68, 2], &self.landmarks),
                WholeTensor::f32("transforms", vec![n, 2, 3], &self.transforms),
            ],
        )
    }
}

/// A faces shard read back: what the merge needs to index it.
#[derive(Debug)]
pub struct FaceShard {
    pub sources: Vec<String>,
    pub geometry: FaceGeometry,
    pub header: Header,
}

impl FaceShard {
    /// Reads a shard's per-face rows and header (not its pixels), checking it against `r`.
    pub fn read(index: &Path, r: &ShardRef) -> Result<FaceShard> {
        let s = OpenShard::open(index, r, FACES_SHARD_SCHEMA)?;
        // Only the small tensors are read: `Loaded` reads a tensor when asked for it.
        let l = Loaded::open(&s.path, FACES_SHARD_SCHEMA, VERSION)?;
        let sources: Vec<String> = l
            .header
            .extra
            .get("sources")
            .and_then(|v| serde_json::from_value(v.clone()).ok())
            .ok_or_else(|| l.meta_err("no `sources`"))?;
        let n = sources.len();
        if n != r.rows {
            return Err(l.meta_err(format!("{n} faces, the index says {}", r.rows)));
        }
        Ok(FaceShard {
            sources,
            geometry: read_geometry(&l, n)?,
            header: l.header,
        })
    }
}
