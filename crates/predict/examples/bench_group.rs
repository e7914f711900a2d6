//! `cargo xtask bench group`: grouping N unknown faces whose descriptors are computed
//! (predict's `--group-unknowns` less the descriptor runs), timed: the link's calibration on
//! the training faces, Chinese whispers on the N faces and the merge of groups by centres.
//!
//! Usage: `bench_group BOTTLENECKS_FACE N OUT.f32`: the N faces are the artifact's
//! rows in order (repeated, each repeat nudged by 0.01 in one coordinate, when it has fewer);
//! their descriptors are written to OUT (raw little-endian f32, N x dim) for the peer (dlib's own Chinese whispers).

use artifacts::Bottlenecks;
use predict::group::{group, Link};

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [path, n, out] = args.as_slice() else {
        anyhow::bail!("usage: bench_group BOTTLENECKS_FACE N OUT.f32");
    };
    let n: usize = n.parse()?;
    let b = Bottlenecks::read(std::path::Path::new(path))?;
    let faces =
        artifacts::Faces::read(&std::path::Path::new(path).with_file_name("faces.safetensors"))?;
    let dim = b.dim;
    let mut rows: Vec<f32> = Vec::with_capacity(n * dim);
    for i in 0..n {
        let mut r = b.row(i % b.len()).to_vec();
        r[(i / b.len()) % dim] += 0.01 * (i / b.len()) as f32;
        rows.extend(r);
    }
    let t = std::time::Instant::now();
    let train = faces.indices(artifacts::Split::Train);
    let feats: Vec<f32> = train.iter().flat_map(|&i| b.row(i).to_vec()).collect();
    let labels: Vec<u32> = train.iter().map(|&i| faces.labels[i]).collect();
    let link = Link::calibrate(&feats, dim, &labels);
    let calibrate = t.elapsed().as_secs_f64();
    let refs: Vec<&[f32]> = rows.chunks_exact(dim).collect();
    let mut times = Vec::new();
    let mut groups = Vec::new();
    for _ in 0..5 {
        let t = std::time::Instant::now();
        groups = group(&refs, &link);
        times.push(t.elapsed().as_secs_f64());
    }
    times.sort_by(f64::total_cmp);
    let raw: Vec<u8> = rows.iter().flat_map(|v| v.to_le_bytes()).collect();
    artifacts::write_atomic(std::path::Path::new(out), &raw)?;
    println!(
        "{}",
        serde_json::json!({
            "faces": n, "link": link.threshold, "calibrate_seconds": calibrate,
            "calibration_faces": link.training_faces, "group_seconds": times[2],
            "groups": groups.len(), "singletons": groups.iter().filter(|g| g.len() == 1).count(),
        })
    );
    Ok(())
}
