//! `Faces`: aligned face crops with labels and splits, made by `preprocess`.

use crate::io::{write_artifact, Loaded, OutTensor};
use crate::{Header, Provenance, Result, Split};
use std::path::Path;

pub const FACES_SCHEMA: &str = "faces";
const VERSION: u32 = 1;

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
    pub chips: Option<Vec<u8>>,
}

/// Side of dlib's face chips.
pub const CHIP_SIZE: usize = 150;

impl FaceGeometry {
    /// Pixels of chip `i`, HWC RGB.
    pub fn chip(&self, i: usize) -> Option<&[u8]> {
        let s = CHIP_SIZE * CHIP_SIZE * 3;
        self.chips.as_ref().and_then(|c| c.get(i * s..(i + 1) * s))
    }
}

/// A set of face images: `images` u8 [N,H,W,3] RGB, `labels` u32 [N], `splits` u8 [N].
#[derive(Debug, Clone, PartialEq)]
pub struct Faces {
    pub height: usize,
    pub width: usize,
    pub images: Vec<u8>,
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
}

impl Faces {
    pub fn len(&self) -> usize {
        self.labels.len()
    }
    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }
    /// Pixels of image `i`, HWC RGB.
    pub fn image(&self, i: usize) -> &[u8] {
        let s = self.height * self.width * 3;
        &self.images[i * s..(i + 1) * s]
    }
    /// Indices of the images in `split`, in file order.
    pub fn indices(&self, split: Split) -> Vec<usize> {
        (0..self.len())
            .filter(|&i| self.splits[i] == split)
            .collect()
    }

    pub fn write(&self, path: &Path) -> Result<()> {
        let n = self.len();
        let mut tensors = vec![
            OutTensor::u8(
                "images",
                vec![n, self.height, self.width, 3],
                self.images.clone(),
            ),
            OutTensor::u32("labels", vec![n], &self.labels),
            OutTensor::u8(
                "splits",
                vec![n],
                self.splits.iter().map(|s| *s as u8).collect(),
            ),
        ];
        if let Some(g) = &self.geometry {
            let boxes: Vec<f32> = g.boxes.iter().flatten().copied().collect();
            tensors.push(OutTensor::f32("boxes", vec![n, 4], &boxes));
            tensors.push(OutTensor::f32("landmarks", vec![n, 68, 2], &g.landmarks));
            tensors.push(OutTensor::f32("transforms", vec![n, 2, 3], &g.transforms));
            if let Some(chips) = &g.chips {
                if chips.len() != n * CHIP_SIZE * CHIP_SIZE * 3 {
                    return Err(crate::ArtifactError::Invalid {
                        path: path.to_path_buf(),
                        problem: format!("chips hold {} bytes for N = {n}", chips.len()),
                    });
                }
                tensors.push(OutTensor::u8(
                    "chips",
                    vec![n, CHIP_SIZE, CHIP_SIZE, 3],
                    chips.clone(),
                ));
            }
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
            return Err(crate::ArtifactError::Invalid {
                path: path.to_path_buf(),
                problem: problem.into(),
            });
        }
        let header = Header {
            schema: FACES_SCHEMA.into(),
            schema_version: VERSION,
            provenance: self.provenance.clone(),
            extra: serde_json::to_value(Extra {
                class_names: self.class_names.clone(),
                sources: self.sources.clone(),
            })
            .expect("plain strings"),
        };
        write_artifact(path, &header, &tensors)
    }

    pub fn read(path: &Path) -> Result<Faces> {
        let l = Loaded::open(path, FACES_SCHEMA, VERSION)?;
        let (shape, images) = l.u8("images", Some(4))?;
        let n = shape[0];
        if shape[3] != 3 {
            return Err(l.bad("images", format!("shape {shape:?}, expected [N,H,W,3]")));
        }
        let (ls, labels) = l.u32("labels", Some(1))?;
        l.expect_n("labels", &ls, n)?;
        let (ss, splits_raw) = l.u8("splits", Some(1))?;
        l.expect_n("splits", &ss, n)?;
        let splits = splits_raw
            .iter()
            .map(|&v| Split::from_u8(v).ok_or_else(|| l.bad("splits", format!("value {v}"))))
            .collect::<Result<Vec<_>>>()?;
        let extra: Extra = l.extra()?;
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
        let geometry = if l.has("boxes") {
            let (bs, boxes) = l.f32("boxes", Some(2))?;
            l.expect_n("boxes", &bs, n)?;
            let (lms, landmarks) = l.f32("landmarks", Some(3))?;
            l.expect_n("landmarks", &lms, n)?;
            let (ts, transforms) = l.f32("transforms", Some(3))?;
            l.expect_n("transforms", &ts, n)?;
            if bs[1] != 4 || lms[1..] != [68, 2] || ts[1..] != [2, 3] {
                return Err(l.bad("boxes", "geometry tensors have unexpected shapes"));
            }
            let chips = if l.has("chips") {
                let (cs, chips) = l.u8("chips", Some(4))?;
                l.expect_n("chips", &cs, n)?;
                if cs[1..] != [CHIP_SIZE, CHIP_SIZE, 3] {
                    return Err(l.bad("chips", format!("shape {cs:?}, expected [N,150,150,3]")));
                }
                Some(chips)
            } else {
                None
            };
            Some(FaceGeometry {
                boxes: boxes
                    .chunks_exact(4)
                    .map(|c| [c[0], c[1], c[2], c[3]])
                    .collect(),
                landmarks,
                transforms,
                chips,
            })
        } else {
            None
        };
        Ok(Faces {
            height: shape[1],
            width: shape[2],
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
