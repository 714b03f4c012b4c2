//! A minimal streaming POSIX ustar writer: regular files with short names, written as
//! they are read, so an archive of any size needs a fixed few kilobytes of memory.
//! Members of 8 GiB and more use the base-256 size field (GNU tar, bsdtar and Python's
//! tarfile all read it).

use std::io::{self, Read, Write};

const BLOCK: usize = 512;
/// Largest size the 11 octal digits of the classic size field hold.
const OCTAL_SIZE_MAX: u64 = 0o77_777_777_777;

pub struct TarWriter<W: Write> {
    out: W,
}

impl<W: Write> TarWriter<W> {
    pub fn new(out: W) -> Self {
        Self { out }
    }

    /// Appends one regular file of exactly `size` bytes taken from `data`.
    pub fn append(
        &mut self,
        name: &str,
        size: u64,
        mtime: u64,
        data: &mut impl Read,
    ) -> io::Result<()> {
        self.out.write_all(&header(name, size, mtime)?)?;
        let copied = io::copy(&mut data.take(size), &mut self.out)?;
        if copied != size {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!("{name}: expected {size} bytes, got {copied}"),
            ));
        }
        let pad = (BLOCK - (size % BLOCK as u64) as usize) % BLOCK;
        self.out.write_all(&[0u8; BLOCK][..pad])
    }

    /// Writes the end-of-archive marker (two zero blocks) and hands the writer back.
    pub fn finish(mut self) -> io::Result<W> {
        self.out.write_all(&[0u8; 2 * BLOCK])?;
        Ok(self.out)
    }
}

fn octal(field: &mut [u8], value: u64) {
    // Zero-padded digits then a NUL, the form every reader accepts.
    let digits = field.len() - 1;
    let s = format!("{value:0digits$o}");
    field[..digits].copy_from_slice(&s.as_bytes()[s.len() - digits..]);
    field[digits] = 0;
}

fn header(name: &str, size: u64, mtime: u64) -> io::Result<[u8; BLOCK]> {
    if name.is_empty() || name.len() > 100 || name.bytes().any(|b| b == 0) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("tar member name {name:?} must be 1..=100 bytes without NUL"),
        ));
    }
    let mut h = [0u8; BLOCK];
    h[..name.len()].copy_from_slice(name.as_bytes());
    octal(&mut h[100..108], 0o644);
    octal(&mut h[108..116], 0);
    octal(&mut h[116..124], 0);
    if size <= OCTAL_SIZE_MAX {
        octal(&mut h[124..136], size);
    } else {
        h[124] = 0x80;
        h[128..136].copy_from_slice(&size.to_be_bytes());
    }
    octal(&mut h[136..148], mtime.min(OCTAL_SIZE_MAX));
    h[156] = b'0';
    h[257..263].copy_from_slice(b"ustar\0");
    h[263..265].copy_from_slice(b"00");
    // The checksum is computed with its own field read as spaces.
    h[148..156].copy_from_slice(b"        ");
    let sum: u32 = h.iter().map(|b| u32::from(*b)).sum();
    let s = format!("{sum:06o}");
    h[148..154].copy_from_slice(s.as_bytes());
    h[154] = 0;
    h[155] = b' ';
    Ok(h)
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
        t.append("manifest.json", 2, 1_700_000_000, &mut &b"{}"[..])
            .unwrap();
        let big = vec![b'x'; 1000];
        t.append("chunks.ndjson", 1000, 0, &mut &big[..]).unwrap();
        let out = t.finish().unwrap();
        assert_eq!(out.len(), 512 + 512 + 512 + 1024 + 1024);
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
            seen.push((name, size));
            at += 512 + size.div_ceil(512) * 512;
        }
        assert_eq!(
            seen,
            vec![("manifest.json".into(), 2), ("chunks.ndjson".into(), 1000)]
        );
    }

    #[test]
    fn short_input_and_bad_names_are_errors() {
        let mut t = TarWriter::new(Vec::new());
        assert!(t.append("a", 10, 0, &mut &b"abc"[..]).is_err());
        assert!(t.append(&"n".repeat(101), 0, 0, &mut &b""[..]).is_err());
        assert!(t.append("", 0, 0, &mut &b""[..]).is_err());
    }

    #[test]
    fn huge_sizes_use_base_256() {
        let h = header("big", 10 << 30, 0).unwrap();
        assert_eq!(h[124], 0x80);
        assert_eq!(
            u64::from_be_bytes(h[128..136].try_into().unwrap()),
            10 << 30
        );
    }
}
