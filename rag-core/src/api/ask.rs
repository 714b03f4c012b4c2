//! `POST /api/v1/ask` and `GET /api/v1/search`.

use std::time::Instant;
use tracing::Instrument;

use axum::extract::State;
use serde::Deserialize;
use serde_json::{Value, json};

use super::error::ApiError;
use super::extract::{ApiJson, ApiQuery, Auth, Ctx};
use super::state::AppState;
use crate::answer::{NO_CONTEXT_ANSWER, citation_of, extractive, snippet};
use crate::retrieval::search::SearchError;
use crate::retrieval::{Hit, SearchParams};
use crate::tenancy::Scope;

const MAX_QUESTION_CHARS: usize = 4000;

fn check_query(q: &str, k: usize, max_k: usize) -> Result<(), ApiError> {
    if q.trim().is_empty() {
        return Err(ApiError::unprocessable(
            "invalid_request",
            "the question is empty",
        ));
    }
    if q.chars().count() > MAX_QUESTION_CHARS {
        return Err(ApiError::too_large(format!(
            "the question is longer than {MAX_QUESTION_CHARS} characters"
        )));
    }
    if k == 0 || k > max_k {
        return Err(ApiError::unprocessable(
            "invalid_request",
            format!("k must be between 1 and {max_k}"),
        ));
    }
    Ok(())
}

async fn run_search(
    state: &AppState,
    ws_seq: i64,
    query: String,
    k: usize,
    source_ids: Option<Vec<String>>,
) -> Result<Vec<Hit>, ApiError> {
    state
        .searcher
        .search(SearchParams { ws_seq, query, k, source_ids })
        .await
        .map_err(|e| match e {
            SearchError::UnknownSources(ids) => {
                ApiError::not_found(format!("unknown source ids in this workspace: {}", ids.join(", "))).with("source_ids", ids)
            }
            SearchError::Store(s) => s.into(),
            SearchError::Embed(e) => {
                state.metrics.external_error("openai", "embeddings");
                tracing::error!(event = "external.request_failed", service = "openai", operation = "embeddings", error = %e, "query embedding failed");
                ApiError::new(axum::http::StatusCode::BAD_GATEWAY, "embedding_failed", "the embedding service failed")
            }
        })
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AskRequest {
    question: String,
    #[serde(default)]
    k: Option<usize>,
    #[serde(default)]
    source_ids: Option<Vec<String>>,
}

pub async fn ask(
    State(state): State<AppState>,
    Ctx(ctx): Ctx,
    auth: Auth,
    ApiJson(req): ApiJson<AskRequest>,
) -> Result<axum::Json<Value>, ApiError> {
    let started = Instant::now();
    let p = auth.require(Scope::Read)?;
    let k = req.k.unwrap_or(4);
    check_query(&req.question, k, state.cfg.retrieval.max_k)?;
    if req
        .source_ids
        .as_ref()
        .is_some_and(|s| s.is_empty() || s.len() > 100)
    {
        return Err(ApiError::unprocessable(
            "invalid_request",
            "source_ids must hold 1 to 100 ids when given",
        ));
    }
    let hits = run_search(
        &state,
        p.workspace_seq,
        req.question.clone(),
        k,
        req.source_ids,
    )
    .await?;
    let relevant: Vec<Hit> = hits.into_iter().filter(|h| h.relevant).collect();
    let abstained = relevant.is_empty();
    let mut mode = "extractive";
    let answer = if abstained {
        NO_CONTEXT_ANSWER.to_string()
    } else if let Some(chat) = &state.chat {
        match chat
            .answer(&req.question, &relevant, &ctx.request_id)
            .instrument(tracing::info_span!(
                "answer_generation",
                minirag.mode = "generated"
            ))
            .await
        {
            Ok(a) => {
                mode = "generated";
                a
            }
            Err(e) => {
                state.metrics.external_error("openai", "chat");
                tracing::warn!(event = "external.request_failed", service = "openai", operation = "chat", error = %e, "chat failed; answering extractively");
                tracing::info_span!("answer_generation", minirag.mode = "extractive").in_scope(
                    || extractive::answer(&req.question, &relevant, state.cfg.answer.max_sentences),
                )
            }
        }
    } else {
        tracing::info_span!("answer_generation", minirag.mode = "extractive").in_scope(|| {
            extractive::answer(&req.question, &relevant, state.cfg.answer.max_sentences)
        })
    };
    let citations: Vec<_> = relevant.iter().map(citation_of).collect();
    let duration_ms = (started.elapsed().as_secs_f64() * 1e6).round() / 1e3;
    tracing::info!(
        event = "ask.completed",
        abstained,
        citations = citations.len(),
        mode,
        k,
        duration_ms,
        "question answered"
    );
    Ok(axum::Json(json!({
        "answer": answer,
        "citations": citations,
        "abstained": abstained,
        "mode": mode,
        "request_id": ctx.request_id,
    })))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SearchQuery {
    q: String,
    #[serde(default)]
    k: Option<usize>,
}

pub async fn search(
    State(state): State<AppState>,
    Ctx(ctx): Ctx,
    auth: Auth,
    ApiQuery(q): ApiQuery<SearchQuery>,
) -> Result<axum::Json<Value>, ApiError> {
    let p = auth.require(Scope::Read)?;
    let k = q.k.unwrap_or(10);
    check_query(&q.q, k, state.cfg.retrieval.max_k)?;
    let hits = run_search(&state, p.workspace_seq, q.q, k, None).await?;
    let results: Vec<Value> = hits
        .iter()
        .map(|h| {
            json!({
                "source_id": h.source_id, "title": h.title, "uri": h.uri, "chunk_index": h.chunk_index,
                "section": h.section, "score": h.score, "cosine": h.cosine, "bm25_rank": h.bm25_rank,
                "term_coverage": h.term_coverage, "relevant": h.relevant, "snippet": snippet(&h.text, 240),
            })
        })
        .collect();
    Ok(axum::Json(
        json!({"results": results, "request_id": ctx.request_id}),
    ))
}
