//! Ingest: turn uploaded bytes, JSON text or fetched pages into sections, then chunks.

pub mod chunk;
pub mod fetch;
pub mod parse;

use sha2::{Digest, Sha256};

pub use chunk::{ChunkDraft, Chunker};

pub use parse::{Format, ParseError, ParsedDocument, Section};

/// A document ready to store: validated, parsed and chunked, not yet embedded.
#[derive(Debug)]
pub struct PreparedDocument {
    pub kind: &'static str,
    pub title: String,
    pub uri: Option<String>,
    pub media_type: &'static str,
    pub content_hash: String,
    pub bytes: usize,
    pub metadata: serde_json::Value,
    pub chunks: Vec<ChunkDraft>,
}

/// Hash of the extracted text with whitespace collapsed: the same words uploaded as a
/// file or posted as JSON count as the same content.
pub fn content_hash(doc: &ParsedDocument) -> String {
    let mut h = Sha256::new();
    for section in &doc.sections {
        for word in section.text.split_whitespace() {
            h.update(word.as_bytes());
            h.update(b" ");
        }
        h.update(b"\x1e");
    }
    hex::encode(h.finalize())
}

/// What the caller knows about a document besides its content.
#[derive(Debug)]
pub struct DocumentMeta {
    pub kind: &'static str,
    pub title: String,
    pub uri: Option<String>,
    pub metadata: serde_json::Value,
}

pub fn prepare(
    meta: DocumentMeta,
    format: Format,
    parsed: ParsedDocument,
    bytes: usize,
    chunker: &Chunker,
) -> Result<PreparedDocument, ParseError> {
    let DocumentMeta {
        kind,
        title,
        uri,
        metadata,
    } = meta;
    let chunks = chunker.chunk_document(&parsed, format == Format::Captions);
    if chunks.is_empty() {
        return Err(ParseError::Empty);
    }
    Ok(PreparedDocument {
        kind,
        title,
        uri,
        media_type: format.media_type(),
        content_hash: content_hash(&parsed),
        bytes,
        metadata,
        chunks,
    })
}
