//! The `bulwark-control-plane` command line: `serve` runs the server, `admin bootstrap` makes the
//! first platform-admin token on the server host (never through an open endpoint), `openapi`
//! prints the API description.
//!
//! Exit codes: 0 success, 1 runtime failure, 2 bad usage or configuration, 3 already
//! bootstrapped.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};

use crate::config::{self, LogFormat, Overrides, RawConfig};
use crate::domain::audit::Actor;
use crate::domain::authz::{Role, RoleBinding};
use crate::domain::new_id;
use crate::domain::user::{new_secret, Token, User};
use crate::store::{users, Store};

#[derive(Parser)]
#[command(
    name = "bulwark-control-plane",
    version,
    about = "Bulwark control plane: the HTTPS API over workspaces, databases, backup policies, the backup catalog and the audit log"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the HTTPS server until SIGINT or SIGTERM.
    Serve {
        /// Configuration file (TOML). Without this flag, /etc/bulwark/control-plane.toml is read
        /// if it exists.
        #[arg(long, value_name = "FILE")]
        config: Option<PathBuf>,
        /// Address to listen on, e.g. 0.0.0.0:8443 (overrides `listen` in the file).
        #[arg(long, value_name = "ADDR")]
        listen: Option<String>,
        /// Where the state file and the self-signed certificate live (overrides `data_dir`).
        #[arg(long, value_name = "DIR")]
        data_dir: Option<PathBuf>,
    },
    /// Administration on the server host.
    Admin {
        #[command(subcommand)]
        command: AdminCommand,
    },
    /// Print the OpenAPI 3 document of the API.
    Openapi,
}

#[derive(Subcommand)]
enum AdminCommand {
    /// Create the first platform admin and print its API token, once. Run it with the server
    /// stopped (the state file is locked while the server runs).
    Bootstrap {
        #[arg(long, value_name = "DIR")]
        data_dir: PathBuf,
        /// Name of the admin user.
        #[arg(long, default_value = "admin")]
        name: String,
        /// Print {"user_id", "token_id", "token"} as JSON.
        #[arg(long)]
        json: bool,
    },
}

pub fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            return if e.use_stderr() {
                ExitCode::from(2)
            } else {
                ExitCode::SUCCESS
            };
        }
    };
    match cli.command {
        Command::Serve {
            config,
            listen,
            data_dir,
        } => serve(config, Overrides { listen, data_dir }),
        Command::Admin {
            command:
                AdminCommand::Bootstrap {
                    data_dir,
                    name,
                    json,
                },
        } => {
            init_logging(LogFormat::Text);
            bootstrap(&data_dir, &name, json)
        }
        Command::Openapi => {
            println!(
                "{}",
                serde_json::to_string_pretty(&crate::api::openapi()).expect("serialises")
            );
            ExitCode::SUCCESS
        }
    }
}

fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Json => builder.json().try_init(),
        LogFormat::Text => builder.try_init(),
    };
}

fn serve(config_path: Option<PathBuf>, overrides: Overrides) -> ExitCode {
    let explicit = config_path.is_some();
    let path = config_path.unwrap_or_else(|| PathBuf::from(config::DEFAULT_CONFIG));
    let settings = match RawConfig::load(&path, explicit)
        .and_then(|raw| raw.validate(&path.display().to_string(), &overrides))
    {
        Ok(s) => s,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    init_logging(settings.log_format);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result: anyhow::Result<()> = runtime.block_on(async {
        let (listener, tls, state) = crate::server::start(&settings)
            .await
            .context("cannot start the control plane")?;
        crate::server::serve(listener, tls, state, shutdown_signal()).await;
        Ok(())
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).expect("installing a SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
    tracing::info!("shutdown requested");
}

fn bootstrap(data_dir: &std::path::Path, name: &str, json: bool) -> ExitCode {
    match try_bootstrap(data_dir, name) {
        Ok(Some((user, token, secret))) => {
            if json {
                println!(
                    "{}",
                    serde_json::json!({"user_id": user.id, "token_id": token.id, "token": secret})
                );
            } else {
                println!("Created platform admin '{}' ({}).", user.name, user.id);
                println!("API token (shown only now; keep it secret):\n{secret}");
            }
            ExitCode::SUCCESS
        }
        Ok(None) => {
            eprintln!(
                "error: {} already has a platform admin; create further users and tokens through the API",
                data_dir.display()
            );
            ExitCode::from(3)
        }
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Creates the first platform admin and a token for it; `None` if one exists already.
pub fn try_bootstrap(
    data_dir: &std::path::Path,
    name: &str,
) -> anyhow::Result<Option<(User, Token, String)>> {
    crate::server::create_private_dir(data_dir)?;
    crate::files::make_private(data_dir)?;
    let store = Store::open(data_dir)?;
    if users::has_platform_admin(&store.read()?)? {
        return Ok(None);
    }
    let now = chrono::Utc::now();
    let user = User {
        id: new_id("usr"),
        name: name.to_string(),
        email: None,
        workspace_id: None,
        roles: vec![RoleBinding {
            role: Role::PlatformAdmin,
            workspace_id: None,
            database_id: None,
        }],
        created_at: now,
        updated_at: now,
    };
    let token = Token {
        id: new_id("tok"),
        user_id: user.id.clone(),
        name: "bootstrap".into(),
        created_at: now,
        expires_at: None,
    };
    let (secret, hash) = new_secret();
    let actor = Actor {
        kind: "system".into(),
        id: "bootstrap".into(),
        name: "admin bootstrap".into(),
    };
    let (u, t) = (user.clone(), token.clone());
    store
        .write_blocking(actor, move |tx| {
            // Re-checked inside the transaction: two bootstraps racing must not both succeed.
            if users::has_platform_admin_tx(tx)? {
                return Err(crate::store::StoreError::Conflict(
                    "already bootstrapped".into(),
                ));
            }
            tx.create_user(&u)?;
            tx.create_token(&t, &hash, None)
        })
        .context("cannot record the platform admin")?;
    Ok(Some((user, token, secret)))
}
