//! Teacher throughput: images/s of Inception-v3 (299 px) at several batch sizes.
//! `cargo run --release -p inception-bottleneck --example bench_bottleneck -- WEIGHTS [BATCH...]`
//! Prints one JSON object per batch size.

use candle_core::{DType, Device, Tensor};
use inception_bottleneck::teacher::load_tensors;
use inception_bottleneck::InceptionV3;

fn main() -> anyhow::Result<()> {
    artifacts::runtime::init();
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
    let model = InceptionV3::load(
        load_tensors(std::path::Path::new(weights))?,
        Some("Mixed_7c"),
        DType::F32,
        &Device::Cpu,
    )?;
    for b in batches {
        let x = Tensor::randn(0f32, 1.0, (b, 3, 299, 299), &Device::Cpu)?;
        model.bottleneck(&x, "pool")?; // warm-up
        let reps = (64 / b).clamp(2, 16);
        let t = std::time::Instant::now();
        for _ in 0..reps {
            model.bottleneck(&x, "pool")?;
        }
        let secs = t.elapsed().as_secs_f64();
        println!(
            "{}",
            serde_json::json!({"batch": b, "images": b * reps, "seconds": secs, "images_per_second": (b * reps) as f64 / secs})
        );
    }
    Ok(())
}
