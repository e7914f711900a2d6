//! Parity with torchvision's Inception3 and extraction with real weights (needs ../shared).

use candle_core::{DType, Device, Tensor};
use inception_bottleneck::teacher::load_tensors;
use inception_bottleneck::InceptionV3;
use std::path::PathBuf;

fn shared() -> PathBuf {
    std::env::var_os("CELEB_SHARED")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared"))
}

fn rel_err(a: &Tensor, b: &Tensor) -> f64 {
    let a = a.to_dtype(DType::F64).unwrap();
    let b = b.to_dtype(DType::F64).unwrap();
    let num = (&a - &b)
        .unwrap()
        .sqr()
        .unwrap()
        .sum_all()
        .unwrap()
        .sqrt()
        .unwrap();
    let den = b.sqr().unwrap().sum_all().unwrap().sqrt().unwrap();
    num.to_scalar::<f64>().unwrap() / den.to_scalar::<f64>().unwrap()
}

#[test]
#[ignore = "needs ../shared (fixtures/inception-v3-random)"]
fn matches_torchvision_on_random_weights() {
    let dir = shared().join("fixtures/inception-v3-random");
    let tensors = load_tensors(&dir.join("weights.safetensors")).unwrap();
    let model = InceptionV3::load(tensors, None, DType::F32, &Device::Cpu).unwrap();
    assert!(model.has_fc());
    assert!(model
        .unused_keys
        .iter()
        .any(|k| k.starts_with("AuxLogits.")));
    let reference =
        candle_core::safetensors::load(dir.join("reference.safetensors"), &Device::Cpu).unwrap();
    let input = &reference["input"];
    let first = input.narrow(0, 0, 1).unwrap();
    let mut blocks = std::collections::HashMap::new();
    model
        .forward_blocks(&first, "Mixed_7c", |name, t| {
            blocks.insert(name.to_string(), t.clone());
        })
        .unwrap();
    let mut checked = 0;
    for (name, want) in &reference {
        if let Some(got) = blocks.get(name) {
            assert_eq!(got.dims(), want.dims(), "{name}");
            let e = rel_err(got, want);
            assert!(e < 1e-4, "{name}: relative error {e}");
            checked += 1;
        }
    }
    assert!(checked >= 6, "only {checked} block outputs compared");
    let pool = model.bottleneck(input, "pool").unwrap();
    let e = rel_err(&pool, &reference["pool"]);
    assert!(e < 1e-4, "pool: relative error {e}");
    let logits = model.logits(input).unwrap();
    let e = rel_err(&logits, &reference["logits"]);
    assert!(e < 1e-4, "logits: relative error {e}");
}
