//! Size-based log rotation: `rag.log` → `rag.log.1` … `rag.log.N`, oldest dropped.
//!
//! The shipper in the agent follows files by identity (inode + fingerprint), so a
//! rename-then-create rotation is what it expects; never copy-truncate.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

pub struct RotatingFile {
    path: PathBuf,
    file: File,
    size: u64,
    max_bytes: u64,
    backups: u32,
    retention: Option<Duration>,
}

impl RotatingFile {
    pub fn open(
        path: &Path,
        max_bytes: u64,
        backups: u32,
        retention_days: u32,
    ) -> io::Result<Self> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let file = OpenOptions::new().create(true).append(true).open(path)?;
        let size = file.metadata()?.len();
        Ok(Self {
            path: path.to_path_buf(),
            file,
            size,
            max_bytes,
            backups,
            retention: (retention_days > 0)
                .then(|| Duration::from_secs(u64::from(retention_days) * 86_400)),
        })
    }

    /// Writes one whole line; rotates first if the line would push the file past the limit,
    /// so a record is never split across two files.
    pub fn write_line(&mut self, line: &[u8]) -> io::Result<()> {
        if self.size > 0 && self.size + line.len() as u64 > self.max_bytes {
            self.rotate()?;
        }
        self.file.write_all(line)?;
        self.size += line.len() as u64;
        Ok(())
    }

    /// Makes what was written durable (for sinks that acknowledge only after fsync).
    pub fn sync(&mut self) -> io::Result<()> {
        self.file.sync_data()
    }

    fn backup(&self, n: u32) -> PathBuf {
        let mut name = self.path.as_os_str().to_owned();
        name.push(format!(".{n}"));
        PathBuf::from(name)
    }

    fn rotate(&mut self) -> io::Result<()> {
        self.file.flush()?;
        if self.backups == 0 {
            self.file = OpenOptions::new()
                .create(true)
                .write(true)
                .truncate(true)
                .open(&self.path)?;
            self.file = OpenOptions::new().append(true).open(&self.path)?;
        } else {
            let _ = std::fs::remove_file(self.backup(self.backups));
            for n in (1..self.backups).rev() {
                let from = self.backup(n);
                if from.exists() {
                    std::fs::rename(&from, self.backup(n + 1))?;
                }
            }
            std::fs::rename(&self.path, self.backup(1))?;
            self.file = OpenOptions::new()
                .create(true)
                .append(true)
                .open(&self.path)?;
        }
        self.size = 0;
        self.expire_old_backups();
        Ok(())
    }

    fn expire_old_backups(&self) {
        let Some(retention) = self.retention else {
            return;
        };
        let now = SystemTime::now();
        for n in 1..=self.backups {
            let p = self.backup(n);
            let old = std::fs::metadata(&p)
                .and_then(|m| m.modified())
                .ok()
                .and_then(|m| now.duration_since(m).ok())
                .is_some_and(|age| age > retention);
            if old {
                let _ = std::fs::remove_file(&p);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rotates_at_limit_and_keeps_n_backups() {
        let dir = std::env::temp_dir().join(format!("rot-{}", uuid::Uuid::new_v4()));
        let path = dir.join("rag.log");
        let mut f = RotatingFile::open(&path, 100, 2, 14).unwrap();
        let line = b"0123456789012345678901234567890123456789\n"; // 41 bytes
        for _ in 0..10 {
            f.write_line(line).unwrap();
        }
        // 2 lines per file: 10 lines → current + .1 + .2 hold 6 lines, 4 dropped.
        for p in [path.clone(), f.backup(1), f.backup(2)] {
            let len = std::fs::metadata(&p).unwrap().len();
            assert!(len <= 100 && len % 41 == 0, "{p:?} {len}");
        }
        assert!(!f.backup(3).exists());
        std::fs::remove_dir_all(dir).unwrap();
    }
}
