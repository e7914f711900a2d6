//! `index.html`, the page a pipeline run ends with: the data, the results (teacher x
//! mode, the best model marked), the t-SNE maps, the dirty-data suspects, the settings and
//! timings, on one page. Every link is relative to the run's folder.

use crate::util::fmt;
use serde_json::Value;
use std::collections::BTreeMap;
use std::path::Path;

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// `path` relative to the run folder `out` (as the pipeline wrote it, or already relative).
fn rel(path: &str, out: &Path) -> String {
    let p = Path::new(path);
    p.strip_prefix(out).unwrap_or(p).display().to_string()
}

/// A JSON file the page reads when it is there (a missing one leaves its part out).
fn read_json(path: &Path) -> Option<Value> {
    crate::util::read_json(path).ok()
}

const STYLE: &str = "body{font-family:system-ui,sans-serif;max-width:1200px;margin:1em auto;padding:0 1em;color:#222}\
h2{border-bottom:1px solid #ddd;padding-bottom:.2em;margin-top:1.6em}\
table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:3px 10px;text-align:right}\
td:first-child,th:first-child,td:nth-child(2),th:nth-child(2){text-align:left}tr.best{background:#e6f4e6;font-weight:bold}\
.grid{display:flex;flex-wrap:wrap;gap:12px}.grid figure{margin:0;width:380px}.grid img{width:100%;border:1px solid #ddd}\
figcaption{font-size:.9em;color:#555}code,pre{background:#f4f4f4;padding:2px 4px}pre{padding:8px;overflow-x:auto}\
.note{color:#666;font-size:.9em}";

/// The page for a pipeline summary (see `pipeline::run`) of the run folder `out`.
pub fn index_html(s: &Value, out: &Path) -> String {
    let mut h = format!(
        "<!doctype html><html><head><meta charset=\"utf-8\"><title>celeb-transfer: {}</title><style>{STYLE}</style></head><body>",
        esc(s["data"].as_str().unwrap_or(""))
    );
    h.push_str(&format!(
        "<h1>celeb-transfer results</h1><p>{} classes from <code>{}</code>.</p>",
        s["classes"],
        esc(s["data"].as_str().unwrap_or(""))
    ));
    h.push_str(&data_section(out));
    h.push_str(&results_section(s, out));
    h.push_str(&tsne_section(s, out));
    h.push_str(&identity_section(s, out));
    h.push_str(&suspects_section(s, out));
    h.push_str(&unknowns_section(out));
    h.push_str(&settings_section(s));
    h.push_str("</body></html>\n");
    h
}

fn data_section(out: &Path) -> String {
    let mut h = String::from("<h2 id=\"data\">Data</h2>");
    let rejects = read_json(&out.join("rejects.json"));
    let kept = artifacts::read_header(&out.join("faces.safetensors"))
        .ok()
        .and_then(|m| m.extra["sources"].as_array().map(|a| a.len()));
    let n_rej = rejects
        .as_ref()
        .and_then(|r| r["rejects"].as_array().map(|a| a.len()))
        .unwrap_or(0);
    if let Some(kept) = kept {
        let read = kept + n_rej;
        h.push_str(&format!(
            "<p>{read} photos read, <b>{kept} faces kept</b> ({:.1}%), {n_rej} rejected (<a href=\"rejects.json\">rejects.json</a>: every file and why).</p>",
            100.0 * kept as f64 / read.max(1) as f64
        ));
    }
    if let Some(r) = &rejects {
        let mut by: BTreeMap<String, usize> = BTreeMap::new();
        for x in r["rejects"].as_array().into_iter().flatten() {
            *by.entry(x["reason"].as_str().unwrap_or("?").to_string())
                .or_default() += 1;
        }
        if !by.is_empty() {
            h.push_str("<table><tr><th>reason</th><th>photos</th></tr>");
            let mut v: Vec<_> = by.into_iter().collect();
            v.sort_by_key(|x| std::cmp::Reverse(x.1));
            for (reason, n) in v {
                h.push_str(&format!("<tr><td>{}</td><td>{n}</td></tr>", esc(&reason)));
            }
            h.push_str("</table>");
        }
    }
    if let Some(q) = read_json(&out.join("alignment-quality.json")) {
        h.push_str(&format!(
            "<p>Alignment: landmark spread over the aligned faces (px at 150): eyes {}, mouth {}, nose tip {} (<a href=\"alignment-quality.json\">alignment-quality.json</a>).</p>",
            fmt(&q["eye_centres"], 2),
            fmt(&q["mouth"], 2),
            fmt(&q["nose_tip"], 2)
        ));
    }
    if out.join("montage.png").exists() {
        h.push_str("<figure><a href=\"montage.png\"><img src=\"montage.png\" alt=\"aligned faces\" style=\"max-width:100%\"></a><figcaption>Aligned faces, a sample per class.</figcaption></figure>");
    }
    h
}

fn results_section(s: &Value, out: &Path) -> String {
    let mut h = String::from("<h2 id=\"results\">Results</h2><table><tr><th>teacher</th><th>mode</th><th>validation accuracy</th><th>test accuracy</th><th>test, unflagged faces</th><th>test macro-F1</th><th>training (s)</th><th>suspects</th><th>report</th></tr>");
    for r in s["modes"].as_array().into_iter().flatten() {
        let best = r["best"] == Value::Bool(true);
        h.push_str(&format!(
            "<tr{}><td>{}</td><td>{}{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td><a href=\"{}\">report</a></td></tr>",
            if best { " class=\"best\"" } else { "" },
            esc(r["teacher"].as_str().unwrap_or("")),
            esc(r["mode"].as_str().unwrap_or("")),
            if best { " (best)" } else { "" },
            fmt(&r["val_top1"], 3),
            fmt(&r["test_top1"], 3),
            fmt(&r["test_unflagged_top1"], 3),
            fmt(&r["test_macro_f1"], 3),
            fmt(&r["train_seconds"], 0),
            r["suspects"],
            esc(&rel(r["report"].as_str().unwrap_or(""), out)),
        ));
    }
    h.push_str("</table><p class=\"note\">Teachers: <b>inception</b>, the study's ImageNet Inception-v3; <b>face</b>, dlib's face descriptor (trained for identity). <i>base</i> learns from the labels alone; <i>probe</i> is a linear classifier on the teacher's features; <i>distill</i> is a deeper student trained on views of each face cut from the photo, matching the teacher's output on the very same view (its probe's probabilities, its descriptor, the distances between faces); <i>distill-base</i> is that student, views and schedule from the labels alone, so the gap between the two is the teacher's. <i>Unflagged faces</i>: the test faces the face teacher's identity analysis does not flag as another person or a stranger, where the labels can be trusted. The best model is chosen by validation accuracy, never by test accuracy. Figures move by a point or two with the seed and with the CPU kind.</p>");
    if let Some(b) = s["best"].as_object() {
        let ck = rel(
            b.get("checkpoint").and_then(|v| v.as_str()).unwrap_or(""),
            out,
        );
        h.push_str(&format!(
            "<h3>The best model</h3><p><code>{}</code> ({} {}, validation {}, test {}). Open it from Python:</p><pre>from safetensors import safe_open\nimport json\nf = safe_open(\"{}\", \"np\")\nmeta = json.loads(f.metadata()[\"celeb_transfer\"])\nprint(meta[\"config\"], list(f.keys())[:5])</pre><p>Name the people in new photos with it (every face; <i>unknown</i> for a face too far from everyone it knows; <code>--annotate DIR</code> draws the names):</p><pre>cargo run --release -p predict -- --model {} PHOTO|FOLDER ...</pre>",
            esc(&ck),
            esc(b.get("teacher").and_then(|v| v.as_str()).unwrap_or("")),
            esc(b.get("mode").and_then(|v| v.as_str()).unwrap_or("")),
            fmt(b.get("val_top1").unwrap_or(&Value::Null), 3),
            fmt(b.get("test_top1").unwrap_or(&Value::Null), 3),
            esc(&ck),
            esc(b.get("checkpoint").and_then(|v| v.as_str()).unwrap_or("")),
        ));
    }
    h
}

fn tsne_section(s: &Value, out: &Path) -> String {
    let mut h = String::from("<h2 id=\"tsne\">t-SNE maps</h2><p class=\"note\">Each model's test-and-validation embeddings, coloured by label; a tight cluster per colour is a model that separates the people.</p><div class=\"grid\">");
    for r in s["modes"].as_array().into_iter().flatten() {
        let dir = rel(r["eval_dir"].as_str().unwrap_or(""), out);
        if out.join(&dir).join("tsne.png").exists() {
            h.push_str(&format!(
                "<figure><a href=\"{0}/tsne.png\"><img src=\"{0}/tsne.png\" alt=\"t-SNE {1}\"></a><figcaption>{1}</figcaption></figure>",
                esc(&dir),
                esc(&format!("{} {}", r["teacher"].as_str().unwrap_or(""), r["mode"].as_str().unwrap_or("")))
            ));
        }
    }
    h.push_str("</div>");
    h
}

/// Dirty data by identity, from the best face-teacher model's report: counts of faces of
/// another person, strangers and folders of two people, with links to the montages.
fn identity_section(s: &Value, out: &Path) -> String {
    let rows: Vec<&Value> = s["modes"].as_array().into_iter().flatten().collect();
    let face: Vec<&&Value> = rows.iter().filter(|r| r["teacher"] == "face").collect();
    let Some(r) = face
        .iter()
        .find(|r| r["best"] == Value::Bool(true))
        .or(face.first())
    else {
        return String::new();
    };
    let dir = rel(r["eval_dir"].as_str().unwrap_or(""), out);
    let Some(id) = read_json(&out.join(&dir).join("report.json")).map(|r| r["identity"].clone())
    else {
        return String::new();
    };
    if id.is_null() {
        return String::new();
    }
    let count = |k: &str| id[k].as_u64().unwrap_or(0);
    let splits: Vec<&Value> = id["split_folders"]
        .as_array()
        .into_iter()
        .flatten()
        .collect();
    let mut h = format!(
        "<h2 id=\"identity\">Dirty data by identity</h2><p>By dlib's face descriptor (same person below distance 0.6; <a href=\"{0}/report.json\">scores</a>, <a href=\"{0}/report.html\">table</a>): <b>{1}</b> faces look like another person of the data, <b>{2}</b> are strangers (someone else, a drawing, a crop that is not a face), <b>{3}</b> folders hold two people{4}.</p><div class=\"grid\">",
        esc(&dir),
        count("other_person"),
        count("strangers"),
        splits.len(),
        if splits.is_empty() {
            String::new()
        } else {
            format!(
                " ({})",
                splits
                    .iter()
                    .map(|f| format!(
                        "{}: {}",
                        esc(f["class"].as_str().unwrap_or("")),
                        f["sizes"]
                            .as_array()
                            .into_iter()
                            .flatten()
                            .map(|v| v.to_string())
                            .collect::<Vec<_>>()
                            .join(" / ")
                    ))
                    .collect::<Vec<_>>()
                    .join("; ")
            )
        }
    );
    let mut files: Vec<String> = std::fs::read_dir(out.join(&dir))
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|f| {
            (f.starts_with("split-") || f.starts_with("identity-suspects-")) && f.ends_with(".png")
        })
        .collect();
    // The split folders first.
    files.sort_by_key(|f| (!f.starts_with("split-"), f.clone()));
    for f in files {
        let name = f
            .trim_start_matches("identity-suspects-")
            .trim_end_matches(".png");
        h.push_str(&format!(
            "<figure><a href=\"{0}/{1}\"><img src=\"{0}/{1}\" alt=\"{2}\"></a><figcaption>{2}</figcaption></figure>",
            esc(&dir),
            esc(&f),
            esc(name)
        ));
    }
    h.push_str("</div>");
    if out.join("flags.csv").is_file() {
        h.push_str("<p>The cleaning loop: <a href=\"flags.csv\">flags.csv</a> lists every flagged face, ranked, with an <code>action</code> column (<code>drop</code> prefilled). Set <code>keep</code> for the faces that are right, save it as <code>exclusions.csv</code> here, and run the pipeline again: the faces marked <code>drop</code> leave training and evaluation (the photos stay where they are).</p>");
    }
    if let Some(e) = s["exclusions"].as_str() {
        h.push_str(&format!(
            "<p>This run left out the faces marked <code>drop</code> in <code>{}</code>.</p>",
            esc(e)
        ));
    }
    h
}

fn suspects_section(s: &Value, out: &Path) -> String {
    let mut h = String::from("<h2 id=\"suspects\">Dirty data: suspects per class</h2>");
    // The best model's report, else the first.
    let rows: Vec<&Value> = s["modes"].as_array().into_iter().flatten().collect();
    let Some(r) = rows
        .iter()
        .find(|r| r["best"] == Value::Bool(true))
        .or(rows.first())
    else {
        return h;
    };
    let dir = rel(r["eval_dir"].as_str().unwrap_or(""), out);
    let report = read_json(&out.join(&dir).join("report.json"));
    let n = report
        .as_ref()
        .and_then(|r| r["suspects"].as_array().map(|a| a.len()))
        .unwrap_or(0);
    h.push_str(&format!(
        "<p>{n} faces flagged by the {} {} model's report (<a href=\"{}/report.json\">scores</a>): faces far from their own class or near another. Ranked montages per class:</p><div class=\"grid\">",
        esc(r["teacher"].as_str().unwrap_or("")),
        esc(r["mode"].as_str().unwrap_or("")),
        esc(&dir)
    ));
    let mut files: Vec<String> = std::fs::read_dir(out.join(&dir))
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|f| f.starts_with("suspects-") && f.ends_with(".png"))
        .collect();
    files.sort();
    for f in files {
        let class = f.trim_start_matches("suspects-").trim_end_matches(".png");
        h.push_str(&format!(
            "<figure><a href=\"{0}/{1}\"><img src=\"{0}/{1}\" alt=\"suspects {2}\"></a><figcaption>{2}</figcaption></figure>",
            esc(&dir),
            esc(&f),
            esc(class)
        ));
    }
    h.push_str("</div>");
    h
}

/// The groups of unknown faces under `<out>/unknowns/` (`predict --group-unknowns`), by
/// their folder names (renamed ones are named people), each with its montage.
fn unknowns_section(out: &Path) -> String {
    let mut h = String::from("<h2 id=\"unknowns\">Unknown faces, grouped</h2>");
    let dir = out.join("unknowns");
    let mut groups: Vec<(String, usize)> = std::fs::read_dir(&dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let record = read_json(&e.path().join("group.json"))?;
            let faces = record["faces"].as_array().map(|f| f.len()).unwrap_or(0);
            Some((e.file_name().to_string_lossy().into_owned(), faces))
        })
        .collect();
    let how = "<code>cargo run --release -p predict -- PHOTOS --group-unknowns data/artifacts/unknowns</code> groups the faces a model calls unknown into people; rename a group's folder to the person's name (or delete the faces that are not them) and <code>cargo xtask pipeline --add data/artifacts/unknowns</code> adds the named ones to the data and trains again";
    if groups.is_empty() {
        h.push_str(&format!("<p class=\"note\">{how}.</p>"));
        return h;
    }
    // Largest first, as predict numbers them; named ones (renamed folders) before.
    groups.sort_by(|a, b| {
        (a.0.starts_with("unknown-"), std::cmp::Reverse(a.1), &a.0).cmp(&(
            b.0.starts_with("unknown-"),
            std::cmp::Reverse(b.1),
            &b.0,
        ))
    });
    let named = groups
        .iter()
        .filter(|g| !g.0.starts_with("unknown-"))
        .count();
    h.push_str(&format!(
        "<p>{} groups in <a href=\"unknowns/groups.csv\">unknowns/</a>, {named} named. {how}.</p><div class=\"grid\">",
        groups.len()
    ));
    for (name, faces) in groups {
        let montage = format!("unknowns/{name}/montage.png");
        if !out.join(&montage).is_file() {
            continue;
        }
        h.push_str(&format!(
            "<figure><a href=\"{0}\"><img src=\"{0}\" alt=\"{1}\"></a><figcaption>{1}: {faces} faces</figcaption></figure>",
            esc(&montage),
            esc(&name)
        ));
    }
    h.push_str("</div>");
    h
}

fn settings_section(s: &Value) -> String {
    let mut h = format!(
        "<h2 id=\"settings\">Run settings and timings</h2><p>seed {}, device {}, teachers: inception <code>{}</code> (layer {}, {}x{} grid), face <code>{}</code>; total {} s.</p><table><tr><th>stage</th><th>seconds</th></tr>",
        s["seed"],
        esc(s["device"].as_str().unwrap_or("")),
        esc(s["teacher"].as_str().unwrap_or("")),
        esc(s["teacher_layer"].as_str().unwrap_or("")),
        s["teacher_grid"],
        s["teacher_grid"],
        esc(s["face_teacher"].as_str().unwrap_or("")),
        fmt(&s["seconds"], 0),
    );
    for t in s["timings"].as_array().into_iter().flatten() {
        let when = if t["earlier"] == Value::Bool(true) {
            " (up to date: the run that made it)"
        } else if t["skipped"] == Value::Bool(true) {
            " (up to date: the check)"
        } else {
            ""
        };
        h.push_str(&format!(
            "<tr><td>{}{when}</td><td>{}</td></tr>",
            esc(t["stage"].as_str().unwrap_or("")),
            fmt(&t["seconds"], 1)
        ));
    }
    h.push_str("</table><p class=\"note\"><a href=\"summary.json\">summary.json</a> holds all of this as JSON.</p>");
    h
}

/// Every `href` and `src` of a page that does not resolve to a file under `out`.
pub fn broken_links(html: &str, out: &Path) -> Vec<String> {
    let mut bad = Vec::new();
    for attr in ["href=\"", "src=\""] {
        let mut rest = html;
        while let Some(i) = rest.find(attr) {
            rest = &rest[i + attr.len()..];
            let end = rest.find('"').unwrap_or(rest.len());
            let link = rest[..end].replace("&amp;", "&");
            if !link.starts_with('#') && !link.contains("://") && !out.join(&link).is_file() {
                bad.push(link);
            }
        }
    }
    bad
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn the_page_has_every_section_and_its_links_resolve() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path();
        std::fs::write(
            out.join("rejects.json"),
            r#"{"count":3,"rejects":[{"path":"a/1.jpg","reason":"no face found"},{"path":"a/2.jpg","reason":"no face found"},{"path":"b/3.jpg","reason":"truncated file"}]}"#,
        )
        .unwrap();
        std::fs::write(
            out.join("alignment-quality.json"),
            r#"{"eye_centres":2.7,"mouth":3.5,"nose_tip":8.5}"#,
        )
        .unwrap();
        std::fs::write(out.join("montage.png"), b"png").unwrap();
        std::fs::write(out.join("summary.json"), b"{}").unwrap();
        let mut rows = Vec::new();
        for (t, m) in [("none", "base"), ("face", "cosine")] {
            let tag = if t == "none" {
                m.to_string()
            } else {
                format!("{t}-{m}")
            };
            let e = out.join(format!("eval-{tag}"));
            std::fs::create_dir_all(&e).unwrap();
            for f in [
                "tsne.png",
                "report.html",
                "suspects-alice.png",
                "suspects-bob.png",
            ] {
                std::fs::write(e.join(f), b"x").unwrap();
            }
            std::fs::write(
                e.join("report.json"),
                r#"{"suspects":[{},{}],"identity":{"other_person":3,"strangers":4,"split_folders":[{"class":"bob","sizes":[9,5]}]}}"#,
            )
            .unwrap();
            for f in [
                "split-bob-1.png",
                "split-bob-2.png",
                "identity-suspects-alice.png",
            ] {
                std::fs::write(e.join(f), b"x").unwrap();
            }
            rows.push(json!({
                "teacher": t, "mode": m, "val_top1": 0.8, "test_top1": 0.7, "test_macro_f1": 0.6,
                "train_seconds": 12.0, "suspects": 2,
                "checkpoint": out.join(format!("student-{tag}.safetensors")).display().to_string(),
                "report": e.join("report.html").display().to_string(),
                "eval_dir": e.display().to_string(),
            }));
        }
        rows[1]["best"] = json!(true);
        let s = json!({
            "data": "photos", "classes": 2, "modes": rows, "best": rows[1].clone(), "seed": 42,
            "device": "cpu", "teacher": "t", "teacher_layer": "pool", "teacher_grid": 1,
            "face_teacher": "dlib-face", "seconds": 30.0,
            "timings": [{"stage": "preprocess", "seconds": 1.0}],
        });
        for (g, faces) in [("unknown-002", 2), ("Ada", 3)] {
            let d = out.join("unknowns").join(g);
            std::fs::create_dir_all(&d).unwrap();
            std::fs::write(d.join("montage.png"), b"png").unwrap();
            let list: Vec<_> = (0..faces).map(|k| json!({"face": k})).collect();
            std::fs::write(d.join("group.json"), json!({"faces": list}).to_string()).unwrap();
        }
        std::fs::write(out.join("unknowns/groups.csv"), b"group").unwrap();
        let page = index_html(&s, out);
        assert!(page.contains("2 groups in"), "unknown groups");
        let at = |t: &str| page.find(t).unwrap_or_else(|| panic!("{t}"));
        assert!(at("Ada: 3 faces") < at("unknown-002: 2 faces"));
        for section in [
            "id=\"unknowns\"",
            "id=\"data\"",
            "id=\"results\"",
            "id=\"tsne\"",
            "id=\"suspects\"",
            "id=\"identity\"",
            "id=\"settings\"",
        ] {
            assert!(page.contains(section), "missing {section}");
        }
        assert!(
            page.contains("no face found</td><td>2"),
            "rejects by reason"
        );
        assert!(page.contains("class=\"best\""));
        assert!(page.contains("cargo run --release -p predict -- --model "));
        assert!(page.contains("eval-face-cosine/suspects-bob.png"));
        assert!(page.contains("<b>3</b> faces look like another person"));
        assert!(page.contains("bob: 9 / 5"));
        assert!(page.contains("eval-face-cosine/split-bob-2.png"));
        assert_eq!(broken_links(&page, out), Vec::<String>::new());
        // A missing image is reported.
        std::fs::remove_file(out.join("eval-face-cosine/tsne.png")).unwrap();
        std::fs::remove_file(out.join("montage.png")).unwrap();
        let page = page.replace("xx", "");
        assert!(broken_links(&page, out).contains(&"montage.png".to_string()));
    }
}
