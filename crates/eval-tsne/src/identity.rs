//! Dirty data by identity, with a face-identity teacher (dlib's descriptor: the same
//! person lies below distance 0.6). Each class is clustered (dlib's Chinese whispers over
//! the pairs closer than the threshold); its largest cluster is taken as the folder's
//! person, and that cluster's per-dimension median as the class's centre. A face far from its own centre is a
//! suspect: "another person of the data" when it lies near another class's centre (which
//! one is said), "a stranger" (someone else, a drawing, a crop that is not a face) when it
//! lies near none. A class with a second sizeable cluster is a folder of two people.

/// When a face or a folder is flagged.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct IdentityConfig {
    /// Same person below this Euclidean distance (dlib's 0.6).
    pub same_person: f32,
    /// A flagged face is called another folder's person when it lies this close to that
    /// folder's centre (a centre is nearer its faces than they are to each other, so this
    /// is under `same_person`; measured on msceleb-samples with planted errors and strangers).
    pub other_person: f32,
    /// Pairs closer than this are linked for clustering: the same-person distance (dlib's
    /// clustering example uses 0.5, which on msceleb-samples breaks m.0qfnmpt's second and
    /// third person into clusters too small to report).
    pub link: f32,
    /// A second cluster counts as another person of the folder from this many faces...
    pub min_cluster: usize,
    /// ...and this share of the folder.
    pub min_share: f64,
}

impl Default for IdentityConfig {
    fn default() -> Self {
        IdentityConfig {
            same_person: 0.6,
            other_person: 0.5,
            link: 0.6,
            min_cluster: 5,
            min_share: 0.1,
        }
    }
}

/// What a flagged face is.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum Verdict {
    /// Near another class's person: probably that person, mislabelled.
    OtherPerson { class: String },
    /// Near no class's person.
    Stranger,
}

impl Verdict {
    /// `other person` or `stranger` (the flags file's column).
    pub fn kind(&self) -> &'static str {
        match self {
            Verdict::OtherPerson { .. } => "other person",
            Verdict::Stranger => "stranger",
        }
    }

    /// The folder it looks like, if any.
    pub fn looks_like(&self) -> Option<&str> {
        match self {
            Verdict::OtherPerson { class } => Some(class),
            Verdict::Stranger => None,
        }
    }

    /// `looks like <class>` or `stranger`, for captions and tables.
    pub fn describe(&self) -> String {
        match self.looks_like() {
            Some(c) => format!("looks like {c}"),
            None => "stranger".into(),
        }
    }
}

/// A flagged face.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct IdentitySuspect {
    pub index: usize,
    pub source: String,
    pub label: String,
    #[serde(flatten)]
    pub verdict: Verdict,
    /// Distance to its own class's centre.
    pub own_distance: f32,
    /// The nearest other class and the distance to its centre.
    pub nearest_class: String,
    pub nearest_distance: f32,
    /// Larger = surer: how far beyond the threshold it lies from its own class.
    pub score: f32,
}

/// A folder that holds more than one person.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct SplitFolder {
    pub class: String,
    /// Cluster sizes, largest (taken as the folder's person) first; only sizeable ones.
    pub sizes: Vec<usize>,
    /// Face indices of each sizeable cluster, in the same order.
    pub members: Vec<Vec<usize>>,
    /// Distance between the two largest clusters' centres.
    pub centre_distance: f32,
}

/// The identity analysis of a data set.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct IdentityReport {
    pub config: Option<IdentityConfig>,
    /// Ranked, surest first.
    pub suspects: Vec<IdentitySuspect>,
    pub split_folders: Vec<SplitFolder>,
    pub other_person: usize,
    pub strangers: usize,
}

/// Euclidean distance between two descriptors.
pub fn dist(a: &[f32], b: &[f32]) -> f32 {
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y) * (x - y))
        .sum::<f32>()
        .sqrt()
}

/// dlib's Chinese whispers: every node starts in its own cluster; in a fixed pseudo-random
/// order each node takes the label with the most weight among its neighbours (edges:
/// pairs closer than `link`), for `iterations` sweeps. Deterministic for a given seed.
pub fn chinese_whispers(points: &[&[f32]], link: f32, iterations: usize, seed: u64) -> Vec<usize> {
    let n = points.len();
    if n == 0 {
        return Vec::new();
    }
    let mut adj: Vec<Vec<(usize, f32)>> = vec![Vec::new(); n];
    for i in 0..n {
        for j in i + 1..n {
            let d = dist(points[i], points[j]);
            if d < link {
                // dlib weights edges by closeness; ties go to the smaller label.
                let w = 1.0 - d / link;
                adj[i].push((j, w));
                adj[j].push((i, w));
            }
        }
    }
    let mut label: Vec<usize> = (0..n).collect();
    let mut draw = kernels::stats::XorShift::new(seed | 1);
    for _ in 0..iterations * n {
        let i = draw.below(n);
        if adj[i].is_empty() {
            continue;
        }
        let mut votes: std::collections::BTreeMap<usize, f32> = Default::default();
        for &(j, w) in &adj[i] {
            *votes.entry(label[j]).or_default() += w;
        }
        let best = votes
            .iter()
            .max_by(|a, b| a.1.total_cmp(b.1).then(b.0.cmp(a.0)))
            .map(|(l, _)| *l)
            .expect("non-empty");
        label[i] = best;
    }
    // Renumber: 0 = largest cluster.
    let mut sizes: std::collections::BTreeMap<usize, usize> = Default::default();
    label
        .iter()
        .for_each(|l| *sizes.entry(*l).or_default() += 1);
    let mut order: Vec<(usize, usize)> = sizes.into_iter().collect();
    order.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
    let rank: std::collections::HashMap<usize, usize> = order
        .iter()
        .enumerate()
        .map(|(r, (l, _))| (*l, r))
        .collect();
    label.iter().map(|l| rank[l]).collect()
}

/// Per-dimension median: a centre that a few faces of another person do not pull.
fn mean(points: &[&[f32]], dim: usize) -> Vec<f32> {
    let mut m = vec![0f32; dim];
    for p in points {
        m.iter_mut().zip(p.iter()).for_each(|(a, b)| *a += b);
    }
    let n = points.len().max(1) as f32;
    m.iter_mut().for_each(|v| *v /= n);
    m
}

/// Flags faces and folders by identity. `features` are `[N, dim]` descriptors (the face
/// teacher's).
pub fn analyse(
    features: &[f32],
    dim: usize,
    labels: &[u32],
    class_names: &[String],
    sources: &[String],
    cfg: &IdentityConfig,
) -> IdentityReport {
    let n = labels.len();
    let row = |i: usize| &features[i * dim..(i + 1) * dim];
    let mut centres: Vec<Option<Vec<f32>>> = vec![None; class_names.len()];
    let mut split_folders = Vec::new();
    for (c, name) in class_names.iter().enumerate() {
        let members: Vec<usize> = (0..n).filter(|&i| labels[i] as usize == c).collect();
        if members.is_empty() {
            continue;
        }
        let pts: Vec<&[f32]> = members.iter().map(|&i| row(i)).collect();
        let cl = chinese_whispers(&pts, cfg.link, 20, 42 + c as u64);
        let clusters = cl.iter().max().map(|m| m + 1).unwrap_or(0);
        let mut groups: Vec<Vec<usize>> = vec![Vec::new(); clusters];
        for (k, &l) in cl.iter().enumerate() {
            groups[l].push(members[k]);
        }
        let largest: Vec<&[f32]> = groups[0].iter().map(|&i| row(i)).collect();
        centres[c] = Some(kernels::stats::median(&largest, dim));
        let sizeable: Vec<Vec<usize>> = groups
            .into_iter()
            .filter(|g| {
                g.len() >= cfg.min_cluster && g.len() as f64 >= cfg.min_share * members.len() as f64
            })
            .collect();
        if sizeable.len() >= 2 {
            let a: Vec<&[f32]> = sizeable[0].iter().map(|&i| row(i)).collect();
            let b: Vec<&[f32]> = sizeable[1].iter().map(|&i| row(i)).collect();
            let d = dist(&mean(&a, dim), &mean(&b, dim));
            // Two clusters of one person (pose, age) have close centres.
            if d >= cfg.same_person {
                split_folders.push(SplitFolder {
                    class: name.clone(),
                    sizes: sizeable.iter().map(Vec::len).collect(),
                    members: sizeable,
                    centre_distance: d,
                });
            }
        }
    }
    let mut suspects = Vec::new();
    for i in 0..n {
        let own = labels[i] as usize;
        let Some(oc) = &centres[own] else { continue };
        let own_d = dist(row(i), oc);
        if own_d <= cfg.same_person {
            continue;
        }
        let (near, near_d) = centres
            .iter()
            .enumerate()
            .filter(|(c, _)| *c != own)
            .filter_map(|(c, m)| m.as_ref().map(|m| (c, dist(row(i), m))))
            .min_by(|a, b| a.1.total_cmp(&b.1))
            .unwrap_or((own, f32::INFINITY));
        let verdict = if near_d < cfg.other_person && near_d < own_d {
            Verdict::OtherPerson {
                class: class_names[near].clone(),
            }
        } else {
            Verdict::Stranger
        };
        suspects.push(IdentitySuspect {
            index: i,
            source: sources[i].clone(),
            label: class_names[own].clone(),
            verdict,
            own_distance: own_d,
            nearest_class: class_names.get(near).cloned().unwrap_or_default(),
            nearest_distance: near_d,
            score: own_d - cfg.same_person + (own_d - near_d).max(0.0),
        });
    }
    suspects.sort_by(|a, b| b.score.total_cmp(&a.score));
    let other_person = suspects
        .iter()
        .filter(|s| matches!(s.verdict, Verdict::OtherPerson { .. }))
        .count();
    IdentityReport {
        config: Some(*cfg),
        strangers: suspects.len() - other_person,
        other_person,
        suspects,
        split_folders,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A point near `centre` (unit-ish spread of `r` in a few dimensions).
    fn near(centre: &[f32], k: usize, r: f32) -> Vec<f32> {
        let mut v = centre.to_vec();
        let d = v.len();
        v[k % d] += r;
        v[(k * 7 + 3) % d] -= r * 0.5;
        v
    }

    fn person(p: usize, dim: usize) -> Vec<f32> {
        let mut v = vec![0f32; dim];
        v[p] = 1.0;
        v
    }

    #[test]
    fn impostors_strangers_and_a_two_person_folder() {
        let dim = 16;
        let (mut f, mut labels, mut sources) = (Vec::new(), Vec::new(), Vec::new());
        let mut add = |v: Vec<f32>, l: u32, s: &str| {
            f.extend(v);
            labels.push(l);
            sources.push(s.to_string());
        };
        // Class 0: person 0 (20 faces); class 1: person 1 (20) and person 2 (10);
        // class 2: person 3 (20). Face "a" in class 0 is person 3; "s" is nobody.
        for k in 0..20 {
            add(near(&person(0, dim), k, 0.1), 0, "c0");
            add(near(&person(1, dim), k, 0.1), 1, "c1");
            add(near(&person(3, dim), k, 0.1), 2, "c2");
        }
        for k in 0..10 {
            add(near(&person(2, dim), k, 0.1), 1, "c1-second");
        }
        add(near(&person(3, dim), 5, 0.05), 0, "a");
        add(vec![0.3; dim], 0, "s");
        let names: Vec<String> = ["zero", "one", "three"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let r = analyse(
            &f,
            dim,
            &labels,
            &names,
            &sources,
            &IdentityConfig::default(),
        );
        let a = r
            .suspects
            .iter()
            .find(|s| s.source == "a")
            .expect("impostor flagged");
        assert_eq!(
            a.verdict,
            Verdict::OtherPerson {
                class: "three".into()
            }
        );
        let s = r
            .suspects
            .iter()
            .find(|s| s.source == "s")
            .expect("stranger flagged");
        assert_eq!(s.verdict, Verdict::Stranger);
        // Faces of the folder's own person are never flagged.
        assert!(r
            .suspects
            .iter()
            .all(|x| x.source != "c0" && x.source != "c2" && x.source != "c1"));
        // The second person of class 1 is flagged and the folder is reported as split.
        assert_eq!(r.split_folders.len(), 1, "{:?}", r.split_folders);
        assert_eq!(r.split_folders[0].class, "one");
        assert_eq!(r.split_folders[0].sizes, vec![20, 10]);
        assert_eq!(
            r.suspects
                .iter()
                .filter(|x| x.source == "c1-second")
                .count(),
            10
        );
        assert_eq!(r.other_person + r.strangers, r.suspects.len());
    }

    #[test]
    fn one_person_in_two_poses_is_not_a_split() {
        // Two clusters whose centres are closer than the same-person threshold.
        let dim = 8;
        let mut f = Vec::new();
        let mut a = vec![0f32; dim];
        a[0] = 1.0;
        let mut b = a.clone();
        b[1] = 0.55;
        for k in 0..10 {
            f.extend(near(&a, k, 0.02));
            f.extend(near(&b, k, 0.02));
        }
        let labels = vec![0u32; 20];
        let sources = vec!["x".to_string(); 20];
        let r = analyse(
            &f,
            dim,
            &labels,
            &["p".into()],
            &sources,
            &IdentityConfig::default(),
        );
        assert!(r.split_folders.is_empty(), "{:?}", r.split_folders);
        assert!(r.suspects.is_empty());
    }

    #[test]
    fn clustering_is_deterministic_and_largest_first() {
        let pts: Vec<Vec<f32>> = (0..12)
            .map(|i| {
                if i < 8 {
                    vec![0.0, i as f32 * 0.01]
                } else {
                    vec![5.0, i as f32 * 0.01]
                }
            })
            .collect();
        let refs: Vec<&[f32]> = pts.iter().map(|p| p.as_slice()).collect();
        let a = chinese_whispers(&refs, 0.5, 20, 7);
        assert_eq!(a, chinese_whispers(&refs, 0.5, 20, 7));
        assert!(a[..8].iter().all(|&l| l == 0) && a[8..].iter().all(|&l| l == 1));
    }
}
