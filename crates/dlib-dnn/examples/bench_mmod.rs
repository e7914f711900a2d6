//! CNN face detector throughput: photos/s of `FaceDetector::detect` on photos decoded
//! beforehand, at each upsample setting.
//! `cargo run --release -p dlib-dnn --example bench_mmod -- MODEL.dat UPSAMPLES PHOTO...`
//! (UPSAMPLES: comma-separated, e.g. `0,1`). Prints one JSON object per setting.

use candle_core::{DType, Device};
use dlib_dnn::chip::RgbImage;
use dlib_dnn::{FaceDetector, Kernels};

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [model, ups, photos @ ..] = args.as_slice() else {
        anyhow::bail!("usage: bench_mmod MODEL.dat UPSAMPLES PHOTO...");
    };
    let det = FaceDetector::open(model.as_ref(), Kernels::CpuNhwc, &Device::Cpu, DType::F32)?;
    let images: Vec<RgbImage> = photos
        .iter()
        .map(|p| {
            let img = image::open(p)?.to_rgb8();
            Ok(RgbImage {
                width: img.width() as usize,
                height: img.height() as usize,
                data: img.into_raw().into(),
            })
        })
        .collect::<anyhow::Result<_>>()?;
    for up in ups.split(',') {
        let up: usize = up.parse()?;
        det.detect(&images[0], up, 0.0)?;
        let t = std::time::Instant::now();
        let mut found = 0;
        for img in &images {
            found += usize::from(!det.detect(img, up, 0.0)?.is_empty());
        }
        let s = t.elapsed().as_secs_f64();
        println!(
            "{}",
            serde_json::json!({
                "upsample": up,
                "photos": images.len(),
                "photos_per_second": images.len() as f64 / s,
                "photos_with_a_face": found,
            })
        );
    }
    Ok(())
}
