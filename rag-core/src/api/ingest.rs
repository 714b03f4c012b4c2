//! `POST /api/v1/ingest/{text,files,urls}`.
//!
//! Validation happens before anything is stored: a request with one bad document is
//! rejected whole (4xx) and leaves the store unchanged. Only remote failures of URL
//! fetches are reported per document (`status: failed`) beside the ones that worked.

use std::time::Instant;

use axum::extract::{Multipart, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::{Value, json};

use super::error::ApiError;
use super::extract::{ApiJson, Auth, Ctx};
use super::state::AppState;
use crate::ingest::fetch::{FetchError, check_syntax};
use crate::ingest::{DocumentMeta, Format, ParseError, PreparedDocument, parse::parse, prepare};
use crate::jobs::JobKind;
use crate::obs::metrics::{DocumentLabels, QuotaLabels, SourceLabels};
use crate::retrieval::vectors::{dequantize_to_blob, quantize};
use crate::store::documents::{IngestStoreError, StoredOutcome, insert_documents};
use crate::tenancy::{Principal, Scope};

/// One entry of the response, in request order.
pub(crate) enum Slot {
    Ready(PreparedDocument),
    Failed {
        title: String,
        uri: Option<String>,
        code: &'static str,
        message: String,
    },
}

fn parse_error(e: &ParseError, which: &str) -> ApiError {
    let msg = format!("{which}: {e}");
    match e {
        ParseError::Unsupported(_) => ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            msg,
        ),
        ParseError::InvalidUtf8(_) => ApiError::unprocessable("invalid_utf8", msg),
        ParseError::Empty => ApiError::unprocessable("empty_document", msg),
        ParseError::Pdf(_) => ApiError::unprocessable("invalid_pdf", msg),
    }
}

fn check_count(state: &AppState, n: usize) -> Result<(), ApiError> {
    if n == 0 {
        return Err(ApiError::unprocessable(
            "empty_request",
            "no documents in the request",
        ));
    }
    let max = state.cfg.limits.max_documents_per_request;
    if n > max {
        return Err(ApiError::too_large(format!(
            "{n} documents in one request; the limit is {max}"
        ))
        .with("limit", max));
    }
    Ok(())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TextDocument {
    #[serde(default)]
    title: Option<String>,
    text: String,
    #[serde(default)]
    metadata: Option<Value>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IngestText {
    documents: Vec<TextDocument>,
}

pub async fn ingest_text(
    State(state): State<AppState>,
    Ctx(ctx): Ctx,
    auth: Auth,
    headers: HeaderMap,
    ApiJson(body): ApiJson<IngestText>,
) -> Result<Response, ApiError> {
    let p = auth.require(Scope::Write)?.clone();
    crate::billing::guard(&p)?;
    check_count(&state, body.documents.len())?;
    let max = state.cfg.limits.max_document_bytes;
    let mut inputs = Vec::with_capacity(body.documents.len());
    for (i, d) in body.documents.into_iter().enumerate() {
        let title = d
            .title
            .filter(|t| !t.trim().is_empty())
            .unwrap_or_else(|| format!("Untitled document {}", i + 1));
        if d.text.len() > max {
            return Err(ApiError::too_large(format!(
                "document {} ({title}) is {} bytes; the limit is {max}",
                i + 1,
                d.text.len()
            )));
        }
        let metadata = match d.metadata {
            None | Some(Value::Null) => json!({}),
            Some(Value::Object(m)) => Value::Object(m),
            Some(_) => {
                return Err(ApiError::unprocessable(
                    "invalid_request",
                    format!("document {}: metadata must be an object", i + 1),
                ));
            }
        };
        inputs.push((title, d.text, metadata));
    }
    if state.jobs.enabled() {
        let documents: Vec<Value> = inputs
            .into_iter()
            .map(|(title, text, metadata)| json!({"title": title, "text": text, "metadata": metadata}))
            .collect();
        return crate::jobs::api::accepted(
            &state,
            &p,
            &ctx,
            &headers,
            JobKind::IngestText,
            json!({"documents": documents, "ingested_by": p.user_id}),
        )
        .await;
    }
    let slots = text_slots(&state, inputs, 0).await?;
    store_and_respond(&state, &p, &ctx.request_id, "text", slots)
        .await
        .map(IntoResponse::into_response)
}

/// Parses and chunks JSON text documents; `first` numbers them in messages.
pub(crate) async fn text_slots(
    state: &AppState,
    inputs: Vec<(String, String, Value)>,
    first: usize,
) -> Result<Vec<Slot>, ApiError> {
    let chunker = state.chunker;
    let started = Instant::now();
    let slots = crate::obs::trace::spawn_blocking_in_span(move || {
        inputs
            .into_iter()
            .enumerate()
            .map(|(i, (title, text, metadata))| {
                let i = i + first;
                let bytes = text.len();
                let parsed = parse(Format::Text, text.as_bytes())
                    .map_err(|e| parse_error(&e, &format!("document {} ({title})", i + 1)))?;
                prepare(
                    DocumentMeta {
                        kind: "text",
                        title,
                        uri: None,
                        metadata,
                    },
                    Format::Text,
                    parsed,
                    bytes,
                    &chunker,
                )
                .map(Slot::Ready)
                .map_err(|e| parse_error(&e, &format!("document {}", i + 1)))
            })
            .collect::<Result<Vec<_>, ApiError>>()
    })
    .await
    .map_err(|_| ApiError::internal())??;
    state.metrics.observe_stage("parse", started);
    Ok(slots)
}

pub async fn ingest_files(
    State(state): State<AppState>,
    Ctx(ctx): Ctx,
    auth: Auth,
    headers: HeaderMap,
    mut multipart: Multipart,
) -> Result<Response, ApiError> {
    let p = auth.require(Scope::Write)?.clone();
    // Before the upload is read: a blocked organization should not spend our bandwidth.
    crate::billing::guard(&p)?;
    let max_bytes = state.cfg.limits.max_document_bytes;
    let max_files = state.cfg.limits.max_documents_per_request;
    let mut files: Vec<(String, Format, Vec<u8>)> = Vec::new();
    let multipart_error = |e: axum::extract::multipart::MultipartError| {
        if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::too_large("request body is too large")
        } else {
            ApiError::bad_request(
                "malformed_multipart",
                format!("malformed multipart body: {}", e.body_text()),
            )
        }
    };
    while let Some(mut field) = multipart.next_field().await.map_err(multipart_error)? {
        let Some(name) = field.file_name().map(str::to_owned) else {
            continue; // plain form fields carry nothing we need
        };
        if files.len() >= max_files {
            return Err(
                ApiError::too_large(format!("more than {max_files} files in one request"))
                    .with("limit", max_files),
            );
        }
        let format = match Format::from_file_name(&name) {
            Ok(f) => f,
            Err(e) => match field.content_type().map(Format::from_content_type) {
                Some(Ok(f)) if field.content_type() != Some("application/octet-stream") => f,
                _ => return Err(parse_error(&e, &format!("file {name:?}"))),
            },
        };
        let mut data = Vec::new();
        while let Some(chunk) = field.chunk().await.map_err(multipart_error)? {
            if data.len() + chunk.len() > max_bytes {
                return Err(ApiError::too_large(format!(
                    "file {name:?} is larger than {max_bytes} bytes"
                ))
                .with("limit", max_bytes));
            }
            data.extend_from_slice(&chunk);
        }
        files.push((name, format, data));
    }
    check_count(&state, files.len())?;
    if state.jobs.enabled() {
        // The job stores the raw bytes; parsing here first keeps the contract that a
        // request with one bad file is refused whole, before anything is queued.
        let documents: Vec<Value> = files
            .iter()
            .map(|(name, format, data)| {
                json!({"name": name, "media_type": format.media_type(), "data_hex": hex::encode(data)})
            })
            .collect();
        file_slots(&state, files).await?;
        return crate::jobs::api::accepted(
            &state,
            &p,
            &ctx,
            &headers,
            JobKind::IngestFiles,
            json!({"documents": documents, "ingested_by": p.user_id}),
        )
        .await;
    }
    let slots = file_slots(&state, files).await?;
    store_and_respond(&state, &p, &ctx.request_id, "file", slots)
        .await
        .map(IntoResponse::into_response)
}

/// Parses and chunks uploaded files (name, format, bytes).
pub(crate) async fn file_slots(
    state: &AppState,
    files: Vec<(String, Format, Vec<u8>)>,
) -> Result<Vec<Slot>, ApiError> {
    let chunker = state.chunker;
    let started = Instant::now();
    let slots = crate::obs::trace::spawn_blocking_in_span(move || {
        files
            .into_iter()
            .map(|(name, format, data)| {
                let which = format!("file {name:?}");
                let parsed = parse(format, &data).map_err(|e| parse_error(&e, &which))?;
                let title = parsed.title.clone().unwrap_or_else(|| name.clone());
                prepare(
                    DocumentMeta {
                        kind: "file",
                        title,
                        uri: Some(name),
                        metadata: json!({}),
                    },
                    format,
                    parsed,
                    data.len(),
                    &chunker,
                )
                .map(Slot::Ready)
                .map_err(|e| parse_error(&e, &which))
            })
            .collect::<Result<Vec<_>, ApiError>>()
    })
    .await
    .map_err(|_| ApiError::unprocessable("invalid_document", "a document could not be parsed"))??;
    state.metrics.observe_stage("parse", started);
    Ok(slots)
}

#[derive(Deserialize)]
#[serde(untagged)]
pub enum UrlItem {
    Plain(String),
    WithTitle { url: String, title: Option<String> },
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IngestUrls {
    urls: Vec<UrlItem>,
}

pub async fn ingest_urls(
    State(state): State<AppState>,
    Ctx(ctx): Ctx,
    auth: Auth,
    headers: HeaderMap,
    ApiJson(body): ApiJson<IngestUrls>,
) -> Result<Response, ApiError> {
    let p = auth.require(Scope::Write)?.clone();
    crate::billing::guard(&p)?;
    check_count(&state, body.urls.len())?;
    let items: Vec<(String, Option<String>)> = body
        .urls
        .into_iter()
        .map(|u| match u {
            UrlItem::Plain(url) => (url.trim().to_string(), None),
            UrlItem::WithTitle { url, title } => (url.trim().to_string(), title),
        })
        .collect();
    for (url, _) in &items {
        check_syntax(url)
            .map_err(|e| ApiError::bad_request("invalid_url", format!("{url:?}: {e}")))?;
    }
    if state.jobs.enabled() {
        let documents: Vec<Value> = items
            .iter()
            .map(|(url, title)| json!({"url": url, "title": title}))
            .collect();
        return crate::jobs::api::accepted(
            &state,
            &p,
            &ctx,
            &headers,
            JobKind::IngestUrls,
            json!({"documents": documents, "ingested_by": p.user_id}),
        )
        .await;
    }
    let slots = url_slots(&state, items).await;
    store_and_respond(&state, &p, &ctx.request_id, "url", slots)
        .await
        .map(IntoResponse::into_response)
}

/// Fetches, parses and chunks URLs; remote failures become `Failed` slots.
pub(crate) async fn url_slots(state: &AppState, items: Vec<(String, Option<String>)>) -> Vec<Slot> {
    let mut slots = Vec::with_capacity(items.len());
    for (url, title) in items {
        let started = Instant::now();
        let fetched = state.fetcher.fetch(&url).await;
        let slot = match fetched {
            Err(e) => {
                if !matches!(
                    e,
                    FetchError::Forbidden(_) | FetchError::InvalidUrl(_) | FetchError::Scheme
                ) {
                    state.metrics.external_error("url_fetch", "get");
                }
                tracing::warn!(event = "ingest.url.failed", url = %url, error = %e, "URL could not be fetched");
                Slot::Failed {
                    title: title.unwrap_or_else(|| url.clone()),
                    uri: Some(url),
                    code: e.code(),
                    message: e.to_string(),
                }
            }
            Ok(page) => {
                let chunker = state.chunker;
                let uri = page.final_url.clone();
                let given_title = title.clone();
                let result = crate::obs::trace::spawn_blocking_in_span(move || {
                    let format = Format::from_content_type(&page.content_type)?;
                    let parsed = parse(format, &page.body)?;
                    let title = given_title
                        .or(parsed.title.clone())
                        .unwrap_or_else(|| page.final_url.clone());
                    prepare(
                        DocumentMeta {
                            kind: "url",
                            title,
                            uri: Some(page.final_url),
                            metadata: json!({}),
                        },
                        format,
                        parsed,
                        page.body.len(),
                        &chunker,
                    )
                })
                .await
                .unwrap_or_else(|_| Err(ParseError::Pdf("malformed document".into())));
                match result {
                    Ok(doc) => Slot::Ready(doc),
                    Err(e) => {
                        tracing::warn!(event = "ingest.url.failed", url = %uri, error = %e, "fetched page could not be parsed");
                        Slot::Failed {
                            title: title.unwrap_or_else(|| uri.clone()),
                            uri: Some(uri),
                            code: "unparseable",
                            message: e.to_string(),
                        }
                    }
                }
            }
        };
        state.metrics.observe_stage("parse", started);
        slots.push(slot);
    }
    slots
}

async fn store_and_respond(
    state: &AppState,
    p: &Principal,
    request_id: &str,
    source: &'static str,
    slots: Vec<Slot>,
) -> Result<axum::Json<Value>, ApiError> {
    let results = store_slots(
        state,
        p.workspace_seq,
        &p.workspace_id,
        Some(&p.user_id),
        source,
        slots,
    )
    .await?;
    Ok(axum::Json(
        json!({"documents": results, "request_id": request_id}),
    ))
}

/// Embeds, stores in one transaction, updates the vector index, counts and logs; returns
/// one result per slot, in order. `ingested_by` is the uploading user, if known.
pub(crate) async fn store_slots(
    state: &AppState,
    ws: i64,
    workspace_id: &str,
    ingested_by: Option<&str>,
    source: &'static str,
    slots: Vec<Slot>,
) -> Result<Vec<Value>, ApiError> {
    let started = Instant::now();
    let docs: Vec<&PreparedDocument> = slots
        .iter()
        .filter_map(|s| match s {
            Slot::Ready(d) => Some(d),
            _ => None,
        })
        .collect();
    let texts: Vec<String> = docs
        .iter()
        .flat_map(|d| d.chunks.iter().map(|c| c.text.clone()))
        .collect();
    state
        .metrics
        .embedding_queue_depth
        .inc_by(texts.len() as i64);
    let embedded = state.embedder.embed(&texts).await;
    state
        .metrics
        .embedding_queue_depth
        .dec_by(texts.len() as i64);
    let embedded = embedded.map_err(|e| {
        state.metrics.external_error("openai", "embeddings");
        tracing::error!(event = "external.request_failed", service = "openai", operation = "embeddings", error = %e, "embedding failed");
        ApiError::new(StatusCode::BAD_GATEWAY, "embedding_failed", "the embedding service failed; nothing was stored")
    })?;
    state.metrics.observe_stage("embed", started);
    let quantized: Vec<Vec<i8>> = embedded.iter().map(|v| quantize(v)).collect();
    let mut per_doc_blobs = Vec::with_capacity(docs.len());
    let mut offset = 0;
    for d in &docs {
        let n = d.chunks.len();
        per_doc_blobs.push(
            quantized[offset..offset + n]
                .iter()
                .map(|q| dequantize_to_blob(q))
                .collect::<Vec<_>>(),
        );
        offset += n;
    }

    // The store needs owned documents; keep the failed slots' positions for the response.
    let mut order = Vec::with_capacity(slots.len());
    let mut owned = Vec::with_capacity(docs.len());
    for s in slots {
        match s {
            Slot::Ready(d) => {
                order.push(None);
                owned.push(d);
            }
            Slot::Failed {
                title,
                uri,
                code,
                message,
            } => order.push(Some((title, uri, code, message))),
        }
    }
    let embedder_name = state.embedder.name();
    let uploader = ingested_by.map(str::to_owned);
    let write_started = Instant::now();
    let (owned, outcomes) = state
        .store
        .write(move |conn| {
            let r = insert_documents(
                conn,
                ws,
                &owned,
                &per_doc_blobs,
                &embedder_name,
                uploader.as_deref(),
            );
            Ok((owned, r))
        })
        .await?;
    state.metrics.observe_stage("index_write", write_started);
    let outcomes = match outcomes {
        Ok(o) => o,
        Err(IngestStoreError::Quota {
            limit,
            remaining,
            needed,
        }) => {
            state
                .metrics
                .quota_exceeded
                .get_or_create(&QuotaLabels {
                    workspace_id: workspace_id.to_string(),
                    metric: "chunks",
                })
                .inc();
            tracing::warn!(
                event = "quota.exceeded",
                metric = "chunks",
                limit,
                remaining,
                needed,
                "storage quota exceeded; nothing stored"
            );
            return Err(ApiError::new(
                StatusCode::FORBIDDEN,
                "quota_exceeded",
                format!("storage quota exceeded: this request needs {needed} chunks, {remaining} of {limit} remain"),
            )
            .with("metric", "chunks")
            .with("limit", limit)
            .with("remaining", remaining));
        }
        Err(IngestStoreError::Store(e)) => return Err(e.into()),
    };

    // Keep the in-memory vector index current, then count and log.
    let mut new_vectors = Vec::new();
    let mut qi = 0;
    for (doc, outcome) in owned.iter().zip(&outcomes) {
        if let StoredOutcome::Ingested { chunk_ids, .. } = outcome {
            for id in chunk_ids {
                new_vectors.push((*id, quantized[qi].clone()));
                qi += 1;
            }
        } else {
            qi += doc.chunks.len();
        }
    }
    let added = new_vectors.len();
    state.searcher.add_vectors(ws, new_vectors).await;
    state.metrics.chunk_records.inc_by(added as i64);
    state
        .metrics
        .ingest_processed_chunks
        .get_or_create(&SourceLabels { source })
        .inc_by(added as u64);

    let mut results = Vec::with_capacity(order.len());
    let mut it = owned.iter().zip(outcomes);
    for failed in order {
        match failed {
            Some((title, uri, code, message)) => {
                state
                    .metrics
                    .ingest_documents
                    .get_or_create(&DocumentLabels {
                        source,
                        outcome: "failed",
                    })
                    .inc();
                results.push(json!({"source_id": null, "title": title, "uri": uri, "status": "failed", "chunks": 0, "error": {"code": code, "message": message}}));
            }
            None => {
                let Some((doc, outcome)) = it.next() else {
                    break;
                };
                let (status, source_id, chunks) = match outcome {
                    StoredOutcome::Ingested {
                        source_id, chunks, ..
                    } => ("ingested", source_id, chunks),
                    StoredOutcome::Skipped { source_id, chunks } => ("skipped", source_id, chunks),
                };
                let outcome_label = if status == "ingested" {
                    "ingested"
                } else {
                    "skipped"
                };
                state
                    .metrics
                    .ingest_documents
                    .get_or_create(&DocumentLabels {
                        source,
                        outcome: outcome_label,
                    })
                    .inc();
                let event = match (source, status) {
                    ("url", "ingested") => "ingest.url.completed",
                    ("url", _) => "ingest.url.skipped",
                    ("text", "ingested") => "ingest.text.completed",
                    ("text", _) => "ingest.text.skipped",
                    (_, "ingested") => "ingest.file.completed",
                    _ => "ingest.file.skipped",
                };
                tracing::info!(event, source_id = %source_id, title = %doc.title, chunks, bytes = doc.bytes, "document {status}");
                results.push(json!({"source_id": source_id, "title": doc.title, "uri": doc.uri, "status": status, "chunks": chunks, "error": null}));
            }
        }
    }
    Ok(results)
}
