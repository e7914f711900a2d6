//! dlib's CNN face detector against dlib 20.0.1's own detections (../shared fixture:
//! 24 msceleb-samples photos, upsample 0 and 1).

use candle_core::{DType, Device};
use dlib_dnn::chip::RgbImage;
use dlib_dnn::mmod::{Detection, Rect};
use dlib_dnn::{FaceDetector, Kernels};
use test_support::fixture::{Fixture, DLIB_MMOD};

/// Plain intersection over union of dlib's inclusive boxes.
fn iou_plain(a: &Rect, b: &Rect) -> f64 {
    let i = a.intersect(b).area() as f64;
    i / ((a.area() + b.area()) as f64 - i)
}

#[test]
#[ignore = "needs ../shared (dlib's CNN detector model and its reference detections)"]
fn detections_match_dlib() {
    let fixture = Fixture::open(DLIB_MMOD);
    let photos = fixture.photos();
    let model = test_support::cnn_detector_model();
    let images: Vec<RgbImage> = fixture
        .rgb_photos()
        .into_iter()
        .map(|img| RgbImage {
            width: img.width() as usize,
            height: img.height() as usize,
            data: img.into_raw().into(),
        })
        .collect();
    for kernels in [Kernels::CpuNhwc, Kernels::Candle] {
        let det = FaceDetector::open(&model, kernels, &Device::Cpu, DType::F32).unwrap();
        for upsample in [0usize, 1] {
            let want = fixture.f64s(&format!("detections_upsample{upsample}"));
            let mut worst_iou: f64 = 1.0;
            let mut worst_conf: f64 = 0.0;
            for (i, img) in images.iter().enumerate() {
                let got: Vec<Detection> = det.detect(img, upsample, 0.0).unwrap();
                let want: Vec<(Rect, f64)> = want
                    .chunks_exact(6)
                    .filter(|r| r[0] as usize == i)
                    .map(|r| {
                        (
                            Rect::new(r[1] as i64, r[2] as i64, r[3] as i64, r[4] as i64),
                            r[5],
                        )
                    })
                    .collect();
                assert_eq!(
                    got.len(),
                    want.len(),
                    "{kernels:?} upsample {upsample} {}: found {got:?}, dlib {want:?}",
                    photos[i]
                );
                for (rect, conf) in &want {
                    let best = got
                        .iter()
                        .max_by(|a, b| {
                            iou_plain(&a.rect, rect).total_cmp(&iou_plain(&b.rect, rect))
                        })
                        .unwrap();
                    let o = iou_plain(&best.rect, rect);
                    worst_iou = worst_iou.min(o);
                    worst_conf = worst_conf.max((best.confidence - conf).abs());
                    assert!(
                        o >= 0.9 && (best.confidence - conf).abs() <= 0.01,
                        "{kernels:?} upsample {upsample} {}: dlib {rect:?} {conf:.4}, ours {:?} {:.4}",
                        photos[i],
                        best.rect,
                        best.confidence
                    );
                }
            }
            eprintln!(
                "{kernels:?} upsample {upsample}: {} boxes, worst IoU {worst_iou:.4}, worst |confidence difference| {worst_conf:.5}",
                want.len() / 6
            );
        }
    }
}
