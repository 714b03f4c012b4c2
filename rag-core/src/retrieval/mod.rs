//! Hybrid retrieval: FTS5 BM25 and embedding cosine, fused by reciprocal rank.

pub mod embed;
pub mod search;
pub mod text;
pub mod vectors;

pub use embed::{EmbedError, Embedder};
pub use search::{Hit, SearchParams, Searcher};
pub use vectors::VectorIndex;
