//! SQLite store (WAL): one writer connection, a small pool of readers.
//!
//! All calls block; async callers go through [`Store::read`]/[`Store::write`] which run
//! the closure on tokio's blocking pool so request tasks never stall a worker thread.

pub mod documents;
mod schema;

use std::path::Path;
use std::sync::{Arc, Mutex};

use rusqlite::{Connection, OpenFlags};
use tokio::sync::Semaphore;

use crate::config::{StoreConfig, SyncMode};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database error: {0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error("cannot create data directory {path}: {source}")]
    DataDir {
        path: String,
        source: std::io::Error,
    },
    #[error("database task failed: {0}")]
    Task(String),
}

pub struct Store {
    writer: Mutex<Connection>,
    readers: Mutex<Vec<Connection>>,
    reader_slots: Semaphore,
}

/// The schema version (`PRAGMA user_version`) this binary migrates stores to.
pub fn schema_version() -> i64 {
    schema::latest_version()
}

fn configure(conn: &Connection, cfg: &StoreConfig) -> rusqlite::Result<()> {
    let sync = match cfg.synchronous {
        SyncMode::Full => "FULL",
        SyncMode::Normal => "NORMAL",
    };
    conn.execute_batch(&format!(
        "PRAGMA journal_mode=WAL; PRAGMA synchronous={sync}; PRAGMA foreign_keys=ON; \
         PRAGMA busy_timeout=10000; PRAGMA cache_size=-{}; PRAGMA temp_store=MEMORY;",
        cfg.cache_kib.max(256)
    ))
}

impl Store {
    pub fn open(data_dir: &Path, cfg: &StoreConfig) -> Result<Arc<Self>, StoreError> {
        std::fs::create_dir_all(data_dir).map_err(|source| StoreError::DataDir {
            path: data_dir.display().to_string(),
            source,
        })?;
        let path = data_dir.join("rag.db");
        let writer = Connection::open(&path)?;
        configure(&writer, cfg)?;
        schema::migrate(&writer)?;
        let mut readers = Vec::with_capacity(cfg.readers);
        for _ in 0..cfg.readers {
            let r = Connection::open_with_flags(
                &path,
                OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
            )?;
            configure(&r, cfg)?;
            readers.push(r);
        }
        Ok(Arc::new(Self {
            writer: Mutex::new(writer),
            readers: Mutex::new(readers),
            reader_slots: Semaphore::new(cfg.readers),
        }))
    }

    /// Runs `f` on the writer connection (serialised) in a blocking task.
    pub async fn write<T, F>(self: &Arc<Self>, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&mut Connection) -> Result<T, StoreError> + Send + 'static,
    {
        let store = Arc::clone(self);
        // The transaction's span is entered on the blocking thread so its parent is the
        // caller's span (tracing issue: one span per SQLite transaction).
        let span = tracing::info_span!(
            "sqlite.write",
            otel.kind = "internal",
            db.system.name = "sqlite"
        );
        tokio::task::spawn_blocking(move || {
            let _entered = span.enter();
            let mut conn = match store.writer.lock() {
                Ok(c) => c,
                Err(p) => p.into_inner(),
            };
            f(&mut conn)
        })
        .await
        .map_err(|e| StoreError::Task(e.to_string()))?
    }

    /// Runs `f` on a pooled read connection in a blocking task.
    pub async fn read<T, F>(self: &Arc<Self>, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> Result<T, StoreError> + Send + 'static,
    {
        let _permit = self
            .reader_slots
            .acquire()
            .await
            .map_err(|e| StoreError::Task(e.to_string()))?;
        let store = Arc::clone(self);
        let span = tracing::info_span!(
            "sqlite.read",
            otel.kind = "internal",
            db.system.name = "sqlite"
        );
        tokio::task::spawn_blocking(move || {
            let _entered = span.enter();
            let conn = store.take_reader()?;
            let out = f(&conn);
            store.return_reader(conn);
            out
        })
        .await
        .map_err(|e| StoreError::Task(e.to_string()))?
    }

    fn take_reader(&self) -> Result<Connection, StoreError> {
        let mut pool = match self.readers.lock() {
            Ok(p) => p,
            Err(p) => p.into_inner(),
        };
        pool.pop()
            .ok_or_else(|| StoreError::Task("no reader connection available".into()))
    }

    fn return_reader(&self, conn: Connection) {
        let mut pool = match self.readers.lock() {
            Ok(p) => p,
            Err(p) => p.into_inner(),
        };
        pool.push(conn);
    }

    /// Synchronous writer access for CLI commands that run before the server starts.
    pub fn write_blocking<T>(
        &self,
        f: impl FnOnce(&mut Connection) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let mut conn = match self.writer.lock() {
            Ok(c) => c,
            Err(p) => p.into_inner(),
        };
        f(&mut conn)
    }
}
