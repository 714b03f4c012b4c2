//! Word handling shared by the embedder, the FTS query builder and relevance checks.

const STOPWORDS: &[&str] = &[
    "a", "about", "all", "an", "and", "any", "are", "as", "at", "be", "but", "by", "can", "could",
    "did", "do", "does", "for", "from", "had", "has", "have", "how", "i", "if", "in", "into", "is",
    "it", "its", "me", "my", "not", "of", "on", "or", "our", "should", "so", "than", "that", "the",
    "their", "then", "there", "these", "they", "this", "those", "to", "us", "was", "we", "what",
    "when", "where", "which", "who", "why", "will", "with", "would", "you", "your",
];

pub fn is_stopword(w: &str) -> bool {
    STOPWORDS.binary_search(&w).is_ok()
}

/// Lowercased alphanumeric words, longest 64 chars (longer runs are noise).
pub fn words(text: &str) -> impl Iterator<Item = String> + '_ {
    text.split(|c: char| !c.is_alphanumeric())
        .filter(|w| !w.is_empty() && w.chars().count() <= 64)
        .map(str::to_lowercase)
}

/// A light suffix stripper so "policies"/"policy" and "refunds"/"refund" meet.
/// Returned as (base, suffix) so hot paths can hash the stem without allocating.
pub fn stem_parts(w: &str) -> (&str, &'static str) {
    let n = w.chars().count();
    if n > 4 && w.ends_with("ies") {
        return (&w[..w.len() - 3], "y");
    }
    if n > 5 && w.ends_with("ing") {
        return (&w[..w.len() - 3], "");
    }
    if n > 4 && w.ends_with("ed") && !w.ends_with("eed") {
        return (&w[..w.len() - 2], "");
    }
    if n > 3 && w.ends_with('s') && !w.ends_with("ss") && !w.ends_with("us") {
        return (&w[..w.len() - 1], "");
    }
    (w, "")
}

pub fn stem(w: &str) -> String {
    let (base, suffix) = stem_parts(w);
    format!("{base}{suffix}")
}

/// Calls `f` with each lowercased word (≤ 64 chars), reusing one buffer.
pub fn for_each_word(text: &str, mut f: impl FnMut(&str)) {
    let mut buf = String::new();
    for raw in text.split(|c: char| !c.is_alphanumeric()) {
        if raw.is_empty() || raw.len() > 256 || raw.chars().count() > 64 {
            continue;
        }
        if raw.bytes().all(|b| !b.is_ascii_uppercase() && b.is_ascii()) {
            f(raw);
        } else {
            buf.clear();
            buf.extend(raw.chars().flat_map(char::to_lowercase));
            f(&buf);
        }
    }
}

/// Content terms of a question: no stopwords, stemmed, deduplicated, in order.
pub fn content_terms(text: &str) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for w in words(text) {
        if is_stopword(&w) {
            continue;
        }
        let s = stem(&w);
        if !out.contains(&s) {
            out.push(s);
        }
    }
    out
}

/// Share of `terms` found among the (stemmed) words of `text`.
pub fn coverage(terms: &[String], text: &str) -> f64 {
    if terms.is_empty() {
        return 0.0;
    }
    let present: std::collections::HashSet<String> = words(text).map(|w| stem(&w)).collect();
    terms.iter().filter(|t| present.contains(*t)).count() as f64 / terms.len() as f64
}

/// The question's words as quoted FTS5 strings (quoting means user text can never
/// inject FTS5 syntax), stopwords dropped, at most 32.
pub fn fts_terms(question: &str) -> Vec<String> {
    let mut terms: Vec<String> = Vec::new();
    for w in words(question) {
        if is_stopword(&w) || terms.len() >= 32 {
            continue;
        }
        let q = format!("\"{}\"", w.replace('"', ""));
        if !terms.contains(&q) {
            terms.push(q);
        }
    }
    terms
}

/// FTS5 MATCH expression: the workspace token AND the terms joined by `op` (OR / AND).
pub fn fts_match(wstok: &str, terms: &[String], op: &str) -> String {
    format!(
        "wstok : \"{wstok}\" AND body : ({})",
        terms.join(&format!(" {op} "))
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stopwords_sorted_for_binary_search() {
        let mut sorted = STOPWORDS.to_vec();
        sorted.sort();
        assert_eq!(sorted, STOPWORDS);
    }

    #[test]
    fn terms_and_coverage() {
        let t = content_terms("What is the refund policy for annual plans?");
        assert_eq!(t, vec!["refund", "policy", "annual", "plan"]);
        assert_eq!(coverage(&t, "Refunds: our policies on annual plans"), 1.0);
        assert_eq!(coverage(&t, "nothing here"), 0.0);
    }

    #[test]
    fn fts_query_is_quoted() {
        let t = fts_terms("refund\" OR x:* NEAR(");
        assert_eq!(
            fts_match("w1", &t, "OR"),
            "wstok : \"w1\" AND body : (\"refund\" OR \"x\" OR \"near\")"
        );
        assert!(fts_terms("the of and").is_empty());
    }
}
