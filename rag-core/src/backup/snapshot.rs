//! The SQLite and file-system side of backups: a consistent copy of a live store,
//! the checks a decrypted copy must pass, and temporary files that never outlive an error.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use rusqlite::{Connection, OpenFlags};

/// Tables whose row counts `verify` and `restore` report.
pub const COUNTED_TABLES: [&str; 6] = [
    "organizations",
    "workspaces",
    "users",
    "api_keys",
    "sources",
    "chunks",
];

/// Prefixes of our temporary files; [`sweep_stale`] recognises them after a crash.
pub const SNAPSHOT_PREFIX: &str = ".rag-backup-";
pub const RESTORE_PREFIX: &str = ".rag-restore-";
pub const VERIFY_PREFIX: &str = "rag-verify-";
pub const PARTIAL_SUFFIX: &str = ".partial";

/// SQLite may leave these beside a database file.
const SIDE_SUFFIXES: [&str; 3] = ["-journal", "-wal", "-shm"];

/// A file removed (with SQLite's side files) when dropped, unless [`TempFile::persist`]
/// was called: every early return and every panic unwinding through its owner cleans up.
#[derive(Debug)]
pub struct TempFile {
    path: PathBuf,
    armed: bool,
}

impl TempFile {
    /// Creates the file empty, readable by its owner only (it will hold plaintext).
    pub fn create(path: PathBuf) -> std::io::Result<Self> {
        let mut opts = std::fs::OpenOptions::new();
        opts.write(true).create_new(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut opts, 0o600);
        opts.open(&path)?;
        Ok(Self { path, armed: true })
    }

    /// A fresh name `<dir>/<prefix><random>.tmp`.
    pub fn create_in(dir: &Path, prefix: &str) -> std::io::Result<Self> {
        Self::create(dir.join(format!("{prefix}{}.tmp", uuid::Uuid::new_v4().simple())))
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Keeps the file (it was renamed into place).
    pub fn persist(mut self) {
        self.armed = false;
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        let _ = std::fs::remove_file(&self.path);
        for sfx in SIDE_SUFFIXES {
            let _ = std::fs::remove_file(side_file(&self.path, sfx));
        }
    }
}

pub fn side_file(db: &Path, suffix: &str) -> PathBuf {
    let mut s = db.as_os_str().to_owned();
    s.push(suffix);
    PathBuf::from(s)
}

/// Copies the live database at `db` into the empty file `into`, consistent as of one
/// moment: `VACUUM INTO` runs inside one read transaction, which in WAL mode neither
/// blocks nor is blocked by the server's writer.
pub fn snapshot(db: &Path, into: &Path) -> rusqlite::Result<()> {
    // Read-only: the backup can never change the store, and a wrong path cannot create
    // an empty database.
    let conn = Connection::open_with_flags(
        db,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )?;
    conn.busy_timeout(Duration::from_secs(30))?;
    let target = into
        .to_str()
        .ok_or_else(|| rusqlite::Error::InvalidPath(into.to_path_buf()))?;
    conn.execute("VACUUM INTO ?1", [target])?;
    Ok(())
}

/// `PRAGMA user_version` of a database file.
pub fn schema_version(db: &Path) -> rusqlite::Result<u32> {
    let conn = Connection::open_with_flags(
        db,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )?;
    let v: i64 = conn.query_row("PRAGMA user_version", [], |r| r.get(0))?;
    Ok(u32::try_from(v).unwrap_or(u32::MAX))
}

#[derive(Debug, thiserror::Error)]
pub enum CheckError {
    #[error("the database fails PRAGMA integrity_check: {0}")]
    Integrity(String),
    #[error("the decrypted data is not a readable SQLite database: {0}")]
    Sqlite(#[from] rusqlite::Error),
}

/// `PRAGMA integrity_check` (which covers the FTS5 index too) and row counts. Opened
/// read-write because the file is our private copy and may be in WAL mode.
pub fn check(db: &Path) -> Result<Vec<(&'static str, i64)>, CheckError> {
    let conn = Connection::open_with_flags(
        db,
        OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )?;
    let mut stmt = conn.prepare("PRAGMA integrity_check(20)")?;
    let problems: Vec<String> = stmt
        .query_map([], |r| r.get::<_, String>(0))?
        .collect::<Result<_, _>>()?;
    drop(stmt);
    if problems != ["ok"] {
        return Err(CheckError::Integrity(problems.join("; ")));
    }
    let mut counts = Vec::new();
    for table in COUNTED_TABLES {
        let exists: bool = conn.query_row(
            "SELECT EXISTS (SELECT 1 FROM sqlite_schema WHERE type = 'table' AND name = ?1)",
            [table],
            |r| r.get(0),
        )?;
        if exists {
            // The name comes from the constant list above, never from input.
            let n: i64 =
                conn.query_row(&format!("SELECT count(*) FROM {table}"), [], |r| r.get(0))?;
            counts.push((table, n));
        }
    }
    Ok(counts)
}

/// Removes temporary files left by a crashed backup (they may hold plaintext). Only files
/// untouched for `older_than` go, so a backup running in another process is left alone.
pub fn sweep_stale(dir: &Path, older_than: Duration) -> Vec<PathBuf> {
    let mut removed = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return removed;
    };
    let now = SystemTime::now();
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        let ours = ([SNAPSHOT_PREFIX, RESTORE_PREFIX, VERIFY_PREFIX]
            .iter()
            .any(|p| name.starts_with(p))
            && name.contains(".tmp"))
            || (name.starts_with("rag-") && name.ends_with(PARTIAL_SUFFIX));
        if !ours {
            continue;
        }
        let old = entry
            .metadata()
            .and_then(|m| m.modified())
            .ok()
            .and_then(|m| now.duration_since(m).ok())
            .is_some_and(|age| age >= older_than);
        if old {
            // Already gone (another sweeper) or not removable: nothing more to do here.
            if std::fs::remove_file(entry.path()).is_ok() {
                removed.push(entry.path());
            }
        }
    }
    removed
}

/// Makes a rename durable (the directory entry itself must reach the disk).
pub fn sync_dir(dir: &Path) -> std::io::Result<()> {
    #[cfg(unix)]
    {
        std::fs::File::open(dir)?.sync_all()
    }
    #[cfg(not(unix))]
    {
        let _ = dir;
        Ok(())
    }
}
