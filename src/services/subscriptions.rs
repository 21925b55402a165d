//! Accounts, subscriptions and self-serve changes: subscribing, quotes that are exactly what
//! acceptance executes, idempotent acceptance, seat limits, trials, plan migrations' scheduling.
//!
//! Every change of an account runs under its subscription row lock, and first catches the
//! subscription up to the account's time (`lifecycle::catch_up`: trial ends, scheduled changes
//! at period end, renewals), so there is one definition of what happens when time passes.

use super::auth::Principal;
pub use super::lifecycle::Scheduled;
use super::lifecycle::{
    catch_up, classify, is_due, lock_and_catch_up, lock_existing, plan_of, plan_ref, Effects,
    MrrRef, PendingMrr,
};
use super::{billing, conflict, refuse, refuse_field, revenue, Ctx, ServiceError, TxError};
use crate::domain::account::AccountId;
use crate::domain::invoice::{advance_fee_lines, InvoiceDraft, InvoiceKind, InvoiceLine};
use crate::domain::period::{anchor_at, period_containing, Period};
use crate::domain::plan::{DowngradePolicy, PlanRef, PlanVersion};
use crate::domain::proration::{immediate_change, ProrationKind, ProrationLine};
use crate::domain::ts;
use crate::store::accounts::{self, Account, Firmographics};
use crate::store::subscriptions::{
    self as subs, change, IdempotencyRow, QuoteRow, SubscriptionRow,
};
use crate::store::{plans as store_plans, StoreError};
use chrono::{DateTime, Duration, Utc};
use diesel_async::{AsyncConnection, AsyncPgConnection};
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

/// How long a quote can be accepted.
pub const QUOTE_TTL_MINUTES: i64 = 30;

/// The subscription as the API shows it.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct SubscriptionView {
    pub account: String,
    pub plan: String,
    #[serde(rename = "version")]
    pub plan_version: i32,
    pub plan_name: String,
    pub seats: i32,
    pub status: String,
    pub current_period: Period,
    #[serde(serialize_with = "crate::domain::ts::ms_opt")]
    pub trial_end: Option<DateTime<Utc>>,
    pub scheduled_change: Option<Scheduled>,
    pub currency: String,
    pub revision: i64,
}

fn view(row: &SubscriptionRow, plan: &PlanVersion) -> SubscriptionView {
    SubscriptionView {
        account: row.account.clone(),
        plan: row.plan.clone(),
        plan_version: row.plan_version,
        plan_name: plan.name.clone(),
        seats: row.seats,
        status: row.status.clone(),
        current_period: Period {
            start: row.period_start,
            end: row.period_end,
        },
        trial_end: row.trial_end,
        scheduled_change: row
            .scheduled
            .clone()
            .and_then(|v| serde_json::from_value(v).ok()),
        currency: plan.currency.code().to_owned(),
        revision: row.revision,
    }
}

// ---------------------------------------------------------------------------------------------
// Accounts

/// Creates the account when needed and sets the firmographics given (the others are left as
/// they are). `customer` links a Stripe customer that `payments::verify_customer` checked.
pub async fn put_account(
    ctx: &Ctx,
    account: &str,
    f: Firmographics,
    test_clock: Option<&str>,
    customer: Option<&str>,
) -> Result<(Account, bool), ServiceError> {
    AccountId::parse(account).map_err(|why| ServiceError::invalid("invalid_account", why))?;
    if f.employees.flatten().is_some_and(|e| e < 0) {
        return Err(ServiceError::invalid_field(
            "invalid_employees",
            "employees",
            "employees must not be negative",
        ));
    }
    for (field, value) in [
        ("name", &f.name),
        ("email", &f.email),
        ("industry", &f.industry),
        ("country", &f.country),
        ("crm_owner", &f.crm_owner),
    ] {
        if let Some(Some(v)) = value {
            if v.chars().count() > 500 || v.chars().any(char::is_control) {
                return Err(ServiceError::invalid_field(
                    "invalid_text",
                    field,
                    format!("{field}: at most 500 characters, no control characters"),
                ));
            }
        }
    }
    if let Some(Some(email)) = &f.email {
        if !email.contains('@') {
            return Err(ServiceError::invalid_field(
                "invalid_email",
                "email",
                format!("`{email}` is not an email address"),
            ));
        }
    }
    let mut conn = ctx.pool.get().await.map_err(StoreError::from)?;
    if let Some(id) = test_clock {
        if !ctx.test_clocks_on() {
            return Err(ServiceError::invalid(
                "test_clocks_disabled",
                "test clocks are off on this server (ACCRUE_TEST_CLOCKS=true turns them on)",
            ));
        }
        if crate::store::test_clocks::find_by_id(&mut conn, id)
            .await?
            .is_none()
        {
            return Err(ServiceError::invalid_field(
                "unknown_test_clock",
                "test_clock",
                format!("test_clock: no test clock `{id}`"),
            ));
        }
        if let Some(existing) = accounts::find_by_account(&mut conn, account).await? {
            if existing.test_clock.as_deref() != Some(id) {
                return Err(ServiceError::Conflict {
                    code: "test_clock_fixed",
                    message: format!(
                        "account `{account}` exists: a test clock is set only when an account is created"
                    ),
                });
            }
        }
    }
    let (saved, created) = conn
        .transaction::<(Account, bool), TxError, _>(async |c| {
            let (mut saved, created) = accounts::upsert(c, account, &f, ctx.clock.now()).await?;
            if let Some(id) = customer {
                crate::store::payments::set_customer(c, account, id).await?;
                saved.stripe_customer_id = Some(id.to_owned());
            }
            if let Some(id) = test_clock {
                crate::store::test_clocks::attach(c, account, id).await?;
                saved.test_clock = Some(id.to_owned());
            }
            Ok((saved, created))
        })
        .await?;
    // Firmographics feed the PQL score and the routing.
    ctx.pql.mark([account]);
    Ok((presented(saved), created))
}

/// One page of accounts in id order (`GET /v1/accounts`).
pub async fn list_accounts(
    ctx: &Ctx,
    filter: &accounts::AccountFilter,
) -> Result<Vec<Account>, ServiceError> {
    let mut conn = ctx.pool.get().await.map_err(StoreError::from)?;
    Ok(accounts::list(&mut conn, filter)
        .await?
        .into_iter()
        .map(presented)
        .collect())
}

pub async fn get_account(ctx: &Ctx, account: &str) -> Result<Account, ServiceError> {
    let mut conn = ctx.pool.get().await.map_err(StoreError::from)?;
    accounts::find_by_account(&mut conn, account)
        .await?
        .map(presented)
        .ok_or_else(|| ServiceError::NotFound(format!("account `{account}` not found")))
}

/// The account with its credit balance at its currency's scale.
fn presented(mut a: Account) -> Account {
    let exp = a
        .currency
        .as_deref()
        .and_then(crate::domain::money::Currency::from_code)
        .map_or(2, |c| c.exponent());
    a.credit_balance.rescale(exp);
    a
}

// ---------------------------------------------------------------------------------------------
// Plans as subscriptions see them: the versions published in the database.

/// The plan version to subscribe to: `version` or the latest published one, as published
/// (the database is the source of truth; a version published moments ago, perhaps through
/// another instance, is read from its published definition and the live catalogue reloaded).
pub async fn resolve_plan(
    ctx: &Ctx,
    conn: &mut AsyncPgConnection,
    plan: &str,
    version: Option<u32>,
) -> Result<PlanVersion, ServiceError> {
    // `plan@version` is accepted wherever a plan is named.
    let (plan, version) = match plan.split_once('@') {
        Some(_) => {
            let r: PlanRef = plan.parse().map_err(|e: String| {
                ServiceError::invalid_field("invalid_plan", "plan", format!("plan: {e}"))
            })?;
            if version.is_some_and(|v| v != r.version) {
                return Err(ServiceError::invalid_field(
                    "invalid_plan",
                    "plan",
                    format!(
                        "plan `{plan}` and version {} disagree: give one",
                        version.unwrap_or_default()
                    ),
                ));
            }
            (r.plan, Some(r.version))
        }
        None => (plan.to_owned(), version),
    };
    let plan = plan.as_str();
    let published = match version {
        Some(v) => store_plans::find_by_plan_and_version(conn, plan, v as i32).await?,
        None => store_plans::find_latest_by_plan(conn, plan).await?,
    };
    let Some(row) = published else {
        let which = version.map_or(plan.to_owned(), |v| format!("{plan}@{v}"));
        return Err(ServiceError::invalid_field(
            "unknown_plan",
            "plan",
            format!("plan {which} is not published"),
        ));
    };
    let r = PlanRef {
        plan: plan.to_owned(),
        version: row.version as u32,
    };
    let loaded = |ctx: &Ctx| {
        let plans = ctx.plans();
        plans
            .is_published(&r)
            .then(|| plans.get(&r).cloned())
            .flatten()
    };
    if let Some(pv) = loaded(ctx) {
        return Ok(pv);
    }
    // Published moments ago (perhaps through another instance): load it now, so everything
    // this subscription does next (its MRR, its checks, its invoices) finds it here.
    ctx.refresh_plans().await?;
    loaded(ctx).ok_or_else(|| {
        ServiceError::invalid_field(
            "plan_not_available",
            "plan",
            format!("{r} is published in a form this server cannot read: upgrade it"),
        )
    })
}

/// The plan to suggest to an account on `current` with `seats` seats: among the latest
/// versions of the other self-serve plans in the same currency that satisfy `allows`, the
/// cheapest by monthly-normalized recurring price, preferring the current billing interval (a
/// monthly customer is pointed to a monthly plan, not asked for a yearly commitment). Latest
/// means latest published, as subscribing without a version picks.
pub fn cheapest_self_serve<'a>(
    plans: &'a crate::catalog::plans::PlanCatalog,
    current: &PlanVersion,
    seats: u32,
    allows: impl Fn(&PlanVersion) -> bool,
) -> Option<&'a PlanVersion> {
    plans
        .plan_codes()
        .into_iter()
        .filter_map(|c| plans.latest(c))
        .filter(|p| p.self_serve && p.plan != current.plan && p.currency == current.currency)
        .filter(|p| allows(p))
        .min_by_key(|p| (p.interval != current.interval, p.monthly_recurring(seats)))
}

/// Most seats any subscription may hold, whatever its plan says (the seat count is stored as
/// a 32-bit integer; past this it is a typo, not a customer).
pub const MAX_SEATS: u32 = 1_000_000;

/// Refuses a seat count the plan does not allow, naming the way out (the plan that allows it).
pub fn check_seats(
    plans: &crate::catalog::plans::PlanCatalog,
    plan: &PlanVersion,
    seats: u32,
) -> Result<(), ServiceError> {
    if seats > MAX_SEATS {
        return Err(ServiceError::invalid_field(
            "invalid_seats",
            "seats",
            format!("seats: {seats} is more than {MAX_SEATS}"),
        ));
    }
    let Some(s) = &plan.seats else {
        return Ok(());
    };
    if let Some(max) = s.max {
        if seats > max {
            let allows = |p: &PlanVersion| {
                p.seats
                    .as_ref()
                    .is_some_and(|s| s.max.is_none_or(|m| seats <= m))
            };
            // The way out in either direction: fewer seats here, or a plan that takes them
            // (a downgrade to a small plan is told to reduce seats, not to "upgrade").
            let hint = match cheapest_self_serve(plans, plan, seats, allows) {
                Some(p) => format!(": ask for {max} or fewer, or choose {} for {seats}", p.plan),
                None => format!(": ask for {max} or fewer, or contact sales for {seats}"),
            };
            return Err(ServiceError::invalid_field(
                "seat_limit",
                "seats",
                format!("seat limit {max} on plan {}{hint}", plan.plan),
            ));
        }
    }
    if seats < s.min {
        return Err(ServiceError::invalid_field(
            "seat_minimum",
            "seats",
            format!("plan {} needs at least {} seats", plan.plan, s.min),
        ));
    }
    Ok(())
}

/// The seats a change to `new` keeps when none are given: the current seats, at least the new
/// plan's minimum.
pub fn default_seats(old_seats: u32, new: &PlanVersion) -> u32 {
    old_seats.max(new.seats.as_ref().map_or(0, |s| s.min))
}

/// What a plan or seat change does, as a quote decides it (and `accrue quote` offline): its
/// kind, when it takes effect (a decrease waits for the period end unless the current plan
/// says `immediate_credit`; asking for now otherwise is refused), and, when it takes effect
/// now, the prorated lines and the new period of an interval change.
#[derive(Debug, Clone)]
pub struct ChangeTerms {
    pub kind: &'static str,
    pub effective: Effective,
    pub lines: Vec<ProrationLine>,
    pub new_period: Option<Period>,
}

#[allow(clippy::too_many_arguments)]
pub fn change_terms(
    old: &PlanVersion,
    old_seats: u32,
    new: &PlanVersion,
    new_seats: u32,
    requested: Option<Effective>,
    operator_override: bool,
    period: &Period,
    now: DateTime<Utc>,
    trialing: bool,
) -> Result<ChangeTerms, ServiceError> {
    if new.plan == old.plan && new.version == old.version && new_seats == old_seats {
        return Err(ServiceError::invalid(
            "no_change",
            "the quote changes nothing: give another plan, version or seat count",
        ));
    }
    let kind = classify(old, old_seats, new, new_seats);
    let decrease = matches!(kind, "downgrade" | "seats_removed");
    let policy_now = !decrease || old.downgrade == DowngradePolicy::ImmediateCredit;
    let effective = match requested {
        Some(Effective::Now) if !policy_now && !operator_override => {
            return Err(ServiceError::invalid_field(
                "downgrade_at_period_end",
                "effective",
                format!(
                    "on plan {} downgrades and seat decreases take effect at the period end ({})",
                    old.plan,
                    ts::format(&period.end)
                ),
            ))
        }
        Some(e) => e,
        None if policy_now => Effective::Now,
        None => Effective::PeriodEnd,
    };
    let (lines, new_period) = if effective == Effective::PeriodEnd || trialing {
        (Vec::new(), None)
    } else {
        // A new interval ends the period now (`new_period`); acceptance invoices the ended
        // part's usage in arrears.
        immediate_change(period, now, old, old_seats, new, new_seats)
    };
    Ok(ChangeTerms {
        kind,
        effective,
        lines,
        new_period,
    })
}

fn check_self_serve(principal: &Principal, plan: &PlanVersion) -> Result<(), TxError> {
    if !plan.self_serve && principal.account.is_some() {
        return Err(refuse_field(
            "plan_not_self_serve",
            "plan",
            format!(
                "plan {} is sold by our sales team: contact sales to move to it",
                plan.plan
            ),
        ));
    }
    Ok(())
}

fn is_paid(plan: &PlanVersion) -> bool {
    !plan.base_fee.is_zero()
        || plan
            .seats
            .as_ref()
            .is_some_and(|s| !s.unit_amount.is_zero())
        || !plan.charges.is_empty()
}

/// Refuses a plan in another currency than the account's; records the first paid currency.
async fn check_currency(
    conn: &mut AsyncPgConnection,
    account: &str,
    plan: &PlanVersion,
) -> Result<(), TxError> {
    let acc = accounts::find_by_account(conn, account).await?;
    match acc.and_then(|a| a.currency) {
        Some(c) if c != plan.currency.code() => Err(refuse(
            "currency_mismatch",
            format!(
                "account `{account}` bills in {c}; plan {} is priced in {}",
                plan.plan, plan.currency
            ),
        )),
        Some(_) => Ok(()),
        None if is_paid(plan) => {
            accounts::set_currency(conn, account, plan.currency.code()).await?;
            Ok(())
        }
        None => Ok(()),
    }
}

// ---------------------------------------------------------------------------------------------
// Subscribing

#[derive(Debug, Clone, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SubscribeRequest {
    pub plan: String,
    pub version: Option<u32>,
    pub seats: Option<u32>,
    #[serde(default)]
    pub trial: bool,
}

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Subscribed {
    pub subscription: SubscriptionView,
    /// The number of the invoice issued for the advance fees (none during a trial).
    pub invoices: Vec<i64>,
    /// Advance fees charged now (nothing during a trial or on a free plan).
    pub lines: Vec<InvoiceLine>,
    #[serde(with = "rust_decimal::serde::str")]
    pub amount_due_now: Decimal,
}

/// What subscribing answered: the new subscription, or (the same `Idempotency-Key` again)
/// the answer first given.
#[derive(Debug, Clone, Serialize)]
#[serde(untagged)]
pub enum SubscribeOutcome {
    Created(Box<Subscribed>),
    Replayed(Value),
}

/// The idempotency record target of a subscription's creation.
const SUBSCRIBE_TARGET: &str = "subscription";

/// Subscribes `account`. With an `idempotency_key`, a retry of a request whose answer was
/// lost gets that answer again instead of `409 subscription_exists`.
pub async fn subscribe(
    ctx: &Ctx,
    principal: &Principal,
    account: &str,
    req: SubscribeRequest,
    idempotency_key: Option<&str>,
) -> Result<SubscribeOutcome, ServiceError> {
    AccountId::parse(account).map_err(|why| ServiceError::invalid("invalid_account", why))?;
    let _writing = ctx.checks.write_guard(account);
    let mut conn = ctx.pool.get().await.map_err(StoreError::from)?;
    let now = ctx.now_for(&mut conn, account).await?;
    let plan = resolve_plan(ctx, &mut conn, &req.plan, req.version).await?;
    let result = conn
        .transaction::<SubscribeOutcome, TxError, _>(async |c| {
            if let Some(key) = idempotency_key {
                if let Some(prev) =
                    subs::find_idempotency_by_account_and_key(c, account, key).await?
                {
                    if prev.target == SUBSCRIBE_TARGET {
                        return Ok(SubscribeOutcome::Replayed(prev.response));
                    }
                    return Err(refuse(
                        "idempotency_key_reused",
                        format!("Idempotency-Key `{key}` was already used for {}", prev.target),
                    ));
                }
            }
            check_self_serve(principal, &plan)?;
            let seats = req
                .seats
                .unwrap_or_else(|| plan.seats.as_ref().map_or(0, |s| s.min));
            check_seats(&ctx.plans(), &plan, seats)?;
            accounts::ensure(c, account, now).await?;
            check_currency(c, account, &plan).await?;
            let start = anchor_at(now);
            if req.trial && plan.trial_days == 0 {
                return Err(refuse_field(
                    "no_trial",
                    "trial",
                    format!("plan {} has no trial", plan.plan),
                ));
            }
            let trial = req.trial;
            let (status, period, trial_end) = if trial {
                let end = start + Duration::days(plan.trial_days.into());
                ("trialing", Period { start, end }, Some(end))
            } else {
                (
                    "active",
                    period_containing(start, plan.interval.months(), now),
                    None,
                )
            };
            let mut row = SubscriptionRow {
                account: account.to_owned(),
                plan: plan.plan.clone(),
                plan_version: plan.version as i32,
                seats: seats as i32,
                status: status.to_owned(),
                anchor: trial_end.unwrap_or(start),
                period_start: period.start,
                period_end: period.end,
                trial_end,
                scheduled: None,
                revision: 1,
                created_at: now,
                updated_at: now,
                past_due_since: None,
            };
            match subs::lock_by_account(c, account).await? {
                // A canceled account subscribes again: a new subscription in the same row.
                Some(old) if old.status == "canceled" => {
                    if trial && old.trial_end.is_some() {
                        return Err(refuse_field("trial_used","trial", "this account has already had a trial"));
                    }
                    if crate::store::payments::count_unpaid_by_account(c, account).await? > 0 {
                        return Err(conflict(
                            "unpaid_invoices",
                            format!("account `{account}` has unpaid invoices: settle them before subscribing again"),
                        ));
                    }
                    // The earlier trial stays on record: one trial per account.
                    if !trial {
                        row.trial_end = old.trial_end;
                    }
                    row.revision = old.revision + 1;
                    subs::save(c, &row).await?;
                }
                Some(_) => {
                    return Err(conflict(
                        "subscription_exists",
                        format!(
                            "account `{account}` already has a subscription; change it with a quote"
                        ),
                    ))
                }
                None if !subs::insert(c, &row).await? => {
                    return Err(conflict(
                        "subscription_exists",
                        format!(
                            "account `{account}` already has a subscription; change it with a quote"
                        ),
                    ))
                }
                None => {}
            }
            let mut invoices = Vec::new();
            let lines = if trial {
                Vec::new()
            } else {
                advance_fee_lines(&plan, seats, &period)
            };
            if !trial {
                let drafts: Vec<InvoiceDraft> =
                    billing::start_invoice(account, &plan, seats, period, now)
                        .into_iter()
                        .collect();
                invoices = billing::issue(ctx, c, &drafts).await?;
            }
            let amount: Decimal = lines.iter().map(|l| l.amount).sum();
            let kind = if trial { "trial_started" } else { "subscribed" };
            let change_id = subs::insert_change(
                c,
                &change(
                    &row,
                    kind,
                    now,
                    None,
                    json!(lines),
                    amount,
                    plan.currency.code(),
                ),
            )
            .await?;
            if !trial {
                revenue::record(
                    ctx,
                    c,
                    &[revenue::MrrInput {
                        account: account.to_owned(),
                        at: now,
                        cause: revenue::Cause::PlanUpgrade,
                        plan: Some(plan_ref(&row)),
                        usage: None,
                        reference: ("subscription_change", change_id),
                    }],
                )
                .await?;
            }
            let answer = Subscribed {
                subscription: view(&row, &plan),
                invoices,
                lines,
                // At the currency's scale, "0.00" included.
                amount_due_now: plan.currency.round(amount),
            };
            if let Some(key) = idempotency_key {
                subs::insert_idempotency(
                    c,
                    &IdempotencyRow {
                        account: account.to_owned(),
                        key: key.to_owned(),
                        target: SUBSCRIBE_TARGET.to_owned(),
                        status: 201,
                        response: serde_json::to_value(&answer).unwrap_or_default(),
                        created_at: now,
                    },
                )
                .await?;
            }
            Ok(SubscribeOutcome::Created(Box::new(answer)))
        })
        .await
        .map_err(ServiceError::from)?;
    super::payments::spawn_collect_account(ctx, account);
    Ok(result)
}

/// The subscription as of the account's time. A read takes no lock and writes nothing, unless
/// the subscription is due (its period or trial ended and the close has not run yet): then it
/// does that close, as the period-close job would, and shows its result.
pub async fn get_subscription(ctx: &Ctx, account: &str) -> Result<SubscriptionView, ServiceError> {
    let mut conn = ctx.pool.get().await.map_err(StoreError::from)?;
    let now = ctx.now_for(&mut conn, account).await?;
    let row = subs::find_by_account(&mut conn, account)
        .await?
        .ok_or_else(|| {
            ServiceError::NotFound(format!("account `{account}` has no subscription"))
        })?;
    if !is_due(&row, now) {
        return Ok(view(&row, &plan_of(ctx, &row.plan, row.plan_version)?));
    }
    // Catching up may change the plan (scheduled change) or the period.
    let _writing = ctx.checks.write_guard(account);
    let result = conn
        .transaction::<SubscriptionView, TxError, _>(async |c| {
            let row = lock_and_catch_up(ctx, c, account, now).await?;
            Ok(view(&row, &plan_of(ctx, &row.plan, row.plan_version)?))
        })
        .await?;
    Ok(result)
}

/// Undoes the change scheduled for the period end (a cancellation or a decrease): the
/// subscription renews as it is. Recorded as a `cancellation_revoked` or
/// `scheduled_change_revoked` change; nothing is charged.
pub async fn revoke_scheduled(ctx: &Ctx, account: &str) -> Result<SubscriptionView, ServiceError> {
    let _writing = ctx.checks.write_guard(account);
    let mut conn = ctx.pool.get().await.map_err(StoreError::from)?;
    let now = ctx.now_for(&mut conn, account).await?;
    let result = conn
        .transaction::<SubscriptionView, TxError, _>(async |c| {
            let mut row = lock_and_catch_up(ctx, c, account, now).await?;
            if row.status == "canceled" {
                return Err(conflict(
                    "subscription_canceled",
                    "the subscription has ended; nothing is scheduled",
                ));
            }
            let Some(scheduled) = row
                .scheduled
                .clone()
                .and_then(|v| serde_json::from_value::<Scheduled>(v).ok())
            else {
                return Err(conflict(
                    "nothing_scheduled",
                    "no cancellation or change is scheduled for this subscription",
                ));
            };
            // A move to another version of the same plan is an operator's migration, not the
            // customer's change: not theirs to undo.
            if !scheduled.cancel
                && scheduled.plan == row.plan
                && scheduled.version as i32 != row.plan_version
            {
                return Err(conflict(
                    "migration_scheduled",
                    format!(
                        "the change scheduled for {} is a migration to {}@{}; it cannot be undone here",
                        ts::format(&scheduled.at),
                        scheduled.plan,
                        scheduled.version
                    ),
                ));
            }
            row.scheduled = None;
            let cancel = scheduled.cancel;
            row.revision += 1;
            row.updated_at = now;
            subs::save(c, &row).await?;
            let plan = plan_of(ctx, &row.plan, row.plan_version)?;
            let kind = if cancel {
                "cancellation_revoked"
            } else {
                "scheduled_change_revoked"
            };
            let ch = change(
                &row,
                kind,
                now,
                None,
                json!([]),
                Decimal::ZERO,
                plan.currency.code(),
            );
            subs::insert_change(c, &ch).await?;
            Ok(view(&row, &plan))
        })
        .await?;
    Ok(result)
}

/// The account's accepted changes, oldest first: a page after the change `after`.
pub async fn changes(
    ctx: &Ctx,
    account: &str,
    after: Option<i64>,
    limit: i64,
) -> Result<Vec<subs::ChangeRow>, ServiceError> {
    let mut conn = ctx.pool.get().await.map_err(StoreError::from)?;
    let mut rows = subs::changes_by_account(&mut conn, account, after, limit).await?;
    for r in &mut rows {
        let exp = r
            .currency
            .as_deref()
            .and_then(crate::domain::money::Currency::from_code)
            .map_or(2, |c| c.exponent());
        r.amount.rescale(exp);
    }
    Ok(rows)
}

// ---------------------------------------------------------------------------------------------
// Quotes

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Effective {
    Now,
    PeriodEnd,
}

#[derive(Debug, Clone, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct QuoteRequest {
    pub plan: Option<String>,
    pub version: Option<u32>,
    pub seats: Option<u32>,
    #[serde(default)]
    pub cancel: bool,
    #[serde(default)]
    pub trial: bool,
    pub effective: Option<Effective>,
    /// Set by operator actions (plan migrations), never by a request body: a decrease may
    /// take effect now whatever the plan's downgrade policy.
    #[serde(skip)]
    pub operator_override: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Side {
    pub plan: String,
    pub version: u32,
    pub seats: u32,
}

/// A quote: exactly what acceptance will do and charge.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Quote {
    pub id: String,
    pub account: String,
    /// upgrade, downgrade, seats_added, seats_removed, lateral, cancel, trial_started
    pub kind: String,
    pub from: Side,
    pub to: Side,
    pub cancel: bool,
    pub trial: bool,
    pub effective: Effective,
    #[serde(serialize_with = "crate::domain::ts::ms")]
    pub effective_at: DateTime<Utc>,
    pub lines: Vec<ProrationLine>,
    #[serde(with = "rust_decimal::serde::str")]
    pub amount_due_now: Decimal,
    pub currency: String,
    /// Period after the change, when it re-anchors (interval change) or starts a trial.
    pub new_period: Option<Period>,
    /// The change scheduled for the period end once this one is accepted: a scheduled
    /// cancellation survives every change; another scheduled change survives a plan migration
    /// and is revoked by the customer's own change (a `scheduled_change_revoked` line says so).
    #[serde(default)]
    pub scheduled_after: Option<Scheduled>,
    #[serde(serialize_with = "crate::domain::ts::ms")]
    pub expires_at: DateTime<Utc>,
    pub base_revision: i64,
}

/// `GET .../subscription/quotes/{id}`: the quote as it was given, with its `status` (`open`,
/// `accepted` or `expired`) and `accepted_at`.
pub async fn get_quote(ctx: &Ctx, account: &str, quote_id: &str) -> Result<Value, ServiceError> {
    let mut conn = ctx.pool.get().await.map_err(StoreError::from)?;
    let now = ctx.now_for(&mut conn, account).await?;
    let stored = subs::find_quote_by_account_and_id(&mut conn, account, quote_id)
        .await?
        .ok_or_else(|| ServiceError::NotFound(format!("quote {quote_id} not found")))?;
    let status = match stored.accepted_at {
        Some(_) => "accepted",
        None if now > stored.expires_at => "expired",
        None => "open",
    };
    let mut body = stored.body;
    if let Value::Object(m) = &mut body {
        m.insert("status".into(), json!(status));
        m.insert(
            "accepted_at".into(),
            json!(stored.accepted_at.map(|t| ts::format(&t))),
        );
    }
    Ok(body)
}

fn random_id(prefix: &str) -> String {
    let mut b = [0u8; 12];
    let _ = getrandom::fill(&mut b);
    format!("{prefix}_{}", hex::encode(b))
}

pub async fn quote(
    ctx: &Ctx,
    principal: &Principal,
    account: &str,
    req: QuoteRequest,
) -> Result<Quote, ServiceError> {
    let _writing = ctx.checks.write_guard(account);
    let mut conn = ctx.pool.get().await.map_err(StoreError::from)?;
    let now = ctx.now_for(&mut conn, account).await?;
    let target = match &req.plan {
        Some(p) => Some(resolve_plan(ctx, &mut conn, p, req.version).await?),
        None if req.version.is_some() => {
            return Err(ServiceError::invalid(
                "invalid_field",
                "`version` goes with `plan`: give both, or `plan` as `team@2`",
            ))
        }
        None => None,
    };
    if req.cancel && req.effective == Some(Effective::Now) {
        return Err(ServiceError::invalid_field(
            "cancel_at_period_end",
            "effective",
            "a cancellation takes effect at the period end (the subscription runs until then); \
             `effective: \"now\"` is not available for it",
        ));
    }
    let q = conn
        .transaction::<Quote, TxError, _>(async |c| {
            let row = lock_and_catch_up(ctx, c, account, now).await?;
            if row.status == "canceled" {
                return Err(conflict("subscription_canceled", "the subscription is canceled"));
            }
            if row.status == "suspended" {
                return Err(conflict(
                    "subscription_suspended",
                    "the subscription is suspended for non-payment: pay the past-due invoice to change it",
                ));
            }
            let old = plan_of(ctx, &row.plan, row.plan_version)?;
            let old_seats = row.seats as u32;
            let new = target.clone().unwrap_or_else(|| old.clone());
            let new_seats = req.seats.unwrap_or_else(|| default_seats(old_seats, &new));
            if !req.cancel {
                check_self_serve(principal, &new)?;
                check_seats(&ctx.plans(), &new, new_seats)?;
                // The account's billing currency (its first paid plan's), else the plan's.
                let bills_in = accounts::find_by_account(c, account)
                    .await?
                    .and_then(|a| a.currency)
                    .unwrap_or_else(|| old.currency.code().to_owned());
                if bills_in != new.currency.code() {
                    return Err(refuse(
                        "currency_mismatch",
                        format!("account `{account}` bills in {bills_in}; plan {} is priced in {}", new.plan, new.currency),
                    ));
                }
            }
            let unchanged = new.plan == old.plan && new.version == old.version && new_seats == old_seats;
            if unchanged && !req.cancel && !req.trial {
                return Err(refuse("no_change", "the quote changes nothing: give another plan, version or seat count"));
            }
            let trialing = row.status == "trialing";
            let mut new_period = None;
            let (kind, effective, lines) = if req.cancel {
                ("cancel", Effective::PeriodEnd, Vec::new())
            } else if req.trial {
                if new.trial_days == 0 {
                    return Err(refuse_field("no_trial","trial", format!("plan {} has no trial", new.plan)));
                }
                if trialing || row.trial_end.is_some() {
                    return Err(refuse_field("trial_used","trial", "this account has already had a trial"));
                }
                if is_paid(&old) {
                    return Err(refuse_field(
                        "trial_not_available",
                        "trial",
                        format!("trials start from a free plan; the account pays for {} now: change plans with a quote instead", old.plan),
                    ));
                }
                let start = anchor_at(now);
                new_period = Some(Period { start, end: start + Duration::days(new.trial_days.into()) });
                ("trial_started", Effective::Now, Vec::new())
            } else {
                let period = Period { start: row.period_start, end: row.period_end };
                let terms = change_terms(
                    &old, old_seats, &new, new_seats, req.effective, req.operator_override,
                    &period, now, trialing,
                )?;
                new_period = terms.new_period;
                (terms.kind, terms.effective, terms.lines)
            };
            let effective_at = match effective {
                Effective::Now => now,
                Effective::PeriodEnd => row.period_end,
            };
            let pending: Option<Scheduled> =
                row.scheduled.clone().and_then(|v| serde_json::from_value(v).ok());
            let period_end_after = new_period.map_or(row.period_end, |p| p.end);
            let (scheduled_after, revoked) = match (pending, effective) {
                (None, _) => (None, None),
                (Some(p), Effective::Now) if p.cancel => {
                    (Some(Scheduled { at: period_end_after, ..p }), None)
                }
                (Some(p), Effective::Now) if req.operator_override => {
                    // A plan migration carries the customer's scheduled decrease over.
                    let kept = if p.plan == old.plan {
                        Scheduled { plan: new.plan.clone(), version: new.version, at: period_end_after, ..p }
                    } else {
                        Scheduled { at: period_end_after, ..p }
                    };
                    (Some(kept), None)
                }
                (Some(p), Effective::Now) => (None, Some(p)),
                (Some(p), Effective::PeriodEnd) if p.cancel && !req.cancel => {
                    return Err(conflict(
                        "cancellation_scheduled",
                        format!("the subscription is canceled at {}; a later change cannot follow it", ts::format(&p.at)),
                    ));
                }
                (Some(p), Effective::PeriodEnd) => (None, Some(p)),
            };
            let mut lines = lines;
            if let Some(p) = revoked {
                lines.push(ProrationLine {
                    kind: ProrationKind::ScheduledChangeRevoked,
                    plan: p.plan.clone(),
                    plan_version: p.version,
                    seats: p.seats,
                    amount: Decimal::new(0, old.currency.exponent()),
                    description: if p.cancel {
                        format!("Replaces the cancellation scheduled for {}", ts::date(&p.at))
                    } else {
                        format!(
                            "Revokes the change to {}@{} with {} seats scheduled for {}",
                            p.plan,
                            p.version,
                            p.seats,
                            ts::date(&p.at)
                        )
                    },
                    period: None,
                });
            }
            let amount_due_now = old.currency.round(lines.iter().map(|l| l.amount).sum());
            let q = Quote {
                id: random_id("q"),
                account: account.to_owned(),
                kind: kind.to_owned(),
                from: Side { plan: old.plan.clone(), version: old.version, seats: old_seats },
                to: Side { plan: new.plan.clone(), version: new.version, seats: new_seats },
                cancel: req.cancel,
                trial: req.trial,
                effective,
                effective_at,
                lines,
                amount_due_now,
                currency: old.currency.code().to_owned(),
                new_period,
                scheduled_after,
                expires_at: now + Duration::minutes(QUOTE_TTL_MINUTES),
                base_revision: row.revision,
            };
            subs::insert_quote(
                c,
                &QuoteRow {
                    account: account.to_owned(),
                    id: q.id.clone(),
                    base_revision: row.revision,
                    body: serde_json::to_value(&q).unwrap_or_default(),
                    expires_at: q.expires_at,
                    accepted_at: None,
                    created_at: now,
                },
            )
            .await?;
            Ok(q)
        })
        .await?;
    Ok(q)
}

/// What acceptance answers (and what a retry with the same key gets again).
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Accepted {
    pub quote_id: String,
    pub change_id: i64,
    /// The numbers of the invoices the acceptance issued (the change's; an interval change
    /// also closes the ended period).
    #[serde(default)]
    pub invoices: Vec<i64>,
    pub lines: Vec<ProrationLine>,
    /// Named as in the quote (it was `amount_charged`; answers stored then still read).
    #[serde(
        rename = "amount_due_now",
        alias = "amount_charged",
        with = "rust_decimal::serde::str"
    )]
    pub amount_charged: Decimal,
    /// The subscription after the change.
    #[schema(value_type = SubscriptionView)]
    pub subscription: Value,
}

pub async fn accept(
    ctx: &Ctx,
    account: &str,
    quote_id: &str,
    idempotency_key: &str,
) -> Result<Accepted, ServiceError> {
    if idempotency_key.trim().is_empty() || idempotency_key.len() > 255 {
        return Err(ServiceError::invalid(
            "invalid_idempotency_key",
            "the Idempotency-Key header must be 1 to 255 characters",
        ));
    }
    let _writing = ctx.checks.write_guard(account);
    let mut conn = ctx.pool.get().await.map_err(StoreError::from)?;
    let now = ctx.now_for(&mut conn, account).await?;
    let result = conn
        .transaction::<Accepted, TxError, _>(async |c| {
            let mut row = lock_existing(c, account).await?;
            if let Some(prev) =
                subs::find_idempotency_by_account_and_key(c, account, idempotency_key).await?
            {
                if prev.target == quote_id {
                    return serde_json::from_value(prev.response)
                        .map_err(|e| refuse("idempotency_record_unreadable", e.to_string()));
                }
                return Err(refuse(
                    "idempotency_key_reused",
                    format!(
                        "Idempotency-Key `{idempotency_key}` was already used for quote {}",
                        prev.target
                    ),
                ));
            }
            let stored = subs::find_quote_by_account_and_id(c, account, quote_id)
                .await?
                .ok_or_else(|| {
                    TxError::Refused(ServiceError::NotFound(format!(
                        "quote {quote_id} not found"
                    )))
                })?;
            if stored.accepted_at.is_some() {
                return Err(conflict(
                    "quote_already_accepted",
                    format!("quote {quote_id} was already accepted with another Idempotency-Key"),
                ));
            }
            if now > stored.expires_at {
                return Err(conflict(
                    "quote_expired",
                    format!(
                        "quote {quote_id} expired at {}; ask for a new one",
                        ts::format(&stored.expires_at)
                    ),
                ));
            }
            let mut fx = Effects::default();
            catch_up(ctx, c, &mut row, now, &mut fx).await?;
            if row.revision != stored.base_revision {
                return Err(conflict(
                    "subscription_changed",
                    "the subscription changed since this quote was made; ask for a new quote",
                ));
            }
            let q: Quote = serde_json::from_value(stored.body)
                .map_err(|e| refuse("quote_unreadable", e.to_string()))?;
            let from = (row.plan.clone(), row.plan_version, row.seats);
            let new = plan_of(ctx, &q.to.plan, q.to.version as i32)?;
            match q.effective {
                Effective::Now => {
                    if let (Some(p), false) = (q.new_period, q.trial) {
                        // An interval change ends the period at the new anchor: the usage of
                        // the ended part is invoiced in arrears now, on the old plan.
                        let old = plan_of(ctx, &from.0, from.1)?;
                        let ended = Period {
                            start: row.period_start,
                            end: p.start,
                        };
                        let full = Period {
                            start: row.period_start,
                            end: row.period_end,
                        };
                        if ended.end > ended.start {
                            fx.drafts.extend(
                                billing::partial_period_invoice(
                                    ctx,
                                    c,
                                    account,
                                    ended,
                                    &full,
                                    &old,
                                    from.2 as u32,
                                    now,
                                )
                                .await?,
                            );
                        }
                    }
                    row.plan = q.to.plan.clone();
                    row.plan_version = q.to.version as i32;
                    row.seats = q.to.seats as i32;
                    row.scheduled = q
                        .scheduled_after
                        .as_ref()
                        .map(|s| serde_json::to_value(s).unwrap_or_default());
                    if let Some(p) = q.new_period {
                        row.period_start = p.start;
                        row.period_end = p.end;
                        row.anchor = p.start;
                    }
                    if q.trial {
                        row.status = "trialing".into();
                        row.trial_end = q.new_period.map(|p| p.end);
                        row.anchor = q.new_period.map_or(row.anchor, |p| p.end);
                    }
                    check_currency(c, account, &new).await?;
                }
                Effective::PeriodEnd => {
                    let s = Scheduled {
                        plan: q.to.plan.clone(),
                        version: q.to.version,
                        seats: q.to.seats,
                        cancel: q.cancel,
                        at: row.period_end,
                    };
                    row.scheduled = Some(serde_json::to_value(&s).unwrap_or_default());
                }
            }
            row.revision += 1;
            row.updated_at = now;
            subs::save(c, &row).await?;
            let kind = match q.effective {
                Effective::Now => q.kind.clone(),
                Effective::PeriodEnd => format!("{}_scheduled", q.kind),
            };
            let mut ch = change(
                &row,
                &kind,
                now,
                Some((&from.0, from.1, from.2)),
                json!(q.lines),
                q.amount_due_now,
                &q.currency,
            );
            ch.quote_id = Some(q.id.clone());
            if q.effective == Effective::PeriodEnd {
                ch.to_plan = Some(q.to.plan.clone());
                ch.to_version = Some(q.to.version as i32);
                ch.to_seats = Some(q.to.seats as i32);
            }
            let change_id = subs::insert_change(c, &ch).await?;
            // A trial's MRR is recorded when it converts: never when it starts, nor for a
            // change made during it.
            if q.effective == Effective::Now && !q.trial && row.status != "trialing" {
                let old = plan_of(ctx, &from.0, from.1)?;
                fx.revenue.push(PendingMrr {
                    account: account.to_owned(),
                    at: now,
                    cause: revenue::Cause::of_change(
                        &q.kind,
                        old.monthly_recurring(from.2 as u32),
                        new.monthly_recurring(row.seats as u32),
                    ),
                    plan: Some(plan_ref(&row)),
                    usage: None,
                    reference: MrrRef::Change(change_id),
                });
            }
            let charged = crate::domain::invoice::change_lines(&q.lines);
            if q.effective == Effective::Now && !charged.is_empty() {
                fx.drafts.push(InvoiceDraft {
                    account: account.to_owned(),
                    kind: InvoiceKind::Change,
                    period: Period {
                        start: row.period_start,
                        end: row.period_end,
                    },
                    plan: row.plan.clone(),
                    plan_version: row.plan_version as u32,
                    seats: row.seats as u32,
                    currency: new.currency,
                    lines: charged,
                    issued_at: now,
                    share: None,
                });
            }
            let invoices = fx.flush(ctx, c).await?;
            subs::mark_quote_accepted(c, account, &q.id, now).await?;
            let answer = Accepted {
                quote_id: q.id.clone(),
                change_id,
                invoices,
                lines: q.lines.clone(),
                amount_charged: q.amount_due_now,
                subscription: serde_json::to_value(view(
                    &row,
                    &plan_of(ctx, &row.plan, row.plan_version)?,
                ))
                .unwrap_or_default(),
            };
            subs::insert_idempotency(
                c,
                &IdempotencyRow {
                    account: account.to_owned(),
                    key: idempotency_key.to_owned(),
                    target: q.id.clone(),
                    status: 200,
                    response: serde_json::to_value(&answer).unwrap_or_default(),
                    created_at: now,
                },
            )
            .await?;
            Ok(answer)
        })
        .await?;
    super::payments::spawn_collect_account(ctx, account);
    Ok(result)
}

/// Schedules a plan migration for the subscription's period end (applied by the billing
/// cycle like any scheduled change). Refused when the account left `from` meanwhile.
///
/// A change the customer already scheduled wins: a cancellation or a move to another plan
/// stays as it is (the answer is `false`: not migrated), and a seat decrease on the migrated
/// plan is carried over to the new version.
pub async fn schedule_migration(
    ctx: &Ctx,
    account: &str,
    from: &PlanRef,
    scheduled: Scheduled,
) -> Result<bool, ServiceError> {
    let _writing = ctx.checks.write_guard(account);
    let mut conn = ctx.pool.get().await.map_err(StoreError::from)?;
    let now = ctx.now_for(&mut conn, account).await?;
    conn.transaction::<bool, TxError, _>(async |c| {
        let mut row = lock_and_catch_up(ctx, c, account, now).await?;
        if row.plan != from.plan || row.plan_version as u32 != from.version {
            return Err(TxError::Refused(ServiceError::Conflict {
                code: "subscription_changed",
                message: format!("account `{account}` is no longer on {from}"),
            }));
        }
        let from_side = (row.plan.clone(), row.plan_version, row.seats);
        let pending: Option<Scheduled> = row
            .scheduled
            .clone()
            .and_then(|v| serde_json::from_value(v).ok());
        let scheduled = match pending {
            Some(p) if p.cancel || p.plan != from.plan => return Ok(false),
            Some(p) => Scheduled {
                seats: p.seats,
                ..scheduled
            },
            None => scheduled,
        };
        row.scheduled = Some(serde_json::to_value(&scheduled).unwrap_or_default());
        row.revision += 1;
        row.updated_at = now;
        subs::save(c, &row).await?;
        let plan = plan_of(ctx, &row.plan, row.plan_version)?;
        let mut ch = change(
            &row,
            "migration_scheduled",
            now,
            Some((&from_side.0, from_side.1, from_side.2)),
            json!([]),
            Decimal::ZERO,
            plan.currency.code(),
        );
        ch.to_plan = Some(scheduled.plan.clone());
        ch.to_version = Some(scheduled.version as i32);
        ch.to_seats = Some(scheduled.seats as i32);
        subs::insert_change(c, &ch).await?;
        Ok(true)
    })
    .await
    .map_err(ServiceError::from)
}
