//! The audit trail: an append-only, hash-chained record of who changed what.
//!
//! Every record carries the SHA-256 of the record before it, so editing, reordering or
//! removing any record breaks the chain from that point on and [`verify`] names the first
//! broken record. The chain alone cannot notice that the newest records were cut off
//! together with nothing after them, so each append is also announced as an `audit.*` log
//! line carrying the record's `audit_seq` and `audit_hash`; those lines leave the machine
//! with the shipped logs, and `rag-core audit verify --expect-head SEQ:HASH` checks that a
//! head seen there is still present.
//!
//! Records are written on the caller's connection, inside the caller's transaction, so an
//! audited change and its record commit or roll back together. Appends are serialised by
//! the store's single writer connection, which is what keeps `seq` and `prev_hash` exact.

pub mod api;

use rusqlite::{Connection, OptionalExtension, params};
use serde::Serialize;
use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::store::StoreError;
use crate::tenancy::Principal;

/// Migration (v4): the audit table. UPDATE and DELETE are refused by triggers so that
/// honest code cannot rewrite history by accident; someone editing the file directly can
/// still drop the triggers, which is what the hash chain is for.
pub const SCHEMA: &str = r#"
CREATE TABLE audit_log (
    seq INTEGER PRIMARY KEY,
    id TEXT NOT NULL UNIQUE,
    at TEXT NOT NULL,
    organization_id TEXT,
    workspace_id TEXT,
    actor TEXT NOT NULL,
    actor_key_id TEXT,
    action TEXT NOT NULL,
    target TEXT,
    request_id TEXT,
    before TEXT,
    after TEXT,
    prev_hash TEXT NOT NULL,
    hash TEXT NOT NULL
);
CREATE INDEX audit_log_org ON audit_log(organization_id, seq);
CREATE INDEX audit_log_ws ON audit_log(workspace_id, seq);
CREATE TRIGGER audit_log_no_update BEFORE UPDATE ON audit_log
BEGIN SELECT RAISE(ABORT, 'audit_log is append-only'); END;
CREATE TRIGGER audit_log_no_delete BEFORE DELETE ON audit_log
BEGIN SELECT RAISE(ABORT, 'audit_log is append-only'); END;
"#;

/// `prev_hash` of the first record.
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// Who did it. Rendered as `user:<id>`, `system:<component>`, `stripe:webhook`,
/// `cli:<command>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Actor {
    pub name: String,
    pub key_id: Option<String>,
}

impl Actor {
    /// A caller authenticated by an API key.
    pub fn principal(p: &Principal) -> Self {
        Self {
            name: format!("user:{}", p.user_id),
            key_id: Some(p.key_id.clone()),
        }
    }
    /// rag-core itself (scheduler, retention, jobs): `system:<component>`.
    pub fn system(component: &str) -> Self {
        Self {
            name: format!("system:{component}"),
            key_id: None,
        }
    }
    /// An operator running a `rag-core` subcommand on the machine.
    pub fn cli(command: &str) -> Self {
        Self {
            name: format!("cli:{command}"),
            key_id: None,
        }
    }
    /// A verified webhook from an external service (`stripe:webhook`).
    pub fn external(service: &str) -> Self {
        Self {
            name: format!("{service}:webhook"),
            key_id: None,
        }
    }
}

/// Who is acting and for which request: the part of an [`Event`] a handler knows up front.
#[derive(Debug, Clone)]
pub struct Origin {
    pub actor: Actor,
    pub request_id: Option<String>,
}

impl Origin {
    pub fn new(actor: Actor, request_id: Option<&str>) -> Self {
        Self {
            actor,
            request_id: request_id.map(str::to_owned),
        }
    }
    /// An API caller serving `request_id`.
    pub fn api(p: &Principal, request_id: &str) -> Self {
        Self::new(Actor::principal(p), Some(request_id))
    }
    pub fn event(&self, action: &str) -> Event {
        let mut e = Event::new(action, self.actor.clone());
        e.request_id = self.request_id.clone();
        e
    }
}

/// One audited change, before it is written.
#[derive(Debug, Clone)]
pub struct Event {
    pub action: String,
    pub actor: Actor,
    pub organization_id: Option<String>,
    pub workspace_id: Option<String>,
    pub target: Option<String>,
    pub request_id: Option<String>,
    pub before: Option<Value>,
    pub after: Option<Value>,
}

impl Event {
    /// `action` is dotted, subject first: `key.created`, `user.role_changed`,
    /// `billing.status_changed`, `workspace.exported`, `source.deleted`.
    pub fn new(action: &str, actor: Actor) -> Self {
        Self {
            action: action.to_string(),
            actor,
            organization_id: None,
            workspace_id: None,
            target: None,
            request_id: None,
            before: None,
            after: None,
        }
    }
    pub fn organization(mut self, id: &str) -> Self {
        self.organization_id = Some(id.to_string());
        self
    }
    pub fn workspace(mut self, id: &str) -> Self {
        self.workspace_id = Some(id.to_string());
        self
    }
    pub fn target(mut self, target: impl Into<String>) -> Self {
        self.target = Some(target.into());
        self
    }
    pub fn request(mut self, request_id: &str) -> Self {
        self.request_id = Some(request_id.to_string());
        self
    }
    pub fn before(mut self, v: Value) -> Self {
        self.before = Some(v);
        self
    }
    pub fn after(mut self, v: Value) -> Self {
        self.after = Some(v);
        self
    }
}

/// A stored record.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Record {
    pub seq: i64,
    pub id: String,
    pub at: String,
    pub organization_id: Option<String>,
    pub workspace_id: Option<String>,
    pub actor: String,
    pub actor_key_id: Option<String>,
    pub action: String,
    pub target: Option<String>,
    pub request_id: Option<String>,
    pub before: Option<Value>,
    pub after: Option<Value>,
    pub prev_hash: String,
    pub hash: String,
}

impl Record {
    /// The hash this record should carry: SHA-256 over a JSON array of every field but
    /// `hash` itself. JSON keeps field boundaries unambiguous; `before`/`after` are hashed
    /// as the exact text stored, so re-serialisation can never change a verdict.
    fn compute_hash(&self, before_text: Option<&str>, after_text: Option<&str>) -> String {
        let fields = serde_json::json!([
            "audit-v1",
            self.seq,
            self.id,
            self.at,
            self.organization_id,
            self.workspace_id,
            self.actor,
            self.actor_key_id,
            self.action,
            self.target,
            self.request_id,
            before_text,
            after_text,
            self.prev_hash,
        ]);
        hex::encode(Sha256::digest(fields.to_string().as_bytes()))
    }

    /// Logs the record as `audit.<action>` (after the transaction committed: a line for a
    /// record that rolled back would look like a removed record).
    pub fn log(&self) {
        tracing::info!(
            event = %format!("audit.{}", self.action),
            audit_seq = self.seq,
            audit_hash = %self.hash,
            actor = %self.actor,
            target = self.target.as_deref().unwrap_or(""),
            organization_id = self.organization_id.as_deref().unwrap_or(""),
            workspace_id = self.workspace_id.as_deref().unwrap_or(""),
            "audit: {}",
            self.action
        );
    }
}

fn head(conn: &Connection) -> Result<(i64, String), StoreError> {
    Ok(conn
        .query_row(
            "SELECT seq, hash FROM audit_log ORDER BY seq DESC LIMIT 1",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .optional()?
        .unwrap_or((0, GENESIS.to_string())))
}

/// Appends `event` on `conn` (call it inside the transaction that makes the change) and
/// returns the record; call [`Record::log`] once the transaction has committed.
#[must_use = "log the record once its transaction commits"]
pub fn append(conn: &Connection, event: Event) -> Result<Record, StoreError> {
    let (last_seq, prev_hash) = head(conn)?;
    let before_text = event.before.as_ref().map(Value::to_string);
    let after_text = event.after.as_ref().map(Value::to_string);
    let mut rec = Record {
        seq: last_seq + 1,
        id: crate::tenancy::new_id("aud"),
        at: crate::tenancy::now(),
        organization_id: event.organization_id,
        workspace_id: event.workspace_id,
        actor: event.actor.name,
        actor_key_id: event.actor.key_id,
        action: event.action,
        target: event.target,
        request_id: event.request_id,
        before: event.before,
        after: event.after,
        prev_hash,
        hash: String::new(),
    };
    rec.hash = rec.compute_hash(before_text.as_deref(), after_text.as_deref());
    conn.execute(
        "INSERT INTO audit_log (seq, id, at, organization_id, workspace_id, actor, actor_key_id, \
         action, target, request_id, before, after, prev_hash, hash) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14)",
        params![
            rec.seq,
            rec.id,
            rec.at,
            rec.organization_id,
            rec.workspace_id,
            rec.actor,
            rec.actor_key_id,
            rec.action,
            rec.target,
            rec.request_id,
            before_text,
            after_text,
            rec.prev_hash,
            rec.hash
        ],
    )?;
    Ok(rec)
}

/// Appends in its own transaction and logs: for changes that are not otherwise
/// transactional (an export file written, a webhook acknowledged).
pub fn append_now(conn: &mut Connection, event: Event) -> Result<Record, StoreError> {
    let tx = conn.transaction()?;
    let rec = append(&tx, event)?;
    tx.commit()?;
    rec.log();
    Ok(rec)
}

/// What [`list`] returns; all filters are optional and combine with AND.
#[derive(Debug, Default, Clone)]
pub struct Filter {
    pub organization_id: Option<String>,
    pub workspace_id: Option<String>,
    /// Exact action, or a prefix ending in `.` (`billing.` matches every billing action).
    pub action: Option<String>,
    pub actor: Option<String>,
    pub target: Option<String>,
    pub request_id: Option<String>,
    /// RFC 3339 bounds on `at` (inclusive since, exclusive until).
    pub since: Option<String>,
    pub until: Option<String>,
    /// Page after this `seq` (ascending order).
    pub after_seq: Option<i64>,
    pub limit: usize,
}

struct Row {
    rec: Record,
    before_text: Option<String>,
    after_text: Option<String>,
}

fn read_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<Row> {
    let before_text: Option<String> = r.get(10)?;
    let after_text: Option<String> = r.get(11)?;
    // Text that is not JSON (only possible after tampering) is kept as a string so the
    // record can still be listed and verification reports the hash, not a parse error.
    let parse = |t: &Option<String>| {
        t.as_ref()
            .map(|s| serde_json::from_str(s).unwrap_or_else(|_| Value::String(s.clone())))
    };
    Ok(Row {
        rec: Record {
            seq: r.get(0)?,
            id: r.get(1)?,
            at: r.get(2)?,
            organization_id: r.get(3)?,
            workspace_id: r.get(4)?,
            actor: r.get(5)?,
            actor_key_id: r.get(6)?,
            action: r.get(7)?,
            target: r.get(8)?,
            request_id: r.get(9)?,
            before: parse(&before_text),
            after: parse(&after_text),
            prev_hash: r.get(12)?,
            hash: r.get(13)?,
        },
        before_text,
        after_text,
    })
}

const COLUMNS: &str = "seq, id, at, organization_id, workspace_id, actor, actor_key_id, action, \
                       target, request_id, before, after, prev_hash, hash";

pub fn list(conn: &Connection, f: &Filter) -> Result<Vec<Record>, StoreError> {
    let mut sql = format!("SELECT {COLUMNS} FROM audit_log WHERE 1=1");
    let mut args: Vec<Box<dyn rusqlite::ToSql>> = Vec::new();
    let mut eq = |sql: &mut String, col: &str, v: &Option<String>| {
        if let Some(v) = v {
            args.push(Box::new(v.clone()));
            sql.push_str(&format!(" AND {col} = ?{}", args.len()));
        }
    };
    eq(&mut sql, "organization_id", &f.organization_id);
    eq(&mut sql, "workspace_id", &f.workspace_id);
    eq(&mut sql, "actor", &f.actor);
    eq(&mut sql, "target", &f.target);
    eq(&mut sql, "request_id", &f.request_id);
    if let Some(a) = &f.action {
        if a.ends_with('.') {
            // A prefix match without LIKE's wildcards, which an action name could contain.
            args.push(Box::new(a.clone()));
            sql.push_str(&format!(
                " AND substr(action, 1, length(?{n})) = ?{n}",
                n = args.len()
            ));
        } else {
            args.push(Box::new(a.clone()));
            sql.push_str(&format!(" AND action = ?{}", args.len()));
        }
    }
    if let Some(s) = &f.since {
        args.push(Box::new(s.clone()));
        sql.push_str(&format!(" AND at >= ?{}", args.len()));
    }
    if let Some(u) = &f.until {
        args.push(Box::new(u.clone()));
        sql.push_str(&format!(" AND at < ?{}", args.len()));
    }
    if let Some(after) = f.after_seq {
        args.push(Box::new(after));
        sql.push_str(&format!(" AND seq > ?{}", args.len()));
    }
    args.push(Box::new(f.limit.max(1) as i64));
    sql.push_str(&format!(" ORDER BY seq LIMIT ?{}", args.len()));
    let mut stmt = conn.prepare(&sql)?;
    let refs: Vec<&dyn rusqlite::ToSql> = args.iter().map(|a| a.as_ref()).collect();
    let rows = stmt.query_map(refs.as_slice(), read_row)?;
    let mut out = Vec::new();
    for r in rows {
        out.push(r?.rec);
    }
    Ok(out)
}

/// One way the chain is broken.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Problem {
    pub seq: i64,
    /// `edited` (hash does not match the content), `broken_link` (prev_hash is not the
    /// previous record's hash: a record before it was removed or altered), `gap` (a
    /// sequence number is missing), `head_missing` (the expected head is not present).
    pub kind: &'static str,
    pub detail: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub records: u64,
    pub head_seq: i64,
    pub head_hash: String,
    pub problems: Vec<Problem>,
}

impl Report {
    pub fn ok(&self) -> bool {
        self.problems.is_empty()
    }
}

/// Walks the whole chain in order, in constant memory. `expect_head` is a `(seq, hash)`
/// seen earlier (in shipped `audit.*` log lines): it must still be present unchanged.
pub fn verify(conn: &Connection, expect_head: Option<(i64, &str)>) -> Result<Report, StoreError> {
    let mut stmt = conn.prepare(&format!("SELECT {COLUMNS} FROM audit_log ORDER BY seq"))?;
    let mut rows = stmt.query([])?;
    let mut report = Report {
        records: 0,
        head_seq: 0,
        head_hash: GENESIS.to_string(),
        problems: Vec::new(),
    };
    let mut expected_prev = GENESIS.to_string();
    let mut expected_seq = 1;
    let mut head_found = expect_head.is_none();
    while let Some(r) = rows.next()? {
        let row = read_row(r)?;
        let rec = &row.rec;
        report.records += 1;
        if rec.seq != expected_seq {
            report.problems.push(Problem {
                seq: rec.seq,
                kind: "gap",
                detail: format!(
                    "records {expected_seq}..{} are missing",
                    rec.seq.saturating_sub(1)
                ),
            });
        }
        if rec.prev_hash != expected_prev {
            report.problems.push(Problem {
                seq: rec.seq,
                kind: "broken_link",
                detail: "prev_hash does not match the previous record's hash".into(),
            });
        }
        let computed = rec.compute_hash(row.before_text.as_deref(), row.after_text.as_deref());
        if computed != rec.hash {
            report.problems.push(Problem {
                seq: rec.seq,
                kind: "edited",
                detail: "content does not match the record's hash".into(),
            });
        }
        if let Some((seq, hash)) = expect_head
            && rec.seq == seq
        {
            head_found = rec.hash == hash;
        }
        // Continue from what is stored, so one edit is reported once, not for every
        // record after it.
        expected_prev = rec.hash.clone();
        expected_seq = rec.seq + 1;
        report.head_seq = rec.seq;
        report.head_hash = rec.hash.clone();
    }
    if let Some((seq, hash)) = expect_head
        && !head_found
    {
        report.problems.push(Problem {
            seq,
            kind: "head_missing",
            detail: format!(
                "record {seq} with hash {hash} is not in the log (records at or after it were removed or altered)"
            ),
        });
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn conn() -> Connection {
        let c = Connection::open_in_memory().unwrap();
        c.execute_batch(SCHEMA).unwrap();
        c
    }

    fn fill(c: &mut Connection, n: usize) {
        for i in 0..n {
            let rec = append_now(
                c,
                Event::new("key.created", Actor::cli("test"))
                    .organization("org_a")
                    .target(format!("key_{i}"))
                    .after(json!({"name": format!("k{i}")})),
            )
            .unwrap();
            assert_eq!(rec.seq, i as i64 + 1);
        }
    }

    /// Tampering needs the triggers gone, as it would for anyone editing the file.
    fn drop_guards(c: &Connection) {
        c.execute_batch("DROP TRIGGER audit_log_no_update; DROP TRIGGER audit_log_no_delete;")
            .unwrap();
    }

    #[test]
    fn intact_chain_verifies_and_links() {
        let mut c = conn();
        fill(&mut c, 5);
        let r = verify(&c, None).unwrap();
        assert!(r.ok(), "{:?}", r.problems);
        assert_eq!((r.records, r.head_seq), (5, 5));
        let all = list(
            &c,
            &Filter {
                limit: 10,
                ..Default::default()
            },
        )
        .unwrap();
        assert_eq!(all[0].prev_hash, GENESIS);
        for w in all.windows(2) {
            assert_eq!(w[1].prev_hash, w[0].hash);
        }
        let head = verify(&c, Some((5, &r.head_hash))).unwrap();
        assert!(head.ok());
    }

    #[test]
    fn triggers_refuse_update_and_delete() {
        let mut c = conn();
        fill(&mut c, 1);
        assert!(c.execute("UPDATE audit_log SET actor = 'x'", []).is_err());
        assert!(c.execute("DELETE FROM audit_log", []).is_err());
    }

    #[test]
    fn each_kind_of_tampering_is_detected() {
        let cases: &[(&str, &str, i64, &str)] = &[
            (
                "edit actor",
                "UPDATE audit_log SET actor = 'user:evil' WHERE seq = 3",
                3,
                "edited",
            ),
            (
                "edit after",
                "UPDATE audit_log SET after = '{\"name\":\"x\"}' WHERE seq = 2",
                2,
                "edited",
            ),
            (
                "remove middle",
                "DELETE FROM audit_log WHERE seq = 3",
                4,
                "gap",
            ),
            (
                "remove and renumber",
                "DELETE FROM audit_log WHERE seq = 3; UPDATE audit_log SET seq = seq - 1 WHERE seq > 3",
                3,
                "broken_link",
            ),
            (
                "rehash an edit",
                "UPDATE audit_log SET actor = 'x', hash = 'ab' WHERE seq = 2",
                3,
                "broken_link",
            ),
        ];
        for (name, sql, seq, kind) in cases {
            let mut c = conn();
            fill(&mut c, 5);
            drop_guards(&c);
            c.execute_batch(sql).unwrap();
            let r = verify(&c, None).unwrap();
            assert!(
                r.problems.iter().any(|p| p.seq == *seq && p.kind == *kind),
                "{name}: {:?}",
                r.problems
            );
        }
    }

    #[test]
    fn a_cut_tail_is_caught_by_the_expected_head() {
        let mut c = conn();
        fill(&mut c, 5);
        let before = verify(&c, None).unwrap();
        drop_guards(&c);
        c.execute("DELETE FROM audit_log WHERE seq >= 4", [])
            .unwrap();
        // The chain that is left is consistent ...
        assert!(verify(&c, None).unwrap().ok());
        // ... but the head shipped earlier is gone.
        let r = verify(&c, Some((5, &before.head_hash))).unwrap();
        assert_eq!(r.problems[0].kind, "head_missing");
    }

    #[test]
    fn filters_combine() {
        let mut c = conn();
        fill(&mut c, 3);
        append_now(
            &mut c,
            Event::new("billing.status_changed", Actor::external("stripe"))
                .organization("org_b")
                .request("req-1"),
        )
        .unwrap();
        let f = |f: Filter| list(&c, &Filter { limit: 50, ..f }).unwrap().len();
        assert_eq!(f(Filter::default()), 4);
        assert_eq!(
            f(Filter {
                action: Some("billing.".into()),
                ..Default::default()
            }),
            1
        );
        assert_eq!(
            f(Filter {
                action: Some("key.created".into()),
                ..Default::default()
            }),
            3
        );
        assert_eq!(
            f(Filter {
                organization_id: Some("org_a".into()),
                ..Default::default()
            }),
            3
        );
        assert_eq!(
            f(Filter {
                after_seq: Some(2),
                ..Default::default()
            }),
            2
        );
        assert_eq!(
            f(Filter {
                actor: Some("stripe:webhook".into()),
                ..Default::default()
            }),
            1
        );
        assert_eq!(
            f(Filter {
                request_id: Some("req-1".into()),
                ..Default::default()
            }),
            1
        );
    }
}
