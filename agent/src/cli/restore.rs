//! `restore`: a snapshot back to standard output, a file, or a directory.
//!
//! Files and directories are written under a temporary name and renamed into place only when
//! every chunk has been authenticated, so a failed restore never leaves a plausible-looking
//! partial result under the name the operator asked for.

use std::fs::File;
use std::io::BufWriter;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context, Result};
use bulwark_core::archive::{restore_tree, DATA_STREAM};
use bulwark_core::manifest::{Manifest, Source};
use bulwark_core::repo::backup::Progress;
use bulwark_core::repo::Repository;
use clap::ArgGroup;
use serde_json::json;

use super::output::{self, Bar};
use super::{usage, Global};

#[derive(clap::Args, Debug)]
#[command(group(ArgGroup::new("dest").required(true).args(["stdout", "output", "target"])))]
pub struct Args {
    /// Snapshot name, or `latest` (with --database)
    snapshot: String,
    /// Database the snapshot belongs to (needed for `latest`)
    #[arg(long)]
    database: Option<String>,
    /// Write a stream snapshot to standard output
    #[arg(long)]
    stdout: bool,
    /// Write a stream snapshot to this file (must not exist; appears only when complete)
    #[arg(long, value_name = "FILE")]
    output: Option<PathBuf>,
    /// Restore a directory snapshot into this directory (must not exist or be empty)
    #[arg(long, value_name = "DIR")]
    target: Option<PathBuf>,
    /// Only this file or sub-tree of a directory snapshot (repeatable)
    #[arg(long, value_name = "PATH", requires = "target")]
    include: Vec<String>,
}

pub async fn run(g: &Global, a: Args) -> Result<ExitCode> {
    let repo = g.open().await?;
    let manifest = repo
        .find_snapshot(&a.snapshot, a.database.as_deref())
        .await?;
    let progress = Arc::new(Progress::default());
    let started = Instant::now();
    let total = manifest.stream(DATA_STREAM).map(|s| s.size);
    let bar = Bar::start(
        g.progress(),
        &format!("restoring {}", manifest.name),
        total,
        progress.clone(),
        false,
    );

    let summary = if let Some(target) = &a.target {
        let s = restore_tree(&repo, &manifest, target, &a.include, progress.clone()).await?;
        json!({"snapshot": manifest.name, "target": target, "files": s.files, "dirs": s.dirs, "symlinks": s.symlinks, "bytes": s.bytes})
    } else {
        if manifest.source == Source::Tree {
            return Err(usage(format!(
                "snapshot {} is a directory tree; restore it with --target DIR",
                manifest.name
            )));
        }
        let bytes = match &a.output {
            Some(path) => restore_to_file(&repo, &manifest, path, progress.clone()).await?,
            None => {
                let out = BufWriter::with_capacity(1 << 20, std::io::stdout());
                repo.restore_stream(&manifest, DATA_STREAM, out, progress.clone())
                    .await?;
                manifest.stats.logical_bytes
            }
        };
        json!({"snapshot": manifest.name, "output": a.output.as_ref().map(|p| p.display().to_string()).unwrap_or("-".into()), "bytes": bytes})
    };
    drop(bar);
    let secs = started.elapsed().as_secs_f64();
    // With --stdout the data owns stdout, so the summary goes to stderr.
    if g.json && !a.stdout {
        output::json(&summary);
    } else if g.json {
        eprintln!("{summary}");
    } else {
        let bytes = summary["bytes"].as_u64().unwrap_or(0);
        let line = format!(
            "restored {} ({}) in {secs:.1}s, {}/s",
            manifest.name,
            output::bytes(bytes),
            output::bytes((bytes as f64 / secs.max(0.001)) as u64)
        );
        if a.stdout {
            eprintln!("{line}");
        } else {
            println!("{line}");
        }
    }
    Ok(ExitCode::SUCCESS)
}

async fn restore_to_file(
    repo: &Repository,
    m: &Manifest,
    path: &Path,
    progress: Arc<Progress>,
) -> Result<u64> {
    if path.symlink_metadata().is_ok() {
        return Err(usage(format!(
            "{} already exists; choose another --output or remove it",
            path.display()
        )));
    }
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!(".{name}.bulwark-partial-{}", std::process::id()));
    let file = File::create(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
    let result = async {
        let out = repo
            .restore_stream(
                m,
                DATA_STREAM,
                BufWriter::with_capacity(1 << 20, file),
                progress,
            )
            .await?;
        let file = out.into_inner().map_err(|e| e.into_error())?;
        file.sync_all()?;
        std::fs::rename(&tmp, path).with_context(|| format!("renaming into {}", path.display()))?;
        anyhow::Ok(())
    }
    .await;
    if let Err(e) = result {
        let _ = std::fs::remove_file(&tmp);
        return Err(e.context(format!(
            "restore of {} failed; {} was not created",
            m.name,
            path.display()
        )));
    }
    Ok(m.stats.logical_bytes)
}
