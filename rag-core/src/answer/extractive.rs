//! Extractive answers: the sentences of the cited passages that best cover the question,
//! each followed by the number of the citation it came from.

use crate::retrieval::Hit;
use crate::retrieval::text::{content_terms, coverage};

fn sentences(text: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let mut start = 0;
    let bytes = text.as_bytes();
    for (i, c) in text.char_indices() {
        let end_of_sentence = c == '\n'
            || (matches!(c, '.' | '!' | '?' | '。')
                && bytes
                    .get(i + c.len_utf8())
                    .is_none_or(|b| b.is_ascii_whitespace()));
        if end_of_sentence {
            let s = text[start..i + c.len_utf8()].trim();
            if s.chars().count() > 1 {
                out.push(s);
            }
            start = i + c.len_utf8();
        }
    }
    let tail = text[start..].trim();
    if !tail.is_empty() {
        out.push(tail);
    }
    out
}

/// Builds the answer from `hits` (already filtered to relevant ones, in citation order).
pub fn answer(question: &str, hits: &[Hit], max_sentences: usize) -> String {
    let terms = content_terms(question);
    let mut scored: Vec<(f64, usize, usize, &str)> = Vec::new();
    for (ci, hit) in hits.iter().enumerate() {
        for (si, s) in sentences(&hit.text).into_iter().enumerate() {
            let cov = coverage(&terms, s);
            // Earlier citations and earlier sentences win ties.
            let score = cov - ci as f64 * 0.01 - si as f64 * 0.001;
            scored.push((score, ci, si, s));
        }
    }
    scored.sort_by(|a, b| b.0.total_cmp(&a.0));
    let mut picked: Vec<(usize, usize, &str)> = Vec::new();
    for (score, ci, si, s) in scored {
        if picked.len() >= max_sentences.max(1) {
            break;
        }
        if score <= 0.0 && !picked.is_empty() {
            break;
        }
        if picked.iter().any(|p| p.2 == s) {
            continue;
        }
        picked.push((ci, si, s));
    }
    // Read in document order: by citation, then position.
    picked.sort_by_key(|p| (p.0, p.1));
    picked
        .iter()
        .map(|(ci, _, s)| {
            format!(
                "{} [{}]",
                s.split_whitespace().collect::<Vec<_>>().join(" "),
                ci + 1
            )
        })
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_sentences() {
        assert_eq!(
            sentences("One. Two? Three 3.5 four\nFive"),
            vec!["One.", "Two?", "Three 3.5 four", "Five"]
        );
    }
}
