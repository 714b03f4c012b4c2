//! Format detection and text extraction, keeping structure (headings, pages, cue times)
//! so citations can point at a section.

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum ParseError {
    #[error("unsupported document type {0:?}; supported: .txt .md .html .pdf .srt .vtt")]
    Unsupported(String),
    #[error("document is not valid UTF-8 (byte {0})")]
    InvalidUtf8(usize),
    #[error("document has no text")]
    Empty,
    #[error("PDF could not be read: {0}")]
    Pdf(String),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Text,
    Markdown,
    Html,
    Pdf,
    /// SRT or WebVTT subtitles.
    Captions,
}

impl Format {
    pub fn from_file_name(name: &str) -> Result<Self, ParseError> {
        let ext = name
            .rsplit_once('.')
            .map(|(_, e)| e.to_ascii_lowercase())
            .unwrap_or_default();
        match ext.as_str() {
            "txt" | "text" | "log" => Ok(Self::Text),
            "md" | "markdown" => Ok(Self::Markdown),
            "html" | "htm" => Ok(Self::Html),
            "pdf" => Ok(Self::Pdf),
            "srt" | "vtt" => Ok(Self::Captions),
            _ => Err(ParseError::Unsupported(name.to_string())),
        }
    }

    pub fn from_content_type(ct: &str) -> Result<Self, ParseError> {
        let mime = ct
            .split(';')
            .next()
            .unwrap_or("")
            .trim()
            .to_ascii_lowercase();
        match mime.as_str() {
            "text/plain" | "" => Ok(Self::Text),
            "text/markdown" | "text/x-markdown" => Ok(Self::Markdown),
            "text/html" | "application/xhtml+xml" => Ok(Self::Html),
            "application/pdf" => Ok(Self::Pdf),
            "text/vtt" | "application/x-subrip" => Ok(Self::Captions),
            _ => Err(ParseError::Unsupported(mime)),
        }
    }

    pub fn media_type(self) -> &'static str {
        match self {
            Self::Text => "text/plain",
            Self::Markdown => "text/markdown",
            Self::Html => "text/html",
            Self::Pdf => "application/pdf",
            Self::Captions => "text/vtt",
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Section {
    /// Heading, page label or cue time range; None for untitled text.
    pub heading: Option<String>,
    pub text: String,
}

#[derive(Debug, Default)]
pub struct ParsedDocument {
    /// Title found inside the document (HTML `<title>`, first Markdown H1).
    pub title: Option<String>,
    pub sections: Vec<Section>,
}

impl ParsedDocument {
    pub fn is_empty(&self) -> bool {
        self.sections.iter().all(|s| s.text.trim().is_empty())
    }
}

fn utf8(bytes: &[u8]) -> Result<&str, ParseError> {
    let s = std::str::from_utf8(bytes).map_err(|e| ParseError::InvalidUtf8(e.valid_up_to()))?;
    Ok(s.strip_prefix('\u{feff}').unwrap_or(s))
}

pub fn parse(format: Format, bytes: &[u8]) -> Result<ParsedDocument, ParseError> {
    let _span = tracing::info_span!(
        "parse",
        minirag.format = format.media_type(),
        minirag.bytes = bytes.len()
    )
    .entered();
    let doc = match format {
        Format::Text => ParsedDocument {
            title: None,
            sections: vec![Section {
                heading: None,
                text: utf8(bytes)?.to_string(),
            }],
        },
        Format::Markdown => parse_markdown(utf8(bytes)?),
        Format::Html => parse_html(utf8(bytes)?),
        Format::Captions => parse_captions(utf8(bytes)?),
        Format::Pdf => parse_pdf(bytes)?,
    };
    if doc.is_empty() {
        return Err(ParseError::Empty);
    }
    Ok(doc)
}

pub fn parse_markdown(text: &str) -> ParsedDocument {
    let mut doc = ParsedDocument::default();
    let mut current = Section {
        heading: None,
        text: String::new(),
    };
    let mut in_fence = false;
    for line in text.lines() {
        let trimmed = line.trim_start();
        if trimmed.starts_with("```") || trimmed.starts_with("~~~") {
            in_fence = !in_fence;
        }
        let hashes = trimmed.bytes().take_while(|b| *b == b'#').count();
        let is_heading =
            !in_fence && (1..=6).contains(&hashes) && trimmed[hashes..].starts_with([' ', '\t']);
        if is_heading {
            let heading = trimmed[hashes..]
                .trim()
                .trim_end_matches('#')
                .trim()
                .to_string();
            if hashes == 1 && doc.title.is_none() {
                doc.title = Some(heading.clone());
            }
            if !current.text.trim().is_empty() {
                doc.sections.push(current);
            }
            current = Section {
                heading: Some(heading),
                text: String::new(),
            };
        } else {
            current.text.push_str(line);
            current.text.push('\n');
        }
    }
    if !current.text.trim().is_empty() {
        doc.sections.push(current);
    }
    doc
}

fn decode_entity(name: &str) -> Option<char> {
    match name {
        "amp" => Some('&'),
        "lt" => Some('<'),
        "gt" => Some('>'),
        "quot" => Some('"'),
        "apos" => Some('\''),
        "nbsp" => Some(' '),
        "mdash" => Some('—'),
        "ndash" => Some('–'),
        "hellip" => Some('…'),
        "copy" => Some('©'),
        _ => {
            let num = name.strip_prefix('#')?;
            let code = match num.strip_prefix(['x', 'X']) {
                Some(hex) => u32::from_str_radix(hex, 16).ok()?,
                None => num.parse().ok()?,
            };
            char::from_u32(code)
        }
    }
}

/// Decodes `&amp;`-style entities; unknown ones are kept verbatim.
pub fn decode_entities(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(pos) = rest.find('&') {
        out.push_str(&rest[..pos]);
        rest = &rest[pos..];
        let end = rest[1..]
            .find(|c: char| c == ';' || c == '&' || c.is_whitespace())
            .map(|i| i + 1);
        match end {
            Some(e) if rest.as_bytes().get(e) == Some(&b';') && e <= 12 => {
                if let Some(c) = decode_entity(&rest[1..e]) {
                    out.push(c);
                    rest = &rest[e + 1..];
                    continue;
                }
                out.push('&');
                rest = &rest[1..];
            }
            _ => {
                out.push('&');
                rest = &rest[1..];
            }
        }
    }
    out.push_str(rest);
    out
}

const BLOCK_TAGS: &[&str] = &[
    "p",
    "div",
    "br",
    "li",
    "ul",
    "ol",
    "tr",
    "table",
    "section",
    "article",
    "header",
    "footer",
    "blockquote",
    "pre",
    "dd",
    "dt",
    "hr",
    "main",
    "nav",
    "aside",
    "figure",
    "figcaption",
];
const SKIP_TAGS: &[&str] = &["script", "style", "noscript", "template", "svg"];

/// A forgiving HTML-to-text pass: drops scripts and styles, turns h1–h6 into sections and
/// block elements into line breaks. Not a full HTML5 parser, which page text does not need.
pub fn parse_html(html: &str) -> ParsedDocument {
    let mut doc = ParsedDocument::default();
    let mut current = Section {
        heading: None,
        text: String::new(),
    };
    let mut heading_buf: Option<String> = None;
    let mut title_buf: Option<String> = None;
    let mut skip_until: Option<String> = None;
    let mut rest = html;
    while !rest.is_empty() {
        let Some(lt) = rest.find('<') else {
            push_text(
                rest,
                &mut current,
                &mut heading_buf,
                &mut title_buf,
                skip_until.is_some(),
            );
            break;
        };
        push_text(
            &rest[..lt],
            &mut current,
            &mut heading_buf,
            &mut title_buf,
            skip_until.is_some(),
        );
        rest = &rest[lt..];
        if rest.starts_with("<!--") {
            rest = rest.find("-->").map_or("", |e| &rest[e + 3..]);
            continue;
        }
        let Some(gt) = rest.find('>') else { break };
        let tag = &rest[1..gt];
        rest = &rest[gt + 1..];
        let closing = tag.starts_with('/');
        let name: String = tag
            .trim_start_matches('/')
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric())
            .collect::<String>()
            .to_ascii_lowercase();
        if let Some(skip) = &skip_until {
            if closing && &name == skip {
                skip_until = None;
            }
            continue;
        }
        if name == "title" {
            if closing {
                if let Some(t) = title_buf.take() {
                    let t = collapse(&t);
                    if !t.is_empty() {
                        doc.title = Some(t);
                    }
                }
            } else {
                title_buf = Some(String::new());
            }
            continue;
        }
        if !closing && SKIP_TAGS.contains(&name.as_str()) && !tag.ends_with('/') {
            skip_until = Some(name);
            continue;
        }
        let is_heading =
            name.len() == 2 && name.starts_with('h') && name.as_bytes()[1].is_ascii_digit();
        if is_heading {
            if closing {
                if let Some(h) = heading_buf.take() {
                    let h = collapse(&h);
                    if !current.text.trim().is_empty() {
                        doc.sections.push(std::mem::replace(
                            &mut current,
                            Section {
                                heading: None,
                                text: String::new(),
                            },
                        ));
                    }
                    if !h.is_empty() {
                        if doc.title.is_none() && name == "h1" {
                            doc.title = Some(h.clone());
                        }
                        current.heading = Some(h);
                    }
                }
            } else {
                heading_buf = Some(String::new());
            }
        } else if BLOCK_TAGS.contains(&name.as_str()) {
            current.text.push('\n');
        }
    }
    if !current.text.trim().is_empty() {
        doc.sections.push(current);
    }
    for s in &mut doc.sections {
        s.text = s
            .text
            .lines()
            .map(collapse)
            .filter(|l| !l.is_empty())
            .collect::<Vec<_>>()
            .join("\n");
    }
    doc
}

fn push_text(
    raw: &str,
    current: &mut Section,
    heading: &mut Option<String>,
    title: &mut Option<String>,
    skipping: bool,
) {
    if skipping || raw.is_empty() {
        return;
    }
    let text = decode_entities(raw);
    if let Some(t) = title {
        t.push_str(&text);
    } else if let Some(h) = heading {
        h.push_str(&text);
    } else {
        current.text.push_str(&text);
    }
}

fn collapse(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// `00:01:02,500` / `01:02.500` → `00:01:02.500`.
fn normalize_timecode(t: &str) -> Option<String> {
    let t = t.trim().replace(',', ".");
    let (hms, ms) = t.split_once('.').unwrap_or((&t, "000"));
    let parts: Vec<&str> = hms.split(':').collect();
    let (h, m, s) = match parts.as_slice() {
        [h, m, s] => (
            h.parse::<u32>().ok()?,
            m.parse::<u32>().ok()?,
            s.parse::<u32>().ok()?,
        ),
        [m, s] => (0, m.parse::<u32>().ok()?, s.parse::<u32>().ok()?),
        _ => return None,
    };
    let ms: u32 = ms.get(..3.min(ms.len()))?.parse().ok()?;
    Some(format!("{h:02}:{m:02}:{s:02}.{ms:03}"))
}

/// SRT and WebVTT: each cue becomes a section headed by its time range.
pub fn parse_captions(text: &str) -> ParsedDocument {
    let mut doc = ParsedDocument::default();
    let normalized = text.replace("\r\n", "\n");
    for block in normalized.split("\n\n") {
        let mut lines = block.lines().filter(|l| !l.trim().is_empty());
        let mut timing = None;
        let mut body = Vec::new();
        for line in lines.by_ref() {
            if timing.is_none() {
                if let Some((start, end)) = line.split_once("-->") {
                    let end = end.split_whitespace().next().unwrap_or("");
                    if let (Some(s), Some(e)) = (normalize_timecode(start), normalize_timecode(end))
                    {
                        timing = Some(format!("{s} --> {e}"));
                    }
                }
                continue;
            }
            body.push(strip_tags(line));
        }
        if let Some(t) = timing {
            let text = body.join(" ");
            if !text.trim().is_empty() {
                doc.sections.push(Section {
                    heading: Some(t),
                    text,
                });
            }
        }
    }
    doc
}

fn strip_tags(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut in_tag = false;
    for c in s.chars() {
        match c {
            '<' => in_tag = true,
            '>' if in_tag => in_tag = false,
            _ if !in_tag => out.push(c),
            _ => {}
        }
    }
    decode_entities(out.trim())
}

fn parse_pdf(bytes: &[u8]) -> Result<ParsedDocument, ParseError> {
    if !bytes.starts_with(b"%PDF-") {
        return Err(ParseError::Pdf("missing %PDF- header".into()));
    }
    // The PDF library can panic on hostile input; a bad upload must only fail itself.
    let owned = bytes.to_vec();
    let text = std::panic::catch_unwind(move || pdf_extract::extract_text_from_mem(&owned))
        .map_err(|_| ParseError::Pdf("malformed PDF".into()))?
        .map_err(|e| ParseError::Pdf(e.to_string()))?;
    let sections = text
        .split('\u{c}')
        .enumerate()
        .filter(|(_, page)| !page.trim().is_empty())
        .map(|(i, page)| Section {
            heading: Some(format!("page {}", i + 1)),
            text: page.to_string(),
        })
        .collect();
    Ok(ParsedDocument {
        title: None,
        sections,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn markdown_sections_and_title() {
        let d = parse_markdown("# Guide\nintro\n## Setup\nrun it\n```\n# not a heading\n```\n");
        assert_eq!(d.title.as_deref(), Some("Guide"));
        assert_eq!(d.sections.len(), 2);
        assert_eq!(d.sections[1].heading.as_deref(), Some("Setup"));
        assert!(d.sections[1].text.contains("# not a heading"));
    }

    #[test]
    fn html_text_headings_entities() {
        let d = parse_html(
            "<html><head><title>T &amp; C</title><style>x{}</style></head><body>\
             <script>var a='<p>';</script><h1>Main</h1><p>Caf&eacute; &lt;ok&gt; &#233;</p>\
             <h2>Refunds</h2><p>30 days</p></body></html>",
        );
        assert_eq!(d.title.as_deref(), Some("T & C"));
        assert_eq!(d.sections.len(), 2);
        assert_eq!(d.sections[0].heading.as_deref(), Some("Main"));
        assert!(
            d.sections[0].text.contains("<ok> é"),
            "{:?}",
            d.sections[0].text
        );
        assert!(!d.sections[0].text.contains("var a"));
        assert_eq!(d.sections[1].text, "30 days");
    }

    #[test]
    fn srt_and_vtt_cues() {
        let srt = "1\r\n00:00:01,000 --> 00:00:04,000\r\nHello <i>world</i>\r\n\r\n2\r\n00:00:05,000 --> 00:00:06,500\r\nSecond\r\n";
        let d = parse_captions(srt);
        assert_eq!(d.sections.len(), 2);
        assert_eq!(
            d.sections[0].heading.as_deref(),
            Some("00:00:01.000 --> 00:00:04.000")
        );
        assert_eq!(d.sections[0].text, "Hello world");
        let vtt = "WEBVTT\n\nintro\n01:02.500 --> 01:04.000 align:start\nCue text\n";
        let d = parse_captions(vtt);
        assert_eq!(
            d.sections[0].heading.as_deref(),
            Some("00:01:02.500 --> 00:01:04.000")
        );
    }

    #[test]
    fn rejects_bad_input() {
        assert_eq!(
            parse(Format::Text, b"ok \xff\xfe").unwrap_err(),
            ParseError::InvalidUtf8(3)
        );
        assert_eq!(
            parse(Format::Text, b"  \n ").unwrap_err(),
            ParseError::Empty
        );
        assert!(matches!(
            parse(Format::Pdf, b"not a pdf"),
            Err(ParseError::Pdf(_))
        ));
        assert!(Format::from_file_name("a.exe").is_err());
        assert_eq!(Format::from_file_name("A.MD").unwrap(), Format::Markdown);
    }
}
