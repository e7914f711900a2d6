//! dlib's shape-predictor format, on a tiny model this test writes itself.

use preprocess::dlib::{write, ShapePredictor};

/// 3 landmarks, 1 cascade of 1 depth-1 tree over 2 feature pixels.
fn tiny_model() -> Vec<u8> {
    let mut b = Vec::new();
    write::int(&mut b, 1); // version
    write::column(&mut b, &[0.25, 0.25, 0.75, 0.25, 0.5, 0.75]);
    write::int(&mut b, 1); // cascades
    write::int(&mut b, 1); // trees in cascade 0
    write::int(&mut b, 1); // splits
    write::int(&mut b, 0); // idx1
    write::int(&mut b, 1); // idx2
    write::float(&mut b, 10.0); // thresh
    write::int(&mut b, 2); // leaves
    write::column(&mut b, &[0.1, 0.0, 0.1, 0.0, 0.1, 0.0]); // left: shift right
    write::column(&mut b, &[0.0, -0.1, 0.0, -0.1, 0.0, -0.1]); // right: shift up
    write::int(&mut b, 1); // anchor cascades
    write::int(&mut b, 2);
    write::int(&mut b, 0);
    write::int(&mut b, 1);
    write::int(&mut b, 1); // delta cascades
    write::int(&mut b, 2);
    write::float(&mut b, 0.0);
    write::float(&mut b, 0.0);
    write::float(&mut b, 0.0);
    write::float(&mut b, 0.0);
    b
}

#[test]
fn parses_and_evaluates_a_tiny_model() {
    let m = ShapePredictor::from_bytes(&tiny_model()).unwrap();
    assert_eq!(m.num_parts(), 3);
    assert_eq!(m.initial_shape, vec![0.25, 0.25, 0.75, 0.25, 0.5, 0.75]);
    assert_eq!(m.cascades[0][0].splits[0].thresh, 10.0);
    assert_eq!(m.anchor_idx, vec![vec![0, 1]]);
    // 100x100 image; the box is the whole image: landmark 0 at (25,25), landmark 1 at (75,25).
    let (w, h) = (100, 100);
    let mut gray = vec![0u8; w * h];
    gray[25 * w + 25] = 200; // pixel of landmark 0 brighter by > 10: go left
    let rect = [0.0, 0.0, 100.0, 100.0];
    let lm = m.predict(&gray, w, h, rect);
    near(lm[0], [35.0, 25.0]);
    near(lm[2], [60.0, 75.0]);
    let dark = vec![0u8; w * h];
    let lm = m.predict(&dark, w, h, rect);
    near(lm[0], [25.0, 15.0]);
}

fn near(a: [f32; 2], b: [f32; 2]) {
    assert!(
        (a[0] - b[0]).abs() < 1e-4 && (a[1] - b[1]).abs() < 1e-4,
        "{a:?} vs {b:?}"
    );
}

#[test]
fn exact_float_and_int_encodings() {
    for v in [
        0.0f32,
        1.0,
        -2.5,
        1e-30,
        3.4e38,
        0.1,
        -7.0e-3,
        f32::MIN_POSITIVE / 4.0,
    ] {
        let mut b = Vec::new();
        write::int(&mut b, 1);
        write::column(&mut b, &[v, -v]);
        // A model stops parsing after the shape; only check the shape survives.
        let err = ShapePredictor::from_bytes(&b).unwrap_err().to_string();
        assert!(err.contains("end of file"), "{err}");
        let mut full = tiny_model();
        // Replace the initial shape: rebuild with v in place of the first coordinate.
        full.clear();
        write::int(&mut full, 1);
        write::column(&mut full, &[v, 0.25, 0.75, 0.25, 0.5, 0.75]);
        full.extend_from_slice(&tiny_model()[header_len()..]);
        let m = ShapePredictor::from_bytes(&full).unwrap();
        assert_eq!(m.initial_shape[0].to_bits(), v.to_bits(), "{v}");
    }
}

fn header_len() -> usize {
    let mut b = Vec::new();
    write::int(&mut b, 1);
    write::column(&mut b, &[0.25, 0.25, 0.75, 0.25, 0.5, 0.75]);
    b.len()
}

#[test]
fn corrupt_models_are_errors_not_panics() {
    let good = tiny_model();
    for cut in [0, 1, 5, good.len() / 2, good.len() - 1] {
        assert!(
            ShapePredictor::from_bytes(&good[..cut]).is_err(),
            "cut at {cut}"
        );
    }
    let mut bad = good.clone();
    bad[0] = 0x7F; // not an integer control byte
    assert!(ShapePredictor::from_bytes(&bad).is_err());
    assert!(ShapePredictor::from_bytes(b"<html>not a model</html>").is_err());
    let e = ShapePredictor::open(std::path::Path::new("/nonexistent.dat")).unwrap_err();
    assert!(e.to_string().contains("/nonexistent.dat"));
}
