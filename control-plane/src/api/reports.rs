//! `GET /api/v1/reports/compliance`: per database of a workspace, what its policies promise
//! against what the catalog, the archived WAL and the last drill show, as JSON or as a CSV
//! that opens in a spreadsheet. The rules are [`crate::domain::compliance`]'.

use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use axum::Json;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::databases::default_workspace;
use super::error::ErrorBody;
use super::extract::ApiQuery;
use super::{workspace_for, ApiError, AppState};
use crate::domain::authz::{Access, Caller};
use crate::domain::compliance::{self, ComplianceRow, Facts, CSV_HEADER};
use crate::domain::pitr::{self, WalSeen};
use crate::domain::quota::AlertState;
use crate::store;

pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(compliance_report))
}

#[derive(Debug, Clone, Copy, Default, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    #[default]
    Json,
    Csv,
}

#[derive(Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct ComplianceQuery {
    /// Default: the caller's workspace. Platform admins must name one.
    workspace: Option<String>,
    /// `json` (default) or `csv`.
    format: Option<Format>,
}

#[derive(Serialize, ToSchema)]
pub struct ComplianceReport {
    pub workspace_id: String,
    pub generated_at: DateTime<Utc>,
    pub compliant: usize,
    pub not_compliant: usize,
    pub databases: Vec<ComplianceRow>,
}

/// Every database of the workspace the caller may see, judged now: RPO target and measured,
/// retention and the oldest restorable point, encryption and key slots, the last verify, the
/// last drill's RTO and RPO against the targets, open alerts, and compliant or not with the
/// reasons.
#[utoipa::path(get, path = "/api/v1/reports/compliance", tag = "reports", params(ComplianceQuery), security(("bearer" = [])),
    responses((status = 200, body = ComplianceReport, description = "JSON, or with format=csv a text/csv file with one row per database"),
        (status = 400, body = ErrorBody), (status = 404, body = ErrorBody)))]
async fn compliance_report(
    State(state): State<AppState>,
    caller: Caller,
    ApiQuery(q): ApiQuery<ComplianceQuery>,
) -> Result<Response, ApiError> {
    let Some(ws) = q.workspace.clone().or_else(|| default_workspace(&caller)) else {
        return Err(ApiError::bad_request(
            "invalid_query",
            "name the workspace to report on (workspace=…)",
        )
        .with_detail("workspace", "is required for platform admins"));
    };
    let rtx = state.store.read()?;
    workspace_for(&rtx, &caller, &ws, Access::Read)?;
    let now = state.store.now();
    let (databases, _) = store::databases::list(
        &rtx,
        Some(&ws),
        None,
        |d| caller.access(&d.workspace_id, Some(&d.id)) >= Access::Read,
        None,
        usize::MAX,
    )?;
    let (alerts, _) = store::quota::list_alerts(&rtx, &ws, Some(AlertState::Open), None, 1000)?;
    let mut open_alerts: Vec<String> = alerts.iter().map(|a| a.kind.as_str().to_string()).collect();
    open_alerts.sort();
    open_alerts.dedup();
    let storages = store::storages::list(&rtx, &ws)?;
    let mut rows = Vec::new();
    for db in &databases {
        let policies = store::policies::of_database(&rtx, &db.id)?;
        let backups = store::backups::of_database(&rtx, &db.id)?;
        let wal: Option<WalSeen> = store::jobs::schedule_record(&rtx, &pitr::wal_key(&db.id))?;
        let last_drill = store::drills::newest_of_database(&rtx, &db.id, |d| d.is_final())?;
        let storage = backups
            .iter()
            .filter(|b| b.is_good())
            .max_by_key(|b| b.finished_at)
            .and_then(|b| b.storage_id.as_deref());
        let repository_exists =
            storage.map(|id| storages.iter().any(|s| s.id == id && s.repository_exists));
        rows.push(compliance::judge(
            &Facts {
                database: db,
                policies: policies.iter().collect(),
                backups: &backups,
                wal: wal.as_ref(),
                last_drill: last_drill.as_ref(),
                repository_exists,
                open_alerts: open_alerts.clone(),
            },
            now,
        ));
    }
    match q.format.unwrap_or_default() {
        Format::Json => {
            let compliant = rows.iter().filter(|r| r.compliant).count();
            Ok(Json(ComplianceReport {
                workspace_id: ws,
                generated_at: now,
                compliant,
                not_compliant: rows.len() - compliant,
                databases: rows,
            })
            .into_response())
        }
        Format::Csv => {
            let body = to_csv(&rows, &ws).map_err(|e| {
                ApiError::internal(format!(
                    "writing the compliance CSV of workspace '{ws}': {e}"
                ))
            })?;
            let name = format!(
                "attachment; filename=\"compliance-{ws}-{}.csv\"",
                now.format("%Y%m%d")
            );
            Ok((
                [
                    (header::CONTENT_TYPE, "text/csv; charset=utf-8".to_string()),
                    (header::CONTENT_DISPOSITION, name),
                ],
                body,
            )
                .into_response())
        }
    }
}

/// One header row, one row per database.
fn to_csv(rows: &[ComplianceRow], workspace: &str) -> Result<Vec<u8>, csv::Error> {
    let mut out = csv::Writer::from_writer(Vec::new());
    out.write_record(CSV_HEADER)?;
    for r in rows {
        out.write_record(r.csv_fields(workspace))?;
    }
    out.into_inner().map_err(|e| e.into_error().into())
}
