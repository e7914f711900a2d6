//! The Debian packages the project needs, and how to get them: the one list and the one
//! installer, used by `pipeline --install-deps`, `cargo xtask deps` and `.ci/run`.

use crate::util::{is_root, run, Exit};
use anyhow::Result;
use std::path::Path;
use std::process::Command;

/// How a need is checked: what the build or a stage really loads.
enum Check {
    File(&'static str),
    PkgConfig(&'static str),
    Bin(&'static str),
    /// clang-sys loads `libclang.so` or `libclang-<version>.so` (an unversioned name, as
    /// `libclang-dev` installs it); `libclang-14.so.1` alone (from `clang`) is not enough.
    Libclang,
}

/// (check, Debian package, why).
type Need = (Check, &'static str, &'static str);

const NEEDS: &[Need] = &[
    (
        Check::File("/usr/share/opencv4/haarcascades/haarcascade_frontalface_default.xml"),
        "opencv-data",
        "face detection cascade",
    ),
    (
        Check::File("/usr/share/dlib/shape_predictor_68_face_landmarks.dat"),
        "libdlib-data",
        "68-landmark model",
    ),
    (
        Check::File("/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf"),
        "fonts-dejavu-core",
        "plot font",
    ),
    (
        Check::Bin("pkg-config"),
        "pkg-config",
        "finding OpenCV (build)",
    ),
    (
        Check::PkgConfig("opencv4"),
        "libopencv-dev",
        "OpenCV headers and libraries (build)",
    ),
    (
        Check::Libclang,
        "libclang-dev",
        "libclang.so for the OpenCV bindings (build)",
    ),
    (
        Check::Bin("clang"),
        "clang",
        "C++ compiler for the OpenCV bindings (build)",
    ),
    (Check::Bin("curl"), "curl", "downloads (LFW, model files)"),
];

/// An optional group: what `cargo xtask slurm` (a local cluster, CI's Slurm step) needs
/// (#26). `deps --install`, and so `.ci/run`, installs it with the rest; `pipeline` does
/// not need it. The daemons are in /usr/sbin, which a user's PATH may lack.
const SLURM: &[Need] = &[
    (
        Check::Bin("sbatch"),
        "slurm-wlm",
        "Slurm's commands (sbatch, squeue)",
    ),
    (
        Check::File("/usr/sbin/slurmctld"),
        "slurm-wlm",
        "Slurm's controller",
    ),
    (
        Check::File("/usr/sbin/slurmd"),
        "slurm-wlm",
        "Slurm's node daemon",
    ),
    (
        Check::File("/usr/sbin/munged"),
        "munge",
        "Slurm's authentication (munge)",
    ),
];

/// Directories clang-sys searches on Debian/Ubuntu (plus `llvm-config --libdir`).
fn libclang_dirs() -> Vec<String> {
    let mut dirs = Vec::new();
    if let Ok(o) = Command::new("llvm-config").arg("--libdir").output() {
        if o.status.success() {
            dirs.push(String::from_utf8_lossy(&o.stdout).trim().to_string());
        }
    }
    if let Ok(rd) = std::fs::read_dir("/usr/lib") {
        for e in rd.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if name.starts_with("llvm-") {
                dirs.push(format!("/usr/lib/{name}/lib"));
            }
        }
    }
    dirs.push("/usr/lib/x86_64-linux-gnu".into());
    dirs.push("/usr/lib/aarch64-linux-gnu".into());
    dirs
}

/// `libclang.so` or `libclang-<version>.so`: the names clang-sys accepts.
fn loadable_libclang(name: &str) -> bool {
    name == "libclang.so"
        || name
            .strip_prefix("libclang-")
            .and_then(|r| r.strip_suffix(".so"))
            .is_some_and(|v| !v.is_empty() && v.chars().all(|c| c.is_ascii_digit() || c == '.'))
}

fn present(check: &Check) -> bool {
    match check {
        Check::File(f) => Path::new(f).exists(),
        Check::PkgConfig(pc) => Command::new("pkg-config")
            .args(["--exists", pc])
            .status()
            .map(|s| s.success())
            .unwrap_or(false),
        Check::Bin(bin) => Command::new("sh")
            .args(["-c", &format!("command -v {bin}")])
            .output()
            .map(|o| o.status.success())
            .unwrap_or(false),
        Check::Libclang => {
            if let Ok(p) = std::env::var("LIBCLANG_PATH") {
                if Path::new(&p).is_file() || Path::new(&p).join("libclang.so").exists() {
                    return true;
                }
            }
            libclang_dirs().iter().any(|d| {
                std::fs::read_dir(d).is_ok_and(|rd| {
                    rd.flatten()
                        .any(|e| loadable_libclang(&e.file_name().to_string_lossy()))
                })
            })
        }
    }
}

fn describe(check: &Check) -> String {
    match check {
        Check::File(f) => (*f).to_string(),
        Check::PkgConfig(p) => format!("pkg-config {p}"),
        Check::Bin(b) => format!("command {b}"),
        Check::Libclang => "libclang.so".into(),
    }
}

/// The Slurm group's packages whose checks fail.
pub fn slurm_missing() -> Vec<&'static str> {
    missing_in(&[SLURM])
}

/// The packages of `groups` whose checks fail.
fn missing_in(groups: &[&[Need]]) -> Vec<&'static str> {
    let mut pkgs: Vec<&str> = Vec::new();
    for (_, pkg, _) in groups
        .iter()
        .flat_map(|g| g.iter())
        .filter(|(c, _, _)| !present(c))
    {
        if !pkgs.contains(pkg) {
            pkgs.push(pkg);
        }
    }
    pkgs
}

/// Checks the packages; installs them when `install` is set (as root, or through sudo
/// when it is there), else prints the exact command and fails with exit code 2.
pub fn ensure(install: bool) -> Result<()> {
    ensure_groups(&[NEEDS], install)
}

/// The same for the Slurm group (`slurm up`, `--install-deps` there).
pub fn ensure_slurm(install: bool) -> Result<()> {
    ensure_groups(&[SLURM], install)
}

fn ensure_groups(groups: &[&[Need]], install: bool) -> Result<()> {
    let pkgs = missing_in(groups);
    if pkgs.is_empty() {
        return Ok(());
    }
    for (check, pkg, why) in groups
        .iter()
        .flat_map(|g| g.iter())
        .filter(|(c, _, _)| !present(c))
    {
        eprintln!("missing {why} ({}): Debian package {pkg}", describe(check));
    }
    let cmd = format!(
        "apt-get update -qq && apt-get install -y -qq --no-install-recommends {}",
        pkgs.join(" ")
    );
    if install {
        let sudo = !is_root();
        eprintln!("installing: {}", pkgs.join(" "));
        let mut c = if sudo {
            Command::new("sudo")
        } else {
            Command::new("sh")
        };
        if sudo {
            c.args(["sh", "-c", &cmd]);
        } else {
            c.args(["-c", &cmd]);
        }
        run(c.env("DEBIAN_FRONTEND", "noninteractive"))?;
        let still = missing_in(groups);
        if !still.is_empty() {
            anyhow::bail!("still missing after the install: {}", still.join(" "));
        }
        return Ok(());
    }
    eprintln!("run:\n  sudo sh -c '{cmd}'\nor pass --install-deps");
    Err(Exit(2).into())
}

/// `cargo xtask deps [--install]`: the check (and install) on its own, for `.ci/run`;
/// `--install` installs the optional Slurm group too (one apt-get run for everything).
pub fn cli(args: &[String]) -> Result<()> {
    if args.iter().any(|a| a == "--install") {
        ensure_groups(&[NEEDS, SLURM], true)?;
        eprintln!("system packages: all present (the Slurm group too)");
        return Ok(());
    }
    ensure(false)?;
    let optional = slurm_missing();
    if optional.is_empty() {
        eprintln!("system packages: all present (the Slurm group too)");
    } else {
        eprintln!(
            "system packages: all present; optional, for `cargo xtask slurm`: {} (`deps --install` installs them)",
            optional.join(" ")
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::loadable_libclang;

    #[test]
    fn libclang_names_as_clang_sys_loads_them() {
        assert!(loadable_libclang("libclang.so"));
        assert!(loadable_libclang("libclang-14.so"));
        assert!(loadable_libclang("libclang-14.0.6.so"));
        assert!(!loadable_libclang("libclang-14.so.1"));
        assert!(!loadable_libclang("libclang.so.1"));
        assert!(!loadable_libclang("libclang-cpp.so.14"));
        assert!(!loadable_libclang("libclang-.so"));
    }
}
