//! Hermetic: a photo with two faces, both found and each named. The faces are painted by
//! the test (OpenCV's frontal cascade and dlib's 68-point model take a drawn face with
//! eyes, brows, nose and mouth), two "people" told apart by skin, hair and eye colours; a
//! student is trained on their portraits with the real preprocessing (Haar detector, 68
//! landmarks, alignment, mask), then `predict` reads a photo holding one of each.
//! Needs the Debian packages `opencv-data` and `libdlib-data` (installed by `cargo xtask
//! deps --install`), not ../shared.

use image::{Rgb, RgbImage};
use std::path::{Path, PathBuf};
use test_support::measure::open;
use test_support::training::train_short;

struct Person {
    skin: [u8; 3],
    hair: [u8; 3],
    iris: [u8; 3],
}

const PEOPLE: [(&str, Person); 2] = [
    (
        "ann",
        Person {
            skin: [225, 190, 160],
            hair: [60, 40, 30],
            iris: [40, 30, 30],
        },
    ),
    (
        "bob",
        Person {
            skin: [200, 165, 150],
            hair: [110, 55, 30],
            iris: [30, 60, 130],
        },
    ),
];

fn inside_ellipse(x: f32, y: f32, cx: f32, cy: f32, rx: f32, ry: f32) -> bool {
    let (dx, dy) = ((x - cx) / rx, (y - cy) / ry);
    dx * dx + dy * dy <= 1.0
}

/// A frontal face of side `s` centred at (cx, cy).
fn paint_face(img: &mut RgbImage, p: &Person, cx: f32, cy: f32, s: f32) {
    let (w, h) = img.dimensions();
    for y in 0..h {
        for x in 0..w {
            let (fx, fy) = (x as f32 + 0.5, y as f32 + 0.5);
            let (u, v) = ((fx - cx) / s, (fy - cy) / s);
            let mut c = None;
            if inside_ellipse(u, v, 0.0, 0.0, 0.5, 0.65) {
                c = Some(p.skin);
            }
            if inside_ellipse(u, v, 0.0, -0.45, 0.55, 0.35) && v < -0.45 {
                c = Some(p.hair);
            }
            for ex in [-0.2f32, 0.2] {
                if (u - ex).abs() <= 0.13 && (-0.22..=-0.18).contains(&v) {
                    c = Some(p.hair);
                }
                if inside_ellipse(u, v, ex, -0.07, 0.11, 0.05) {
                    c = Some([255, 255, 255]);
                }
                if inside_ellipse(u, v, ex, -0.07, 0.05, 0.04) {
                    c = Some(p.iris);
                }
            }
            // The nose: a darker triangle below the eyes.
            if (-0.02..=0.2).contains(&v) && u.abs() <= 0.07 * (v + 0.02) / 0.22 {
                c = Some(p.skin.map(|k| (k as f32 * 0.88) as u8));
            }
            if inside_ellipse(u, v, 0.0, 0.35, 0.17, 0.05) {
                c = Some([150, 60, 60]);
            }
            if let Some(c) = c {
                img.put_pixel(x, y, Rgb(c));
            }
        }
    }
}

fn portrait(path: &Path, p: &Person, i: u32) {
    let bg = [120 - (i % 3) as u8 * 25; 3];
    let mut img = RgbImage::from_pixel(300, 300, Rgb(bg));
    let (dx, dy, ds) = (
        (i % 5) as f32 * 4.0 - 8.0,
        (i % 4) as f32 * 4.0 - 6.0,
        (i % 3) as f32 * 8.0,
    );
    paint_face(&mut img, p, 150.0 + dx, 160.0 + dy, 150.0 + ds);
    img.save(path).unwrap();
}

fn need(path: &str, package: &str) {
    assert!(
        Path::new(path).exists(),
        "{path} missing: install the Debian package {package} (cargo xtask deps --install)"
    );
}

#[test]
fn a_photo_with_two_painted_faces_gets_both_named() {
    let cfg = preprocess::PreprocessConfig {
        detector: preprocess::detect::DetectorConfig {
            kind: preprocess::detect::DetectorKind::Haar,
            ..Default::default()
        },
        device: kernels::device::DeviceChoice::Cpu,
        ..Default::default()
    };
    need(&cfg.detector.cascade.display().to_string(), "opencv-data");
    need(&cfg.landmarks.display().to_string(), "libdlib-data");
    let dir = tempfile::tempdir().unwrap();
    let photos = dir.path().join("photos");
    for (name, p) in &PEOPLE {
        std::fs::create_dir_all(photos.join(name)).unwrap();
        for i in 0..16 {
            portrait(&photos.join(name).join(format!("{i}.png")), p, i);
        }
    }
    let faces = dir.path().join("faces.safetensors");
    let summary = preprocess::run(&photos, &faces, &cfg).unwrap();
    // The cascade takes most of them (21 of 32 here), both people well represented.
    assert!(
        summary.faces >= 16 && summary.per_class.values().all(|&n| n >= 6),
        "the cascade took {:?} of 16 painted portraits each",
        summary.per_class
    );
    let model = train_short(&faces, None, (train::TrainMode::Base, 8, 8), dir.path());

    // Ann on the left, Bob on the right, in one photo: two of the portraits side by side.
    let mut both = RgbImage::new(600, 300);
    for (k, (name, _)) in PEOPLE.iter().enumerate() {
        let one = image::open(photos.join(name).join("0.png"))
            .unwrap()
            .to_rgb8();
        image::imageops::replace(&mut both, &one, 300 * k as i64, 0);
    }
    let two = dir.path().join("two.png");
    both.save(&two).unwrap();
    let m = open(
        &model,
        predict::UnknownRule::Off,
        preprocess::FaceSearch::Every,
    );
    let photos: Vec<PathBuf> = vec![two];
    let (res, _) = predict::predict_photos(&m, &photos, |_, _, _| Ok(())).unwrap();
    let f = &res[0].faces;
    assert_eq!(f.len(), 2, "{f:?}");
    assert!(
        f[0].rect[0] < 300.0 && f[1].rect[0] >= 300.0,
        "left to right: {f:?}"
    );
    let named: Vec<_> = f
        .iter()
        .map(|x| x.person.clone().unwrap_or_default())
        .collect();
    assert_eq!(named, ["ann", "bob"], "{f:?}");
    // Only the main face with --main-face.
    let m = open(
        &model,
        predict::UnknownRule::Off,
        preprocess::FaceSearch::Main,
    );
    let (res, _) = predict::predict_photos(&m, &photos, |_, _, _| Ok(())).unwrap();
    assert_eq!(res[0].faces.len(), 1, "{:?}", res[0].faces);
}
