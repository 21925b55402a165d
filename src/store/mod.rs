//! The only module that talks to PostgreSQL (diesel + diesel-async). One file per entity, query
//! functions named after their key. Bulk writes use `UNNEST` over bound arrays (one statement for many rows).

pub mod accounts;
pub mod api_keys;
pub mod billing_errors;
pub mod citus;
pub mod events;
pub mod invoices;
pub mod jobs;
pub mod locks;
pub mod outbox;
pub mod payments;
pub mod plans;
pub mod pql;
pub mod prepared;
pub mod revenue;
pub mod schema;
pub mod settlements;
pub mod subscriptions;
pub mod test_clocks;
pub mod usage;
pub mod web_sessions;

use diesel::connection::SimpleConnection;
use diesel::sql_types::{Array, Text};
use diesel::Connection;
use diesel_async::async_connection_wrapper::AsyncConnectionWrapper;
use diesel_async::pooled_connection::deadpool;
use diesel_async::pooled_connection::{
    AsyncDieselConnectionManager, ManagerConfig, RecyclingMethod,
};
use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl, SimpleAsyncConnection};
use diesel_migrations::{embed_migrations, EmbeddedMigrations, MigrationHarness};

/// Longest wait for a pooled connection before answering 503.
pub const POOL_WAIT: std::time::Duration = std::time::Duration::from_secs(2);
/// Longest wait to open (or check) a connection.
pub const CONNECT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);
/// Longest any one statement may run.
pub const STATEMENT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(60);
/// Longest wait for a row or table lock.
pub const LOCK_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(20);
/// A transaction left open and idle this long is ended by PostgreSQL.
pub const IDLE_IN_TRANSACTION_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(120);

pub const MIGRATIONS: EmbeddedMigrations = embed_migrations!("migrations");

pub type Pool = deadpool::Pool<AsyncPgConnection>;
pub type Conn = deadpool::Object<AsyncPgConnection>;

/// Everything that can go wrong talking to the database.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database query failed: {0}")]
    Query(#[from] diesel::result::Error),
    #[error("cannot connect to the database: {0}")]
    Connect(#[from] diesel::ConnectionError),
    #[error("no database connection available: {0}")]
    Pool(#[from] deadpool::PoolError),
    #[error("cannot build the connection pool: {0}")]
    PoolBuild(#[from] deadpool::BuildError),
    #[error("migrations failed: {0}")]
    Migration(String),
    #[error("invalid DATABASE_URL `{0}`: expected postgres://user@host:port/database")]
    BadUrl(String),
    /// A failure reported by a shared worker (the ingest lane), already logged there.
    #[error("{0}")]
    Message(String),
}

impl StoreError {
    /// A transient conflict (deadlock, serialization failure) worth retrying the transaction for.
    pub fn is_retryable(&self) -> bool {
        match self {
            StoreError::Query(diesel::result::Error::DatabaseError(kind, info)) => {
                matches!(
                    kind,
                    diesel::result::DatabaseErrorKind::SerializationFailure
                ) || info.message().contains("deadlock detected")
            }
            _ => false,
        }
    }
}

impl StoreError {
    /// A unique constraint refused a row.
    pub fn is_unique_violation(&self) -> bool {
        matches!(
            self,
            StoreError::Query(diesel::result::Error::DatabaseError(
                diesel::result::DatabaseErrorKind::UniqueViolation,
                _
            ))
        )
    }

    /// A failure caused by the data itself (a value out of range, a row too large for an
    /// index, a violated constraint): the same statement fails the same way every time, so
    /// it is the caller's input, not a reason to retry.
    pub fn is_data_error(&self) -> bool {
        use diesel::result::DatabaseErrorKind as K;
        match self {
            StoreError::Query(diesel::result::Error::DatabaseError(kind, info)) => match kind {
                K::UniqueViolation
                | K::ForeignKeyViolation
                | K::NotNullViolation
                | K::CheckViolation
                | K::RestrictViolation
                | K::ExclusionViolation => true,
                K::Unknown => {
                    let m = info.message();
                    // SQLSTATE classes 22 (data exception) and 54 (program limit exceeded),
                    // which diesel-async does not expose: recognised by their messages.
                    [
                        "out of range",
                        "overflow",
                        "index row size",
                        "invalid input syntax",
                        "too long",
                        "cannot be represented",
                        "unsupported Unicode escape",
                    ]
                    .iter()
                    .any(|p| m.contains(p))
                }
                _ => false,
            },
            _ => false,
        }
    }
}

/// Splits a database URL into (URL of the `postgres` maintenance database, database name).
pub fn split_database_url(url: &str) -> Result<(String, String), StoreError> {
    let (base, query) = match url.split_once('?') {
        Some((b, q)) => (b, Some(q)),
        None => (url, None),
    };
    let scheme_end = base.find("://").map(|i| i + 3).unwrap_or(0);
    let slash = base[scheme_end..]
        .rfind('/')
        .map(|i| i + scheme_end)
        .ok_or_else(|| StoreError::BadUrl(url.to_owned()))?;
    let name = &base[slash + 1..];
    if name.is_empty() {
        return Err(StoreError::BadUrl(url.to_owned()));
    }
    let mut admin = format!("{}/postgres", &base[..slash]);
    if let Some(q) = query {
        admin.push('?');
        admin.push_str(q);
    }
    Ok((admin, name.to_owned()))
}

/// Checks that the database named in `url` exists and answers, without creating it: every
/// command but `serve`, `migrate` and `demo` uses this, so a mistyped `DATABASE_URL` is an
/// error naming it rather than a new, empty database.
pub async fn require_database(url: &str) -> Result<(), StoreError> {
    let e = match AsyncPgConnection::establish(url).await {
        Ok(_) => return Ok(()),
        Err(e) => e,
    };
    let (_, name) = split_database_url(url)?;
    let shown = redact(url);
    // Not a wrong role name (`role "x" does not exist`): only the database's own absence.
    if e.to_string()
        .contains(&format!("database \"{name}\" does not exist"))
    {
        return Err(StoreError::Message(format!(
            "database `{name}` does not exist (DATABASE_URL={shown}): check the name, or create it with `accrue migrate` (or `accrue serve`)"
        )));
    }
    Err(StoreError::Message(format!(
        "cannot connect to the database at {shown}: {}",
        e.to_string().trim()
    )))
}

/// A database URL without its password, for messages.
pub fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(s), Some(at)) if at > s => {
            let creds = &url[s + 3..at];
            match creds.split_once(':') {
                Some((user, _)) => format!("{}{user}:***{}", &url[..s + 3], &url[at..]),
                None => url.to_owned(),
            }
        }
        _ => url.to_owned(),
    }
}

/// Creates the database named in `url` when it does not exist yet.
pub async fn ensure_database(url: &str) -> Result<(), StoreError> {
    if AsyncPgConnection::establish(url).await.is_ok() {
        return Ok(());
    }
    let (admin_url, name) = split_database_url(url)?;
    let mut admin = AsyncPgConnection::establish(&admin_url).await?;
    let sql = format!("CREATE DATABASE \"{}\"", name.replace('"', "\"\""));
    match admin.batch_execute(&sql).await {
        Ok(()) => {
            tracing::info!(database = %name, "created database");
            Ok(())
        }
        // Another instance created it between our check and our CREATE.
        Err(diesel::result::Error::DatabaseError(_, info))
            if info.message().contains("already exists") =>
        {
            Ok(())
        }
        Err(e) => Err(e.into()),
    }
}

/// Drops the database of `url` (closing its connections) and creates it empty.
pub async fn recreate_database(url: &str) -> Result<(), StoreError> {
    let (admin_url, name) = split_database_url(url)?;
    let mut admin = AsyncPgConnection::establish(&admin_url).await?;
    let quoted = name.replace('"', "\"\"");
    admin
        .batch_execute(&format!(
            "DROP DATABASE IF EXISTS \"{quoted}\" WITH (FORCE)"
        ))
        .await?;
    admin
        .batch_execute(&format!("CREATE DATABASE \"{quoted}\""))
        .await?;
    Ok(())
}

/// `url` with another database name.
pub fn with_database_name(url: &str, name: &str) -> Result<String, StoreError> {
    let (base, query) = match url.split_once('?') {
        Some((b, q)) => (b, Some(q)),
        None => (url, None),
    };
    let scheme_end = base.find("://").map(|i| i + 3).unwrap_or(0);
    let slash = base[scheme_end..]
        .rfind('/')
        .map(|i| i + scheme_end)
        .ok_or_else(|| StoreError::BadUrl(url.to_owned()))?;
    let mut out = format!("{}/{name}", &base[..slash]);
    if let Some(q) = query {
        out.push('?');
        out.push_str(q);
    }
    Ok(out)
}

/// Runs the embedded migrations that have not run yet, then, on Citus, places the tables not
/// placed yet ([`citus::place_tables`]); returns how many migrations ran.
pub async fn run_migrations(url: &str) -> Result<usize, StoreError> {
    let url = url.to_owned();
    tokio::task::spawn_blocking(move || {
        let mut conn = <AsyncConnectionWrapper<AsyncPgConnection> as Connection>::establish(&url)?;
        // Several instances may start at once; serialize their migrations.
        SimpleConnection::batch_execute(&mut conn, "SELECT pg_advisory_lock(7462001)")?;
        let ran = conn
            .run_pending_migrations(MIGRATIONS)
            .map(|v| v.len())
            .map_err(|e| StoreError::Migration(e.to_string()))
            .and_then(|ran| {
                citus::place_tables(&mut conn)
                    .map(|_| ran)
                    .map_err(|e| StoreError::Migration(format!("placing the tables on Citus: {e}")))
            });
        SimpleConnection::batch_execute(&mut conn, "SELECT pg_advisory_unlock(7462001)")?;
        ran
    })
    .await
    .map_err(|e| StoreError::Migration(e.to_string()))?
}

/// The session's plan-cache mode (set on every pooled connection, see [`pool`]).
const CUSTOM_PLANS: &str = "SET LOCAL plan_cache_mode = force_custom_plan";

/// Lets PostgreSQL reuse generic plans until [`custom_plans`], in the current transaction.
/// For bulk writes only: a foreign-key check is a cached plan inside PostgreSQL, which
/// `force_custom_plan` replans for every row it checks (measured: 45 µs a check instead of
/// 10 µs; writing a close batch's 1,000 invoice lines spent 45 of its 55 ms there). Reads stay
/// outside, planned afresh. Outside a transaction it changes nothing.
pub async fn generic_plans(conn: &mut AsyncPgConnection) -> Result<(), StoreError> {
    conn.batch_execute("SET LOCAL plan_cache_mode = auto")
        .await?;
    Ok(())
}

/// The statement reading `$columns` of `$table`'s rows (the table aliased `x`) of a set of
/// accounts, bound as `$1` (a text array), optionally only those where `$cond`; run it with
/// [`rows_of_accounts`]. Its form suits the database:
/// - on Citus, `x.account = ANY($1)`, which goes to those accounts' shards only;
/// - on one PostgreSQL, an index lookup per account (`UNNEST … CROSS JOIN LATERAL (… OFFSET
///   0)`) whatever the table's statistics say. `= ANY` scans the whole table while it has
///   none (after a bulk import, until autovacuum analyzes it): for a close batch's 500
///   accounts in `accounts` at 100,000 rows, 10 ms against 1 ms.
///
/// `of_accounts!("account, crm_owner", "accounts", "crm_owner IS NOT NULL")` is, on one
/// PostgreSQL: `SELECT r.* FROM UNNEST($1::text[]) AS p(account) CROSS JOIN LATERAL (SELECT
/// account, crm_owner FROM accounts x WHERE x.account = p.account AND (crm_owner IS NOT NULL)
/// OFFSET 0) r`.
macro_rules! of_accounts {
    ($columns:literal, $table:literal $(, $cond:literal)?) => {
        if $crate::store::citus::active() {
            concat!(
                "SELECT ", $columns, " FROM ", $table, " x WHERE x.account = ANY($1)",
                $(" AND (", $cond, ")",)?
            )
        } else {
            concat!(
                "SELECT r.* FROM UNNEST($1::text[]) AS p(account) CROSS JOIN LATERAL (SELECT ",
                $columns, " FROM ", $table, " x WHERE x.account = p.account",
                $(" AND (", $cond, ")",)? " OFFSET 0) r"
            )
        }
    };
}
pub(crate) use of_accounts;

/// The rows an [`of_accounts!`] statement reads for `accounts`; none for none without asking
/// (on Citus an empty list would ask every shard).
pub(crate) async fn rows_of_accounts<T>(
    conn: &mut AsyncPgConnection,
    sql: &'static str,
    accounts: &[String],
) -> Result<Vec<T>, StoreError>
where
    T: diesel::QueryableByName<diesel::pg::Pg> + Send + 'static,
{
    if accounts.is_empty() {
        return Ok(Vec::new());
    }
    Ok(prepared::prepared(sql)
        .bind::<Array<Text>, _>(accounts)
        .load(conn)
        .await?)
}

/// One column of `rows`, as an array bound to an `UNNEST` bulk statement (one statement, not a
/// `VALUES` list to parse and plan at every call).
pub(crate) fn column<'a, R, U>(rows: &'a [R], f: impl Fn(&'a R) -> U) -> Vec<U> {
    rows.iter().map(f).collect()
}

/// Back to planning every execution afresh (the session's mode), after [`generic_plans`].
pub async fn custom_plans(conn: &mut AsyncPgConnection) -> Result<(), StoreError> {
    conn.batch_execute(CUSTOM_PLANS).await?;
    Ok(())
}

/// Opens one pooled connection with the session settings of [`pool`].
async fn open_connection(url: &str) -> diesel::ConnectionResult<AsyncPgConnection> {
    let mut conn = AsyncPgConnection::establish(url).await?;
    conn.batch_execute(&format!(
        "SET jit = off; SET plan_cache_mode = force_custom_plan; \
         SET statement_timeout = {}; SET lock_timeout = {}; \
         SET idle_in_transaction_session_timeout = {}",
        STATEMENT_TIMEOUT.as_millis(),
        LOCK_TIMEOUT.as_millis(),
        IDLE_IN_TRANSACTION_TIMEOUT.as_millis()
    ))
    .await
    .map_err(diesel::ConnectionError::CouldntSetupConfiguration)?;
    let on_citus: bool = diesel::select(diesel::dsl::sql::<diesel::sql_types::Bool>(
        "EXISTS (SELECT 1 FROM pg_extension WHERE extname = 'citus')",
    ))
    .get_result(&mut conn)
    .await
    .map_err(diesel::ConnectionError::CouldntSetupConfiguration)?;
    if on_citus {
        citus::learnt_active();
    }
    Ok(conn)
}

/// Builds the connection pool. Each connection turns JIT compilation off: accrue's statements
/// are short, and PostgreSQL's cost estimates for the batch reads (which run per-account index
/// lookups) can pass the JIT threshold and spend 30 ms compiling a 1 ms query. It also plans
/// every execution of a prepared statement afresh: a generic plan made while a table was
/// small (a seq scan) otherwise sticks as the table grows (measured: the period close of
/// 100,000 accounts went from 155 s to 52 s). Ingestion groups are the exception
/// ([`events::begin_group`]): inserts from bound arrays, which scan no table.
///
/// Every wait is bounded: a connection is handed out within [`POOL_WAIT`] or the caller gets
/// `StoreError::Pool` (answered 503 with `Retry-After`), connecting gives up after
/// [`CONNECT_TIMEOUT`], a statement after [`STATEMENT_TIMEOUT`], a lock wait after
/// [`LOCK_TIMEOUT`], and a transaction left idle after [`IDLE_IN_TRANSACTION_TIMEOUT`].
pub fn pool(url: &str, max_size: usize) -> Result<Pool, StoreError> {
    let mut config = ManagerConfig::default();
    // A connection handed out again is not probed with `SELECT 1` (a round trip at every
    // checkout): one whose socket closed (the server restarted or ended its session) is known
    // closed without asking and dropped, as is one left in a transaction.
    config.recycling_method = RecyclingMethod::Fast;
    // A connection's driver is a task on the runtime that opened it. Opened on an actix
    // worker's runtime (a handler's checkout), it died when a graceful stop ended that worker,
    // failing the ingest lane or job using it at the time (their requests answered 503 when
    // they should have been committed: chaos scenario 9 on Citus). Connections are opened on
    // the runtime the pool was made on, the process's main one.
    let home = tokio::runtime::Handle::try_current().ok();
    config.custom_setup = Box::new(move |url| {
        let url = url.to_owned();
        let open = async move { open_connection(&url).await };
        match home.clone() {
            Some(home) => Box::pin(async move {
                home.spawn(open).await.map_err(|e| {
                    diesel::ConnectionError::BadConnection(format!(
                        "opening a connection stopped: {e}"
                    ))
                })?
            }),
            None => Box::pin(open),
        }
    });
    let manager = AsyncDieselConnectionManager::<AsyncPgConnection>::new_with_config(url, config);
    Ok(deadpool::Pool::builder(manager)
        .max_size(max_size)
        .runtime(::deadpool::Runtime::Tokio1)
        .wait_timeout(Some(POOL_WAIT))
        .create_timeout(Some(CONNECT_TIMEOUT))
        .recycle_timeout(Some(CONNECT_TIMEOUT))
        .build()?)
}

/// Round-trips a trivial query: the readiness probe.
pub async fn ping(pool: &Pool) -> Result<(), StoreError> {
    let mut conn = pool.get().await?;
    prepared::prepared("SELECT 1").execute(&mut conn).await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn database_urls_split_into_maintenance_url_and_name() {
        let (admin, name) =
            split_database_url("postgres://postgres@127.0.0.1:5432/accrue?sslmode=disable")
                .unwrap();
        assert_eq!(
            admin,
            "postgres://postgres@127.0.0.1:5432/postgres?sslmode=disable"
        );
        assert_eq!(name, "accrue");
        assert!(split_database_url("postgres://host:5432/").is_err());
    }
}
