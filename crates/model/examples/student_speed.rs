//! Student throughput on the CPU: eval-mode forward passes of random 150 px NHWC faces,
//! images/s for the study's student and Deep, beside their parameters and FLOPs.
//! `cargo run --release -p model --example student_speed [-- BATCH THREADS]` (32, 2).
//! Prints one JSON object per student.

use candle_core::{DType, Device, Tensor};
use candle_nn::{VarBuilder, VarMap};
use model::{Mode, Student, StudentConfig};
use std::time::Instant;

fn main() -> candle_core::Result<()> {
    // The stage binaries' set-up (candle's elementwise pool, allocator), so the numbers
    // are what predict would see.
    kernels::runtime::init();
    let mut args = std::env::args().skip(1).map(|a| a.parse::<usize>());
    let batch = args
        .next()
        .transpose()
        .map_err(candle_core::Error::wrap)?
        .unwrap_or(32);
    let threads = args
        .next()
        .transpose()
        .map_err(candle_core::Error::wrap)?
        .unwrap_or(2);
    kernels::runtime::set_jobs(Some(threads)).map_err(candle_core::Error::wrap)?;
    let head = |bottleneck, cfg: StudentConfig| StudentConfig {
        bottleneck: Some(bottleneck),
        num_classes: 14,
        ..cfg
    };
    let students = [
        ("study", head(2048, StudentConfig::default())),
        ("study", head(128, StudentConfig::default())),
        ("deep", head(128, StudentConfig::deep())),
        (
            "deep-150px",
            head(
                128,
                StudentConfig {
                    input_pool: 1,
                    ..StudentConfig::deep()
                },
            ),
        ),
    ];
    let dev = Device::Cpu;
    for (name, cfg) in students {
        // Plain tensors, not variables, as a loaded checkpoint: no backward graph is kept.
        let vm = VarMap::new();
        Student::new(&cfg, VarBuilder::from_varmap(&vm, DType::F32, &dev))?;
        let weights = vm
            .data()
            .lock()
            .unwrap()
            .iter()
            .map(|(k, v)| (k.clone(), v.as_tensor().detach()))
            .collect();
        let student = Student::new(&cfg, VarBuilder::from_tensors(weights, DType::F32, &dev))?;
        let side = cfg.image_size;
        let x = Tensor::randn(0f32, 1.0, (batch, side, side, 3), &dev)?;
        let mut times = Vec::new();
        for rep in 0..23 {
            let t = Instant::now();
            student.forward_nhwc(&x, Mode::Eval)?;
            // The first three warm the caches and the allocator.
            if rep >= 3 {
                times.push(t.elapsed().as_secs_f64());
            }
        }
        times.sort_by(f64::total_cmp);
        let median = times[times.len() / 2];
        let report = serde_json::json!({
            "student": name,
            "bottleneck": cfg.bottleneck,
            "classes": cfg.num_classes,
            "parameters": cfg.parameter_count(),
            "mflop_per_image": cfg.flops() as f64 / 1e6,
            "batch": batch,
            "threads": threads,
            "median_batch_ms": median * 1e3,
            "images_per_s": batch as f64 / median,
            "gflop_per_s": cfg.flops() as f64 * batch as f64 / median / 1e9,
        });
        println!("{report}");
    }
    Ok(())
}
