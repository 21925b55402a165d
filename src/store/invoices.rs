//! `invoices`, `invoice_lines`, `invoice_numbers`, `invoice_counter`: issuing invoices with
//! gap-free numbers, reading them, and what late-usage billing needs.

use super::schema::{invoice_lines, invoice_numbers, invoices};
use super::StoreError;
use crate::domain::invoice::InvoiceDraft;
use chrono::{DateTime, Utc};
use diesel::prelude::*;
use diesel::sql_types::{Array, BigInt, Integer, Nullable, Numeric, Text, Timestamptz};
use diesel_async::{AsyncPgConnection, RunQueryDsl};
use rust_decimal::Decimal;
use serde::Serialize;

#[derive(Debug, Clone, Queryable, Selectable, Insertable, Serialize, utoipa::ToSchema)]
#[diesel(table_name = invoices)]
pub struct InvoiceRow {
    pub account: String,
    pub number: i64,
    pub kind: String,
    #[serde(serialize_with = "crate::domain::ts::ms")]
    pub period_start: DateTime<Utc>,
    #[serde(serialize_with = "crate::domain::ts::ms")]
    pub period_end: DateTime<Utc>,
    pub plan: String,
    #[serde(rename = "version")]
    pub plan_version: i32,
    pub seats: i32,
    pub currency: String,
    #[serde(with = "rust_decimal::serde::str")]
    pub total: Decimal,
    pub status: String,
    pub collection: String,
    #[serde(serialize_with = "crate::domain::ts::ms")]
    pub issued_at: DateTime<Utc>,
    /// The share of the whole period covered when a change cut it short (else absent).
    #[serde(
        with = "rust_decimal::serde::str_option",
        skip_serializing_if = "Option::is_none"
    )]
    pub period_share: Option<Decimal>,
}

#[derive(Debug, Clone, Queryable, Selectable, Insertable, Serialize, utoipa::ToSchema)]
#[diesel(table_name = invoice_lines)]
pub struct LineRow {
    #[serde(skip)]
    pub account: String,
    #[serde(skip)]
    pub number: i64,
    pub line_no: i32,
    pub kind: String,
    pub meter: Option<String>,
    #[serde(with = "rust_decimal::serde::str")]
    pub quantity: Decimal,
    #[serde(with = "rust_decimal::serde::str")]
    pub amount: Decimal,
    pub description: String,
    pub event_count: Option<i64>,
    #[serde(serialize_with = "crate::domain::ts::ms_opt")]
    pub first_event_at: Option<DateTime<Utc>>,
    #[serde(serialize_with = "crate::domain::ts::ms_opt")]
    pub last_event_at: Option<DateTime<Utc>>,
    #[serde(serialize_with = "crate::domain::ts::ms_opt")]
    pub usage_from: Option<DateTime<Utc>>,
    #[serde(serialize_with = "crate::domain::ts::ms_opt")]
    pub usage_to: Option<DateTime<Utc>>,
}

#[derive(QueryableByName)]
struct First {
    #[diesel(sql_type = BigInt)]
    first: i64,
}

/// Issues drafts: takes a block of numbers from the counter (held until the transaction ends,
/// so numbers have no gaps), then writes the invoices, their lines and the number registry.
pub async fn issue(
    conn: &mut AsyncPgConnection,
    drafts: &[InvoiceDraft],
    collection: &str,
) -> Result<Vec<i64>, StoreError> {
    if drafts.is_empty() {
        return Ok(Vec::new());
    }
    let n = drafts.len() as i64;
    let first: First = super::prepared::prepared(
        "UPDATE invoice_counter SET next_number = next_number + $1
          WHERE singleton RETURNING next_number - $1 AS first",
    )
    .bind::<BigInt, _>(n)
    .get_result(conn)
    .await?;
    // Writes only from here: each row's foreign keys are checked by cached plans.
    super::generic_plans(conn).await?;
    let mut rows = Vec::with_capacity(drafts.len());
    let mut lines = Vec::new();
    let mut registry = Vec::with_capacity(drafts.len());
    for (i, d) in drafts.iter().enumerate() {
        let number = first.first + i as i64;
        rows.push(InvoiceRow {
            account: d.account.clone(),
            number,
            kind: d.kind.as_str().to_owned(),
            period_start: d.period.start,
            period_end: d.period.end,
            plan: d.plan.clone(),
            plan_version: d.plan_version as i32,
            seats: d.seats as i32,
            currency: d.currency.code().to_owned(),
            total: d.total(),
            // Collected through a rail, an invoice with nothing to collect is settled at once.
            status: if collection != "manual" && d.total() <= Decimal::ZERO {
                "paid".into()
            } else {
                "open".into()
            },
            collection: collection.to_owned(),
            issued_at: d.issued_at,
            period_share: d.share,
        });
        registry.push((
            invoice_numbers::number.eq(number),
            invoice_numbers::account.eq(d.account.clone()),
        ));
        for (j, l) in d.lines.iter().enumerate() {
            lines.push(LineRow {
                account: d.account.clone(),
                number,
                line_no: j as i32 + 1,
                kind: l.kind.clone(),
                meter: l.meter.clone(),
                quantity: l.quantity,
                amount: l.amount,
                description: l.description.clone(),
                event_count: l.event_count,
                first_event_at: l.first_event_at,
                last_event_at: l.last_event_at,
                usage_from: l.usage_from,
                usage_to: l.usage_to,
            });
        }
    }
    insert_invoices(conn, &rows).await?;
    if super::citus::active() {
        // Chunks keep each statement under PostgreSQL's bind-parameter limit.
        for chunk in registry.chunks(5000) {
            diesel::insert_into(invoice_numbers::table)
                .values(chunk)
                .execute(conn)
                .await?;
        }
    } else {
        super::prepared::prepared(
            "INSERT INTO invoice_numbers (number, account)
             SELECT * FROM UNNEST($1::int8[], $2::text[])",
        )
        .bind::<Array<BigInt>, _>(super::column(&rows, |r| r.number))
        .bind::<Array<Text>, _>(rows.iter().map(|r| r.account.clone()).collect::<Vec<_>>())
        .execute(conn)
        .await?;
    }
    insert_lines(conn, &lines).await?;
    super::custom_plans(conn).await?;
    Ok(rows.iter().map(|r| r.number).collect())
}

/// Writes invoice rows: on one PostgreSQL in one statement over arrays, on Citus as `VALUES`
/// in chunks (as [`insert_lines`], for the same reasons).
async fn insert_invoices(
    conn: &mut AsyncPgConnection,
    rows: &[InvoiceRow],
) -> Result<(), StoreError> {
    if super::citus::active() {
        for chunk in rows.chunks(2000) {
            diesel::insert_into(invoices::table)
                .values(chunk)
                .execute(conn)
                .await?;
        }
        return Ok(());
    }
    super::prepared::prepared(
        "INSERT INTO invoices (account, number, kind, period_start, period_end, plan,
                plan_version, seats, currency, total, status, collection, issued_at, period_share)
         SELECT * FROM UNNEST($1::text[], $2::int8[], $3::text[], $4::timestamptz[],
                $5::timestamptz[], $6::text[], $7::int4[], $8::int4[], $9::text[],
                $10::numeric[], $11::text[], $12::text[], $13::timestamptz[], $14::numeric[])",
    )
    .bind::<Array<Text>, _>(super::column(rows, |r| &r.account))
    .bind::<Array<BigInt>, _>(super::column(rows, |r| r.number))
    .bind::<Array<Text>, _>(super::column(rows, |r| &r.kind))
    .bind::<Array<Timestamptz>, _>(super::column(rows, |r| r.period_start))
    .bind::<Array<Timestamptz>, _>(super::column(rows, |r| r.period_end))
    .bind::<Array<Text>, _>(super::column(rows, |r| &r.plan))
    .bind::<Array<Integer>, _>(super::column(rows, |r| r.plan_version))
    .bind::<Array<Integer>, _>(super::column(rows, |r| r.seats))
    .bind::<Array<Text>, _>(super::column(rows, |r| &r.currency))
    .bind::<Array<Numeric>, _>(super::column(rows, |r| r.total))
    .bind::<Array<Text>, _>(super::column(rows, |r| &r.status))
    .bind::<Array<Text>, _>(super::column(rows, |r| &r.collection))
    .bind::<Array<Timestamptz>, _>(super::column(rows, |r| r.issued_at))
    .bind::<Array<Nullable<Numeric>>, _>(super::column(rows, |r| r.period_share))
    .execute(conn)
    .await?;
    Ok(())
}

/// Writes invoice lines. On one PostgreSQL in one statement over 13 arrays (`UNNEST`): a
/// multi-row `VALUES` list of thousands of rows spends its time in the parser. Citus plans
/// `UNNEST` through the coordinator, so there the lines go as `VALUES` in chunks, each under
/// PostgreSQL's bind-parameter limit, which Citus splits by shard.
async fn insert_lines(conn: &mut AsyncPgConnection, lines: &[LineRow]) -> Result<(), StoreError> {
    if lines.is_empty() {
        return Ok(());
    }
    if super::citus::active() {
        for chunk in lines.chunks(4000) {
            diesel::insert_into(invoice_lines::table)
                .values(chunk)
                .execute(conn)
                .await?;
        }
        return Ok(());
    }
    let col = |f: fn(&LineRow) -> String| lines.iter().map(f).collect::<Vec<_>>();
    super::prepared::prepared(
        "INSERT INTO invoice_lines (account, number, line_no, kind, meter, quantity, amount,
                description, event_count, first_event_at, last_event_at, usage_from, usage_to)
         SELECT * FROM UNNEST($1::text[], $2::int8[], $3::int4[], $4::text[], $5::text[],
                $6::numeric[], $7::numeric[], $8::text[], $9::int8[], $10::timestamptz[],
                $11::timestamptz[], $12::timestamptz[], $13::timestamptz[])",
    )
    .bind::<Array<Text>, _>(col(|l| l.account.clone()))
    .bind::<Array<BigInt>, _>(super::column(lines, |l| l.number))
    .bind::<Array<Integer>, _>(super::column(lines, |l| l.line_no))
    .bind::<Array<Text>, _>(col(|l| l.kind.clone()))
    .bind::<Array<Nullable<Text>>, _>(lines.iter().map(|l| l.meter.clone()).collect::<Vec<_>>())
    .bind::<Array<Numeric>, _>(super::column(lines, |l| l.quantity))
    .bind::<Array<Numeric>, _>(super::column(lines, |l| l.amount))
    .bind::<Array<Text>, _>(col(|l| l.description.clone()))
    .bind::<Array<Nullable<BigInt>>, _>(super::column(lines, |l| l.event_count))
    .bind::<Array<Nullable<Timestamptz>>, _>(super::column(lines, |l| l.first_event_at))
    .bind::<Array<Nullable<Timestamptz>>, _>(super::column(lines, |l| l.last_event_at))
    .bind::<Array<Nullable<Timestamptz>>, _>(super::column(lines, |l| l.usage_from))
    .bind::<Array<Nullable<Timestamptz>>, _>(super::column(lines, |l| l.usage_to))
    .execute(conn)
    .await?;
    Ok(())
}

/// The account of an invoice number (the registry).
pub async fn account_of_number(
    conn: &mut AsyncPgConnection,
    number: i64,
) -> Result<Option<String>, StoreError> {
    Ok(invoice_numbers::table
        .filter(invoice_numbers::number.eq(number))
        .select(invoice_numbers::account)
        .first(conn)
        .await
        .optional()?)
}

pub async fn find_by_account_and_number(
    conn: &mut AsyncPgConnection,
    account: &str,
    number: i64,
) -> Result<Option<(InvoiceRow, Vec<LineRow>)>, StoreError> {
    let inv = invoices::table
        .filter(invoices::account.eq(account))
        .filter(invoices::number.eq(number))
        .select(InvoiceRow::as_select())
        .first(conn)
        .await
        .optional()?;
    let Some(inv) = inv else {
        return Ok(None);
    };
    let lines = invoice_lines::table
        .filter(invoice_lines::account.eq(account))
        .filter(invoice_lines::number.eq(number))
        .order(invoice_lines::line_no)
        .select(LineRow::as_select())
        .load(conn)
        .await?;
    Ok(Some((inv, lines)))
}

/// Filters for listing invoices; `after` is the cursor (the last number of the previous page).
#[derive(Debug, Clone, Default)]
pub struct InvoiceFilter {
    pub account: Option<String>,
    pub status: Option<String>,
    pub period_from: Option<DateTime<Utc>>,
    pub period_to: Option<DateTime<Utc>>,
    pub after: Option<i64>,
    pub limit: i64,
}

pub async fn list(
    conn: &mut AsyncPgConnection,
    f: &InvoiceFilter,
) -> Result<Vec<InvoiceRow>, StoreError> {
    let mut q = invoices::table.select(InvoiceRow::as_select()).into_boxed();
    if let Some(a) = &f.account {
        q = q.filter(invoices::account.eq(a.clone()));
    }
    if let Some(s) = &f.status {
        q = q.filter(invoices::status.eq(s.clone()));
    }
    if let Some(t) = f.period_from {
        q = q.filter(invoices::period_start.ge(t));
    }
    if let Some(t) = f.period_to {
        q = q.filter(invoices::period_start.lt(t));
    }
    if let Some(n) = f.after {
        q = q.filter(invoices::number.gt(n));
    }
    Ok(q.order(invoices::number).limit(f.limit).load(conn).await?)
}

/// The newest `limit` invoices of `account`, newest first.
pub async fn latest_by_account(
    conn: &mut AsyncPgConnection,
    account: &str,
    limit: i64,
) -> Result<Vec<InvoiceRow>, StoreError> {
    Ok(invoices::table
        .filter(invoices::account.eq(account))
        .order(invoices::number.desc())
        .limit(limit)
        .select(InvoiceRow::as_select())
        .load(conn)
        .await?)
}

/// All lines of the invoices whose period starts in `[from, to)` (for the CSV export).
pub async fn lines_of_period(
    conn: &mut AsyncPgConnection,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
) -> Result<Vec<(InvoiceRow, LineRow)>, StoreError> {
    Ok(invoices::table
        .inner_join(
            invoice_lines::table.on(invoice_lines::account
                .eq(invoices::account)
                .and(invoice_lines::number.eq(invoices::number))),
        )
        .filter(invoices::period_start.ge(from))
        .filter(invoices::period_start.lt(to))
        .order((invoices::number, invoice_lines::line_no))
        .select((InvoiceRow::as_select(), LineRow::as_select()))
        .load(conn)
        .await?)
}

#[derive(QueryableByName)]
pub struct LatePeriod {
    #[diesel(sql_type = Timestamptz)]
    pub start: DateTime<Utc>,
    #[diesel(sql_type = Timestamptz)]
    pub end: DateTime<Utc>,
    #[diesel(sql_type = Text)]
    pub plan: String,
    #[diesel(sql_type = diesel::sql_types::Integer)]
    pub plan_version: i32,
    #[diesel(sql_type = diesel::sql_types::Integer)]
    pub seats: i32,
    #[diesel(sql_type = Nullable<Numeric>)]
    pub period_share: Option<Decimal>,
}

/// Invoiced periods before `before` whose rollups changed after their usage was last billed
/// (rollup `updated_at` and invoice `usage_mark` are both the database's clock).
pub async fn periods_with_late_usage(
    conn: &mut AsyncPgConnection,
    account: &str,
    before: DateTime<Utc>,
) -> Result<Vec<LatePeriod>, StoreError> {
    Ok(super::prepared::prepared(
        "WITH billed AS (
            SELECT l.usage_from AS s, l.usage_to AS e, MAX(i.usage_mark) AS at
              FROM invoice_lines l
              JOIN invoices i ON i.account = l.account AND i.number = l.number
             WHERE l.account = $1 AND l.usage_from IS NOT NULL AND l.usage_from < $2
               AND (l.meter IS NOT NULL OR l.kind = 'minimum_top_up')
             GROUP BY l.usage_from, l.usage_to)
         SELECT b.s AS start, b.e AS end, p.plan, p.plan_version, p.seats, p.period_share
           FROM billed b
           JOIN invoices p ON p.account = $1 AND p.kind = 'period' AND p.period_start = b.s
          WHERE EXISTS (SELECT 1 FROM usage_rollups r
                         WHERE r.account = $1 AND r.bucket >= b.s AND r.bucket < b.e
                           AND r.updated_at > b.at)
          ORDER BY b.s",
    )
    .bind::<Text, _>(account)
    .bind::<Timestamptz, _>(before)
    .load(conn)
    .await?)
}

#[derive(QueryableByName)]
struct AccountRow {
    #[diesel(sql_type = Text)]
    account: String,
}

/// Which of these accounts have late usage in a period invoiced before their `before` (one
/// query for a whole close batch; the usual answer is none).
pub async fn accounts_with_late_usage(
    conn: &mut AsyncPgConnection,
    accounts: &[String],
    befores: &[DateTime<Utc>],
) -> Result<std::collections::HashSet<String>, StoreError> {
    let rows: Vec<AccountRow> = super::prepared::prepared(if super::citus::active() {
        "SELECT DISTINCT b.account
           FROM (SELECT l.account, l.usage_from AS s, l.usage_to AS e, MAX(i.usage_mark) AS at
                   FROM invoice_lines l
                   JOIN invoices i ON i.account = l.account AND i.number = l.number
                   JOIN UNNEST($1::text[], $2::timestamptz[]) AS p(account, before)
                     ON p.account = l.account AND l.usage_from < p.before
                  -- `account = ANY`: index lookups of these accounts, never a scan of all
                  -- invoice lines; on Citus, only their shards.
                  WHERE l.account = ANY($1) AND l.usage_from IS NOT NULL
                    AND (l.meter IS NOT NULL OR l.kind = 'minimum_top_up')
                  GROUP BY l.account, l.usage_from, l.usage_to) b
          WHERE EXISTS (SELECT 1 FROM usage_rollups r
                         WHERE r.account = b.account AND r.bucket >= b.s AND r.bucket < b.e
                           AND r.updated_at > b.at)"
    } else {
        "SELECT DISTINCT p.account
           FROM UNNEST($1::text[], $2::timestamptz[]) AS p(account, before)
           -- LATERAL: index lookups per account, never a scan of all invoice lines.
           CROSS JOIN LATERAL (
               SELECT l.usage_from AS s, l.usage_to AS e, MAX(i.usage_mark) AS at
                 FROM invoice_lines l
                 JOIN invoices i ON i.account = l.account AND i.number = l.number
                WHERE l.account = p.account AND l.usage_from IS NOT NULL
                  AND l.usage_from < p.before
                  AND (l.meter IS NOT NULL OR l.kind = 'minimum_top_up')
                GROUP BY l.usage_from, l.usage_to) b
          -- OFFSET 0 keeps the EXISTS a lookup per period in the account's index range: as
          -- a semi join, the planner hashed the whole rollups table at every call.
          WHERE EXISTS (SELECT 1 FROM usage_rollups r
                         WHERE r.account = p.account AND r.bucket >= b.s AND r.bucket < b.e
                           AND r.updated_at > b.at
                         OFFSET 0)"
    })
    .bind::<diesel::sql_types::Array<Text>, _>(accounts)
    .bind::<diesel::sql_types::Array<Timestamptz>, _>(befores)
    .load(conn)
    .await?;
    Ok(rows.into_iter().map(|r| r.account).collect())
}

#[derive(QueryableByName)]
pub struct Billed {
    #[diesel(sql_type = Text)]
    pub meter: String,
    #[diesel(sql_type = Numeric)]
    pub quantity: Decimal,
    #[diesel(sql_type = Numeric)]
    pub amount: Decimal,
}

/// What has been billed so far for the arrears of the period starting at `start`: per meter,
/// and the minimum top-up under the meter name `""`.
pub async fn billed_for_period(
    conn: &mut AsyncPgConnection,
    account: &str,
    start: DateTime<Utc>,
) -> Result<Vec<Billed>, StoreError> {
    Ok(super::prepared::prepared(
        "SELECT COALESCE(meter, '') AS meter, SUM(quantity) AS quantity, SUM(amount) AS amount
           FROM invoice_lines
          WHERE account = $1 AND usage_from = $2
            AND (meter IS NOT NULL OR kind = 'minimum_top_up')
          GROUP BY COALESCE(meter, '')",
    )
    .bind::<Text, _>(account)
    .bind::<Timestamptz, _>(start)
    .load(conn)
    .await?)
}

#[derive(QueryableByName)]
struct FeesBilled {
    #[diesel(sql_type = BigInt)]
    opening: i64,
    #[diesel(sql_type = Nullable<Numeric>)]
    amount: Option<Decimal>,
}

/// The recurring fees billed for the time in `[start, end)`: advance fees and the credits and
/// charges of changes whose range lies inside it. `None` when the fees that opened the period
/// carry no range (invoices written before lines did): the caller then counts the plan's.
pub async fn fees_billed_for_period(
    conn: &mut AsyncPgConnection,
    account: &str,
    start: DateTime<Utc>,
    end: DateTime<Utc>,
) -> Result<Option<Decimal>, StoreError> {
    let f: FeesBilled = super::prepared::prepared(
        "SELECT count(*) FILTER (WHERE usage_from = $2) AS opening, SUM(amount) AS amount
           FROM invoice_lines
          WHERE account = $1 AND usage_from >= $2 AND usage_to <= $3
            AND kind IN ('base_fee', 'seats', 'proration_credit', 'proration_charge')",
    )
    .bind::<Text, _>(account)
    .bind::<Timestamptz, _>(start)
    .bind::<Timestamptz, _>(end)
    .get_result(conn)
    .await?;
    Ok((f.opening > 0).then(|| f.amount.unwrap_or_default()))
}

#[derive(Debug, QueryableByName, Serialize, utoipa::ToSchema)]
pub struct LineageRollup {
    #[diesel(sql_type = Timestamptz)]
    #[serde(serialize_with = "crate::domain::ts::ms")]
    pub bucket: DateTime<Utc>,
    #[diesel(sql_type = BigInt)]
    pub event_count: i64,
    #[diesel(sql_type = Numeric)]
    #[serde(with = "rust_decimal::serde::str")]
    pub value_sum: Decimal,
    #[diesel(sql_type = Nullable<Numeric>)]
    #[serde(with = "rust_decimal::serde::str_option")]
    pub value_max: Option<Decimal>,
}

/// The hourly rollups behind a usage line.
pub async fn rollups_for_line(
    conn: &mut AsyncPgConnection,
    account: &str,
    meter: &str,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
) -> Result<Vec<LineageRollup>, StoreError> {
    Ok(super::prepared::prepared(
        "SELECT bucket, event_count, value_sum, value_max FROM usage_rollups
          WHERE account = $1 AND meter = $2 AND bucket >= $3 AND bucket < $4
          ORDER BY bucket",
    )
    .bind::<Text, _>(account)
    .bind::<Text, _>(meter)
    .bind::<Timestamptz, _>(from)
    .bind::<Timestamptz, _>(to)
    .load(conn)
    .await?)
}

#[derive(Debug, QueryableByName, Serialize, utoipa::ToSchema)]
pub struct LineageEvent {
    #[diesel(sql_type = Text)]
    pub id: String,
    #[diesel(sql_type = Text)]
    pub event_type: String,
    #[diesel(sql_type = Timestamptz)]
    #[serde(serialize_with = "crate::domain::ts::ms")]
    pub timestamp: DateTime<Utc>,
    #[diesel(sql_type = diesel::sql_types::Jsonb)]
    pub properties: serde_json::Value,
}

/// Largest `properties` a lineage read returns as stored; larger ones (stored before ingestion
/// bounded them) come back as `{"_omitted": ...}`.
pub const MAX_LINEAGE_PROPERTIES_BYTES: i32 = 32 * 1024;

/// The events behind a usage line: of the meter's type and passing its filter (`filter`: a
/// JSON object, property → accepted values), in its range and received by the time the
/// invoice was issued (`known_at`), in time order, exactly `limit` when that many exist.
#[allow(clippy::too_many_arguments)]
pub async fn events_for_line(
    conn: &mut AsyncPgConnection,
    account: &str,
    event_type: &str,
    filter: &serde_json::Value,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
    known_at: DateTime<Utc>,
    limit: i64,
) -> Result<Vec<LineageEvent>, StoreError> {
    Ok(super::prepared::prepared(
        "SELECT id, event_type, ts AS timestamp,
                CASE WHEN pg_column_size(properties) <= $8 THEN properties
                     ELSE jsonb_build_object('_omitted', 'properties too large to show') END
                  AS properties
           FROM events
          WHERE account = $1 AND event_type = $2 AND ts >= $3 AND ts < $4 AND received_at <= $5
            AND NOT EXISTS (
                SELECT 1 FROM jsonb_each($7) f(prop, accepted)
                 WHERE NOT coalesce(properties ->> f.prop IN
                       (SELECT jsonb_array_elements_text(f.accepted)), false))
          ORDER BY ts, id LIMIT $6",
    )
    .bind::<Text, _>(account)
    .bind::<Text, _>(event_type)
    .bind::<Timestamptz, _>(from)
    .bind::<Timestamptz, _>(to)
    .bind::<Timestamptz, _>(known_at)
    .bind::<BigInt, _>(limit)
    .bind::<diesel::sql_types::Jsonb, _>(filter)
    .bind::<diesel::sql_types::Integer, _>(MAX_LINEAGE_PROPERTIES_BYTES)
    .load(conn)
    .await?)
}

#[derive(Debug, Clone, diesel::QueryableByName)]
pub struct MonthTotal {
    #[diesel(sql_type = diesel::sql_types::Text)]
    pub month: String,
    #[diesel(sql_type = diesel::sql_types::Text)]
    pub currency: String,
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    pub invoices: i64,
    #[diesel(sql_type = diesel::sql_types::Numeric)]
    pub total: Decimal,
}

/// Invoices issued per month (UTC) and currency, with their totals (a report over every
/// account).
pub async fn monthly_totals(conn: &mut AsyncPgConnection) -> Result<Vec<MonthTotal>, StoreError> {
    Ok(super::prepared::prepared(
        "SELECT to_char(date_trunc('month', issued_at AT TIME ZONE 'UTC'), 'YYYY-MM') AS month,
                currency, COUNT(*)::int8 AS invoices, SUM(total) AS total
           FROM invoices GROUP BY 1, 2 ORDER BY 1, 2",
    )
    .load(conn)
    .await?)
}

/// The seats an account's period invoice for the period starting at `start` was billed with.
pub async fn seats_of_period(
    conn: &mut AsyncPgConnection,
    account: &str,
    start: DateTime<Utc>,
) -> Result<Option<i32>, StoreError> {
    Ok(invoices::table
        .filter(invoices::account.eq(account))
        .filter(invoices::kind.eq("period"))
        .filter(invoices::period_start.eq(start))
        .select(invoices::seats)
        .first::<i32>(conn)
        .await
        .optional()?)
}

/// Invoices numbered after `after`, in number order across accounts (the export; numbers are
/// taken from one counter row locked until the issuing transaction commits, so they commit in
/// number order and a reader past a number never misses a smaller one).
pub async fn numbered_after(
    conn: &mut AsyncPgConnection,
    after: i64,
    limit: i64,
) -> Result<Vec<InvoiceRow>, StoreError> {
    Ok(invoices::table
        .inner_join(
            invoice_numbers::table.on(invoice_numbers::account
                .eq(invoices::account)
                .and(invoice_numbers::number.eq(invoices::number))),
        )
        .filter(invoice_numbers::number.gt(after))
        .order(invoice_numbers::number)
        .limit(limit)
        .select(InvoiceRow::as_select())
        .load(conn)
        .await?)
}

/// Lines after (number, line_no) `after`, in that order across accounts (the export).
pub async fn lines_after(
    conn: &mut AsyncPgConnection,
    after: (i64, i32),
    limit: i64,
) -> Result<Vec<(InvoiceRow, LineRow)>, StoreError> {
    Ok(invoices::table
        .inner_join(
            invoice_numbers::table.on(invoice_numbers::account
                .eq(invoices::account)
                .and(invoice_numbers::number.eq(invoices::number))),
        )
        .inner_join(
            invoice_lines::table.on(invoice_lines::account
                .eq(invoices::account)
                .and(invoice_lines::number.eq(invoices::number))),
        )
        .filter(invoice_numbers::number.ge(after.0))
        .filter(
            invoices::number.gt(after.0).or(invoices::number
                .eq(after.0)
                .and(invoice_lines::line_no.gt(after.1))),
        )
        .order((invoices::number, invoice_lines::line_no))
        .limit(limit)
        .select((InvoiceRow::as_select(), LineRow::as_select()))
        .load(conn)
        .await?)
}
