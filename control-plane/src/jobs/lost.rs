//! Jobs nobody will finish: a running job whose agent went silent for `lost_after` (no
//! heartbeat, no progress) is failed and, while attempts remain, retried after `retry_delay`;
//! one whose agent was revoked, or that an agent of another workspace holds, is failed for good.
//! Queued jobs of a revoked (or removed) agent would wait forever, so they are failed too.
//!
//! Silence is counted from no earlier than the control plane's own start: after a restart,
//! agents get `lost_after` to come back before their work is given up.

use super::{system_actor, Board, JobSettings};
use crate::domain::{new_id, schedule};
use crate::store::{self, Store, StoreError, Tx};

/// What one sweep gave up on: each lost job with the id of its retry, if one was queued.
pub type Lost = (String, Option<String>);

/// One sweep, in one write transaction; the agents that got a retry are woken.
pub async fn sweep(store: &Store, board: &Board) -> Result<Vec<Lost>, StoreError> {
    let settings = board.settings;
    let started_at = board.started_at;
    let lost = store
        .write(system_actor(), move |tx| sweep_in(tx, settings, started_at))
        .await?;
    let rtx = store.read()?;
    for id in lost.iter().filter_map(|(_, retry)| retry.as_ref()) {
        if let Some(job) = store::jobs::get(&rtx, id)? {
            board.wake(&job.agent_id);
        }
    }
    Ok(lost)
}

fn sweep_in(
    tx: &mut Tx,
    settings: JobSettings,
    started_at: chrono::DateTime<chrono::Utc>,
) -> Result<Vec<Lost>, StoreError> {
    let now = tx.now;
    let lost_after = chrono::Duration::from_std(settings.lost_after).unwrap_or_default();
    let mut out = Vec::new();
    let running = store::jobs::running_in(tx)?;
    for job in running {
        let agent = tx.agent(&job.agent_id)?;
        let heard = [
            agent.as_ref().and_then(|a| a.last_heartbeat_at),
            job.progress.as_ref().map(|p| p.at),
            job.started_at,
            Some(started_at),
        ]
        .into_iter()
        .flatten()
        .max()
        .unwrap_or(now);
        let revoked = agent.as_ref().is_some_and(|a| a.revoked_at.is_some());
        // Taken before references were checked by an agent of another workspace: it never
        // reports on it (and must not), however alive it is.
        let stranger = agent
            .as_ref()
            .is_some_and(|a| a.workspace_id != job.workspace_id);
        if !revoked && !stranger && now - heard <= lost_after {
            continue;
        }
        let why = if stranger {
            format!(
                "agent {} is not an agent of workspace '{}'; the job cannot run there",
                job.agent_id, job.workspace_id
            )
        } else if revoked {
            format!("agent {} was revoked while the job ran", job.agent_id)
        } else {
            format!(
                "lost with its agent: agent {} not heard of since {heard} ({} without heartbeat or progress)",
                job.agent_id,
                schedule::human((now - heard).num_seconds())
            )
        };
        // A revoked agent's work is not retried: whoever revoked it wants it stopped.
        let retry = (!revoked && !stranger).then(|| {
            (
                new_id("job"),
                chrono::Duration::from_std(settings.retry_delay).unwrap_or_default(),
            )
        });
        let retried = tx.fail_lost_job(&job.id, &why, retry)?;
        if retried.is_none() {
            // Nothing will report on its snapshots: the next retention run may take them again.
            super::upkeep::release_forget(tx, &job)?;
        }
        tracing::warn!(job = %job.id, agent = %job.agent_id, "{why}");
        out.push((job.id.clone(), retried.map(|j| j.id)));
    }
    // Queued jobs of a revoked agent would wait forever.
    for job in store::jobs::queued_in(tx)? {
        let revoked = tx
            .agent(&job.agent_id)?
            .is_none_or(|a| a.revoked_at.is_some());
        if revoked {
            let why = format!(
                "not run: agent {} was revoked (or removed) before it took the job",
                job.agent_id
            );
            tx.fail_queued_job(&job.id, &why)?;
            super::upkeep::release_forget(tx, &job)?;
            tracing::warn!(job = %job.id, "{why}");
            out.push((job.id.clone(), None));
        }
    }
    Ok(out)
}
