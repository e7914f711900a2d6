//! t-SNE wall time and KL on synthetic clustered 2048-d data.
//! `cargo run --release -p eval-tsne --example bench_tsne -- N [DUMP.f32]` prints JSON; with
//! DUMP the data is also written as raw little-endian f32 for a Python peer.
//! `... -- N --kl-of MAP.f64` instead scores a peer's 2-D map (raw little-endian f64, N x 2)
//! with our exact KL against the same affinities, so that both KL values mean the same.

use eval_tsne::tsne::{input_affinities, kl_divergence, tsne, TsneConfig};

/// Clustered data: 20 gaussian blobs in 2048-d with per-blob scales (seeded).
pub fn data(n: usize, d: usize, seed: u64) -> Vec<f32> {
    let mut lcg = test_support::Lcg::new(seed);
    let mut unif = move || ((lcg.next_u64() >> 11) as f64 / (1u64 << 53) as f64).max(1e-300);
    let mut gauss = move || {
        let (a, b) = (unif(), unif());
        ((-2.0 * a.ln()).sqrt() * (2.0 * std::f64::consts::PI * b).cos()) as f32
    };
    let centres: Vec<f32> = (0..20 * d).map(|_| gauss() * 3.0).collect();
    let mut x = Vec::with_capacity(n * d);
    for i in 0..n {
        let c = i % 20;
        let scale = 1.0 + (c % 4) as f32 * 0.5;
        for k in 0..d {
            x.push(centres[c * d + k] + gauss() * scale);
        }
    }
    x
}

fn main() -> anyhow::Result<()> {
    kernels::runtime::init();
    let args: Vec<String> = std::env::args().skip(1).collect();
    let n: usize = args.first().map(|s| s.parse()).transpose()?.unwrap_or(1000);
    let d = 2048;
    let x = data(n, d, 7);
    if args.get(1).map(String::as_str) == Some("--kl-of") {
        let path = args
            .get(2)
            .ok_or_else(|| anyhow::anyhow!("--kl-of needs a file"))?;
        let bytes = std::fs::read(path)?;
        anyhow::ensure!(bytes.len() == n * 16, "{path}: expected {n} x 2 f64 values");
        let map: Vec<[f64; 2]> = bytes
            .chunks_exact(16)
            .map(|c| {
                let v = |o: usize| f64::from_le_bytes(c[o..o + 8].try_into().unwrap());
                [v(0), v(8)]
            })
            .collect();
        let p = input_affinities(&x, n, d, TsneConfig::default().perplexity);
        println!(
            "{}",
            serde_json::json!({"n": n, "kl": kl_divergence(&p, &map)})
        );
        return Ok(());
    }
    if let Some(path) = args.get(1) {
        let bytes: Vec<u8> = x.iter().flat_map(|v| v.to_le_bytes()).collect();
        std::fs::write(path, bytes)?;
    }
    let r = tsne(&x, n, d, &TsneConfig::default());
    println!(
        "{}",
        serde_json::json!({"n": n, "dim": d, "seconds": r.seconds, "knn_seconds": r.knn_seconds, "init_seconds": r.init_seconds, "kl": r.kl})
    );
    Ok(())
}
