//! The customer portal: one account's plan, usage against its limits, the upcoming invoice,
//! plan and seat changes through quotes (the page shows the quote; "Confirm" accepts exactly
//! that quote), cancellation, past invoices and the payment state. Opened through a link
//! from `POST /v1/portal-sessions`; every action is the API's service, called as an
//! account-scoped billing key of that account would call it.

use super::format::{date, datetime, label, money, quantity};
use super::{
    answer_with, app_ctx, csrf_refused, frame, message_page, respond, see_other, service_error,
    session_cookie, session_token, Area, Frame,
};
use crate::domain::plan::{ChargeModel, LimitMode, PlanRef, PlanVersion};
use crate::domain::scope::Scope;
use crate::services::auth::Principal;
use crate::services::subscriptions::{self as subs, Effective, Quote, QuoteRequest};
use crate::services::{billing, lifecycle, payments, usage, web_sessions, Ctx, ServiceError};
use crate::store::web_sessions::WebSession;
use actix_web::dev::Payload;
use actix_web::http::StatusCode;
use actix_web::{web, FromRequest, HttpRequest, HttpResponse};
use futures_util::future::LocalBoxFuture;
use maud::{html, Markup};
use rust_decimal::Decimal;
use serde::Deserialize;

pub fn routes(cfg: &mut web::ServiceConfig) {
    // Inside the `/portal` scope (`web::routes`).
    cfg.route("/open/{token}", web::get().to(open))
        .route("", web::get().to(home))
        .route("/quotes", web::post().to(create_quote))
        .route("/quotes/{id}", web::get().to(show_quote))
        .route("/quotes/{id}/confirm", web::post().to(confirm))
        .route("/scheduled-change/revoke", web::post().to(keep))
        .route("/invoices/{number}", web::get().to(invoice))
        .route("/sign-out", web::post().to(sign_out));
}

/// The account a portal session acts as: an account-scoped billing key of that account
/// (self-serve plans only, its own account only).
fn principal(account: &str) -> Principal {
    Principal {
        key_id: 0,
        name: "customer portal".into(),
        scopes: vec![Scope::Billing],
        account: Some(account.to_owned()),
    }
}

fn ended() -> HttpResponse {
    message_page(
        Area::Portal,
        StatusCode::UNAUTHORIZED,
        "Your session has ended",
        "Billing portal sessions end after an hour, or when you sign out. Open the portal again from the app.",
    )
}

/// A portal handler's session and its account, taken as its argument: the session of the
/// request's cookie, or the request is answered with the "session ended" page and the handler
/// does not run.
struct Portal(WebSession, String);

impl FromRequest for Portal {
    type Error = actix_web::Error;
    type Future = LocalBoxFuture<'static, Result<Self, Self::Error>>;

    fn from_request(req: &HttpRequest, _: &mut Payload) -> Self::Future {
        let req = req.clone();
        Box::pin(async move {
            let ctx = app_ctx(&req);
            signed_in(&req, &ctx)
                .await
                .map(|(s, account)| Portal(s, account))
                .map_err(answer_with)
        })
    }
}

/// The session of the request's cookie, or the page to answer instead.
async fn signed_in(req: &HttpRequest, ctx: &Ctx) -> Result<(WebSession, String), HttpResponse> {
    let Some(token) = session_token(req, Area::Portal) else {
        return Err(ended());
    };
    match web_sessions::portal_session(ctx, &token).await {
        Ok(Some(s)) => {
            let account = s.account.clone().unwrap_or_default();
            Ok((s, account))
        }
        Ok(None) => Err(ended()),
        Err(e) => Err(service_error(Area::Portal, e)),
    }
}

fn page(s: &WebSession, title: &str, current: &str, body: Markup) -> HttpResponse {
    page_status(s, StatusCode::OK, title, current, body)
}

fn page_status(
    s: &WebSession,
    status: StatusCode,
    title: &str,
    current: &str,
    body: Markup,
) -> HttpResponse {
    let f = Frame {
        title,
        area: Area::Portal,
        nav: &[("/portal", "Overview")],
        current,
        csrf: Some(&s.csrf),
    };
    respond(status, frame(&f, body))
}

/// `GET /portal/open/{token}`: a portal link, opened once; the session goes into a cookie and
/// the browser on to the portal (the token leaves the address bar).
async fn open(req: HttpRequest, ctx: web::Data<Ctx>, path: web::Path<String>) -> HttpResponse {
    let token = path.into_inner();
    let opened = if token.len() > 128 {
        Ok(None)
    } else {
        web_sessions::open_portal_link(&ctx, &token).await
    };
    match opened {
        Ok(Some(started)) => {
            let mut res = see_other("/portal");
            let _ = res.add_cookie(&session_cookie(&req, &ctx, Area::Portal, &started));
            res
        }
        Ok(None) => message_page(
            Area::Portal,
            StatusCode::NOT_FOUND,
            "This link is not valid",
            "Billing portal links open once and expire ten minutes after they are made. Open the portal again from the app.",
        ),
        Err(e) => service_error(Area::Portal, e),
    }
}

#[derive(Deserialize)]
struct HomeQuery {
    done: Option<String>,
    invoice: Option<i64>,
}

/// `GET /portal`: everything about the account's billing on one page.
async fn home(
    ctx: web::Data<Ctx>,
    Portal(s, account): Portal,
    q: web::Query<HomeQuery>,
) -> HttpResponse {
    match overview(&ctx, &s, &account, &q).await {
        Ok(body) => page(&s, "Billing", "/portal", body),
        Err(e) => service_error(Area::Portal, e),
    }
}

async fn overview(
    ctx: &Ctx,
    s: &WebSession,
    account: &str,
    q: &HomeQuery,
) -> Result<Markup, ServiceError> {
    let acct = subs::get_account(ctx, account).await?;
    let sub = match subs::get_subscription(ctx, account).await {
        Ok(v) => Some(v),
        Err(ServiceError::NotFound(_)) => None,
        Err(e) => return Err(e),
    };
    let dunning = payments::dunning(ctx, account).await?;
    let invoices = billing::recent_invoices(ctx, account, 12).await?;
    let name = acct.name.clone().unwrap_or_else(|| account.to_owned());
    let notice = match q.done.as_deref() {
        Some("changed") => Some("Your subscription has changed."),
        Some("kept") => {
            Some("The scheduled change is withdrawn: your subscription goes on as it is.")
        }
        _ => None,
    };
    let Some(sub) = sub else {
        return Ok(html! {
            h1 { (name) }
            p.lead { "This account has no subscription yet. Choose a plan in the app to start one." }
            (invoice_list(&invoices))
        });
    };
    let catalogue = ctx.plans();
    let plan = catalogue
        .get(&PlanRef {
            plan: sub.plan.clone(),
            version: sub.plan_version as u32,
        })
        .cloned();
    let period = &sub.current_period;
    let used = usage::usage(ctx, account, period.start, period.end).await;
    // A refusal here (a plan no longer in the catalogue) leaves the rest of the page.
    let upcoming = lifecycle::upcoming_invoice(ctx, account).await;
    let upcoming_failed = upcoming.as_ref().err().map(|e| e.to_string());
    let upcoming = upcoming.ok().flatten();
    let open_sub = matches!(sub.status.as_str(), "active" | "trialing" | "past_due");
    let cancel_scheduled = sub.scheduled_change.as_ref().is_some_and(|c| c.cancel);
    // The latest version of each self-serve plan, except the customer's own plan, shown at
    // the version they are on (a grandfathered price is theirs; moving them off it is an
    // operator's migration, not a button).
    let mut choices: Vec<PlanVersion> = catalogue
        .plan_codes()
        .into_iter()
        .filter_map(|code| {
            if code == sub.plan {
                plan.clone()
            } else {
                catalogue.latest(code).cloned()
            }
        })
        .filter(|p| (p.self_serve || p.plan == sub.plan) && p.currency.code() == sub.currency)
        .collect();
    choices.sort_by_key(|p| p.monthly_recurring(p.seats.as_ref().map_or(0, |s| s.min)));
    Ok(html! {
        @if let Some(n) = notice {
            div.banner.good role="status" {
                strong { (n) }
                @if let Some(inv) = q.invoice {
                    a href={ "/portal/invoices/" (inv) } { "See invoice #" (inv) }
                }
            }
        }
        (past_due_banner(&dunning, &sub.status))
        div.toolbar {
            div {
                h1 { (name) }
                p.lead {
                    "Billing for account " code { (account) }
                }
            }
            @if let Some(back) = &s.return_url {
                a.button.secondary href=(back) { "Back to the app" }
            }
        }
        div.grid {
            div.card.stat {
                div.label { "Plan" }
                div.value { (sub.plan_name) }
                div.sub { (status_text(&sub.status)) }
            }
            div.card.stat {
                div.label { "Seats" }
                div.value { (sub.seats) }
                @if let Some(seats) = plan.as_ref().and_then(|p| p.seats.as_ref()) {
                    div.sub { (seats.included) " included, " (money(seats.unit_amount, &sub.currency)) " per extra seat" }
                }
            }
            div.card.stat {
                div.label { "Current period" }
                div.value { (date(&period.start)) }
                div.sub { "to " (date(&period.end)) }
            }
            div.card.stat {
                div.label { "Next invoice" }
                @match &upcoming {
                    Some(u) => {
                        div.value #upcoming-total { (money(u.total, &u.currency)) }
                        div.sub { "on " (date(&u.issued_at)) ", if no more usage arrives" }
                    }
                    None => {
                        div.value { "None" }
                        div.sub { "Nothing is due at the period end" }
                    }
                }
            }
        }
        @if let Some(c) = &sub.scheduled_change {
            div.banner.warn role="status" {
                @if c.cancel {
                    strong { "Your subscription ends on " (date(&c.at)) "." }
                    "It keeps working until then. Nothing more is charged except the usage of this period."
                } @else {
                    @let to = catalogue.get(&PlanRef { plan: c.plan.clone(), version: c.version }).map_or(c.plan.clone(), |p| p.name.clone());
                    strong { "On " (date(&c.at)) " your plan changes to " (to) " with " (c.seats) " seats." }
                }
                // A move to another version of the same plan is an operator's migration, which
                // the customer cannot withdraw.
                @if c.cancel || c.plan != sub.plan {
                    form.no-print method="post" action="/portal/scheduled-change/revoke" {
                        input type="hidden" name="csrf" value=(s.csrf);
                        div.actions {
                            button.secondary type="submit" {
                                @if c.cancel { "Keep my subscription" } @else { "Keep my current plan" }
                            }
                        }
                    }
                }
            }
        }
        section.card aria-labelledby="usage-h" {
            h2 #usage-h { "Usage this period" }
            @match (&used, &plan) {
                (Ok(report), Some(p)) => (usage_bars(report, p)),
                (Err(e), _) => p.muted { "Usage cannot be shown right now: " (e) },
                (_, None) => p.muted { "This plan is no longer in the catalogue." },
            }
        }
        section.card aria-labelledby="upcoming-h" {
            h2 #upcoming-h { "Upcoming invoice" }
            @match &upcoming {
                Some(u) => {
                    p.muted { "Issued on " (date(&u.issued_at)) " for the period " (date(&u.period.start)) " – " (date(&u.period.end)) ". It grows with the usage still to come this period." }
                    div.table-wrap tabindex="0" {
                        table {
                            thead { tr { th scope="col" { "Item" } th.num scope="col" { "Amount" } } }
                            tbody {
                                @for l in &u.lines {
                                    tr { td { (l.description) } td.num { (money(l.amount, &u.currency)) } }
                                }
                            }
                            tfoot { tr { td { "Total" } td.num { (money(u.total, &u.currency)) } } }
                        }
                    }
                }
                None => @if let Some(e) = &upcoming_failed {
                    p.muted { "The upcoming invoice cannot be shown right now: " (e) }
                } @else {
                    p.muted { "Nothing will be invoiced at the end of this period." }
                }
            }
        }
        @if open_sub && !cancel_scheduled && sub.status != "suspended" {
            section.card aria-labelledby="plans-h" {
                h2 #plans-h { "Plans" }
                p.muted { "Choosing a plan shows exactly what it costs now before anything changes." }
                div.plans {
                    @for p in &choices {
                        (plan_card(p, &sub, s))
                    }
                }
            }
            @if let Some(seats) = plan.as_ref().and_then(|p| p.seats.as_ref()) {
                section.card aria-labelledby="seats-h" {
                    h2 #seats-h { "Seats" }
                    form.inline method="post" action="/portal/quotes" {
                        input type="hidden" name="csrf" value=(s.csrf);
                        div.field {
                            label for="seats" { "Number of seats" }
                            input #seats type="number" name="seats" value=(sub.seats) min=(seats.min) max=[seats.max] required;
                        }
                        button type="submit" { "Review seat change" }
                    }
                    p.muted { (seats.included) " seats are included; each extra seat is " (money(seats.unit_amount, &sub.currency)) " per " (interval_word(plan.as_ref())) "." }
                }
            }
            section.card aria-labelledby="cancel-h" {
                h2 #cancel-h { "Cancel subscription" }
                p.muted { "A cancellation takes effect at the end of the current period, " (date(&period.end)) "; you keep everything until then." }
                form method="post" action="/portal/quotes" {
                    input type="hidden" name="csrf" value=(s.csrf);
                    input type="hidden" name="cancel" value="true";
                    button.danger type="submit" { "Cancel subscription" }
                }
            }
        }
        (invoice_list(&invoices))
        section.card aria-labelledby="payment-h" {
            h2 #payment-h { "Payment" }
            @if ctx.payments.is_none() {
                p { "Invoices are sent for payment by bank transfer or as agreed with us." }
            } @else if dunning.payment_method_on_file {
                p { span.badge.good { "Card on file" } " Invoices are charged to it when issued." }
            } @else {
                p { span.badge.warn { "No payment method" } " Add a card in the app so invoices can be paid." }
            }
        }
    })
}

fn status_text(status: &str) -> &'static str {
    match status {
        "active" => "Active",
        "trialing" => "On a free trial",
        "past_due" => "Payment overdue",
        "suspended" => "Suspended for non-payment",
        "canceled" => "Canceled",
        _ => "",
    }
}

fn interval_word(plan: Option<&PlanVersion>) -> &'static str {
    match plan.map(|p| p.interval.months()) {
        Some(12) => "year",
        _ => "month",
    }
}

/// The past-due banner: what happens next and when.
fn past_due_banner(d: &payments::DunningView, status: &str) -> Markup {
    let next_retry = d
        .payments
        .iter()
        .filter(|p| p.paid_at.is_none())
        .filter_map(|p| p.next_attempt_at)
        .min();
    html! {
        @if status == "suspended" {
            div.banner.bad role="alert" {
                strong { "Your subscription is suspended because a payment failed." }
                "Your plan comes back once the overdue invoice is paid: update your card in the app and it is charged at once."
            }
        } @else if status == "past_due" {
            div.banner.bad role="alert" {
                strong { "A payment failed." }
                @if let Some(at) = next_retry {
                    "We will try your card again on " (datetime(&at)) ". "
                }
                @if let Some(end) = d.grace_ends_at {
                    "Everything keeps working until " (date(&end)) ". "
                }
                @if let (Some(action), Some(at)) = (d.final_action, d.final_action_at) {
                    @match action {
                        crate::domain::dunning::FinalAction::Suspend => {
                            "If the last retry on " (date(&at)) " fails, the subscription is suspended and falls to the free plan."
                        }
                        crate::domain::dunning::FinalAction::Cancel => {
                            "If the last retry on " (date(&at)) " fails, the subscription is canceled."
                        }
                    }
                }
            }
        }
    }
}

/// Each limited or priced meter: this period's usage, and a bar against the limit.
fn usage_bars(report: &usage::UsageReport, plan: &PlanVersion) -> Markup {
    let shown: Vec<&usage::MeterUsage> = report
        .meters
        .iter()
        .filter(|m| {
            plan.limits.contains_key(&m.meter) || plan.charges.iter().any(|c| c.meter == m.meter)
        })
        .collect();
    html! {
        @if shown.is_empty() {
            p.muted { "This plan meters nothing." }
        }
        @for m in shown {
            div.meter {
                div.row {
                    strong { (label(&m.meter)) }
                    @match plan.limits.get(&m.meter) {
                        Some(l) => span { (quantity(m.value)) " of " (quantity(l.limit)) }
                        None => span { (quantity(m.value)) }
                    }
                }
                @if let Some(l) = plan.limits.get(&m.meter) {
                    @let pct = percent(m.value, l.limit);
                    @let over = m.value > l.limit;
                    @let colour = if over { super::charts::BAD } else if pct >= 80 { super::charts::WARN } else { super::charts::ACCENT };
                    svg.track role="meter" aria-label={ (label(&m.meter)) " used" } aria-valuemin="0" aria-valuemax=(l.limit) aria-valuenow=(m.value) aria-valuetext={ (pct) " % of the limit" } width="100%" height="10" {
                        rect width={ (pct.min(100)) "%" } height="10" rx="5" fill=(colour) {}
                    }
                    div.muted {
                        @match l.mode {
                            LimitMode::Hard => {
                                "Hard limit: once reached, more is refused until the next period or a bigger plan."
                            }
                            LimitMode::Soft => {
                                "Soft limit: you can go past it; usage beyond what the plan includes is billed."
                            }
                        }
                        @if over { " You are over this limit." }
                    }
                } @else {
                    div.muted { "No limit; billed as used." }
                }
            }
        }
    }
}

fn percent(value: Decimal, limit: Decimal) -> u32 {
    if limit <= Decimal::ZERO {
        return 100;
    }
    let p = (value * Decimal::from(100) / limit).round();
    p.to_string().parse::<u32>().unwrap_or(100)
}

/// What a plan includes before usage is billed: the free first tier or free units.
fn included(model: &ChargeModel) -> Option<Decimal> {
    match model {
        ChargeModel::Graduated { tiers } | ChargeModel::Volume { tiers } => tiers
            .first()
            .filter(|t| t.unit_amount.is_zero() && t.flat_amount.is_zero())
            .and_then(|t| t.up_to),
        ChargeModel::Package { free_units, .. } if !free_units.is_zero() => Some(*free_units),
        _ => None,
    }
}

fn plan_card(p: &PlanVersion, sub: &subs::SubscriptionView, s: &WebSession) -> Markup {
    let current = p.plan == sub.plan && p.version as i32 == sub.plan_version;
    let per = if p.interval.months() == 12 {
        "year"
    } else {
        "month"
    };
    let currency = p.currency.code();
    html! {
        div.card.plan.current[current] {
            h3 { (p.name) }
            div.price { (money(p.base_fee, currency)) " " small { "per " (per) } }
            ul {
                @if let Some(seats) = &p.seats {
                    @if seats.unit_amount.is_zero() {
                        li { "Up to " (seats.max.unwrap_or(seats.included)) " seats" }
                    } @else {
                        li { (seats.included) " seats included, then " (money(seats.unit_amount, currency)) " per seat" }
                    }
                }
                @for c in &p.charges {
                    @if let Some(n) = included(&c.model) {
                        li { (quantity(n)) " " (label(&c.meter).to_lowercase()) " included" }
                    }
                }
                @for (meter, l) in &p.limits {
                    li {
                        "Up to " (quantity(l.limit)) " " (label(meter).to_lowercase())
                        @if l.mode == LimitMode::Hard { " (hard limit)" }
                    }
                }
                @for (feature, on) in &p.features {
                    @if *on { li { (label(feature)) } }
                }
                @if p.trial_days > 0 { li { (p.trial_days) "-day free trial for new accounts" } }
            }
            @if current {
                span.badge.accent { "Your plan" }
            } @else {
                form method="post" action="/portal/quotes" {
                    input type="hidden" name="csrf" value=(s.csrf);
                    input type="hidden" name="plan" value={ (p.plan) "@" (p.version) };
                    button type="submit" { "Choose " (p.name) }
                }
            }
        }
    }
}

fn invoice_list(invoices: &[crate::store::invoices::InvoiceRow]) -> Markup {
    html! {
        section.card aria-labelledby="invoices-h" {
            h2 #invoices-h { "Invoices" }
            @if invoices.is_empty() {
                p.muted { "No invoices yet." }
            } @else {
                div.table-wrap tabindex="0" {
                    table {
                        thead { tr {
                            th scope="col" { "Invoice" } th scope="col" { "Issued" }
                            th.hide-sm scope="col" { "Period" } th scope="col" { "Status" }
                            th.num scope="col" { "Total" }
                        } }
                        tbody {
                            @for i in invoices {
                                tr {
                                    td { a href={ "/portal/invoices/" (i.number) } { "#" (i.number) } }
                                    td { (date(&i.issued_at)) }
                                    td.hide-sm { (date(&i.period_start)) " – " (date(&i.period_end)) }
                                    td { (invoice_status(&i.status)) }
                                    td.num { (money(i.total, &i.currency)) }
                                }
                            }
                        }
                    }
                }
            }
        }
    }
}

fn invoice_status(status: &str) -> Markup {
    let class = match status {
        "paid" => "good",
        "open" | "uncollectible" => "warn",
        "failed" | "past_due" => "bad",
        _ => "",
    };
    html! { span class={ "badge " (class) } { (label(status)) } }
}

#[derive(Deserialize)]
struct QuoteForm {
    csrf: String,
    plan: Option<String>,
    seats: Option<String>,
    cancel: Option<String>,
}

/// `POST /portal/quotes`: a quote for the chosen plan, seat count or cancellation; the
/// browser goes on to see it.
async fn create_quote(
    ctx: web::Data<Ctx>,
    Portal(s, account): Portal,
    form: web::Form<QuoteForm>,
) -> HttpResponse {
    let f = form.into_inner();
    if !web_sessions::csrf_matches(&s, &f.csrf) {
        return csrf_refused(Area::Portal);
    }
    let nul = [&f.plan, &f.seats, &f.cancel]
        .into_iter()
        .flatten()
        .any(|v| v.contains('\0'));
    if nul {
        return refused(
            &s,
            "That change cannot be made",
            "The form held a character that is not allowed (NUL).",
        );
    }
    let seats = match f.seats.as_deref().map(str::trim) {
        None | Some("") => None,
        Some(n) => match n.parse::<u32>() {
            Ok(n) => Some(n),
            Err(_) => {
                return refused(
                    &s,
                    "Seats must be a whole number",
                    &format!("`{n}` is not a number of seats."),
                );
            }
        },
    };
    let request = QuoteRequest {
        plan: f.plan.filter(|p| !p.is_empty()),
        version: None,
        seats,
        cancel: f.cancel.as_deref() == Some("true"),
        trial: false,
        effective: None,
        operator_override: false,
    };
    match subs::quote(&ctx, &principal(&account), &account, request).await {
        Ok(q) => see_other(&format!("/portal/quotes/{}", q.id)),
        Err(ServiceError::Invalid { message, .. })
        | Err(ServiceError::Conflict { message, .. }) => {
            refused(&s, "That change cannot be made", &message)
        }
        Err(e) => service_error(Area::Portal, e),
    }
}

/// A refused change, explained on a page that keeps the portal's navigation.
fn refused(s: &WebSession, title: &str, message: &str) -> HttpResponse {
    page_status(
        s,
        StatusCode::UNPROCESSABLE_ENTITY,
        title,
        "",
        html! {
            div.card role="alert" {
                h1 { (title) }
                p { (message) }
                a.button.secondary href="/portal" { "Back to billing" }
            }
        },
    )
}

/// `GET /portal/quotes/{id}`: the quote's lines and the amount due now, with "Confirm".
async fn show_quote(
    ctx: web::Data<Ctx>,
    Portal(s, account): Portal,
    path: web::Path<String>,
) -> HttpResponse {
    let id = path.into_inner();
    let stored = match subs::get_quote(&ctx, &account, &id).await {
        Ok(v) => v,
        Err(e) => return service_error(Area::Portal, e),
    };
    let status = stored
        .get("status")
        .and_then(|v| v.as_str())
        .unwrap_or("open")
        .to_owned();
    let q: Quote = match serde_json::from_value(stored) {
        Ok(q) => q,
        Err(_) => {
            return service_error(
                Area::Portal,
                ServiceError::NotFound(format!("quote {id} not found")),
            )
        }
    };
    let credit = subs::get_account(&ctx, &account)
        .await
        .ok()
        .map(|a| a.credit_balance);
    let catalogue = ctx.plans();
    let name_of = |plan: &str, version: u32| {
        catalogue
            .get(&PlanRef {
                plan: plan.to_owned(),
                version,
            })
            .map_or(plan.to_owned(), |p| p.name.clone())
    };
    let title = if q.cancel {
        "Cancel subscription".to_owned()
    } else if q.from.plan == q.to.plan && q.from.version == q.to.version {
        format!("Change seats to {}", q.to.seats)
    } else {
        format!("Change to {}", name_of(&q.to.plan, q.to.version))
    };
    let body = html! {
        section.card aria-labelledby="quote-h" {
            h1 #quote-h { (title) }
            dl.kv {
                dt { "Now" } dd { (name_of(&q.from.plan, q.from.version)) ", " (q.from.seats) " seats" }
                @if !q.cancel {
                    dt { "After" } dd { (name_of(&q.to.plan, q.to.version)) ", " (q.to.seats) " seats" }
                }
                dt { "Takes effect" }
                dd {
                    @match q.effective {
                        Effective::Now => "Now",
                        Effective::PeriodEnd => { (date(&q.effective_at)) ", at the end of the current period" }
                    }
                }
            }
            @if !q.lines.is_empty() {
                div.table-wrap tabindex="0" {
                    table {
                        caption.muted { "What changes on your bill now" }
                        thead { tr { th scope="col" { "Item" } th.num scope="col" { "Amount" } } }
                        tbody {
                            @for l in &q.lines {
                                tr { td { (l.description) } td.num { (money(l.amount, &q.currency)) } }
                            }
                        }
                    }
                }
            }
            p.total-due {
                "Amount due now: " span #amount-due { (money(q.amount_due_now, &q.currency)) }
            }
            @if q.amount_due_now.is_sign_negative() && !q.amount_due_now.is_zero() {
                p.muted { "A negative amount is a credit: it is taken off your next invoices." }
            }
            @if let Some(credit) = credit.filter(|c| *c > Decimal::ZERO && q.amount_due_now > Decimal::ZERO) {
                p.muted { "Your account has " (money(credit, &q.currency)) " of credit: it is taken off this invoice first." }
            }
            @if let (Some(p), false) = (&q.new_period, q.trial) {
                div.banner.warn {
                    strong { "This change starts a new billing period on " (date(&p.start)) "." }
                    "The usage of your current period so far is invoiced at once too (it is on the upcoming invoice of the billing page now)."
                }
            }
            @match status.as_str() {
                "open" => {
                    p.muted { "This quote holds until " (datetime(&q.expires_at)) "." }
                    form method="post" action={ "/portal/quotes/" (q.id) "/confirm" } {
                        input type="hidden" name="csrf" value=(s.csrf);
                        div.actions {
                            button type="submit" { "Confirm" }
                            a.button.secondary href="/portal" { "Go back" }
                        }
                    }
                }
                "accepted" => {
                    div.banner.good role="status" { strong { "This change is done." } }
                    a.button.secondary href="/portal" { "Back to billing" }
                }
                _ => {
                    div.banner.warn role="status" { strong { "This quote has expired." } "Choose again to see today's amount." }
                    a.button.secondary href="/portal" { "Back to billing" }
                }
            }
        }
    };
    page(&s, &title, "", body)
}

#[derive(Deserialize)]
struct CsrfForm {
    csrf: String,
}

/// `POST /portal/quotes/{id}/confirm`: accepts exactly that quote (a second click is the same
/// acceptance, not a second change).
async fn confirm(
    ctx: web::Data<Ctx>,
    Portal(s, account): Portal,
    path: web::Path<String>,
    form: web::Form<CsrfForm>,
) -> HttpResponse {
    if !web_sessions::csrf_matches(&s, &form.csrf) {
        return csrf_refused(Area::Portal);
    }
    let id = path.into_inner();
    match subs::accept(&ctx, &account, &id, &format!("portal:{id}")).await {
        // The change's own invoice is issued last (a change of interval first closes the
        // period so far with an invoice of its usage).
        Ok(done) => match done.invoices.last() {
            Some(n) => see_other(&format!("/portal?done=changed&invoice={n}")),
            None => see_other("/portal?done=changed"),
        },
        Err(ServiceError::Invalid { message, .. })
        | Err(ServiceError::Conflict { message, .. }) => {
            refused(&s, "That change cannot be made", &message)
        }
        Err(e) => service_error(Area::Portal, e),
    }
}

/// `POST /portal/scheduled-change/revoke`: keeps the subscription as it is (withdraws a
/// scheduled cancellation or downgrade).
async fn keep(
    ctx: web::Data<Ctx>,
    Portal(s, account): Portal,
    form: web::Form<CsrfForm>,
) -> HttpResponse {
    if !web_sessions::csrf_matches(&s, &form.csrf) {
        return csrf_refused(Area::Portal);
    }
    match subs::revoke_scheduled(&ctx, &account).await {
        Ok(_) => see_other("/portal?done=kept"),
        Err(ServiceError::Invalid { message, .. })
        | Err(ServiceError::Conflict { message, .. }) => {
            refused(&s, "That cannot be done", &message)
        }
        Err(e) => service_error(Area::Portal, e),
    }
}

#[derive(Deserialize)]
struct InvoiceQuery {
    print: Option<String>,
}

/// `GET /portal/invoices/{number}`: one of the account's invoices with its lines
/// (`?print=1`: the printable view, without the portal around it).
async fn invoice(
    ctx: web::Data<Ctx>,
    Portal(s, account): Portal,
    path: web::Path<String>,
    q: web::Query<InvoiceQuery>,
) -> HttpResponse {
    let Ok(number) = path.into_inner().parse::<i64>() else {
        return service_error(
            Area::Portal,
            ServiceError::NotFound("invoice not found".into()),
        );
    };
    let inv = match billing::get_invoice(&ctx, number, Some(&account)).await {
        Ok(i) => i,
        Err(e) => return service_error(Area::Portal, e),
    };
    let acct = subs::get_account(&ctx, &account).await.ok();
    let print = q.print.is_some();
    let i = &inv.invoice;
    let title = format!("Invoice #{}", i.number);
    let body = html! {
        article.card aria-labelledby="invoice-h" {
            div.toolbar {
                h1 #invoice-h { (title) }
                (invoice_status(&i.status))
            }
            dl.kv {
                dt { "Billed to" } dd { (acct.as_ref().and_then(|a| a.name.clone()).unwrap_or_else(|| account.clone())) }
                dt { "Issued" } dd { (date(&i.issued_at)) }
                dt { "Period" } dd { (date(&i.period_start)) " – " (date(&i.period_end)) }
                dt { "Plan" } dd { (label(&i.plan)) ", " (i.seats) " seats" }
            }
            div.table-wrap tabindex="0" {
                table {
                    thead { tr {
                        th scope="col" { "Description" }
                        th.num.hide-sm scope="col" { "Quantity" }
                        th.num scope="col" { "Amount" }
                    } }
                    tbody {
                        @for l in &inv.lines {
                            tr {
                                td { (l.description) }
                                td.num.hide-sm { (quantity(l.quantity)) }
                                td.num { (money(l.amount, &i.currency)) }
                            }
                        }
                    }
                    tfoot { tr { td { "Total" } td.hide-sm {} td.num #invoice-total { (money(i.total, &i.currency)) } } }
                }
            }
            @if let Some(p) = &inv.payment {
                p.muted {
                    @if let Some(at) = p.paid_at { "Paid on " (date(&at)) "." }
                    @else if let Some(at) = p.next_attempt_at { "Next payment attempt " (datetime(&at)) "." }
                }
            }
            @if !print {
                div.actions.no-print {
                    a.button.secondary href={ "/portal/invoices/" (i.number) "?print=1" } { "Printable view" }
                    a.button.secondary href="/portal" { "Back to billing" }
                }
            }
        }
    };
    if print {
        let f = Frame {
            title: &title,
            area: Area::Portal,
            nav: &[],
            current: "",
            csrf: None,
        };
        return respond(StatusCode::OK, frame(&f, body));
    }
    page(&s, &title, "", body)
}

async fn sign_out(
    req: HttpRequest,
    ctx: web::Data<Ctx>,
    form: web::Form<CsrfForm>,
) -> HttpResponse {
    super::sign_out(&req, &ctx, Area::Portal, &form.csrf).await
}
