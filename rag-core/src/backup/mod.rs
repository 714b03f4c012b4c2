//! Encrypted backups of the store: `rag-core backup create|verify|restore|keygen`, and
//! scheduled backups with retention inside `serve`. See `docs/backups.md`.
//!
//! A backup is a `VACUUM INTO` snapshot of `<data_dir>/rag.db` (consistent while the
//! server writes), encrypted chunk by chunk with AES-256-GCM ([`format`]). Plaintext only
//! ever exists in owner-only temporary files that are removed on every path out.

pub mod cli;
pub mod config;
pub mod format;
pub mod key;
pub mod metrics;
pub mod schedule;
pub mod snapshot;

use std::fs::File;
use std::io::{BufReader, BufWriter};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

pub use config::BackupConfig;
pub use format::{FormatError, Header};
pub use key::{BackupKey, KeyError};
use snapshot::{CheckError, TempFile};

/// The database file inside a data directory.
pub const DB_FILE: &str = "rag.db";
/// Backups written by rag-core are `rag-<UTC timestamp>.mrbak`; retention only ever
/// touches names of exactly this form.
pub const EXTENSION: &str = ".mrbak";
const NAME_TIME_FORMAT: &str = "%Y%m%dT%H%M%S%.3fZ";
/// Temporary files untouched this long are leftovers of a crash, not a running backup.
const STALE_AFTER: Duration = Duration::from_secs(3600);
const IO_BUFFER: usize = 1 << 20;

#[derive(Debug, thiserror::Error)]
pub enum BackupError {
    #[error(transparent)]
    Key(#[from] KeyError),
    #[error("{path}: {source}")]
    Format { path: String, source: FormatError },
    #[error("no database at {0} (is the data directory right?)")]
    NoDatabase(String),
    #[error("{0} already exists; refusing to overwrite it")]
    Exists(String),
    #[error(
        "{0} already holds a store ({DB_FILE}); pass --force to replace it (the current one is then kept beside it as {DB_FILE}.before-restore-<time>)"
    )]
    StoreExists(String),
    #[error(
        "{path}: the backup holds schema version {backup}, newer than this rag-core supports ({supported}); restore it with a newer rag-core"
    )]
    SchemaTooNew {
        path: String,
        backup: u32,
        supported: u32,
    },
    #[error("{what} {path}: {source}")]
    Io {
        what: &'static str,
        path: String,
        source: std::io::Error,
    },
    #[error("cannot snapshot {path}: {source}")]
    Snapshot {
        path: String,
        source: rusqlite::Error,
    },
    #[error("{path}: {source}")]
    Check { path: String, source: CheckError },
    #[error("backup task failed: {0}")]
    Task(String),
}

fn io(what: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> BackupError {
    let path = path.display().to_string();
    move |source| BackupError::Io { what, path, source }
}

/// Where `create` writes.
#[derive(Debug, Clone)]
pub enum Target {
    /// Exactly this file.
    File(PathBuf),
    /// A new `rag-<UTC timestamp>.mrbak` in this directory (created if needed).
    Dir(PathBuf),
}

#[derive(Debug)]
pub struct Created {
    pub path: PathBuf,
    /// Size of the backup file.
    pub bytes: u64,
    /// Size of the snapshot it holds.
    pub database_bytes: u64,
    pub schema_version: u32,
    pub duration: Duration,
}

/// The schema version this binary migrates stores to; newer backups cannot be restored.
pub fn supported_schema_version() -> u32 {
    u32::try_from(crate::store::schema_version()).unwrap_or(0)
}

pub fn backup_file_name(at: chrono::DateTime<chrono::Utc>) -> String {
    format!("rag-{}{EXTENSION}", at.format(NAME_TIME_FORMAT))
}

/// The time in a name made by [`backup_file_name`]; `None` for any other name.
pub fn parse_backup_file_name(name: &str) -> Option<chrono::DateTime<chrono::Utc>> {
    let stamp = name.strip_prefix("rag-")?.strip_suffix(EXTENSION)?;
    let naive = chrono::NaiveDateTime::parse_from_str(stamp, NAME_TIME_FORMAT).ok()?;
    Some(naive.and_utc())
}

/// Snapshots the store in `data_dir` (the server may be running) and writes it encrypted.
/// The file appears under its final name only when complete and on disk.
pub fn create(data_dir: &Path, target: &Target, key: &BackupKey) -> Result<Created, BackupError> {
    let started = Instant::now();
    let db = data_dir.join(DB_FILE);
    if !db.is_file() {
        return Err(BackupError::NoDatabase(db.display().to_string()));
    }
    let now = chrono::Utc::now();
    let out = match target {
        Target::File(p) => p.clone(),
        Target::Dir(d) => {
            std::fs::create_dir_all(d).map_err(io("cannot create the backup directory", d))?;
            d.join(backup_file_name(now))
        }
    };
    let parent = match out.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    if out.exists() {
        return Err(BackupError::Exists(out.display().to_string()));
    }
    snapshot::sweep_stale(&parent, STALE_AFTER);

    // The snapshot goes next to the output: same file system, so no surprise about space
    // in /tmp, and the sweep above finds it after a crash.
    let plain = TempFile::create_in(&parent, snapshot::SNAPSHOT_PREFIX)
        .map_err(io("cannot create a temporary file in", &parent))?;
    snapshot::snapshot(&db, plain.path()).map_err(|source| BackupError::Snapshot {
        path: db.display().to_string(),
        source,
    })?;
    let schema_version =
        snapshot::schema_version(plain.path()).map_err(|source| BackupError::Snapshot {
            path: db.display().to_string(),
            source,
        })?;
    let database_bytes = std::fs::metadata(plain.path())
        .map_err(io("cannot read", plain.path()))?
        .len();

    let partial_path = snapshot::side_file(&out, snapshot::PARTIAL_SUFFIX);
    let partial =
        TempFile::create(partial_path.clone()).map_err(io("cannot create", &partial_path))?;
    {
        let mut input = File::open(plain.path()).map_err(io("cannot read", plain.path()))?;
        let file = std::fs::OpenOptions::new()
            .write(true)
            .open(&partial_path)
            .map_err(io("cannot write", &partial_path))?;
        let mut w = BufWriter::with_capacity(IO_BUFFER, file);
        let meta = format::Meta {
            created_at: now.timestamp(),
            schema_version,
            plaintext_len: database_bytes,
        };
        format::encrypt(key, meta, format::DEFAULT_CHUNK_SIZE, &mut input, &mut w).map_err(
            |source| BackupError::Format {
                path: partial_path.display().to_string(),
                source,
            },
        )?;
        let file = w
            .into_inner()
            .map_err(|e| io("cannot write", &partial_path)(e.into_error()))?;
        file.sync_all().map_err(io("cannot sync", &partial_path))?;
    }
    drop(plain);
    if out.exists() {
        return Err(BackupError::Exists(out.display().to_string()));
    }
    std::fs::rename(&partial_path, &out).map_err(io("cannot rename into place", &out))?;
    partial.persist();
    snapshot::sync_dir(&parent).map_err(io("cannot sync the directory", &parent))?;
    let bytes = std::fs::metadata(&out)
        .map_err(io("cannot read", &out))?
        .len();
    Ok(Created {
        path: out,
        bytes,
        database_bytes,
        schema_version,
        duration: started.elapsed(),
    })
}

/// Decrypts `file` into the existing file `dest`, synced to disk.
fn decrypt_file(file: &Path, key: &BackupKey, dest: &Path) -> Result<Header, BackupError> {
    let input = File::open(file).map_err(io("cannot open the backup", file))?;
    let mut input = BufReader::with_capacity(IO_BUFFER, input);
    let out = std::fs::OpenOptions::new()
        .write(true)
        .truncate(true)
        .open(dest)
        .map_err(io("cannot write", dest))?;
    let mut w = BufWriter::with_capacity(IO_BUFFER, out);
    let header =
        format::decrypt(key, &mut input, &mut w).map_err(|source| BackupError::Format {
            path: file.display().to_string(),
            source,
        })?;
    let out = w
        .into_inner()
        .map_err(|e| io("cannot write", dest)(e.into_error()))?;
    out.sync_all().map_err(io("cannot sync", dest))?;
    Ok(header)
}

fn check(db: &Path, shown_as: &Path) -> Result<Vec<(&'static str, i64)>, BackupError> {
    snapshot::check(db).map_err(|source| BackupError::Check {
        path: shown_as.display().to_string(),
        source,
    })
}

#[derive(Debug)]
pub struct Verified {
    pub header: Header,
    pub counts: Vec<(&'static str, i64)>,
}

/// Decrypts into a temporary file under `scratch_dir`, checks the database, removes it.
pub fn verify(file: &Path, key: &BackupKey, scratch_dir: &Path) -> Result<Verified, BackupError> {
    snapshot::sweep_stale(scratch_dir, STALE_AFTER);
    let plain = TempFile::create_in(scratch_dir, snapshot::VERIFY_PREFIX)
        .map_err(io("cannot create a temporary file in", scratch_dir))?;
    let header = decrypt_file(file, key, plain.path())?;
    let counts = check(plain.path(), file)?;
    Ok(Verified { header, counts })
}

#[derive(Debug)]
pub struct Restored {
    pub db: PathBuf,
    pub header: Header,
    pub counts: Vec<(&'static str, i64)>,
    /// Where the store that was replaced (`--force`) now is, with its -wal/-shm.
    pub replaced: Option<PathBuf>,
}

/// Restores `file` as `<data_dir>/rag.db`. Nothing in `data_dir` changes unless the
/// backup decrypts, authenticates, has a supported schema and passes the integrity check.
/// The server must not be running on `data_dir`.
pub fn restore(
    file: &Path,
    key: &BackupKey,
    data_dir: &Path,
    force: bool,
) -> Result<Restored, BackupError> {
    std::fs::create_dir_all(data_dir).map_err(io("cannot create the data directory", data_dir))?;
    let db = data_dir.join(DB_FILE);
    if db.exists() && !force {
        return Err(BackupError::StoreExists(data_dir.display().to_string()));
    }
    snapshot::sweep_stale(data_dir, STALE_AFTER);
    // Decrypted in the data directory itself so the final step is a rename on one file
    // system, never a copy that could be cut half-way.
    let plain = TempFile::create_in(data_dir, snapshot::RESTORE_PREFIX)
        .map_err(io("cannot create a temporary file in", data_dir))?;
    let header = decrypt_file(file, key, plain.path())?;
    let supported = supported_schema_version();
    if header.schema_version > supported {
        return Err(BackupError::SchemaTooNew {
            path: file.display().to_string(),
            backup: header.schema_version,
            supported,
        });
    }
    let counts = check(plain.path(), file)?;

    let replaced = if db.exists() {
        let aside = data_dir.join(format!(
            "{DB_FILE}.before-restore-{}",
            chrono::Utc::now().format("%Y%m%dT%H%M%SZ")
        ));
        // The old WAL moves with its database (it may hold committed data), so the old
        // store stays openable under its new name and never meets the restored one.
        for sfx in ["", "-wal", "-shm"] {
            let from = snapshot::side_file(&db, sfx);
            if from.exists() {
                let to = snapshot::side_file(&aside, sfx);
                std::fs::rename(&from, &to).map_err(io("cannot move aside", &from))?;
            }
        }
        Some(aside)
    } else {
        // A WAL without its database belongs to nothing we restore; SQLite would
        // otherwise replay it into the restored file.
        for sfx in ["-wal", "-shm"] {
            let stale = snapshot::side_file(&db, sfx);
            match std::fs::remove_file(&stale) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(io("cannot remove the stale", &stale)(e)),
            }
        }
        None
    };
    std::fs::rename(plain.path(), &db).map_err(io("cannot rename into place", &db))?;
    plain.persist();
    snapshot::sync_dir(data_dir).map_err(io("cannot sync the directory", data_dir))?;
    Ok(Restored {
        db,
        header,
        counts,
        replaced,
    })
}

/// Backups in `dir` made by rag-core, newest first.
pub fn list(dir: &Path) -> Result<Vec<(chrono::DateTime<chrono::Utc>, PathBuf)>, BackupError> {
    let entries = std::fs::read_dir(dir).map_err(io("cannot list", dir))?;
    let mut found: Vec<_> = entries
        .flatten()
        .filter_map(|e| {
            let name = e.file_name();
            let at = parse_backup_file_name(name.to_str()?)?;
            Some((at, e.path()))
        })
        .collect();
    found.sort_by(|a, b| b.cmp(a));
    Ok(found)
}

/// Keeps the newest `keep` backups in `dir`; returns the removed files.
pub fn prune(dir: &Path, keep: usize) -> Result<Vec<PathBuf>, BackupError> {
    let mut removed = Vec::new();
    for (_, path) in list(dir)?.into_iter().skip(keep) {
        std::fs::remove_file(&path).map_err(io("cannot remove the old backup", &path))?;
        removed.push(path);
    }
    Ok(removed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_names_sort_by_time_and_round_trip() {
        let a = chrono::DateTime::from_timestamp_millis(1_700_000_000_123).unwrap();
        let b = chrono::DateTime::from_timestamp_millis(1_700_000_060_000).unwrap();
        let (na, nb) = (backup_file_name(a), backup_file_name(b));
        assert_eq!(na, "rag-20231114T221320.123Z.mrbak");
        assert!(na < nb);
        assert_eq!(parse_backup_file_name(&na), Some(a));
        for other in [
            "rag-latest.mrbak",
            "rag-20231114T221320.123Z.mrbak.partial",
            "x.mrbak",
        ] {
            assert_eq!(parse_backup_file_name(other), None, "{other}");
        }
    }

    #[test]
    fn prune_keeps_the_newest_and_ignores_other_files() {
        let dir = std::env::temp_dir().join(format!("rag-core-prune-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).unwrap();
        let names: Vec<String> = (0..5)
            .map(|i| {
                backup_file_name(
                    chrono::DateTime::from_timestamp_millis(1_700_000_000_000 + i * 1000).unwrap(),
                )
            })
            .collect();
        for n in names.iter().chain(["rag-manual.mrbak".to_string()].iter()) {
            std::fs::write(dir.join(n), b"x").unwrap();
        }
        let removed = prune(&dir, 2).unwrap();
        assert_eq!(removed.len(), 3);
        let mut left: Vec<String> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        left.sort();
        assert_eq!(
            left,
            vec![
                names[3].clone(),
                names[4].clone(),
                "rag-manual.mrbak".into()
            ]
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
}
