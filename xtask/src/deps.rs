//! The Debian packages the pipeline needs, and how to get them.

use crate::util::{is_root, run, Exit};
use anyhow::Result;
use std::path::Path;
use std::process::Command;

/// (file or check, Debian package, why).
const NEEDS: &[(&str, &str, &str)] = &[
    (
        "/usr/share/opencv4/haarcascades/haarcascade_frontalface_default.xml",
        "opencv-data",
        "face detection cascade",
    ),
    (
        "/usr/share/dlib/shape_predictor_68_face_landmarks.dat",
        "libdlib-data",
        "68-landmark model",
    ),
    (
        "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
        "fonts-dejavu-core",
        "plot font",
    ),
    (
        "pkg-config:opencv4",
        "libopencv-dev",
        "OpenCV headers and libraries (build)",
    ),
    (
        "/usr/lib/llvm-14/lib/libclang.so.1",
        "libclang-dev",
        "libclang for the OpenCV bindings (build)",
    ),
    (
        "bin:clang",
        "clang",
        "C++ compiler for the OpenCV bindings (build)",
    ),
];

fn present(check: &str) -> bool {
    if let Some(pc) = check.strip_prefix("pkg-config:") {
        return Command::new("pkg-config")
            .args(["--exists", pc])
            .status()
            .map(|s| s.success())
            .unwrap_or(false);
    }
    if let Some(bin) = check.strip_prefix("bin:") {
        return Command::new("sh")
            .args(["-c", &format!("command -v {bin}")])
            .output()
            .map(|o| o.status.success())
            .unwrap_or(false);
    }
    if check.contains("libclang") {
        // Any libclang will do.
        return Command::new("sh")
            .args(["-c", "ls /usr/lib/llvm-*/lib/libclang*.so* /usr/lib/x86_64-linux-gnu/libclang*.so* 2>/dev/null | head -1 | grep -q ."])
            .status()
            .map(|s| s.success())
            .unwrap_or(false);
    }
    Path::new(check).exists()
}

/// Checks the packages; installs them when root and `install` is set, else prints the
/// exact command and fails with exit code 2.
pub fn ensure(install: bool) -> Result<()> {
    let missing: Vec<&(&str, &str, &str)> = NEEDS.iter().filter(|(c, _, _)| !present(c)).collect();
    if missing.is_empty() {
        return Ok(());
    }
    let mut pkgs: Vec<&str> = missing.iter().map(|m| m.1).collect();
    pkgs.dedup();
    for (check, pkg, why) in &missing {
        eprintln!("missing {why} ({check}): Debian package {pkg}");
    }
    let cmd = format!("apt-get update && apt-get install -y {}", pkgs.join(" "));
    if install && is_root() {
        run(Command::new("sh")
            .args(["-c", &cmd])
            .env("DEBIAN_FRONTEND", "noninteractive"))?;
        return Ok(());
    }
    eprintln!("run:\n  sudo sh -c '{cmd}'\nor, as root, pass --install-deps");
    Err(Exit(2).into())
}
