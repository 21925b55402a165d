//! Settlement without Stripe, for finance: an open invoice is marked paid (amount, date,
//! reference: a wire or a cheque), voided (a credit note for its total; credit it had used goes
//! back to the account's balance) or written off (uncollectible). The settlement and the
//! invoice's new status are written in one transaction under the invoice's row lock, so two
//! settlements of one invoice cannot both succeed.
//!
//! Invoices collected through Stripe are settled in Stripe (a payment there reaches accrue
//! through its webhook; a void or write-off there is not followed yet): settling them here
//! could let a card be charged for an invoice already paid by wire.

use super::billing::{self, Invoice};
use super::{conflict, refuse_field, Ctx, ServiceError, TxError};
use crate::domain::money::Currency;
use crate::store::settlements::{self as store, SettlementRow};
use crate::store::{self as db, StoreError};
use chrono::{DateTime, Utc};
use diesel_async::AsyncConnection;
use rust_decimal::Decimal;

/// At most this many characters of a reference or a reason.
const MAX_TEXT: usize = 500;

/// What finance did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Settle {
    /// Received `amount` (the invoice's total) on `paid_at`, with a reference.
    Paid {
        amount: Decimal,
        paid_at: Option<DateTime<Utc>>,
        reference: Option<String>,
    },
    /// Cancelled: a credit note for the total.
    Void { reason: Option<String> },
    /// Given up on: uncollectible.
    WriteOff { reason: Option<String> },
}

impl Settle {
    fn kind(&self) -> &'static str {
        match self {
            Settle::Paid { .. } => "paid",
            Settle::Void { .. } => "void",
            Settle::WriteOff { .. } => "write_off",
        }
    }

    /// The invoice status it leads to.
    fn status(&self) -> &'static str {
        match self {
            Settle::Paid { .. } => "paid",
            Settle::Void { .. } => "void",
            Settle::WriteOff { .. } => "uncollectible",
        }
    }
}

fn checked_text(field: &str, v: Option<String>) -> Result<Option<String>, ServiceError> {
    match v {
        Some(s) if s.trim().is_empty() => Ok(None),
        Some(s) if s.chars().count() > MAX_TEXT || s.chars().any(char::is_control) => {
            Err(ServiceError::invalid_field(
                "invalid_text",
                field,
                format!("{field}: at most {MAX_TEXT} characters, no control characters"),
            ))
        }
        other => Ok(other),
    }
}

/// Settles invoice `number` (which must be open and collected manually) and answers it as
/// `GET /v1/invoices/{number}` now shows it.
pub async fn settle(
    ctx: &Ctx,
    number: i64,
    how: Settle,
    settled_by: &str,
) -> Result<Invoice, ServiceError> {
    let how = match how {
        Settle::Paid {
            amount,
            paid_at,
            reference,
        } => Settle::Paid {
            amount,
            paid_at,
            reference: checked_text("reference", reference)?,
        },
        Settle::Void { reason } => Settle::Void {
            reason: checked_text("reason", reason)?,
        },
        Settle::WriteOff { reason } => Settle::WriteOff {
            reason: checked_text("reason", reason)?,
        },
    };
    let not_found = || ServiceError::NotFound(format!("invoice {number} not found"));
    let mut conn = ctx.pool.get().await.map_err(StoreError::from)?;
    let account = db::invoices::account_of_number(&mut conn, number)
        .await?
        .ok_or_else(not_found)?;
    let now = ctx.now_for(&mut conn, &account).await?;
    conn.transaction::<(), TxError, _>(async |c| {
        let Some((status, total, collection)) = store::lock_invoice(c, &account, number).await?
        else {
            return Err(TxError::Refused(not_found()));
        };
        if status != "open" {
            return Err(conflict(
                "invoice_not_open",
                format!("invoice {number} is {status}: only an open invoice can be settled"),
            ));
        }
        if collection != "manual" {
            return Err(conflict(
                "collected_by_stripe",
                format!(
                    "invoice {number} is collected through Stripe: settle it there (accrue follows Stripe's answer)"
                ),
            ));
        }
        let (invoice, lines) = db::invoices::find_by_account_and_number(c, &account, number)
            .await?
            .ok_or_else(|| TxError::Refused(not_found()))?;
        let exp = Currency::from_code(&invoice.currency).map_or(2, |c| c.exponent());
        let mut due = total;
        due.rescale(exp);
        if due < Decimal::ZERO {
            // Issued before credit balances existed: its credit was never carried forward.
            return Err(conflict(
                "negative_total",
                format!(
                    "invoice {number} totals {due} {}: a negative invoice cannot be settled; its credit is owed to the account",
                    invoice.currency
                ),
            ));
        }
        let mut row = SettlementRow {
            account: account.clone(),
            number,
            kind: how.kind().into(),
            amount: due,
            settled_at: now,
            reference: None,
            reason: None,
            settled_by: settled_by.to_owned(),
            credit_restored: Decimal::ZERO,
            created_at: now,
        };
        match &how {
            Settle::Paid {
                amount,
                paid_at,
                reference,
            } => {
                if amount.normalize() != due.normalize() {
                    return Err(refuse_field(
                        "amount_mismatch",
                        "amount",
                        format!(
                            "amount: {amount} is not the invoice's total {due} {}: record the whole payment",
                            invoice.currency
                        ),
                    ));
                }
                if let Some(at) = paid_at {
                    if *at > now {
                        return Err(refuse_field(
                            "paid_at_in_future",
                            "paid_at",
                            format!(
                                "paid_at: {} is in the future",
                                at.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
                            ),
                        ));
                    }
                    row.settled_at = *at;
                }
                row.reference = reference.clone();
            }
            Settle::Void { reason } => {
                if lines.iter().any(|l| l.kind == "credit_carried_forward") {
                    return Err(conflict(
                        "credit_carried",
                        format!(
                            "invoice {number} carried credit to the account's balance: it cannot be voided"
                        ),
                    ));
                }
                // The credit the invoice used goes back to the balance.
                let used: Decimal = lines
                    .iter()
                    .filter(|l| l.kind == "credit_applied")
                    .map(|l| -l.amount)
                    .sum();
                if used > Decimal::ZERO {
                    db::accounts::add_credit(c, &account, used).await?;
                }
                row.credit_restored = used;
                row.reason = reason.clone();
            }
            Settle::WriteOff { reason } => row.reason = reason.clone(),
        }
        store::insert(c, &row).await?;
        db::payments::set_invoice_status(c, &account, number, how.status()).await?;
        Ok(())
    })
    .await?;
    drop(conn);
    billing::get_invoice(ctx, number, None).await
}
