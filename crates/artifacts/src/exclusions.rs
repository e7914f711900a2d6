//! The cleaning loop's file: the flagged faces, one CSV row each, with an `action` column a
//! person edits (`keep` or `drop`). `train` and `eval-tsne` take it (`--exclusions`) and
//! leave the `drop` faces out of training and evaluation; the photos stay where they are.

use crate::ArtifactError;
use std::collections::BTreeSet;
use std::path::Path;

/// The header, in this order.
pub const COLUMNS: &[&str] = &[
    "action",
    "source",
    "label",
    "verdict",
    "looks_like",
    "distance",
];

/// One flagged face.
#[derive(Debug, Clone, PartialEq)]
pub struct Flag {
    /// `true` = `drop`.
    pub drop: bool,
    /// `<class>/<file>`, as in the faces artifact's `sources`.
    pub source: String,
    pub label: String,
    pub verdict: String,
    pub looks_like: String,
    pub distance: f32,
}

fn field(s: &str) -> String {
    if s.contains([',', '"', '\n']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_string()
    }
}

/// Splits one CSV line (quoted fields with doubled quotes).
fn split(line: &str) -> Vec<String> {
    let (mut out, mut cur, mut quoted) = (Vec::new(), String::new(), false);
    let mut chars = line.chars().peekable();
    while let Some(c) = chars.next() {
        match (c, quoted) {
            ('"', true) if chars.peek() == Some(&'"') => {
                cur.push('"');
                chars.next();
            }
            ('"', _) => quoted = !quoted,
            (',', false) => out.push(std::mem::take(&mut cur)),
            _ => cur.push(c),
        }
    }
    out.push(cur);
    out
}

/// Writes `flags` atomically, ranked as given.
pub fn write(path: &Path, flags: &[Flag]) -> Result<(), ArtifactError> {
    let mut s = COLUMNS.join(",");
    s.push('\n');
    for f in flags {
        s.push_str(&format!(
            "{},{},{},{},{},{:.3}\n",
            if f.drop { "drop" } else { "keep" },
            field(&f.source),
            field(&f.label),
            field(&f.verdict),
            field(&f.looks_like),
            f.distance
        ));
    }
    crate::write_atomic(path, s.as_bytes())
}

/// Reads a file written by [`write`] (and edited by a person): every row, with a clear
/// error naming the line for anything else.
pub fn read(path: &Path) -> Result<Vec<Flag>, ArtifactError> {
    let text = std::fs::read_to_string(path).map_err(|error| ArtifactError::Io {
        path: path.to_path_buf(),
        error,
    })?;
    let bad = |line: usize, what: String| ArtifactError::BadFile {
        path: path.to_path_buf(),
        problem: format!("line {line}: {what}"),
    };
    let mut lines = text
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty());
    let Some((_, header)) = lines.next() else {
        return Err(bad(
            1,
            "empty file; expected the header `action,source,...`".into(),
        ));
    };
    let header = split(header.trim_start_matches('\u{feff}'));
    let col = |name: &str| header.iter().position(|h| h.trim() == name);
    let (Some(a), Some(s)) = (col("action"), col("source")) else {
        return Err(bad(
            1,
            format!("the header must name `action` and `source` (found {header:?})"),
        ));
    };
    let get = |row: &[String], name: &str| {
        col(name)
            .and_then(|i| row.get(i).cloned())
            .unwrap_or_default()
    };
    let mut out = Vec::new();
    for (i, line) in lines {
        let row = split(line);
        let action = row
            .get(a)
            .map(|v| v.trim().to_ascii_lowercase())
            .unwrap_or_default();
        let drop = match action.as_str() {
            "drop" => true,
            "keep" => false,
            other => {
                return Err(bad(
                    i + 1,
                    format!("action `{other}`: write `keep` or `drop`"),
                ))
            }
        };
        let source = row.get(s).map(|v| v.trim().to_string()).unwrap_or_default();
        if source.is_empty() {
            return Err(bad(i + 1, "no source".into()));
        }
        out.push(Flag {
            drop,
            source,
            label: get(&row, "label"),
            verdict: get(&row, "verdict"),
            looks_like: get(&row, "looks_like"),
            distance: get(&row, "distance").trim().parse().unwrap_or(f32::NAN),
        });
    }
    Ok(out)
}

/// The sources marked `drop`.
pub fn dropped(path: &Path) -> Result<BTreeSet<String>, ArtifactError> {
    Ok(read(path)?
        .into_iter()
        .filter(|f| f.drop)
        .map(|f| f.source)
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_edits() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("flags.csv");
        let flags = vec![
            Flag {
                drop: true,
                source: "a/1.jpg".into(),
                label: "a".into(),
                verdict: "stranger".into(),
                looks_like: String::new(),
                distance: 0.812,
            },
            Flag {
                drop: false,
                source: "b/odd, \"name\".jpg".into(),
                label: "b".into(),
                verdict: "other person".into(),
                looks_like: "c".into(),
                distance: 0.7,
            },
        ];
        write(&p, &flags).unwrap();
        assert_eq!(read(&p).unwrap(), flags);
        assert_eq!(
            dropped(&p).unwrap().into_iter().collect::<Vec<_>>(),
            vec!["a/1.jpg"]
        );
        // A person's edit: flip the second to drop, in capitals, with spaces.
        let text = std::fs::read_to_string(&p)
            .unwrap()
            .replace("keep,", " DROP ,");
        std::fs::write(&p, text).unwrap();
        assert_eq!(dropped(&p).unwrap().len(), 2);
        // A typo is an error naming its line.
        std::fs::write(&p, "action,source\ndorp,a/1.jpg\n").unwrap();
        let e = read(&p).unwrap_err().to_string();
        assert!(e.contains("line 2") && e.contains("dorp"), "{e}");
        std::fs::write(&p, "source\na/1.jpg\n").unwrap();
        assert!(read(&p).unwrap_err().to_string().contains("header"));
    }
}
