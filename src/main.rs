//! The `accrue` command line: `serve`, `migrate`, `keys create`.

use accrue::catalog::meters::MeterCatalog;
use accrue::config::Config;
use accrue::domain::clock::Clock;
use accrue::domain::scope::Scope;
use accrue::services::{auth, Ctx};
use accrue::{http, store};
use anyhow::Context;
use chrono::{DateTime, Utc};
use clap::{Parser, Subcommand};
use std::sync::Arc;

#[derive(Parser)]
#[command(
    name = "accrue",
    version,
    about = "Usage metering and hybrid billing for product-led SaaS"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Create the database if missing, run migrations, and serve the HTTP API.
    Serve,
    /// Run pending database migrations and exit.
    Migrate,
    /// Manage API keys.
    Keys {
        #[command(subcommand)]
        command: KeysCommand,
    },
}

#[derive(Subcommand)]
enum KeysCommand {
    /// Create a key and print it (once) on stdout; only its hash is stored.
    Create {
        /// A name saying who uses the key ("web-backend").
        #[arg(long)]
        name: String,
        /// Comma-separated scopes: ingest, check, billing, finance, admin.
        #[arg(long)]
        scopes: String,
        /// Restrict the key to one account.
        #[arg(long)]
        account: Option<String>,
    },
}

/// The one place that reads the system clock.
struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> DateTime<Utc> {
        Utc::now()
    }
}

fn main() -> std::process::ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let config = Config::from_env().map_err(anyhow::Error::msg)?;
    match cli.command {
        Command::Serve => serve(config).await,
        Command::Migrate => {
            store::ensure_database(&config.database_url).await?;
            let ran = store::run_migrations(&config.database_url).await?;
            eprintln!("migrations: {ran} applied");
            Ok(())
        }
        Command::Keys {
            command:
                KeysCommand::Create {
                    name,
                    scopes,
                    account,
                },
        } => {
            let scopes = Scope::parse_list(&scopes).map_err(anyhow::Error::msg)?;
            store::ensure_database(&config.database_url).await?;
            store::run_migrations(&config.database_url).await?;
            let pool = store::pool(&config.database_url, 1)?;
            let user = std::env::var("USER").unwrap_or_else(|_| "cli".into());
            let key = auth::create_key(
                &pool,
                &name,
                &scopes,
                account.as_deref(),
                &format!("cli:{user}"),
            )
            .await
            .map_err(|e| anyhow::anyhow!("{e}"))?;
            println!("{key}");
            Ok(())
        }
    }
}

async fn serve(config: Config) -> anyhow::Result<()> {
    let meters = MeterCatalog::load(&config.plans_dir)?;
    store::ensure_database(&config.database_url)
        .await
        .context("preparing the database")?;
    let ran = store::run_migrations(&config.database_url).await?;
    let pool = store::pool(&config.database_url, config.pool_size)?;
    let ctx = Ctx::new(pool, meters, Arc::new(SystemClock));
    let listener = std::net::TcpListener::bind(&config.bind)
        .with_context(|| format!("cannot listen on {}", config.bind))?;
    tracing::info!(bind = %config.bind, migrations = ran, meters = ctx.meters.all().len(), "accrue serving");
    http::server(ctx, listener, None)?.await?;
    tracing::info!("accrue stopped");
    Ok(())
}
