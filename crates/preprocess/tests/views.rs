//! Views cut from the photos (`preprocess::views`): the unjittered view is exactly the face
//! and chip preprocess stored, a mirrored view is their mirror image, a jittered view moves
//! the face in both pictures. Needs ../shared and Debian's data packages.

use artifacts::Faces;
use preprocess::views::{draw_views, ViewJitter, ViewParams, ViewSource};
use preprocess::{run, PreprocessConfig};

fn mirrored(img: &[u8], side: usize) -> Vec<u8> {
    img.chunks_exact(side * 3)
        .flat_map(|row| row.chunks_exact(3).rev().flatten().copied())
        .collect()
}

fn mean_abs_diff(a: &[u8], b: &[u8]) -> f64 {
    a.iter()
        .zip(b)
        .map(|(x, y)| (*x as f64 - *y as f64).abs())
        .sum::<f64>()
        / a.len() as f64
}

#[test]
#[ignore = "needs ../shared and Debian data packages"]
fn views_are_cut_from_the_photo_like_the_face() {
    let dir = tempfile::tempdir().unwrap();
    let photos = dir.path().join("photos");
    test_support::msceleb_photos(&photos, &["m.01kk_s6", "m.0qfnmpt"], 6);
    let out = dir.path().join("faces.safetensors");
    let mut cfg = PreprocessConfig::default();
    cfg.detector.cnn_model = Some(test_support::cnn_detector_model());
    run(&photos, &out, &cfg).unwrap();
    let faces = Faces::read(&out).unwrap();
    assert!(faces.len() >= 10, "{} faces", faces.len());
    let g = faces.geometry.as_ref().unwrap();
    let source = ViewSource::new(&faces, &photos).unwrap();
    let flip = ViewParams {
        flip: true,
        ..ViewParams::IDENTITY
    };
    let turned = ViewParams {
        angle_deg: 10.0,
        scale: 1.1,
        dx: 6.0,
        ..ViewParams::IDENTITY
    };
    for i in 0..faces.len() {
        let v = source
            .render(i, &[ViewParams::IDENTITY, flip, turned])
            .unwrap();
        assert_eq!(v[0].face, *faces.image(i), "face {i}: view 0 is the face");
        assert_eq!(v[0].chip, *g.chip(i).unwrap(), "face {i}: view 0's chip");
        assert_eq!(v[1].face, mirrored(&faces.image(i), 150));
        assert_eq!(v[1].chip, mirrored(&g.chip(i).unwrap(), 150));
        // A turned view is another picture in both frames, by a similar amount.
        let (df, dc) = (
            mean_abs_diff(&v[2].face, &faces.image(i)),
            mean_abs_diff(&v[2].chip, &g.chip(i).unwrap()),
        );
        assert!(
            df > 3.0 && dc > 3.0,
            "face {i}: turned view differs by {df} / {dc}"
        );
    }
    // The drawn views are the recorded ones: same seed and path, same numbers.
    let j = ViewJitter::default();
    assert_eq!(
        draw_views(&j, 3, &faces.sources[0], 4),
        draw_views(&j, 3, &faces.sources[0], 4)
    );
    // A photo that moved away is an error naming it, not a panic.
    let gone = ViewSource::new(&faces, &dir.path().join("elsewhere")).unwrap();
    let err = gone.render(0, &[ViewParams::IDENTITY]).unwrap_err();
    assert!(err.to_string().contains("elsewhere"), "{err}");
}
