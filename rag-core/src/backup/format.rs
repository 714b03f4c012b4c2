//! The encrypted backup file format (`.mrbak`), version 1.
//!
//! ```text
//! offset size  field (integers big-endian)
//!      0    8  magic "MRAGBAK1"
//!      8    2  format version (1)
//!     10    2  flags, reserved (0)
//!     12    4  chunk size in bytes (plaintext per data chunk; 1 MiB when written by rag-core)
//!     16    8  file id (random); its first 7 bytes are the nonce prefix
//!     24    8  key fingerprint: SHA-256("minirag-backup-v1 key fingerprint\0" ‖ key)[..8]
//!     32    8  created at, Unix seconds (signed)
//!     40    4  schema version of the store (SQLite `user_version`)
//!     44    8  plaintext length in bytes (the SQLite database file)
//!     52    4  reserved (0)
//!     56       data chunks, then one final chunk
//! ```
//!
//! The plaintext is cut into `ceil(length / chunk size)` data chunks, all full except
//! possibly the last; an empty plaintext has none. After them comes the final chunk, whose
//! plaintext is the SHA-256 of the whole plaintext. Every chunk is stored as its AES-256-GCM
//! ciphertext followed by the 16-byte tag, so a data chunk takes `chunk size + 16` bytes
//! (less for a short last one) and the final chunk 48.
//!
//! Chunk `i` (counting from 0, the final chunk included) is sealed with
//! - key: HKDF-SHA256(salt = file id, input key = the 32-byte backup key,
//!   info = "minirag-backup-v1 chunk key") — a fresh key per file, so nonces of different
//!   files made with the same backup key can never collide;
//! - nonce: nonce prefix (7 bytes) ‖ `i` (4 bytes) ‖ 1 for the final chunk, else 0;
//! - additional data: the 56 header bytes.
//!
//! So a changed header fails at chunk 0; a flipped bit, swapped or repeated chunks fail at
//! the chunk concerned; cutting the file short is seen as truncation because the header
//! (authenticated) fixes the length; bytes after the final chunk are refused; and a final
//! chunk can never be passed off as a data chunk or the reverse. The key fingerprint lets
//! a wrong key be named as such instead of failing as corruption; it reveals nothing
//! useful about a random 256-bit key.

use std::io::{Read, Write};

use ring::aead::{AES_256_GCM, Aad, LessSafeKey, Nonce, UnboundKey};
use ring::hkdf;
use sha2::{Digest, Sha256};

use super::key::BackupKey;

pub const MAGIC: &[u8; 8] = b"MRAGBAK1";
pub const VERSION: u16 = 1;
pub const HEADER_LEN: usize = 56;
pub const TAG_LEN: usize = 16;
pub const DIGEST_LEN: usize = 32;
/// The final chunk on disk: the sealed SHA-256 of the plaintext.
pub const FINAL_CHUNK_LEN: usize = DIGEST_LEN + TAG_LEN;
pub const DEFAULT_CHUNK_SIZE: u32 = 1 << 20;
/// Bounds on a chunk size read from a header, which is not authenticated until the first
/// chunk opens: a forged header must not make us allocate gigabytes.
pub const MIN_CHUNK_SIZE: u32 = 1024;
pub const MAX_CHUNK_SIZE: u32 = 16 << 20;

const CHUNK_KEY_INFO: &[u8] = b"minirag-backup-v1 chunk key";

#[derive(Debug, thiserror::Error)]
pub enum FormatError {
    #[error("not a Mini-RAG backup file (it does not start with \"MRAGBAK1\")")]
    NotABackup,
    #[error(
        "backup format version {0} is not supported by this rag-core (it reads version {VERSION}); use a newer rag-core"
    )]
    UnsupportedVersion(u16),
    #[error(
        "wrong key: the backup was encrypted with another key (key fingerprint in the file {file}, of the given key {given})"
    )]
    WrongKey { file: String, given: String },
    #[error("backup is corrupt or was modified (invalid header: {0})")]
    BadHeader(String),
    #[error("backup is truncated: it ends inside chunk {chunk} (expected {expected} bytes in all)")]
    Truncated { chunk: u64, expected: u64 },
    #[error("backup is corrupt or was modified (authentication failed at chunk {chunk})")]
    Corrupt { chunk: u64 },
    #[error("backup is corrupt or was modified (unexpected data after the final chunk)")]
    TrailingData,
    #[error("backup is corrupt (the SHA-256 of the decrypted data does not match)")]
    DigestMismatch,
    #[error("the input is {0} bytes, too large for one backup file")]
    TooLarge(u64),
    #[error("the input changed while it was being encrypted (expected {expected} bytes)")]
    InputChanged { expected: u64 },
    #[error("cannot read: {0}")]
    Read(std::io::Error),
    #[error("cannot write: {0}")]
    Write(std::io::Error),
    #[error("encryption failed")]
    Crypto,
    #[error("the system random number generator failed")]
    Random,
}

/// The header fields; [`Header::encode`] gives the exact bytes used as additional data.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    pub version: u16,
    pub chunk_size: u32,
    pub file_id: [u8; 8],
    pub key_fingerprint: [u8; 8],
    pub created_at: i64,
    pub schema_version: u32,
    pub plaintext_len: u64,
}

impl Header {
    pub fn encode(&self) -> [u8; HEADER_LEN] {
        let mut h = [0u8; HEADER_LEN];
        h[0..8].copy_from_slice(MAGIC);
        h[8..10].copy_from_slice(&self.version.to_be_bytes());
        // 10..12 flags and 52..56 reserved stay zero.
        h[12..16].copy_from_slice(&self.chunk_size.to_be_bytes());
        h[16..24].copy_from_slice(&self.file_id);
        h[24..32].copy_from_slice(&self.key_fingerprint);
        h[32..40].copy_from_slice(&self.created_at.to_be_bytes());
        h[40..44].copy_from_slice(&self.schema_version.to_be_bytes());
        h[44..52].copy_from_slice(&self.plaintext_len.to_be_bytes());
        h
    }

    /// Parses without checking the key; `bytes` may be shorter than a header (a truncated
    /// or foreign file), which is told apart from a bad magic.
    pub fn decode(bytes: &[u8]) -> Result<Self, FormatError> {
        if bytes.len() < MAGIC.len() || &bytes[..MAGIC.len()] != MAGIC {
            return Err(FormatError::NotABackup);
        }
        if let [hi, lo, ..] = bytes[MAGIC.len()..] {
            let version = u16::from_be_bytes([hi, lo]);
            if version != VERSION {
                return Err(FormatError::UnsupportedVersion(version));
            }
        }
        let Some(h) = bytes.get(..HEADER_LEN) else {
            return Err(FormatError::Truncated {
                chunk: 0,
                expected: HEADER_LEN as u64,
            });
        };
        let be_u32 = |r: std::ops::Range<usize>| {
            let mut b = [0u8; 4];
            b.copy_from_slice(&h[r]);
            u32::from_be_bytes(b)
        };
        let be_u64 = |r: std::ops::Range<usize>| {
            let mut b = [0u8; 8];
            b.copy_from_slice(&h[r]);
            u64::from_be_bytes(b)
        };
        let mut file_id = [0u8; 8];
        file_id.copy_from_slice(&h[16..24]);
        let mut key_fingerprint = [0u8; 8];
        key_fingerprint.copy_from_slice(&h[24..32]);
        let header = Header {
            version: VERSION,
            chunk_size: be_u32(12..16),
            file_id,
            key_fingerprint,
            created_at: be_u64(32..40) as i64,
            schema_version: be_u32(40..44),
            plaintext_len: be_u64(44..52),
        };
        if h[10..12] != [0, 0] || h[52..56] != [0, 0, 0, 0] {
            return Err(FormatError::BadHeader("reserved bytes are not zero".into()));
        }
        Ok(header)
    }

    /// Checked after the key fingerprint, so a wrong key is reported as such first.
    fn check_bounds(&self) -> Result<(), FormatError> {
        if !(MIN_CHUNK_SIZE..=MAX_CHUNK_SIZE).contains(&self.chunk_size) {
            return Err(FormatError::BadHeader(format!(
                "chunk size {} outside {MIN_CHUNK_SIZE}..={MAX_CHUNK_SIZE}",
                self.chunk_size
            )));
        }
        data_chunks(self.plaintext_len, self.chunk_size).map_err(|_| {
            FormatError::BadHeader(format!(
                "plaintext length {} needs too many chunks",
                self.plaintext_len
            ))
        })?;
        Ok(())
    }

    /// The exact size of a file with this header.
    pub fn file_len(&self) -> u64 {
        let n = self.plaintext_len.div_ceil(u64::from(self.chunk_size));
        HEADER_LEN as u64 + self.plaintext_len + n * TAG_LEN as u64 + FINAL_CHUNK_LEN as u64
    }
}

/// Data chunks for `len` bytes; the final chunk's counter must still fit in 32 bits.
fn data_chunks(len: u64, chunk_size: u32) -> Result<u64, FormatError> {
    let n = len.div_ceil(u64::from(chunk_size));
    if n >= u64::from(u32::MAX) {
        return Err(FormatError::TooLarge(len));
    }
    Ok(n)
}

/// Identifies a key without revealing it (domain-separated so the value is useless for
/// anything but this comparison).
pub fn key_fingerprint(key: &BackupKey) -> [u8; 8] {
    let mut h = Sha256::new();
    h.update(b"minirag-backup-v1 key fingerprint\0");
    h.update(key.bytes());
    let d = h.finalize();
    let mut out = [0u8; 8];
    out.copy_from_slice(&d[..8]);
    out
}

fn chunk_key(key: &BackupKey, file_id: &[u8; 8]) -> Result<LessSafeKey, FormatError> {
    let prk = hkdf::Salt::new(hkdf::HKDF_SHA256, file_id).extract(key.bytes());
    let info = [CHUNK_KEY_INFO];
    let okm = prk
        .expand(&info, &AES_256_GCM)
        .map_err(|_| FormatError::Crypto)?;
    Ok(LessSafeKey::new(UnboundKey::from(okm)))
}

fn nonce(file_id: &[u8; 8], counter: u32, last: bool) -> Nonce {
    let mut n = [0u8; 12];
    n[..7].copy_from_slice(&file_id[..7]);
    n[7..11].copy_from_slice(&counter.to_be_bytes());
    n[11] = u8::from(last);
    Nonce::assume_unique_for_key(n)
}

/// Reads until `buf` is full or the input ends; returns the bytes read.
fn read_full(r: &mut impl Read, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut got = 0;
    while got < buf.len() {
        match r.read(&mut buf[got..]) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(got)
}

/// What the writer knows about the plaintext before encrypting it.
#[derive(Debug, Clone, Copy)]
pub struct Meta {
    pub created_at: i64,
    pub schema_version: u32,
    pub plaintext_len: u64,
}

/// Encrypts exactly `meta.plaintext_len` bytes of `input` into `out`. Memory use is two
/// chunk buffers whatever the input size.
pub fn encrypt(
    key: &BackupKey,
    meta: Meta,
    chunk_size: u32,
    input: &mut impl Read,
    out: &mut impl Write,
) -> Result<Header, FormatError> {
    let n_data = data_chunks(meta.plaintext_len, chunk_size)?;
    let mut file_id = [0u8; 8];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut file_id)
        .map_err(|_| FormatError::Random)?;
    let header = Header {
        version: VERSION,
        chunk_size,
        file_id,
        key_fingerprint: key_fingerprint(key),
        created_at: meta.created_at,
        schema_version: meta.schema_version,
        plaintext_len: meta.plaintext_len,
    };
    header
        .check_bounds()
        .map_err(|_| FormatError::TooLarge(meta.plaintext_len))?;
    let aad = header.encode();
    out.write_all(&aad).map_err(FormatError::Write)?;
    let sealing = chunk_key(key, &file_id)?;
    let mut digest = Sha256::new();
    let mut buf = vec![0u8; chunk_size as usize];
    let mut remaining = meta.plaintext_len;
    for i in 0..n_data {
        let want = remaining.min(u64::from(chunk_size)) as usize;
        let got = read_full(input, &mut buf[..want]).map_err(FormatError::Read)?;
        if got != want {
            return Err(FormatError::InputChanged {
                expected: meta.plaintext_len,
            });
        }
        digest.update(&buf[..want]);
        let counter = u32::try_from(i).map_err(|_| FormatError::TooLarge(meta.plaintext_len))?;
        let tag = sealing
            .seal_in_place_separate_tag(
                nonce(&file_id, counter, false),
                Aad::from(&aad[..]),
                &mut buf[..want],
            )
            .map_err(|_| FormatError::Crypto)?;
        out.write_all(&buf[..want]).map_err(FormatError::Write)?;
        out.write_all(tag.as_ref()).map_err(FormatError::Write)?;
        remaining -= want as u64;
    }
    let mut probe = [0u8; 1];
    if read_full(input, &mut probe).map_err(FormatError::Read)? != 0 {
        return Err(FormatError::InputChanged {
            expected: meta.plaintext_len,
        });
    }
    let mut last = [0u8; DIGEST_LEN];
    last.copy_from_slice(&digest.finalize());
    let counter = u32::try_from(n_data).map_err(|_| FormatError::TooLarge(meta.plaintext_len))?;
    let tag = sealing
        .seal_in_place_separate_tag(
            nonce(&file_id, counter, true),
            Aad::from(&aad[..]),
            &mut last,
        )
        .map_err(|_| FormatError::Crypto)?;
    out.write_all(&last).map_err(FormatError::Write)?;
    out.write_all(tag.as_ref()).map_err(FormatError::Write)?;
    out.flush().map_err(FormatError::Write)?;
    Ok(header)
}

/// Reads and checks the header (magic, version, key fingerprint, bounds). The header is
/// only authenticated once the first chunk opens, in [`decrypt`].
pub fn read_header(key: &BackupKey, input: &mut impl Read) -> Result<Header, FormatError> {
    let mut raw = [0u8; HEADER_LEN];
    let got = read_full(input, &mut raw).map_err(FormatError::Read)?;
    let header = Header::decode(&raw[..got])?;
    let given = key_fingerprint(key);
    if header.key_fingerprint != given {
        return Err(FormatError::WrongKey {
            file: hex::encode(header.key_fingerprint),
            given: hex::encode(given),
        });
    }
    header.check_bounds()?;
    Ok(header)
}

/// Decrypts a whole backup into `out`, authenticating every chunk. Plaintext reaches `out`
/// chunk by chunk before the end is verified, so callers write to a temporary file and
/// discard it on any error.
pub fn decrypt(
    key: &BackupKey,
    input: &mut impl Read,
    out: &mut impl Write,
) -> Result<Header, FormatError> {
    let header = read_header(key, input)?;
    let aad = header.encode();
    let opening = chunk_key(key, &header.file_id)?;
    let n_data = data_chunks(header.plaintext_len, header.chunk_size)?;
    let expected = header.file_len();
    let mut digest = Sha256::new();
    let mut buf = vec![0u8; header.chunk_size as usize + TAG_LEN];
    let mut remaining = header.plaintext_len;
    for i in 0..n_data {
        let want = remaining.min(u64::from(header.chunk_size)) as usize + TAG_LEN;
        let got = read_full(input, &mut buf[..want]).map_err(FormatError::Read)?;
        if got != want {
            return Err(FormatError::Truncated { chunk: i, expected });
        }
        let counter = u32::try_from(i).map_err(|_| FormatError::Corrupt { chunk: i })?;
        let plain = opening
            .open_in_place(
                nonce(&header.file_id, counter, false),
                Aad::from(&aad[..]),
                &mut buf[..want],
            )
            .map_err(|_| FormatError::Corrupt { chunk: i })?;
        digest.update(&*plain);
        out.write_all(plain).map_err(FormatError::Write)?;
        remaining -= (want - TAG_LEN) as u64;
    }
    let mut last = [0u8; FINAL_CHUNK_LEN];
    let got = read_full(input, &mut last).map_err(FormatError::Read)?;
    if got != FINAL_CHUNK_LEN {
        return Err(FormatError::Truncated {
            chunk: n_data,
            expected,
        });
    }
    let counter = u32::try_from(n_data).map_err(|_| FormatError::Corrupt { chunk: n_data })?;
    let sealed_digest = opening
        .open_in_place(
            nonce(&header.file_id, counter, true),
            Aad::from(&aad[..]),
            &mut last,
        )
        .map_err(|_| FormatError::Corrupt { chunk: n_data })?;
    if sealed_digest != digest.finalize().as_slice() {
        return Err(FormatError::DigestMismatch);
    }
    let mut probe = [0u8; 1];
    if read_full(input, &mut probe).map_err(FormatError::Read)? != 0 {
        return Err(FormatError::TrailingData);
    }
    out.flush().map_err(FormatError::Write)?;
    Ok(header)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(b: u8) -> BackupKey {
        let mut k = [0u8; 32];
        for (i, x) in k.iter_mut().enumerate() {
            *x = b.wrapping_add(i as u8).wrapping_mul(31);
        }
        BackupKey::from_bytes(k)
    }

    fn seal(k: &BackupKey, plain: &[u8], chunk: u32) -> Vec<u8> {
        let mut out = Vec::new();
        let meta = Meta {
            created_at: 1_700_000_000,
            schema_version: 6,
            plaintext_len: plain.len() as u64,
        };
        let h = encrypt(k, meta, chunk, &mut &plain[..], &mut out).unwrap();
        assert_eq!(out.len() as u64, h.file_len());
        out
    }

    fn open(k: &BackupKey, file: &[u8]) -> Result<(Header, Vec<u8>), FormatError> {
        let mut out = Vec::new();
        let h = decrypt(k, &mut &file[..], &mut out)?;
        Ok((h, out))
    }

    fn data(n: usize) -> Vec<u8> {
        (0..n).map(|i| (i * 7 + i / 251) as u8).collect()
    }

    #[test]
    fn round_trips_at_every_interesting_length() {
        let k = key(1);
        let c = MIN_CHUNK_SIZE as usize;
        for n in [0, 1, c - 1, c, c + 1, 2 * c, 3 * c + 17] {
            let plain = data(n);
            let file = seal(&k, &plain, MIN_CHUNK_SIZE);
            let (h, back) = open(&k, &file).unwrap();
            assert_eq!(back, plain, "length {n}");
            assert_eq!(h.plaintext_len, n as u64);
            assert_eq!(h.schema_version, 6);
            assert_eq!(h.created_at, 1_700_000_000);
        }
        // The default chunk size: exactly one full chunk, and nothing at all.
        let plain = data(DEFAULT_CHUNK_SIZE as usize);
        let file = seal(&k, &plain, DEFAULT_CHUNK_SIZE);
        assert_eq!(
            file.len(),
            HEADER_LEN + plain.len() + TAG_LEN + FINAL_CHUNK_LEN
        );
        assert_eq!(open(&k, &file).unwrap().1, plain);
        let empty = seal(&k, &[], DEFAULT_CHUNK_SIZE);
        assert_eq!(empty.len(), HEADER_LEN + FINAL_CHUNK_LEN);
        assert!(open(&k, &empty).unwrap().1.is_empty());
    }

    #[test]
    fn two_files_of_the_same_data_differ() {
        let k = key(1);
        let a = seal(&k, &data(3000), MIN_CHUNK_SIZE);
        let b = seal(&k, &data(3000), MIN_CHUNK_SIZE);
        assert_ne!(a[16..24], b[16..24], "file ids");
        assert_ne!(a[HEADER_LEN..], b[HEADER_LEN..], "ciphertexts");
    }

    #[test]
    fn every_single_bit_flip_is_detected() {
        let k = key(2);
        let file = seal(&k, &data(2500), MIN_CHUNK_SIZE);
        for pos in 0..file.len() {
            for bit in [0x01u8, 0x80] {
                let mut bad = file.clone();
                bad[pos] ^= bit;
                let err = open(&k, &bad).expect_err("a flipped bit must be refused");
                let ok = match pos {
                    0..8 => matches!(err, FormatError::NotABackup),
                    8..10 => matches!(err, FormatError::UnsupportedVersion(_)),
                    24..32 => matches!(err, FormatError::WrongKey { .. }),
                    10..12 | 52..56 => matches!(err, FormatError::BadHeader(_)),
                    12..16 => matches!(
                        err,
                        FormatError::BadHeader(_)
                            | FormatError::Corrupt { chunk: 0 }
                            | FormatError::Truncated { .. }
                    ),
                    44..52 => matches!(
                        err,
                        FormatError::BadHeader(_)
                            | FormatError::Corrupt { chunk: 0 }
                            | FormatError::Truncated { .. }
                    ),
                    16..HEADER_LEN => matches!(err, FormatError::Corrupt { chunk: 0 }),
                    _ if pos >= file.len() - FINAL_CHUNK_LEN => {
                        matches!(err, FormatError::Corrupt { chunk: 3 })
                    }
                    _ => {
                        let chunk =
                            ((pos - HEADER_LEN) / (MIN_CHUNK_SIZE as usize + TAG_LEN)) as u64;
                        matches!(err, FormatError::Corrupt { chunk: c } if c == chunk)
                    }
                };
                assert!(ok, "flip at {pos}: unexpected {err:?}");
            }
        }
    }

    #[test]
    fn truncation_appending_and_reordering_are_detected() {
        let k = key(3);
        let c = MIN_CHUNK_SIZE as usize;
        let file = seal(&k, &data(3 * c), MIN_CHUNK_SIZE);
        for cut in 0..file.len() {
            let err = open(&k, &file[..cut]).expect_err("truncated file accepted");
            let ok = if cut < MAGIC.len() {
                matches!(err, FormatError::NotABackup)
            } else {
                matches!(err, FormatError::Truncated { .. })
            };
            assert!(ok, "cut at {cut}: {err:?}");
        }
        let mut longer = file.clone();
        longer.push(0);
        assert!(matches!(open(&k, &longer), Err(FormatError::TrailingData)));
        // Swap data chunks 0 and 1 (same length).
        let s = c + TAG_LEN;
        let mut swapped = file.clone();
        let (a, b) = (HEADER_LEN, HEADER_LEN + s);
        let first = swapped[a..a + s].to_vec();
        swapped.copy_within(b..b + s, a);
        swapped[b..b + s].copy_from_slice(&first);
        assert!(matches!(
            open(&k, &swapped),
            Err(FormatError::Corrupt { chunk: 0 })
        ));
        // Drop the middle chunk and fix nothing else: the length no longer adds up.
        let mut dropped = file[..HEADER_LEN + s].to_vec();
        dropped.extend_from_slice(&file[HEADER_LEN + 2 * s..]);
        assert!(open(&k, &dropped).is_err());
        // Splice the final chunk of another file with the same key.
        let other = seal(&k, &data(3 * c), MIN_CHUNK_SIZE);
        let mut spliced = file[..file.len() - FINAL_CHUNK_LEN].to_vec();
        spliced.extend_from_slice(&other[other.len() - FINAL_CHUNK_LEN..]);
        assert!(matches!(
            open(&k, &spliced),
            Err(FormatError::Corrupt { chunk: 3 })
        ));
    }

    #[test]
    fn wrong_key_and_foreign_files_have_their_own_errors() {
        let file = seal(&key(4), &data(100), MIN_CHUNK_SIZE);
        let err = open(&key(5), &file).unwrap_err();
        assert!(matches!(err, FormatError::WrongKey { .. }), "{err:?}");
        assert!(err.to_string().starts_with("wrong key"), "{err}");
        assert!(matches!(
            open(
                &key(4),
                b"SQLite format 3\0 and more bytes here, long enough for a header......"
            ),
            Err(FormatError::NotABackup)
        ));
        assert!(matches!(open(&key(4), b""), Err(FormatError::NotABackup)));
        let mut v2 = file.clone();
        v2[9] = 2;
        assert!(matches!(
            open(&key(4), &v2),
            Err(FormatError::UnsupportedVersion(2))
        ));
    }

    #[test]
    fn forged_huge_chunk_size_is_refused_before_allocating() {
        let k = key(6);
        let mut file = seal(&k, &data(10), MIN_CHUNK_SIZE);
        file[12..16].copy_from_slice(&u32::MAX.to_be_bytes());
        assert!(matches!(open(&k, &file), Err(FormatError::BadHeader(_))));
    }

    #[test]
    fn encrypt_refuses_input_of_another_length() {
        let k = key(7);
        let meta = Meta {
            created_at: 0,
            schema_version: 1,
            plaintext_len: 10,
        };
        let mut out = Vec::new();
        let short = encrypt(&k, meta, MIN_CHUNK_SIZE, &mut &[1u8; 5][..], &mut out);
        assert!(matches!(short, Err(FormatError::InputChanged { .. })));
        let mut out = Vec::new();
        let long = encrypt(&k, meta, MIN_CHUNK_SIZE, &mut &[1u8; 11][..], &mut out);
        assert!(matches!(long, Err(FormatError::InputChanged { .. })));
    }
}
