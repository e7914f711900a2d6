//! Teacher throughput: images/s of Inception-v3 (299 px) at several batch sizes.
//! `cargo run --release -p inception-bottleneck --example bench_bottleneck -- WEIGHTS [BATCH...]`
//! Prints one JSON object per batch size: the default kernels (NHWC CPU kernels) and, as
//! an in-run reference, the same network on candle's own NCHW ops.

use candle_core::{DType, Device, Tensor};
use inception_bottleneck::teacher::load_tensors;
use inception_bottleneck::InceptionV3;

fn main() -> anyhow::Result<()> {
    kernels::runtime::init();
    let args: Vec<String> = std::env::args().skip(1).collect();
    let weights = args
        .first()
        .ok_or_else(|| anyhow::anyhow!("usage: bench WEIGHTS.safetensors [BATCH...]"))?;
    let batches: Vec<usize> = if args.len() > 1 {
        args[1..]
            .iter()
            .map(|b| b.parse())
            .collect::<Result<_, _>>()?
    } else {
        vec![1, 8, 32]
    };
    let tensors = load_tensors(std::path::Path::new(weights))?;
    let load = |cpu_kernels| {
        InceptionV3::load_with(
            tensors.clone(),
            Some("Mixed_7c"),
            DType::F32,
            &Device::Cpu,
            cpu_kernels,
        )
    };
    let (ours, candle_ops) = (load(true)?, load(false)?);
    let rate = |model: &InceptionV3, x: &Tensor, b: usize| -> anyhow::Result<f64> {
        model.bottleneck(x, "pool")?; // warm-up
        let reps = (64 / b).clamp(2, 16);
        let t = std::time::Instant::now();
        for _ in 0..reps {
            model.bottleneck(x, "pool")?;
        }
        Ok((b * reps) as f64 / t.elapsed().as_secs_f64())
    };
    for b in batches {
        let x = Tensor::randn(0f32, 1.0, (b, 3, 299, 299), &Device::Cpu)?;
        let fast = rate(&ours, &x, b)?;
        let slow = rate(&candle_ops, &x, b)?;
        println!(
            "{}",
            serde_json::json!({"batch": b, "images_per_second": fast, "candle_ops_images_per_second": slow})
        );
    }
    Ok(())
}
