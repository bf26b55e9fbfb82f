//! `check`: can each configured database be backed up right now? Connects, authenticates,
//! finds the tools, and for physical PostgreSQL backups checks WAL archiving — the questions
//! an operator otherwise learns the answer to from the first failed nightly backup.

use std::process::ExitCode;

use anyhow::Result;
use serde_json::json;

use super::{output, usage, Global};
use crate::drivers::driver_for;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Only this database (default: every database in the configuration)
    #[arg(long)]
    database: Option<String>,
}

pub async fn run(g: &Global, a: Args) -> Result<ExitCode> {
    let dbs: Vec<_> = g
        .settings
        .databases
        .iter()
        .filter(|d| a.database.as_ref().is_none_or(|id| *id == d.id))
        .collect();
    if dbs.is_empty() {
        return Err(usage(match &a.database {
            Some(id) => format!(
                "database {id:?} is not declared in {}",
                g.settings.path.display()
            ),
            None => format!("no databases are declared in {}", g.settings.path.display()),
        }));
    }
    let mut results = Vec::new();
    let mut failed = false;
    for db in dbs {
        let checked = match driver_for(db) {
            Ok(driver) => match driver.check().await {
                Ok(()) => driver.discover().await.map(Some),
                Err(e) => Err(e),
            },
            Err(e) => Err(e),
        };
        match checked {
            Ok(found) => {
                if !g.json {
                    let f = found.as_ref().expect("discovered");
                    println!(
                        "{}: ok ({} {}, {} item(s){})",
                        db.id,
                        f.database_type,
                        f.server_version,
                        f.contents.len(),
                        f.size_bytes
                            .map(|b| format!(", {}", output::bytes(b)))
                            .unwrap_or_default()
                    );
                }
                results.push(json!({"database_id": db.id, "ok": true, "discovery": found}));
            }
            Err(e) => {
                failed = true;
                if !g.json {
                    println!("{}: FAILED: {e}", db.id);
                }
                results.push(json!({"database_id": db.id, "ok": false, "error": e.to_string()}));
            }
        }
    }
    if g.json {
        output::json(&json!({ "databases": results }));
    }
    Ok(if failed {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}
