//! Loads a control-plane data directory for the API benchmark (docs/benchmarks.md): one
//! workspace, N databases with one policy each, and M catalog entries spread over the first 100
//! databases. Writes go straight to the store in large transactions (with their audit entries),
//! which is how the job protocol will record backups, only batched.
//!
//! Usage: bulwark-api-seed DATA_DIR POLICIES BACKUPS — prints {"token", "policy", "database"}.

use bulwark_control_plane::domain::audit::Actor;
use bulwark_control_plane::domain::backup::{BackupRecord, BackupStatus, SnapshotKind};
use bulwark_control_plane::domain::database::{Database, DatabaseBody};
use bulwark_control_plane::domain::new_id;
use bulwark_control_plane::domain::policy::{self, PolicyBody};
use bulwark_control_plane::domain::workspace::{Plan, Workspace};
use bulwark_control_plane::store::Store;
use chrono::{Duration, Utc};

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    anyhow::ensure!(
        args.len() == 4,
        "usage: bulwark-api-seed DATA_DIR POLICIES BACKUPS"
    );
    let dir = std::path::PathBuf::from(&args[1]);
    let policies: usize = args[2].parse()?;
    let backups: usize = args[3].parse()?;
    std::fs::create_dir_all(&dir)?;
    let (_, _, token) =
        bulwark_control_plane::cli::try_bootstrap(&dir, "bench")?.ok_or_else(|| {
            anyhow::anyhow!("{} is already seeded; use a fresh directory", dir.display())
        })?;
    let store = Store::open(&dir)?;
    let actor = Actor {
        kind: "system".into(),
        id: "seed".into(),
        name: "bulwark-api-seed".into(),
    };
    let now = Utc::now();
    let ws = Workspace {
        id: "bench".into(),
        name: "Benchmark".into(),
        plan: Plan::Dedicated,
        quota_bytes: 1 << 40,
        min_retention_days: None,
        created_at: now,
        updated_at: now,
    };
    store.write_blocking(actor.clone(), |tx| tx.create_workspace(&ws))?;
    let mut first_policy = String::new();
    for chunk in (0..policies).collect::<Vec<_>>().chunks(1000) {
        let mut made = Vec::new();
        for &i in chunk {
            let body: DatabaseBody = serde_json::from_value(serde_json::json!({
                "id": format!("db-{i:05}"), "workspace_id": "bench", "type": "postgresql",
                "connection": {"host": format!("pg{i}.internal"), "port": 5432},
                "secrets": {"password": "x"}
            }))?;
            let db: Database = body
                .into_database(None, None, now)
                .map_err(|v| anyhow::anyhow!("{v:?}"))?;
            let pbody: PolicyBody = serde_json::from_value(serde_json::json!({
                "db_identifier": db.id, "db_type": "postgresql",
                "schedule": {"frequency": "daily", "preferred_window": "01:00-05:00", "priority": "normal"},
                "retention": {"period_days": 30, "min_snapshots": 7}
            }))?;
            let ctx = policy::Context {
                database: Some(&db),
                workspace: Some(&ws),
                existing: None,
                id: new_id("pol"),
                now,
            };
            let p = policy::validate(&pbody, &ctx).map_err(|v| anyhow::anyhow!("{v:?}"))?;
            made.push((db, p));
        }
        if first_policy.is_empty() {
            first_policy = made[0].1.id.clone();
        }
        store.write_blocking(actor.clone(), move |tx| {
            for (db, p) in &made {
                tx.create_database(db)?;
                tx.create_policy(p)?;
            }
            Ok(())
        })?;
    }
    let start = now - Duration::days(365);
    for chunk in (0..backups).collect::<Vec<_>>().chunks(10_000) {
        let records: Vec<BackupRecord> = chunk
            .iter()
            .map(|&i| {
                let started = start + Duration::minutes(i as i64 * 2);
                BackupRecord {
                    id: format!("bk-{i:07}"),
                    workspace_id: "bench".into(),
                    database_id: format!("db-{:05}", i % 100),
                    db_type: bulwark_control_plane::domain::database::DatabaseType::Postgresql,
                    kind: if i % 10 == 0 {
                        SnapshotKind::Manual
                    } else {
                        SnapshotKind::Automatic
                    },
                    status: if i % 50 == 0 {
                        BackupStatus::Failed
                    } else {
                        BackupStatus::Succeeded
                    },
                    started_at: started,
                    finished_at: Some(started + Duration::minutes(1)),
                    snapshot: Some(format!(
                        "backup-{}-automatic-{i:08x}",
                        started.format("%Y%m%dT%H%M%SZ")
                    )),
                    policy_id: None,
                    storage_id: None,
                    method: None,
                    logical_bytes: 1 << 30,
                    stored_bytes: 1 << 24,
                    error: None,
                    job_id: None,
                    notes: None,
                    tags: Default::default(),
                    verified_at: None,
                    verification: None,
                    forget_job: None,
                }
            })
            .collect();
        store.write_blocking(actor.clone(), move |tx| {
            for r in &records {
                tx.record_backup(r)?;
            }
            Ok(())
        })?;
    }
    println!(
        "{}",
        serde_json::json!({"token": token, "policy": first_policy, "database": "db-00007"})
    );
    Ok(())
}
