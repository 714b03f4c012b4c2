//! The hybrid search itself: BM25 and cosine candidates fused by reciprocal rank, then
//! judged for relevance so `ask` can abstain instead of quoting noise.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Instant;
use tracing::Instrument;

use serde::Serialize;

use super::embed::Embedder;
use super::text::{content_terms, coverage, fts_match, fts_terms};
use super::vectors::{VectorIndex, WorkspaceVectors, blob_to_i8, quantize};
use crate::config::RetrievalConfig;
use crate::obs::metrics::Metrics;
use crate::store::documents::{self, ws_token};
use crate::store::{Store, StoreError};

#[derive(Debug, thiserror::Error)]
pub enum SearchError {
    #[error("unknown source ids: {0:?}")]
    UnknownSources(Vec<String>),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Embed(#[from] super::embed::EmbedError),
}

pub struct SearchParams {
    pub ws_seq: i64,
    pub query: String,
    pub k: usize,
    pub source_ids: Option<Vec<String>>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Hit {
    pub source_id: String,
    pub title: String,
    pub uri: Option<String>,
    pub chunk_index: i64,
    pub section: Option<String>,
    /// Reciprocal-rank-fusion score (higher is better; comparable within one query).
    pub score: f64,
    pub cosine: f32,
    pub bm25_rank: Option<usize>,
    /// Share of the question's content words present in the passage.
    pub term_coverage: f64,
    pub relevant: bool,
    pub text: String,
}

/// Workspaces up to this many chunks rank every chunk matching any question word.
const PRUNE_ABOVE_CHUNKS: i64 = 20_000;

/// The lexical query. FTS5 scores every matching row before it can sort, so in a large
/// workspace an OR over very common words costs a scan of most of it (~90 ms at 125k
/// chunks). Words found in more than 5% of the workspace's chunks add little to BM25
/// (low IDF) and are left to the vector side; if every word is that common, their AND
/// is precise and cheap.
fn lexical_match(
    conn: &rusqlite::Connection,
    ws: i64,
    wstok: &str,
    terms: &[String],
) -> Result<String, StoreError> {
    let chunks = documents::count_vectors(conn, ws)? as i64;
    if chunks <= PRUNE_ABOVE_CHUNKS || terms.len() < 2 {
        return Ok(fts_match(wstok, terms, "OR"));
    }
    let cap = (chunks / 20) as usize;
    let mut rare = Vec::new();
    for t in terms {
        let single = fts_match(wstok, std::slice::from_ref(t), "OR");
        if documents::count_matches_capped(conn, &single, cap)? < cap {
            rare.push(t.clone());
        }
    }
    Ok(if rare.is_empty() {
        fts_match(wstok, terms, "AND")
    } else {
        fts_match(wstok, &rare, "OR")
    })
}

/// One candidate's standing in the fusion.
#[derive(Default)]
struct Fused {
    score: f64,
    bm25_rank: Option<usize>,
    cosine: f32,
}

pub struct Searcher {
    pub store: Arc<Store>,
    pub index: Arc<VectorIndex>,
    pub embedder: Arc<Embedder>,
    pub cfg: RetrievalConfig,
    pub metrics: Arc<Metrics>,
}

impl Searcher {
    pub async fn search(&self, p: SearchParams) -> Result<Vec<Hit>, SearchError> {
        let started = Instant::now();
        let embedder_name = self.embedder.name();
        let qvec = quantize(
            &self
                .embedder
                .embed(std::slice::from_ref(&p.query))
                .await?
                .remove(0),
        );
        let n = self.cfg.candidates.max(p.k);
        let terms = fts_terms(&p.query);
        let terms_len = terms.len();
        let wstok = ws_token(p.ws_seq);
        let ws = p.ws_seq;
        let source_ids = p.source_ids.clone();

        // Lexical candidates and the source filter in one trip to the blocking pool.
        let (fts_ids, allowed) = self
            .store
            .read(move |conn| {
                let seqs = match &source_ids {
                    Some(ids) => match documents::resolve_sources(conn, ws, ids)? {
                        Ok(seqs) => Some(seqs),
                        Err(unknown) => return Ok(Err(unknown)),
                    },
                    None => None,
                };
                let fts = if terms.is_empty() {
                    Vec::new()
                } else {
                    let m = lexical_match(conn, ws, &wstok, &terms)?;
                    documents::fts_candidates(conn, &m, seqs.as_deref(), n)?
                };
                let allowed: Option<HashSet<i64>> = match &seqs {
                    Some(s) => Some(
                        documents::chunk_ids_of_sources(conn, s)?
                            .into_iter()
                            .collect(),
                    ),
                    None => None,
                };
                Ok(Ok((fts, allowed)))
            })
            .instrument(tracing::info_span!("fts_search", minirag.terms = terms_len))
            .await?
            .map_err(SearchError::UnknownSources)?;

        let vec_hits = self
            .vector_candidates(ws, &embedder_name, qvec, n, allowed)
            .instrument(tracing::info_span!("vector_search", minirag.candidates = n))
            .await?;

        // Reciprocal rank fusion: robust to the two scores living on different scales.
        let fusion = tracing::info_span!("fusion").entered();
        let mut fused: HashMap<i64, Fused> = HashMap::new();
        for (rank, id) in fts_ids.iter().enumerate() {
            let e = fused.entry(*id).or_default();
            e.score += 1.0 / (self.cfg.rrf_k + rank as f64 + 1.0);
            e.bm25_rank = Some(rank + 1);
        }
        for (rank, (id, cos)) in vec_hits.iter().enumerate() {
            let e = fused.entry(*id).or_default();
            e.score += 1.0 / (self.cfg.rrf_k + rank as f64 + 1.0);
            e.cosine = *cos;
        }
        let mut ranked: Vec<(i64, Fused)> = fused.into_iter().collect();
        ranked.sort_by(|a, b| b.1.score.total_cmp(&a.1.score).then(a.0.cmp(&b.0)));
        ranked.truncate(p.k);
        drop(fusion);

        let ids: Vec<i64> = ranked.iter().map(|r| r.0).collect();
        let rows = self
            .store
            .read(move |conn| documents::chunk_rows(conn, ws, &ids))
            .await?;
        let by_id: HashMap<i64, documents::ChunkRow> =
            rows.into_iter().map(|r| (r.id, r)).collect();
        let terms = content_terms(&p.query);
        let mut hits = Vec::with_capacity(ranked.len());
        for (
            id,
            Fused {
                score,
                bm25_rank,
                cosine,
            },
        ) in ranked
        {
            let Some(row) = by_id.get(&id) else { continue };
            let term_coverage = coverage(&terms, &row.text);
            let relevant = (bm25_rank.is_some() && term_coverage >= self.cfg.min_term_coverage)
                || cosine >= self.cfg.min_cosine;
            hits.push(Hit {
                source_id: row.source_id.clone(),
                title: row.title.clone(),
                uri: row.uri.clone(),
                chunk_index: row.chunk_index,
                section: row.section.clone(),
                score,
                cosine,
                bm25_rank,
                term_coverage,
                relevant,
                text: row.text.clone(),
            });
        }
        self.metrics.observe_stage("retrieve", started);
        Ok(hits)
    }

    async fn vector_candidates(
        &self,
        ws: i64,
        embedder_name: &str,
        q: Vec<i8>,
        n: usize,
        allowed: Option<HashSet<i64>>,
    ) -> Result<Vec<(i64, f32)>, SearchError> {
        let slot = self.index.slot(ws);
        if slot.read().await.is_none() {
            let mut guard = slot.write().await;
            if guard.is_none() {
                let name = embedder_name.to_string();
                let dims = q.len();
                let index = Arc::clone(&self.index);
                // Load the workspace once, if the memory bound allows; otherwise scan.
                let loaded = self
                    .store
                    .read(move |conn| {
                        let count = documents::count_vectors(conn, ws)?;
                        if !index.reserve(count) {
                            return Ok(None);
                        }
                        let mut wv = WorkspaceVectors::new(dims);
                        documents::for_each_vector(conn, ws, &name, |id, blob| {
                            wv.push(id, &blob_to_i8(blob))
                        })?;
                        index.release(count);
                        index.reserve(wv.len());
                        Ok(Some(wv))
                    })
                    .await?;
                match loaded {
                    Some(wv) => *guard = Some(wv),
                    None => {
                        drop(guard);
                        return self.scan_from_disk(ws, embedder_name, q, n, allowed).await;
                    }
                }
            }
        }
        let slot = Arc::clone(&slot);
        crate::obs::trace::spawn_blocking_in_span(move || {
            let guard = slot.blocking_read();
            let filter = allowed.map(|set| move |id: i64| set.contains(&id));
            match guard.as_ref() {
                Some(wv) => wv.top(&q, n, filter.as_ref().map(|f| f as &dyn Fn(i64) -> bool)),
                None => Vec::new(),
            }
        })
        .await
        .map_err(|e| SearchError::Store(StoreError::Task(e.to_string())))
    }

    async fn scan_from_disk(
        &self,
        ws: i64,
        embedder_name: &str,
        q: Vec<i8>,
        n: usize,
        allowed: Option<HashSet<i64>>,
    ) -> Result<Vec<(i64, f32)>, SearchError> {
        let name = embedder_name.to_string();
        Ok(self
            .store
            .read(move |conn| {
                // Streams in slices so memory stays bounded whatever the workspace size.
                let mut best: Vec<(i64, f32)> = Vec::new();
                let mut batch = WorkspaceVectors::new(q.len());
                let filter = allowed.map(|set| move |id: i64| set.contains(&id));
                let f = filter.as_ref().map(|f| f as &dyn Fn(i64) -> bool);
                documents::for_each_vector(conn, ws, &name, |id, blob| {
                    batch.push(id, &blob_to_i8(blob));
                    if batch.len() >= 10_000 {
                        best.extend(batch.top(&q, n, f));
                        batch = WorkspaceVectors::new(q.len());
                    }
                })?;
                best.extend(batch.top(&q, n, f));
                best.sort_by(|a, b| b.1.total_cmp(&a.1));
                best.truncate(n);
                Ok(best)
            })
            .await?)
    }

    /// Keeps a loaded workspace current after an ingest commit.
    pub async fn add_vectors(&self, ws: i64, items: Vec<(i64, Vec<i8>)>) {
        let slot = self.index.slot(ws);
        let mut guard = slot.write().await;
        if let Some(wv) = guard.as_mut() {
            if self.index.reserve(items.len()) {
                for (id, v) in &items {
                    wv.push(*id, v);
                }
            } else {
                // Over the bound: drop the workspace; searches fall back to disk scans.
                self.index.release(wv.len());
                *guard = None;
            }
        }
    }

    pub async fn remove_vectors(&self, ws: i64, ids: &[i64]) {
        let slot = self.index.slot(ws);
        let mut guard = slot.write().await;
        if let Some(wv) = guard.as_mut() {
            let before = wv.len();
            wv.remove(&ids.iter().copied().collect());
            self.index.release(before - wv.len());
        }
    }
}
