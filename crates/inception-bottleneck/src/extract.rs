//! Batched, cached bottleneck extraction for a `Faces` artifact.

use crate::cache::{image_key, BottleneckCache};
use crate::face_teacher;
use crate::inception::{block_channels, InceptionV3};
use crate::teacher::{self, Preprocessing, ResolvedTeacher};
use crate::Error;
use artifacts::shards::{shard_dir, shard_file_name};
use artifacts::{Bottlenecks, Faces, JobPart, Provenance, ViewBank};
use candle_core::{DType, Device, Tensor};
use image::imageops::FilterType;
use kernels::device::DeviceChoice;
use preprocess::views::{draw_views, ViewRecipe, ViewSource, VIEW_PARAMS};
use rayon::prelude::*;
use std::path::{Path, PathBuf};

/// Everything that decides what `inception-bottleneck` computes; saved in the artifact.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct ExtractConfig {
    /// Hub repo id, local timm folder, or weights file.
    pub teacher: String,
    pub revision: String,
    /// Block whose pooled output is the bottleneck; `pool` = after Mixed_7c.
    pub layer: String,
    /// Pool over a `grid` x `grid` partition instead of globally (1, the study's way).
    /// Left out of the JSON when 1, so artifacts made before the option stay fresh.
    #[serde(default = "one", skip_serializing_if = "is_one")]
    pub grid: usize,
    /// Also embed every face flipped left-right (`features_mirrored`), the targets `train`
    /// uses for flipped images. Left out of the JSON when off, like `grid`.
    #[serde(default, skip_serializing_if = "is_false")]
    pub mirror: bool,
    /// K views of every face through the teacher (`view_features`), view 0 the face itself:
    /// the consistent targets of `train --distill`. 0 = none; left out of the JSON then.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub views: usize,
    /// How the views are drawn and where their photos are (needed when `views > 0`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub view_recipe: Option<ViewRecipe>,
    pub batch: usize,
    pub device: DeviceChoice,
    /// `f32`, `f16` or `bf16` (half precision only on CUDA).
    pub dtype: String,
    /// Overrides of the teacher's preprocessing (else from its `config.json`).
    pub size: Option<usize>,
    pub mean: Option<[f32; 3]>,
    pub std: Option<[f32; 3]>,
    pub interpolation: Option<String>,
    /// Cache folder; `None` disables the cache.
    pub cache_dir: Option<PathBuf>,
}

fn one() -> usize {
    1
}

fn is_one(v: &usize) -> bool {
    *v == 1
}

fn is_zero(v: &usize) -> bool {
    *v == 0
}

fn is_false(v: &bool) -> bool {
    !*v
}

impl Default for ExtractConfig {
    fn default() -> Self {
        ExtractConfig {
            teacher: teacher::DEFAULT_TEACHER.into(),
            revision: "main".into(),
            layer: "pool".into(),
            grid: 1,
            mirror: false,
            views: 0,
            view_recipe: None,
            batch: 8,
            device: DeviceChoice::Auto,
            dtype: "f32".into(),
            size: None,
            mean: None,
            std: None,
            interpolation: None,
            cache_dir: Some(PathBuf::from("data/artifacts/bottleneck-cache")),
        }
    }
}

impl ExtractConfig {
    fn apply_overrides(&self, mut p: Preprocessing) -> Preprocessing {
        if let Some(s) = self.size {
            p.size = s;
        }
        if let Some(m) = self.mean {
            p.mean = m;
        }
        if let Some(s) = self.std {
            p.std = s;
        }
        if let Some(i) = &self.interpolation {
            p.interpolation = i.clone();
        }
        p
    }
}

/// The network behind a teacher.
pub enum TeacherNet {
    Inception(InceptionV3),
    /// dlib's face descriptor; its input is the faces' dlib chips, not the study's crops.
    DlibFace(dlib_dnn::FaceDescriptor),
}

/// A loaded teacher, ready to embed prepared images.
pub struct Teacher {
    pub model: TeacherNet,
    pub resolved: ResolvedTeacher,
    pub layer: String,
    /// Pooling grid side (1 = global pool).
    pub grid: usize,
    pub device: Device,
    pub dtype: DType,
}

impl Teacher {
    pub fn load(cfg: &ExtractConfig) -> Result<Teacher, Error> {
        if face_teacher::is_face_teacher(&cfg.teacher) {
            return Self::load_face(cfg);
        }
        if cfg.grid == 0 {
            return Err(Error::ZeroGrid);
        }
        let dim =
            block_channels(&cfg.layer).ok_or_else(|| Error::UnknownLayer(cfg.layer.clone()))?;
        let (device, dtype) = device_and_dtype(cfg)?;
        let g = cfg.grid;
        let mut resolved = teacher::resolve(&cfg.teacher, &cfg.revision, Preprocessing::default())?;
        resolved.preprocessing = cfg.apply_overrides(resolved.preprocessing);
        let tensors = teacher::load_tensors(&resolved.weights)?;
        let until = (cfg.layer != "pool").then_some(cfg.layer.as_str());
        let model = InceptionV3::load(tensors, until.or(Some("Mixed_7c")), dtype, &device)?;
        tracing::info!(
            "teacher {} ({} grid {g}x{g} -> {}-d), {} unused keys in the file",
            resolved.identity,
            cfg.layer,
            dim * g * g,
            model.unused_keys.len()
        );
        Ok(Teacher {
            model: TeacherNet::Inception(model),
            resolved,
            layer: cfg.layer.clone(),
            grid: cfg.grid,
            device,
            dtype,
        })
    }

    fn load_face(cfg: &ExtractConfig) -> Result<Teacher, Error> {
        if cfg.grid != 1 || !matches!(cfg.layer.as_str(), "pool" | "descriptor") {
            return Err(Error::FaceTeacherLayer);
        }
        let (device, dtype) = device_and_dtype(cfg)?;
        let path = face_teacher::locate(&cfg.teacher)?;
        let identity = face_teacher::identity(&path)?;
        let kernels = dlib_dnn::Kernels::best_for(&device, dtype);
        let net = dlib_dnn::FaceDescriptor::open(&path, kernels, &device, dtype)?;
        tracing::info!("teacher {identity} (dlib's face descriptor, 128-d, on dlib chips)");
        Ok(Teacher {
            model: TeacherNet::DlibFace(net),
            resolved: ResolvedTeacher {
                identity,
                weights: path,
                preprocessing: Preprocessing {
                    size: artifacts::CHIP_SIZE,
                    ..Preprocessing::default()
                },
            },
            layer: "descriptor".into(),
            grid: 1,
            device,
            dtype,
        })
    }

    pub fn dim(&self) -> usize {
        match &self.model {
            TeacherNet::DlibFace(_) => dlib_dnn::face::DESCRIPTOR_DIM,
            TeacherNet::Inception(_) => {
                block_channels(&self.layer).expect("checked in load") * self.grid * self.grid
            }
        }
    }

    /// Whether the teacher reads the faces' dlib chips instead of the study's crops.
    pub fn uses_chips(&self) -> bool {
        matches!(self.model, TeacherNet::DlibFace(_))
    }

    /// One face (HWC RGB) as the teacher's input floats.
    pub fn prepare(&self, pixels: &[u8], height: usize, width: usize) -> Vec<f32> {
        match &self.model {
            TeacherNet::DlibFace(net) => net.prepare(pixels),
            TeacherNet::Inception(_) => {
                prepare(pixels, height, width, &self.resolved.preprocessing)
            }
        }
    }

    /// The layer as artifacts and cache keys name it: `Mixed_6c`, or `Mixed_6c grid 2x2`.
    pub fn layer_name(&self) -> String {
        if self.uses_chips() {
            // The chip settings are part of what the features mean (and of the cache key).
            return "descriptor (dlib chips: 150 px, padding 0.25)".into();
        }
        match self.grid {
            1 => self.layer.clone(),
            g => format!("{} grid {g}x{g}", self.layer),
        }
    }

    /// Embeds prepared CHW images (each `3*S*S` floats), returning [n, dim] rows.
    pub fn embed(&self, prepared: &[f32], n: usize) -> Result<Vec<f32>, Error> {
        let model = match &self.model {
            TeacherNet::DlibFace(net) => {
                let y = net.descriptors_prepared(prepared, n)?;
                return Ok(y.flatten_all()?.to_vec1::<f32>()?);
            }
            TeacherNet::Inception(m) => m,
        };
        let s = self.resolved.preprocessing.size;
        let x = Tensor::from_slice(prepared, (n, 3, s, s), &Device::Cpu)?
            .to_device(&self.device)?
            .to_dtype(self.dtype)?;
        let y = model.pooled(&x, &self.layer, self.grid)?;
        Ok(y.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?)
    }
}

/// The device and dtype of `--device` and `--dtype` (half precision only on CUDA).
fn device_and_dtype(cfg: &ExtractConfig) -> Result<(Device, DType), Error> {
    let device = kernels::device::pick(cfg.device)?;
    let dtype = match (cfg.dtype.as_str(), device.is_cuda()) {
        ("f32", _) => DType::F32,
        ("f16", true) => DType::F16,
        ("bf16", true) => DType::BF16,
        ("f16" | "bf16", false) => {
            tracing::warn!("--dtype {} needs CUDA; using f32 on the CPU", cfg.dtype);
            DType::F32
        }
        (o, _) => return Err(Error::UnknownDtype(o.to_string())),
    };
    Ok((device, dtype))
}

/// An HWC image flipped left-right.
pub fn mirror_hwc(pixels: &[u8], height: usize, width: usize) -> Vec<u8> {
    let row = width * 3;
    let mut out = Vec::with_capacity(pixels.len());
    for y in 0..height {
        let r = &pixels[y * row..(y + 1) * row];
        for px in r.chunks_exact(3).rev() {
            out.extend_from_slice(px);
        }
    }
    out
}

/// Resizes an HWC RGB face to the teacher's size and normalises it to CHW floats.
pub fn prepare(pixels: &[u8], height: usize, width: usize, p: &Preprocessing) -> Vec<f32> {
    let img = image::RgbImage::from_raw(width as u32, height as u32, pixels.to_vec())
        .expect("HWC buffer of the right size");
    let filter = match p.interpolation.as_str() {
        "bicubic" => FilterType::CatmullRom,
        "nearest" => FilterType::Nearest,
        _ => FilterType::Triangle,
    };
    let s = p.size as u32;
    let img = if img.dimensions() == (s, s) {
        img
    } else {
        image::imageops::resize(&img, s, s, filter)
    };
    let plane = p.size * p.size;
    let mut out = vec![0f32; 3 * plane];
    for (i, px) in img.pixels().enumerate() {
        for c in 0..3 {
            out[c * plane + i] = (px[c] as f32 / 255.0 - p.mean[c]) / p.std[c];
        }
    }
    out
}

/// What an extraction run did.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Summary {
    pub images: usize,
    /// `computed` and `from_cache` count teacher passes: with `mirror`, two per image;
    /// with `views`, K more.
    pub computed: usize,
    pub from_cache: usize,
    pub dim: usize,
    pub seconds: f64,
    pub teacher: String,
}

fn faces_provenance(faces_path: &Path, cfg: &ExtractConfig) -> Result<(String, Provenance), Error> {
    let faces_digest = artifacts::digest_file(faces_path)?;
    let prov = Provenance::new(
        env!("CARGO_PKG_NAME"),
        artifacts::build_version(),
        serde_json::to_value(cfg).expect("plain config"),
    )
    .with_input("faces", faces_digest.clone());
    Ok((faces_digest, prov))
}

/// The inputs an extraction records (faces digest, teacher identity), for up-to-date checks.
pub fn provenance_inputs(
    faces_path: &Path,
    cfg: &ExtractConfig,
) -> Result<std::collections::BTreeMap<String, String>, Error> {
    let identity = if face_teacher::is_face_teacher(&cfg.teacher) {
        face_teacher::identity(&face_teacher::locate(&cfg.teacher)?)?
    } else {
        teacher::resolve(&cfg.teacher, &cfg.revision, Preprocessing::default())?.identity
    };
    let mut m = std::collections::BTreeMap::new();
    m.insert("faces".to_string(), artifacts::digest_file(faces_path)?);
    m.insert("teacher".to_string(), identity);
    Ok(m)
}

/// Runs the teacher over every face of `faces_path` and writes `out_path`.
pub fn extract(faces_path: &Path, out_path: &Path, cfg: &ExtractConfig) -> Result<Summary, Error> {
    extract_part(faces_path, out_path, cfg, JobPart::ALL)
}

/// Runs the teacher over part `part` of the faces: of a sharded faces artifact, the
/// its share of the shards ([`JobPart::mine`]), each into its own bottlenecks shard (`<output stem>.shards/`,
/// skipped when up to date); with the whole (`0/1`), the merge follows. A single-file
/// faces artifact is one part.
pub fn extract_part(
    faces_path: &Path,
    out_path: &Path,
    cfg: &ExtractConfig,
    part: JobPart,
) -> Result<Summary, Error> {
    if cfg.batch == 0 {
        return Err(Error::ZeroBatch);
    }
    let start = std::time::Instant::now();
    let faces = Faces::read(faces_path)?;
    if faces.is_empty() {
        return Err(Error::NoFaces(faces_path.to_path_buf()));
    }
    // What the teacher needs of the faces (the face teacher: chips) before it is loaded.
    Views::new(&faces, faces_path, cfg)?;
    let Some(shards) = Faces::shards_of(faces_path)? else {
        if part != JobPart::ALL {
            return Err(Error::NotSharded(faces_path.to_path_buf()));
        }
        let teacher = Teacher::load(cfg)?;
        let digest = artifacts::digest_file(faces_path)?;
        let (b, counts) = extract_rows(&faces, faces_path, digest, &teacher, cfg)?;
        b.write(out_path)?;
        return Ok(counts.summary(&faces, &b, start));
    };
    let mut teacher = None;
    let mut counts = Counts::default();
    let identity = provenance_inputs(faces_path, cfg)?
        .remove("teacher")
        .unwrap_or_default();
    let config = serde_json::to_value(cfg).expect("plain config");
    let mine = part.mine(&shards.iter().map(|r| r.rows).collect::<Vec<_>>());
    let mut at = 0;
    for (s, r) in shards.iter().enumerate() {
        let rows = at..at + r.rows;
        at += r.rows;
        if !mine.contains(&s) {
            continue;
        }
        let path = shard_dir(out_path).join(shard_file_name(s));
        let inputs = [
            ("faces".to_string(), r.digest.clone()),
            ("teacher".to_string(), identity.clone()),
        ]
        .into();
        if artifacts::up_to_date(&path, artifacts::BOTTLENECKS_SCHEMA, &config, &inputs) {
            counts.from_cache += r.rows;
            continue;
        }
        let teacher = match &mut teacher {
            Some(t) => t,
            None => teacher.insert(Teacher::load(cfg)?),
        };
        let sub = faces.rows(rows.start, rows.end);
        let (b, c) = extract_rows(&sub, faces_path, r.digest.clone(), teacher, cfg)?;
        b.write(&path)?;
        counts.computed += c.computed;
        counts.from_cache += c.from_cache;
        counts.dim = b.dim;
    }
    if part == JobPart::ALL {
        let b = merge(faces_path, out_path, cfg)?;
        return Ok(counts.summary(&faces, &b, start));
    }
    Ok(Summary {
        images: faces.len(),
        computed: counts.computed,
        from_cache: counts.from_cache,
        dim: counts.dim,
        seconds: start.elapsed().as_secs_f64(),
        teacher: identity,
    })
}

/// Teacher passes computed and read from the cache.
#[derive(Default)]
struct Counts {
    computed: usize,
    from_cache: usize,
    dim: usize,
}

impl Counts {
    fn summary(&self, faces: &Faces, b: &Bottlenecks, start: std::time::Instant) -> Summary {
        Summary {
            images: faces.len(),
            computed: self.computed,
            from_cache: self.from_cache,
            dim: b.dim,
            seconds: start.elapsed().as_secs_f64(),
            teacher: b.teacher.clone(),
        }
    }
}

/// Writes `out_path` from the bottlenecks shards of every faces shard: their rows in
/// order, each checked to belong to its faces shard and made with these settings.
pub fn merge(
    faces_path: &Path,
    out_path: &Path,
    cfg: &ExtractConfig,
) -> Result<Bottlenecks, Error> {
    let shards =
        Faces::shards_of(faces_path)?.ok_or_else(|| Error::NotSharded(faces_path.to_path_buf()))?;
    let config = serde_json::to_value(cfg).expect("plain config");
    let identity = provenance_inputs(faces_path, cfg)?
        .remove("teacher")
        .unwrap_or_default();
    let mut parts = Vec::new();
    let mut problems = Vec::new();
    for (s, r) in shards.iter().enumerate() {
        let path = shard_dir(out_path).join(shard_file_name(s));
        if !path.exists() {
            problems.push(format!("shard {s}: not made"));
            continue;
        }
        let b = Bottlenecks::read(&path)?;
        let problem = if b.faces_digest != r.digest || b.len() != r.rows {
            Some("made for other faces (preprocess ran again since)".to_string())
        } else if b.teacher != identity {
            Some(format!(
                "made by teacher {}, this run's is {identity}",
                b.teacher
            ))
        } else if b.provenance.config != config {
            Some(format!(
                "made with other settings ({})",
                artifacts::config_difference(&b.provenance.config, &config)
            ))
        } else {
            None
        };
        match problem {
            Some(p) => problems.push(format!("shard {s}: {p}")),
            None => parts.push(b),
        }
    }
    if !problems.is_empty() {
        return Err(Error::Shards {
            dir: shard_dir(out_path),
            count: shards.len(),
            problems,
        });
    }
    let first = parts.first().expect("a sharded faces artifact has a shard");
    let (faces_digest, provenance) = faces_provenance(faces_path, cfg)?;
    let mut merged = Bottlenecks {
        dim: first.dim,
        features: Vec::new(),
        mirrored: first.mirrored.as_ref().map(|_| Vec::new()),
        views: first.views.as_ref().map(|v| ViewBank {
            features: Vec::new(),
            params: Vec::new(),
            ..v.clone()
        }),
        teacher: first.teacher.clone(),
        layer: first.layer.clone(),
        faces_digest,
        provenance: provenance.with_input("teacher", identity),
    };
    for b in parts {
        merged.features.extend(b.features);
        if let (Some(m), Some(bm)) = (&mut merged.mirrored, b.mirrored) {
            m.extend(bm);
        }
        if let (Some(v), Some(bv)) = (&mut merged.views, b.views) {
            v.features.extend(bv.features);
            v.params.extend(bv.params);
        }
    }
    merged.write(out_path)?;
    Ok(merged)
}

/// The teacher's bottlenecks of `faces` (all of a file, or one shard's rows), recorded as
/// belonging to the faces with digest `faces_digest`.
fn extract_rows(
    faces: &Faces,
    faces_path: &Path,
    faces_digest: String,
    teacher: &Teacher,
    cfg: &ExtractConfig,
) -> Result<(Bottlenecks, Counts), Error> {
    let views = Views::new(faces, faces_path, cfg)?;
    let dim = teacher.dim();
    let cache = open_cache(teacher, cfg)?;
    let n = faces.len();
    let keys: Vec<String> = (0..views.jobs)
        .into_par_iter()
        .map(|j| image_key(views.height, views.width, &views.get(j)))
        .collect();
    let mut features = vec![0f32; views.jobs * dim];
    let mut todo = Vec::new();
    for j in 0..views.jobs {
        match cache.as_ref().and_then(|c| c.get(&keys[j], Some(dim))) {
            Some(v) => features[j * dim..(j + 1) * dim].copy_from_slice(&v),
            None => todo.push(j),
        }
    }
    let from_cache = views.jobs - todo.len();
    tracing::info!(
        "{n} faces{}: {from_cache} views from the cache, {} to compute",
        if cfg.mirror {
            " and their mirror images"
        } else {
            ""
        },
        todo.len()
    );
    let bar = bar(todo.len());
    let job = |j: usize| views.get(j);
    compute(
        teacher,
        &job,
        (views.height, views.width),
        &todo,
        cfg.batch,
        &bar,
        |i, row| {
            if let Some(c) = &cache {
                if let Err(e) = c.put(&keys[i], row) {
                    tracing::warn!("bottleneck cache write failed: {e}");
                }
            }
            features[i * dim..(i + 1) * dim].copy_from_slice(row);
        },
    )?;
    bar.finish_and_clear();
    let (bank, view_computed) = match cfg.views {
        0 => (None, 0),
        k => {
            let (bank, computed) = view_bank(faces, teacher, cache.as_ref(), k, cfg)?;
            (Some(bank), computed)
        }
    };
    let views_total = bank.as_ref().map(|b| n * b.k).unwrap_or(0);
    let provenance = Provenance::new(
        env!("CARGO_PKG_NAME"),
        artifacts::build_version(),
        serde_json::to_value(cfg).expect("plain config"),
    )
    .with_input("faces", faces_digest.clone())
    .with_input("teacher", teacher.resolved.identity.clone());
    let mirrored = cfg.mirror.then(|| features.split_off(n * dim));
    let b = Bottlenecks {
        views: bank,
        dim,
        features,
        mirrored,
        teacher: teacher.resolved.identity.clone(),
        layer: teacher.layer_name(),
        faces_digest,
        provenance,
    };
    let counts = Counts {
        computed: todo.len() + view_computed,
        from_cache: from_cache + views_total - view_computed,
        dim,
    };
    Ok((b, counts))
}

/// What the teacher sees of each face: the study's crop (Inception) or dlib's chip (the
/// face teacher, which preprocess stores beside the crops). Job `j` is face `j % n`,
/// flipped left-right when `j >= n` (only with `mirror`).
struct Views<'a> {
    faces: &'a Faces,
    chips: Option<&'a artifacts::Pixels>,
    height: usize,
    width: usize,
    jobs: usize,
}

impl<'a> Views<'a> {
    fn new(faces: &'a Faces, faces_path: &Path, cfg: &ExtractConfig) -> Result<Self, Error> {
        let n = faces.len();
        let jobs = if cfg.mirror { 2 * n } else { n };
        if !face_teacher::is_face_teacher(&cfg.teacher) {
            return Ok(Views {
                faces,
                chips: None,
                height: faces.height,
                width: faces.width,
                jobs,
            });
        }
        let chips = faces
            .geometry
            .as_ref()
            .and_then(|g| g.chips.as_ref())
            .ok_or_else(|| Error::NoChips(faces_path.to_path_buf()))?;
        Ok(Views {
            faces,
            chips: Some(chips),
            height: artifacts::CHIP_SIZE,
            width: artifacts::CHIP_SIZE,
            jobs,
        })
    }

    fn face(&self, i: usize) -> std::borrow::Cow<'a, [u8]> {
        let len = self.height * self.width * 3;
        match self.chips {
            Some(c) => c.slice(i * len, len),
            None => self.faces.image(i),
        }
    }

    fn get(&self, j: usize) -> std::borrow::Cow<'a, [u8]> {
        let n = self.faces.len();
        if j < n {
            self.face(j)
        } else {
            mirror_hwc(&self.face(j - n), self.height, self.width).into()
        }
    }
}

/// The bottleneck cache for this teacher's setting, when one is asked for.
fn open_cache(teacher: &Teacher, cfg: &ExtractConfig) -> Result<Option<BottleneckCache>, Error> {
    let setting = format!(
        "teacher={} layer={} dtype={:?} preprocessing={}",
        teacher.resolved.identity,
        teacher.layer_name(),
        teacher.dtype,
        serde_json::to_string(&teacher.resolved.preprocessing).expect("plain")
    );
    match &cfg.cache_dir {
        Some(dir) => Ok(Some(
            BottleneckCache::open(dir, &setting).map_err(|e| Error::Io(dir.clone(), e))?,
        )),
        None => Ok(None),
    }
}

/// The teacher stage's progress bar.
fn bar(len: usize) -> indicatif::ProgressBar {
    indicatif::ProgressBar::new(len as u64).with_style(
        indicatif::ProgressStyle::with_template(
            "bottlenecks {bar:40} {pos}/{len} [{elapsed_precise}<{eta_precise}] {per_sec}",
        )
        .expect("valid template"),
    )
}

/// Runs the teacher over the jobs `todo` in batches (job `j`'s pixels are `get(j)`, `hw`
/// in size), handing each job's row to `done`. Batch k+1 is prepared on a helper thread
/// (rayon inside) while the model runs batch k.
fn compute<'p>(
    teacher: &Teacher,
    get: &(dyn Fn(usize) -> std::borrow::Cow<'p, [u8]> + Sync),
    (vh, vw): (usize, usize),
    todo: &[usize],
    batch: usize,
    bar: &indicatif::ProgressBar,
    mut done: impl FnMut(usize, &[f32]),
) -> Result<(), Error> {
    let dim = teacher.dim();
    let chunks: Vec<Vec<usize>> = todo.chunks(batch).map(|c| c.to_vec()).collect();
    std::thread::scope(|scope| -> Result<(), Error> {
        let (tx, rx) = std::sync::mpsc::sync_channel::<(Vec<usize>, Vec<f32>)>(2);
        scope.spawn(move || {
            for chunk in chunks {
                let prepared: Vec<f32> = chunk
                    .par_iter()
                    .flat_map_iter(|&j| teacher.prepare(&get(j), vh, vw))
                    .collect();
                if tx.send((chunk, prepared)).is_err() {
                    break;
                }
            }
        });
        for (chunk, prepared) in rx {
            let out = teacher.embed(&prepared, chunk.len())?;
            for (j, &i) in chunk.iter().enumerate() {
                done(i, &out[j * dim..(j + 1) * dim]);
            }
            bar.inc(chunk.len() as u64);
        }
        Ok(())
    })
}

/// Faces whose views are cut and embedded together: bounds the pixels held at once.
const VIEW_CHUNK: usize = 64;

/// `--views K`: the teacher on K views of every face (view 0 the face as preprocess cut
/// it), each view's pixels cut from its photo and cached by content like the faces.
fn view_bank(
    faces: &Faces,
    teacher: &Teacher,
    cache: Option<&BottleneckCache>,
    k: usize,
    cfg: &ExtractConfig,
) -> Result<(ViewBank, usize), Error> {
    let recipe = cfg.view_recipe.as_ref().ok_or(Error::ViewsNeedPhotos)?;
    let source = ViewSource::new(faces, &recipe.photos)?;
    let (n, dim) = (faces.len(), teacher.dim());
    let side = if teacher.uses_chips() {
        artifacts::CHIP_SIZE
    } else {
        faces.height
    };
    let drawn: Vec<_> = (0..n)
        .map(|i| draw_views(&recipe.jitter, recipe.seed, &faces.sources[i], k))
        .collect();
    let mut features = vec![0f32; n * k * dim];
    let (mut computed, bar) = (0usize, bar(n * k));
    bar.set_message("views");
    for first in (0..n).step_by(VIEW_CHUNK) {
        let ids: Vec<usize> = (first..(first + VIEW_CHUNK).min(n)).collect();
        // Job j of this chunk: face ids[j / k], view j % k.
        let pixels: Vec<Vec<u8>> = ids
            .par_iter()
            .map(|&i| source.render(i, &drawn[i]))
            .collect::<Result<Vec<_>, _>>()?
            .into_iter()
            .flatten()
            .map(|v| if teacher.uses_chips() { v.chip } else { v.face })
            .collect();
        let keys: Vec<String> = pixels
            .par_iter()
            .map(|p| image_key(side, side, p))
            .collect();
        let row = |j: usize| (ids[j / k] * k + j % k) * dim;
        let mut todo = Vec::new();
        for (j, key) in keys.iter().enumerate() {
            match cache.and_then(|c| c.get(key, Some(dim))) {
                Some(v) => features[row(j)..row(j) + dim].copy_from_slice(&v),
                None => todo.push(j),
            }
        }
        bar.inc((keys.len() - todo.len()) as u64);
        computed += todo.len();
        let get = |j: usize| std::borrow::Cow::Borrowed(pixels[j].as_slice());
        compute(
            teacher,
            &get,
            (side, side),
            &todo,
            cfg.batch,
            &bar,
            |j, out| {
                if let Some(c) = cache {
                    if let Err(e) = c.put(&keys[j], out) {
                        tracing::warn!("bottleneck cache write failed: {e}");
                    }
                }
                features[row(j)..row(j) + dim].copy_from_slice(out);
            },
        )?;
    }
    bar.finish_and_clear();
    tracing::info!(
        "{n} faces x {k} views: {computed} computed, {} from the cache",
        n * k - computed
    );
    let bank = ViewBank {
        k,
        features,
        params: drawn.iter().flatten().flat_map(|p| p.to_row()).collect(),
        params_width: VIEW_PARAMS,
        recipe: serde_json::to_value(recipe).expect("plain"),
    };
    Ok((bank, computed))
}

/// Builds a `Bottlenecks` artifact from `retrain.py` text files matching the faces' sources.
pub fn import_retrain(
    faces_path: &Path,
    dir: &Path,
    out_path: &Path,
    cfg: &ExtractConfig,
) -> Result<Summary, Error> {
    if cfg.mirror {
        return Err(Error::MirrorNeedsTeacher);
    }
    if cfg.views > 0 {
        return Err(Error::ViewsNeedTeacher);
    }
    let start = std::time::Instant::now();
    let faces = Faces::read(faces_path)?;
    let (dim, features) = crate::retrain::import(dir, &faces.sources)?;
    let teacher = format!("retrain-import:{}", dir.display());
    let (faces_digest, provenance) = faces_provenance(faces_path, cfg)?;
    Bottlenecks {
        views: None,
        dim,
        features,
        mirrored: None,
        teacher: teacher.clone(),
        layer: "pool".into(),
        faces_digest,
        provenance: provenance.with_input("retrain_dir", dir.display().to_string()),
    }
    .write(out_path)?;
    Ok(Summary {
        images: faces.len(),
        computed: 0,
        from_cache: faces.len(),
        dim,
        seconds: start.elapsed().as_secs_f64(),
        teacher,
    })
}

/// Writes a bottlenecks artifact as `retrain.py` text files.
pub fn export_retrain(
    faces_path: &Path,
    bottlenecks_path: &Path,
    dir: &Path,
) -> Result<usize, Error> {
    let faces = Faces::read(faces_path)?;
    let b = Bottlenecks::read(bottlenecks_path)?;
    if b.len() != faces.len() {
        return Err(Error::RowCount {
            bottlenecks: bottlenecks_path.to_path_buf(),
            rows: b.len(),
            faces_path: faces_path.to_path_buf(),
            faces: faces.len(),
        });
    }
    crate::retrain::export(dir, &faces.sources, b.dim, &b.features)?;
    Ok(faces.len())
}
