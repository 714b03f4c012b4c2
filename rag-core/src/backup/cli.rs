//! What `rag-core backup …` prints. `main.rs` parses the flags and loads the config; the
//! work and the wording live here. Output is `key: value` lines, easy to read and to grep.

use std::io::Write;
use std::path::{Path, PathBuf};

use super::{BackupError, BackupKey, Target};
use crate::config::Config;

fn out_err(e: std::io::Error) -> BackupError {
    BackupError::Io {
        what: "cannot write to",
        path: "standard output".into(),
        source: e,
    }
}

fn key(cfg: &Config, key_file: Option<&Path>) -> Result<BackupKey, BackupError> {
    Ok(super::key::resolve(
        key_file,
        cfg.backup.key_file.as_deref(),
        |k| std::env::var(k).ok(),
    )?)
}

fn counts(w: &mut dyn Write, counts: &[(&'static str, i64)]) -> std::io::Result<()> {
    for (table, n) in counts {
        writeln!(w, "{table}: {n}")?;
    }
    Ok(())
}

fn created_at(ts: i64) -> String {
    chrono::DateTime::from_timestamp(ts, 0)
        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
        .unwrap_or_else(|| ts.to_string())
}

/// `backup create`: `--out FILE`, else `--dir DIR`, else `backup.dir`.
pub fn create(
    cfg: &Config,
    out: Option<PathBuf>,
    dir: Option<PathBuf>,
    key_file: Option<&Path>,
    w: &mut dyn Write,
) -> Result<(), BackupError> {
    let key = key(cfg, key_file)?;
    let target = match (out, dir) {
        (Some(f), _) => Target::File(f),
        (None, Some(d)) => Target::Dir(d),
        (None, None) => Target::Dir(cfg.backup.dir(&cfg.data_dir)),
    };
    let c = super::create(&cfg.data_dir, &target, &key)?;
    print_created(w, &c, &key.fingerprint_hex()).map_err(out_err)
}

fn print_created(w: &mut dyn Write, c: &super::Created, fingerprint: &str) -> std::io::Result<()> {
    writeln!(w, "path: {}", c.path.display())?;
    writeln!(w, "bytes: {}", c.bytes)?;
    writeln!(w, "database_bytes: {}", c.database_bytes)?;
    writeln!(w, "schema_version: {}", c.schema_version)?;
    writeln!(w, "key_fingerprint: {fingerprint}")?;
    writeln!(w, "duration_ms: {}", c.duration.as_millis())
}

/// `backup verify FILE`: decrypts into the system temp directory, checks, prints counts.
pub fn verify(
    cfg: &Config,
    file: &Path,
    key_file: Option<&Path>,
    w: &mut dyn Write,
) -> Result<(), BackupError> {
    let key = key(cfg, key_file)?;
    let started = std::time::Instant::now();
    let v = super::verify(file, &key, &std::env::temp_dir())?;
    print_verified(w, file, &v, started).map_err(out_err)
}

fn print_verified(
    w: &mut dyn Write,
    file: &Path,
    v: &super::Verified,
    started: std::time::Instant,
) -> std::io::Result<()> {
    let supported = super::supported_schema_version();
    writeln!(w, "ok: {}", file.display())?;
    writeln!(w, "created_at: {}", created_at(v.header.created_at))?;
    if v.header.schema_version > supported {
        writeln!(
            w,
            "schema_version: {} (newer than this rag-core's {supported}: restore needs a newer rag-core)",
            v.header.schema_version
        )?;
    } else {
        writeln!(w, "schema_version: {}", v.header.schema_version)?;
    }
    writeln!(w, "database_bytes: {}", v.header.plaintext_len)?;
    writeln!(w, "integrity_check: ok")?;
    counts(w, &v.counts)?;
    writeln!(w, "duration_ms: {}", started.elapsed().as_millis())
}

/// `backup restore FILE --data-dir DIR [--force]`.
pub fn restore(
    cfg: &Config,
    file: &Path,
    data_dir: &Path,
    force: bool,
    key_file: Option<&Path>,
    w: &mut dyn Write,
) -> Result<(), BackupError> {
    let key = key(cfg, key_file)?;
    let started = std::time::Instant::now();
    let r = super::restore(file, &key, data_dir, force)?;
    print_restored(w, &r, started).map_err(out_err)
}

fn print_restored(
    w: &mut dyn Write,
    r: &super::Restored,
    started: std::time::Instant,
) -> std::io::Result<()> {
    writeln!(w, "restored: {}", r.db.display())?;
    writeln!(w, "created_at: {}", created_at(r.header.created_at))?;
    writeln!(w, "schema_version: {}", r.header.schema_version)?;
    writeln!(w, "database_bytes: {}", r.header.plaintext_len)?;
    writeln!(w, "integrity_check: ok")?;
    counts(w, &r.counts)?;
    if let Some(old) = &r.replaced {
        writeln!(
            w,
            "replaced store kept as: {} (delete it once the restore is confirmed)",
            old.display()
        )?;
    }
    writeln!(w, "duration_ms: {}", started.elapsed().as_millis())
}

/// `backup keygen [--out FILE]`: the only command that ever shows a key, and only a new one.
pub fn keygen(out: Option<&Path>, w: &mut dyn Write) -> Result<(), BackupError> {
    let key = BackupKey::generate()?;
    match out {
        Some(path) => {
            key.write_new_file(path)?;
            writeln!(
                w,
                "wrote a new backup key to {} (mode 0600, fingerprint {})",
                path.display(),
                key.fingerprint_hex()
            )
        }
        None => writeln!(w, "{}", key.to_hex()),
    }
    .map_err(out_err)
}
