//! dlib's DNN serialization on small networks these tests write themselves.

use candle_core::{DType, Device, Tensor};
use dlib_dnn::dnn::{write as w, Con, Input, Layer, Loss};
use dlib_dnn::graph::{input_tensor, normalise_rgb, Graph, Kernels, Wire};
use dlib_dnn::serialize::write::*;
use dlib_dnn::Net;

/// loss_metric over: input 6x6 RGB -> con 3->4 3x3 s1 p1 -> affine -> relu -> tag ->
/// con 4->4 3x3 s1 p1 -> add_prev (the tag) -> relu -> max_pool 2x2 s2 -> skip (to the tag
/// before it, wired by the test as tag 2) -> avg_pool everything -> fc 4->3, no bias.
fn tiny_net() -> Vec<u8> {
    let mut b = Vec::new();
    int(&mut b, 1); // add_loss_layer version
    string(&mut b, "loss_metric_2");
    float(&mut b, 0.04);
    float(&mut b, 0.6);
    // Wrapper versions, outermost first: fc, avg, max, relu, add_prev, con, tag, relu, affine, con(first)
    for v in [2, 2, 2, 2, 2, 2, 1, 2, 2, 3] {
        int(&mut b, v);
    }
    string(&mut b, "input_rgb_image_sized");
    for a in [100.0f32, 110.0, 120.0] {
        float(&mut b, a);
    }
    int(&mut b, 6);
    int(&mut b, 6);
    let wts = |n: usize, s: f32| -> Vec<f32> {
        (0..n).map(|i| ((i * 37 % 17) as f32 - 8.0) * s).collect()
    };
    let con = |k: usize, weight: Vec<f32>, bias: [f32; 4]| Con {
        filters: 4,
        in_channels: k,
        nr: 3,
        nc: 3,
        stride: (1, 1),
        pad: (1, 1),
        weight,
        bias: Some(bias.to_vec()),
    };
    w::con(&mut b, &con(3, wts(4 * 3 * 9, 0.05), [0.1, -0.2, 0.3, 0.0]));
    w::trailer(&mut b, true);
    w::affine(&mut b, &[1.5, 0.5, -1.0, 2.0], &[0.1, 0.2, 0.3, -0.4]);
    w::trailer(&mut b, false);
    string(&mut b, "relu_");
    w::trailer(&mut b, false);
    w::con(
        &mut b,
        &con(4, wts(4 * 4 * 9, 0.03), [0.0, 0.05, -0.05, 0.1]),
    );
    w::trailer(&mut b, false);
    string(&mut b, "add_prev_");
    w::trailer(&mut b, false);
    string(&mut b, "relu_");
    w::trailer(&mut b, false);
    w::pool(&mut b, true, 2, 2, 0);
    w::trailer(&mut b, false);
    w::pool(&mut b, false, 0, 1, 0);
    w::trailer(&mut b, false);
    w::fc_no_bias(&mut b, 4, 3, &wts(12, 0.1));
    w::trailer(&mut b, false);
    b
}

#[test]
fn parses_every_layer_kind() {
    let net = Net::from_bytes(&tiny_net()).unwrap();
    assert_eq!(
        net.kinds(),
        [
            "con", "affine", "relu", "tag/skip", "con", "add_prev", "relu", "max_pool", "avg_pool",
            "fc"
        ]
    );
    assert_eq!(
        net.input,
        Input::RgbImageSized {
            avg: [100.0, 110.0, 120.0],
            nr: 6,
            nc: 6
        }
    );
    assert!(
        matches!(net.loss, Loss::Metric { dist_thresh, .. } if (dist_thresh - 0.6).abs() < 1e-6)
    );
    let Layer::Con(c) = &net.layers[0] else {
        panic!()
    };
    assert_eq!(
        (c.filters, c.in_channels, c.nr, c.stride, c.pad),
        (4, 3, 3, (1, 1), (1, 1))
    );
    assert_eq!(c.bias.as_deref(), Some(&[0.1, -0.2, 0.3, 0.0][..]));
    let Layer::Pool(p) = &net.layers[8] else {
        panic!()
    };
    assert_eq!((p.max, p.nr), (false, 0));
}

/// The network computed by hand (NCHW loops), for the forward-pass check.
fn reference(net: &Net, x: &[f32]) -> Vec<f32> {
    let (h, w) = (6usize, 6usize);
    let conv = |inp: &[f32], c: &dlib_dnn::dnn::Con| -> Vec<f32> {
        let mut o = vec![0f32; c.filters * h * w];
        for f in 0..c.filters {
            for y in 0..h {
                for xx in 0..w {
                    let mut s = c.bias.as_ref().unwrap()[f];
                    for k in 0..c.in_channels {
                        for dy in 0..3 {
                            for dx in 0..3 {
                                let (iy, ix) =
                                    (y as isize + dy as isize - 1, xx as isize + dx as isize - 1);
                                if iy >= 0 && ix >= 0 && (iy as usize) < h && (ix as usize) < w {
                                    s += c.weight[((f * c.in_channels + k) * 3 + dy) * 3 + dx]
                                        * inp[(k * h + iy as usize) * w + ix as usize];
                                }
                            }
                        }
                    }
                    o[(f * h + y) * w + xx] = s;
                }
            }
        }
        o
    };
    let (Layer::Con(c1), Layer::Affine { gamma, beta }, Layer::Con(c2), Layer::Fc(fc)) = (
        &net.layers[0],
        &net.layers[1],
        &net.layers[4],
        &net.layers[9],
    ) else {
        panic!()
    };
    let mut a = conv(x, c1);
    for (i, v) in a.iter_mut().enumerate() {
        let f = i / (h * w);
        *v = (*v * gamma[f] + beta[f]).max(0.0);
    }
    let t = a.clone();
    let mut b = conv(&a, c2);
    for (v, p) in b.iter_mut().zip(&t) {
        *v = (*v + p).max(0.0);
    }
    // max pool 2x2 s2 -> 3x3, then global mean.
    let mut g = [0f32; 4];
    for (f, gf) in g.iter_mut().enumerate() {
        let mut sum = 0.0;
        for py in 0..3 {
            for px in 0..3 {
                let mut m = f32::NEG_INFINITY;
                for dy in 0..2 {
                    for dx in 0..2 {
                        m = m.max(b[(f * h + 2 * py + dy) * w + 2 * px + dx]);
                    }
                }
                sum += m;
            }
        }
        *gf = sum / 9.0;
    }
    (0..3)
        .map(|o| (0..4).map(|i| g[i] * fc.weight[i * 3 + o]).sum())
        .collect()
}

#[test]
fn both_kernel_paths_compute_the_network() {
    let net = Net::from_bytes(&tiny_net()).unwrap();
    let pixels: Vec<u8> = (0..6 * 6 * 3).map(|i| (i * 53 % 256) as u8).collect();
    let prepared = normalise_rgb(&pixels, [100.0, 110.0, 120.0]);
    // CHW for the reference.
    let chw: Vec<f32> = (0..3)
        .flat_map(|c| (0..36).map(move |p| (c, p)))
        .map(|(c, p)| prepared[p * 3 + c])
        .collect();
    let want = reference(&net, &chw);
    let wires = [Wire::Tag(1), Wire::AddPrev(1)];
    for k in [Kernels::CpuNhwc, Kernels::Candle] {
        let g = Graph::build(&net, &wires, k, &Device::Cpu, DType::F32).unwrap();
        let x = input_tensor(prepared.clone(), 1, 6, 6, k, &Device::Cpu).unwrap();
        let got: Vec<f32> = g
            .forward(&x)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        for (a, b) in got.iter().zip(&want) {
            assert!((a - b).abs() < 1e-5, "{k:?}: {got:?} vs {want:?}");
        }
    }
    // A skip wire instead of the tag makes add_prev fail cleanly (no tag recorded).
    let g = Graph::build(
        &net,
        &[Wire::Skip(1), Wire::AddPrev(1)],
        Kernels::Candle,
        &Device::Cpu,
        DType::F32,
    )
    .unwrap();
    let x = Tensor::zeros((1, 3, 6, 6), DType::F32, &Device::Cpu).unwrap();
    assert!(g.forward(&x).is_err());
    // Too few wires is an error at build time.
    assert!(Graph::build(
        &net,
        &[Wire::Tag(1)],
        Kernels::Candle,
        &Device::Cpu,
        DType::F32
    )
    .is_err());
}

#[test]
fn zero_extended_add_prev_as_dlib() {
    // dlib's add of a 2-channel 2x2 and a 1-channel 3x3 map: a 2x3x3 result, zeros outside.
    let net = Net::from_bytes(&tiny_net()).unwrap();
    let _ = net;
    let a = Tensor::new(
        &[[[[1f32, 2.], [3., 4.]], [[5., 6.], [7., 8.]]]],
        &Device::Cpu,
    )
    .unwrap();
    let b = Tensor::ones((1, 1, 3, 3), DType::F32, &Device::Cpu).unwrap();
    let s = dlib_dnn::graph::add_zero_extended(&a, &b).unwrap();
    assert_eq!(s.dims(), &[1, 2, 3, 3]);
    let v: Vec<f32> = s.flatten_all().unwrap().to_vec1().unwrap();
    assert_eq!(&v[..9], &[2., 3., 1., 4., 5., 1., 1., 1., 1.]);
    assert_eq!(&v[9..], &[5., 6., 0., 7., 8., 0., 0., 0., 0.]);
}

#[test]
fn truncated_and_foreign_files_are_clear_errors() {
    let full = tiny_net();
    for cut in [0, 1, 10, full.len() / 2, full.len() - 1] {
        let e = Net::from_bytes(&full[..cut]).unwrap_err();
        assert!(
            e.what.contains("end of file") || e.what.contains("expected"),
            "cut {cut}: {e}"
        );
        assert!(e.offset <= cut, "cut {cut}: offset {}", e.offset);
    }
    let mut extra = full.clone();
    extra.push(0);
    assert!(Net::from_bytes(&extra)
        .unwrap_err()
        .what
        .contains("after the end"));
    // A shape predictor (version 1, then a matrix) is not a network.
    let mut sp = Vec::new();
    int(&mut sp, 1);
    dlib_dnn::serialize::write::column(&mut sp, &[0.5, 0.5]);
    let e = Net::from_bytes(&sp).unwrap_err();
    assert!(
        e.what.contains("loss layer") || e.what.contains("string"),
        "{e}"
    );
    // A layer kind we do not read names itself.
    let mut other = full.clone();
    let at = other.windows(5).position(|w| w == b"relu_").unwrap();
    other[at..at + 5].copy_from_slice(b"prelu");
    let e = Net::from_bytes(&other).unwrap_err();
    assert!(e.what.contains("prelu"), "{e}");
    // A file error names the file.
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("net.dat");
    std::fs::write(&p, &full[..40]).unwrap();
    let e = Net::open(&p).unwrap_err().to_string();
    assert!(e.contains("net.dat") && e.contains("at byte"), "{e}");
    // Our own network is not dlib's face descriptor.
    let net = Net::from_bytes(&full).unwrap();
    let e = dlib_dnn::FaceDescriptor::from_net(&net, Kernels::Candle, &Device::Cpu, DType::F32)
        .err()
        .unwrap()
        .to_string();
    assert!(
        e.contains("150") || e.contains("not dlib's face descriptor"),
        "{e}"
    );
}
