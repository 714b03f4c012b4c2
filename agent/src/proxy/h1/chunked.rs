//! Follows the framing of a chunked body (RFC 9112 §7.1) while its raw bytes pass through
//! untouched, to know where the message ends and how much payload it carried.

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ChunkError {
    #[error("malformed chunk size line")]
    BadSize,
    #[error("chunk size too large")]
    TooLarge,
    #[error("chunk data not followed by CRLF")]
    BadDelimiter,
    #[error("chunk extension or trailer line longer than allowed")]
    LineTooLong,
}

/// Chunk extensions and trailer lines are metadata; a peer sending megabytes of them is
/// not a peer to keep reading from.
const MAX_LINE: usize = 8 * 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Size,
    Ext,
    SizeLf,
    Data,
    DataCr,
    DataLf,
    TrailerStart,
    Trailer,
    TrailerLf,
    EndLf,
    Done,
}

#[derive(Debug)]
pub struct ChunkedScanner {
    state: State,
    digits: u8,
    remaining: u64,
    line: usize,
    /// Payload bytes seen so far (without the framing).
    pub data_bytes: u64,
}

impl Default for ChunkedScanner {
    fn default() -> Self {
        Self {
            state: State::Size,
            digits: 0,
            remaining: 0,
            line: 0,
            data_bytes: 0,
        }
    }
}

impl ChunkedScanner {
    pub fn is_done(&self) -> bool {
        self.state == State::Done
    }

    /// Scans `buf`; returns how many of its bytes belong to this body (all of them, unless
    /// the body ends inside `buf`).
    pub fn feed(&mut self, buf: &[u8]) -> Result<usize, ChunkError> {
        let mut i = 0;
        while i < buf.len() {
            let b = buf[i];
            match self.state {
                State::Size => match b {
                    b'0'..=b'9' | b'a'..=b'f' | b'A'..=b'F' => {
                        let d = (b as char).to_digit(16).unwrap_or(0) as u64;
                        self.digits += 1;
                        if self.digits > 15 {
                            return Err(ChunkError::TooLarge);
                        }
                        self.remaining = self.remaining * 16 + d;
                    }
                    b';' | b' ' | b'\t' if self.digits > 0 => {
                        self.state = State::Ext;
                        self.line = 0;
                    }
                    b'\r' if self.digits > 0 => self.state = State::SizeLf,
                    _ => return Err(ChunkError::BadSize),
                },
                State::Ext => {
                    if b == b'\r' {
                        self.state = State::SizeLf;
                    } else if b == b'\n' {
                        return Err(ChunkError::BadSize);
                    } else {
                        self.line += 1;
                        if self.line > MAX_LINE {
                            return Err(ChunkError::LineTooLong);
                        }
                    }
                }
                State::SizeLf => {
                    if b != b'\n' {
                        return Err(ChunkError::BadSize);
                    }
                    self.digits = 0;
                    self.state = if self.remaining == 0 {
                        State::TrailerStart
                    } else {
                        State::Data
                    };
                }
                State::Data => {
                    let take =
                        (buf.len() - i).min(usize::try_from(self.remaining).unwrap_or(usize::MAX));
                    self.remaining -= take as u64;
                    self.data_bytes += take as u64;
                    i += take;
                    if self.remaining == 0 {
                        self.state = State::DataCr;
                    }
                    continue;
                }
                State::DataCr => {
                    if b != b'\r' {
                        return Err(ChunkError::BadDelimiter);
                    }
                    self.state = State::DataLf;
                }
                State::DataLf => {
                    if b != b'\n' {
                        return Err(ChunkError::BadDelimiter);
                    }
                    self.state = State::Size;
                }
                State::TrailerStart => {
                    if b == b'\r' {
                        self.state = State::EndLf;
                    } else {
                        self.state = State::Trailer;
                        self.line = 1;
                    }
                }
                State::Trailer => {
                    if b == b'\r' {
                        self.state = State::TrailerLf;
                    } else {
                        self.line += 1;
                        if self.line > MAX_LINE {
                            return Err(ChunkError::LineTooLong);
                        }
                    }
                }
                State::TrailerLf => {
                    if b != b'\n' {
                        return Err(ChunkError::BadDelimiter);
                    }
                    self.state = State::TrailerStart;
                }
                State::EndLf => {
                    if b != b'\n' {
                        return Err(ChunkError::BadDelimiter);
                    }
                    self.state = State::Done;
                    return Ok(i + 1);
                }
                State::Done => return Ok(i),
            }
            i += 1;
        }
        Ok(i)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scan_all(parts: &[&[u8]]) -> (Result<usize, ChunkError>, ChunkedScanner) {
        let mut s = ChunkedScanner::default();
        let mut total = 0;
        for p in parts {
            match s.feed(p) {
                Ok(n) => total += n,
                Err(e) => return (Err(e), s),
            }
            if s.is_done() {
                break;
            }
        }
        (Ok(total), s)
    }

    #[test]
    fn finds_the_end_and_counts_payload_across_any_split() {
        let body =
            b"5;ext=1\r\nhello\r\n1A\r\nabcdefghijklmnopqrstuvwxyz\r\n0\r\nX-T: 1\r\n\r\nEXTRA";
        let end = body.len() - 5;
        for split in 0..body.len() {
            let (n, s) = scan_all(&[&body[..split], &body[split..]]);
            assert_eq!(n, Ok(end), "split at {split}");
            assert!(s.is_done());
            assert_eq!(s.data_bytes, 31);
        }
        // One byte at a time.
        let parts: Vec<&[u8]> = body.chunks(1).collect();
        let (n, s) = scan_all(&parts);
        assert_eq!(n, Ok(end));
        assert_eq!(s.data_bytes, 31);
    }

    #[test]
    fn empty_body_and_incomplete_bodies() {
        let (n, s) = scan_all(&[b"0\r\n\r\n"]);
        assert_eq!(n, Ok(5));
        assert!(s.is_done());
        let (_, s) = scan_all(&[b"3\r\nab"]);
        assert!(!s.is_done());
        let (_, s) = scan_all(&[b"0\r\n"]);
        assert!(!s.is_done(), "the final CRLF is still missing");
    }

    #[test]
    fn malformed_framing_is_an_error() {
        assert_eq!(scan_all(&[b"zz\r\n"]).0, Err(ChunkError::BadSize));
        assert_eq!(scan_all(&[b"\r\n"]).0, Err(ChunkError::BadSize));
        assert_eq!(scan_all(&[b"3\r\nabcX"]).0, Err(ChunkError::BadDelimiter));
        assert_eq!(
            scan_all(&[b"ffffffffffffffff\r\n"]).0,
            Err(ChunkError::TooLarge)
        );
        let long = vec![b'a'; MAX_LINE + 10];
        assert_eq!(scan_all(&[b"1;", &long]).0, Err(ChunkError::LineTooLong));
    }
}
