//! `invoice_settlements`: invoices finance settled outside the payment rail (paid, void with a
//! credit note, written off). At most one per invoice.

use super::schema::{invoice_settlements, invoices};
use super::StoreError;
use chrono::{DateTime, Utc};
use diesel::prelude::*;
use diesel_async::{AsyncPgConnection, RunQueryDsl};
use rust_decimal::Decimal;
use serde::Serialize;

#[derive(Debug, Clone, Queryable, Selectable, Insertable, Serialize, utoipa::ToSchema)]
#[diesel(table_name = invoice_settlements)]
pub struct SettlementRow {
    #[serde(skip)]
    pub account: String,
    #[serde(skip)]
    pub number: i64,
    /// `paid`, `void` or `write_off`.
    pub kind: String,
    /// Paid: the amount received; void: the credit note's amount; write-off: the amount lost.
    #[serde(with = "rust_decimal::serde::str")]
    pub amount: Decimal,
    #[serde(serialize_with = "crate::domain::ts::ms")]
    pub settled_at: DateTime<Utc>,
    pub reference: Option<String>,
    pub reason: Option<String>,
    /// The key that settled it (left out of an account-scoped key's view).
    #[serde(skip_serializing_if = "String::is_empty")]
    pub settled_by: String,
    /// Credit given back to the account's balance (the credit a voided invoice had used).
    #[serde(with = "rust_decimal::serde::str")]
    pub credit_restored: Decimal,
    #[serde(serialize_with = "crate::domain::ts::ms")]
    pub created_at: DateTime<Utc>,
}

/// The invoice's status, its total and collection, locked until the transaction ends.
pub async fn lock_invoice(
    conn: &mut AsyncPgConnection,
    account: &str,
    number: i64,
) -> Result<Option<(String, Decimal, String)>, StoreError> {
    Ok(invoices::table
        .filter(invoices::account.eq(account))
        .filter(invoices::number.eq(number))
        .select((invoices::status, invoices::total, invoices::collection))
        .for_update()
        .first(conn)
        .await
        .optional()?)
}

pub async fn insert(conn: &mut AsyncPgConnection, row: &SettlementRow) -> Result<(), StoreError> {
    diesel::insert_into(invoice_settlements::table)
        .values(row)
        .execute(conn)
        .await?;
    Ok(())
}

pub async fn find(
    conn: &mut AsyncPgConnection,
    account: &str,
    number: i64,
) -> Result<Option<SettlementRow>, StoreError> {
    Ok(invoice_settlements::table
        .filter(invoice_settlements::account.eq(account))
        .filter(invoice_settlements::number.eq(number))
        .select(SettlementRow::as_select())
        .first(conn)
        .await
        .optional()?)
}

/// The settlements of invoices issued in [from, to) (the reconciliation's period).
pub async fn of_invoices_issued_between(
    conn: &mut AsyncPgConnection,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
) -> Result<Vec<SettlementRow>, StoreError> {
    Ok(invoice_settlements::table
        .inner_join(
            invoices::table.on(invoices::account
                .eq(invoice_settlements::account)
                .and(invoices::number.eq(invoice_settlements::number))),
        )
        .filter(invoices::issued_at.ge(from))
        .filter(invoices::issued_at.lt(to))
        .select(SettlementRow::as_select())
        .load(conn)
        .await?)
}
