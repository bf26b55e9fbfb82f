//! Command-line interface: one module per command, all sharing the global options, the way a
//! repository is opened, and how results are printed (`--json` for scripts, text for people).

mod backup;
mod check;
mod drill;
mod enroll;
mod gc;
mod output;
mod prune;
mod repo;
mod restore;
mod run;
mod snapshots;
mod verify;
mod wal;

pub(crate) use enroll::declared_databases;
pub(crate) use repo::MACHINE_KEY_KDF;

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Result;
use bulwark_core::backend::DynBackend;
use bulwark_core::error::ErrorClass;
use bulwark_core::repo::{lease, Repository};
use clap::{Parser, Subcommand};

use crate::config::{AgentConfig, BackupMethod, ConfigError, DatabaseConfig, DEFAULT_CONFIG};
use crate::drivers::{driver_for, Driver, DriverError};

const EXIT_HELP: &str = "\
Exit codes: 0 success, 1 operation failed (storage, I/O), 2 invalid usage, 3 repository damaged \
(authentication or hash failure, missing object), 4 wrong passphrase, 130 interrupted.

Configuration: --config FILE (default /etc/bulwark/agent.toml, or BULWARK_CONFIG) declares the \
repository and the databases; --repo and --password-file override its [repository] section.

Environment: BULWARK_REPO (repository), BULWARK_PASSWORD_FILE or BULWARK_PASSWORD (passphrase), \
BULWARK_S3_ENDPOINT and the AWS_* variables (S3), BULWARK_LOG (log filter, e.g. debug).";

#[derive(Parser, Debug)]
#[command(
    name = "bulwark-agent",
    version,
    about = "Back up databases into an encrypted, deduplicating Bulwark repository",
    long_about = "Back up databases into an encrypted, deduplicating Bulwark repository.\n\n\
A repository is a directory (local, NFS or CephFS) or an S3 bucket prefix (s3://bucket/prefix). \
Data is cut into content-defined chunks, named by a keyed hash, compressed with zstd and \
encrypted with XChaCha20-Poly1305; unchanged chunks are never stored twice.\n\n\
Quick start:\n  bulwark-agent repo init --repo /srv/backup --password-file pw\n  \
pg_dump mydb | bulwark-agent backup --repo /srv/backup --password-file pw --database mydb --stdin\n  \
bulwark-agent snapshots --repo /srv/backup --password-file pw\n  \
bulwark-agent restore latest --database mydb --repo /srv/backup --password-file pw --stdout | psql",
    after_help = EXIT_HELP
)]
pub struct Cli {
    #[command(flatten)]
    global: Global,
    #[command(subcommand)]
    command: Command,
}

#[derive(clap::Args, Debug, Clone, Default)]
pub struct Global {
    /// Agent configuration: the repository and the databases of this host
    #[arg(long, global = true, env = "BULWARK_CONFIG", value_name = "FILE")]
    config: Option<PathBuf>,
    /// The loaded configuration (filled in before a command runs).
    #[arg(skip)]
    pub(crate) settings: AgentConfig,
    /// Repository: a directory path or s3://bucket/prefix
    #[arg(long, global = true, env = "BULWARK_REPO", value_name = "LOCATION")]
    repo: Option<String>,
    /// File holding the repository passphrase (first line). Or set BULWARK_PASSWORD.
    #[arg(
        long,
        global = true,
        env = "BULWARK_PASSWORD_FILE",
        value_name = "FILE"
    )]
    password_file: Option<PathBuf>,
    /// Print one JSON document on stdout instead of text (for scripts)
    #[arg(long, global = true)]
    json: bool,
    /// No progress bar even on a terminal
    #[arg(long, global = true)]
    no_progress: bool,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Create a repository or manage its key slots
    #[command(subcommand)]
    Repo(repo::RepoCommand),
    /// Write one snapshot from standard input or a directory
    Backup(backup::Args),
    /// List snapshots with their size, newly stored bytes and dedup ratio
    Snapshots(snapshots::Args),
    /// Restore a snapshot to standard output, a file, or a directory
    Restore(restore::Args),
    /// Restore drill: the newest snapshot restored into a private scratch instance, checked, timed (RTO), removed
    #[command(long_about = drill::LONG_ABOUT)]
    Drill(drill::Args),
    /// Read back and authenticate every chunk of snapshots
    Verify(verify::Args),
    /// Delete snapshots that the retention rules no longer keep
    Prune(prune::Args),
    /// Delete chunks that no snapshot references
    Gc(gc::Args),
    /// Archive one WAL file (PostgreSQL archive_command = 'bulwark-agent wal-push --database ID %p')
    WalPush(wal::PushArgs),
    /// Fetch one archived WAL file (restore_command = 'bulwark-agent wal-fetch --database ID %f %p')
    WalFetch(wal::FetchArgs),
    /// Check that configured databases can be backed up (reachable, credentials, tools)
    Check(check::Args),
    /// Join a control plane with a one-time token: key pair made here, certificate stored in the state dir
    Enroll(enroll::EnrollArgs),
    /// Report to the control plane once over mutual TLS; renews the certificate when due
    Heartbeat(enroll::HeartbeatArgs),
    /// Run as the daemon: heartbeats, jobs from the control plane, results delivered reliably
    Run(run::RunArgs),
}

pub fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    // The daemon handles SIGTERM itself (it finishes or aborts its backup and reports it); a
    // drill stops and removes its scratch instance first.
    let own_signals = matches!(cli.command, Command::Run(_) | Command::Drill(_));
    let result = runtime.block_on(async {
        let result = if own_signals {
            run(cli).await
        } else {
            tokio::select! {
                r = run(cli) => r,
                _ = shutdown_signal() => Err(anyhow::Error::new(Interrupted)),
            }
        };
        // Whatever ended the command (success, error, signal), no lease outlives it: the
        // futures that held them are gone, and their destructors' tasks would not run once the
        // runtime shuts down. A second signal meanwhile exits at once.
        tokio::select! {
            _ = lease::release_all(std::time::Duration::from_secs(10)) => {}
            _ = shutdown_signal() => {}
        }
        result
    });
    runtime.shutdown_timeout(std::time::Duration::from_millis(500));
    match result {
        Ok(code) => code,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::from(exit_code(&err))
        }
    }
}

/// SIGINT or SIGTERM arrived before the command finished.
#[derive(Debug)]
struct Interrupted;

impl std::fmt::Display for Interrupted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(
            "interrupted: nothing was committed (chunks already stored are reclaimed by `gc`)",
        )
    }
}

impl std::error::Error for Interrupted {}

async fn shutdown_signal() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}

fn exit_code(err: &anyhow::Error) -> u8 {
    if err.downcast_ref::<Interrupted>().is_some() {
        return 130;
    }
    if err.downcast_ref::<UsageError>().is_some() || err.downcast_ref::<ConfigError>().is_some() {
        return 2;
    }
    if let Some(e) = err.chain().find_map(|e| e.downcast_ref::<DriverError>()) {
        match e {
            DriverError::Repository(inner) => return class_code(inner.class()),
            e if e.is_usage() => return 2,
            _ => return 1,
        }
    }
    match err
        .chain()
        .find_map(|e| e.downcast_ref::<bulwark_core::Error>())
    {
        Some(e) => class_code(e.class()),
        None => 1,
    }
}

fn class_code(class: ErrorClass) -> u8 {
    match class {
        ErrorClass::Usage => 2,
        ErrorClass::Integrity => 3,
        ErrorClass::Passphrase => 4,
        ErrorClass::Storage => 1,
    }
}

/// A mistake in how the command was called, found after argument parsing.
#[derive(Debug)]
pub struct UsageError(pub String);

impl std::fmt::Display for UsageError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for UsageError {}

pub fn usage(msg: impl Into<String>) -> anyhow::Error {
    anyhow::Error::new(UsageError(msg.into()))
}

fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("BULWARK_LOG").unwrap_or_else(|_| {
        tracing_subscriber::EnvFilter::new("warn,bulwark_core=info,bulwark_agent=info")
    });
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false)
        .init();
}

async fn run(cli: Cli) -> Result<ExitCode> {
    let mut g = cli.global;
    let (path, explicit) = match &g.config {
        Some(p) => (p.clone(), true),
        None => (PathBuf::from(DEFAULT_CONFIG), false),
    };
    g.settings = AgentConfig::load(&path, explicit)?;
    match cli.command {
        Command::Repo(c) => repo::run(&g, c).await,
        Command::Backup(a) => backup::run(&g, a).await,
        Command::Snapshots(a) => snapshots::run(&g, a).await,
        Command::Restore(a) => restore::run(&g, a).await,
        Command::Drill(a) => drill::run(&g, a).await,
        Command::Verify(a) => verify::run(&g, a).await,
        Command::Prune(a) => prune::run(&g, a).await,
        Command::Gc(a) => gc::run(&g, a).await,
        Command::WalPush(a) => wal::push(&g, a).await,
        Command::WalFetch(a) => wal::fetch(&g, a).await,
        Command::Check(a) => check::run(&g, a).await,
        Command::Enroll(a) => enroll::enroll(&g, a).await,
        Command::Heartbeat(a) => enroll::heartbeat(&g, a).await,
        Command::Run(a) => run::run(&g, a).await,
    }
}

impl Global {
    pub(crate) fn location(&self) -> Result<&str> {
        self.repo
            .as_deref()
            .or(self.settings.repository.location.as_deref())
            .ok_or_else(|| {
                usage("no repository given: pass --repo LOCATION, set BULWARK_REPO, or set [repository] location in the agent configuration")
            })
    }

    /// The path of the configuration in use (for commands written into other programs'
    /// settings, such as a restored cluster's restore_command).
    pub(crate) fn config_path(&self) -> PathBuf {
        self.config
            .clone()
            .unwrap_or_else(|| PathBuf::from(DEFAULT_CONFIG))
    }

    /// A database declared in the configuration, with its driver.
    pub(crate) fn database(&self, id: &str) -> Result<(&DatabaseConfig, Box<dyn Driver>)> {
        let db = self.settings.database(id).ok_or_else(|| {
            usage(format!(
                "database {id:?} is not declared in the agent configuration {} (add a [[databases]] entry, or use --stdin / --path for ad-hoc backups)",
                self.settings.path.display()
            ))
        })?;
        Ok((db, driver_for(db)?))
    }

    /// The repository's storage, with transient failures retried.
    pub(crate) fn backend(&self, create: bool) -> Result<DynBackend> {
        open_backend(self.location()?, create)
    }

    /// The flags (or their variables) that named the repository and its passphrase file, for a
    /// command another program runs later (a restored cluster's restore_command). Paths are made
    /// absolute: that program runs elsewhere.
    pub(crate) fn repository_args(&self) -> Vec<String> {
        let absolute = |p: &Path| std::fs::canonicalize(p).unwrap_or_else(|_| p.to_path_buf());
        let mut args = Vec::new();
        if let Some(repo) = &self.repo {
            let local = !repo.contains("://");
            args.push("--repo".to_string());
            args.push(if local {
                absolute(Path::new(repo)).to_string_lossy().into_owned()
            } else {
                repo.clone()
            });
        }
        if let Some(file) = &self.password_file {
            args.push("--password-file".to_string());
            args.push(absolute(file).to_string_lossy().into_owned());
        }
        args
    }

    /// Whether `--repo` / BULWARK_REPO named the repository (over anything configured).
    pub(crate) fn repo_named(&self) -> bool {
        self.repo.is_some()
    }

    async fn open(&self) -> Result<Repository> {
        let backend = self.backend(false)?;
        let pass = self.passphrase()?;
        let repo = Repository::open(backend, &pass).await?;
        for slot in repo.damaged_slots() {
            eprintln!("warning: key slot {slot} is damaged; remove it with `repo key remove` once you have checked it");
        }
        Ok(repo)
    }

    pub(crate) fn passphrase(&self) -> Result<Vec<u8>> {
        let configured = self.settings.repository.password_file.as_deref();
        let (file, named_by) = match (self.password_file.as_deref(), configured) {
            (Some(f), _) => (
                Some(f),
                "--password-file / BULWARK_PASSWORD_FILE".to_string(),
            ),
            (None, Some(f)) => (
                Some(f),
                format!(
                    "[repository] password_file in {}",
                    self.settings.path.display()
                ),
            ),
            (None, None) => (None, String::new()),
        };
        read_secret_named(file, "BULWARK_PASSWORD", "--password-file", &named_by)
    }

    fn progress(&self) -> bool {
        use std::io::IsTerminal;
        !self.json && !self.no_progress && std::io::stderr().is_terminal()
    }
}

/// A passphrase from a file (its first line) or an environment variable.
fn read_secret(file: Option<&std::path::Path>, env: &str, flag: &str) -> Result<Vec<u8>> {
    read_secret_named(file, env, flag, flag)
}

/// [`read_secret`], where `named_by` says where the file's name came from. A file that cannot
/// be read is a usage error (exit 2): the command was pointed at the wrong place.
fn read_secret_named(
    file: Option<&std::path::Path>,
    env: &str,
    flag: &str,
    named_by: &str,
) -> Result<Vec<u8>> {
    let secret = match file {
        Some(path) => {
            let text = std::fs::read(path).map_err(|e| {
                usage(format!(
                    "cannot read the passphrase file {} (named by {named_by}): {e}; correct the path, or unset it and set {env}",
                    path.display()
                ))
            })?;
            let line = text.split(|b| *b == b'\n').next().unwrap_or_default();
            line.strip_suffix(b"\r").unwrap_or(line).to_vec()
        }
        None => match std::env::var_os(env) {
            Some(v) => std::os::unix::ffi::OsStrExt::as_bytes(v.as_os_str()).to_vec(),
            None => {
                return Err(usage(format!(
                    "no passphrase: pass {flag} FILE or set {env}"
                )))
            }
        },
    };
    if secret.is_empty() {
        return Err(usage(format!(
            "the passphrase given by {flag} / {env} is empty"
        )));
    }
    Ok(secret)
}

/// The storage at `location` (a directory, `s3://…` or `nfs://…`), with transient failures
/// retried.
pub(crate) fn open_backend(location: &str, create: bool) -> Result<DynBackend> {
    if bulwark_nfs::is_nfs_location(location) {
        // The built-in userspace client: it mounts on the first call.
        return Ok(bulwark_nfs::open_lazy(location, create)?);
    }
    Ok(bulwark_core::backend::open(location, create)?)
}

/// `--method`: the shared [`BackupMethod`] names, listed in `--help`.
fn method_parser() -> impl clap::builder::TypedValueParser<Value = BackupMethod> {
    use clap::builder::TypedValueParser;
    clap::builder::PossibleValuesParser::new(BackupMethod::ALL.map(|m| m.as_str()))
        .try_map(|s| s.parse::<BackupMethod>())
}
