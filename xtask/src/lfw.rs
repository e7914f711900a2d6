//! The public benchmark offered when `data/raw` is missing: Labeled Faces in the Wild,
//! the people with at least 20 photos (62 people, 3023 photos), one folder each.
//!
//! `curl` fetches the archive (official site first, then the figshare mirror that
//! scikit-learn uses; the bytes are the same), streamed through SHA-256 under a progress
//! bar; `tar` unpacks it. Both are in every Debian install, which keeps xtask free of an
//! HTTP and TLS stack. Nothing lands in the data folder until the archive is verified and
//! the subset is complete (built beside it, then renamed into place).

use anyhow::{bail, Context, Result};
use sha2::{Digest, Sha256};
use std::io::{BufRead, IsTerminal, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// `lfw.tgz`, as published by the LFW authors (UMass) and mirrored by scikit-learn.
pub const URLS: &[&str] = &[
    "http://vis-www.cs.umass.edu/lfw/lfw.tgz",
    "https://ndownloader.figshare.com/files/5976018",
];
pub const SHA256: &str = "055f7d9c632d7370e6fb4afc7468d40f970c34a80d4c6f50ffec63f5a8d536c0";
pub const BYTES: u64 = 180_566_744;
/// Fewer photos than this and a person is left out (the usual LFW identification subset).
pub const MIN_PHOTOS: usize = 20;

/// Whether a host answers on its port within a few seconds (DNS included).
pub fn reachable(host: &str, port: u16) -> bool {
    use std::net::{TcpStream, ToSocketAddrs};
    let Ok(addrs) = (host, port).to_socket_addrs() else {
        return false;
    };
    addrs
        .take(2)
        .any(|a| TcpStream::connect_timeout(&a, std::time::Duration::from_secs(4)).is_ok())
}

pub fn online() -> bool {
    reachable("vis-www.cs.umass.edu", 80) || reachable("ndownloader.figshare.com", 443)
}

/// Called when the data folder is missing. Returns true when LFW was put there.
/// `assume_yes` is `--download-lfw`; otherwise a terminal user is asked.
pub fn offer(data: &Path, assume_yes: bool) -> Result<bool> {
    if !online() {
        if assume_yes {
            bail!("--download-lfw: neither vis-www.cs.umass.edu nor ndownloader.figshare.com can be reached (offline?)");
        }
        eprintln!("(offline: the public benchmark, LFW, cannot be offered for download)");
        return Ok(false);
    }
    if !assume_yes {
        if !std::io::stdin().is_terminal() {
            eprintln!(
                "{} is missing. To use the public benchmark instead (Labeled Faces in the Wild, people with at least {MIN_PHOTOS} photos, {} MB), run again with --download-lfw",
                data.display(),
                BYTES / 1_000_000
            );
            return Ok(false);
        }
        eprint!(
            "{} is missing. Download Labeled Faces in the Wild ({} MB, people with at least {MIN_PHOTOS} photos) into it? [y/N] ",
            data.display(),
            BYTES / 1_000_000
        );
        std::io::stderr().flush()?;
        let mut answer = String::new();
        std::io::stdin().lock().read_line(&mut answer)?;
        if !matches!(answer.trim(), "y" | "Y" | "yes") {
            return Ok(false);
        }
    }
    install(data)?;
    Ok(true)
}

/// Downloads (or reuses a verified) `lfw.tgz` next to `data`, unpacks, keeps the subset.
pub fn install(data: &Path) -> Result<()> {
    install_from(data, &Source::lfw())
}

/// Where an archive comes from and what it must hash to.
pub struct Source {
    pub urls: Vec<String>,
    pub sha256: String,
    pub bytes: u64,
    /// Folder inside the archive holding one folder per person.
    pub root: String,
    pub min_photos: usize,
}

impl Source {
    pub fn lfw() -> Source {
        Source {
            urls: URLS.iter().map(|u| u.to_string()).collect(),
            sha256: SHA256.into(),
            bytes: BYTES,
            root: "lfw".into(),
            min_photos: MIN_PHOTOS,
        }
    }
}

pub fn install_from(data: &Path, src: &Source) -> Result<()> {
    let parent = data
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    std::fs::create_dir_all(parent)?;
    let archive = parent.join("lfw.tgz");
    if !(archive.exists() && sha256_file(&archive)? == src.sha256) {
        download(&archive, src)?;
    }
    let unpack = parent.join(".lfw-unpack");
    let _ = std::fs::remove_dir_all(&unpack);
    std::fs::create_dir_all(&unpack)?;
    crate::util::run(
        Command::new("tar")
            .arg("-xzf")
            .arg(&archive)
            .arg("-C")
            .arg(&unpack),
    )
    .context("unpacking lfw.tgz")?;
    let staged = parent.join(".lfw-subset");
    let _ = std::fs::remove_dir_all(&staged);
    let (people, photos) = keep_people(&unpack.join(&src.root), &staged, src.min_photos)?;
    std::fs::rename(&staged, data)
        .with_context(|| format!("moving the subset to {}", data.display()))?;
    std::fs::remove_dir_all(&unpack)?;
    eprintln!(
        "LFW: {people} people with at least {} photos, {photos} photos in {} (archive kept at {})",
        src.min_photos,
        data.display(),
        archive.display()
    );
    Ok(())
}

/// Streams the first URL that works through SHA-256 into `archive` (via a temp file).
fn download(archive: &Path, src: &Source) -> Result<()> {
    let tmp = archive.with_extension("tgz.part");
    let mut last = String::new();
    for url in &src.urls {
        match fetch(url, &tmp, src.bytes, "LFW") {
            Ok(digest) if digest == src.sha256 => {
                std::fs::rename(&tmp, archive)?;
                return Ok(());
            }
            Ok(digest) => last = format!("{url}: checksum {digest}, expected {}", src.sha256),
            Err(e) => last = format!("{url}: {e:#}"),
        }
        let _ = std::fs::remove_file(&tmp);
    }
    bail!("could not download LFW ({last}); fetch lfw.tgz yourself and unpack the people you want into one folder each, then pass --data")
}

/// `curl` to a pipe, hashed and written as it arrives; returns the hex SHA-256.
pub fn fetch(url: &str, to: &Path, bytes: u64, label: &str) -> Result<String> {
    let mut child = Command::new("curl")
        .args(["-fsSL", "--retry", "2", url])
        .stdout(Stdio::piped())
        .spawn()
        .context("cannot start curl (apt-get install curl)")?;
    let mut body = child.stdout.take().context("curl stdout")?;
    let mut file = std::fs::File::create(to)?;
    let bar = indicatif::ProgressBar::new(bytes).with_style(
        indicatif::ProgressStyle::with_template(&format!(
            "{label} {{bar:40}} {{bytes}}/{{total_bytes}} {{bytes_per_sec}} eta {{eta}}"
        ))
        .expect("valid template"),
    );
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = body.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        file.write_all(&buf[..n])?;
        bar.inc(n as u64);
    }
    bar.finish_and_clear();
    file.sync_all()?;
    let status = child.wait()?;
    if !status.success() {
        bail!("curl failed ({status})");
    }
    Ok(hex(&hasher.finalize()))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

pub fn sha256_file(path: &Path) -> Result<String> {
    let mut f = std::fs::File::open(path)?;
    let mut hasher = Sha256::new();
    std::io::copy(&mut f, &mut hasher)?;
    Ok(hex(&hasher.finalize()))
}

/// Moves every `<person>/` of `from` holding at least `min` JPEGs to `to/<person>/`.
/// Returns (people, photos) kept; an empty result is an error (wrong archive layout).
pub fn keep_people(from: &Path, to: &Path, min: usize) -> Result<(usize, usize)> {
    let mut people: Vec<(PathBuf, usize)> = Vec::new();
    for entry in std::fs::read_dir(from).with_context(|| format!("{}", from.display()))? {
        let path = entry?.path();
        if !path.is_dir() {
            continue;
        }
        let photos = std::fs::read_dir(&path)?
            .filter_map(|e| e.ok())
            .filter(|e| {
                let name = e.file_name().to_string_lossy().to_lowercase();
                name.ends_with(".jpg") || name.ends_with(".jpeg")
            })
            .count();
        if photos >= min {
            people.push((path, photos));
        }
    }
    if people.is_empty() {
        bail!("{}: no folder with at least {min} photos", from.display());
    }
    std::fs::create_dir_all(to)?;
    let mut total = 0;
    for (path, photos) in &people {
        let name = path.file_name().context("folder name")?;
        std::fs::rename(path, to.join(name))?;
        total += photos;
    }
    Ok((people.len(), total))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_only_people_with_enough_photos() {
        let dir = tempfile::tempdir().unwrap();
        let from = dir.path().join("lfw");
        for (person, n) in [("Ann_A", 3), ("Bob_B", 1), ("Cid_C", 2)] {
            std::fs::create_dir_all(from.join(person)).unwrap();
            for i in 0..n {
                std::fs::write(from.join(person).join(format!("{person}_{i:04}.jpg")), b"x")
                    .unwrap();
            }
        }
        std::fs::write(from.join("Ann_A/notes.txt"), b"not a photo").unwrap();
        let to = dir.path().join("raw");
        assert_eq!(keep_people(&from, &to, 2).unwrap(), (2, 5));
        assert!(to.join("Ann_A/Ann_A_0002.jpg").exists());
        assert!(to.join("Cid_C").is_dir());
        assert!(!to.join("Bob_B").exists());
        assert!(keep_people(&from, &dir.path().join("none"), 2).is_err());
    }

    /// The whole path (fetch through curl, verify, unpack, keep the subset, rename) on a
    /// small archive served from a file:// URL; a wrong checksum leaves nothing behind.
    #[test]
    fn installs_a_verified_archive() {
        let dir = tempfile::tempdir().unwrap();
        let src_dir = dir.path().join("src");
        for (person, n) in [("Ann_A", 2), ("Bob_B", 1)] {
            std::fs::create_dir_all(src_dir.join("lfw").join(person)).unwrap();
            for i in 0..n {
                std::fs::write(src_dir.join(format!("lfw/{person}/{i}.jpg")), b"x").unwrap();
            }
        }
        let tgz = dir.path().join("fake.tgz");
        let ok = Command::new("tar")
            .arg("-czf")
            .arg(&tgz)
            .arg("-C")
            .arg(&src_dir)
            .arg("lfw")
            .status()
            .unwrap();
        assert!(ok.success());
        let mut src = Source {
            urls: vec![format!("file://{}", tgz.display())],
            sha256: "0".repeat(64),
            bytes: std::fs::metadata(&tgz).unwrap().len(),
            root: "lfw".into(),
            min_photos: 2,
        };
        let data = dir.path().join("data/raw");
        let err = install_from(&data, &src).unwrap_err();
        assert!(format!("{err:#}").contains("checksum"), "{err:#}");
        assert!(!data.exists() && !dir.path().join("data/lfw.tgz").exists());
        src.sha256 = sha256_file(&tgz).unwrap();
        install_from(&data, &src).unwrap();
        assert!(data.join("Ann_A/1.jpg").exists());
        assert!(!data.join("Bob_B").exists());
        assert!(dir.path().join("data/lfw.tgz").exists());
    }

    #[test]
    fn sha256_of_a_file() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("abc");
        std::fs::write(&f, b"abc").unwrap();
        assert_eq!(
            sha256_file(&f).unwrap(),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }
}
