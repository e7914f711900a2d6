//! Model files the pipeline offers to fetch: dlib's face descriptor (22 MB decompressed)
//! for the face teacher. The stage (`inception-bottleneck --teacher dlib-face`) looks in
//! the project's model cache and in the Python package `face_recognition_models`; when
//! neither has it, this offers dlib's official download, checked by SHA-256 before use.

use anyhow::{bail, Context, Result};
use std::io::{BufRead, IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::process::Command;

const FILE: &str = "dlib_face_recognition_resnet_model_v1.dat";
const URL: &str = "http://dlib.net/files/dlib_face_recognition_resnet_model_v1.dat.bz2";
/// Of the decompressed file (the stage warns on any other).
const SHA256: &str = "55533b28a95800a551ba546ba62fe69625c7e95a7061c338adffead08719da30";

fn cache() -> PathBuf {
    std::env::var_os("CELEB_TRANSFER_MODELS")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("data/models"))
}

fn python_has_it() -> bool {
    Command::new("python3")
        .args(["-c", "import face_recognition_models"])
        .stderr(std::process::Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

/// The `--teacher` value for the face teacher, or None (with one sentence on stderr) when
/// the model cannot be had and the user did not name a file.
pub fn face_teacher(spec: &str) -> Result<Option<String>> {
    if spec != "dlib-face" {
        if !Path::new(spec).is_file() {
            bail!("--face-teacher {spec}: no such file");
        }
        return Ok(Some(spec.to_string()));
    }
    if cache().join(FILE).is_file() || python_has_it() {
        return Ok(Some(spec.to_string()));
    }
    let say = format!(
        "face teacher skipped: dlib's {FILE} is not in {} and `pip install face_recognition_models` is not done; pass --face-teacher PATH, or run on a terminal with the network to download it",
        cache().display()
    );
    if !crate::lfw::reachable("dlib.net", 80) || !std::io::stdin().is_terminal() {
        eprintln!("{say}");
        return Ok(None);
    }
    eprint!(
        "Download dlib's face descriptor model ({URL}, 21 MB) into {}? [y/N] ",
        cache().display()
    );
    std::io::stderr().flush()?;
    let mut answer = String::new();
    std::io::stdin().lock().read_line(&mut answer)?;
    if !matches!(answer.trim(), "y" | "Y" | "yes") {
        eprintln!("{say}");
        return Ok(None);
    }
    download(&cache())?;
    Ok(Some(spec.to_string()))
}

/// Fetches the `.bz2`, decompresses it beside the target, checks the SHA-256, renames.
fn download(dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir)?;
    let bz = dir.join(format!("{FILE}.bz2.part"));
    crate::lfw::fetch(URL, &bz, 21_428_389, "dlib model")?;
    let part = dir.join(format!("{FILE}.part"));
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
    if got != SHA256 {
        let _ = std::fs::remove_file(&part);
        bail!("{URL}: decompressed SHA-256 {got}, expected {SHA256}; nothing kept");
    }
    std::fs::rename(&part, dir.join(FILE))?;
    Ok(())
}
