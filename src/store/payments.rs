//! `invoice_payments`, `dunning_steps`, `stripe_events`, `installation`, and the account's
//! Stripe customer id. Every account-owned query filters on `account` (so the tables can be distributed by it).

use super::schema::{
    accounts, dunning_steps, installation, invoice_payments, invoices, stripe_events,
};
use super::StoreError;
use chrono::{DateTime, Utc};
use diesel::prelude::*;
use diesel_async::{AsyncPgConnection, RunQueryDsl};
use rust_decimal::Decimal;
use serde::Serialize;

#[derive(
    Debug, Clone, Queryable, Selectable, Insertable, AsChangeset, Serialize, utoipa::ToSchema,
)]
#[diesel(table_name = invoice_payments)]
#[diesel(treat_none_as_null = true)]
pub struct PaymentRow {
    /// The key: never in an UPDATE's SET (Citus refuses a SET of the distribution column).
    #[diesel(skip_update)]
    pub account: String,
    pub number: i64,
    pub stripe_invoice_id: Option<String>,
    pub state: String,
    pub attempts: i32,
    #[serde(serialize_with = "crate::domain::ts::ms_opt")]
    pub first_failure_at: Option<DateTime<Utc>>,
    #[serde(serialize_with = "crate::domain::ts::ms_opt")]
    pub next_attempt_at: Option<DateTime<Utc>>,
    #[serde(with = "rust_decimal::serde::str")]
    pub amount_paid: Decimal,
    #[serde(serialize_with = "crate::domain::ts::ms_opt")]
    pub paid_at: Option<DateTime<Utc>>,
    pub last_error: Option<String>,
    #[serde(serialize_with = "crate::domain::ts::ms")]
    pub updated_at: DateTime<Utc>,
}

impl PaymentRow {
    /// A new invoice waiting for its first collection attempt at `now`.
    pub fn pending(account: &str, number: i64, now: DateTime<Utc>) -> Self {
        Self {
            account: account.to_owned(),
            number,
            stripe_invoice_id: None,
            state: "pending".into(),
            attempts: 0,
            first_failure_at: None,
            next_attempt_at: Some(now),
            amount_paid: Decimal::ZERO,
            paid_at: None,
            last_error: None,
            updated_at: now,
        }
    }
}

pub async fn insert_many(
    conn: &mut AsyncPgConnection,
    rows: &[PaymentRow],
) -> Result<(), StoreError> {
    for chunk in rows.chunks(2000) {
        diesel::insert_into(invoice_payments::table)
            .values(chunk)
            .on_conflict_do_nothing()
            .execute(conn)
            .await?;
    }
    Ok(())
}

/// Invoices whose collection is due at `now`, oldest first (not locked: each is then locked on
/// its own with [`try_collection_lock`]).
pub async fn due(
    conn: &mut AsyncPgConnection,
    now: DateTime<Utc>,
    limit: i64,
) -> Result<Vec<(String, i64)>, StoreError> {
    Ok(invoice_payments::table
        .filter(invoice_payments::state.eq_any(["pending", "failed"]))
        .filter(invoice_payments::next_attempt_at.le(now))
        // Accounts on a test clock are collected when their clock is advanced.
        .filter(diesel::dsl::sql::<diesel::sql_types::Bool>(
            "NOT EXISTS (SELECT 1 FROM accounts a WHERE a.account = invoice_payments.account \
             AND a.test_clock IS NOT NULL)",
        ))
        .order(invoice_payments::next_attempt_at.asc())
        .select((invoice_payments::account, invoice_payments::number))
        .limit(limit)
        .load(conn)
        .await?)
}

/// One account's invoices whose collection is due at `now`.
pub async fn due_by_account(
    conn: &mut AsyncPgConnection,
    account: &str,
    now: DateTime<Utc>,
) -> Result<Vec<i64>, StoreError> {
    Ok(invoice_payments::table
        .filter(invoice_payments::account.eq(account))
        .filter(invoice_payments::state.eq_any(["pending", "failed"]))
        .filter(invoice_payments::next_attempt_at.le(now))
        .order(invoice_payments::number.asc())
        .select(invoice_payments::number)
        .load(conn)
        .await?)
}

/// The session lock key of one invoice's collection ([`super::locks::SessionLock`]).
pub fn collection_lock_key(account: &str, number: i64) -> String {
    format!("collect/{account}/{number}")
}

/// One invoice's collection row, without locking it.
pub async fn find(
    conn: &mut AsyncPgConnection,
    account: &str,
    number: i64,
) -> Result<Option<PaymentRow>, StoreError> {
    Ok(invoice_payments::table
        .filter(invoice_payments::account.eq(account))
        .filter(invoice_payments::number.eq(number))
        .select(PaymentRow::as_select())
        .first(conn)
        .await
        .optional()?)
}

/// Remembers the Stripe invoice an invoice was pushed as, as soon as Stripe answered: later
/// attempts re-read it instead of pushing again.
pub async fn set_stripe_invoice(
    conn: &mut AsyncPgConnection,
    account: &str,
    number: i64,
    stripe_invoice: &str,
) -> Result<(), StoreError> {
    diesel::update(
        invoice_payments::table
            .filter(invoice_payments::account.eq(account))
            .filter(invoice_payments::number.eq(number)),
    )
    .set(invoice_payments::stripe_invoice_id.eq(stripe_invoice))
    .execute(conn)
    .await?;
    Ok(())
}

/// Locks one invoice's collection row, waiting for another worker to let go of it.
pub async fn lock(
    conn: &mut AsyncPgConnection,
    account: &str,
    number: i64,
) -> Result<Option<PaymentRow>, StoreError> {
    Ok(invoice_payments::table
        .filter(invoice_payments::account.eq(account))
        .filter(invoice_payments::number.eq(number))
        .select(PaymentRow::as_select())
        .for_update()
        .first(conn)
        .await
        .optional()?)
}

pub async fn save(conn: &mut AsyncPgConnection, row: &PaymentRow) -> Result<(), StoreError> {
    diesel::update(
        invoice_payments::table
            .filter(invoice_payments::account.eq(&row.account))
            .filter(invoice_payments::number.eq(row.number)),
    )
    .set(row)
    .execute(conn)
    .await?;
    Ok(())
}

pub async fn find_by_account_and_numbers(
    conn: &mut AsyncPgConnection,
    account: &str,
    numbers: &[i64],
) -> Result<Vec<PaymentRow>, StoreError> {
    Ok(invoice_payments::table
        .filter(invoice_payments::account.eq(account))
        .filter(invoice_payments::number.eq_any(numbers))
        .select(PaymentRow::as_select())
        .load(conn)
        .await?)
}

/// The account's invoices other than `except` whose collection failed and that are still
/// unpaid (retrying, or out of retries): while any is, the account is not paid up.
pub async fn count_failed_by_account(
    conn: &mut AsyncPgConnection,
    account: &str,
    except: i64,
) -> Result<i64, StoreError> {
    Ok(invoice_payments::table
        .filter(invoice_payments::account.eq(account))
        .filter(invoice_payments::number.ne(except))
        .filter(invoice_payments::state.eq_any(["failed", "exhausted"]))
        .count()
        .get_result(conn)
        .await?)
}

/// The account's invoices whose collection failed (retrying, exhausted, or refused by
/// Stripe), oldest first.
pub async fn failed_by_account(
    conn: &mut AsyncPgConnection,
    account: &str,
) -> Result<Vec<i64>, StoreError> {
    Ok(invoice_payments::table
        .filter(invoice_payments::account.eq(account))
        .filter(invoice_payments::state.eq_any(["failed", "exhausted", "refused"]))
        .order(invoice_payments::number.asc())
        .select(invoice_payments::number)
        .load(conn)
        .await?)
}

/// The collections of `accounts` not paid yet (pending, retrying, exhausted or refused).
pub async fn unpaid_by_accounts(
    conn: &mut AsyncPgConnection,
    accounts: &[String],
) -> Result<Vec<PaymentRow>, StoreError> {
    Ok(invoice_payments::table
        .filter(invoice_payments::account.eq_any(accounts))
        .filter(invoice_payments::paid_at.is_null())
        .order((invoice_payments::account, invoice_payments::number))
        .select(PaymentRow::as_select())
        .load(conn)
        .await?)
}

/// How many of the account's invoices are failing or exhausted in collection.
pub async fn count_unpaid_by_account(
    conn: &mut AsyncPgConnection,
    account: &str,
) -> Result<i64, StoreError> {
    Ok(invoice_payments::table
        .filter(invoice_payments::account.eq(account))
        .filter(invoice_payments::state.eq_any(["failed", "exhausted", "refused"]))
        .count()
        .get_result(conn)
        .await?)
}

/// Sets an invoice's status (payment state; its amounts and lines never change).
pub async fn set_invoice_status(
    conn: &mut AsyncPgConnection,
    account: &str,
    number: i64,
    status: &str,
) -> Result<(), StoreError> {
    diesel::update(
        invoices::table
            .filter(invoices::account.eq(account))
            .filter(invoices::number.eq(number)),
    )
    .set(invoices::status.eq(status))
    .execute(conn)
    .await?;
    Ok(())
}

#[derive(Debug, Clone, Queryable, Selectable, Serialize, utoipa::ToSchema)]
#[diesel(table_name = dunning_steps)]
pub struct StepRow {
    #[serde(skip)]
    pub account: String,
    #[serde(skip)]
    pub id: i64,
    #[serde(rename = "invoice")]
    pub number: i64,
    #[serde(serialize_with = "crate::domain::ts::ms")]
    pub at: DateTime<Utc>,
    pub step: String,
    pub attempt: i32,
    pub reason: String,
}

pub async fn insert_step(
    conn: &mut AsyncPgConnection,
    account: &str,
    number: i64,
    at: DateTime<Utc>,
    step: &str,
    attempt: i32,
    reason: &str,
) -> Result<i64, StoreError> {
    Ok(diesel::insert_into(dunning_steps::table)
        .values((
            dunning_steps::account.eq(account),
            dunning_steps::number.eq(number),
            dunning_steps::at.eq(at),
            dunning_steps::step.eq(step),
            dunning_steps::attempt.eq(attempt),
            dunning_steps::reason.eq(reason),
        ))
        .returning(dunning_steps::id)
        .get_result(conn)
        .await?)
}

pub async fn steps_by_account(
    conn: &mut AsyncPgConnection,
    account: &str,
) -> Result<Vec<StepRow>, StoreError> {
    Ok(dunning_steps::table
        .filter(dunning_steps::account.eq(account))
        .order(dunning_steps::id.asc())
        .select(StepRow::as_select())
        .load(conn)
        .await?)
}

/// Records a webhook event id; false when it was recorded before (a replay).
pub async fn record_event(
    conn: &mut AsyncPgConnection,
    event_id: &str,
    event_type: &str,
    object_id: Option<&str>,
    account: Option<&str>,
    now: DateTime<Utc>,
) -> Result<bool, StoreError> {
    let n = diesel::insert_into(stripe_events::table)
        .values((
            stripe_events::event_id.eq(event_id),
            stripe_events::event_type.eq(event_type),
            stripe_events::object_id.eq(object_id),
            stripe_events::account.eq(account),
            stripe_events::received_at.eq(now),
        ))
        .on_conflict_do_nothing()
        .execute(conn)
        .await?;
    Ok(n == 1)
}

pub async fn event_seen(conn: &mut AsyncPgConnection, event_id: &str) -> Result<bool, StoreError> {
    Ok(stripe_events::table
        .filter(stripe_events::event_id.eq(event_id))
        .count()
        .get_result::<i64>(conn)
        .await?
        > 0)
}

/// This installation's id, created on first use with `fresh` (a random value from the caller).
pub async fn installation_id(
    conn: &mut AsyncPgConnection,
    fresh: &str,
    now: DateTime<Utc>,
) -> Result<String, StoreError> {
    diesel::insert_into(installation::table)
        .values((
            installation::singleton.eq(true),
            installation::id.eq(fresh),
            installation::created_at.eq(now),
        ))
        .on_conflict_do_nothing()
        .execute(conn)
        .await?;
    Ok(installation::table
        .select(installation::id)
        .first(conn)
        .await?)
}

pub async fn customer_of(
    conn: &mut AsyncPgConnection,
    account: &str,
) -> Result<Option<String>, StoreError> {
    Ok(accounts::table
        .filter(accounts::account.eq(account))
        .select(accounts::stripe_customer_id)
        .first::<Option<String>>(conn)
        .await
        .optional()?
        .flatten())
}

pub async fn set_customer(
    conn: &mut AsyncPgConnection,
    account: &str,
    customer: &str,
) -> Result<(), StoreError> {
    diesel::update(accounts::table.filter(accounts::account.eq(account)))
        .set(accounts::stripe_customer_id.eq(customer))
        .execute(conn)
        .await?;
    Ok(())
}

pub async fn set_payment_method(
    conn: &mut AsyncPgConnection,
    account: &str,
    pm: &str,
) -> Result<(), StoreError> {
    diesel::update(accounts::table.filter(accounts::account.eq(account)))
        .set(accounts::payment_method.eq(pm))
        .execute(conn)
        .await?;
    Ok(())
}

/// Whether the account has a payment method on file.
pub async fn has_payment_method(
    conn: &mut AsyncPgConnection,
    account: &str,
) -> Result<bool, StoreError> {
    Ok(accounts::table
        .filter(accounts::account.eq(account))
        .select(accounts::payment_method)
        .first::<Option<String>>(conn)
        .await
        .optional()?
        .flatten()
        .is_some())
}

/// Invoices issued in [from, to) with their collection rows (the reconciliation report).
pub async fn issued_between(
    conn: &mut AsyncPgConnection,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
) -> Result<Vec<(super::invoices::InvoiceRow, Option<PaymentRow>)>, StoreError> {
    use super::invoices::InvoiceRow;
    Ok(invoices::table
        .left_join(
            invoice_payments::table.on(invoice_payments::account
                .eq(invoices::account)
                .and(invoice_payments::number.eq(invoices::number))),
        )
        .filter(invoices::issued_at.ge(from))
        .filter(invoices::issued_at.lt(to))
        .order(invoices::number.asc())
        .select((InvoiceRow::as_select(), Option::<PaymentRow>::as_select()))
        .load(conn)
        .await?)
}

/// How many dunning steps of each kind were recorded (a report over every account).
pub async fn step_counts(conn: &mut AsyncPgConnection) -> Result<Vec<(String, i64)>, StoreError> {
    Ok(dunning_steps::table
        .group_by(dunning_steps::step)
        .select((dunning_steps::step, diesel::dsl::count_star()))
        .order(dunning_steps::step.asc())
        .load(conn)
        .await?)
}

/// Invoices paid through the rail.
pub async fn count_paid(conn: &mut AsyncPgConnection) -> Result<i64, StoreError> {
    Ok(invoice_payments::table
        .filter(invoice_payments::state.eq("paid"))
        .count()
        .get_result(conn)
        .await?)
}
