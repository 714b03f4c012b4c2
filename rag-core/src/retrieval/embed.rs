//! Embedders behind one interface: local feature hashing (default, no services) or an
//! OpenAI-compatible `/embeddings` endpoint. Each stored vector records which embedder
//! made it, so a change of embedder never mixes incomparable vectors.

use std::time::Duration;
use tracing::Instrument;

use serde::Deserialize;

use super::text::{for_each_word, is_stopword, stem_parts};
use crate::config::{EmbedderKind, OpenAiConfig, RetrievalConfig};

#[derive(Debug, thiserror::Error)]
pub enum EmbedError {
    #[error("embedding service: {0}")]
    Remote(String),
}

pub enum Embedder {
    Hashing {
        dims: usize,
    },
    OpenAi {
        client: reqwest::Client,
        cfg: OpenAiConfig,
    },
}

fn fnv1a_parts(a: &str, b: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in a.bytes().chain(b.bytes()) {
        h ^= u64::from(byte);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

/// Signed feature hashing of stemmed words and word bigrams, sublinear term frequency,
/// L2-normalised. Allocation-light: it runs over every chunk at ingest.
pub fn hash_embed(text: &str, dims: usize) -> Vec<f32> {
    let mut counts: std::collections::HashMap<u64, f32> = std::collections::HashMap::new();
    let mut prev: Option<u64> = None;
    for_each_word(text, |w| {
        if is_stopword(w) {
            prev = None;
            return;
        }
        let (base, suffix) = stem_parts(w);
        let h = fnv1a_parts(base, suffix);
        *counts.entry(h).or_default() += 1.0;
        if let Some(p) = prev {
            // Order-sensitive mix of the two word hashes stands for the bigram.
            let bigram = (p.rotate_left(21) ^ h).wrapping_mul(0x9e37_79b9_7f4a_7c15);
            *counts.entry(bigram).or_default() += 0.5;
        }
        prev = Some(h);
    });
    let mut v = vec![0f32; dims];
    for (h, tf) in counts {
        let idx = (h % dims as u64) as usize;
        let sign = if h >> 63 == 1 { -1.0 } else { 1.0 };
        v[idx] += sign * (1.0 + tf.ln());
    }
    normalize(&mut v);
    v
}

pub fn normalize(v: &mut [f32]) {
    let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt();
    if norm > 0.0 {
        v.iter_mut().for_each(|x| *x /= norm);
    }
}

#[derive(Deserialize)]
struct EmbeddingResponse {
    data: Vec<EmbeddingItem>,
}

#[derive(Deserialize)]
struct EmbeddingItem {
    embedding: Vec<f32>,
    index: usize,
}

impl Embedder {
    pub fn from_config(r: &RetrievalConfig, openai: &OpenAiConfig) -> Result<Self, EmbedError> {
        Ok(match r.embedder {
            EmbedderKind::Hashing => Self::Hashing {
                dims: r.hashing_dimensions,
            },
            EmbedderKind::Openai => Self::OpenAi {
                client: reqwest::Client::builder()
                    .timeout(Duration::from_secs(openai.timeout_seconds))
                    .build()
                    .map_err(|e| EmbedError::Remote(e.to_string()))?,
                cfg: openai.clone(),
            },
        })
    }

    /// Stored beside each vector; vectors of another name are ignored by search.
    pub fn name(&self) -> String {
        match self {
            Self::Hashing { dims } => format!("hashing-v1-{dims}"),
            Self::OpenAi { cfg, .. } => format!("openai:{}", cfg.embedding_model),
        }
    }

    pub async fn embed(&self, texts: &[String]) -> Result<Vec<Vec<f32>>, EmbedError> {
        let span = tracing::info_span!("embed", minirag.embedder = %self.name(), minirag.texts = texts.len());
        self.embed_unspanned(texts).instrument(span).await
    }

    async fn embed_unspanned(&self, texts: &[String]) -> Result<Vec<Vec<f32>>, EmbedError> {
        match self {
            Self::Hashing { dims } if texts.len() <= 16 => {
                Ok(texts.iter().map(|t| hash_embed(t, *dims)).collect())
            }
            Self::Hashing { dims } => {
                // Large ingest batches: keep the CPU work off the async workers.
                let (texts, dims) = (texts.to_vec(), *dims);
                crate::obs::trace::spawn_blocking_in_span(move || {
                    texts.iter().map(|t| hash_embed(t, dims)).collect()
                })
                .await
                .map_err(|e| EmbedError::Remote(format!("embedding task failed: {e}")))
            }
            Self::OpenAi { client, cfg } => {
                let mut out = Vec::with_capacity(texts.len());
                for batch in texts.chunks(64) {
                    out.extend(openai_embed(client, cfg, batch).await?);
                }
                Ok(out)
            }
        }
    }
}

async fn openai_embed(
    client: &reqwest::Client,
    cfg: &OpenAiConfig,
    batch: &[String],
) -> Result<Vec<Vec<f32>>, EmbedError> {
    let url = format!("{}/embeddings", cfg.base_url.trim_end_matches('/'));
    let span = crate::obs::trace::client_span("POST", &url);
    let mut req = client
        .post(&url)
        .headers(span.in_scope(crate::obs::trace::outbound_headers))
        .json(&serde_json::json!({"model": cfg.embedding_model, "input": batch}));
    if let Some(key) = &cfg.api_key {
        req = req.bearer_auth(key);
    }
    let resp = req.send().instrument(span.clone()).await.map_err(|e| {
        crate::obs::trace::client_failed(&span, "transport");
        EmbedError::Remote(e.without_url().to_string())
    })?;
    crate::obs::trace::client_status(&span, resp.status().as_u16());
    if !resp.status().is_success() {
        return Err(EmbedError::Remote(format!(
            "HTTP {}",
            resp.status().as_u16()
        )));
    }
    let mut body: EmbeddingResponse = resp
        .json()
        .await
        .map_err(|e| EmbedError::Remote(format!("bad response: {}", e.without_url())))?;
    if body.data.len() != batch.len() {
        return Err(EmbedError::Remote(
            "response has the wrong number of vectors".into(),
        ));
    }
    body.data.sort_by_key(|d| d.index);
    Ok(body
        .data
        .into_iter()
        .map(|d| {
            let mut v = d.embedding;
            normalize(&mut v);
            v
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cos(a: &[f32], b: &[f32]) -> f32 {
        a.iter().zip(b).map(|(x, y)| x * y).sum()
    }

    #[test]
    fn similar_texts_are_closer() {
        let q = hash_embed("refund policy for annual plans", 256);
        let good = hash_embed(
            "Our refund policy: annual plans are refunded pro rata.",
            256,
        );
        let bad = hash_embed("The cafeteria serves lunch at noon every weekday.", 256);
        assert!(cos(&q, &good) > cos(&q, &bad) + 0.2);
        assert!((cos(&good, &good) - 1.0).abs() < 1e-4);
        assert!(hash_embed("", 64).iter().all(|x| *x == 0.0));
    }
}
