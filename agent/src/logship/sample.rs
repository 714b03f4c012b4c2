//! `minirag-agent logs sample <request_id>`: every local log line (agent and rag-core;
//! live, rotated and gzipped files) that carries the request id, in time order.

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum SampleError {
    #[error("{0:?} is not a request id (1-128 characters of A-Z a-z 0-9 . _ : -)")]
    BadId(String),
    #[error("no log files match {0}")]
    NoFiles(String),
}

pub struct Found {
    pub timestamp: String,
    pub path: PathBuf,
    pub line: String,
}

/// Scans the files matched by `patterns` (gzip by content, any name).
pub fn sample(request_id: &str, patterns: &[String]) -> Result<(Vec<Found>, usize), SampleError> {
    if !minirag_contracts::ids::valid_request_id(request_id) {
        return Err(SampleError::BadId(request_id.to_string()));
    }
    let mut files: Vec<PathBuf> = patterns
        .iter()
        .filter_map(|p| glob::glob(p).ok())
        .flat_map(|paths| paths.flatten())
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    files.dedup();
    if files.is_empty() {
        return Err(SampleError::NoFiles(patterns.join(", ")));
    }
    let finder = memchr::memmem::Finder::new(request_id.as_bytes());
    let mut found = Vec::new();
    for path in &files {
        let Ok(reader) = open(path) else { continue };
        let mut reader = BufReader::with_capacity(256 * 1024, reader);
        let mut line = Vec::new();
        loop {
            line.clear();
            match reader.read_until(b'\n', &mut line) {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            }
            if finder.find(&line).is_none() {
                continue;
            }
            let Ok(v) = serde_json::from_slice::<serde_json::Value>(&line) else {
                continue;
            };
            if v.get("request_id").and_then(|r| r.as_str()) != Some(request_id) {
                continue;
            }
            let timestamp = v
                .get("timestamp")
                .and_then(|t| t.as_str())
                .unwrap_or("")
                .to_string();
            found.push(Found {
                timestamp,
                path: path.clone(),
                line: String::from_utf8_lossy(&line).trim_end().to_string(),
            });
        }
    }
    // RFC 3339 UTC timestamps of one width sort as strings; ties keep file order.
    found.sort_by(|a, b| a.timestamp.cmp(&b.timestamp));
    Ok((found, files.len()))
}

fn open(path: &Path) -> std::io::Result<Box<dyn Read>> {
    let mut f = std::fs::File::open(path)?;
    let mut magic = [0u8; 2];
    let n = f.read(&mut magic)?;
    let f = std::fs::File::open(path)?;
    if n == 2 && magic == [0x1f, 0x8b] {
        Ok(Box::new(flate2::read::MultiGzDecoder::new(f)))
    } else {
        Ok(Box::new(f))
    }
}
