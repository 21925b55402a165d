//! The `accrue` command line: `serve`, `migrate`, `keys` (create, list, revoke, rotate), `plans` (validate, publish, diff,
//! migrate), `price`, `quote`, `report nrr`, `export invoices`, `demo`, `revops check`.

use accrue::catalog::meters::MeterCatalog;
use accrue::catalog::plans::{parse_plan_file, PlanCatalog};
use accrue::config::Config;
use accrue::domain::clock::Clock;
use accrue::domain::plan::PlanRef;
use accrue::domain::rating::rate_period;
use accrue::domain::scope::Scope;
use accrue::services::{auth, Ctx};
use accrue::{http, store};
use anyhow::Context;
use chrono::{DateTime, Datelike, Utc};
use clap::{Parser, Subcommand};
use rust_decimal::Decimal;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
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
    /// Print the shell completion script (`accrue completions bash > /etc/bash_completion.d/accrue`).
    Completions {
        /// bash, zsh, fish, elvish or powershell.
        shell: clap_complete::Shell,
    },
    /// Print the OpenAPI 3.1 document the server answers at `/openapi.json` (no database needed).
    Openapi,
    /// Run pending database migrations and exit.
    Migrate,
    /// Manage API keys.
    Keys {
        #[command(subcommand)]
        command: KeysCommand,
    },
    /// Validate, publish and compare the versioned plan catalogue.
    Plans {
        #[command(subcommand)]
        command: PlansCommand,
    },
    /// Rate one period of a plan version for given usage, offline; prints JSON.
    Price {
        /// A catalogue version, e.g. `team@2` (read from ACCRUE_PLANS_DIR).
        #[arg(
            long,
            conflicts_with = "plan_file",
            required_unless_present = "plan_file"
        )]
        plan: Option<String>,
        /// A plan file anywhere, e.g. `pricing-plans/team/v3.toml`.
        #[arg(long)]
        plan_file: Option<PathBuf>,
        /// Usage as meter=quantity; repeat for each meter.
        #[arg(long = "usage", value_name = "METER=QUANTITY")]
        usage: Vec<String>,
        /// Seats (default: the plan's minimum).
        #[arg(long)]
        seats: Option<u32>,
    },
    /// Simulate a product-led company in its own database (`accrue_demo` beside DATABASE_URL's)
    /// and print its invoices, MRR, NRR by month, funnel and hot PQL queue.
    Demo {
        /// Accounts to simulate.
        #[arg(long, default_value_t = 2500)]
        accounts: usize,
        /// Months to run the billing cycle through.
        #[arg(long, default_value_t = 6)]
        months: u32,
        #[arg(long, default_value_t = 42)]
        seed: u64,
        /// The database to (re)create for the demo.
        #[arg(long)]
        database_url: Option<String>,
    },
    /// Check the RevOps configuration (PQL rubric, tiers, segments, routing).
    Revops {
        #[command(subcommand)]
        command: RevopsCommand,
    },
    /// Reports over the revenue ledger.
    Report {
        #[command(subcommand)]
        command: ReportCommand,
    },
    /// What finance takes out of accrue.
    Export {
        #[command(subcommand)]
        command: ExportCommand,
    },
    /// Prorate a change at an instant of a period, offline; prints the lines as JSON.
    Quote {
        /// The current plan version (`team@1`) ...
        #[arg(long, conflicts_with = "plan_file")]
        plan: Option<String>,
        /// ... or its file.
        #[arg(long)]
        plan_file: Option<PathBuf>,
        /// Current seats (default: the current plan's minimum).
        #[arg(long)]
        seats: Option<u32>,
        /// The new plan version (default: the current one) ...
        #[arg(long, conflicts_with = "to_plan_file")]
        to_plan: Option<String>,
        /// ... or its file.
        #[arg(long)]
        to_plan_file: Option<PathBuf>,
        /// New seats (default: the current seats, at least the new plan's minimum).
        #[arg(long)]
        to_seats: Option<u32>,
        /// `now` or `period_end` (default: as the API decides: a decrease waits for the period
        /// end unless the current plan says `immediate_credit`).
        #[arg(long, value_parser = ["now", "period_end"])]
        effective: Option<String>,
        /// Start of the current period (RFC 3339).
        #[arg(long)]
        period_start: DateTime<Utc>,
        /// End of the current period (RFC 3339).
        #[arg(long)]
        period_end: DateTime<Utc>,
        /// The instant of the change (RFC 3339).
        #[arg(long)]
        at: DateTime<Utc>,
    },
}

#[derive(Subcommand)]
enum RevopsCommand {
    /// Validate the file (default: ACCRUE_REVOPS_FILE); each problem names its field.
    Check { file: Option<PathBuf> },
}

#[derive(Subcommand)]
enum ReportCommand {
    /// Net and gross revenue retention of the accounts that had MRR at --from.
    Nrr {
        /// Window start (RFC 3339 or YYYY-MM-DD, UTC).
        #[arg(long)]
        from: String,
        /// Window end, exclusive.
        #[arg(long)]
        to: String,
        /// One window per calendar month.
        #[arg(long)]
        by_month: bool,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
}

fn instant(s: &str, what: &str) -> anyhow::Result<DateTime<Utc>> {
    if let Ok(t) = DateTime::parse_from_rfc3339(s) {
        return Ok(t.with_timezone(&Utc));
    }
    chrono::NaiveDate::parse_from_str(s, "%Y-%m-%d")
        .ok()
        .and_then(|d| d.and_hms_opt(0, 0, 0))
        .map(|d| d.and_utc())
        .ok_or_else(|| anyhow::anyhow!("{what} `{s}`: expected RFC 3339 or YYYY-MM-DD"))
}

async fn demo(
    config: &Config,
    accounts: usize,
    months: u32,
    seed: u64,
    database_url: Option<String>,
) -> anyhow::Result<()> {
    if !(1..=100_000).contains(&accounts) || !(1..=24).contains(&months) {
        anyhow::bail!("--accounts must be 1 to 100000 and --months 1 to 24");
    }
    let url = match database_url {
        Some(u) => u,
        None => store::with_database_name(&config.database_url, "accrue_demo")?,
    };
    let (meters, plans) = load_catalogue(&config.plans_dir)?;
    eprintln!("accrue demo: a fresh database at {url}");
    store::recreate_database(&url)
        .await
        .with_context(|| format!("recreating the demo database {url}"))?;
    store::run_migrations(&url).await?;
    let pool = store::pool(&url, 8)?;
    let first = Utc::now()
        .date_naive()
        .with_day(1)
        .and_then(|d| d.checked_sub_months(chrono::Months::new(months)))
        .and_then(|d| d.and_hms_opt(0, 0, 0))
        .map(|d| d.and_utc())
        .ok_or_else(|| anyhow::anyhow!("cannot place the demo in time"))?;
    let clock = Arc::new(accrue::domain::clock::ManualClock::new(first));
    // Cards are simulated (no Stripe keys needed): a few decline and go through dunning.
    let ctx = Ctx::new(
        pool,
        meters,
        plans,
        clock.clone(),
        4,
        config.check_staleness,
    )
    .refreshing()
    .with_payments(accrue::demo::Payments::simulated(config.dunning.clone()));
    let revops = accrue::services::pql::load_config(&config.revops_file, &ctx.meters)
        .map_err(anyhow::Error::msg)?;
    ctx.pql.set_config(revops);
    let started = std::time::Instant::now();
    let cfg = accrue::demo::DemoConfig {
        accounts,
        months,
        seed,
    };
    let mut out = std::io::stdout();
    accrue::demo::run(&ctx, &clock, &cfg, &mut out).await?;
    // A key to explore it with, so the next command works as printed.
    let key = accrue::services::auth::create_key(
        &ctx.pool,
        "demo",
        &[accrue::domain::scope::Scope::Admin],
        None,
        "demo",
    )
    .await
    .map_err(|e| anyhow::anyhow!("{e}"))?;
    eprintln!(
        "\ndone in {:.1} s. Explore the company it made:\n  \
         DATABASE_URL={url} accrue serve &\n  \
         export KEY={key}    # an admin key of the demo database\n  \
         curl -s \"localhost:8080/v1/pql?tier=hot\" -H \"Authorization: Bearer $KEY\"",
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

async fn report_nrr(
    config: &Config,
    from: &str,
    to: &str,
    by_month: bool,
    json: bool,
) -> anyhow::Result<()> {
    let (from, to) = (instant(from, "--from")?, instant(to, "--to")?);
    let ctx = database_ctx(config).await?;
    let windows = accrue::services::revenue::nrr(&ctx, from, to, by_month)
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    if json {
        println!("{}", serde_json::to_string_pretty(&windows)?);
        return Ok(());
    }
    let pct = |x: Option<rust_decimal::Decimal>| {
        x.map_or("-".to_owned(), |v| {
            format!("{:.1} %", v * rust_decimal::Decimal::from(100))
        })
    };
    println!(
        "{:<12} {:<12} {:>4} {:>14} {:>12} {:>12} {:>12} {:>14} {:>8} {:>8} {:>8}",
        "from",
        "to",
        "cur",
        "starting",
        "expansion",
        "contraction",
        "churn",
        "ending",
        "NRR",
        "GRR",
        "accounts"
    );
    for w in windows {
        let r = &w.retention;
        println!(
            "{:<12} {:<12} {:>4} {:>14} {:>12} {:>12} {:>12} {:>14} {:>8} {:>8} {:>8}",
            w.from.format("%Y-%m-%d"),
            w.to.format("%Y-%m-%d"),
            w.currency,
            r.starting_mrr.round_dp(2),
            r.expansion.round_dp(2),
            r.contraction.round_dp(2),
            r.churn.round_dp(2),
            r.ending_mrr.round_dp(2),
            pct(r.nrr),
            pct(r.grr),
            r.accounts
        );
    }
    Ok(())
}

async fn plans_migrate(
    config: &Config,
    from: &str,
    to: &str,
    dry_run: bool,
    now: bool,
    json: bool,
) -> anyhow::Result<()> {
    use accrue::services::migration::{migrate, When};
    let from: PlanRef = from.parse().map_err(anyhow::Error::msg)?;
    let to: PlanRef = to.parse().map_err(anyhow::Error::msg)?;
    let (meters, plans) = load_catalogue(&config.plans_dir)?;
    store::require_database(&config.database_url).await?;
    store::run_migrations(&config.database_url).await?;
    let pool = store::pool(&config.database_url, 2)?;
    let mut ctx = Ctx::new(
        pool.clone(),
        meters,
        plans,
        Arc::new(SystemClock),
        1,
        config.check_staleness,
    );
    if let Some(stripe) = &config.stripe {
        // Change invoices are collected by the servers' sweep, through Stripe.
        let payments = accrue::services::payments::Payments::connect(
            &pool,
            stripe,
            config.dunning.clone(),
            Utc::now(),
        )
        .await
        .map_err(|e| anyhow::anyhow!("connecting the Stripe rail: {e}"))?;
        ctx = ctx.with_payments(payments);
    }
    // The published versions (from any folder) are the catalogue, as on the servers.
    ctx.refresh_plans().await?;
    let user = std::env::var("USER").unwrap_or_else(|_| "cli".into());
    let when = if now { When::Now } else { When::AtRenewal };
    let report = migrate(&ctx, &from, &to, dry_run, when, &format!("cli:{user}"))
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    if json {
        println!("{}", serde_json::to_string_pretty(&report)?);
        return Ok(());
    }
    println!(
        "{} -> {} ({}{}), {} subscribers, amounts in {}",
        report.from,
        report.to,
        if report.dry_run { "dry run, " } else { "" },
        if now { "now" } else { "at renewal" },
        report.accounts.len(),
        report.currency
    );
    println!(
        "{:<24} {:>6} {:>14} {:>14} {:>12} {:>12} {:>12}  note",
        "account", "seats", "last period", "under new", "delta", "MRR before", "MRR after"
    );
    for l in &report.accounts {
        println!(
            "{:<24} {:>6} {:>14} {:>14} {:>12} {:>12} {:>12}  {}",
            l.account,
            l.seats,
            l.current_version_amount,
            l.new_version_amount,
            l.period_delta,
            l.mrr_before.round_dp(2),
            l.mrr_after.round_dp(2),
            l.skipped.as_deref().unwrap_or("")
        );
    }
    println!(
        "{:<24} {:>6} {:>14} {:>14} {:>12} {:>12} {:>12}",
        "total",
        "",
        report.total_current_version_amount,
        report.total_new_version_amount,
        report.total_period_delta,
        report.total_mrr_before.round_dp(2),
        report.total_mrr_after.round_dp(2)
    );
    if !report.dry_run {
        println!("migrated {} subscribers", report.migrated);
    }
    Ok(())
}

/// Where a plan version comes from on the command line.
fn plan_from_args(
    config: &Config,
    meters: &MeterCatalog,
    reference: Option<String>,
    file: Option<PathBuf>,
    what: &str,
) -> anyhow::Result<accrue::domain::plan::PlanVersion> {
    match (reference, file) {
        (_, Some(file)) => {
            let text = std::fs::read_to_string(&file)
                .with_context(|| format!("cannot read {}", file.display()))?;
            parse_plan_file(&file, &text, meters).map_err(|errors| {
                anyhow::anyhow!(
                    "{}",
                    errors
                        .iter()
                        .map(|e| e.to_string())
                        .collect::<Vec<_>>()
                        .join("\n")
                )
            })
        }
        (Some(r), None) => {
            let r: PlanRef = r.parse().map_err(anyhow::Error::msg)?;
            let (_, plans) = load_catalogue(&config.plans_dir)?;
            plans
                .get(&r)
                .cloned()
                .ok_or_else(|| anyhow::anyhow!("{r} is not in {}", config.plans_dir.display()))
        }
        (None, None) => anyhow::bail!("give the {what} plan as PLAN@VERSION or a file"),
    }
}

#[derive(Subcommand)]
enum ExportCommand {
    /// Usage events, in receipt order (those received a minute or more ago).
    Events(Incremental),
    /// Invoices in number order; or, with --month, their lines as CSV for a month's periods.
    Invoices {
        /// The month, e.g. `2026-11` (invoices whose period starts in it, one row per line).
        #[arg(long, conflicts_with_all = ["since", "format"])]
        month: Option<String>,
        #[command(flatten)]
        incremental: Incremental,
    },
    /// Invoice lines in (invoice number, line) order.
    Lines(Incremental),
    /// MRR movements in the order they were committed.
    Movements(Incremental),
    /// PQL tier and routing-zone changes in the order they were committed.
    Pql(Incremental),
}

/// An incremental export: everything after a cursor, and the cursor to resume from.
#[derive(clap::Args)]
struct Incremental {
    /// Resume after this cursor (the `next cursor` the previous export printed); none: from
    /// the beginning.
    #[arg(long)]
    since: Option<String>,
    /// csv (a header row, nested values as JSON) or jsonl (one JSON object per line).
    #[arg(long, default_value = "csv")]
    format: ExportFormat,
    /// Write to this file instead of stdout.
    #[arg(long)]
    out: Option<PathBuf>,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum ExportFormat {
    Csv,
    Jsonl,
}

#[derive(Subcommand)]
enum PlansCommand {
    /// Check every plan file; each problem names the file, the field and the rule.
    Validate {
        /// The catalogue directory (default: ACCRUE_PLANS_DIR).
        dir: Option<PathBuf>,
    },
    /// Store every version with its content hash; a changed published version is refused.
    Publish { dir: Option<PathBuf> },
    /// What changed between two versions, e.g. `accrue plans diff team@1 team@2`.
    Diff {
        from: String,
        to: String,
        /// Print the changes as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Move every subscriber of one version to another, e.g. `accrue plans migrate team@1
    /// team@2 --dry-run`: the dry run replays each subscriber's last closed period under the
    /// new version and prints the revenue impact; the real run moves them at renewal (default)
    /// or now (prorated), with revenue movements and an audit record.
    Migrate {
        from: String,
        to: String,
        /// Print the impact without changing anything.
        #[arg(long)]
        dry_run: bool,
        /// Move at each subscriber's next renewal (the default).
        #[arg(long, conflicts_with = "now")]
        at_renewal: bool,
        /// Move now, prorated like an upgrade or downgrade.
        #[arg(long)]
        now: bool,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
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
        /// When the key stops working (RFC 3339, e.g. 2027-06-30T00:00:00Z).
        #[arg(long)]
        expires_at: Option<DateTime<Utc>>,
    },
    /// List every key (id, prefix, name, scopes, account, expiry, last use, revocation).
    List,
    /// Revoke a key by id: every running instance refuses it within a second.
    Revoke { id: i64 },
    /// Replace a key by id with a new one (same name, scopes and account), printed once; the
    /// old one stops now, or after --grace (e.g. 1h, 30m, 7d) while the new one rolls out.
    Rotate {
        id: i64,
        #[arg(long, value_parser = parse_grace)]
        grace: Option<chrono::Duration>,
    },
}

/// A grace period: a number and a unit, `s`, `m`, `h` or `d` ("90m", "7d").
fn parse_grace(s: &str) -> Result<chrono::Duration, String> {
    let (n, unit) = s.split_at(s.len().saturating_sub(1));
    let n: i64 = n
        .parse()
        .map_err(|_| format!("`{s}`: expected a number and a unit (s, m, h, d), e.g. 1h"))?;
    match unit {
        "s" => Ok(chrono::Duration::seconds(n)),
        "m" => Ok(chrono::Duration::minutes(n)),
        "h" => Ok(chrono::Duration::hours(n)),
        "d" => Ok(chrono::Duration::days(n)),
        _ => Err(format!("`{s}`: the unit must be s, m, h or d")),
    }
}

/// The one place that reads the system clock.
struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> DateTime<Utc> {
        Utc::now()
    }
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    // Needs no configuration, database or runtime.
    if let Command::Openapi = cli.command {
        println!("{}", accrue::http::openapi_document());
        return std::process::ExitCode::SUCCESS;
    }
    if let Command::Completions { shell } = cli.command {
        use clap::CommandFactory;
        clap_complete::generate(shell, &mut Cli::command(), "accrue", &mut std::io::stdout());
        return std::process::ExitCode::SUCCESS;
    }
    // The demo draws a progress bar: only warnings unless RUST_LOG asks for more.
    let default_level = match cli.command {
        Command::Demo { .. } => "warn",
        _ => "info",
    };
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_level)),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    // The demo is one sequence of requests, each waiting on PostgreSQL: on one thread, its
    // connections' tasks answer it without a wake-up across threads at every round trip
    // (measured: a third of the demo's own CPU time went to switching threads).
    let mut builder = match cli.command {
        Command::Demo { .. } => tokio::runtime::Builder::new_current_thread(),
        _ => tokio::runtime::Builder::new_multi_thread(),
    };
    let runtime = match builder.enable_all().build() {
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
        Command::Completions { .. } | Command::Openapi => Ok(()),
        Command::Plans { command } => plans(&config, command).await,
        Command::Export { command } => {
            use accrue::services::exports::Entity;
            let (entity, inc) = match command {
                ExportCommand::Invoices {
                    month: Some(month),
                    incremental,
                } => return export_invoices(&config, &month, incremental.out).await,
                ExportCommand::Invoices { incremental, .. } => (Entity::Invoices, incremental),
                ExportCommand::Events(i) => (Entity::Events, i),
                ExportCommand::Lines(i) => (Entity::Lines, i),
                ExportCommand::Movements(i) => (Entity::Movements, i),
                ExportCommand::Pql(i) => (Entity::Pql, i),
            };
            export_incremental(&config, entity, inc).await
        }
        Command::Demo {
            accounts,
            months,
            seed,
            database_url,
        } => demo(&config, accounts, months, seed, database_url).await,
        Command::Revops {
            command: RevopsCommand::Check { file },
        } => {
            let file = file.unwrap_or_else(|| config.revops_file.clone());
            let meters = MeterCatalog::load(&config.plans_dir)?;
            let cfg =
                accrue::services::pql::load_config(&file, &meters).map_err(anyhow::Error::msg)?;
            println!(
                "{}: {} signals ({} points), tiers hot {} / warm {} / watching {}, {} zone raises",
                file.display(),
                cfg.signals.len(),
                cfg.signals.iter().map(|s| s.points).sum::<u32>(),
                cfg.tiers.hot,
                cfg.tiers.warm,
                cfg.tiers.watching,
                cfg.zone_raises.len()
            );
            Ok(())
        }
        Command::Report {
            command:
                ReportCommand::Nrr {
                    from,
                    to,
                    by_month,
                    json,
                },
        } => report_nrr(&config, &from, &to, by_month, json).await,
        Command::Quote {
            plan,
            plan_file,
            seats,
            to_plan,
            to_plan_file,
            to_seats,
            period_start,
            period_end,
            at,
            effective,
        } => {
            let meters = MeterCatalog::load(&config.plans_dir)?;
            let old = plan_from_args(&config, &meters, plan, plan_file, "current")?;
            let new = if to_plan.is_none() && to_plan_file.is_none() {
                old.clone()
            } else {
                plan_from_args(&config, &meters, to_plan, to_plan_file, "new (--to-plan)")?
            };
            if old.currency != new.currency {
                anyhow::bail!(
                    "{} bills in {}, {} in {}: a change cannot switch currency",
                    old.plan_ref(),
                    old.currency,
                    new.plan_ref(),
                    new.currency
                );
            }
            let period = accrue::domain::period::Period {
                start: period_start,
                end: period_end,
            };
            if period_start >= period_end || !(period_start <= at && at <= period_end) {
                anyhow::bail!("--at must lie within --period-start .. --period-end, and the period must not be empty");
            }
            // The API's own decisions (seat limits, downgrade timing, interval changes), with
            // the plan files (and what they suggest as upgrades) as the catalogue.
            use accrue::services::subscriptions::{
                change_terms, check_seats, default_seats, Effective,
            };
            let plans = load_catalogue(&config.plans_dir)
                .map(|(_, p)| p)
                .unwrap_or_default();
            let fail = |e: accrue::services::ServiceError| anyhow::anyhow!("{e}");
            let seats = seats.unwrap_or_else(|| old.seats.as_ref().map_or(0, |s| s.min));
            check_seats(&plans, &old, seats).map_err(fail)?;
            let to_seats = to_seats.unwrap_or_else(|| default_seats(seats, &new));
            check_seats(&plans, &new, to_seats).map_err(fail)?;
            let requested = effective.map(|e| {
                if e == "now" {
                    Effective::Now
                } else {
                    Effective::PeriodEnd
                }
            });
            let terms = change_terms(
                &old, seats, &new, to_seats, requested, false, &period, at, false,
            )
            .map_err(fail)?;
            let due: Decimal = terms.lines.iter().map(|l| l.amount).sum();
            let effective_at = match terms.effective {
                Effective::Now => at,
                Effective::PeriodEnd => period_end,
            };
            println!(
                "{}",
                serde_json::to_string_pretty(&serde_json::json!({
                    "kind": terms.kind,
                    "from": {"plan": old.plan, "version": old.version, "seats": seats},
                    "to": {"plan": new.plan, "version": new.version, "seats": to_seats},
                    "effective": terms.effective,
                    "effective_at": accrue::domain::ts::format(&effective_at),
                    "currency": old.currency,
                    "factor": accrue::domain::proration::remaining_factor(&period, at).round_dp(12).to_string(),
                    "lines": terms.lines,
                    "amount_due_now": old.currency.round(due).to_string(),
                    "new_period": terms.new_period,
                }))?
            );
            Ok(())
        }
        Command::Price {
            plan,
            plan_file,
            usage,
            seats,
        } => price(&config, plan, plan_file, &usage, seats),
        Command::Serve => serve(config).await,
        Command::Migrate => {
            store::ensure_database(&config.database_url).await?;
            let ran = store::run_migrations(&config.database_url).await?;
            eprintln!("migrations: {ran} applied");
            Ok(())
        }
        Command::Keys { command } => {
            store::require_database(&config.database_url).await?;
            store::run_migrations(&config.database_url).await?;
            let pool = store::pool(&config.database_url, 1)?;
            let user = std::env::var("USER").unwrap_or_else(|_| "cli".into());
            let by = format!("cli:{user}");
            let fail = |e: accrue::services::ServiceError| anyhow::anyhow!("{e}");
            match command {
                KeysCommand::Create {
                    name,
                    scopes,
                    account,
                    expires_at,
                } => {
                    let scopes = Scope::parse_list(&scopes).map_err(anyhow::Error::msg)?;
                    let key = auth::create_key_expiring(
                        &pool,
                        &name,
                        &scopes,
                        account.as_deref(),
                        &by,
                        expires_at,
                    )
                    .await
                    .map_err(fail)?;
                    println!("{key}");
                }
                KeysCommand::List => {
                    let mut after = None;
                    println!(
                        "{:>5}  {:<13} {:<20} {:<28} {:<12} {:<20} {:<20} {:<20}",
                        "id",
                        "prefix",
                        "name",
                        "scopes",
                        "account",
                        "expires",
                        "last used",
                        "revoked"
                    );
                    loop {
                        let page = auth::list_keys(&pool, after, 500).await.map_err(fail)?;
                        for k in &page {
                            let when = |t: Option<DateTime<Utc>>| {
                                t.map(|t| t.format("%Y-%m-%d %H:%M").to_string())
                                    .unwrap_or_else(|| "-".into())
                            };
                            println!(
                                "{:>5}  {:<13} {:<20} {:<28} {:<12} {:<20} {:<20} {:<20}",
                                k.id,
                                k.prefix,
                                k.name,
                                k.scopes.join(","),
                                k.account.as_deref().unwrap_or("-"),
                                when(k.expires_at),
                                when(k.last_used_at),
                                when(k.revoked_at)
                            );
                        }
                        match page.last() {
                            Some(k) if page.len() == 500 => after = Some(k.id),
                            _ => break,
                        }
                    }
                }
                KeysCommand::Revoke { id } => {
                    let k = auth::revoke_key(&pool, id).await.map_err(fail)?;
                    eprintln!("key {} ({}, {}) revoked", k.id, k.prefix, k.name);
                }
                KeysCommand::Rotate { id, grace } => {
                    let key = auth::rotate_key(&pool, id, grace, &by)
                        .await
                        .map_err(fail)?;
                    match grace {
                        Some(g) => eprintln!("key {id} stops in {} s", g.num_seconds()),
                        None => eprintln!("key {id} revoked"),
                    }
                    println!("{key}");
                }
            }
            Ok(())
        }
    }
}

/// Loads and validates meters and plans from `dir`, listing every problem.
fn load_catalogue(dir: &Path) -> anyhow::Result<(MeterCatalog, PlanCatalog)> {
    let meters = MeterCatalog::load(dir)?;
    let plans = PlanCatalog::load(dir, &meters).map_err(|errors| {
        let list: Vec<String> = errors.iter().map(|e| e.to_string()).collect();
        anyhow::anyhow!(
            "{} problem{} in the plan catalogue:\n{}",
            list.len(),
            if list.len() == 1 { "" } else { "s" },
            list.join("\n")
        )
    })?;
    Ok((meters, plans))
}

async fn plans(config: &Config, command: PlansCommand) -> anyhow::Result<()> {
    match command {
        PlansCommand::Validate { dir } => {
            let dir = dir.unwrap_or_else(|| config.plans_dir.clone());
            let (meters, plans) = load_catalogue(&dir)?;
            println!(
                "{}: {} meters, {} plan versions ({}) are valid",
                dir.display(),
                meters.all().len(),
                plans.all().count(),
                plans
                    .all()
                    .map(|v| v.plan_ref().to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            );
            Ok(())
        }
        PlansCommand::Publish { dir } => {
            let dir = dir.unwrap_or_else(|| config.plans_dir.clone());
            let (_, plans) = load_catalogue(&dir)?;
            if config.stripe.is_some() {
                refuse_unpresentable(&plans)?;
            }
            store::require_database(&config.database_url).await?;
            store::run_migrations(&config.database_url).await?;
            let pool = store::pool(&config.database_url, 1)?;
            let user = std::env::var("USER").unwrap_or_else(|_| "cli".into());
            let results =
                accrue::services::plans::publish(&pool, &plans, &format!("cli:{user}"), Utc::now())
                    .await
                    .map_err(|e| anyhow::anyhow!("{e}"))?;
            for r in results {
                let status = match r.status {
                    accrue::services::plans::PublishStatus::Published => "published",
                    accrue::services::plans::PublishStatus::Unchanged => "unchanged",
                };
                println!(
                    "{:<22} {status:<10} {}",
                    r.plan.to_string(),
                    &r.content_hash[..16]
                );
            }
            Ok(())
        }
        PlansCommand::Migrate {
            from,
            to,
            dry_run,
            at_renewal: _,
            now,
            json,
        } => plans_migrate(config, &from, &to, dry_run, now, json).await,
        PlansCommand::Diff { from, to, json } => {
            let (_, plans) = load_catalogue(&config.plans_dir)?;
            let get = |s: &str| -> anyhow::Result<&accrue::domain::plan::PlanVersion> {
                let r: PlanRef = s.parse().map_err(anyhow::Error::msg)?;
                plans
                    .get(&r)
                    .ok_or_else(|| anyhow::anyhow!("{r} is not in {}", config.plans_dir.display()))
            };
            let (a, b) = (get(&from)?, get(&to)?);
            let changes = accrue::catalog::diff::diff(a, b);
            if json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&serde_json::json!({
                        "from": a.plan_ref().to_string(), "to": b.plan_ref().to_string(), "changes": changes
                    }))?
                );
            } else {
                print!("{}", accrue::catalog::diff::render(a, b, &changes));
            }
            Ok(())
        }
    }
}

fn price(
    config: &Config,
    plan: Option<String>,
    plan_file: Option<PathBuf>,
    usage: &[String],
    seats: Option<u32>,
) -> anyhow::Result<()> {
    let meters = MeterCatalog::load(&config.plans_dir)?;
    let version = match (plan, plan_file) {
        (_, Some(file)) => {
            let text = std::fs::read_to_string(&file)
                .with_context(|| format!("cannot read {}", file.display()))?;
            parse_plan_file(&file, &text, &meters).map_err(|errors| {
                anyhow::anyhow!(
                    "{}",
                    errors
                        .iter()
                        .map(|e| e.to_string())
                        .collect::<Vec<_>>()
                        .join("\n")
                )
            })?
        }
        (Some(r), None) => {
            let r: PlanRef = r.parse().map_err(anyhow::Error::msg)?;
            let (_, plans) = load_catalogue(&config.plans_dir)?;
            plans
                .get(&r)
                .cloned()
                .ok_or_else(|| anyhow::anyhow!("{r} is not in {}", config.plans_dir.display()))?
        }
        (None, None) => anyhow::bail!("give --plan PLAN@VERSION or --plan-file PATH"),
    };
    let mut quantities = BTreeMap::new();
    for u in usage {
        let (meter, q) = u
            .split_once('=')
            .ok_or_else(|| anyhow::anyhow!("--usage `{u}`: expected METER=QUANTITY"))?;
        if meters.get(meter).is_none() {
            anyhow::bail!("--usage `{u}`: unknown meter `{meter}` (not in meters.toml)");
        }
        let q = Decimal::from_str_exact(q.trim())
            .map_err(|_| anyhow::anyhow!("--usage `{u}`: `{q}` is not a decimal number"))?;
        if q.is_sign_negative()
            && !q.is_zero()
            && !meters.get(meter).is_some_and(|m| m.allow_negative)
        {
            anyhow::bail!("--usage `{u}`: meter `{meter}` takes no negative values");
        }
        if quantities.insert(meter.to_owned(), q).is_some() {
            anyhow::bail!("--usage: meter `{meter}` is given twice; give each meter once");
        }
    }
    // The API's seat rules: the plan's minimum by default, its bounds enforced (never clamped).
    let seats = seats.unwrap_or_else(|| version.seats.as_ref().map_or(0, |s| s.min));
    let (_, plans) = load_catalogue(&config.plans_dir)?;
    accrue::services::subscriptions::check_seats(&plans, &version, seats)
        .map_err(|e| anyhow::anyhow!("--seats {seats}: {e}"))?;
    let rated = rate_period(&version, &quantities, seats);
    println!("{}", serde_json::to_string_pretty(&rated)?);
    Ok(())
}

/// The Segment mapping of `path`; the default (groupId, names as sent) when there is no file.
fn segment_mapping(
    path: &std::path::Path,
) -> anyhow::Result<accrue::domain::event_shapes::SegmentMapping> {
    match std::fs::read_to_string(path) {
        Ok(text) => toml::from_str(&text).with_context(|| format!("{}", path.display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Default::default()),
        Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
    }
}

/// Writes every row of `entity` after the cursor, page by page, then says on stderr where to
/// resume (`next cursor: …`).
async fn export_incremental(
    config: &Config,
    entity: accrue::services::exports::Entity,
    inc: Incremental,
) -> anyhow::Result<()> {
    // The movements and pql exports first give committed outbound events their feed position,
    // as the feed does.
    let ctx = database_ctx(config).await?;
    use std::io::Write;
    let sink: Box<dyn Write> = match &inc.out {
        Some(path) => Box::new(
            std::fs::File::create(path)
                .with_context(|| format!("cannot create {}", path.display()))?,
        ),
        None => Box::new(std::io::stdout().lock()),
    };
    let out = std::io::BufWriter::new(sink);
    let since = inc.since.clone().unwrap_or_default();
    let columns = entity.columns();
    let (rows, cursor) = match inc.format {
        ExportFormat::Jsonl => {
            let mut out = out;
            let done = drain(&ctx, entity, since, |row| {
                serde_json::to_writer(&mut out, row)?;
                out.write_all(b"\n")?;
                Ok(())
            })
            .await?;
            out.flush()?;
            done
        }
        ExportFormat::Csv => {
            let mut w = csv::Writer::from_writer(out);
            w.write_record(columns)?;
            let done = drain(&ctx, entity, since, |row| {
                w.write_record(columns.iter().map(|c| match &row[*c] {
                    serde_json::Value::Null => String::new(),
                    serde_json::Value::String(s) => s.clone(),
                    other => other.to_string(),
                }))?;
                Ok(())
            })
            .await?;
            w.flush()?;
            done
        }
    };
    eprintln!("exported {rows} {}; next cursor: {cursor}", entity.name());
    Ok(())
}

/// The context of a command that needs only the database (no plans folder) and never creates
/// one: a mistyped `DATABASE_URL` is an error naming it.
async fn database_ctx(config: &Config) -> anyhow::Result<Ctx> {
    store::require_database(&config.database_url).await?;
    let pool = store::pool(&config.database_url, 1)?;
    Ok(Ctx::new(
        pool,
        MeterCatalog::default(),
        PlanCatalog::default(),
        Arc::new(SystemClock),
        1,
        config.check_staleness,
    ))
}

/// Reads every page of `entity` after `cursor`, handing each row to `emit`; returns how many
/// rows and the cursor to resume from.
async fn drain(
    ctx: &Ctx,
    entity: accrue::services::exports::Entity,
    mut cursor: String,
    mut emit: impl FnMut(&serde_json::Value) -> anyhow::Result<()>,
) -> anyhow::Result<(usize, String)> {
    let mut rows = 0;
    loop {
        let page = accrue::services::exports::page(ctx, entity, Some(&cursor), 1000)
            .await
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        for row in &page.data {
            emit(row)?;
        }
        rows += page.data.len();
        let done = page.data.is_empty();
        cursor = page.next_cursor;
        if done {
            return Ok((rows, cursor));
        }
    }
}

async fn export_invoices(config: &Config, month: &str, out: Option<PathBuf>) -> anyhow::Result<()> {
    let first = chrono::NaiveDate::parse_from_str(&format!("{month}-01"), "%Y-%m-%d")
        .map_err(|_| anyhow::anyhow!("--month `{month}`: expected YYYY-MM"))?;
    let next = first
        .checked_add_months(chrono::Months::new(1))
        .ok_or_else(|| anyhow::anyhow!("--month `{month}` is out of range"))?;
    let from = first.and_hms_opt(0, 0, 0).unwrap_or_default().and_utc();
    let to = next.and_hms_opt(0, 0, 0).unwrap_or_default().and_utc();
    let ctx = database_ctx(config).await?;
    let rows = match out {
        Some(path) => {
            let file = std::fs::File::create(&path)
                .with_context(|| format!("cannot create {}", path.display()))?;
            accrue::services::billing::export_csv(&ctx, from, to, file).await
        }
        None => accrue::services::billing::export_csv(&ctx, from, to, std::io::stdout()).await,
    }
    .map_err(|e| anyhow::anyhow!("{e}"))?;
    eprintln!("exported {rows} invoice lines for periods starting in {month}");
    Ok(())
}

/// With Stripe configured, every plan must be in a currency Stripe collects exactly.
fn refuse_unpresentable(plans: &PlanCatalog) -> anyhow::Result<()> {
    for p in plans.all() {
        if let Some(why) = accrue::payments::unpresentable(p.currency) {
            anyhow::bail!("{}: {why}", p.plan_ref());
        }
    }
    Ok(())
}

async fn serve(config: Config) -> anyhow::Result<()> {
    let (meters, plans) = load_catalogue(&config.plans_dir)?;
    store::ensure_database(&config.database_url)
        .await
        .context("preparing the database")?;
    let ran = store::run_migrations(&config.database_url).await?;
    let pool = store::pool(&config.database_url, config.pool_size)?;
    let mut ctx = Ctx::new(
        pool.clone(),
        meters,
        plans,
        Arc::new(SystemClock),
        config.ingest_lanes,
        config.check_staleness,
    )
    .refreshing();
    // The published versions are the catalogue: loaded before any job or request runs.
    ctx.refresh_plans()
        .await
        .context("loading the published plan catalogue")?;
    match &config.stripe {
        Some(stripe) => {
            refuse_unpresentable(&ctx.plans())?;
            let payments = accrue::services::payments::Payments::connect(
                &pool,
                stripe,
                config.dunning.clone(),
                ctx.clock.now(),
            )
            .await
            .map_err(|e| anyhow::anyhow!("connecting the Stripe rail: {e}"))?;
            ctx = ctx.with_payments(payments);
            tracing::info!("invoices are collected through Stripe");
        }
        None => tracing::info!("no STRIPE_SECRET_KEY: invoices are issued for manual collection"),
    }
    // Everything that can be wrong in the configuration is found before the server says it
    // serves.
    let revops = accrue::services::pql::load_config(&config.revops_file, &ctx.meters)
        .map_err(anyhow::Error::msg)?;
    ctx.pql.set_config(revops);
    ctx = ctx.with_segment(segment_mapping(&config.segment_file)?);
    let listener = std::net::TcpListener::bind(&config.bind).with_context(|| {
        format!(
            "cannot listen on {} (ACCRUE_BIND is host:port, like 127.0.0.1:8080)",
            config.bind
        )
    })?;
    tracing::info!(bind = %config.bind, migrations_applied = ran, meters = ctx.meters.all().len(), "accrue serving");
    ctx.webhooks = accrue::services::outbox::WebhookPolicy {
        allow_private: config.webhooks_allow_private,
    };
    ctx.public_url = config.public_url.as_deref().map(std::sync::Arc::from);
    if config.test_clocks {
        ctx.enable_test_clocks();
        tracing::warn!("ACCRUE_TEST_CLOCKS=true: test clocks are on (for testing, not production)");
    }
    tokio::spawn(accrue::jobs::run_forever(ctx.clone()));
    tokio::spawn(accrue::services::outbox::run_forever(ctx.clone()));
    tokio::spawn(accrue::services::pql::run_forever(ctx.clone()));
    tokio::spawn(accrue::services::ingest::fold_idle_type_totals(
        pool.clone(),
    ));
    // The stop signals are handled here, not by actix (`http::server` disables its handling):
    // they are listened for before the server serves, SIGTERM and SIGINT both stop it
    // gracefully, a second one stops it at once, and the grace is counted from the first, so
    // what the HTTP server's wait used of it is not waited again for the ingest lanes.
    let server = http::server(ctx.clone(), listener, None, config.shutdown_grace)?;
    let stop = std::sync::Arc::new(Stop::default());
    let stops = StopSignals::listen().context("cannot listen for SIGTERM and SIGINT")?;
    tokio::spawn(stop_on_signals(stops, server.handle(), stop.clone()));
    server.await?;
    let grace = config.shutdown_grace;
    let spent = stop
        .first
        .get()
        .map(std::time::Instant::elapsed)
        .unwrap_or_default();
    match ctx.ingest.drain(grace.saturating_sub(spent)).await {
        0 => {}
        left => tracing::error!(events = left, "stopping with events not yet committed"),
    }
    tracing::info!("accrue stopped");
    Ok(())
}

/// SIGTERM and SIGINT (Ctrl-C), listened for from the moment this is made.
struct StopSignals {
    #[cfg(unix)]
    term: tokio::signal::unix::Signal,
    #[cfg(unix)]
    int: tokio::signal::unix::Signal,
}

impl StopSignals {
    fn listen() -> std::io::Result<Self> {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{signal, SignalKind};
            Ok(StopSignals {
                term: signal(SignalKind::terminate())?,
                int: signal(SignalKind::interrupt())?,
            })
        }
        #[cfg(not(unix))]
        Ok(StopSignals {})
    }

    async fn next(&mut self) {
        #[cfg(unix)]
        tokio::select! {
            _ = self.term.recv() => {}
            _ = self.int.recv() => {}
        }
        #[cfg(not(unix))]
        let _ = tokio::signal::ctrl_c().await;
    }
}

/// How the process was asked to stop.
#[derive(Default)]
struct Stop {
    /// When the first stop signal came.
    first: std::sync::OnceLock<std::time::Instant>,
}

/// The first stop signal stops the server gracefully (requests in flight finish, within the
/// grace) and records when it came; a second ends the process at once (exit status 130), as
/// actix would not take a second stop before the graceful one ends: transactions in flight
/// are rolled back by PostgreSQL when their connections close.
async fn stop_on_signals(
    mut stops: StopSignals,
    server: actix_web::dev::ServerHandle,
    stop: std::sync::Arc<Stop>,
) {
    stops.next().await;
    let _ = stop.first.set(std::time::Instant::now());
    tracing::info!("stop signal: finishing the requests in flight");
    // The stop is asked for now (`serve` waits for the server to end); this task lives on
    // until the process ends, so a second signal stops it at once in either phase of the
    // stop: while the HTTP server waits for requests in flight, and while the ingest lanes
    // drain after it.
    let _stopping = server.stop(true);
    stops.next().await;
    tracing::warn!("second stop signal: exiting at once");
    std::process::exit(130);
}
