//! The open-set measurement: train without some people, then predict their photos and the
//! known people's test photos from the raw files.
//!
//! `cargo run --release -p predict --example strangers -- FACES BOTTLENECKS DATA MODE
//! EPOCHS SEED A,B [A,B ...]` prints one JSON line per left-out pair.

use anyhow::{Context, Result};
use artifacts::{Bottlenecks, Faces};
use std::path::PathBuf;

fn main() -> Result<()> {
    kernels::runtime::init();
    let a: Vec<String> = std::env::args().skip(1).collect();
    if a.len() < 7 {
        anyhow::bail!("usage: strangers FACES BOTTLENECKS DATA MODE EPOCHS SEED A,B [A,B ...]");
    }
    let faces = Faces::read(&PathBuf::from(&a[0]))?;
    let b = Bottlenecks::read(&PathBuf::from(&a[1]))?;
    let mode = <train::TrainMode as clap::ValueEnum>::from_str(&a[3], true)
        .map_err(anyhow::Error::msg)
        .context("MODE")?;
    let epochs: usize = a[4].parse().context("EPOCHS")?;
    let seed: u64 = a[5].parse().context("SEED")?;
    let work = tempfile::tempdir()?;
    for pair in &a[6..] {
        let leave_out: Vec<String> = pair.split(',').map(str::to_string).collect();
        let run = test_support::measure::LeaveOut {
            faces: &faces,
            bottlenecks: &b,
            data: &PathBuf::from(&a[2]),
            leave_out,
            train: train::TrainConfig {
                seed,
                ..test_support::training::short(mode, epochs)
            },
            dir: work.path().join(pair.replace(',', "+")),
        };
        let fig = test_support::measure::leave_out(&run)?;
        println!("{}", fig.summary());
    }
    Ok(())
}
