//! `cargo xtask check-cuda`: type-checks the workspace with `--features cuda` (candle's
//! kernels compiled by nvcc included) so the GPU path never rots, on machines without a
//! GPU; `--build` links release binaries for a GPU machine. nvcc comes from
//! PATH/`CUDA_HOME`, or from PyPI's CUDA 13.0 wheels (the CUDA 12 wheels carry no nvcc).

use crate::util::{cargo, run};
use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};
use std::process::Command;

/// Pinned CUDA 13.0 wheels: the compiler and headers candle's kernels need...
const COMPILER_WHEELS: &[&str] = &[
    "nvidia-cuda-nvcc==13.0.88",
    "nvidia-cuda-crt==13.0.88",
    "nvidia-nvvm==13.0.88",
    "nvidia-cuda-runtime==13.0.96",
    "nvidia-cuda-cccl==13.0.85",
];
/// ...and the libraries linked binaries need (cuBLAS alone is ~0.5 GB: `--build` only).
const LINK_WHEELS: &[&str] = &[
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
fn cuda_from_wheels(link: bool) -> Result<PathBuf> {
    let target = home_cache().join("cuda13-wheels");
    let home = target.join("nvidia/cu13");
    let has_lib = |stem: &str| {
        std::fs::read_dir(home.join("lib"))
            .map(|d| {
                d.flatten()
                    .any(|e| e.file_name().to_string_lossy().starts_with(stem))
            })
            .unwrap_or(false)
    };
    let mut wheels: Vec<&str> = Vec::new();
    if !home.join("bin/nvcc").exists() {
        wheels.extend(COMPILER_WHEELS);
    }
    if link && !has_lib("libcublas.so") {
        wheels.extend(LINK_WHEELS);
    }
    if !wheels.is_empty() {
        eprintln!(
            "installing PyPI's CUDA 13.0 wheels ({}) into {}",
            wheels.join(" "),
            target.display()
        );
        run(Command::new("python3").args(["-m", "pip", "install", "--quiet", "--no-deps", "--target"]).arg(&target).args(&wheels))
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

/// `libcuda.so` comes with the GPU driver, which a build machine lacks. Some crates link
/// `-lcuda`, so a link-only stub (soname `libcuda.so.1`) exporting the driver API names
/// cudarc declares stands in; at run time the driver's real library is loaded.
fn ensure_libcuda_stub(home: &Path) -> Result<Option<PathBuf>> {
    let have_real = [
        "lib/libcuda.so",
        "lib64/libcuda.so",
        "lib/stubs/libcuda.so",
        "lib64/stubs/libcuda.so",
    ]
    .iter()
    .any(|p| home.join(p).exists())
        || Path::new("/usr/lib/x86_64-linux-gnu/libcuda.so").exists();
    if have_real {
        return Ok(None);
    }
    let stubs = home_cache().join("libcuda-stub");
    let lib = stubs.join("libcuda.so");
    if lib.exists() {
        return Ok(Some(stubs));
    }
    // Driver API names from cudarc's bindings in the cargo registry.
    let registry = std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(std::env::var("HOME").unwrap_or_default()).join(".cargo"))
        .join("registry/src");
    run(cargo().args(["fetch", "--quiet"]))?;
    let mut names = std::collections::BTreeSet::new();
    for index in std::fs::read_dir(&registry)?.flatten() {
        for krate in std::fs::read_dir(index.path())?.flatten() {
            if !krate.file_name().to_string_lossy().starts_with("cudarc-") {
                continue;
            }
            let Ok(text) = std::fs::read_to_string(krate.path().join("src/driver/sys/mod.rs"))
            else {
                continue;
            };
            let bytes = text.as_bytes();
            for (i, _) in text.match_indices("cu") {
                let before_ok =
                    i == 0 || !(bytes[i - 1].is_ascii_alphanumeric() || bytes[i - 1] == b'_');
                if !before_ok || !bytes.get(i + 2).is_some_and(|b| b.is_ascii_uppercase()) {
                    continue;
                }
                let end = text[i..]
                    .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                    .map(|e| i + e)
                    .unwrap_or(text.len());
                names.insert(text[i..end].to_string());
            }
        }
    }
    if names.is_empty() {
        bail!(
            "no cudarc sources in {} to make a libcuda stub from",
            registry.display()
        );
    }
    std::fs::create_dir_all(&stubs)?;
    let c: String = names
        .iter()
        .map(|n| format!("void {n}(void) {{}}\n"))
        .collect();
    let src = stubs.join("libcuda_stub.c");
    std::fs::write(&src, c)?;
    run(Command::new("cc")
        .args(["-shared", "-fPIC", "-Wl,-soname,libcuda.so.1", "-o"])
        .arg(&lib)
        .arg(&src))?;
    Ok(Some(stubs))
}

pub fn check(args: &[String]) -> Result<()> {
    let build = args.iter().any(|a| a == "--build");
    let args: Vec<&String> = args.iter().filter(|a| *a != "--build").collect();
    let home = match nvcc_on_path() {
        Some(h) => h,
        None => cuda_from_wheels(build)?,
    };
    let stub = if build {
        ensure_libcuda_stub(&home)?
    } else {
        None
    };
    // A check shares the workspace's target dir (and so opencv's generated bindings, the
    // slowest build script, with the CPU build); binaries go to their own persistent dir.
    let target_dir = if build {
        std::env::var_os("CUDA_TARGET_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| home_cache().join("cuda-target"))
    } else {
        PathBuf::from("target")
    };
    let path = format!(
        "{}:{}",
        home.join("bin").display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let mut cmd = cargo();
    cmd.args([
        if build { "build" } else { "check" },
        "--release",
        "--workspace",
        "--features",
    ])
        .arg("preprocess/cuda,inception-bottleneck/cuda,train/cuda,eval-tsne/cuda,predict/cuda,model/cuda,losses/cuda,kernels/cuda,dlib-dnn/cuda")
        .arg("--target-dir")
        .arg(&target_dir)
        .env("CUDA_HOME", &home)
        .env("CUDA_PATH", &home)
        .env("CUDA_ROOT", &home)
        .env("NVCC", home.join("bin/nvcc"))
        .env("PATH", path)
        .env("CUDA_COMPUTE_CAP", std::env::var("CUDA_COMPUTE_CAP").unwrap_or_else(|_| "90".into()))
        // A check needs candle's kernels to compile, not to be fast: unoptimised device code
        // halves nvcc's time (57 s -> 26 s for one of its GGUF matmul files, measured).
        .env(
            "NVCC_APPEND_FLAGS",
            std::env::var("NVCC_APPEND_FLAGS").unwrap_or_else(|_| {
                if build { String::new() } else { "-Xcicc -O0 -Xptxas -O0".into() }
            }),
        )
        .env(
            "LIBRARY_PATH",
            format!(
                "{}:{}{}",
                home.join("lib").display(),
                home.join("lib/stubs").display(),
                stub.map(|s| format!(":{}", s.display())).unwrap_or_default()
            ),
        )
        .args(args);
    run(&mut cmd).context("the CUDA build failed")?;
    if build {
        println!(
            "check-cuda: the workspace builds with --features cuda (binaries in {}/release)",
            target_dir.display()
        );
    } else {
        println!(
            "check-cuda: the workspace type-checks with --features cuda (kernels compiled by nvcc)"
        );
    }
    Ok(())
}
