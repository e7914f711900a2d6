//! dlib's reference fixtures in `../shared/fixtures` (safetensors files written by dlib
//! 20.0.1's own tools): their tensors as little-endian numbers, the photos they name.

use safetensors::SafeTensors;
use std::path::PathBuf;

/// dlib's face recognition reference: 28 photos' landmarks, chips and descriptors.
pub const DLIB_FACE: &str = "fixtures/dlib-face-recognition/reference.safetensors";
/// dlib's CNN detector reference: its detections on msceleb-samples photos.
pub const DLIB_MMOD: &str = "fixtures/dlib-mmod/reference.safetensors";

/// A fixture file read whole.
pub struct Fixture {
    bytes: Vec<u8>,
}

impl Fixture {
    /// `rel` below the shared data (e.g. [`DLIB_FACE`]); panics when it cannot be read.
    pub fn open(rel: &str) -> Fixture {
        let path = crate::shared().join(rel);
        let bytes =
            std::fs::read(&path).unwrap_or_else(|e| panic!("fixture {}: {e}", path.display()));
        Fixture { bytes }
    }

    pub fn tensors(&self) -> SafeTensors<'_> {
        SafeTensors::deserialize(&self.bytes).expect("a safetensors fixture")
    }

    /// The raw bytes of tensor `name` (u8 tensors: chips).
    pub fn bytes(&self, name: &str) -> Vec<u8> {
        self.tensors()
            .tensor(name)
            .unwrap_or_else(|e| panic!("fixture tensor {name}: {e}"))
            .data()
            .to_vec()
    }

    pub fn f32s(&self, name: &str) -> Vec<f32> {
        f32s(&self.tensors(), name)
    }

    pub fn f64s(&self, name: &str) -> Vec<f64> {
        f64s(&self.tensors(), name)
    }

    /// The photos the fixture was made from (metadata `photos`: paths below the shared
    /// data), in the order of its tensors' rows.
    pub fn photos(&self) -> Vec<String> {
        let (_, meta) = SafeTensors::read_metadata(&self.bytes).expect("a safetensors fixture");
        let meta = meta.metadata().as_ref().expect("fixture metadata");
        serde_json::from_str(&meta["photos"]).expect("`photos` as a JSON list")
    }

    /// [`photos`](Self::photos) as full paths.
    pub fn photo_paths(&self) -> Vec<PathBuf> {
        let shared = crate::shared();
        self.photos().iter().map(|p| shared.join(p)).collect()
    }

    /// [`photos`](Self::photos) decoded to RGB.
    pub fn rgb_photos(&self) -> Vec<image::RgbImage> {
        self.photo_paths()
            .iter()
            .map(|p| {
                image::open(p)
                    .unwrap_or_else(|e| panic!("{}: {e}", p.display()))
                    .to_rgb8()
            })
            .collect()
    }
}

/// Tensor `name` of `st` as little-endian f32s.
pub fn f32s(st: &SafeTensors, name: &str) -> Vec<f32> {
    data(st, name)
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
        .collect()
}

/// Tensor `name` of `st` as little-endian f64s.
pub fn f64s(st: &SafeTensors, name: &str) -> Vec<f64> {
    data(st, name)
        .chunks_exact(8)
        .map(|c| f64::from_le_bytes(c.try_into().unwrap()))
        .collect()
}

fn data<'a>(st: &SafeTensors<'a>, name: &str) -> &'a [u8] {
    st.tensor(name)
        .unwrap_or_else(|e| panic!("fixture tensor {name}: {e}"))
        .data()
}
