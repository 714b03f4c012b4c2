//! Structure-aware chunking: sections never share a chunk (so a citation names one
//! heading), except subtitle cues, which are merged into chunks spanning a time range.
//! Sizes count characters, never bytes, so multi-byte text is never split mid-character.

use super::parse::ParsedDocument;

#[derive(Debug, Clone, PartialEq)]
pub struct ChunkDraft {
    pub index: usize,
    pub section: Option<String>,
    pub text: String,
}

#[derive(Debug, Clone, Copy)]
pub struct Chunker {
    pub size: usize,
    pub overlap: usize,
}

/// Byte offset `n` characters after `from` (or the end).
fn advance(s: &str, from: usize, n: usize) -> usize {
    s[from..]
        .char_indices()
        .nth(n)
        .map_or(s.len(), |(i, _)| from + i)
}

/// Byte offset `n` characters before `to` (or 0).
fn retreat(s: &str, to: usize, n: usize) -> usize {
    if n == 0 {
        return to;
    }
    s[..to]
        .char_indices()
        .rev()
        .nth(n - 1)
        .map_or(0, |(i, _)| i)
}

/// Where to end a chunk that would otherwise end at `hard_end`: the last paragraph break,
/// else sentence end, else whitespace, in the second half of the window.
fn break_point(s: &str, start: usize, hard_end: usize) -> usize {
    let window = &s[start..hard_end];
    let min = window.len() / 2;
    for pat in ["\n\n", ". ", "? ", "! ", "\n", "。", " "] {
        if let Some(pos) = window.rfind(pat) {
            let end = pos + pat.len();
            if end > min {
                return start + end;
            }
        }
    }
    hard_end
}

impl Chunker {
    pub fn new(size: usize, overlap: usize) -> Self {
        Self {
            size: size.max(1),
            overlap: overlap.min(size / 2),
        }
    }

    /// Splits one text into overlapping windows of at most `size` characters.
    pub fn split(&self, text: &str) -> Vec<String> {
        let text = text.trim();
        let mut out = Vec::new();
        let mut start = 0;
        while start < text.len() {
            let hard_end = advance(text, start, self.size);
            let end = if hard_end >= text.len() {
                text.len()
            } else {
                break_point(text, start, hard_end)
            };
            let piece = text[start..end].trim();
            if !piece.is_empty() {
                out.push(piece.to_string());
            }
            if end >= text.len() {
                break;
            }
            // Step back by the overlap, then forward to a word start so chunks do not
            // begin mid-word; always make progress.
            let mut next = retreat(text, end, self.overlap);
            if next > start && self.overlap > 0 {
                if let Some(ws) = text[next..end].find(char::is_whitespace) {
                    next += ws;
                }
                while next < end && text[next..].starts_with(char::is_whitespace) {
                    next = advance(text, next, 1);
                }
            }
            start = if next > start && next < end {
                next
            } else {
                end
            };
        }
        out
    }

    pub fn chunk_document(&self, doc: &ParsedDocument, merge_cues: bool) -> Vec<ChunkDraft> {
        let _span = tracing::info_span!("chunk").entered();
        let mut drafts = Vec::new();
        let push = |section: Option<String>, text: String, drafts: &mut Vec<ChunkDraft>| {
            let index = drafts.len();
            drafts.push(ChunkDraft {
                index,
                section,
                text,
            });
        };
        if merge_cues {
            // Group consecutive cues until the size is reached; section = first start → last end.
            let mut buf = String::new();
            let mut first: Option<&str> = None;
            let mut last: Option<&str> = None;
            for s in &doc.sections {
                let add = s.text.chars().count() + 1;
                if !buf.is_empty() && buf.chars().count() + add > self.size {
                    push(
                        cue_range(first, last),
                        std::mem::take(&mut buf),
                        &mut drafts,
                    );
                    first = None;
                }
                if first.is_none() {
                    first = s.heading.as_deref();
                }
                last = s.heading.as_deref();
                if !buf.is_empty() {
                    buf.push(' ');
                }
                buf.push_str(s.text.trim());
            }
            if !buf.trim().is_empty() {
                push(cue_range(first, last), buf, &mut drafts);
            }
            return drafts;
        }
        for s in &doc.sections {
            for piece in self.split(&s.text) {
                push(s.heading.clone(), piece, &mut drafts);
            }
        }
        drafts
    }
}

fn cue_range(first: Option<&str>, last: Option<&str>) -> Option<String> {
    let start = first?.split(" --> ").next()?;
    let end = last?.split(" --> ").nth(1)?;
    Some(format!("{start} --> {end}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ingest::parse::parse_captions;

    #[test]
    fn empty_and_short() {
        let c = Chunker::new(100, 10);
        assert!(c.split("").is_empty());
        assert!(c.split("   \n ").is_empty());
        assert_eq!(c.split("hello"), vec!["hello"]);
    }

    #[test]
    fn one_huge_line_without_spaces_is_cut_hard_with_bounded_chunks() {
        let c = Chunker::new(100, 10);
        let text = "x".repeat(1000);
        let parts = c.split(&text);
        assert!(parts.iter().all(|p| p.chars().count() <= 100));
        // Overlap of 10 on a 100 window: about 1000/90 chunks.
        assert!((10..=12).contains(&parts.len()), "{}", parts.len());
    }

    #[test]
    fn multibyte_characters_at_the_edge_are_never_split() {
        let c = Chunker::new(10, 2);
        let text = "ééééééééééé日本語日本語日本語🙂🙂🙂🙂🙂";
        let parts = c.split(text);
        for p in &parts {
            assert!(p.chars().count() <= 10);
        }
        let joined: String = parts.concat();
        for ch in text.chars() {
            assert!(joined.contains(ch));
        }
    }

    #[test]
    fn prefers_sentence_breaks_and_overlaps() {
        let c = Chunker::new(60, 15);
        let text = "First sentence is here. Second sentence follows it. Third one ends the paragraph. Fourth.";
        let parts = c.split(text);
        assert!(parts[0].ends_with('.'), "{parts:?}");
        assert!(parts.len() >= 2);
        // Overlap: the start of chunk 2 repeats the end of chunk 1.
        let tail: String = parts[0].split_whitespace().last().unwrap().to_string();
        assert!(parts[1].contains(&tail), "{parts:?}");
        assert!(parts.iter().all(|p| p.chars().count() <= 60));
    }

    #[test]
    fn cues_merge_into_time_ranges() {
        let doc = parse_captions(
            "00:00:01.000 --> 00:00:02.000\naaaa\n\n00:00:03.000 --> 00:00:04.000\nbbbb\n\n00:00:05.000 --> 00:00:06.000\ncccc\n",
        );
        let c = Chunker::new(10, 0);
        let d = c.chunk_document(&doc, true);
        assert_eq!(d.len(), 2);
        assert_eq!(
            d[0].section.as_deref(),
            Some("00:00:01.000 --> 00:00:04.000")
        );
        assert_eq!(d[0].text, "aaaa bbbb");
        assert_eq!(
            d[1].section.as_deref(),
            Some("00:00:05.000 --> 00:00:06.000")
        );
    }
}
