//! `Embeddings`: the student's bottleneck for every face, its predictions and t-SNE maps.

use crate::io::{write_artifact, Loaded, OutTensor};
use crate::{Header, Provenance, Result, Split};
use std::path::Path;

pub const EMBEDDINGS_SCHEMA: &str = "embeddings";
const VERSION: u32 = 1;

/// `features` f32 [N,D], `tsne` f32 [N,2], `labels`/`predictions` u32 [N], `splits` u8 [N],
/// and optionally `teacher_tsne` f32 [N,2].
#[derive(Debug, Clone, PartialEq)]
pub struct Embeddings {
    pub dim: usize,
    pub features: Vec<f32>,
    pub tsne: Vec<f32>,
    pub teacher_tsne: Option<Vec<f32>>,
    pub labels: Vec<u32>,
    pub predictions: Vec<u32>,
    pub splits: Vec<Split>,
    pub class_names: Vec<String>,
    pub sources: Vec<String>,
    /// KL divergence of the final t-SNE map (student, teacher).
    pub kl: Vec<f64>,
    pub provenance: Provenance,
}

#[derive(serde::Serialize, serde::Deserialize)]
struct Extra {
    class_names: Vec<String>,
    sources: Vec<String>,
    kl: Vec<f64>,
}

impl Embeddings {
    pub fn len(&self) -> usize {
        self.labels.len()
    }
    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }

    pub fn write(&self, path: &Path) -> Result<()> {
        let n = self.len();
        if self.dim == 0
            || self.features.len() != n * self.dim
            || self.tsne.len() != n * 2
            || self.predictions.len() != n
            || self.splits.len() != n
        {
            return Err(crate::ArtifactError::Invalid {
                path: path.to_path_buf(),
                problem: "tensor lengths disagree with N".into(),
            });
        }
        let mut tensors = vec![
            OutTensor::f32("features", vec![n, self.dim], &self.features),
            OutTensor::f32("tsne", vec![n, 2], &self.tsne),
            OutTensor::u32("labels", vec![n], &self.labels),
            OutTensor::u32("predictions", vec![n], &self.predictions),
            OutTensor::u8(
                "splits",
                vec![n],
                self.splits.iter().map(|s| *s as u8).collect(),
            ),
        ];
        if let Some(t) = &self.teacher_tsne {
            tensors.push(OutTensor::f32("teacher_tsne", vec![n, 2], t));
        }
        let header = Header {
            schema: EMBEDDINGS_SCHEMA.into(),
            schema_version: VERSION,
            provenance: self.provenance.clone(),
            extra: serde_json::to_value(Extra {
                class_names: self.class_names.clone(),
                sources: self.sources.clone(),
                kl: self.kl.clone(),
            })
            .expect("plain values"),
        };
        write_artifact(path, &header, &tensors)
    }

    pub fn read(path: &Path) -> Result<Embeddings> {
        let l = Loaded::open(path, EMBEDDINGS_SCHEMA, VERSION)?;
        let (fs, features) = l.f32("features", Some(2))?;
        let n = fs[0];
        let (ts, tsne) = l.f32("tsne", Some(2))?;
        l.expect_n("tsne", &ts, n)?;
        let (ls, labels) = l.u32("labels", Some(1))?;
        l.expect_n("labels", &ls, n)?;
        let (ps, predictions) = l.u32("predictions", Some(1))?;
        l.expect_n("predictions", &ps, n)?;
        let (ss, splits) = l.u8("splits", Some(1))?;
        l.expect_n("splits", &ss, n)?;
        let splits = splits
            .iter()
            .map(|&v| Split::from_u8(v).ok_or_else(|| l.bad("splits", format!("value {v}"))))
            .collect::<Result<Vec<_>>>()?;
        let teacher_tsne = if l.has("teacher_tsne") {
            let (s, t) = l.f32("teacher_tsne", Some(2))?;
            l.expect_n("teacher_tsne", &s, n)?;
            Some(t)
        } else {
            None
        };
        let extra: Extra = l.extra()?;
        if extra.sources.len() != n {
            return Err(l.meta_err(format!("{} sources for N = {n}", extra.sources.len())));
        }
        Ok(Embeddings {
            dim: fs[1],
            features,
            tsne,
            teacher_tsne,
            labels,
            predictions,
            splits,
            class_names: extra.class_names,
            sources: extra.sources,
            kl: extra.kl,
            provenance: l.header.provenance,
        })
    }
}
