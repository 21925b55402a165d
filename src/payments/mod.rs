//! The payment rail: Stripe, through async-stripe 1.0. accrue rates and decides; Stripe holds
//! customers and cards and moves the money. Every call that creates or changes something
//! carries an idempotency key derived from our ids (installation, account, invoice number,
//! line, attempt), so repeating a call after a crash returns the first answer instead of
//! charging twice.

use crate::domain::money::Currency;
use rust_decimal::Decimal;
use std::collections::HashMap;
use std::str::FromStr;
use stripe::{RequestStrategy, StripeError, StripeRequest};
use stripe_billing::invoice::{CreateInvoice, FinalizeInvoiceInvoice, PayInvoice, RetrieveInvoice};
use stripe_billing::invoice_item::CreateInvoiceItem;
use stripe_core::customer::{
    CreateCustomer, RetrieveCustomer, RetrieveCustomerReturned, UpdateCustomer,
    UpdateCustomerInvoiceSettings,
};
use stripe_payment::payment_method::AttachPaymentMethod;

/// Longest wait for one Stripe call.
pub const STRIPE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(20);

/// Where and how to reach Stripe.
#[derive(Clone)]
pub struct StripeConfig {
    pub secret_key: String,
    /// The API base (`https://api.stripe.com/` unless a fake is used).
    pub api_base: Option<String>,
    /// The signing secret of the webhook endpoint (`whsec_...`).
    pub webhook_secret: String,
}

impl std::fmt::Debug for StripeConfig {
    /// Never prints the secrets.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StripeConfig")
            .field("api_base", &self.api_base)
            .finish_non_exhaustive()
    }
}

/// What went wrong talking to Stripe.
#[derive(Debug, Clone, thiserror::Error)]
pub enum RailError {
    /// The card was declined (402): a dunning failure.
    #[error("payment declined: {0}")]
    Declined(String),
    /// Stripe refused the request (4xx other than 402): our data or configuration is wrong.
    #[error("stripe refused the request ({status}): {message}")]
    Refused { status: u16, message: String },
    /// Stripe could not be reached, was too slow, rate limited us or failed (429, 5xx, network,
    /// timeout, unreadable answer): retry later.
    #[error("stripe unavailable: {0}")]
    Unavailable(String),
}

impl From<StripeError> for RailError {
    fn from(e: StripeError) -> Self {
        match e {
            StripeError::Stripe(err, 402) => RailError::Declined(
                err.message
                    .clone()
                    .unwrap_or_else(|| "card declined".to_owned()),
            ),
            // Rate limited (429) and lock timeouts (409) pass: retry later, like a 5xx
            // (reviews/security.md M9: a 429 must never be taken for a final answer).
            StripeError::Stripe(err, status @ (409 | 429)) => RailError::Unavailable(format!(
                "Stripe answered {status}: {}",
                err.message.clone().unwrap_or_default()
            )),
            StripeError::Stripe(err, status) if (400..500).contains(&status) => {
                RailError::Refused {
                    status,
                    message: err.message.clone().unwrap_or_default(),
                }
            }
            other => RailError::Unavailable(other.to_string()),
        }
    }
}

/// A Stripe invoice as accrue reads it back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemoteInvoice {
    pub id: String,
    /// draft, open, paid, uncollectible, void.
    pub status: String,
    /// Minor units.
    pub amount_due: i64,
    pub amount_paid: i64,
    pub total: i64,
    pub currency: String,
    pub customer: Option<String>,
    pub metadata: HashMap<String, String>,
}

impl From<stripe_shared::Invoice> for RemoteInvoice {
    fn from(i: stripe_shared::Invoice) -> Self {
        Self {
            id: i.id.map(|id| id.as_str().to_owned()).unwrap_or_default(),
            status: i
                .status
                .map(|s| s.as_str().to_owned())
                .unwrap_or_else(|| "draft".into()),
            amount_due: i.amount_due,
            amount_paid: i.amount_paid,
            total: i.total,
            currency: i.currency.to_string(),
            customer: i.customer.map(|c| c.id().as_str().to_owned()),
            metadata: i.metadata.unwrap_or_default(),
        }
    }
}

/// One line of an invoice to push.
#[derive(Debug, Clone)]
pub struct PushLine {
    pub line_no: i32,
    pub amount: Decimal,
    pub description: String,
}

/// An invoice to push: ours, already issued and immutable.
#[derive(Debug, Clone)]
pub struct PushInvoice<'a> {
    pub account: &'a str,
    pub number: i64,
    pub customer: &'a str,
    pub currency: Currency,
    pub lines: Vec<PushLine>,
}

/// The exponent Stripe's API uses for `currency`: the ISO one, except ISK, which Stripe keeps
/// as a two-decimal currency (100 = 1 króna) while charging whole krónur only.
pub fn stripe_exponent(currency: Currency) -> u32 {
    match currency.code() {
        "ISK" => 2,
        _ => currency.exponent(),
    }
}

/// Why Stripe cannot collect `currency` exactly as accrue bills it, if it cannot: Stripe takes
/// three-decimal currencies (BHD, JOD, KWD, OMR, TND) only in multiples of 10 minor units, and
/// accrue bills them to the minor unit, so their plans are refused while Stripe is configured.
pub fn unpresentable(currency: Currency) -> Option<String> {
    (currency.exponent() == 3).then(|| {
        format!(
            "Stripe collects {} only in multiples of 0.010 while accrue bills it to 0.001: \
             plans in three-decimal currencies cannot be collected through Stripe",
            currency.code()
        )
    })
}

/// Stripe's minor units of `amount` in `currency` (amounts are already rounded to the
/// currency): ×100 for ISK, and for three-decimal currencies only whole multiples of 10.
pub fn minor_units(amount: Decimal, currency: Currency) -> Result<i64, RailError> {
    let scaled = amount * Decimal::from(10i64.pow(stripe_exponent(currency)));
    let step = if currency.exponent() == 3 { 10 } else { 1 };
    if scaled.fract() != Decimal::ZERO || scaled % Decimal::from(step) != Decimal::ZERO {
        return Err(RailError::Refused {
            status: 0,
            message: format!(
                "{amount} {} has more decimals than Stripe accepts in this currency",
                currency.code()
            ),
        });
    }
    i64::try_from(scaled).map_err(|_| RailError::Refused {
        status: 0,
        message: format!("{amount} {} is out of Stripe's range", currency.code()),
    })
}

/// The amount in our decimal form of Stripe's `minor` units of `currency`.
pub fn from_minor_units(minor: i64, currency: Currency) -> Decimal {
    let mut d = Decimal::new(minor, stripe_exponent(currency));
    d.rescale(currency.exponent());
    d
}

#[cfg(test)]
mod presentment_tests {
    use super::*;

    fn cur(c: &str) -> Currency {
        Currency::from_code(c).unwrap()
    }

    fn dec(s: &str) -> Decimal {
        s.parse().unwrap()
    }

    #[test]
    fn isk_is_presented_in_hundredths_of_a_krona() {
        // 1,000 krónur is 100,000 in Stripe's API (100 = 1 króna), and reads back as 1000.
        assert_eq!(minor_units(dec("1000"), cur("ISK")).unwrap(), 100_000);
        assert_eq!(from_minor_units(100_000, cur("ISK")).to_string(), "1000");
        assert_eq!(minor_units(dec("12.34"), cur("USD")).unwrap(), 1234);
        assert_eq!(from_minor_units(1234, cur("USD")).to_string(), "12.34");
        assert_eq!(minor_units(dec("500"), cur("JPY")).unwrap(), 500);
    }

    #[test]
    fn three_decimal_amounts_must_end_in_a_zero_and_such_plans_are_refused() {
        assert_eq!(minor_units(dec("1.230"), cur("KWD")).unwrap(), 1230);
        assert!(minor_units(dec("1.235"), cur("KWD")).is_err());
        assert_eq!(from_minor_units(1230, cur("KWD")).to_string(), "1.230");
        for c in ["BHD", "JOD", "KWD", "OMR", "TND"] {
            assert!(unpresentable(cur(c)).is_some(), "{c}");
        }
        for c in ["USD", "ISK", "JPY", "EUR"] {
            assert!(unpresentable(cur(c)).is_none(), "{c}");
        }
    }
}

/// Stripe through async-stripe.
#[derive(Clone)]
pub struct StripeRail {
    client: stripe::Client,
    /// This installation's id: written into every invoice's metadata, so webhooks about
    /// another installation's invoices (one Stripe account, several accrues) are ignored.
    pub installation: String,
    /// The namespace of every idempotency key (derived from the installation's id).
    keys: String,
    pub webhook_secret: String,
}

impl std::fmt::Debug for StripeRail {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StripeRail")
            .field("keys", &self.keys)
            .finish_non_exhaustive()
    }
}

fn idempotent(key: String) -> Result<RequestStrategy, RailError> {
    stripe::IdempotencyKey::new(&key)
        .map(RequestStrategy::Idempotent)
        .map_err(|e| RailError::Refused {
            status: 0,
            message: format!("idempotency key `{key}`: {e}"),
        })
}

impl StripeRail {
    pub fn new(config: &StripeConfig, installation: &str) -> Result<Self, String> {
        // Every call is bounded (the client has none by default); a timed-out call is
        // "unavailable": collection is deferred and retried, never counted as a decline.
        let mut builder =
            stripe::ClientBuilder::new(config.secret_key.clone()).timeout(STRIPE_TIMEOUT);
        if let Some(url) = &config.api_base {
            builder = builder.url(url.clone());
        }
        let client = builder.build().map_err(|e| format!("stripe client: {e}"))?;
        Ok(Self {
            client,
            installation: installation.to_owned(),
            keys: format!("accrue-{installation}"),
            webhook_secret: config.webhook_secret.clone(),
        })
    }

    fn key(&self, what: &str) -> Result<RequestStrategy, RailError> {
        idempotent(format!("{}-{what}", self.keys))
    }

    /// Creates the Stripe customer of an account (the same one however often it is called).
    pub async fn create_customer(
        &self,
        account: &str,
        email: Option<&str>,
        name: Option<&str>,
    ) -> Result<String, RailError> {
        let mut req = CreateCustomer::new().metadata(HashMap::from([
            ("accrue_account".to_owned(), account.to_owned()),
            ("accrue_installation".to_owned(), self.installation.clone()),
        ]));
        if let Some(e) = email {
            req = req.email(e);
        }
        if let Some(n) = name {
            req = req.name(n);
        }
        let customer = req
            .customize()
            .request_strategy(self.key(&format!("customer-{account}"))?)
            .send(&self.client)
            .await?;
        Ok(customer.id.as_str().to_owned())
    }

    /// Attaches a payment method (created client-side) and makes it the invoices' default.
    pub async fn set_payment_method(
        &self,
        customer: &str,
        payment_method: &str,
    ) -> Result<(), RailError> {
        AttachPaymentMethod::new(payment_method)
            .customer(customer)
            .customize()
            .request_strategy(self.key(&format!("attach-{customer}-{payment_method}"))?)
            .send(&self.client)
            .await?;
        let settings = UpdateCustomerInvoiceSettings {
            default_payment_method: Some(payment_method.to_owned()),
            ..Default::default()
        };
        UpdateCustomer::new(customer)
            .invoice_settings(settings)
            .customize()
            .request_strategy(self.key(&format!("default-pm-{customer}-{payment_method}"))?)
            .send(&self.client)
            .await?;
        Ok(())
    }

    /// Pushes an invoice: a draft with our number in its metadata, one item per line, then
    /// finalized. Safe to repeat: each step has its key, and steps already done are skipped.
    pub async fn push(&self, inv: &PushInvoice<'_>) -> Result<RemoteInvoice, RailError> {
        let n = inv.number;
        let currency =
            stripe_types::Currency::from_str(inv.currency.code().to_lowercase().as_str())
                .unwrap_or_else(|never| match never {});
        let draft = CreateInvoice::new()
            .customer(inv.customer)
            .currency(currency.clone())
            .auto_advance(false)
            .collection_method(stripe_shared::InvoiceCollectionMethod::ChargeAutomatically)
            .pending_invoice_items_behavior(
                stripe_billing::invoice::CreateInvoicePendingInvoiceItemsBehavior::Exclude,
            )
            .description(format!("accrue invoice {n}"))
            .metadata(HashMap::from([
                ("accrue_account".to_owned(), inv.account.to_owned()),
                ("accrue_invoice".to_owned(), n.to_string()),
                ("accrue_installation".to_owned(), self.installation.clone()),
            ]))
            .customize()
            .request_strategy(self.key(&format!("invoice-{n}"))?)
            .send(&self.client)
            .await?;
        let id = draft
            .id
            .as_ref()
            .map(|i| i.as_str().to_owned())
            .ok_or_else(|| {
                RailError::Unavailable("stripe answered an invoice without id".into())
            })?;
        // The answer to a repeated create is the first one: read the invoice as it is now.
        let current = self.retrieve(&id).await?;
        if current.status != "draft" {
            return Ok(current);
        }
        for line in &inv.lines {
            CreateInvoiceItem::new()
                .customer(inv.customer)
                .invoice(id.clone())
                .amount(minor_units(line.amount, inv.currency)?)
                .currency(currency.clone())
                .description(line.description.clone())
                .customize()
                .request_strategy(self.key(&format!("invoice-{n}-line-{}", line.line_no))?)
                .send(&self.client)
                .await?;
        }
        let finalized = FinalizeInvoiceInvoice::new(id.clone())
            .auto_advance(false)
            .customize()
            .request_strategy(self.key(&format!("invoice-{n}-finalize"))?)
            .send(&self.client)
            .await?;
        Ok(finalized.into())
    }

    /// Charges a finalized invoice; `attempt` (1, 2, …) keys the call, so a repeated attempt
    /// is answered from the first, and a new attempt is a new charge.
    pub async fn pay(
        &self,
        id: &str,
        number: i64,
        attempt: i32,
    ) -> Result<RemoteInvoice, RailError> {
        let paid = PayInvoice::new(id)
            .customize()
            .request_strategy(self.key(&format!("invoice-{number}-pay-{attempt}"))?)
            .send(&self.client)
            .await?;
        Ok(paid.into())
    }

    pub async fn retrieve(&self, id: &str) -> Result<RemoteInvoice, RailError> {
        let inv = RetrieveInvoice::new(id).send(&self.client).await?;
        Ok(inv.into())
    }

    /// A customer's metadata (None: Stripe has no such customer, or it was deleted).
    pub async fn customer_metadata(
        &self,
        id: &str,
    ) -> Result<Option<HashMap<String, String>>, RailError> {
        match RetrieveCustomer::new(id).send(&self.client).await {
            Ok(RetrieveCustomerReturned::Customer(c)) => Ok(Some(c.metadata.unwrap_or_default())),
            Ok(RetrieveCustomerReturned::DeletedCustomer(_)) => Ok(None),
            Err(StripeError::Stripe(_, 404)) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }
}

/// The rail invoices are collected through: Stripe, or (for `accrue demo` only) a simulated
/// card network with Stripe's test payment methods: `pm_card_visa` pays, and
/// `pm_card_chargeDeclined` attaches, then every charge is declined.
#[derive(Debug, Clone)]
pub enum Rail {
    Stripe(Box<StripeRail>),
    Simulated(std::sync::Arc<SimulatedRail>),
}

impl Rail {
    pub fn installation(&self) -> &str {
        match self {
            Rail::Stripe(s) => &s.installation,
            Rail::Simulated(_) => "simulated",
        }
    }

    /// The webhook signing secret (None: the simulated rail sends no webhooks).
    pub fn webhook_secret(&self) -> Option<&str> {
        match self {
            Rail::Stripe(s) => Some(&s.webhook_secret),
            Rail::Simulated(_) => None,
        }
    }

    pub async fn create_customer(
        &self,
        account: &str,
        email: Option<&str>,
        name: Option<&str>,
    ) -> Result<String, RailError> {
        match self {
            Rail::Stripe(s) => s.create_customer(account, email, name).await,
            Rail::Simulated(s) => Ok(s.create_customer(account)),
        }
    }

    pub async fn set_payment_method(&self, customer: &str, pm: &str) -> Result<(), RailError> {
        match self {
            Rail::Stripe(s) => s.set_payment_method(customer, pm).await,
            Rail::Simulated(s) => s.set_payment_method(customer, pm),
        }
    }

    pub async fn push(&self, inv: &PushInvoice<'_>) -> Result<RemoteInvoice, RailError> {
        match self {
            Rail::Stripe(s) => s.push(inv).await,
            Rail::Simulated(s) => s.push(inv),
        }
    }

    pub async fn pay(
        &self,
        id: &str,
        number: i64,
        attempt: i32,
    ) -> Result<RemoteInvoice, RailError> {
        match self {
            Rail::Stripe(s) => s.pay(id, number, attempt).await,
            Rail::Simulated(s) => s.pay(id, number, attempt),
        }
    }

    pub async fn retrieve(&self, id: &str) -> Result<RemoteInvoice, RailError> {
        match self {
            Rail::Stripe(s) => s.retrieve(id).await,
            Rail::Simulated(s) => s.retrieve(id),
        }
    }

    /// A customer's metadata, None when there is no such customer.
    pub async fn customer_metadata(
        &self,
        id: &str,
    ) -> Result<Option<HashMap<String, String>>, RailError> {
        match self {
            Rail::Stripe(s) => s.customer_metadata(id).await,
            Rail::Simulated(s) => Ok(s.customer_metadata(id)),
        }
    }
}

/// An in-memory card network for the demo (see [`Rail`]). Repeated calls are idempotent like
/// Stripe's: the same invoice number gives the same invoice, the same attempt the same answer.
#[derive(Debug, Default)]
pub struct SimulatedRail {
    state: std::sync::Mutex<SimState>,
}

#[derive(Debug, Default)]
struct SimState {
    customers: HashMap<String, Option<String>>,
    invoices: HashMap<String, RemoteInvoice>,
    attempts: HashMap<(i64, i32), Result<RemoteInvoice, RailError>>,
}

impl SimulatedRail {
    fn state(&self) -> std::sync::MutexGuard<'_, SimState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn create_customer(&self, account: &str) -> String {
        let id = format!("cus_sim_{account}");
        self.state().customers.entry(id.clone()).or_insert(None);
        id
    }

    fn customer_metadata(&self, id: &str) -> Option<HashMap<String, String>> {
        let account = id.strip_prefix("cus_sim_")?;
        self.state().customers.contains_key(id).then(|| {
            HashMap::from([
                ("accrue_account".to_owned(), account.to_owned()),
                ("accrue_installation".to_owned(), "simulated".to_owned()),
            ])
        })
    }

    fn set_payment_method(&self, customer: &str, pm: &str) -> Result<(), RailError> {
        if !matches!(pm, "pm_card_visa" | "pm_card_chargeDeclined") {
            return Err(RailError::Refused {
                status: 404,
                message: format!("No such PaymentMethod: '{pm}'"),
            });
        }
        self.state()
            .customers
            .insert(customer.to_owned(), Some(pm.to_owned()));
        Ok(())
    }

    fn push(&self, inv: &PushInvoice<'_>) -> Result<RemoteInvoice, RailError> {
        let id = format!("in_sim_{}", inv.number);
        let total: Decimal = inv.lines.iter().map(|l| l.amount).sum();
        let total = minor_units(total, inv.currency)?;
        let mut st = self.state();
        let remote = st
            .invoices
            .entry(id.clone())
            .or_insert_with(|| RemoteInvoice {
                id,
                status: "open".into(),
                amount_due: total,
                amount_paid: 0,
                total,
                currency: inv.currency.code().to_lowercase(),
                customer: Some(inv.customer.to_owned()),
                metadata: HashMap::from([
                    ("accrue_account".to_owned(), inv.account.to_owned()),
                    ("accrue_invoice".to_owned(), inv.number.to_string()),
                ]),
            });
        Ok(remote.clone())
    }

    fn pay(&self, id: &str, number: i64, attempt: i32) -> Result<RemoteInvoice, RailError> {
        let mut st = self.state();
        if let Some(answer) = st.attempts.get(&(number, attempt)) {
            return answer.clone();
        }
        let Some(inv) = st.invoices.get(id).cloned() else {
            return Err(RailError::Refused {
                status: 404,
                message: format!("No such invoice: '{id}'"),
            });
        };
        let card = inv
            .customer
            .as_ref()
            .and_then(|c| st.customers.get(c).cloned().flatten());
        let answer = match card.as_deref() {
            None => Err(RailError::Refused {
                status: 400,
                message: "This customer has no payment method".into(),
            }),
            Some("pm_card_chargeDeclined") => {
                Err(RailError::Declined("Your card was declined.".into()))
            }
            Some(_) => {
                let paid = RemoteInvoice {
                    status: "paid".into(),
                    amount_paid: inv.amount_due,
                    ..inv
                };
                st.invoices.insert(id.to_owned(), paid.clone());
                Ok(paid)
            }
        };
        st.attempts.insert((number, attempt), answer.clone());
        answer
    }

    fn retrieve(&self, id: &str) -> Result<RemoteInvoice, RailError> {
        self.state()
            .invoices
            .get(id)
            .cloned()
            .ok_or_else(|| RailError::Refused {
                status: 404,
                message: format!("No such invoice: '{id}'"),
            })
    }
}
