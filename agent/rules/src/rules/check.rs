//! `rules check`: promtool's `check rules`, file by file, with its duplicate-rule lint.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use super::file::{LoadError, LoadOptions, RuleFileError, load_files_with};
use super::group::Group;

/// The result for one file.
#[derive(Debug, Clone, PartialEq)]
pub struct FileCheck {
    pub file: PathBuf,
    /// Number of rules when the file is valid.
    pub rules: Option<usize>,
    /// Every problem found; any makes the check fail.
    pub errors: Vec<String>,
    /// Warnings that do not fail the check (promtool's default lint: duplicate rules).
    pub lint: Option<String>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct CheckReport {
    pub files: Vec<FileCheck>,
}

impl CheckReport {
    pub fn success(&self) -> bool {
        self.files.iter().all(|f| f.errors.is_empty())
    }

    /// promtool's layout: `Checking FILE`, then `  SUCCESS: N rules found` on stdout or
    /// `  FAILED:` and the errors (or the lint warning) on stderr. Returns (stdout, stderr).
    pub fn render(&self) -> (String, String) {
        let mut out = String::new();
        let mut err = String::new();
        for f in &self.files {
            let _ = writeln!(out, "Checking {}", f.file.display());
            if !f.errors.is_empty() {
                let _ = writeln!(err, "  FAILED:");
                for e in &f.errors {
                    let _ = writeln!(err, "{e}");
                }
            } else if let Some(l) = &f.lint {
                let _ = writeln!(err, "  FAILED:\nlint error {l}");
            } else if let Some(n) = f.rules {
                let _ = writeln!(out, "  SUCCESS: {n} rules found");
            }
            out.push('\n');
        }
        (out, err)
    }
}

/// Rules with the same name and labels, each reported once (promtool's
/// `checkDuplicates`): two recording rules writing the same series fight over it.
fn duplicates(groups: &[Group]) -> Option<String> {
    let mut all: Vec<(String, Vec<(String, String)>)> = groups
        .iter()
        .flat_map(|g| g.rules())
        .map(|r| {
            let mut l = r.labels().to_vec();
            l.sort();
            (r.name().to_string(), l)
        })
        .collect();
    all.sort();
    let mut dups: Vec<&(String, Vec<(String, String)>)> = Vec::new();
    for w in all.windows(2) {
        if w[0] == w[1] && dups.last().is_none_or(|d| **d != w[1]) {
            dups.push(&w[1]);
        }
    }
    if dups.is_empty() {
        return None;
    }
    let mut msg = format!("{} duplicate rule(s) found.\n", dups.len());
    for (name, labels) in dups {
        let _ = writeln!(msg, "Metric: {name}\nLabel(s):");
        for (k, v) in labels {
            let _ = writeln!(msg, "\t{k}: {v}");
        }
    }
    msg.push_str("Might cause inconsistency while recording expressions");
    Some(msg)
}

/// Checks each file on its own, so one broken file does not hide the others' results.
pub fn check_files<P: AsRef<Path>>(paths: &[P], opts: LoadOptions) -> CheckReport {
    let files = paths
        .iter()
        .map(|p| {
            let file = p.as_ref().to_path_buf();
            match load_files_with(&[&file], opts) {
                Ok(groups) => FileCheck {
                    rules: Some(groups.iter().map(|g| g.rules().len()).sum()),
                    errors: Vec::new(),
                    lint: duplicates(&groups),
                    file,
                },
                Err(e) => FileCheck {
                    rules: None,
                    errors: match e {
                        LoadError::Invalid(errs) => {
                            errs.iter().map(RuleFileError::to_string).collect()
                        }
                        e => vec![e.to_string()],
                    },
                    lint: None,
                    file,
                },
            }
        })
        .collect();
    CheckReport { files }
}
