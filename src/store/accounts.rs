//! `accounts`: firmographics and the billing currency of each account.

use super::schema::accounts;
use super::StoreError;
use chrono::{DateTime, Utc};
use diesel::prelude::*;
use diesel::sql_types::Text;
use diesel_async::{AsyncPgConnection, RunQueryDsl};
use rust_decimal::Decimal;
use serde::Serialize;
use std::collections::BTreeMap;

#[derive(Debug, Clone, Queryable, Selectable, Serialize, utoipa::ToSchema)]
#[diesel(table_name = accounts)]
pub struct Account {
    pub account: String,
    pub name: Option<String>,
    pub email: Option<String>,
    pub employees: Option<i32>,
    pub industry: Option<String>,
    pub country: Option<String>,
    pub crm_owner: Option<String>,
    pub stripe_customer_id: Option<String>,
    pub currency: Option<String>,
    #[serde(serialize_with = "crate::domain::ts::ms")]
    pub created_at: DateTime<Utc>,
    #[serde(serialize_with = "crate::domain::ts::ms")]
    pub updated_at: DateTime<Utc>,
    /// Credit carried forward from invoices whose credits exceeded their charges.
    #[serde(with = "rust_decimal::serde::str")]
    pub credit_balance: Decimal,
    /// The Stripe payment method set as the account's default.
    pub payment_method: Option<String>,
    /// The test clock the account lives by (`ACCRUE_TEST_CLOCKS`).
    pub test_clock: Option<String>,
}

/// The firmographics a client may set (`PUT`/`PATCH /v1/accounts/{account}`): `None` leaves a field
/// as it is, `Some(None)` clears it. The Stripe customer link is not among them: accrue
/// manages it (`payments::link_customer`).
#[derive(Debug, Clone, Default, AsChangeset)]
#[diesel(table_name = accounts)]
pub struct Firmographics {
    pub name: Option<Option<String>>,
    pub email: Option<Option<String>>,
    pub employees: Option<Option<i32>>,
    pub industry: Option<Option<String>>,
    pub country: Option<Option<String>>,
    pub crm_owner: Option<Option<String>>,
}

/// Creates the account when needed and sets the firmographics given, leaving the others.
/// Answers the account and whether this call created it.
pub async fn upsert(
    conn: &mut AsyncPgConnection,
    account: &str,
    f: &Firmographics,
    now: DateTime<Utc>,
) -> Result<(Account, bool), StoreError> {
    let created = ensure(conn, account, now).await?;
    let saved = diesel::update(accounts::table.filter(accounts::account.eq(account)))
        .set((f.clone(), accounts::updated_at.eq(now)))
        .returning(Account::as_returning())
        .get_result(conn)
        .await?;
    Ok((saved, created))
}

/// Makes sure a bare account row exists (subscribing creates the account when needed).
/// Answers whether it was created.
pub async fn ensure(
    conn: &mut AsyncPgConnection,
    account: &str,
    now: DateTime<Utc>,
) -> Result<bool, StoreError> {
    let n = diesel::insert_into(accounts::table)
        .values((
            accounts::account.eq(account),
            accounts::created_at.eq(now),
            accounts::updated_at.eq(now),
        ))
        .on_conflict_do_nothing()
        .execute(conn)
        .await?;
    Ok(n == 1)
}

/// Creates the bare rows of these accounts that do not exist (events create their accounts).
/// The caller gives them sorted, so concurrent writers take row locks in one order.
pub async fn ensure_many(
    conn: &mut AsyncPgConnection,
    ids: &[&str],
    now: DateTime<Utc>,
) -> Result<(), StoreError> {
    if ids.is_empty() {
        return Ok(());
    }
    if super::citus::active() {
        // Multi-row VALUES, which Citus routes shard by shard (see `store::events`).
        for chunk in ids.chunks(20_000) {
            let at = chunk.len() + 1;
            let rows: Vec<String> = (1..=chunk.len())
                .map(|i| format!("(${i}, ${at}, ${at})"))
                .collect();
            let sql = format!(
                "INSERT INTO accounts (account, created_at, updated_at) VALUES {}
                 ON CONFLICT (account) DO NOTHING",
                rows.join(", ")
            );
            let mut q = diesel::sql_query(sql).into_boxed::<diesel::pg::Pg>();
            for id in chunk {
                q = q.bind::<diesel::sql_types::Text, _>(*id);
            }
            q.bind::<diesel::sql_types::Timestamptz, _>(now)
                .execute(conn)
                .await?;
        }
        return Ok(());
    }
    super::prepared::prepared(
        "INSERT INTO accounts (account, created_at, updated_at)
         SELECT a, $2, $2 FROM UNNEST($1::text[]) AS a
         ON CONFLICT (account) DO NOTHING",
    )
    .bind::<diesel::sql_types::Array<diesel::sql_types::Text>, _>(ids)
    .bind::<diesel::sql_types::Timestamptz, _>(now)
    .execute(conn)
    .await?;
    Ok(())
}

/// Filters of the account list (`GET /v1/accounts`); each given one must match exactly.
#[derive(Debug, Clone, Default)]
pub struct AccountFilter {
    /// Only this account (an account-scoped key lists itself).
    pub account: Option<String>,
    pub crm_owner: Option<String>,
    pub country: Option<String>,
    pub industry: Option<String>,
    /// The cursor: accounts after this id, in id order.
    pub after: Option<String>,
    pub limit: i64,
}

/// One page of accounts in id order.
pub async fn list(
    conn: &mut AsyncPgConnection,
    f: &AccountFilter,
) -> Result<Vec<Account>, StoreError> {
    let mut q = accounts::table
        .select(Account::as_select())
        .order(accounts::account.asc())
        .limit(f.limit)
        .into_boxed();
    if let Some(a) = &f.account {
        q = q.filter(accounts::account.eq(a.clone()));
    }
    if let Some(v) = &f.crm_owner {
        q = q.filter(accounts::crm_owner.eq(v.clone()));
    }
    if let Some(v) = &f.country {
        q = q.filter(accounts::country.eq(v.clone()));
    }
    if let Some(v) = &f.industry {
        q = q.filter(accounts::industry.eq(v.clone()));
    }
    if let Some(after) = &f.after {
        q = q.filter(accounts::account.gt(after.clone()));
    }
    Ok(q.load(conn).await?)
}

pub async fn find_by_account(
    conn: &mut AsyncPgConnection,
    account: &str,
) -> Result<Option<Account>, StoreError> {
    Ok(accounts::table
        .filter(accounts::account.eq(account))
        .select(Account::as_select())
        .first(conn)
        .await
        .optional()?)
}

/// Sets the billing currency the first time a paid plan is chosen.
pub async fn set_currency(
    conn: &mut AsyncPgConnection,
    account: &str,
    currency: &str,
) -> Result<(), StoreError> {
    diesel::update(accounts::table.filter(accounts::account.eq(account)))
        .set(accounts::currency.eq(currency))
        .execute(conn)
        .await?;
    Ok(())
}

pub async fn find_by_accounts(
    conn: &mut AsyncPgConnection,
    ids: &[String],
) -> Result<Vec<Account>, StoreError> {
    Ok(accounts::table
        .filter(accounts::account.eq_any(ids))
        .select(Account::as_select())
        .load(conn)
        .await?)
}

/// The credit balances of these accounts that are not zero.
pub async fn credit_balances(
    conn: &mut AsyncPgConnection,
    of: &[String],
) -> Result<BTreeMap<String, Decimal>, StoreError> {
    let rows: Vec<Balance> = super::rows_of_accounts(
        conn,
        super::of_accounts!("account, credit_balance", "accounts", "credit_balance <> 0"),
        of,
    )
    .await?;
    Ok(rows
        .into_iter()
        .map(|b| (b.account, b.credit_balance))
        .collect())
}

#[derive(QueryableByName)]
struct Balance {
    #[diesel(sql_type = Text)]
    account: String,
    #[diesel(sql_type = diesel::sql_types::Numeric)]
    credit_balance: Decimal,
}

#[derive(QueryableByName)]
struct Owned {
    #[diesel(sql_type = Text)]
    account: String,
    #[diesel(sql_type = Text)]
    crm_owner: String,
}

/// Which of these accounts have a CRM owner (not blank).
pub async fn with_crm_owner(
    conn: &mut AsyncPgConnection,
    of: &[String],
) -> Result<std::collections::HashSet<String>, StoreError> {
    let rows: Vec<Owned> = super::rows_of_accounts(
        conn,
        super::of_accounts!("account, crm_owner", "accounts", "crm_owner IS NOT NULL"),
        of,
    )
    .await?;
    Ok(rows
        .into_iter()
        .filter(|r| !r.crm_owner.trim().is_empty())
        .map(|r| r.account)
        .collect())
}

/// Adds to an account's credit balance (a voided invoice gives back the credit it used).
pub async fn add_credit(
    conn: &mut AsyncPgConnection,
    account: &str,
    amount: Decimal,
) -> Result<(), StoreError> {
    diesel::update(accounts::table.filter(accounts::account.eq(account)))
        .set(accounts::credit_balance.eq(accounts::credit_balance + amount))
        .execute(conn)
        .await?;
    Ok(())
}

/// Adds to these accounts' credit balances (one statement).
pub async fn add_to_credit_balances(
    conn: &mut AsyncPgConnection,
    deltas: &BTreeMap<String, Decimal>,
) -> Result<(), StoreError> {
    if deltas.is_empty() {
        return Ok(());
    }
    let (names, amounts): (Vec<String>, Vec<Decimal>) =
        deltas.iter().map(|(a, b)| (a.clone(), *b)).unzip();
    // Increments, not the values read: a concurrent change (a voided invoice giving credit
    // back) is kept without a locking read, which would also block every insert referencing
    // the account and is refused across shards on Citus.
    super::prepared::prepared(
        "UPDATE accounts a SET credit_balance = a.credit_balance + b.delta
           FROM UNNEST($1::text[], $2::numeric[]) AS b(account, delta)
          WHERE a.account = b.account",
    )
    .bind::<diesel::sql_types::Array<diesel::sql_types::Text>, _>(names)
    .bind::<diesel::sql_types::Array<diesel::sql_types::Numeric>, _>(amounts)
    .execute(conn)
    .await?;
    Ok(())
}
