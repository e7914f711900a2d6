//! Model files the pipeline offers to fetch: dlib's face descriptor (22 MB decompressed)
//! for the face teacher and dlib's CNN face detector (0.7 MB) for preprocess. The stages
//! look in the project's model cache and in the Python package `face_recognition_models`
//! (the table and finder of `artifacts::models`, the candle-free contract crate); when
//! neither has a file, this offers dlib's official download, checked by SHA-256.

use anyhow::{bail, Context, Result};
use std::io::{BufRead, IsTerminal, Write};
use std::path::Path;
use std::process::Command;

use artifacts::models::{model_cache as cache, python_package_copy};
pub use artifacts::models::{ModelFile as Model, FACE_DESCRIPTOR, FACE_DETECTOR};

/// The `--teacher` value for the face teacher, or None (with one sentence on stderr) when
/// the model cannot be had and the user did not name a file.
pub fn face_teacher(spec: &str) -> Result<Option<String>> {
    if spec != "dlib-face" {
        if !Path::new(spec).is_file() {
            bail!("--face-teacher {spec}: no such file");
        }
        return Ok(Some(spec.to_string()));
    }
    Ok(available(
        &FACE_DESCRIPTOR,
        "face teacher skipped",
        "--face-teacher PATH",
    )?
    .then(|| spec.to_string()))
}

/// Whether the stages will find `m` (offering the download on a terminal when online);
/// otherwise one sentence on stderr, starting with `consequence`.
pub fn available(m: &Model, consequence: &str, flag: &str) -> Result<bool> {
    if cache().join(m.file).is_file() || python_package_copy(m).is_some() {
        return Ok(true);
    }
    let say = format!(
        "{consequence}: dlib's {} is not in {} and `pip install face_recognition_models` is not done; pass {flag}, or run on a terminal with the network to download it",
        m.file,
        cache().display()
    );
    if !crate::lfw::reachable("dlib.net", 80) || !std::io::stdin().is_terminal() {
        eprintln!("{say}");
        return Ok(false);
    }
    eprint!(
        "Download {} ({}, {:.1} MB) into {}? [y/N] ",
        m.what,
        m.url,
        m.bz2_bytes as f64 / 1e6,
        cache().display()
    );
    std::io::stderr().flush()?;
    let mut answer = String::new();
    std::io::stdin().lock().read_line(&mut answer)?;
    if !matches!(answer.trim(), "y" | "Y" | "yes") {
        eprintln!("{say}");
        return Ok(false);
    }
    download(m, &cache())?;
    Ok(true)
}

/// Fetches the `.bz2`, decompresses it beside the target, checks the SHA-256, renames.
fn download(m: &Model, dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir)?;
    let bz = dir.join(format!("{}.bz2.part", m.file));
    crate::lfw::fetch(m.url, &bz, m.bz2_bytes, "dlib model")?;
    let part = dir.join(format!("{}.part", m.file));
    let out = std::fs::File::create(&part)?;
    let status = Command::new("bunzip2")
        .arg("-c")
        .arg(&bz)
        .stdout(out)
        .status()
        .context("cannot start bunzip2 (apt-get install bzip2)")?;
    let _ = std::fs::remove_file(&bz);
    if !status.success() {
        bail!("bunzip2 failed ({status})");
    }
    let got = crate::lfw::sha256_file(&part)?;
    if got != m.sha256 {
        let _ = std::fs::remove_file(&part);
        bail!(
            "{}: decompressed SHA-256 {got}, expected {}; nothing kept",
            m.url,
            m.sha256
        );
    }
    std::fs::rename(&part, dir.join(m.file))?;
    Ok(())
}
