//! Student training throughput (cosine objective, 150 px, synthetic data): samples/s at
//! several batch sizes.
//! `cargo run --release -p train --example bench_train -- [--runs N] [BATCH...]`

use artifacts::{Bottlenecks, Faces, Provenance, Split};
use train::{Dataset, Partition, RunFiles, TrainConfig, TrainMode, Trainer};

fn main() -> anyhow::Result<()> {
    kernels::runtime::init();
    let mut args: Vec<String> = std::env::args().skip(1).collect();
    // `--runs N` first: runs per batch size, median reported (default 3).
    let runs: usize = match args.first().map(String::as_str) {
        Some("--runs") if args.len() > 1 => {
            let n = args[1].parse()?;
            args.drain(..2);
            n
        }
        _ => 3,
    };
    anyhow::ensure!(runs > 0, "--runs must be at least 1");
    let batches: Vec<usize> = if args.is_empty() {
        vec![20, 64]
    } else {
        args.iter().map(|b| b.parse()).collect::<Result<_, _>>()?
    };
    let n = 640;
    let size = 150;
    let mut lcg = test_support::Lcg::new(1);
    let mut rnd = move || (lcg.next_u64() >> 56) as u8;
    let faces = Faces {
        height: size,
        width: size,
        images: (0..n * size * size * 3).map(|_| rnd()).collect(),
        labels: (0..n as u32).map(|i| i % 14).collect(),
        splits: vec![Split::Train; n],
        class_names: (0..14).map(|i| format!("c{i}")).collect(),
        sources: (0..n).map(|i| format!("c/{i}.jpg")).collect(),
        geometry: None,
        provenance: Provenance::new("bench", "0", serde_json::json!({})),
    };
    let teacher = Bottlenecks {
        views: None,
        dim: 2048,
        features: (0..n * 2048).map(|i| (i % 97) as f32 / 97.0).collect(),
        mirrored: None,
        teacher: "synthetic".into(),
        layer: "pool".into(),
        faces_digest: String::new(),
        provenance: Provenance::new("bench", "0", serde_json::json!({})),
    };
    let data = Dataset {
        faces,
        teacher: Some(teacher),
        faces_digest: String::new(),
        bottlenecks_digest: None,
        exclusions_digest: None,
        shard_starts: vec![0],
    };
    let part = Partition {
        train: (0..n).collect(),
        val: vec![],
        test: vec![],
    };
    for b in batches {
        let cfg = TrainConfig {
            mode: TrainMode::Cosine,
            epochs: 2,
            min_steps: 0,
            batch: b,
            // The PyTorch peer does not augment either.
            augment: false,
            device: kernels::device::DeviceChoice::Cpu,
            ..Default::default()
        };
        // Median of several runs: single runs vary by +-20% on a shared 2-core VM.
        let mut rates = Vec::new();
        for _ in 0..runs {
            let out = Trainer::new(&data, &cfg, &part)?.run(&part, &RunFiles::default())?;
            rates.push(out.samples_per_second);
        }
        rates.sort_by(f64::total_cmp);
        println!(
            "{}",
            serde_json::json!({"batch": b, "samples_per_second": rates[runs / 2], "runs": rates})
        );
    }
    Ok(())
}
