//! Bad input never panics and never loses work: each case becomes a recorded reject.
//! Runs in `--as-is` mode so it needs no system data files.

use preprocess::Mode;
use preprocess::{run, PreprocessConfig};
use std::path::Path;

fn png(path: &Path, w: u32, h: u32, seed: u8) {
    let img = image::RgbImage::from_fn(w, h, |x, y| {
        image::Rgb([(x as u8).wrapping_mul(seed), y as u8, seed])
    });
    img.save(path).unwrap();
}

fn cfg() -> PreprocessConfig {
    PreprocessConfig {
        mode: Mode::AsIs,
        size: 48,
        mask: false,
        landmarks: "/nonexistent/model.dat".into(),
        ..Default::default()
    }
}

fn rejects(out: &Path) -> Vec<(String, String)> {
    let j: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(out.parent().unwrap().join("rejects.json")).unwrap(),
    )
    .unwrap();
    j["rejects"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["path"].as_str().unwrap().to_string(),
                r["reason"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

#[test]
fn each_bad_file_is_a_reject_with_its_reason() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("raw");
    let a = root.join("alice");
    let b = root.join("bob");
    std::fs::create_dir_all(&a).unwrap();
    std::fs::create_dir_all(&b).unwrap();
    for i in 0..6 {
        png(&a.join(format!("ok{i}.png")), 64, 80, i + 1);
        png(&b.join(format!("ok{i}.png")), 90, 60, i + 7);
    }
    // Grey, 16-bit and alpha images are converted, not rejected.
    image::GrayImage::from_pixel(50, 50, image::Luma([90]))
        .save(a.join("grey.png"))
        .unwrap();
    image::ImageBuffer::<image::Rgba<u16>, _>::from_pixel(
        40,
        40,
        image::Rgba([60000, 100, 5, 30000]),
    )
    .save(a.join("deep.png"))
    .unwrap();
    std::fs::write(a.join("zero.jpg"), b"").unwrap();
    let full = std::fs::read(a.join("ok0.png")).unwrap();
    std::fs::write(a.join("truncated.png"), &full[..full.len() / 2]).unwrap();
    // A JPEG cut off in its scan: the decoder would fill the rest with grey silently.
    let jpeg_path = a.join("whole.jpg");
    image::RgbImage::from_fn(64, 64, |x, y| {
        image::Rgb([(x * 4) as u8, (y * 4) as u8, 99])
    })
    .save(&jpeg_path)
    .unwrap();
    let jpeg = std::fs::read(&jpeg_path).unwrap();
    std::fs::remove_file(&jpeg_path).unwrap();
    std::fs::write(a.join("cut.jpg"), &jpeg[..jpeg.len() * 3 / 4]).unwrap();
    std::fs::write(a.join("notes.txt"), b"not a photo at all").unwrap();
    png(&a.join("tiny.png"), 8, 8, 3);
    std::fs::write(root.join("stray.jpg"), &full).unwrap();
    std::fs::create_dir_all(b.join("nested")).unwrap();
    #[cfg(unix)]
    {
        use std::os::unix::ffi::OsStrExt;
        let name = std::ffi::OsStr::from_bytes(b"bad-\xff-name.png");
        std::fs::write(b.join(name), &full).unwrap();
        // A symlink loop: loop -> loop.
        std::os::unix::fs::symlink(b.join("loop.png"), b.join("loop.png")).unwrap();
        std::os::unix::fs::symlink(root.join("cycle"), root.join("cycle")).unwrap();
    }
    let out = dir.path().join("art/faces.safetensors");
    let s = run(&root, &out, &cfg()).unwrap();
    // 12 plain + grey + 16-bit, and on unix the photo whose name is not UTF-8.
    let want = if cfg!(unix) { 15 } else { 14 };
    assert_eq!(s.faces, want);
    let faces = artifacts::Faces::read(&out).unwrap();
    assert_eq!(faces.len(), want);
    assert_eq!(faces.class_names, vec!["alice", "bob"]);
    assert_eq!((faces.height, faces.width), (48, 48));
    let r = rejects(&out);
    let reason = |needle: &str| {
        r.iter()
            .find(|(p, _)| p.contains(needle))
            .unwrap_or_else(|| panic!("no reject for {needle}: {r:?}"))
            .1
            .clone()
    };
    assert!(reason("zero.jpg").contains("empty"));
    assert!(
        reason("truncated.png").contains("corrupt"),
        "{}",
        reason("truncated.png")
    );
    assert!(
        reason("cut.jpg").contains("truncated file"),
        "{}",
        reason("cut.jpg")
    );
    assert!(reason("notes.txt").contains("not an image"));
    assert!(reason("tiny.png").contains("too small"));
    assert!(reason("stray.jpg").contains("class folder"));
    assert!(reason("nested").contains("nested"));
    #[cfg(unix)]
    {
        assert!(
            faces
                .sources
                .iter()
                .any(|s| s == "bob/bad-\u{fffd}-name.png"),
            "{:?}",
            faces.sources
        );
        assert!(reason("loop.png").contains("unreadable"));
        assert!(reason("cycle").contains("unreadable"));
    }
    assert_eq!(s.rejected, r.len());
}

#[test]
fn missing_or_empty_input_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("faces.safetensors");
    let e = run(&dir.path().join("nope"), &out, &cfg()).unwrap_err();
    assert!(e.to_string().contains("does not exist"), "{e}");
    std::fs::create_dir_all(dir.path().join("empty/class")).unwrap();
    let e = run(&dir.path().join("empty"), &out, &cfg()).unwrap_err();
    assert!(e.to_string().contains("no images"), "{e}");
    assert!(!out.exists(), "no artifact from a failed run");
}

#[test]
fn a_failed_rerun_keeps_the_previous_artifact() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("raw/c");
    std::fs::create_dir_all(&root).unwrap();
    for i in 0..3 {
        png(&root.join(format!("{i}.png")), 50, 50, i + 1);
    }
    let out = dir.path().join("faces.safetensors");
    run(&dir.path().join("raw"), &out, &cfg()).unwrap();
    let before = std::fs::read(&out).unwrap();
    // Now every file is bad: the run fails, the earlier artifact stays whole.
    for i in 0..3 {
        std::fs::write(root.join(format!("{i}.png")), b"garbage").unwrap();
    }
    assert!(run(&dir.path().join("raw"), &out, &cfg()).is_err());
    assert_eq!(std::fs::read(&out).unwrap(), before);
}

#[test]
fn split_file_assigns_the_published_split() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("raw");
    for c in ["m.1", "m.2"] {
        std::fs::create_dir_all(root.join(c)).unwrap();
        for i in 0..3 {
            png(&root.join(c).join(format!("{i}.jpg.png")), 40, 40, i + 1);
        }
    }
    let csv = dir.path().join("split.csv");
    std::fs::write(&csv, "entity,image,split\nm.1,0.jpg.png,test\nm.1,1.jpg.png,train\nm.1,2.jpg.png,train\nm.2,0.jpg.png,train\nm.2,1.jpg.png,test\n").unwrap();
    let out = dir.path().join("faces.safetensors");
    let s = run(
        &root,
        &out,
        &PreprocessConfig {
            split_file: Some(csv),
            ..cfg()
        },
    )
    .unwrap();
    assert_eq!(s.faces, 5, "m.2/2 is not in the split file");
    let f = artifacts::Faces::read(&out).unwrap();
    let test: Vec<&str> = (0..f.len())
        .filter(|&i| f.splits[i] == artifacts::Split::Test)
        .map(|i| f.sources[i].as_str())
        .collect();
    assert_eq!(test, vec!["m.1/0.jpg.png", "m.2/1.jpg.png"]);
    assert!(rejects(&out)
        .iter()
        .any(|(p, r)| p.ends_with("m.2/2.jpg.png") && r.contains("split file")));
}
