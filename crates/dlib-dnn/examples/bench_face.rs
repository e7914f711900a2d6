//! Face-teacher throughput: chips/s of dlib's face descriptor at several batch sizes, on
//! the NHWC CPU kernels and, as an in-run reference, on candle's own NCHW ops.
//! `cargo run --release -p dlib-dnn --example bench_face -- MODEL.dat CHIPS.safetensors [BATCH...]`
//! (CHIPS: a safetensors file with u8 `chips` [N,150,150,3], e.g. dlib's fixture).
//! Prints one JSON object per batch size, with the network's FLOPs per chip.

use candle_core::{DType, Device};
use dlib_dnn::dnn::{Layer, Net};
use dlib_dnn::{FaceDescriptor, Kernels};

/// Multiply-adds x 2 of the convolutions and the fc for one 150x150 chip, following the
/// network's wiring (a skip returns to its tag's spatial size).
fn flops(net: &Net) -> f64 {
    use dlib_dnn::graph::Wire;
    let (_, wires) = dlib_dnn::face::architecture();
    let mut wires = wires.into_iter();
    let (mut h, mut w, mut total) = (150usize, 150usize, 0f64);
    let mut tags = std::collections::HashMap::new();
    for l in &net.layers {
        match l {
            Layer::Con(c) => {
                h = (h + 2 * c.pad.0 - c.nr) / c.stride.0 + 1;
                w = (w + 2 * c.pad.1 - c.nc) / c.stride.1 + 1;
                total += 2.0 * (c.filters * c.in_channels * c.nr * c.nc * h * w) as f64;
            }
            Layer::Pool(p) if p.nr > 0 => {
                h = (h + 2 * p.pad.0 - p.nr) / p.stride.0 + 1;
                w = (w + 2 * p.pad.1 - p.nc) / p.stride.1 + 1;
            }
            Layer::Pool(_) => (h, w) = (1, 1),
            Layer::TagOrSkip | Layer::AddPrev => match wires.next() {
                Some(Wire::Tag(t)) => {
                    tags.insert(t, (h, w));
                }
                Some(Wire::Skip(t)) => (h, w) = tags[&t],
                Some(Wire::AddPrev(t)) => (h, w) = (h.max(tags[&t].0), w.max(tags[&t].1)),
                None => {}
            },
            Layer::Fc(f) => total += 2.0 * (f.inputs * f.outputs) as f64,
            _ => {}
        }
    }
    total
}

fn main() -> anyhow::Result<()> {
    kernels::runtime::init();
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [model, chips, rest @ ..] = args.as_slice() else {
        anyhow::bail!("usage: bench_face MODEL.dat CHIPS.safetensors [BATCH...]");
    };
    let batches: Vec<usize> = if rest.is_empty() {
        vec![1, 8, 32]
    } else {
        rest.iter().map(|b| b.parse()).collect::<Result<_, _>>()?
    };
    let bytes = std::fs::read(chips)?;
    let st = safetensors::SafeTensors::deserialize(&bytes)?;
    let pool = st.tensor("chips")?.data().to_vec();
    let have = pool.len() / 67500;
    let net = Net::open(std::path::Path::new(model))?;
    let f = flops(&net);
    let ours = FaceDescriptor::from_net(&net, Kernels::CpuNhwc, &Device::Cpu, DType::F32)
        .map_err(anyhow::Error::msg)?;
    let ops = FaceDescriptor::from_net(&net, Kernels::Candle, &Device::Cpu, DType::F32)
        .map_err(anyhow::Error::msg)?;
    let rate = |m: &FaceDescriptor, x: &[u8], b: usize| -> anyhow::Result<f64> {
        m.descriptors(x, b)?; // warm-up
        let reps = (64 / b).clamp(3, 32);
        let t = std::time::Instant::now();
        for _ in 0..reps {
            m.descriptors(x, b)?;
        }
        Ok((b * reps) as f64 / t.elapsed().as_secs_f64())
    };
    for b in batches {
        let x: Vec<u8> = (0..b)
            .flat_map(|i| {
                pool[(i % have) * 67500..(i % have + 1) * 67500]
                    .iter()
                    .copied()
            })
            .collect();
        let fast = rate(&ours, &x, b)?;
        // BENCH_NO_REFERENCE=1 skips the candle-ops reference (for profiling ours alone).
        let slow = if std::env::var_os("BENCH_NO_REFERENCE").is_some() {
            0.0
        } else {
            rate(&ops, &x, b)?
        };
        println!(
            "{}",
            serde_json::json!({"batch": b, "chips_per_second": fast, "candle_ops_chips_per_second": slow,
                "gflop_per_chip": f / 1e9, "gflop_per_second": fast * f / 1e9})
        );
    }
    Ok(())
}
