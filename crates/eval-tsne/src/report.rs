//! `report.html`: one self-contained page (images embedded as data URIs).

use crate::metrics::Metrics;
use crate::suspects::Suspect;
use base64::Engine;
use std::path::Path;

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

fn img(path: &Path) -> String {
    match std::fs::read(path) {
        Ok(bytes) => format!(
            "<img alt=\"{}\" src=\"data:image/png;base64,{}\">",
            esc(&path
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default()),
            base64::engine::general_purpose::STANDARD.encode(bytes)
        ),
        Err(_) => format!("<p>(missing {})</p>", esc(&path.display().to_string())),
    }
}

fn metrics_table(title: &str, m: &Metrics) -> String {
    let mut s = format!(
        "<h2>{}</h2><p>{} images: top-1 <b>{:.4}</b>, top-3 {:.4}, macro precision {:.4}, recall {:.4}, F1 <b>{:.4}</b></p>",
        esc(title),
        m.n,
        m.top1,
        m.top3,
        m.macro_precision,
        m.macro_recall,
        m.macro_f1
    );
    s.push_str("<table><tr><th>class</th><th>support</th><th>precision</th><th>recall</th><th>F1</th></tr>");
    for c in &m.per_class {
        s.push_str(&format!(
            "<tr><td>{}</td><td>{}</td><td>{:.3}</td><td>{:.3}</td><td>{:.3}</td></tr>",
            esc(&c.class),
            c.support,
            c.precision,
            c.recall,
            c.f1
        ));
    }
    s.push_str("</table>");
    s
}

/// What `report.html` shows, in the order it shows it.
pub struct Page<'a> {
    pub title: String,
    pub summary: Vec<(String, String)>,
    pub test: Option<&'a Metrics>,
    pub val: Option<&'a Metrics>,
    pub images: Vec<(String, std::path::PathBuf)>,
    pub suspects: &'a [Suspect],
    pub suspect_images: Vec<std::path::PathBuf>,
    pub identity: Option<&'a crate::identity::IdentityReport>,
    pub identity_images: Vec<std::path::PathBuf>,
}

/// Writes `page` to `path` atomically.
pub fn write(path: &Path, page: &Page) -> Result<(), artifacts::ArtifactError> {
    let mut h = String::new();
    h.push_str("<!doctype html><html><head><meta charset=\"utf-8\"><title>");
    h.push_str(&esc(&page.title));
    h.push_str("</title><style>body{font-family:sans-serif;max-width:1600px;margin:1em auto;padding:0 1em}table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:2px 8px;text-align:right}td:first-child{text-align:left}img{max-width:100%;border:1px solid #ddd;margin:4px 0}</style></head><body>");
    h.push_str(&format!("<h1>{}</h1><table>", esc(&page.title)));
    for (k, v) in &page.summary {
        h.push_str(&format!("<tr><td>{}</td><td>{}</td></tr>", esc(k), esc(v)));
    }
    h.push_str("</table>");
    if let Some(m) = page.test {
        h.push_str(&metrics_table("Test split", m));
    }
    if let Some(m) = page.val {
        h.push_str(&metrics_table("Validation split", m));
    }
    if let Some(id) = page.identity {
        // The identity teacher's findings come first: they are what a data scientist acts on.
        h.push_str(&format!(
            "<h2>Dirty data by identity: {} faces of another person of the data, {} strangers, {} folders of two people</h2><p>Each folder's person is its largest cluster of face descriptors (Chinese whispers, pairs closer than {:.2}); a face farther than {:.2} (dlib's same-person distance) from its folder's person is flagged: as another person when it lies near another folder's person, as a stranger (someone else, a drawing, a crop that is not a face) when it lies near none.</p>",
            id.other_person,
            id.strangers,
            id.split_folders.len(),
            id.config.map(|c| c.link).unwrap_or(0.5),
            id.config.map(|c| c.same_person).unwrap_or(0.6),
        ));
        if !id.split_folders.is_empty() {
            h.push_str("<table><tr><th>folder</th><th>cluster sizes (first: taken as the folder's person)</th><th>distance between the two largest</th></tr>");
            for f in &id.split_folders {
                h.push_str(&format!(
                    "<tr><td>{}</td><td>{}</td><td>{:.2}</td></tr>",
                    esc(&f.class),
                    f.sizes
                        .iter()
                        .map(|s| s.to_string())
                        .collect::<Vec<_>>()
                        .join(" / "),
                    f.centre_distance
                ));
            }
            h.push_str("</table>");
        }
        h.push_str("<table><tr><th>image</th><th>label</th><th>verdict</th><th>distance to its folder's person</th><th>nearest other folder</th><th>distance</th></tr>");
        for s in id.suspects.iter().take(300) {
            let verdict = s.verdict.describe();
            h.push_str(&format!(
                "<tr><td>{}</td><td>{}</td><td>{}</td><td>{:.2}</td><td>{}</td><td>{:.2}</td></tr>",
                esc(&s.source),
                esc(&s.label),
                esc(&verdict),
                s.own_distance,
                esc(&s.nearest_class),
                s.nearest_distance
            ));
        }
        h.push_str("</table>");
        for p in &page.identity_images {
            h.push_str(&img(p));
        }
    }
    for (title, p) in &page.images {
        h.push_str(&format!("<h2>{}</h2>{}", esc(title), img(p)));
    }
    h.push_str(&format!(
        "<h2>Dirty-data suspects ({})</h2><p>Images whose nearest neighbours mostly carry another label, or that lie far from their class's medoid, in the teacher's feature space.</p>",
        page.suspects.len()
    ));
    h.push_str("<table><tr><th>image</th><th>label</th><th>neighbours say</th><th>disagreement</th><th>medoid z</th><th>score</th></tr>");
    for s in page.suspects.iter().take(200) {
        h.push_str(&format!(
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{:.2}</td><td>{:.2}</td><td>{:.2}</td></tr>",
            esc(&s.source),
            esc(&s.label),
            esc(&s.neighbours_say),
            s.neighbour_disagreement,
            s.medoid_z,
            s.score
        ));
    }
    h.push_str("</table>");
    for p in &page.suspect_images {
        h.push_str(&img(p));
    }
    h.push_str("</body></html>");
    artifacts::write_atomic(path, h.as_bytes())
}
