//! What the workspace's tests and examples share, so each lives once: where `../shared`
//! is ([`shared`]), dlib's reference fixtures decoded ([`fixture`]), a seeded generator
//! for synthetic data ([`Lcg`]), and behind features the short trainings ([`training`],
//! feature `training`) and the open-set measurement ([`measure`], feature `predict`).
//!
//! A dev-dependency only. Without features it pulls no workspace crate, so the low crates
//! (dlib-dnn, preprocess) use it without building the stages above them.

pub mod fixture;
#[cfg(feature = "predict")]
pub mod measure;
#[cfg(feature = "training")]
pub mod training;

use std::path::{Path, PathBuf};

/// The read-only data beside the clone: `CELEB_SHARED` when set, else `../shared` next to
/// the workspace root; `None` when that folder does not exist.
pub fn shared_dir() -> Option<PathBuf> {
    let p = shared_candidate();
    p.is_dir().then_some(p)
}

/// [`shared_dir`], for the tests marked `#[ignore = "needs ../shared ..."]`: a missing
/// folder fails the test with a message that says where it was looked for.
pub fn shared() -> PathBuf {
    shared_dir().unwrap_or_else(|| {
        panic!(
            "this test needs the shared data: {} is not a folder (set CELEB_SHARED, or put \
             `shared` beside the clone)",
            shared_candidate().display()
        )
    })
}

fn shared_candidate() -> PathBuf {
    std::env::var_os("CELEB_SHARED")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join("../shared"))
}

/// The folder of a finished pipeline run on msceleb-samples when `CELEB_PIPELINE_OUT`
/// names one (`cargo xtask ci` sets it after its pipeline): the tests on the study's photos
/// then read its faces, descriptors and models instead of preprocessing the photos again.
pub fn pipeline_out() -> Option<PathBuf> {
    std::env::var_os("CELEB_PIPELINE_OUT").map(PathBuf::from)
}

/// The workspace's root folder (the one holding `crates/`).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// dlib's face descriptor model in the shared data.
pub fn descriptor_model() -> PathBuf {
    shared().join("models/dlib/dlib_face_recognition_resnet_model_v1.dat")
}

/// The first `n` photos (by name) of each msceleb-samples `person` copied into
/// `dest/<person>/`: a small photo folder for the tests that run preprocess.
pub fn msceleb_photos(dest: &Path, people: &[&str], n: usize) {
    for person in people {
        let src = shared().join("data/msceleb-samples").join(person);
        std::fs::create_dir_all(dest.join(person)).expect("a photo folder");
        let mut files: Vec<_> = std::fs::read_dir(&src)
            .unwrap_or_else(|e| panic!("{}: {e}", src.display()))
            .map(|e| e.expect("a folder entry").path())
            .collect();
        files.sort();
        for f in files.iter().take(n) {
            std::fs::copy(f, dest.join(person).join(f.file_name().expect("a file")))
                .expect("a copied photo");
        }
    }
}

/// dlib's CNN face detector model in the shared data.
pub fn cnn_detector_model() -> PathBuf {
    shared().join("models/dlib/mmod_human_face_detector.dat")
}

/// The 64-bit linear congruential generator the synthetic data sets are drawn from (Knuth's
/// MMIX constants): the same seed, the same pixels on every machine.
#[derive(Debug, Clone)]
pub struct Lcg(u64);

impl Lcg {
    pub fn new(seed: u64) -> Lcg {
        Lcg(seed)
    }

    /// The next state (callers take the high bits they need).
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_locator_honours_celeb_shared() {
        let d = std::env::temp_dir();
        std::env::set_var("CELEB_SHARED", &d);
        assert_eq!(shared_dir(), Some(d.clone()));
        assert_eq!(shared(), d);
        std::env::set_var("CELEB_SHARED", d.join("no-such-folder-here"));
        assert_eq!(shared_dir(), None);
        let e = std::panic::catch_unwind(shared).unwrap_err();
        let msg = e.downcast_ref::<String>().unwrap();
        assert!(
            msg.contains("no-such-folder-here") && msg.contains("CELEB_SHARED"),
            "{msg}"
        );
        std::env::remove_var("CELEB_SHARED");
        assert_eq!(shared_candidate(), workspace_root().join("../shared"));
        assert!(workspace_root().join("crates/test-support").is_dir());
    }

    #[test]
    fn the_generator_is_the_one_the_tests_drew_from() {
        let mut g = Lcg::new(7);
        let first = 7u64
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        assert_eq!(g.next_u64(), first);
        assert_ne!(g.next_u64(), first);
    }
}
