//! `Bottlenecks`: the teacher's features for each face, in the order of a `Faces` file.

use crate::io::{write_artifact, Loaded, OutTensor};
use crate::{Header, Provenance, Result};
use std::path::Path;

pub const BOTTLENECKS_SCHEMA: &str = "bottlenecks";
const VERSION: u32 = 1;

/// `features` f32 [N,D].
#[derive(Debug, Clone, PartialEq)]
pub struct Bottlenecks {
    pub dim: usize,
    pub features: Vec<f32>,
    /// Teacher identity: hub repo id and revision, or a file digest.
    pub teacher: String,
    /// Which layer was pooled (`pool` = the 2048-d average pool).
    pub layer: String,
    /// `sha256:` digest of the `Faces` file these rows belong to.
    pub faces_digest: String,
    pub provenance: Provenance,
}

#[derive(serde::Serialize, serde::Deserialize)]
struct Extra {
    teacher: String,
    layer: String,
    faces_digest: String,
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
            })
            .expect("plain strings"),
        };
        let t = OutTensor::f32("features", vec![self.len(), self.dim], &self.features);
        write_artifact(path, &header, &[t])
    }

    pub fn read(path: &Path) -> Result<Bottlenecks> {
        let l = Loaded::open(path, BOTTLENECKS_SCHEMA, VERSION)?;
        let (shape, features) = l.f32("features", Some(2))?;
        if let Some(i) = features.iter().position(|v| !v.is_finite()) {
            return Err(l.bad("features", format!("non-finite value at flat index {i}")));
        }
        let extra: Extra = l.extra()?;
        Ok(Bottlenecks {
            dim: shape[1],
            features,
            teacher: extra.teacher,
            layer: extra.layer,
            faces_digest: extra.faces_digest,
            provenance: l.header.provenance,
        })
    }
}
