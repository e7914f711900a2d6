//! The results as a person reads them (a table), as a spreadsheet does (CSV, one row per
//! face or faceless photo) and as a program does (JSON).

use crate::run::{FaceResult, PhotoResult};
use std::fmt::Write;

/// `--format`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    Table,
    Csv,
    Json,
}

/// What the person column says.
pub fn person_of(f: &FaceResult) -> String {
    match (&f.error, &f.person, &f.best) {
        (Some(_), _, _) => "(not aligned)".into(),
        (None, Some(p), _) => p.clone(),
        (None, None, Some(b)) => format!("unknown (looks like {})", b.person),
        (None, None, None) => "unknown".into(),
    }
}

fn box_text(r: &[f32; 4]) -> String {
    format!("{:.0},{:.0},{:.0}x{:.0}", r[0], r[1], r[2], r[3])
}

fn top_text(f: &FaceResult) -> String {
    f.top
        .iter()
        .map(|g| format!("{} {:.2}", g.person, g.probability))
        .collect::<Vec<_>>()
        .join(", ")
}

/// A column-aligned table: one line per face; a photo without a face or unreadable gets
/// one line saying so.
pub fn table(photos: &[PhotoResult]) -> String {
    let mut rows: Vec<[String; 6]> = vec![[
        "photo".into(),
        "box (x,y,wxh)".into(),
        "person".into(),
        "prob".into(),
        "score".into(),
        "top 3".into(),
    ]];
    for p in photos {
        let file = p.path.display().to_string();
        if let Some(e) = &p.error {
            rows.push([
                file,
                "-".into(),
                format!("error: {e}"),
                String::new(),
                String::new(),
                String::new(),
            ]);
            continue;
        }
        if p.faces.is_empty() {
            rows.push([
                file,
                "-".into(),
                "(no face found)".into(),
                String::new(),
                String::new(),
                String::new(),
            ]);
            continue;
        }
        for f in &p.faces {
            rows.push([
                file.clone(),
                box_text(&f.rect),
                match &f.error {
                    Some(e) => format!("(not aligned: {e})"),
                    None => person_of(f),
                },
                f.best
                    .as_ref()
                    .map(|b| format!("{:.3}", b.probability))
                    .unwrap_or_default(),
                f.score.map(|s| format!("{s:.3}")).unwrap_or_default(),
                top_text(f),
            ]);
        }
    }
    let widths: Vec<usize> = (0..6)
        .map(|c| rows.iter().map(|r| r[c].chars().count()).max().unwrap_or(0))
        .collect();
    let mut s = String::new();
    for r in &rows {
        let mut line = String::new();
        for (c, cell) in r.iter().enumerate() {
            if c + 1 == r.len() {
                line.push_str(cell);
            } else {
                let _ = write!(line, "{cell:<w$}  ", w = widths[c]);
            }
        }
        s.push_str(line.trim_end());
        s.push('\n');
    }
    s
}

/// CSV header.
pub const CSV_COLUMNS: &str = "photo,status,face,x,y,w,h,found_by,person,unknown,best,probability,score,top2,probability2,top3,probability3,reason";

/// A CSV field, quoted where it holds a comma, a quote or a line break.
pub fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_string()
    }
}

/// RFC 4180 CSV, one row per face; a photo without a face or unreadable gets one row with
/// its status and reason and no face number.
pub fn csv(photos: &[PhotoResult]) -> String {
    let mut s = String::from(CSV_COLUMNS);
    s.push('\n');
    for p in photos {
        let file = csv_field(&p.path.display().to_string());
        if p.faces.is_empty() {
            let reason = p.error.clone().unwrap_or_default();
            let _ = writeln!(
                s,
                "{file},{},,,,,,,,,,,,,,,,{}",
                p.status(),
                csv_field(&reason)
            );
            continue;
        }
        for (k, f) in p.faces.iter().enumerate() {
            let g = |i: usize| {
                f.top
                    .get(i)
                    .map(|g| (csv_field(&g.person), format!("{:.4}", g.probability)))
                    .unwrap_or_default()
            };
            let (t2, p2) = g(1);
            let (t3, p3) = g(2);
            let _ = writeln!(
                s,
                "{file},{},{k},{:.0},{:.0},{:.0},{:.0},{},{},{},{},{},{},{t2},{p2},{t3},{p3},{}",
                if f.error.is_some() {
                    "not aligned"
                } else {
                    "ok"
                },
                f.rect[0],
                f.rect[1],
                f.rect[2],
                f.rect[3],
                f.found_by,
                csv_field(f.person.as_deref().unwrap_or(if f.error.is_some() {
                    ""
                } else {
                    "unknown"
                })),
                f.unknown,
                f.best
                    .as_ref()
                    .map(|b| csv_field(&b.person))
                    .unwrap_or_default(),
                f.best
                    .as_ref()
                    .map(|b| format!("{:.4}", b.probability))
                    .unwrap_or_default(),
                f.score.map(|v| format!("{v:.4}")).unwrap_or_default(),
                csv_field(f.error.as_deref().unwrap_or_default()),
            );
        }
    }
    s
}

/// JSON: the model, its rule, and every photo with its faces.
pub fn json(photos: &[PhotoResult], model: &serde_json::Value) -> String {
    let photos: Vec<serde_json::Value> = photos
        .iter()
        .map(|p| {
            let mut v = serde_json::to_value(p).expect("plain");
            v["status"] = p.status().into();
            v
        })
        .collect();
    serde_json::to_string_pretty(&serde_json::json!({ "model": model, "photos": photos }))
        .expect("plain")
}

/// One output of `predict`, formatted as `format` asks (`model`: [`crate::describe`]).
pub fn render(format: Format, photos: &[PhotoResult], model: &serde_json::Value) -> String {
    match format {
        Format::Table => table(photos),
        Format::Csv => csv(photos),
        Format::Json => json(photos, model),
    }
}

/// `--timings`: where the time went, the throughput, the dominant stage and the model.
pub fn timings_json(timings: &crate::Timings, model: &serde_json::Value) -> serde_json::Value {
    let mut v = serde_json::to_value(timings).expect("plain");
    v["photos_per_second"] = timings.photos_per_second().into();
    v["dominant"] = timings.dominant().0.into();
    v["model"] = model.clone();
    v
}

/// The run's one-line account: faces found and unknown, photos without a face or
/// unreadable, speed.
pub fn summary_line(photos: &[PhotoResult], timings: &crate::Timings) -> String {
    let unreadable = photos.iter().filter(|r| r.error.is_some()).count();
    let faces: usize = photos.iter().map(|r| r.faces.len()).sum();
    let unknown = photos
        .iter()
        .flat_map(|r| &r.faces)
        .filter(|f| f.unknown)
        .count();
    let faceless = photos
        .iter()
        .filter(|r| r.error.is_none() && r.faces.is_empty())
        .count();
    format!(
        "{} photos: {faces} faces ({unknown} unknown), {faceless} without a face, {unreadable} unreadable; {:.1} photos/s",
        photos.len(),
        timings.photos_per_second()
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::run::Guess;
    use std::path::PathBuf;

    fn face(person: Option<&str>, best: &str, p: f32) -> FaceResult {
        FaceResult {
            rect: [10.0, 20.0, 30.0, 40.0],
            found_by: "haar".into(),
            person: person.map(str::to_string),
            best: Some(Guess {
                person: best.into(),
                probability: p,
            }),
            top: vec![
                Guess {
                    person: best.into(),
                    probability: p,
                },
                Guess {
                    person: "b,c".into(),
                    probability: 1.0 - p,
                },
            ],
            score: Some(0.42),
            unknown: person.is_none(),
            error: None,
            descriptor: None,
        }
    }

    pub(crate) fn sample() -> Vec<PhotoResult> {
        vec![
            PhotoResult {
                path: PathBuf::from("two \"faces\".jpg"),
                width: 100,
                height: 80,
                faces: vec![face(Some("alice"), "alice", 0.9), face(None, "bob", 0.6)],
                error: None,
                decoded_scale: 1.0,
            },
            PhotoResult {
                path: PathBuf::from("empty.jpg"),
                width: 100,
                height: 80,
                faces: vec![],
                error: None,
                decoded_scale: 1.0,
            },
            PhotoResult {
                path: PathBuf::from("bad.jpg"),
                width: 0,
                height: 0,
                faces: vec![],
                error: Some("not an image or unsupported format: x".into()),
                decoded_scale: 1.0,
            },
        ]
    }

    /// A minimal RFC 4180 reader, to read back what we wrote.
    fn parse_csv(s: &str) -> Vec<Vec<String>> {
        let mut rows = vec![];
        let mut row = vec![];
        let mut field = String::new();
        let mut quoted = false;
        let mut chars = s.chars().peekable();
        while let Some(c) = chars.next() {
            match (quoted, c) {
                (true, '"') if chars.peek() == Some(&'"') => {
                    chars.next();
                    field.push('"');
                }
                (true, '"') => quoted = false,
                (false, '"') => quoted = true,
                (false, ',') => row.push(std::mem::take(&mut field)),
                (false, '\n') => {
                    row.push(std::mem::take(&mut field));
                    rows.push(std::mem::take(&mut row));
                }
                (_, c) => field.push(c),
            }
        }
        rows
    }

    #[test]
    fn csv_has_a_row_per_face_and_per_faceless_photo() {
        let rows = parse_csv(&csv(&sample()));
        let n = CSV_COLUMNS.split(',').count();
        assert_eq!(rows.len(), 1 + 2 + 1 + 1);
        assert!(rows.iter().all(|r| r.len() == n), "{rows:?}");
        assert_eq!(rows[1][0], "two \"faces\".jpg");
        assert_eq!(rows[1][8], "alice");
        assert_eq!(rows[2][8], "unknown");
        assert_eq!(rows[2][9], "true");
        assert_eq!(rows[2][10], "bob");
        assert_eq!(rows[2][13], "b,c");
        assert_eq!(rows[3][1], "no face");
        assert_eq!(rows[4][1], "error");
        assert!(rows[4][n - 1].starts_with("not an image"));
    }

    #[test]
    fn table_says_unknown_and_looks_like() {
        let t = table(&sample());
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(lines.len(), 5);
        assert!(lines[1].contains("alice") && lines[1].contains("0.900"));
        assert!(lines[2].contains("unknown (looks like bob)"));
        assert!(lines[3].contains("(no face found)"));
        assert!(lines[4].contains("error: not an image"));
        // Columns line up: every face row's box starts at the same place.
        let at = lines[1].find("10,20").unwrap();
        assert_eq!(lines[2].find("10,20"), Some(at));
    }

    #[test]
    fn json_round_trips_with_statuses() {
        let v: serde_json::Value =
            serde_json::from_str(&json(&sample(), &serde_json::json!({"kind": "probe"}))).unwrap();
        assert_eq!(v["model"]["kind"], "probe");
        let p = &v["photos"];
        assert_eq!(p[0]["status"], "ok");
        assert_eq!(p[0]["faces"][1]["unknown"], true);
        assert_eq!(p[0]["faces"][1]["person"], serde_json::Value::Null);
        assert_eq!(p[0]["faces"][0]["box"][2], 30.0);
        assert_eq!(p[1]["status"], "no face");
        assert_eq!(p[2]["status"], "error");
    }
}
