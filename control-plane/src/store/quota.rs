//! Usage counters and alerts.
//!
//! - `workspace_usage`: workspace → physical bytes its repositories hold: raised by each backup's
//!   `stored_bytes` inside [`Tx::record_backup`], lowered only by what a gc freed
//!   ([`Tx::record_freed`]) — forgetting a snapshot leaves its chunks until the gc — so it never
//!   needs a scan of the catalog. Rebuilt from the catalog once when the table is new.
//! - `alerts` (id → Alert), `alerts_by_workspace` `(workspace, id)`, and `open_alerts`
//!   `(workspace, kind[:storage]) → id`, which makes "raise once per crossing" one lookup.

use redb::{ReadTransaction, ReadableTable, TableDefinition};

use super::{backups, get_json, put_json, Index2, Records, Result, StoreError, Tx};
use crate::domain::backup::BackupRecord;
use crate::domain::new_id;
use crate::domain::quota::{self, Alert, AlertKind, AlertState};

pub const USAGE: TableDefinition<'static, &'static str, u64> =
    TableDefinition::new("workspace_usage");
pub const ALERTS: Records = Records::new("alerts");
pub const ALERTS_BY_WORKSPACE: Index2 = Index2::new("alerts_by_workspace");
pub const OPEN_ALERTS: TableDefinition<'static, (&'static str, &'static str), &'static str> =
    TableDefinition::new("open_alerts");

pub fn used_bytes(rtx: &ReadTransaction, workspace: &str) -> Result<u64> {
    Ok(rtx
        .open_table(USAGE)?
        .get(workspace)?
        .map_or(0, |v| v.value()))
}

/// Alerts of one workspace, oldest first, after `after`.
pub fn list_alerts(
    rtx: &ReadTransaction,
    workspace: &str,
    state: Option<AlertState>,
    after: Option<&str>,
    limit: usize,
) -> Result<(Vec<Alert>, bool)> {
    super::page(
        rtx,
        ALERTS,
        "alert",
        Some((ALERTS_BY_WORKSPACE, workspace)),
        after,
        limit,
        |a: &Alert| state.is_none_or(|s| s == a.state),
    )
}

/// Recomputes every workspace's counter from the catalog (once, when the table is created).
pub(super) fn rebuild_usage(txn: &redb::WriteTransaction) -> Result<()> {
    let table = txn.open_table(backups::TABLE)?;
    let mut sums = std::collections::BTreeMap::<String, u64>::new();
    for item in table.iter()? {
        let (k, v) = item?;
        let r: BackupRecord = super::decode("backup", k.value(), v.value())?;
        *sums.entry(r.workspace_id).or_default() += r.stored_bytes;
    }
    let mut usage = txn.open_table(USAGE)?;
    for (ws, n) in sums {
        usage.insert(ws.as_str(), n)?;
    }
    Ok(())
}

/// The outcome of [`Tx::admit_backup`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Admission {
    Admitted {
        used: u64,
        quota: u64,
    },
    /// The message says what was refused and why; the `quota_exceeded` alert is recorded.
    Refused(String),
}

impl Admission {
    pub fn into_result(self) -> Result<()> {
        match self {
            Admission::Admitted { .. } => Ok(()),
            Admission::Refused(m) => Err(StoreError::QuotaExceeded(m)),
        }
    }
}

fn open_key(kind: AlertKind, storage: Option<&str>) -> String {
    match storage {
        Some(s) => format!("{}:{s}", kind.as_str()),
        None => kind.as_str().to_string(),
    }
}

impl Tx {
    pub fn used_bytes(&self, workspace: &str) -> Result<u64> {
        Ok(self
            .txn
            .open_table(USAGE)?
            .get(workspace)?
            .map_or(0, |v| v.value()))
    }

    /// Moves a workspace's counter by `delta` bytes and re-evaluates its quota alerts.
    pub(super) fn add_usage(&mut self, workspace: &str, delta: i128) -> Result<()> {
        if delta == 0 {
            return Ok(());
        }
        let used = self.used_bytes(workspace)?;
        let new = (used as i128 + delta).clamp(0, u64::MAX as i128) as u64;
        self.txn.open_table(USAGE)?.insert(workspace, new)?;
        self.check_quota_alerts(workspace)
    }

    /// Raises `quota_80` / `quota_90` when usage is at or above them and none is open; resolves
    /// open ones whose condition ended.
    pub fn check_quota_alerts(&mut self, workspace: &str) -> Result<()> {
        let Some(ws) = self.workspace(workspace)? else {
            return Ok(());
        };
        let used = self.used_bytes(workspace)?;
        for (kind, holds, message) in quota::quota_conditions(workspace, used, ws.quota_bytes) {
            match holds {
                Some(true) => {
                    self.raise_alert(workspace, kind, None, &message)?;
                }
                Some(false) => self.resolve_alert(workspace, kind, None)?,
                None => {}
            }
        }
        Ok(())
    }

    /// Asks whether a backup expected to add `expected_bytes` fits the workspace's quota.
    /// A refusal is a value, not an error, so the `quota_exceeded` alert it records is
    /// committed with the transaction; [`Admission::into_result`] turns it into
    /// [`StoreError::QuotaExceeded`].
    ///
    /// Nothing calls this yet: the scheduler and the job protocol of issue 5 will, before a
    /// backup starts. Usage is only known after a backup, so `expected_bytes` is the caller's
    /// estimate (e.g. the previous backup's `stored_bytes`).
    pub fn admit_backup(
        &mut self,
        workspace: &str,
        database: &str,
        expected_bytes: u64,
    ) -> Result<Admission> {
        let ws = self
            .workspace(workspace)?
            .ok_or_else(|| StoreError::NotFound {
                kind: "workspace",
                id: workspace.to_string(),
            })?;
        let used = self.used_bytes(workspace)?;
        self.check_quota_alerts(workspace)?;
        match quota::admission_refusal(workspace, database, used, expected_bytes, ws.quota_bytes) {
            None => Ok(Admission::Admitted {
                used,
                quota: ws.quota_bytes,
            }),
            Some(message) => {
                self.raise_alert(workspace, AlertKind::QuotaExceeded, None, &message)?;
                Ok(Admission::Refused(message))
            }
        }
    }

    /// Records an open alert unless one of this kind (and storage) is open already; returns
    /// whether it raised one.
    pub fn raise_alert(
        &mut self,
        workspace: &str,
        kind: AlertKind,
        storage: Option<&str>,
        message: &str,
    ) -> Result<bool> {
        let key = open_key(kind, storage);
        if self
            .txn
            .open_table(OPEN_ALERTS)?
            .get((workspace, key.as_str()))?
            .is_some()
        {
            return Ok(false);
        }
        let alert = Alert {
            id: new_id("alr"),
            workspace_id: workspace.to_string(),
            kind,
            state: AlertState::Open,
            message: message.to_string(),
            storage_id: storage.map(str::to_string),
            created_at: self.now,
            resolved_at: None,
        };
        put_json(&mut self.txn.open_table(ALERTS)?, &alert.id, &alert)?;
        self.txn
            .open_table(ALERTS_BY_WORKSPACE)?
            .insert((workspace, alert.id.as_str()), ())?;
        self.txn
            .open_table(OPEN_ALERTS)?
            .insert((workspace, key.as_str()), alert.id.as_str())?;
        self.audit(
            "alert.raise",
            "alert",
            &alert.id,
            Some(workspace),
            None,
            None::<&()>,
            Some(&alert),
        )?;
        Ok(true)
    }

    /// Resolves the open alert of this kind (and storage), if there is one.
    pub fn resolve_alert(
        &mut self,
        workspace: &str,
        kind: AlertKind,
        storage: Option<&str>,
    ) -> Result<()> {
        let key = open_key(kind, storage);
        let Some(id) = self
            .txn
            .open_table(OPEN_ALERTS)?
            .remove((workspace, key.as_str()))?
            .map(|v| v.value().to_string())
        else {
            return Ok(());
        };
        let Some(before) = get_json::<Alert>(&self.txn.open_table(ALERTS)?, "alert", &id)? else {
            return Ok(());
        };
        let mut after = before.clone();
        after.state = AlertState::Resolved;
        after.resolved_at = Some(self.now);
        put_json(&mut self.txn.open_table(ALERTS)?, &id, &after)?;
        self.audit(
            "alert.resolve",
            "alert",
            &id,
            Some(workspace),
            None,
            Some(&before),
            Some(&after),
        )?;
        Ok(())
    }
}
