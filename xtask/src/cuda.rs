//! `cargo xtask check-cuda`: builds the workspace with `--features cuda` so the GPU path
//! never rots, on machines without a GPU. nvcc comes from PATH/`CUDA_HOME`, or from
//! PyPI's CUDA 13.0 wheels (the CUDA 12 wheels carry no nvcc).

use crate::util::{cargo, run};
use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};
use std::process::Command;

/// Pinned CUDA 13.0 wheels: compiler (kernels) and the libraries the binaries link.
const WHEELS: &[&str] = &[
    "nvidia-cuda-nvcc==13.0.88",
    "nvidia-cuda-crt==13.0.88",
    "nvidia-nvvm==13.0.88",
    "nvidia-cuda-runtime==13.0.96",
    "nvidia-cuda-cccl==13.0.85",
    "nvidia-cublas==13.0.2.14",
    "nvidia-curand==10.4.0.35",
    "nvidia-cuda-nvrtc==13.0.88",
];

fn home_cache() -> PathBuf {
    std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/tmp"))
        .join(".cache/celeb-transfer")
}

fn nvcc_on_path() -> Option<PathBuf> {
    if let Some(h) = std::env::var_os("CUDA_HOME") {
        let p = PathBuf::from(h);
        if p.join("bin/nvcc").exists() {
            return Some(p);
        }
    }
    let out = Command::new("sh")
        .args(["-c", "command -v nvcc"])
        .output()
        .ok()?;
    let nvcc = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
    nvcc.parent()?
        .parent()
        .map(Path::to_path_buf)
        .filter(|_| out.status.success())
}

/// Installs the wheels into the cache and returns the CUDA_HOME they form.
fn cuda_from_wheels() -> Result<PathBuf> {
    let target = home_cache().join("cuda13-wheels");
    let home = target.join("nvidia/cu13");
    if !home.join("bin/nvcc").exists() {
        eprintln!(
            "nvcc not found: installing PyPI's CUDA 13.0 wheels into {}",
            target.display()
        );
        run(Command::new("python3").args(["-m", "pip", "install", "--quiet", "--no-deps", "--target"]).arg(&target).args(WHEELS))
            .context("pip could not install the CUDA 13.0 wheels; install a CUDA toolkit (nvcc) and set CUDA_HOME instead")?;
    }
    if !home.join("bin/nvcc").exists() {
        bail!(
            "the CUDA wheels did not provide {}",
            home.join("bin/nvcc").display()
        );
    }
    // The wheels ship versioned sonames only: add the unversioned names the linker wants.
    let lib = home.join("lib");
    for entry in std::fs::read_dir(&lib)?.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if let Some(pos) = name.find(".so.") {
            let plain = lib.join(&name[..pos + 3]);
            if !plain.exists() {
                std::os::unix::fs::symlink(entry.path(), &plain)?;
            }
        }
    }
    Ok(home)
}

pub fn check(args: &[String]) -> Result<()> {
    let home = match nvcc_on_path() {
        Some(h) => h,
        None => cuda_from_wheels()?,
    };
    let target_dir = std::env::var_os("CUDA_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| home_cache().join("cuda-target"));
    let path = format!(
        "{}:{}",
        home.join("bin").display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let mut cmd = cargo();
    cmd.args(["build", "--release", "--workspace", "--features"])
        .arg("preprocess/cuda,inception-bottleneck/cuda,train/cuda,eval-tsne/cuda,model/cuda,losses/cuda,artifacts/cuda")
        .arg("--target-dir")
        .arg(&target_dir)
        .env("CUDA_HOME", &home)
        .env("CUDA_PATH", &home)
        .env("CUDA_ROOT", &home)
        .env("NVCC", home.join("bin/nvcc"))
        .env("PATH", path)
        .env("CUDA_COMPUTE_CAP", std::env::var("CUDA_COMPUTE_CAP").unwrap_or_else(|_| "90".into()))
        .env("LIBRARY_PATH", format!("{}:{}", home.join("lib").display(), home.join("lib/stubs").display()))
        .args(args);
    run(&mut cmd).context("the CUDA build failed")?;
    println!(
        "check-cuda: the workspace builds with --features cuda (binaries in {}/release)",
        target_dir.display()
    );
    Ok(())
}
