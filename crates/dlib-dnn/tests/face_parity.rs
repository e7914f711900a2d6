//! dlib's face descriptor against dlib 20.0.1's own outputs (../shared fixtures).

use candle_core::{DType, Device};
use dlib_dnn::{FaceDescriptor, Kernels};
use test_support::fixture::{Fixture, DLIB_FACE};

fn max_abs(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

#[test]
#[ignore = "needs ../shared (dlib's model and dlib's reference descriptors)"]
fn descriptors_match_dlib() {
    let fixture = Fixture::open(DLIB_FACE);
    let st = fixture.tensors();
    let model = test_support::descriptor_model();
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
            let err = max_abs(&got, &fixture.f32s(want));
            eprintln!("{kernels:?} {input}: max |error| {err:.2e}");
            assert!(err <= 1e-4, "{kernels:?} {input}: max abs error {err}");
        }
    }
}

#[test]
#[ignore = "needs ../shared (dlib's chips for 28 photos)"]
fn chips_match_dlib() {
    use dlib_dnn::chip::{extract_chip, face_chip_details, RgbImage};
    let fixture = Fixture::open(DLIB_FACE);
    let lm = fixture.f32s("landmarks68");
    let rects = fixture.f64s("chip_rects");
    let angles = fixture.f64s("chip_angles");
    let chips = fixture.bytes("chips");
    let mut worst = (0f64, 0f64, 0f64);
    for (i, photo) in fixture.rgb_photos().iter().enumerate() {
        let pts: Vec<[f32; 2]> = lm[i * 136..(i + 1) * 136]
            .chunks(2)
            .map(|c| [c[0], c[1]])
            .collect();
        let d = face_chip_details(&pts, 150, 0.25).unwrap();
        let rect_err = (0..4)
            .map(|k| (d.rect[k] - rects[i * 4 + k]).abs())
            .fold(0.0, f64::max);
        let angle_err = (d.angle - angles[i]).abs();
        let img = RgbImage {
            data: photo.as_raw().as_slice().into(),
            width: photo.width() as usize,
            height: photo.height() as usize,
        };
        let chip = extract_chip(&img, &d);
        let want = &chips[i * 67500..(i + 1) * 67500];
        let mean = chip
            .iter()
            .zip(want)
            .map(|(a, b)| (*a as f64 - *b as f64).abs())
            .sum::<f64>()
            / 67500.0;
        eprintln!("photo {i}: rect {rect_err:.4} px, angle {angle_err:.2e} rad, mean |pixel| {mean:.3} (rect {:?})", d.rect);
        worst = (
            worst.0.max(rect_err),
            worst.1.max(angle_err),
            worst.2.max(mean),
        );
    }
    eprintln!(
        "worst: rect {:.4} px, angle {:.2e}, mean pixel {:.3}",
        worst.0, worst.1, worst.2
    );
    assert!(
        worst.0 <= 0.5 && worst.1 <= 1e-3 && worst.2 <= 2.0,
        "{worst:?}"
    );
}
