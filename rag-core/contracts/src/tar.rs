//! A minimal streaming POSIX ustar writer, shared by rag-core's workspace exports and the
//! agent's artifact bundles: regular files and directories, written as they are read, so
//! an archive of any size needs a fixed few kilobytes of memory. Paths longer than 100
//! bytes are split into ustar's prefix and name at a `/`; members of 8 GiB and more use
//! the base-256 size field (GNU tar, bsdtar and Python's tarfile all read it).

use std::io::{self, Read, Write};

pub const BLOCK: usize = 512;
/// Largest value the 11 octal digits of the size and mtime fields hold.
const OCTAL_MAX: u64 = 0o77_777_777_777;

/// One member's header fields.
#[derive(Debug, Clone, Copy)]
pub struct Member<'a> {
    pub path: &'a str,
    pub size: u64,
    /// Seconds since the epoch (clamped to what the field holds).
    pub mtime: u64,
    pub mode: u32,
    pub dir: bool,
}

fn octal(field: &mut [u8], value: u64) {
    // Zero-padded digits then a NUL, the form every reader accepts.
    let digits = field.len() - 1;
    let s = format!("{value:0digits$o}");
    field[..digits].copy_from_slice(&s.as_bytes()[s.len() - digits..]);
    field[digits] = 0;
}

/// The member's 512-byte header; `None` when the path is empty, holds a NUL, or does not
/// fit ustar's name (100 bytes) and prefix (155 bytes) fields.
pub fn header(m: &Member<'_>) -> Option<[u8; BLOCK]> {
    let bytes = m.path.as_bytes();
    if bytes.is_empty() || bytes.contains(&0) {
        return None;
    }
    let (prefix, name) = if bytes.len() <= 100 {
        (&b""[..], bytes)
    } else {
        let split = (0..bytes.len()).rev().find(|&i| {
            bytes[i] == b'/' && i <= 155 && (1..=100).contains(&(bytes.len() - i - 1))
        })?;
        (&bytes[..split], &bytes[split + 1..])
    };
    let mut h = [0u8; BLOCK];
    h[..name.len()].copy_from_slice(name);
    octal(&mut h[100..108], u64::from(m.mode & 0o7777));
    octal(&mut h[108..116], 0);
    octal(&mut h[116..124], 0);
    if m.size <= OCTAL_MAX {
        octal(&mut h[124..136], m.size);
    } else {
        h[124] = 0x80;
        h[128..136].copy_from_slice(&m.size.to_be_bytes());
    }
    octal(&mut h[136..148], m.mtime.min(OCTAL_MAX));
    h[156] = if m.dir { b'5' } else { b'0' };
    h[257..263].copy_from_slice(b"ustar\0");
    h[263..265].copy_from_slice(b"00");
    h[265..269].copy_from_slice(b"root");
    h[297..301].copy_from_slice(b"root");
    h[345..345 + prefix.len()].copy_from_slice(prefix);
    // The checksum is computed with its own field read as spaces.
    h[148..156].copy_from_slice(b"        ");
    let sum: u32 = h.iter().map(|&b| u32::from(b)).sum();
    let s = format!("{sum:06o}\0 ");
    h[148..156].copy_from_slice(s.as_bytes());
    Some(h)
}

pub struct TarWriter<W: Write> {
    out: W,
}

impl<W: Write> TarWriter<W> {
    pub fn new(out: W) -> Self {
        Self { out }
    }

    fn write_header(&mut self, m: &Member<'_>) -> io::Result<()> {
        let h = header(m).ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "tar member name {:?} must be non-empty, without NUL, and fit ustar's 100-byte name (+155-byte prefix split at '/')",
                    m.path
                ),
            )
        })?;
        self.out.write_all(&h)
    }

    /// Appends one regular file of exactly `size` bytes taken from `data`.
    pub fn append(
        &mut self,
        path: &str,
        size: u64,
        mtime: u64,
        mode: u32,
        data: &mut impl Read,
    ) -> io::Result<()> {
        self.write_header(&Member {
            path,
            size,
            mtime,
            mode,
            dir: false,
        })?;
        let copied = io::copy(&mut data.take(size), &mut self.out)?;
        if copied != size {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!("{path}: expected {size} bytes, got {copied}"),
            ));
        }
        let pad = (BLOCK - (size % BLOCK as u64) as usize) % BLOCK;
        self.out.write_all(&[0u8; BLOCK][..pad])
    }

    /// Appends a directory entry.
    pub fn append_dir(&mut self, path: &str, mtime: u64, mode: u32) -> io::Result<()> {
        self.write_header(&Member {
            path,
            size: 0,
            mtime,
            mode,
            dir: true,
        })
    }

    /// Writes the end-of-archive marker (two zero blocks) and hands the writer back.
    pub fn finish(mut self) -> io::Result<W> {
        self.out.write_all(&[0u8; 2 * BLOCK])?;
        Ok(self.out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn field(h: &[u8]) -> u64 {
        let s: String = h
            .iter()
            .take_while(|b| **b != 0 && **b != b' ')
            .map(|b| *b as char)
            .collect();
        u64::from_str_radix(&s, 8).unwrap()
    }

    #[test]
    fn members_round_trip_with_valid_checksums() {
        let mut t = TarWriter::new(Vec::new());
        t.append_dir("top/", 0, 0o755).unwrap();
        t.append("manifest.json", 2, 1_700_000_000, 0o644, &mut &b"{}"[..])
            .unwrap();
        let big = vec![b'x'; 1000];
        t.append("chunks.ndjson", 1000, 0, 0o644, &mut &big[..])
            .unwrap();
        let out = t.finish().unwrap();
        assert_eq!(out.len(), 512 + 512 + 512 + 512 + 1024 + 1024);
        let mut at = 0;
        let mut seen = Vec::new();
        while out[at..at + 512].iter().any(|b| *b != 0) {
            let h = &out[at..at + 512];
            let mut copy = h.to_vec();
            copy[148..156].copy_from_slice(b"        ");
            let sum: u64 = copy.iter().map(|b| u64::from(*b)).sum();
            assert_eq!(field(&h[148..156]), sum);
            assert_eq!(&h[257..262], b"ustar");
            let name: String = h[..100]
                .iter()
                .take_while(|b| **b != 0)
                .map(|b| *b as char)
                .collect();
            let size = field(&h[124..136]) as usize;
            seen.push((name, size, h[156]));
            at += 512 + size.div_ceil(512) * 512;
        }
        assert_eq!(
            seen,
            vec![
                ("top/".into(), 0, b'5'),
                ("manifest.json".into(), 2, b'0'),
                ("chunks.ndjson".into(), 1000, b'0')
            ]
        );
    }

    #[test]
    fn long_paths_use_the_prefix_and_unfit_names_are_errors() {
        let long = format!("{}/{}", "d".repeat(120), "f".repeat(90));
        let h = header(&Member {
            path: &long,
            size: 0,
            mtime: 0,
            mode: 0o644,
            dir: false,
        })
        .unwrap();
        assert_eq!(&h[..90], "f".repeat(90).as_bytes());
        assert_eq!(&h[345..465], "d".repeat(120).as_bytes());
        let mut t = TarWriter::new(Vec::new());
        assert!(t.append("a", 10, 0, 0o644, &mut &b"abc"[..]).is_err());
        assert!(
            t.append(&"n".repeat(101), 0, 0, 0o644, &mut &b""[..])
                .is_err()
        );
        assert!(
            t.append(&"x".repeat(300), 0, 0, 0o644, &mut &b""[..])
                .is_err()
        );
        assert!(t.append("", 0, 0, 0o644, &mut &b""[..]).is_err());
    }

    #[test]
    fn huge_sizes_use_base_256() {
        let h = header(&Member {
            path: "big",
            size: 10 << 30,
            mtime: 0,
            mode: 0o644,
            dir: false,
        })
        .unwrap();
        assert_eq!(h[124], 0x80);
        assert_eq!(
            u64::from_be_bytes(h[128..136].try_into().unwrap()),
            10 << 30
        );
    }
}
