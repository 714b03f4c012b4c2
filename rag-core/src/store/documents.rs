//! Sources and chunks: the SQL for ingest, listing, deletion and retrieval candidates.
//! Every query takes the workspace's `seq`, so no caller can reach another workspace.

use rusqlite::{Connection, OptionalExtension, params, params_from_iter};
use serde::Serialize;

use super::StoreError;
use crate::ingest::PreparedDocument;
use crate::tenancy::{new_id, now};

/// The token indexed with each chunk that scopes FTS matches to one workspace.
pub fn ws_token(ws_seq: i64) -> String {
    format!("w{ws_seq}")
}

#[derive(Debug, Clone, Serialize)]
pub struct SourceInfo {
    pub source_id: String,
    pub kind: String,
    pub title: String,
    pub uri: Option<String>,
    pub media_type: String,
    pub bytes: i64,
    pub chunks: i64,
    pub metadata: serde_json::Value,
    pub created_at: String,
    /// The uploading user's id; null for sources stored before it was recorded, and for
    /// `rag-core ingest`.
    pub ingested_by: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct ChunkInfo {
    pub chunk_index: i64,
    pub section: Option<String>,
    pub text: String,
}

/// What happened to one document of an ingest request.
#[derive(Debug)]
pub enum StoredOutcome {
    Ingested {
        source_id: String,
        chunks: usize,
        chunk_ids: Vec<i64>,
    },
    Skipped {
        source_id: String,
        chunks: usize,
    },
}

#[derive(Debug, thiserror::Error)]
pub enum IngestStoreError {
    #[error("storage quota exceeded: {needed} chunks needed, {remaining} of {limit} remain")]
    Quota {
        limit: i64,
        remaining: i64,
        needed: i64,
    },
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl From<rusqlite::Error> for IngestStoreError {
    fn from(e: rusqlite::Error) -> Self {
        Self::Store(StoreError::Sqlite(e))
    }
}

/// Stores documents with their vectors in one transaction: all or nothing. Duplicates
/// (same content hash in this workspace, also within the batch) are skipped.
/// `ingested_by` is the uploading user's id (None for `rag-core ingest`), which is what
/// lets a user's documents be found when their data is deleted.
pub fn insert_documents(
    conn: &mut Connection,
    ws_seq: i64,
    docs: &[PreparedDocument],
    vectors: &[Vec<Vec<u8>>],
    embedder: &str,
    ingested_by: Option<&str>,
) -> Result<Vec<StoredOutcome>, IngestStoreError> {
    let tx = conn.transaction()?;
    let (limit, count): (i64, i64) = tx.query_row(
        "SELECT chunk_limit, chunk_count FROM workspaces WHERE seq = ?1",
        [ws_seq],
        |r| Ok((r.get(0)?, r.get(1)?)),
    )?;
    let wstok = ws_token(ws_seq);
    let mut outcomes = Vec::with_capacity(docs.len());
    let mut added: i64 = 0;
    {
        let mut find_dup = tx.prepare_cached(
            "SELECT id, chunk_count FROM sources WHERE ws = ?1 AND content_hash = ?2",
        )?;
        let mut insert_source = tx.prepare_cached(
            "INSERT INTO sources (id, ws, kind, title, uri, media_type, content_hash, bytes, chunk_count, metadata, created_at, ingested_by) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)",
        )?;
        let mut insert_chunk = tx.prepare_cached(
            "INSERT INTO chunks (source_seq, ws, chunk_index, section, body, wstok, embedder, embedding) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
        )?;
        let created = now();
        for (doc, vecs) in docs.iter().zip(vectors) {
            let dup: Option<(String, i64)> = find_dup
                .query_row(params![ws_seq, doc.content_hash], |r| {
                    Ok((r.get(0)?, r.get(1)?))
                })
                .optional()?;
            if let Some((source_id, chunks)) = dup {
                outcomes.push(StoredOutcome::Skipped {
                    source_id,
                    chunks: chunks as usize,
                });
                continue;
            }
            let needed = doc.chunks.len() as i64;
            if count + added + needed > limit {
                return Err(IngestStoreError::Quota {
                    limit,
                    remaining: (limit - count - added).max(0),
                    needed,
                });
            }
            let source_id = new_id("src");
            insert_source.execute(params![
                source_id,
                ws_seq,
                doc.kind,
                doc.title,
                doc.uri,
                doc.media_type,
                doc.content_hash,
                doc.bytes as i64,
                needed,
                doc.metadata.to_string(),
                created,
                ingested_by
            ])?;
            let source_seq = tx.last_insert_rowid();
            let mut chunk_ids = Vec::with_capacity(doc.chunks.len());
            for (c, v) in doc.chunks.iter().zip(vecs) {
                insert_chunk.execute(params![
                    source_seq,
                    ws_seq,
                    c.index as i64,
                    c.section,
                    c.text,
                    wstok,
                    embedder,
                    v
                ])?;
                chunk_ids.push(tx.last_insert_rowid());
            }
            added += needed;
            outcomes.push(StoredOutcome::Ingested {
                source_id,
                chunks: doc.chunks.len(),
                chunk_ids,
            });
        }
    }
    tx.execute(
        "UPDATE workspaces SET chunk_count = chunk_count + ?1 WHERE seq = ?2",
        params![added, ws_seq],
    )?;
    tx.commit()?;
    Ok(outcomes)
}

fn source_from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<SourceInfo> {
    let metadata: String = r.get(7)?;
    Ok(SourceInfo {
        source_id: r.get(0)?,
        kind: r.get(1)?,
        title: r.get(2)?,
        uri: r.get(3)?,
        media_type: r.get(4)?,
        bytes: r.get(5)?,
        chunks: r.get(6)?,
        metadata: serde_json::from_str(&metadata).unwrap_or(serde_json::Value::Null),
        created_at: r.get(8)?,
        ingested_by: r.get(9)?,
    })
}

const SOURCE_COLUMNS: &str =
    "id, kind, title, uri, media_type, bytes, chunk_count, metadata, created_at, ingested_by";

pub fn list_sources(
    conn: &Connection,
    ws_seq: i64,
    limit: i64,
    offset: i64,
) -> Result<(Vec<SourceInfo>, i64), StoreError> {
    let mut stmt = conn.prepare_cached(&format!(
        "SELECT {SOURCE_COLUMNS} FROM sources WHERE ws = ?1 ORDER BY seq LIMIT ?2 OFFSET ?3"
    ))?;
    let rows = stmt
        .query_map(params![ws_seq, limit, offset], source_from_row)?
        .collect::<Result<Vec<_>, _>>()?;
    let total: i64 = conn.query_row(
        "SELECT COUNT(*) FROM sources WHERE ws = ?1",
        [ws_seq],
        |r| r.get(0),
    )?;
    Ok((rows, total))
}

pub fn get_source(
    conn: &Connection,
    ws_seq: i64,
    source_id: &str,
) -> Result<Option<SourceInfo>, StoreError> {
    Ok(conn
        .query_row(
            &format!("SELECT {SOURCE_COLUMNS} FROM sources WHERE ws = ?1 AND id = ?2"),
            params![ws_seq, source_id],
            source_from_row,
        )
        .optional()?)
}

pub fn source_chunks(
    conn: &Connection,
    ws_seq: i64,
    source_id: &str,
    limit: i64,
    offset: i64,
) -> Result<Option<Vec<ChunkInfo>>, StoreError> {
    let seq: Option<i64> = conn
        .query_row(
            "SELECT seq FROM sources WHERE ws = ?1 AND id = ?2",
            params![ws_seq, source_id],
            |r| r.get(0),
        )
        .optional()?;
    let Some(seq) = seq else { return Ok(None) };
    let mut stmt = conn.prepare_cached(
        "SELECT chunk_index, section, body FROM chunks WHERE source_seq = ?1 ORDER BY chunk_index LIMIT ?2 OFFSET ?3",
    )?;
    let rows = stmt
        .query_map(params![seq, limit, offset], |r| {
            Ok(ChunkInfo {
                chunk_index: r.get(0)?,
                section: r.get(1)?,
                text: r.get(2)?,
            })
        })?
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Some(rows))
}

#[derive(Debug, Default)]
pub struct Deleted {
    pub source_ids: Vec<String>,
    /// Row ids of the removed chunks, to drop from the vector index.
    pub chunk_ids: Vec<i64>,
    pub not_found: Vec<String>,
    /// What the audit trail records of each removed source (never its text).
    pub removed: Vec<RemovedSource>,
}

#[derive(Debug, Clone, Serialize)]
pub struct RemovedSource {
    pub source_id: String,
    pub title: String,
    pub kind: String,
    pub chunks: i64,
}

/// Deletes sources of one workspace in one transaction.
pub fn delete_sources(
    conn: &mut Connection,
    ws_seq: i64,
    source_ids: &[String],
) -> Result<Deleted, StoreError> {
    let tx = conn.transaction()?;
    let d = delete_sources_in(&tx, ws_seq, source_ids)?;
    tx.commit()?;
    Ok(d)
}

/// [`delete_sources`] inside the caller's transaction, so an audit record can commit with
/// it. The FTS rows go with the chunks (trigger `chunks_ad`), with FTS5 `secure-delete`
/// on for the transaction: the deleted rows' terms and positions leave the index
/// segments at once instead of lingering until a merge, so the text cannot be rebuilt
/// from the index. It costs ~0.4 ms per chunk, hence only here (dedupe leaves it off:
/// a duplicate's terms stay in the index with the chunk that is kept anyway).
pub fn delete_sources_in(
    tx: &Connection,
    ws_seq: i64,
    source_ids: &[String],
) -> Result<Deleted, StoreError> {
    set_fts_secure_delete(tx, true)?;
    let mut removed = Vec::new();
    let mut deleted = Vec::new();
    let mut not_found = Vec::new();
    let mut chunk_ids = Vec::new();
    let mut removed_chunks: i64 = 0;
    for id in source_ids {
        let row: Option<(i64, String, String)> = tx
            .query_row(
                "SELECT seq, title, kind FROM sources WHERE ws = ?1 AND id = ?2",
                params![ws_seq, id],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
            )
            .optional()?;
        let Some((seq, title, kind)) = row else {
            not_found.push(id.clone());
            continue;
        };
        let before = removed_chunks;
        {
            let mut stmt = tx.prepare_cached("SELECT id FROM chunks WHERE source_seq = ?1")?;
            let ids = stmt.query_map([seq], |r| r.get::<_, i64>(0))?;
            for cid in ids {
                chunk_ids.push(cid?);
                removed_chunks += 1;
            }
        }
        tx.execute("DELETE FROM chunks WHERE source_seq = ?1", [seq])?;
        tx.execute("DELETE FROM sources WHERE seq = ?1", [seq])?;
        deleted.push(id.clone());
        removed.push(RemovedSource {
            source_id: id.clone(),
            title,
            kind,
            chunks: removed_chunks - before,
        });
    }
    tx.execute(
        "UPDATE workspaces SET chunk_count = MAX(0, chunk_count - ?1) WHERE seq = ?2",
        params![removed_chunks, ws_seq],
    )?;
    set_fts_secure_delete(tx, false)?;
    Ok(Deleted {
        source_ids: deleted,
        chunk_ids,
        not_found,
        removed,
    })
}

/// FTS5's `secure-delete` option; a config write, so it commits or rolls back with the
/// caller's transaction.
fn set_fts_secure_delete(tx: &Connection, on: bool) -> Result<(), StoreError> {
    tx.execute(
        "INSERT INTO chunks_fts(chunks_fts, rank) VALUES ('secure-delete', ?1)",
        [i64::from(on)],
    )?;
    Ok(())
}

/// Source seqs of the given ids in this workspace; Err lists the unknown ones.
pub fn resolve_sources(
    conn: &Connection,
    ws_seq: i64,
    ids: &[String],
) -> Result<Result<Vec<i64>, Vec<String>>, StoreError> {
    let mut seqs = Vec::new();
    let mut unknown = Vec::new();
    let mut stmt = conn.prepare_cached("SELECT seq FROM sources WHERE ws = ?1 AND id = ?2")?;
    for id in ids {
        match stmt
            .query_row(params![ws_seq, id], |r| r.get::<_, i64>(0))
            .optional()?
        {
            Some(s) => seqs.push(s),
            None => unknown.push(id.clone()),
        }
    }
    Ok(if unknown.is_empty() {
        Ok(seqs)
    } else {
        Err(unknown)
    })
}

/// BM25 candidates (chunk id, rank position by bm25), best first.
pub fn fts_candidates(
    conn: &Connection,
    match_expr: &str,
    source_seqs: Option<&[i64]>,
    limit: usize,
) -> Result<Vec<i64>, StoreError> {
    let ids = match source_seqs {
        None => {
            let mut stmt = conn.prepare_cached(
                "SELECT rowid FROM chunks_fts WHERE chunks_fts MATCH ?1 ORDER BY bm25(chunks_fts, 1.0, 0.0) LIMIT ?2",
            )?;
            stmt.query_map(params![match_expr, limit as i64], |r| r.get(0))?
                .collect::<Result<Vec<i64>, _>>()?
        }
        Some(seqs) => {
            let placeholders = vec!["?"; seqs.len()].join(",");
            let sql = format!(
                "SELECT f.rowid FROM chunks_fts f JOIN chunks c ON c.id = f.rowid \
                 WHERE chunks_fts MATCH ? AND c.source_seq IN ({placeholders}) \
                 ORDER BY bm25(chunks_fts, 1.0, 0.0) LIMIT {limit}"
            );
            let mut stmt = conn.prepare(&sql)?;
            let mut values: Vec<rusqlite::types::Value> = vec![match_expr.to_string().into()];
            values.extend(seqs.iter().map(|s| rusqlite::types::Value::Integer(*s)));
            stmt.query_map(params_from_iter(values), |r| r.get(0))?
                .collect::<Result<Vec<i64>, _>>()?
        }
    };
    Ok(ids)
}

/// Rows matching `match_expr`, counting at most `cap` (stops early on common words).
pub fn count_matches_capped(
    conn: &Connection,
    match_expr: &str,
    cap: usize,
) -> Result<usize, StoreError> {
    let mut stmt = conn.prepare_cached(
        "SELECT count(*) FROM (SELECT rowid FROM chunks_fts WHERE chunks_fts MATCH ?1 LIMIT ?2)",
    )?;
    let n: i64 = stmt.query_row(params![match_expr, cap as i64], |r| r.get(0))?;
    Ok(n.max(0) as usize)
}

/// Chunk ids belonging to the given sources (for filtering vector candidates).
pub fn chunk_ids_of_sources(
    conn: &Connection,
    source_seqs: &[i64],
) -> Result<Vec<i64>, StoreError> {
    let mut out = Vec::new();
    let mut stmt = conn.prepare_cached("SELECT id FROM chunks WHERE source_seq = ?1")?;
    for s in source_seqs {
        for id in stmt.query_map([s], |r| r.get::<_, i64>(0))? {
            out.push(id?);
        }
    }
    Ok(out)
}

/// Calls `f(chunk id, vector)` for every chunk of the workspace made by `embedder`.
pub fn for_each_vector(
    conn: &Connection,
    ws_seq: i64,
    embedder: &str,
    mut f: impl FnMut(i64, &[u8]),
) -> Result<(), StoreError> {
    let mut stmt = conn.prepare_cached(
        "SELECT id, embedding FROM chunks WHERE ws = ?1 AND embedder = ?2 ORDER BY id",
    )?;
    let mut rows = stmt.query(params![ws_seq, embedder])?;
    while let Some(r) = rows.next()? {
        let id: i64 = r.get(0)?;
        let blob = r
            .get_ref(1)?
            .as_blob()
            .map_err(|e| StoreError::Sqlite(e.into()))?;
        f(id, blob);
    }
    Ok(())
}

pub fn count_vectors(conn: &Connection, ws_seq: i64) -> Result<usize, StoreError> {
    let n: i64 = conn.query_row(
        "SELECT chunk_count FROM workspaces WHERE seq = ?1",
        [ws_seq],
        |r| r.get(0),
    )?;
    Ok(n.max(0) as usize)
}

#[derive(Debug, Clone)]
pub struct ChunkRow {
    pub id: i64,
    pub source_id: String,
    pub title: String,
    pub uri: Option<String>,
    pub chunk_index: i64,
    pub section: Option<String>,
    pub text: String,
}

/// Loads chunk rows by id, restricted to the workspace (defence in depth).
pub fn chunk_rows(
    conn: &Connection,
    ws_seq: i64,
    ids: &[i64],
) -> Result<Vec<ChunkRow>, StoreError> {
    let mut stmt = conn.prepare_cached(
        "SELECT c.id, s.id, s.title, s.uri, c.chunk_index, c.section, c.body \
         FROM chunks c JOIN sources s ON s.seq = c.source_seq WHERE c.id = ?1 AND c.ws = ?2",
    )?;
    let mut out = Vec::with_capacity(ids.len());
    for id in ids {
        if let Some(row) = stmt
            .query_row(params![id, ws_seq], |r| {
                Ok(ChunkRow {
                    id: r.get(0)?,
                    source_id: r.get(1)?,
                    title: r.get(2)?,
                    uri: r.get(3)?,
                    chunk_index: r.get(4)?,
                    section: r.get(5)?,
                    text: r.get(6)?,
                })
            })
            .optional()?
        {
            out.push(row);
        }
    }
    Ok(out)
}

pub fn total_chunks(conn: &Connection) -> Result<i64, StoreError> {
    Ok(conn.query_row(
        "SELECT COALESCE(SUM(chunk_count), 0) FROM workspaces",
        [],
        |r| r.get(0),
    )?)
}
