//! The shadow store: one SQLite file holding the captured (already masked) samples, the
//! contracts (the latest inferred draft and the approved version of each API) and the audit
//! log of every read. SQLite because it is one file that survives restarts, its SQL makes
//! retention (`DELETE … WHERE at < ?`) and the size bound (oldest first) one statement each,
//! and operators can inspect it with the `sqlite3` shell. `secure_delete` overwrites purged
//! rows, so retention really removes the data from the file; `auto_vacuum = INCREMENTAL`
//! gives the space back.

use std::path::Path;
use std::sync::Mutex;

use rusqlite::{params, Connection, OptionalExtension};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

/// One captured exchange, masked.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
pub struct Sample {
    pub api: String,
    /// Unix milliseconds.
    pub at: i64,
    pub tenant: Option<String>,
    pub method: String,
    pub path: String,
    /// The query string, values masked.
    pub query: Option<String>,
    /// Request headers (names lower case), values masked.
    pub request_headers: Vec<(String, String)>,
    pub request_content_type: Option<String>,
    pub request_body: Option<String>,
    pub status: u16,
    pub response_headers: Vec<(String, String)>,
    pub response_content_type: Option<String>,
    pub response_body: Option<String>,
}

/// An API's contract row: the latest inferred draft and the approved version.
#[derive(Clone, Debug, Default, Serialize)]
pub struct ContractRow {
    pub api: String,
    pub draft: Option<Value>,
    /// `draft` (awaiting review) or `rejected`.
    pub draft_status: String,
    pub draft_at: Option<i64>,
    pub reviewed_by: Option<String>,
    pub reviewed_at: Option<i64>,
    pub review_reason: Option<String>,
    pub approved: Option<Value>,
    pub approved_by: Option<String>,
    pub approved_at: Option<i64>,
}

pub struct Store {
    conn: Mutex<Connection>,
    max_bytes: u64,
}

fn err(e: rusqlite::Error) -> String {
    format!("shadow store: {e}")
}

pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

impl Store {
    pub fn open(path: &Path, max_bytes: u64) -> Result<Store, String> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)
                .map_err(|e| format!("shadow store: {}: {e}", dir.display()))?;
        }
        let conn = Connection::open(path).map_err(|e| format!("{}: {}", path.display(), err(e)))?;
        Self::with_schema(conn, max_bytes).map_err(|e| format!("{}: {e}", path.display()))
    }

    /// What `--check` does instead of `open`: the file, when it exists, must be a store this
    /// gateway can read; when it does not, the nearest existing directory above it must be a
    /// directory. Nothing is created. The version being checked gets an in-memory store.
    pub fn check(path: &Path, max_bytes: u64) -> Result<Store, String> {
        if path.exists() {
            let conn =
                Connection::open_with_flags(path, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
                    .map_err(|e| format!("{}: {}", path.display(), err(e)))?;
            conn.query_row("SELECT count(*) FROM sqlite_master", [], |r| {
                r.get::<_, i64>(0)
            })
            .map_err(|e| format!("{}: {}", path.display(), err(e)))?;
        } else {
            let existing = path
                .ancestors()
                .skip(1)
                .find(|d| d.as_os_str().is_empty() || d.exists());
            if let Some(dir) = existing.filter(|d| !d.as_os_str().is_empty() && !d.is_dir()) {
                return Err(format!(
                    "shadow store: {} is not a directory",
                    dir.display()
                ));
            }
        }
        let conn = Connection::open_in_memory().map_err(err)?;
        Self::with_schema(conn, max_bytes)
    }

    fn with_schema(conn: Connection, max_bytes: u64) -> Result<Store, String> {
        conn.execute_batch(
            "PRAGMA auto_vacuum = INCREMENTAL;
             PRAGMA journal_mode = WAL;
             PRAGMA synchronous = NORMAL;
             PRAGMA secure_delete = ON;
             CREATE TABLE IF NOT EXISTS samples (
               id INTEGER PRIMARY KEY, api TEXT NOT NULL, at INTEGER NOT NULL, doc TEXT NOT NULL);
             CREATE INDEX IF NOT EXISTS samples_api ON samples (api, id);
             CREATE INDEX IF NOT EXISTS samples_at ON samples (at);
             CREATE TABLE IF NOT EXISTS contracts (
               api TEXT PRIMARY KEY, draft TEXT, draft_status TEXT NOT NULL DEFAULT 'draft',
               draft_at INTEGER, reviewed_by TEXT, reviewed_at INTEGER, review_reason TEXT,
               approved TEXT, approved_by TEXT, approved_at INTEGER);
             CREATE TABLE IF NOT EXISTS audit (
               id INTEGER PRIMARY KEY, at INTEGER NOT NULL, who TEXT NOT NULL,
               action TEXT NOT NULL, target TEXT NOT NULL, reason TEXT NOT NULL);",
        )
        .map_err(err)?;
        Ok(Store {
            conn: Mutex::new(conn),
            max_bytes,
        })
    }

    /// Store samples in one transaction, then keep the file under its bound (oldest first).
    pub fn insert(&self, samples: &[Sample]) -> Result<(), String> {
        let mut conn = self
            .conn
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let tx = conn.transaction().map_err(err)?;
        {
            let mut stmt = tx
                .prepare_cached("INSERT INTO samples (api, at, doc) VALUES (?1, ?2, ?3)")
                .map_err(err)?;
            for s in samples {
                let doc = serde_json::to_string(s).unwrap_or_default();
                stmt.execute(params![s.api, s.at, doc]).map_err(err)?;
            }
        }
        tx.commit().map_err(err)?;
        Self::bound(&conn, self.max_bytes)
    }

    /// Bytes in use (pages not on the free list).
    fn used(conn: &Connection) -> Result<u64, String> {
        conn.query_row(
            "SELECT (SELECT page_count FROM pragma_page_count()) - (SELECT freelist_count FROM pragma_freelist_count()), (SELECT page_size FROM pragma_page_size())",
            [],
            |r| Ok(r.get::<_, i64>(0)? as u64 * r.get::<_, i64>(1)? as u64),
        )
        .map_err(err)
    }

    fn bound(conn: &Connection, max: u64) -> Result<(), String> {
        let mut rounds = 0;
        while Self::used(conn)? > max && rounds < 20 {
            // The oldest tenth of the samples.
            conn.execute(
                "DELETE FROM samples WHERE id IN (SELECT id FROM samples ORDER BY id LIMIT MAX(1, (SELECT COUNT(*) FROM samples) / 10))",
                [],
            )
            .map_err(err)?;
            rounds += 1;
        }
        if rounds > 0 {
            crate::uac::metrics::METRICS
                .shadow_store_evictions
                .inc_by(rounds);
            conn.execute_batch("PRAGMA incremental_vacuum;")
                .map_err(err)?;
        }
        Ok(())
    }

    /// Remove the samples captured before `before` (Unix ms); how many went.
    pub fn purge(&self, before: i64) -> Result<usize, String> {
        let conn = self
            .conn
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let n = conn
            .execute("DELETE FROM samples WHERE at < ?1", params![before])
            .map_err(err)?;
        if n > 0 {
            conn.execute_batch("PRAGMA incremental_vacuum; PRAGMA wal_checkpoint(TRUNCATE);")
                .map_err(err)?;
        }
        Ok(n)
    }

    /// Every sample of `api`, oldest first.
    pub fn samples(&self, api: &str) -> Result<Vec<Sample>, String> {
        let conn = self
            .conn
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let mut stmt = conn
            .prepare_cached("SELECT doc FROM samples WHERE api = ?1 ORDER BY id")
            .map_err(err)?;
        let rows = stmt
            .query_map(params![api], |r| r.get::<_, String>(0))
            .map_err(err)?;
        Ok(rows
            .filter_map(|r| r.ok())
            .filter_map(|doc| serde_json::from_str(&doc).ok())
            .collect())
    }

    /// Per API: samples held, first and last capture (Unix ms).
    pub fn apis(&self) -> Result<Vec<(String, u64, i64, i64)>, String> {
        let conn = self
            .conn
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let mut stmt = conn
            .prepare_cached(
                "SELECT api, COUNT(*), MIN(at), MAX(at) FROM samples GROUP BY api ORDER BY api",
            )
            .map_err(err)?;
        let rows = stmt
            .query_map([], |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, i64>(1)? as u64,
                    r.get(2)?,
                    r.get(3)?,
                ))
            })
            .map_err(err)?;
        Ok(rows.filter_map(|r| r.ok()).collect())
    }

    pub fn sample_count(&self) -> Result<u64, String> {
        let conn = self
            .conn
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        conn.query_row("SELECT COUNT(*) FROM samples", [], |r| r.get::<_, i64>(0))
            .map(|n| n as u64)
            .map_err(err)
    }

    /// One audit record.
    pub fn audit(&self, who: &str, action: &str, target: &str, reason: &str) -> Result<(), String> {
        let conn = self
            .conn
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        conn.execute(
            "INSERT INTO audit (at, who, action, target, reason) VALUES (?1, ?2, ?3, ?4, ?5)",
            params![now_ms(), who, action, target, reason],
        )
        .map_err(err)?;
        Ok(())
    }

    /// The latest audit records, newest first.
    pub fn audit_log(&self, limit: usize) -> Result<Vec<Value>, String> {
        let conn = self
            .conn
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let mut stmt = conn
            .prepare_cached(
                "SELECT at, who, action, target, reason FROM audit ORDER BY id DESC LIMIT ?1",
            )
            .map_err(err)?;
        let rows = stmt
            .query_map(params![limit as i64], |r| {
                Ok(json!({
                    "at": r.get::<_, i64>(0)?,
                    "who": r.get::<_, String>(1)?,
                    "action": r.get::<_, String>(2)?,
                    "target": r.get::<_, String>(3)?,
                    "reason": r.get::<_, String>(4)?,
                }))
            })
            .map_err(err)?;
        Ok(rows.filter_map(|r| r.ok()).collect())
    }

    pub fn contract(&self, api: &str) -> Result<Option<ContractRow>, String> {
        let conn = self
            .conn
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        conn.query_row(
            "SELECT api, draft, draft_status, draft_at, reviewed_by, reviewed_at, review_reason,
                    approved, approved_by, approved_at FROM contracts WHERE api = ?1",
            params![api],
            |r| {
                let doc = |v: Option<String>| v.and_then(|t| serde_json::from_str(&t).ok());
                Ok(ContractRow {
                    api: r.get(0)?,
                    draft: doc(r.get(1)?),
                    draft_status: r.get(2)?,
                    draft_at: r.get(3)?,
                    reviewed_by: r.get(4)?,
                    reviewed_at: r.get(5)?,
                    review_reason: r.get(6)?,
                    approved: doc(r.get(7)?),
                    approved_by: r.get(8)?,
                    approved_at: r.get(9)?,
                })
            },
        )
        .optional()
        .map_err(err)
    }

    pub fn contract_apis(&self) -> Result<Vec<String>, String> {
        let conn = self
            .conn
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let mut stmt = conn
            .prepare_cached("SELECT api FROM contracts ORDER BY api")
            .map_err(err)?;
        let rows = stmt.query_map([], |r| r.get(0)).map_err(err)?;
        Ok(rows.filter_map(|r| r.ok()).collect())
    }

    /// A newly inferred draft: replaces the previous draft (and its review) when it differs.
    pub fn put_draft(&self, api: &str, draft: &Value) -> Result<(), String> {
        let conn = self
            .conn
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let text = draft.to_string();
        conn.execute(
            "INSERT INTO contracts (api, draft, draft_status, draft_at) VALUES (?1, ?2, 'draft', ?3)
             ON CONFLICT (api) DO UPDATE SET draft = excluded.draft, draft_status = 'draft',
               draft_at = excluded.draft_at, reviewed_by = NULL, reviewed_at = NULL,
               review_reason = NULL
             WHERE contracts.draft IS NOT excluded.draft",
            params![api, text, now_ms()],
        )
        .map_err(err)?;
        Ok(())
    }

    /// Approve the current draft (it becomes the approved version) or reject it.
    pub fn review(&self, api: &str, approve: bool, who: &str, reason: &str) -> Result<(), String> {
        let conn = self
            .conn
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let now = now_ms();
        if approve {
            conn.execute(
                "UPDATE contracts SET approved = draft, approved_by = ?2, approved_at = ?3,
                   draft_status = 'approved', reviewed_by = ?2, reviewed_at = ?3, review_reason = ?4
                 WHERE api = ?1",
                params![api, who, now, reason],
            )
        } else {
            conn.execute(
                "UPDATE contracts SET draft_status = 'rejected', reviewed_by = ?2, reviewed_at = ?3,
                   review_reason = ?4 WHERE api = ?1",
                params![api, who, now, reason],
            )
        }
        .map_err(err)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(api: &str, at: i64) -> Sample {
        Sample {
            api: api.into(),
            at,
            method: "GET".into(),
            path: "/users/1".into(),
            status: 200,
            ..Sample::default()
        }
    }

    #[test]
    fn samples_survive_reopening_and_retention_purges_them() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("shadow.db");
        {
            let s = Store::open(&path, 1 << 30).unwrap();
            s.insert(&[sample("a", 1_000), sample("a", 5_000), sample("b", 6_000)])
                .unwrap();
            s.audit("alice", "read", "contracts", "weekly review")
                .unwrap();
        }
        let s = Store::open(&path, 1 << 30).unwrap();
        assert_eq!(s.samples("a").unwrap().len(), 2);
        assert_eq!(s.apis().unwrap()[1], ("b".into(), 1, 6_000, 6_000));
        assert_eq!(s.purge(5_500).unwrap(), 2);
        assert!(s.samples("a").unwrap().is_empty());
        assert_eq!(s.audit_log(10).unwrap()[0]["who"], "alice");
    }

    #[test]
    fn the_size_bound_drops_the_oldest() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(&dir.path().join("small.db"), 256 * 1024).unwrap();
        let mut big = sample("a", 0);
        big.response_body = Some("x".repeat(2000));
        for round in 0..20 {
            let batch: Vec<Sample> = (0..50)
                .map(|i| Sample {
                    at: round * 100 + i,
                    ..big.clone()
                })
                .collect();
            s.insert(&batch).unwrap();
        }
        let kept = s.samples("a").unwrap();
        assert!(kept.len() < 1000 && !kept.is_empty(), "{}", kept.len());
        assert_eq!(kept.last().unwrap().at, 1949, "the newest are kept");
    }

    #[test]
    fn drafts_reviews_and_approval() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(&dir.path().join("c.db"), 1 << 30).unwrap();
        s.put_draft("erp", &json!({"v": 1})).unwrap();
        s.review("erp", false, "bob", "incomplete").unwrap();
        assert_eq!(s.contract("erp").unwrap().unwrap().draft_status, "rejected");
        // The same draft again keeps its review; a different one starts over.
        s.put_draft("erp", &json!({"v": 1})).unwrap();
        assert_eq!(s.contract("erp").unwrap().unwrap().draft_status, "rejected");
        s.put_draft("erp", &json!({"v": 2})).unwrap();
        s.review("erp", true, "alice", "looks right").unwrap();
        let c = s.contract("erp").unwrap().unwrap();
        assert_eq!(
            (c.approved, c.approved_by.as_deref()),
            (Some(json!({"v": 2})), Some("alice"))
        );
    }
}
