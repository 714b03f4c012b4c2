//! The shipped observability artifacts as one versioned, checksummed archive
//! (`minirag-agent artifacts bundle|verify`, docs/artifacts.md).
//!
//! The archive is a gzip-compressed POSIX ustar file written here rather than with the
//! `tar` crate: the bundle holds only regular files and directories with short relative
//! paths, so the writer is a few dozen lines of a fully specified format, and the reader
//! has to be strict anyway (it refuses links, PAX/GNU extensions, absolute paths and
//! `..`), which a general-purpose extractor would only get in the way of. No new
//! dependency, and every byte of the output is under our control, which is what makes
//! two runs byte-identical.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use minirag_contracts::tar::TarWriter;
use sha2::{Digest, Sha256};

/// The version stamped on bundles this binary writes (the workspace version).
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// Bundle name prefix; the archive is `<PREFIX>-<version>.tar.gz` and holds one
/// top directory `<PREFIX>-<version>/`.
pub const PREFIX: &str = "minirag-observability";

/// Name of the checksum file inside the top directory (`sha256sum` format).
pub const SUMS: &str = "SHA256SUMS";

/// Bounds that keep `bundle` and `verify` from reading without limit: the artifacts are
/// text files of a few hundred KiB in total, so these are generous.
pub const MAX_FILE_BYTES: u64 = 16 << 20;
/// Total uncompressed size of a bundle (gzip bombs stop here).
pub const MAX_TOTAL_BYTES: u64 = 256 << 20;
/// Entries in a bundle.
pub const MAX_ENTRIES: usize = 10_000;

/// Fixed metadata of every archive entry, so the output depends only on the contents.
/// The mtime is 2000-01-01T00:00:00Z rather than 0 so extracting tools do not warn
/// about a 1970 timestamp.
const MTIME: u64 = 946_684_800;
const FILE_MODE: u32 = 0o644;
const DIR_MODE: u32 = 0o755;
const BLOCK: usize = 512;
/// Archives are padded to whole 10 KiB records like tar(1) writes them.
const RECORD: usize = 20 * BLOCK;

#[derive(Debug, thiserror::Error)]
pub enum ArtifactsError {
    #[error(
        "{root} is not the Mini-RAG repository root (run from the checkout or pass --root): missing {missing}"
    )]
    NotRoot { root: String, missing: String },
    #[error("{path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("{path}: {reason}")]
    Input { path: String, reason: String },
    #[error("{file}: invalid bundle ({} problem(s)):\n  {}", problems.len(), problems.join("\n  "))]
    Invalid { file: String, problems: Vec<String> },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> ArtifactsError + '_ {
    move |source| ArtifactsError::Io {
        path: path.display().to_string(),
        source,
    }
}

/// What goes into the bundle, relative to the repository root. Directories are taken
/// recursively (regular files only, dot-files skipped); a `*` matches within one
/// directory level. Required entries must each match at least one file — that is also
/// how a wrong `--root` is recognised.
const REQUIRED: &[&str] = &[
    "CHANGELOG.md",
    "alerts/*.yaml",
    "alerts/tests/*.yaml",
    "alerts/alertmanager/alertmanager.yml",
    "alerts/alertmanager/templates/",
    "alerts/k8s/",
    "dashboards/*.json",
    "dashboards/provisioning/",
    "dashboards/k8s/",
    "config/k8s/base/rules-configmap.yaml",
];

/// Shipped when present: the how-to-use notes and the runbook the alerts link to.
const OPTIONAL: &[&str] = &[
    "alerts/README.md",
    "alerts/alertmanager/README.md",
    "dashboards/README.md",
    "docs/runbook.md",
    "docs/metrics.md",
];

/// The result of a successful `bundle`.
#[derive(Debug)]
pub struct Bundle {
    pub path: PathBuf,
    pub version: String,
    /// Files inside the top directory, `SHA256SUMS` included.
    pub files: usize,
    /// Size of the archive.
    pub bytes: u64,
    pub sha256: String,
}

/// The result of a successful `verify`.
#[derive(Debug)]
pub struct Verified {
    pub version: String,
    /// Files checked against `SHA256SUMS` (the checksum file itself excluded).
    pub files: usize,
    /// Their uncompressed size.
    pub bytes: u64,
    pub sha256: String,
}

/// The archive's file name for `version`.
pub fn file_name(version: &str) -> String {
    format!("{PREFIX}-{version}.tar.gz")
}

fn top_dir(version: &str) -> String {
    format!("{PREFIX}-{version}")
}

fn sha256_hex(data: &[u8]) -> String {
    let mut s = String::with_capacity(64);
    for b in Sha256::digest(data) {
        let _ = write!(s, "{b:02x}");
    }
    s
}

/// Regular files under `dir` (recursively), as root-relative `/`-separated paths.
fn walk(root: &Path, rel: &str, out: &mut BTreeSet<String>) -> Result<(), ArtifactsError> {
    let dir = root.join(rel);
    for entry in std::fs::read_dir(&dir).map_err(io(&dir))? {
        let entry = entry.map_err(io(&dir))?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else {
            return Err(ArtifactsError::Input {
                path: entry.path().display().to_string(),
                reason: "file name is not UTF-8".into(),
            });
        };
        // Editor swap files, .gitkeep and the like are not artifacts.
        if name.starts_with('.') {
            continue;
        }
        let child = format!("{}/{name}", rel.trim_end_matches('/'));
        // Follow symlinks: what matters is the content a user would get.
        let meta = std::fs::metadata(entry.path()).map_err(io(&entry.path()))?;
        if meta.is_dir() {
            walk(root, &child, out)?;
        } else if meta.is_file() {
            out.insert(child);
        }
    }
    Ok(())
}

/// Files matching one pattern of [`REQUIRED`]/[`OPTIONAL`].
fn expand(root: &Path, pattern: &str) -> Result<BTreeSet<String>, ArtifactsError> {
    let mut out = BTreeSet::new();
    if pattern.ends_with('/') {
        if root.join(pattern).is_dir() {
            walk(root, pattern.trim_end_matches('/'), &mut out)?;
        }
    } else if let Some((dir, suffix)) = pattern.rsplit_once("/*") {
        let d = root.join(dir);
        if d.is_dir() {
            for entry in std::fs::read_dir(&d).map_err(io(&d))? {
                let entry = entry.map_err(io(&d))?;
                let name = entry.file_name();
                let Some(name) = name.to_str() else {
                    return Err(ArtifactsError::Input {
                        path: entry.path().display().to_string(),
                        reason: "file name is not UTF-8".into(),
                    });
                };
                if !name.starts_with('.')
                    && name.ends_with(suffix)
                    && std::fs::metadata(entry.path()).is_ok_and(|m| m.is_file())
                {
                    out.insert(format!("{dir}/{name}"));
                }
            }
        }
    } else if root.join(pattern).is_file() {
        out.insert(pattern.to_string());
    }
    Ok(out)
}

/// The files to bundle (sorted), or which required pieces are missing under `root`.
fn collect(root: &Path) -> Result<BTreeSet<String>, ArtifactsError> {
    let mut files = BTreeSet::new();
    let mut missing = Vec::new();
    for pattern in REQUIRED {
        let found = expand(root, pattern)?;
        if found.is_empty() {
            missing.push(*pattern);
        }
        files.extend(found);
    }
    if !missing.is_empty() {
        return Err(ArtifactsError::NotRoot {
            root: root.display().to_string(),
            missing: missing.join(", "),
        });
    }
    for pattern in OPTIONAL {
        files.extend(expand(root, pattern)?);
    }
    if files.len() + 1 > MAX_ENTRIES {
        return Err(ArtifactsError::Input {
            path: root.display().to_string(),
            reason: format!("more than {MAX_ENTRIES} files to bundle"),
        });
    }
    Ok(files)
}

/// A tar archive of `entries` (path → contents; a path ending in `/` is a directory),
/// in the map's order.
fn tar(entries: &BTreeMap<String, Vec<u8>>) -> Result<Vec<u8>, ArtifactsError> {
    let mut w = TarWriter::new(Vec::new());
    for (path, data) in entries {
        let written = if path.ends_with('/') {
            w.append_dir(path, MTIME, DIR_MODE)
        } else {
            w.append(path, data.len() as u64, MTIME, FILE_MODE, &mut &data[..])
        };
        written.map_err(|e| ArtifactsError::Input {
            path: path.clone(),
            reason: e.to_string(),
        })?;
    }
    let mut out = w.finish().map_err(|e| ArtifactsError::Input {
        path: "(archive)".into(),
        reason: e.to_string(),
    })?;
    out.resize(out.len().next_multiple_of(RECORD), 0);
    Ok(out)
}

/// Writes `<out>/minirag-observability-<VERSION>.tar.gz` from the artifacts under `root`.
/// The same inputs always give the same bytes.
pub fn bundle(root: &Path, out_dir: &Path) -> Result<Bundle, ArtifactsError> {
    let files = collect(root)?;
    let top = top_dir(VERSION);
    let mut entries = BTreeMap::new();
    let mut sums = String::new();
    let mut total = 0u64;
    for rel in &files {
        let path = root.join(rel);
        // Read through a limit rather than trusting the size from metadata: the file may
        // grow in between.
        let mut data = Vec::new();
        std::fs::File::open(&path)
            .and_then(|f| f.take(MAX_FILE_BYTES + 1).read_to_end(&mut data))
            .map_err(io(&path))?;
        if data.len() as u64 > MAX_FILE_BYTES {
            return Err(ArtifactsError::Input {
                path: rel.clone(),
                reason: format!("larger than {MAX_FILE_BYTES} bytes"),
            });
        }
        total += data.len() as u64;
        if total > MAX_TOTAL_BYTES {
            return Err(ArtifactsError::Input {
                path: rel.clone(),
                reason: format!("the artifacts exceed {MAX_TOTAL_BYTES} bytes in total"),
            });
        }
        let _ = writeln!(sums, "{}  {rel}", sha256_hex(&data));
        // Every parent directory gets its own entry so extraction gives sane modes.
        for (i, _) in rel.match_indices('/') {
            entries
                .entry(format!("{top}/{}/", &rel[..i]))
                .or_insert_with(Vec::new);
        }
        entries.insert(format!("{top}/{rel}"), data);
    }
    entries.insert(format!("{top}/"), Vec::new());
    entries.insert(format!("{top}/{SUMS}"), sums.into_bytes());
    let archive = tar(&entries)?;

    let mut gz = flate2::GzBuilder::new()
        .mtime(0)
        .operating_system(255)
        .write(Vec::new(), flate2::Compression::best());
    let tmp_name = format!(".{}.tmp", file_name(VERSION));
    let gz_err = |source| ArtifactsError::Io {
        path: tmp_name.clone(),
        source,
    };
    gz.write_all(&archive).map_err(gz_err)?;
    let bytes = gz.finish().map_err(gz_err)?;

    std::fs::create_dir_all(out_dir).map_err(io(out_dir))?;
    let dest = out_dir.join(file_name(VERSION));
    // Written beside the destination and renamed, so a reader never sees half a bundle.
    let tmp = out_dir.join(&tmp_name);
    std::fs::write(&tmp, &bytes).map_err(io(&tmp))?;
    std::fs::rename(&tmp, &dest).map_err(io(&dest))?;
    Ok(Bundle {
        path: dest,
        version: VERSION.to_string(),
        files: files.len() + 1,
        bytes: bytes.len() as u64,
        sha256: sha256_hex(&bytes),
    })
}

fn field_str(field: &[u8]) -> Result<&str, String> {
    let end = field.iter().position(|&b| b == 0).unwrap_or(field.len());
    std::str::from_utf8(&field[..end]).map_err(|_| "a name is not UTF-8".to_string())
}

fn field_octal(field: &[u8]) -> Result<u64, String> {
    let s = field_str(field)?.trim_matches([' ', '\0']);
    if s.is_empty() {
        return Ok(0);
    }
    u64::from_str_radix(s, 8).map_err(|_| format!("bad octal number {s:?} in a header"))
}

/// One entry read back from an archive.
#[derive(Debug)]
struct Entry {
    path: String,
    dir: bool,
    data: Vec<u8>,
}

/// Parses a ustar archive strictly: only regular files and directories, checksums
/// verified, sizes bounded.
fn untar(mut data: &[u8]) -> Result<Vec<Entry>, String> {
    let mut entries = Vec::new();
    loop {
        if data.len() < BLOCK {
            return Err("the archive ends without its end-of-archive marker".into());
        }
        let (h, rest) = data.split_at(BLOCK);
        if h.iter().all(|&b| b == 0) {
            return Ok(entries);
        }
        if entries.len() >= MAX_ENTRIES {
            return Err(format!("more than {MAX_ENTRIES} entries"));
        }
        let stored = field_octal(&h[148..156])?;
        let sum: u64 = h
            .iter()
            .enumerate()
            .map(|(i, &b)| u64::from(if (148..156).contains(&i) { b' ' } else { b }))
            .sum();
        if stored != sum {
            return Err(format!(
                "header checksum mismatch at entry {}",
                entries.len()
            ));
        }
        let name = field_str(&h[..100])?;
        let prefix = if &h[257..262] == b"ustar" {
            field_str(&h[345..500])?
        } else {
            ""
        };
        let path = if prefix.is_empty() {
            name.to_string()
        } else {
            format!("{prefix}/{name}")
        };
        let size = field_octal(&h[124..136])?;
        if size > MAX_FILE_BYTES {
            return Err(format!("{path}: larger than {MAX_FILE_BYTES} bytes"));
        }
        let dir = match h[156] {
            b'0' | 0 => false,
            b'5' => true,
            b'1' | b'2' => return Err(format!("{path}: links are not allowed in a bundle")),
            t => {
                return Err(format!(
                    "{path}: unsupported entry type {:?} (only files and directories)",
                    char::from(t)
                ));
            }
        };
        let len = usize::try_from(size).map_err(|_| format!("{path}: size overflow"))?;
        let padded = len.next_multiple_of(BLOCK);
        if rest.len() < padded {
            return Err(format!("{path}: truncated"));
        }
        entries.push(Entry {
            path,
            dir,
            data: rest[..len].to_vec(),
        });
        data = &rest[padded..];
    }
}

/// Problems with one archive path (absolute, `..`, empty components).
fn path_problem(path: &str) -> Option<String> {
    if path.starts_with('/') {
        return Some(format!("{path}: absolute path"));
    }
    let trimmed = path.strip_suffix('/').unwrap_or(path);
    for part in trimmed.split('/') {
        match part {
            ".." => return Some(format!("{path}: '..' component")),
            "" | "." => return Some(format!("{path}: empty or '.' component")),
            _ => {}
        }
    }
    if path.contains('\\') {
        return Some(format!("{path}: backslash in path"));
    }
    None
}

/// The version a bundle file name announces (`minirag-observability-<v>.tar.gz`).
fn version_from_name(file: &Path) -> Option<String> {
    let name = file.file_name()?.to_str()?;
    let v = name.strip_prefix(PREFIX)?.strip_prefix('-')?;
    Some(v.strip_suffix(".tar.gz")?.to_string()).filter(|v| !v.is_empty())
}

/// Checks a bundle: gzip and tar readable, one top directory named for the version
/// (the file name's version, else this binary's), no unsafe paths, and `SHA256SUMS`
/// listing exactly the other files with their digests. Every problem found is reported.
pub fn verify(file: &Path) -> Result<Verified, ArtifactsError> {
    let invalid = |problems: Vec<String>| ArtifactsError::Invalid {
        file: file.display().to_string(),
        problems,
    };
    let size = std::fs::metadata(file).map_err(io(file))?.len();
    if size > MAX_TOTAL_BYTES {
        return Err(invalid(vec![format!(
            "larger than {MAX_TOTAL_BYTES} bytes: not a bundle"
        )]));
    }
    let raw = std::fs::read(file).map_err(io(file))?;
    let mut tar_bytes = Vec::new();
    let decoded = flate2::read::GzDecoder::new(&raw[..])
        .take(MAX_TOTAL_BYTES + 1)
        .read_to_end(&mut tar_bytes);
    if let Err(e) = decoded {
        return Err(invalid(vec![format!("not a readable gzip file: {e}")]));
    }
    if tar_bytes.len() as u64 > MAX_TOTAL_BYTES {
        return Err(invalid(vec![format!(
            "uncompressed size exceeds {MAX_TOTAL_BYTES} bytes"
        )]));
    }
    let entries = untar(&tar_bytes).map_err(|e| invalid(vec![format!("not a valid tar: {e}")]))?;

    let version = version_from_name(file).unwrap_or_else(|| VERSION.to_string());
    let top = top_dir(&version);
    let mut problems = Vec::new();
    let mut files: BTreeMap<String, Vec<u8>> = BTreeMap::new();
    for e in entries {
        if let Some(p) = path_problem(&e.path) {
            problems.push(p);
            continue;
        }
        let inner = if e.path == format!("{top}/") {
            continue;
        } else if let Some(inner) = e.path.strip_prefix(&format!("{top}/")) {
            inner.to_string()
        } else {
            problems.push(format!("{}: outside the top directory {top}/", e.path));
            continue;
        };
        if e.dir {
            continue;
        }
        if files.insert(inner.clone(), e.data).is_some() {
            problems.push(format!("{inner}: appears twice"));
        }
    }
    let Some(sums) = files.remove(SUMS) else {
        problems.push(format!("{top}/{SUMS} is missing"));
        return Err(invalid(problems));
    };
    let sums = String::from_utf8_lossy(&sums);
    let mut listed = BTreeSet::new();
    for (n, line) in sums.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        // sha256sum writes "<hex>  <name>" (text) or "<hex> *<name>" (binary).
        let parsed = line.split_once(' ').and_then(|(digest, rest)| {
            let name = rest.strip_prefix(' ').or_else(|| rest.strip_prefix('*'))?;
            (digest.len() == 64 && digest.bytes().all(|b| b.is_ascii_hexdigit()))
                .then_some((digest.to_ascii_lowercase(), name))
        });
        let Some((digest, name)) = parsed else {
            problems.push(format!("{SUMS} line {}: not '<sha256>  <file>'", n + 1));
            continue;
        };
        if !listed.insert(name.to_string()) {
            problems.push(format!("{SUMS}: {name} listed twice"));
            continue;
        }
        match files.get(name) {
            None => problems.push(format!(
                "{name}: listed in {SUMS} but missing from the bundle"
            )),
            Some(data) if sha256_hex(data) != digest => {
                problems.push(format!("{name}: SHA-256 does not match {SUMS}"));
            }
            Some(_) => {}
        }
    }
    for name in files.keys() {
        if !listed.contains(name) {
            problems.push(format!("{name}: not listed in {SUMS}"));
        }
    }
    if !problems.is_empty() {
        return Err(invalid(problems));
    }
    Ok(Verified {
        version,
        files: files.len(),
        bytes: files.values().map(|d| d.len() as u64).sum(),
        sha256: sha256_hex(&raw),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers_round_trip_and_long_paths_use_the_prefix() {
        let long = format!("{}/{}", "d".repeat(120), "f".repeat(90));
        let mut entries = BTreeMap::new();
        entries.insert("top/".to_string(), Vec::new());
        entries.insert("top/a.txt".to_string(), b"hello".to_vec());
        entries.insert(long.clone(), vec![7u8; 600]);
        let back = untar(&tar(&entries).unwrap()).unwrap();
        let got: Vec<_> = back
            .iter()
            .map(|e| (e.path.clone(), e.data.len()))
            .collect();
        assert_eq!(
            got,
            vec![
                (long, 600),
                ("top/".to_string(), 0),
                ("top/a.txt".to_string(), 5)
            ]
        );
        assert!(back[1].dir && !back[2].dir);
        let mut too_long = BTreeMap::new();
        too_long.insert("x".repeat(300), Vec::new());
        assert!(tar(&too_long).is_err());
    }

    #[test]
    fn a_corrupted_header_is_refused() {
        let mut entries = BTreeMap::new();
        entries.insert("top/a".to_string(), b"x".to_vec());
        let mut t = tar(&entries).unwrap();
        t[0] = b'b';
        assert!(untar(&t).unwrap_err().contains("checksum"));
    }

    #[test]
    fn unsafe_paths_are_named() {
        assert!(path_problem("/etc/passwd").is_some());
        assert!(path_problem("top/../x").is_some());
        assert!(path_problem("top//x").is_some());
        assert!(path_problem("top/x/").is_none());
        assert!(path_problem("top/x").is_none());
    }

    #[test]
    fn the_version_comes_from_the_file_name() {
        assert_eq!(
            version_from_name(Path::new("/x/minirag-observability-1.2.3.tar.gz")).as_deref(),
            Some("1.2.3")
        );
        assert_eq!(version_from_name(Path::new("bundle.tar.gz")), None);
    }
}
