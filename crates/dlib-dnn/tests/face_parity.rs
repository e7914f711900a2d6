//! dlib's face descriptor against dlib 20.0.1's own outputs (../shared fixtures).

use candle_core::{DType, Device};
use dlib_dnn::{FaceDescriptor, Kernels};
use safetensors::SafeTensors;
use std::path::PathBuf;

fn shared() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared")
}

fn f32s(st: &SafeTensors, name: &str) -> Vec<f32> {
    st.tensor(name)
        .unwrap()
        .data()
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect()
}

fn max_abs(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max)
}

#[test]
#[ignore = "needs ../shared (dlib's model and dlib's reference descriptors)"]
fn descriptors_match_dlib() {
    let bytes = std::fs::read(shared().join("fixtures/dlib-face-recognition/reference.safetensors")).unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    let model = shared().join("models/dlib/dlib_face_recognition_resnet_model_v1.dat");
    for kernels in [Kernels::CpuNhwc, Kernels::Candle] {
        let net = FaceDescriptor::open(&model, kernels, &Device::Cpu, DType::F32).unwrap();
        for (input, want) in [
            ("chips", "descriptors"),
            ("noise_chips", "noise_descriptors"),
            ("grey_chip", "grey_descriptor"),
        ] {
            let t = st.tensor(input).unwrap();
            let n = t.shape()[0];
            let got = net.descriptors(t.data(), n).unwrap();
            assert_eq!(got.dims(), &[n, 128]);
            let got: Vec<f32> = got.flatten_all().unwrap().to_vec1().unwrap();
            let err = max_abs(&got, &f32s(&st, want));
            eprintln!("{kernels:?} {input}: max |error| {err:.2e}");
            assert!(err <= 1e-4, "{kernels:?} {input}: max abs error {err}");
        }
    }
}
