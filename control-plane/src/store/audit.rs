//! The audit table: `seq (u64) → {"hash", "body"}`, appended in the same transaction as the
//! change it records (see `domain::audit` for the chain).

use std::ops::Bound;

use chrono::{DateTime, Utc};
use redb::{ReadTransaction, ReadableTable, TableDefinition};
use serde::Serialize;

use super::{Result, StoreError, Tx};
use crate::domain::audit::{self, AuditEntry, AuditRecord, ResourceRef, GENESIS};

pub const TABLE: TableDefinition<'static, u64, &'static [u8]> = TableDefinition::new("audit");

impl Tx {
    /// Appends one audit entry for a change made in this transaction.
    #[allow(clippy::too_many_arguments)]
    pub fn audit<B: Serialize, A: Serialize>(
        &mut self,
        action: &str,
        kind: &str,
        id: &str,
        workspace_id: Option<&str>,
        database_id: Option<&str>,
        before: Option<&B>,
        after: Option<&A>,
    ) -> Result<u64> {
        let mut table = self.txn.open_table(TABLE)?;
        let (seq, prev_hash) = match table.last()? {
            None => (1, GENESIS.to_string()),
            Some((k, v)) => {
                let record = audit::read(v.value()).map_err(|reason| StoreError::Corrupt {
                    what: "audit entry",
                    key: k.value().to_string(),
                    reason,
                })?;
                (k.value() + 1, record.hash)
            }
        };
        let entry = AuditEntry {
            seq,
            at: self.now,
            actor: self.actor.clone(),
            action: action.to_string(),
            resource: ResourceRef {
                kind: kind.to_string(),
                id: id.to_string(),
            },
            workspace_id: workspace_id.map(str::to_string),
            database_id: database_id.map(str::to_string),
            before: before.map(|b| serde_json::to_value(b).expect("records serialise")),
            after: after.map(|a| serde_json::to_value(a).expect("records serialise")),
            prev_hash,
        };
        let (bytes, _) = audit::seal(&entry);
        table.insert(seq, bytes.as_slice())?;
        Ok(seq)
    }
}

/// Filters of `GET /api/v1/audit`.
#[derive(Debug, Default, Clone)]
pub struct Filter {
    pub actor: Option<String>,
    pub action: Option<String>,
    pub resource_type: Option<String>,
    pub resource_id: Option<String>,
    pub from: Option<DateTime<Utc>>,
    pub to: Option<DateTime<Utc>>,
}

impl Filter {
    fn matches(&self, e: &AuditEntry) -> bool {
        self.actor
            .as_ref()
            .is_none_or(|a| &e.actor.id == a || &e.actor.name == a)
            && self
                .action
                .as_ref()
                .is_none_or(|a| &e.action == a || e.action.starts_with(&format!("{a}.")))
            && self
                .resource_type
                .as_ref()
                .is_none_or(|t| &e.resource.kind == t)
            && self
                .resource_id
                .as_ref()
                .is_none_or(|i| &e.resource.id == i)
            && self.from.is_none_or(|f| e.at >= f)
            && self.to.is_none_or(|t| e.at < t)
    }
}

/// Newest first, entries before `before_seq`, those `visible` allows and the filter matches.
pub fn list(
    rtx: &ReadTransaction,
    filter: &Filter,
    visible: impl Fn(&AuditEntry) -> bool,
    before_seq: Option<u64>,
    limit: usize,
) -> Result<(Vec<AuditRecord>, bool)> {
    let table = rtx.open_table(TABLE)?;
    let upper = before_seq.map_or(Bound::Unbounded, Bound::Excluded);
    let mut out = Vec::new();
    for item in table.range::<u64>((Bound::Unbounded, upper))?.rev() {
        let (k, v) = item?;
        let record = audit::read(v.value()).map_err(|reason| StoreError::Corrupt {
            what: "audit entry",
            key: k.value().to_string(),
            reason,
        })?;
        if !visible(&record.entry) || !filter.matches(&record.entry) {
            continue;
        }
        if out.len() == limit {
            return Ok((out, true));
        }
        out.push(record);
    }
    Ok((out, false))
}

/// The result of re-walking the chain.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Verification {
    pub ok: bool,
    /// Entries checked (all of them when `ok`).
    pub checked: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub first_broken: Option<BrokenLink>,
    /// Hash of the last entry: keep it elsewhere to detect truncation of the chain's tail.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub head_hash: Option<String>,
}

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct BrokenLink {
    pub seq: u64,
    pub problem: String,
}

pub fn verify(rtx: &ReadTransaction) -> Result<Verification> {
    let table = rtx.open_table(TABLE)?;
    let mut expected_seq = 1u64;
    let mut prev = GENESIS.to_string();
    let mut checked = 0;
    for item in table.iter()? {
        let (k, v) = item?;
        let seq = k.value();
        let broken = if seq != expected_seq {
            Some(audit::Broken::WrongSeq { found: seq })
        } else {
            match audit::open_link(v.value(), seq, &prev) {
                Ok((_, hash)) => {
                    prev = hash;
                    None
                }
                Err(b) => Some(b),
            }
        };
        if let Some(b) = broken {
            return Ok(Verification {
                ok: false,
                checked,
                first_broken: Some(BrokenLink {
                    seq: expected_seq,
                    problem: b.to_string(),
                }),
                head_hash: None,
            });
        }
        checked += 1;
        expected_seq += 1;
    }
    Ok(Verification {
        ok: true,
        checked,
        first_broken: None,
        head_hash: (checked > 0).then_some(prev),
    })
}
