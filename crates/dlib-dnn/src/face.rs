//! dlib's face descriptor: the ResNet of dlib's `examples/dnn_face_recognition_ex.cpp`
//! (`anet_type`), 150x150 RGB chip in, 128-d descriptor out, same person below 0.6.

use crate::dnn::{Input, Layer, Loss, Net};
use crate::graph::{input_tensor, normalise_rgb, Graph, Kernels, Wire};
use crate::{Error, NetworkError};
use candle_core::{DType, Device, Tensor};
use std::path::Path;

/// The descriptor's width.
pub const DESCRIPTOR_DIM: usize = 128;

/// The layer kinds of `anet_type`, input side first, as dlib serializes them, with the
/// wires of its residual blocks: `ares` = relu(add_prev1(block(tag1(x)))),
/// `ares_down` = relu(add_prev2(avg_pool2(skip1(tag2(block_s2(tag1(x))))))).
pub fn architecture() -> (Vec<&'static str>, Vec<Wire>) {
    let mut kinds = vec!["con", "affine", "relu", "max_pool"];
    let mut wires = Vec::new();
    let block = |k: &mut Vec<&'static str>| k.extend(["con", "affine", "relu", "con", "affine"]);
    let ares = |k: &mut Vec<&'static str>, w: &mut Vec<Wire>| {
        k.push("tag/skip");
        block(k);
        k.extend(["add_prev", "relu"]);
        w.extend([Wire::Tag(1), Wire::AddPrev(1)]);
    };
    let ares_down = |k: &mut Vec<&'static str>, w: &mut Vec<Wire>| {
        k.push("tag/skip");
        block(k);
        k.extend(["tag/skip", "tag/skip", "avg_pool", "add_prev", "relu"]);
        w.extend([Wire::Tag(1), Wire::Tag(2), Wire::Skip(1), Wire::AddPrev(2)]);
    };
    // alevel4 .. alevel0 (dlib lists them output side first).
    for _ in 0..3 {
        ares(&mut kinds, &mut wires);
    }
    ares_down(&mut kinds, &mut wires);
    for _ in 0..3 {
        ares(&mut kinds, &mut wires);
    }
    ares_down(&mut kinds, &mut wires);
    for _ in 0..2 {
        ares(&mut kinds, &mut wires);
    }
    ares_down(&mut kinds, &mut wires);
    for _ in 0..2 {
        ares(&mut kinds, &mut wires);
    }
    ares_down(&mut kinds, &mut wires);
    kinds.extend(["avg_pool", "fc"]);
    (kinds, wires)
}

/// The face descriptor network, ready to run.
pub struct FaceDescriptor {
    graph: Graph,
    avg: [f32; 3],
    /// dlib's same-person distance from the file's loss layer (0.6).
    pub dist_thresh: f32,
}

impl FaceDescriptor {
    /// Checks that `net` is dlib's face descriptor and builds it.
    pub fn from_net(
        net: &Net,
        kernels: Kernels,
        device: &Device,
        dtype: DType,
    ) -> Result<FaceDescriptor, NetworkError> {
        let Input::RgbImageSized {
            avg,
            nr: 150,
            nc: 150,
        } = net.input
        else {
            return Err(NetworkError::Input {
                found: format!("{:?}", net.input),
                expected: "input_rgb_image_sized<150>",
            });
        };
        let Loss::Metric { dist_thresh, .. } = net.loss else {
            return Err(NetworkError::Loss("loss_metric"));
        };
        let (kinds, wires) = architecture();
        let found = net.kinds();
        if found != kinds {
            let at = found
                .iter()
                .zip(&kinds)
                .position(|(a, b)| a != b)
                .unwrap_or(found.len().min(kinds.len()));
            return Err(NetworkError::Architecture {
                net: "dlib's face descriptor ResNet",
                detail: format!(
                    "layer {at} is {}, expected {} ({} layers, expected {})",
                    found.get(at).unwrap_or(&"the end"),
                    kinds.get(at).unwrap_or(&"the end"),
                    found.len(),
                    kinds.len()
                ),
            });
        }
        match net.layers.last() {
            Some(Layer::Fc(f)) if f.outputs == DESCRIPTOR_DIM => {}
            _ => {
                return Err(NetworkError::Architecture {
                    net: "dlib's face descriptor ResNet",
                    detail: format!("the last layer is not an fc with {DESCRIPTOR_DIM} outputs"),
                })
            }
        }
        let graph = Graph::build(net, &wires, kernels, device, dtype)?;
        Ok(FaceDescriptor {
            graph,
            avg,
            dist_thresh,
        })
    }

    /// Reads and builds from a `.dat` file.
    pub fn open(
        path: &Path,
        kernels: Kernels,
        device: &Device,
        dtype: DType,
    ) -> Result<FaceDescriptor, Error> {
        crate::open_net(path, |net| {
            FaceDescriptor::from_net(net, kernels, device, dtype)
        })
    }

    pub fn kernels(&self) -> Kernels {
        self.graph.kernels()
    }

    /// Descriptors `[N,128]` (f32) of `n` chips, u8 `[N,150,150,3]` RGB.
    pub fn descriptors(&self, chips: &[u8], n: usize) -> candle_core::Result<Tensor> {
        self.descriptors_prepared(&self.prepare(chips), n)
    }

    /// A chip (or several) as the network's input floats, HWC (dlib's input layer).
    pub fn prepare(&self, chips: &[u8]) -> Vec<f32> {
        normalise_rgb(chips, self.avg)
    }

    /// Descriptors of chips already [`Self::prepare`]d.
    pub fn descriptors_prepared(&self, prepared: &[f32], n: usize) -> candle_core::Result<Tensor> {
        let x = input_tensor(
            prepared.to_vec(),
            n,
            150,
            150,
            self.graph.kernels(),
            self.graph.device(),
        )?;
        self.graph.forward(&x)?.to_dtype(DType::F32)
    }
}
