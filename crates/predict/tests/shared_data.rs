//! On the study's photos (needs ../shared): predict agrees with eval-tsne on the faces
//! artifact's test photos; strangers (two people left out of training) are called unknown;
//! a photo holding two people's faces gets both named.
//!
//! The faces and face descriptors of msceleb-samples are made once per test binary, or
//! taken from a pipeline run when `CELEB_PIPELINE_OUT` names its folder (`cargo xtask ci`
//! does, after its pipeline; [`test_support::pipeline_out`]).

use artifacts::{Bottlenecks, Faces, Split};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use test_support::{measure, training};

fn msceleb() -> PathBuf {
    test_support::shared().join("data/msceleb-samples")
}

struct Fixture {
    faces: PathBuf,
    bottlenecks: PathBuf,
    _dir: Option<tempfile::TempDir>,
}

fn fixture() -> &'static Fixture {
    static F: OnceLock<Fixture> = OnceLock::new();
    F.get_or_init(|| {
        if let Some(out) = test_support::pipeline_out() {
            return Fixture {
                faces: out.join("faces.safetensors"),
                bottlenecks: out.join("bottlenecks-face.safetensors"),
                _dir: None,
            };
        }
        let dir = tempfile::tempdir().unwrap();
        let faces = dir.path().join("faces.safetensors");
        let cfg = preprocess::PreprocessConfig {
            detector: preprocess::detect::DetectorConfig {
                cnn_model: Some(test_support::cnn_detector_model()),
                ..Default::default()
            },
            device: kernels::device::DeviceChoice::Cpu,
            ..Default::default()
        };
        preprocess::run(&msceleb(), &faces, &cfg).unwrap();
        let bottlenecks = dir.path().join("bottlenecks-face.safetensors");
        let ecfg = inception_bottleneck::ExtractConfig {
            teacher: test_support::descriptor_model().display().to_string(),
            device: kernels::device::DeviceChoice::Cpu,
            cache_dir: None,
            ..Default::default()
        };
        inception_bottleneck::extract(&faces, &bottlenecks, &ecfg).unwrap();
        Fixture {
            faces,
            bottlenecks,
            _dir: Some(dir),
        }
    })
}

fn train_model(dir: &Path, mode: train::TrainMode, epochs: usize) -> PathBuf {
    let f = fixture();
    training::train_short(&f.faces, Some(&f.bottlenecks), (mode, epochs, 16), dir)
}

fn open(ck: &Path) -> predict::Model {
    measure::open(
        ck,
        predict::UnknownRule::Stored,
        preprocess::FaceSearch::Every,
    )
}

/// Checks predict against eval-tsne runs: the raw photos of the test split get the labels
/// of each evaluation's `embeddings.safetensors` (>= 99%).
fn agree_with(runs: &[(PathBuf, PathBuf)], faces: &Faces) {
    let test = faces.indices(Split::Test);
    let models: Vec<predict::Model> = runs.iter().map(|(ck, _)| open(ck)).collect();
    let expected: Vec<Vec<u32>> = runs
        .iter()
        .map(|(_, eval)| {
            let e = artifacts::Embeddings::read(&eval.join("embeddings.safetensors")).unwrap();
            assert_eq!(
                e.sources,
                faces.sources,
                "{}: another faces file",
                eval.display()
            );
            e.predictions
        })
        .collect();
    let checks: Vec<(&predict::Model, &[u32])> = models
        .iter()
        .zip(&expected)
        .map(|(m, e)| (m, e.as_slice()))
        .collect();
    let results = measure::agreement(&checks, faces, &msceleb(), &test).unwrap();
    for ((ck, _), (agree, n, differ)) in runs.iter().zip(&results) {
        println!(
            "{}: {agree} of {n} agree with eval-tsne; {differ:#?}",
            ck.display()
        );
        assert!(
            *agree as f64 >= 0.99 * *n as f64,
            "{}: {agree} of {n}: {differ:#?}",
            ck.display()
        );
    }
}

/// Predicting the raw photos of the test split gives eval-tsne's labels (>= 99%). With a
/// pipeline run: its models of each kind (a probe on either teacher, a face-teacher
/// student, the no-teacher student) against its own evaluations; else a probe and a
/// student trained here.
#[test]
#[ignore = "needs ../shared (msceleb-samples, dlib's models)"]
fn predict_agrees_with_eval_on_the_test_photos() {
    let f = fixture();
    let faces = Faces::read(&f.faces).unwrap();
    if let Some(out) = test_support::pipeline_out() {
        let summary: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(out.join("summary.json")).unwrap())
                .unwrap();
        let local =
            |p: &serde_json::Value| out.join(Path::new(p.as_str().unwrap()).file_name().unwrap());
        let runs: Vec<(PathBuf, PathBuf)> = summary["modes"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|m| {
                matches!(
                    (m["teacher"].as_str().unwrap(), m["mode"].as_str().unwrap()),
                    ("face", "probe")
                        | ("inception", "probe")
                        | ("face", "cosine")
                        | ("none", "base")
                )
            })
            .map(|m| (local(&m["checkpoint"]), local(&m["eval_dir"])))
            .collect();
        assert!(
            runs.len() >= 3,
            "the pipeline run has too few models: {summary}"
        );
        agree_with(&runs, &faces);
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let mut runs = Vec::new();
    for (mode, epochs) in [(train::TrainMode::Probe, 8), (train::TrainMode::Base, 2)] {
        let ck = train_model(dir.path(), mode, epochs);
        let out = dir.path().join(format!("eval-{}", mode.name()));
        let ecfg = eval_tsne::EvalConfig {
            checkpoint: ck.clone(),
            faces: f.faces.clone(),
            bottlenecks: mode.needs_teacher().then(|| f.bottlenecks.clone()),
            out: out.clone(),
            tsne: eval_tsne::tsne::TsneConfig {
                iters: 250,
                ..Default::default()
            },
            device: kernels::device::DeviceChoice::Cpu,
            ..Default::default()
        };
        eval_tsne::evaluate(&ecfg).unwrap();
        runs.push((ck, out));
    }
    agree_with(&runs, &faces);
}

/// #18's aim with the face teacher: two people left out of training entirely, >= 90% of
/// the faces in their photos called unknown, the known test faces' accuracy down by at
/// most 3 points: on the faces the identity analysis takes as their folder's person (on
/// all of them the rule also calls the folders' own strangers unknown, which their labels
/// count as errors; README). Measured 0.957 and 0.5 points on this pair (0.73-0.98 over
/// seven pairs).
#[test]
#[ignore = "needs ../shared (msceleb-samples, dlib's models)"]
fn strangers_are_called_unknown() {
    let f = fixture();
    let faces = Faces::read(&f.faces).unwrap();
    let b = Bottlenecks::read(&f.bottlenecks).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let run = measure::LeaveOut {
        faces: &faces,
        bottlenecks: &b,
        data: &msceleb(),
        leave_out: vec!["m.04mzx1q".into(), "m.06w2sn5".into()],
        train: training::short(train::TrainMode::Probe, 8),
        dir: dir.path().to_path_buf(),
    };
    let fig = measure::leave_out(&run).unwrap();
    println!("{}", fig.summary());
    assert!(fig.strangers_faces > 150, "{fig:?}");
    let v = fig.summary();
    assert!(fig.strangers_rejected() >= 0.9, "{v}");
    assert!(
        v["clean_known_accuracy_drop_points"].as_f64().unwrap() <= 3.0,
        "{v}"
    );
    assert!(
        v["clean_known_accuracy_closed"].as_f64().unwrap() >= 0.95,
        "{v}"
    );
    // The known faces the rule costs are, but for a few, faces the identity analysis flags.
    let flagged = fig
        .known_rejected
        .iter()
        .filter(|s| s.ends_with("(flagged)"))
        .count();
    assert!(
        flagged as f64 >= 0.8 * fig.known_rejected.len() as f64,
        "{v}"
    );
}

/// Two people's photos side by side: both faces found, each named as in its own photo.
#[test]
#[ignore = "needs ../shared (msceleb-samples, dlib's models)"]
fn a_photo_with_two_faces_gets_both_named() {
    let f = fixture();
    let dir = tempfile::tempdir().unwrap();
    let ck = train_model(dir.path(), train::TrainMode::Probe, 8);
    let model = open(&ck);
    let faces = Faces::read(&f.faces).unwrap();
    // Two confidently named single-face test photos of different people.
    let test = faces.indices(Split::Test);
    let photos: Vec<PathBuf> = test
        .iter()
        .take(40)
        .map(|&i| msceleb().join(&faces.sources[i]))
        .collect();
    let (alone, _) = predict::predict_photos(&model, &photos, |_, _, _| Ok(())).unwrap();
    let sure: Vec<&predict::PhotoResult> = alone
        .iter()
        .filter(|p| {
            p.faces.len() == 1
                && p.faces[0]
                    .best
                    .as_ref()
                    .is_some_and(|b| b.probability > 0.9)
                && !p.faces[0].unknown
        })
        .collect();
    let a = sure[0];
    let b = sure
        .iter()
        .find(|p| p.faces[0].person != a.faces[0].person)
        .expect("two people");
    let (ia, ib) = (
        image::open(&a.path).unwrap().to_rgb8(),
        image::open(&b.path).unwrap().to_rgb8(),
    );
    let h = ia.height().max(ib.height());
    let mut both = image::RgbImage::new(ia.width() + ib.width(), h);
    image::imageops::replace(&mut both, &ia, 0, 0);
    image::imageops::replace(&mut both, &ib, ia.width() as i64, 0);
    let path = dir.path().join("two.png");
    both.save(&path).unwrap();
    let (res, _) = predict::predict_photos(&model, &[path], |_, _, _| Ok(())).unwrap();
    let named: Vec<_> = res[0]
        .faces
        .iter()
        .filter_map(|f| f.person.clone())
        .collect();
    println!(
        "{:?} + {:?} -> {:?}",
        a.faces[0].person, b.faces[0].person, res[0].faces
    );
    assert_eq!(res[0].faces.len(), 2, "{:?}", res[0].faces);
    // Left to right: the first photo's person, then the second's.
    assert_eq!(
        named,
        [
            a.faces[0].person.clone().unwrap(),
            b.faces[0].person.clone().unwrap()
        ]
    );
    // The second face's box is the second photo's, shifted by the first one's width.
    let (ra, rb) = (a.faces[0].rect, b.faces[0].rect);
    let r2 = res[0].faces[1].rect;
    assert!(
        (r2[0] - ia.width() as f32 - rb[0]).abs() <= 0.1 * rb[2],
        "{r2:?} vs {rb:?}"
    );
    assert!((res[0].faces[0].rect[0] - ra[0]).abs() <= 0.1 * ra[2]);
}

/// `--group-unknowns` on the study's 4x20 crops (four people, none in msceleb-samples):
/// the faces called unknown are grouped into their people (adjusted Rand index against
/// their folders), and no group mixes two people with more than one face each.
#[test]
#[ignore = "needs ../shared (msceleb-samples, seed-4x20, dlib's models)"]
fn strangers_are_grouped_into_their_people() {
    let dir = tempfile::tempdir().unwrap();
    let ck = train_model(dir.path(), train::TrainMode::Probe, 8);
    let corpus = test_support::shared().join("data/seed-4x20/crop_4_20/corpus");
    let groups = dir.path().join("groups");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_predict"))
        .arg("--model")
        .arg(&ck)
        .args(["--device", "cpu", "--format", "json", "--output"])
        .arg(dir.path().join("results.json"))
        .arg("--group-unknowns")
        .arg(&groups)
        .arg(&corpus)
        .output()
        .unwrap();
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{log}");
    let g: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(groups.join("groups.json")).unwrap())
            .unwrap();
    let (mut group_of, mut person_of) = (Vec::new(), Vec::new());
    let mut people: Vec<String> = Vec::new();
    for (k, grp) in g["groups"].as_array().unwrap().iter().enumerate() {
        let name = grp["group"].as_str().unwrap();
        assert!(groups.join(name).join("montage.png").is_file(), "{name}");
        let mut here: std::collections::BTreeMap<String, usize> = Default::default();
        for f in grp["faces"].as_array().unwrap() {
            let photo = PathBuf::from(f["photo"].as_str().unwrap());
            let person = photo
                .parent()
                .and_then(|p| p.file_name())
                .unwrap()
                .to_string_lossy()
                .into_owned();
            *here.entry(person.clone()).or_default() += 1;
            if !people.contains(&person) {
                people.push(person.clone());
            }
            group_of.push(k);
            person_of.push(people.iter().position(|p| *p == person).unwrap());
        }
        println!("{name}: {here:?}");
        let mixed = here.values().filter(|&&n| n > 1).count();
        assert!(mixed <= 1, "{name} mixes people: {here:?}");
    }
    let ari = predict::group::adjusted_rand_index(&group_of, &person_of);
    println!(
        "grouping: {} unknown faces of {} people -> {} groups, ARI {ari:.3}, link {}",
        group_of.len(),
        people.len(),
        g["groups"].as_array().unwrap().len(),
        g["link"]
    );
    assert!(
        group_of.len() >= 60,
        "{} of 80 faces grouped\n{log}",
        group_of.len()
    );
    // #27 aims at 0.9. Chinese whispers alone: 0.890 (three people split in two; dlib's own
    // on the same descriptors 0.895); with the centre merge (its rate chosen on msceleb's
    // left-out people, `merge_rate_on_left_out_people`): 0.926, two people split.
    assert!(ari >= 0.9, "ARI {ari:.3}");
}

/// Chooses the centre merge's rate on people the gallery does not hold, as the strangers
/// of `strangers_are_grouped_into_their_people` are not in it: msceleb-samples' 14 people,
/// 4 left out at a time (20 draws), the link calibrated on the other 10 people's training
/// faces, up to 20 faces of each left-out person grouped. Prints the mean adjusted Rand
/// index and the mixed groups of each rate (measured: none 0.975, 0.5% 0.971 with 2 mixed
/// groups, 0.2% 0.982, 0.1% 0.981, 0.05% 0.980, 0 mixed); fails if the chosen rate
/// (`MAX_MERGED_DIFFERENT`) does not beat no merge, falls more than 0.005 behind the best
/// rate tried, or mixes more than no merge.
#[test]
#[ignore = "needs ../shared (msceleb-samples, dlib's models)"]
fn merge_rate_on_left_out_people() {
    use predict::group::{adjusted_rand_index, group, Link, MAX_MERGED_DIFFERENT};
    let f = fixture();
    let faces = Faces::read(&f.faces).unwrap();
    let b = Bottlenecks::read(&f.bottlenecks).unwrap();
    let row = |i: usize| &b.features[i * b.dim..(i + 1) * b.dim];
    let people = faces.class_names.len();
    // The folders' labels are dirty: keep the faces the identity analysis takes for each
    // folder's person (not flagged, and in its largest cluster), so that a group is
    // scored against who is in it, not against a wrong folder.
    let report = eval_tsne::identity::analyse(
        &b.features,
        b.dim,
        &faces.labels,
        &faces.class_names,
        &faces.sources,
        &eval_tsne::identity::IdentityConfig::default(),
    );
    let mut clean = vec![true; faces.labels.len()];
    report.suspects.iter().for_each(|s| clean[s.index] = false);
    for split in &report.split_folders {
        split.members[1..]
            .iter()
            .flatten()
            .for_each(|&i| clean[i] = false);
    }
    let rates = [None, Some(0.005), Some(0.002), Some(0.001), Some(0.0005)];
    let mut draw = kernels::stats::XorShift::new(7);
    let mut scores = vec![(0.0f64, 0usize); rates.len()];
    let draws = 40;
    for _ in 0..draws {
        let mut order: Vec<u32> = (0..people as u32).collect();
        draw.pick_front(&mut order, 4);
        let out = &order[..4];
        let (mut gallery, mut labels) = (Vec::new(), Vec::new());
        for i in faces.indices(Split::Train) {
            if !out.contains(&faces.labels[i]) && clean[i] {
                gallery.extend_from_slice(row(i));
                labels.push(faces.labels[i]);
            }
        }
        let mut strangers: Vec<usize> = Vec::new();
        for &p in out {
            let mut mine: Vec<usize> = (0..faces.labels.len())
                .filter(|&i| faces.labels[i] == p && clean[i])
                .collect();
            draw.pick_front(&mut mine, 20);
            strangers.extend(mine.into_iter().take(20));
        }
        let refs: Vec<&[f32]> = strangers.iter().map(|&i| row(i)).collect();
        let truth: Vec<usize> = strangers
            .iter()
            .map(|&i| faces.labels[i] as usize)
            .collect();
        for (k, rate) in rates.iter().enumerate() {
            let link = Link::calibrate_with(&gallery, b.dim, &labels, *rate);
            let groups = group(&refs, &link);
            let mut got = vec![0; refs.len()];
            let mut mixed = 0;
            for (g, m) in groups.iter().enumerate() {
                let mut count: std::collections::BTreeMap<usize, usize> = Default::default();
                for &i in m {
                    got[i] = g;
                    *count.entry(truth[i]).or_default() += 1;
                }
                mixed += usize::from(count.values().filter(|&&n| n > 1).count() > 1);
            }
            scores[k].0 += adjusted_rand_index(&got, &truth) / draws as f64;
            scores[k].1 += mixed;
        }
    }
    for (rate, (ari, mixed)) in rates.iter().zip(&scores) {
        println!("merge rate {rate:?}: mean ARI {ari:.3}, mixed groups {mixed} in {draws} draws");
    }
    let chosen = rates
        .iter()
        .position(|r| *r == Some(MAX_MERGED_DIFFERENT))
        .expect("the chosen rate is among those tried");
    let best = scores.iter().map(|s| s.0).fold(f64::MIN, f64::max);
    assert!(scores[chosen].0 > scores[0].0, "{scores:?}");
    assert!(scores[chosen].0 >= best - 0.005, "{scores:?}");
    assert!(scores[chosen].1 <= scores[0].1, "{scores:?}");
}
