//! `Bottlenecks`: the teacher's features for each face, in the order of a `Faces` file.

use crate::io::{write_artifact, Loaded, OutTensor};
use crate::{Header, Provenance, Result};
use std::path::Path;

pub const BOTTLENECKS_SCHEMA: &str = "bottlenecks";
const VERSION: u32 = 1;

/// `features` f32 [N,D], and optionally `features_mirrored` f32 [N,D].
#[derive(Debug, Clone, PartialEq)]
pub struct Bottlenecks {
    pub dim: usize,
    pub features: Vec<f32>,
    /// The teacher's features of each face flipped left-right. Why: a flipped training
    /// image is another picture to the teacher (cosine 0.43 to the unflipped target, in
    /// standardised Mixed_6c grid features of msceleb-samples), so `train` takes its target
    /// from here when it flips an image.
    pub mirrored: Option<Vec<f32>>,
    /// The teacher's outputs on K jittered views of each face (`--views K`).
    pub views: Option<ViewBank>,
    /// Teacher identity: hub repo id and revision, or a file digest.
    pub teacher: String,
    /// Which layer was pooled (`pool` = the 2048-d average pool).
    pub layer: String,
    /// `sha256:` digest of the `Faces` file these rows belong to.
    pub faces_digest: String,
    pub provenance: Provenance,
}

/// The teacher's outputs on K views of every face (consistent distillation: the student
/// trains on a view and is pulled towards the teacher's output on that same view).
#[derive(Debug, Clone, PartialEq)]
pub struct ViewBank {
    pub k: usize,
    /// f32 [N,K,D] (`view_features`).
    pub features: Vec<f32>,
    /// f32 [N,K,P] (`view_params`): each view's jitter, as `preprocess::views` writes it.
    pub params: Vec<f32>,
    pub params_width: usize,
    /// How the views were drawn (seed, ranges, the photos' folder), so `train` cuts the
    /// same pixels.
    pub recipe: serde_json::Value,
}

impl ViewBank {
    /// Face `i`'s view `v` teacher row.
    pub fn row(&self, dim: usize, i: usize, v: usize) -> &[f32] {
        let o = (i * self.k + v) * dim;
        &self.features[o..o + dim]
    }
    /// Face `i`'s view `v` parameters.
    pub fn params_of(&self, i: usize, v: usize) -> &[f32] {
        let o = (i * self.k + v) * self.params_width;
        &self.params[o..o + self.params_width]
    }
}

#[derive(serde::Serialize, serde::Deserialize)]
struct Extra {
    teacher: String,
    layer: String,
    faces_digest: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    views: Option<serde_json::Value>,
}

impl Bottlenecks {
    pub fn len(&self) -> usize {
        self.features.len().checked_div(self.dim).unwrap_or(0)
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
    pub fn row(&self, i: usize) -> &[f32] {
        &self.features[i * self.dim..(i + 1) * self.dim]
    }

    pub fn write(&self, path: &Path) -> Result<()> {
        if self.dim == 0 || !self.features.len().is_multiple_of(self.dim) {
            return Err(crate::ArtifactError::Invalid {
                path: path.to_path_buf(),
                problem: format!(
                    "{} values are not rows of {}",
                    self.features.len(),
                    self.dim
                ),
            });
        }
        let header = Header {
            schema: BOTTLENECKS_SCHEMA.into(),
            schema_version: VERSION,
            provenance: self.provenance.clone(),
            extra: serde_json::to_value(Extra {
                teacher: self.teacher.clone(),
                layer: self.layer.clone(),
                faces_digest: self.faces_digest.clone(),
                views: self.views.as_ref().map(|v| v.recipe.clone()),
            })
            .expect("plain strings"),
        };
        let mut tensors = vec![OutTensor::f32(
            "features",
            vec![self.len(), self.dim],
            &self.features,
        )];
        if let Some(m) = &self.mirrored {
            if m.len() != self.features.len() {
                return Err(crate::ArtifactError::Invalid {
                    path: path.to_path_buf(),
                    problem: format!(
                        "{} mirrored values for {} features",
                        m.len(),
                        self.features.len()
                    ),
                });
            }
            tensors.push(OutTensor::f32(
                "features_mirrored",
                vec![self.len(), self.dim],
                m,
            ));
        }
        if let Some(v) = &self.views {
            let n = self.len();
            if v.k == 0
                || v.features.len() != n * v.k * self.dim
                || v.params.len() != n * v.k * v.params_width
            {
                return Err(crate::ArtifactError::Invalid {
                    path: path.to_path_buf(),
                    problem: format!(
                        "{} view values and {} view parameters are not {n} faces x {} views",
                        v.features.len(),
                        v.params.len(),
                        v.k
                    ),
                });
            }
            tensors.push(OutTensor::f32(
                "view_features",
                vec![n, v.k, self.dim],
                &v.features,
            ));
            tensors.push(OutTensor::f32(
                "view_params",
                vec![n, v.k, v.params_width],
                &v.params,
            ));
        }
        write_artifact(path, &header, &tensors)
    }

    pub fn read(path: &Path) -> Result<Bottlenecks> {
        let l = Loaded::open(path, BOTTLENECKS_SCHEMA, VERSION)?;
        let (shape, features) = finite_rows(&l, "features")?;
        let mirrored = if l.has("features_mirrored") {
            let (m_shape, m) = finite_rows(&l, "features_mirrored")?;
            if m_shape != shape {
                return Err(l.bad(
                    "features_mirrored",
                    format!("shape {m_shape:?}, but features are {shape:?}"),
                ));
            }
            Some(m)
        } else {
            None
        };
        let extra: Extra = l.extra()?;
        let views = if l.has("view_features") {
            let (vs, features) = l.f32("view_features", Some(3))?;
            if vs[0] != shape[0] || vs[2] != shape[1] || vs[1] == 0 {
                return Err(l.bad(
                    "view_features",
                    format!("shape {vs:?}, but features are {shape:?}"),
                ));
            }
            if let Some(i) = features.iter().position(|v| !v.is_finite()) {
                return Err(l.bad(
                    "view_features",
                    format!("non-finite value at flat index {i}"),
                ));
            }
            let (ps, params) = l.f32("view_params", Some(3))?;
            if ps[..2] != vs[..2] {
                return Err(l.bad(
                    "view_params",
                    format!("shape {ps:?}, but view_features are {vs:?}"),
                ));
            }
            Some(ViewBank {
                k: vs[1],
                features,
                params,
                params_width: ps[2],
                recipe: extra.views.clone().unwrap_or(serde_json::Value::Null),
            })
        } else {
            None
        };
        Ok(Bottlenecks {
            views,
            dim: shape[1],
            features,
            mirrored,
            teacher: extra.teacher,
            layer: extra.layer,
            faces_digest: extra.faces_digest,
            provenance: l.header.provenance,
        })
    }
}

/// A rank-2 f32 tensor with only finite values (a NaN target would poison training).
fn finite_rows(l: &Loaded, name: &str) -> Result<(Vec<usize>, Vec<f32>)> {
    let (shape, values) = l.f32(name, Some(2))?;
    if let Some(i) = values.iter().position(|v| !v.is_finite()) {
        return Err(l.bad(name, format!("non-finite value at flat index {i}")));
    }
    Ok((shape, values))
}
