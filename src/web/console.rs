//! The finance console: MRR, NRR and GRR by month with the movements behind them, invoices
//! with filters, detail and lineage down to the events. Signed in with an API key holding
//! `finance` (or `admin`) that reaches every account; revoking the key ends its sessions.
//! Every table is also a CSV download (`?format=csv`), built from the same rows as the page.

use super::format::{date, datetime, label, money, month, quantity};
use super::{
    answer_with, app_ctx, charts, csrf_refused, frame, respond, see_other, service_error,
    session_cookie, session_token, Area, Frame,
};
use crate::services::web_sessions::{self, ConsoleSession, SignInRefused};
use crate::services::{billing, revenue, Ctx, ServiceError};
use crate::store::invoices::InvoiceFilter;
use actix_web::cookie::{Cookie, SameSite};
use actix_web::dev::Payload;
use actix_web::http::{header, StatusCode};
use actix_web::{web, FromRequest, HttpRequest, HttpResponse};
use chrono::{DateTime, Datelike, Months, NaiveDate, Utc};
use futures_util::future::LocalBoxFuture;
use maud::{html, Markup};
use rust_decimal::Decimal;
use serde::Deserialize;

pub fn routes(cfg: &mut web::ServiceConfig) {
    // Inside the `/console` scope (`web::routes`).
    cfg.route("/sign-in", web::get().to(sign_in_form))
        .route("/sign-in", web::post().to(sign_in))
        .route("/sign-out", web::post().to(sign_out))
        .route("", web::get().to(overview))
        .route("/invoices", web::get().to(invoices))
        .route("/invoices/{number}", web::get().to(invoice))
        .route("/reconciliation", web::get().to(operations::reconciliation))
        .route("/dunning", web::get().to(operations::dunning))
        .route("/pql", web::get().to(operations::pql))
        .route("/governance", web::get().to(operations::governance))
        .route("/plans", web::get().to(operations::plans))
        .route("/plans/{plan}", web::get().to(operations::plan))
        .route("/webhooks", web::get().to(operations::webhooks));
}

const NAV: &[(&str, &str)] = &[
    ("/console", "Revenue"),
    ("/console/invoices", "Invoices"),
    ("/console/reconciliation", "Reconciliation"),
    ("/console/dunning", "Dunning"),
    ("/console/pql", "PQL"),
    ("/console/governance", "Governance"),
    ("/console/plans", "Plans"),
    ("/console/webhooks", "Webhooks"),
];

/// The cookie that ties the sign-in form to the browser that loaded it (there is no session
/// yet to carry a form token).
const SIGN_IN_COOKIE: &str = "accrue_sign_in";

fn page(s: &ConsoleSession, title: &str, current: &str, body: Markup) -> HttpResponse {
    let f = Frame {
        title,
        area: Area::Console,
        nav: NAV,
        current,
        csrf: Some(&s.session.csrf),
    };
    respond(StatusCode::OK, frame(&f, body))
}

/// A console handler's session, taken as its argument: the request's signed-in session, or
/// the request is answered with the way to the sign-in page and the handler does not run.
pub(super) struct Console(pub(super) ConsoleSession);

impl FromRequest for Console {
    type Error = actix_web::Error;
    type Future = LocalBoxFuture<'static, Result<Self, Self::Error>>;

    fn from_request(req: &HttpRequest, _: &mut Payload) -> Self::Future {
        let req = req.clone();
        Box::pin(async move {
            let ctx = app_ctx(&req);
            signed_in(&req, &ctx)
                .await
                .map(Console)
                .map_err(answer_with)
        })
    }
}

/// The console session of the request, or the way to the sign-in page.
async fn signed_in(req: &HttpRequest, ctx: &Ctx) -> Result<ConsoleSession, HttpResponse> {
    let Some(token) = session_token(req, Area::Console) else {
        return Err(see_other("/console/sign-in"));
    };
    match web_sessions::console_session(ctx, &token).await {
        Ok(Some(s)) => Ok(s),
        Ok(None) => Err(see_other("/console/sign-in")),
        Err(e) => Err(service_error(Area::Console, e)),
    }
}

fn sign_in_page(status: StatusCode, nonce: &str, error: Option<&str>) -> HttpResponse {
    let f = Frame {
        title: "Sign in",
        area: Area::Console,
        nav: &[],
        current: "",
        csrf: None,
    };
    let body = html! {
        div.card.signin {
            h1 { "Finance console" }
            p.muted { "Sign in with an API key that holds the finance or admin scope." }
            @if let Some(e) = error {
                div.banner.bad role="alert" { (e) }
            }
            form method="post" action="/console/sign-in" {
                input type="hidden" name="nonce" value=(nonce);
                div.field {
                    label for="key" { "API key" }
                    input #key type="password" name="key" autocomplete="off" required spellcheck="false";
                }
                div.actions { button type="submit" { "Sign in" } }
            }
        }
    };
    let mut res = respond(status, frame(&f, body));
    let cookie = Cookie::build(SIGN_IN_COOKIE, nonce.to_owned())
        .path("/console")
        .http_only(true)
        .same_site(SameSite::Strict)
        .finish();
    let _ = res.add_cookie(&cookie);
    res
}

/// The sign-in form's nonce; None when the system has no randomness to give.
fn nonce() -> Option<String> {
    let mut b = [0u8; 16];
    getrandom::fill(&mut b).ok()?;
    Some(hex::encode(b))
}

/// The sign-in page with a fresh nonce (503 when none can be made).
fn sign_in_again(status: StatusCode, error: Option<&str>) -> HttpResponse {
    match nonce() {
        Some(n) => sign_in_page(status, &n, error),
        None => service_error(
            Area::Console,
            ServiceError::Unavailable("no randomness for the sign-in form".into()),
        ),
    }
}

async fn sign_in_form() -> HttpResponse {
    sign_in_again(StatusCode::OK, None)
}

#[derive(Deserialize)]
struct SignInForm {
    nonce: String,
    key: String,
}

/// `POST /console/sign-in`: a finance or admin key starts a session (the key itself is not
/// kept in the browser).
async fn sign_in(
    req: HttpRequest,
    ctx: web::Data<Ctx>,
    form: web::Form<SignInForm>,
) -> HttpResponse {
    let f = form.into_inner();
    let expected = req.cookie(SIGN_IN_COOKIE).map(|c| c.value().to_owned());
    if expected.as_deref() != Some(f.nonce.as_str()) || f.nonce.is_empty() {
        return csrf_refused(Area::Console);
    }
    match web_sessions::console_sign_in(&ctx, &f.key).await {
        Ok(Ok(started)) => {
            let mut res = see_other("/console");
            let _ = res.add_cookie(&session_cookie(&req, &ctx, Area::Console, &started));
            res
        }
        Ok(Err(SignInRefused::UnknownKey)) => sign_in_again(
            StatusCode::UNAUTHORIZED,
            Some("That key is not known, or it was revoked or has expired."),
        ),
        Ok(Err(SignInRefused::NotFinance)) => sign_in_again(
            StatusCode::FORBIDDEN,
            Some("That key cannot open the console: it needs the finance or admin scope and must not be bound to one account."),
        ),
        Err(e) => service_error(Area::Console, e),
    }
}

#[derive(Deserialize)]
struct CsrfForm {
    csrf: String,
}

async fn sign_out(
    req: HttpRequest,
    ctx: web::Data<Ctx>,
    form: web::Form<CsrfForm>,
) -> HttpResponse {
    super::sign_out(&req, &ctx, Area::Console, &form.csrf).await
}

mod operations;

// ---------------------------------------------------------------------------------------------
// Tables: one model for the page and its CSV

/// One cell: what the page shows, what the CSV holds (a plain decimal for amounts), and a link.
struct Cell {
    text: String,
    csv: String,
    href: Option<String>,
    numeric: bool,
}

impl Cell {
    fn text(s: impl Into<String>) -> Self {
        let s = s.into();
        Self {
            csv: s.clone(),
            text: s,
            href: None,
            numeric: false,
        }
    }

    fn link(s: impl Into<String>, href: String) -> Self {
        Self {
            href: Some(href),
            ..Self::text(s)
        }
    }

    fn money(amount: Decimal, currency: &str) -> Self {
        Self {
            text: money(amount, currency),
            csv: amount.to_string(),
            href: None,
            numeric: true,
        }
    }

    fn number(q: Decimal) -> Self {
        Self {
            text: quantity(q),
            csv: q.normalize().to_string(),
            href: None,
            numeric: true,
        }
    }

    fn percent(v: Option<Decimal>) -> Self {
        Self {
            text: v.map_or("n/a".into(), |v| {
                format!("{} %", (v * Decimal::from(100)).round_dp(1))
            }),
            csv: v.map_or(String::new(), |v| v.to_string()),
            href: None,
            numeric: true,
        }
    }

    fn time(t: &DateTime<Utc>) -> Self {
        Self {
            text: date(t),
            csv: crate::domain::ts::format(t),
            href: None,
            numeric: false,
        }
    }
}

struct Table {
    /// The CSV file's name, without `.csv`.
    name: String,
    caption: String,
    head: Vec<&'static str>,
    rows: Vec<Vec<Cell>>,
}

impl Table {
    /// The table with its "Download CSV" link (`?format=csv&table=<name>` on this page).
    fn html(&self, req: &HttpRequest) -> Markup {
        self.render(req, false)
    }

    /// As [`Table::html`], for a table inside a section that has its own heading.
    fn html_nested(&self, req: &HttpRequest) -> Markup {
        self.render(req, true)
    }

    fn render(&self, req: &HttpRequest, nested: bool) -> Markup {
        let csv_href = csv_href(req, &self.name);
        let numeric: Vec<bool> = self
            .rows
            .first()
            .map(|r| r.iter().map(|c| c.numeric).collect())
            .unwrap_or_default();
        html! {
            div.toolbar {
                @if nested { h3 { (self.caption) } } @else { h2 { (self.caption) } }
                a.button.secondary href=(csv_href) download={ (self.name) ".csv" } aria-label={ "Download CSV: " (self.caption) } { "Download CSV" }
            }
            @if self.rows.is_empty() {
                p.muted { "Nothing to show." }
            } @else {
                div.table-wrap tabindex="0" {
                    table {
                        thead { tr {
                            @for (i, h) in self.head.iter().enumerate() {
                                @if numeric.get(i).copied().unwrap_or(false) {
                                    th.num scope="col" { (h) }
                                } @else {
                                    th scope="col" { (h) }
                                }
                            }
                        } }
                        tbody {
                            @for row in &self.rows {
                                tr {
                                    @for c in row {
                                        @let content = html! {
                                            @match &c.href {
                                                Some(h) => a href=(h) { (c.text) },
                                                None => (c.text),
                                            }
                                        };
                                        @if c.numeric { td.num { (content) } } @else { td { (content) } }
                                    }
                                }
                            }
                        }
                    }
                }
            }
        }
    }

    /// The table as CSV. Text that a spreadsheet would run as a formula (`=`, `+`, `-`, `@`
    /// first) is quoted with a leading `'`; amounts stay plain numbers.
    fn csv(&self) -> HttpResponse {
        let mut w = csv::Writer::from_writer(Vec::new());
        let _ = w.write_record(&self.head);
        for row in &self.rows {
            let cells: Vec<String> = row
                .iter()
                .map(|c| {
                    let risky = c
                        .csv
                        .starts_with(['=', '+', '-', '@', '\t', '\r'].as_slice());
                    let number = c.csv.parse::<Decimal>().is_ok();
                    if !c.numeric && risky && !number {
                        format!("'{}", c.csv)
                    } else {
                        c.csv.clone()
                    }
                })
                .collect();
            let _ = w.write_record(&cells);
        }
        let body = w.into_inner().unwrap_or_default();
        HttpResponse::Ok()
            .content_type("text/csv; charset=utf-8")
            .insert_header((
                header::CONTENT_DISPOSITION,
                format!("attachment; filename=\"{}.csv\"", self.name),
            ))
            .insert_header((header::CACHE_CONTROL, "no-store"))
            .body(body)
    }
}

/// `?format=csv` asks for a page's table as CSV.
fn wants_csv(req: &HttpRequest) -> bool {
    url::form_urlencoded::parse(req.query_string().as_bytes())
        .any(|(k, v)| k == "format" && v == "csv")
}

/// The CSV of the table the query names (`table=`; the first when none is named), when the
/// page was asked for one.
fn csv_of(req: &HttpRequest, tables: &[&Table]) -> Option<HttpResponse> {
    if !wants_csv(req) {
        return None;
    }
    let named = url::form_urlencoded::parse(req.query_string().as_bytes())
        .find(|(k, _)| k == "table")
        .map(|(_, v)| v.into_owned());
    let t = match named {
        Some(n) => tables.iter().find(|t| t.name == n).copied(),
        None => tables.first().copied(),
    };
    Some(match t {
        Some(t) => t.csv(),
        None => super::message_page(
            Area::Console,
            StatusCode::NOT_FOUND,
            "No such table",
            "This page has no table of that name.",
        ),
    })
}

/// The page's own address asking for the table `name` as CSV.
fn csv_href(req: &HttpRequest, name: &str) -> String {
    let mut q = url::form_urlencoded::Serializer::new(String::new());
    for (k, v) in url::form_urlencoded::parse(req.query_string().as_bytes()) {
        if k != "format" && k != "table" {
            q.append_pair(&k, &v);
        }
    }
    q.append_pair("format", "csv").append_pair("table", name);
    format!("{}?{}", req.path(), q.finish())
}

// ---------------------------------------------------------------------------------------------
// Revenue

#[derive(Deserialize)]
struct RevenueQuery {
    /// First month shown, `2026-01` (default: eleven months before this one).
    from: Option<String>,
    /// Last month shown, `2026-12` (default: this month).
    to: Option<String>,
    currency: Option<String>,
    #[serde(rename = "format")]
    _format: Option<String>,
}

fn first_of_month(t: DateTime<Utc>) -> NaiveDate {
    NaiveDate::from_ymd_opt(t.year(), t.month(), 1).unwrap_or_default()
}

fn parse_month(s: &str) -> Option<NaiveDate> {
    NaiveDate::parse_from_str(&format!("{s}-01"), "%Y-%m-%d").ok()
}

fn at_midnight(d: NaiveDate) -> DateTime<Utc> {
    d.and_hms_opt(0, 0, 0).unwrap_or_default().and_utc()
}

/// `GET /console`: MRR, NRR and GRR by month, with each month's movements.
async fn overview(
    req: HttpRequest,
    ctx: web::Data<Ctx>,
    Console(s): Console,
    q: web::Query<RevenueQuery>,
) -> HttpResponse {
    let this_month = first_of_month(ctx.clock.now());
    let last = match q.to.as_deref() {
        None => this_month,
        Some(m) => match parse_month(m) {
            Some(d) => d,
            None => return bad_param(&s, "to", m),
        },
    };
    let first = match q.from.as_deref() {
        None => last.checked_sub_months(Months::new(11)).unwrap_or(last),
        Some(m) => match parse_month(m) {
            Some(d) if d <= last => d,
            _ => return bad_param(&s, "from", m),
        },
    };
    let from = at_midnight(first);
    let to = at_midnight(last.checked_add_months(Months::new(1)).unwrap_or(last));
    let (falls, windows) = match (
        revenue::waterfall(&ctx, from, to).await,
        revenue::nrr(&ctx, from, to, true).await,
    ) {
        (Ok(f), Ok(w)) => (f, w),
        (Err(e), _) | (_, Err(e)) => return service_error(Area::Console, e),
    };
    let mut currencies: Vec<String> = falls.iter().map(|f| f.currency.clone()).collect();
    currencies.sort_unstable();
    currencies.dedup();
    let currency = q
        .currency
        .clone()
        .filter(|c| currencies.contains(c))
        .or_else(|| {
            // The currency with the most MRR at the end of the range.
            falls
                .iter()
                .filter(|f| f.to == to)
                .max_by_key(|f| f.ending_mrr)
                .map(|f| f.currency.clone())
        })
        .unwrap_or_else(|| "USD".into());
    let months: Vec<&revenue::Waterfall> =
        falls.iter().filter(|f| f.currency == currency).collect();
    let retention = |from: DateTime<Utc>| {
        windows
            .iter()
            .find(|w| w.from == from && w.currency == currency)
    };
    let table = Table {
        name: format!(
            "revenue-{}-{}-{currency}",
            first.format("%Y-%m"),
            last.format("%Y-%m")
        ),
        caption: "Month by month".into(),
        head: vec![
            "Month",
            "Starting MRR",
            "New",
            "Expansion",
            "Contraction",
            "Churn",
            "Reactivation",
            "Ending MRR",
            "NRR",
            "GRR",
        ],
        rows: months
            .iter()
            .map(|w| {
                let r = retention(w.from);
                vec![
                    Cell::text(w.from.format("%Y-%m").to_string()),
                    Cell::money(w.starting_mrr, &currency),
                    Cell::money(w.new, &currency),
                    Cell::money(w.expansion, &currency),
                    Cell::money(w.contraction, &currency),
                    Cell::money(w.churn, &currency),
                    Cell::money(w.reactivation, &currency),
                    Cell::money(w.ending_mrr, &currency),
                    Cell::percent(r.and_then(|r| r.retention.nrr)),
                    Cell::percent(r.and_then(|r| r.retention.grr)),
                ]
            })
            .collect(),
    };
    if let Some(csv) = csv_of(&req, &[&table]) {
        return csv;
    }
    let latest = months.last().copied();
    // The waterfall shows the last month in which MRR moved (the current one may not yet).
    let moved = months
        .iter()
        .rev()
        .find(|w| w.ending_mrr != w.starting_mrr || !w.new.is_zero() || !w.churn.is_zero())
        .copied()
        .or(latest);
    let latest_retention = latest.and_then(|w| retention(w.from));
    let points: Vec<charts::RetentionPoint> = months
        .iter()
        .map(|w| {
            let r = retention(w.from);
            (
                month(&w.from),
                r.and_then(|r| r.retention.nrr),
                r.and_then(|r| r.retention.grr),
            )
        })
        .collect();
    let pct = |v: Option<Decimal>| {
        v.map_or("n/a".to_owned(), |v| {
            format!("{} %", (v * Decimal::from(100)).round_dp(1))
        })
    };
    let body = html! {
        div.toolbar {
            div {
                h1 { "Revenue" }
                p.lead { (month(&from)) " to " (month(&at_midnight(last))) ", in " (currency) ". NRR and GRR of each month are those of the accounts paying at its start." }
            }
            @if currencies.len() > 1 {
                form.inline method="get" action="/console" {
                    input type="hidden" name="from" value=(first.format("%Y-%m"));
                    input type="hidden" name="to" value=(last.format("%Y-%m"));
                    div.field {
                        label for="currency" { "Currency" }
                        select #currency name="currency" {
                            @for c in &currencies {
                                option value=(c) selected[*c == currency] { (c) }
                            }
                        }
                    }
                    button.secondary type="submit" { "Show" }
                }
            }
        }
        @if let Some(w) = latest {
            div.grid {
                div.card.stat {
                    div.label {
                        @if w.to > ctx.clock.now() { "MRR now" } @else { "MRR at the end of " (month(&w.from)) }
                    }
                    div.value #mrr-latest { (money(w.ending_mrr, &currency)) }
                    div.sub { "from " span #mrr-start { (money(w.starting_mrr, &currency)) } " at its start" }
                }
                div.card.stat {
                    div.label { "NRR, " (month(&w.from)) }
                    div.value #nrr-latest { (pct(latest_retention.and_then(|r| r.retention.nrr))) }
                    div.sub { "net revenue retention" }
                }
                div.card.stat {
                    div.label { "GRR, " (month(&w.from)) }
                    div.value #grr-latest { (pct(latest_retention.and_then(|r| r.retention.grr))) }
                    div.sub { "gross revenue retention" }
                }
            }
            div.grid {
                section.card aria-labelledby="mrr-h" {
                    h2 #mrr-h { "MRR by month" }
                    (charts::mrr_bars(&months, &currency))
                }
                section.card aria-labelledby="ret-h" {
                    h2 #ret-h { "NRR and GRR by month" }
                    (charts::retention_lines(&points))
                }
            }
            @if let Some(m) = moved {
                section.card aria-labelledby="wf-h" {
                    h2 #wf-h { "How MRR moved in " (month(&m.from)) }
                    (charts::waterfall(m))
                }
            }
        } @else {
            p.muted { "No revenue in this range yet." }
        }
        section.card { (table.html(&req)) }
    };
    page(&s, "Revenue", "/console", body)
}

fn bad_param(s: &ConsoleSession, name: &str, value: &str) -> HttpResponse {
    let f = Frame {
        title: "Not a month",
        area: Area::Console,
        nav: NAV,
        current: "",
        csrf: Some(&s.session.csrf),
    };
    respond(
        StatusCode::BAD_REQUEST,
        frame(
            &f,
            html! {
                div.card role="alert" {
                    h1 { "Not a month" }
                    p { "`" (name) "` must be a month like 2026-11, got `" (value) "`." }
                }
            },
        ),
    )
}

// ---------------------------------------------------------------------------------------------
// Invoices

#[derive(Deserialize)]
struct InvoicesQuery {
    account: Option<String>,
    status: Option<String>,
    /// Periods starting in this month or later, `2026-11`.
    from: Option<String>,
    /// Periods starting before the end of this month.
    to: Option<String>,
    after: Option<i64>,
    #[serde(rename = "format")]
    _format: Option<String>,
}

const PAGE: i64 = 100;

/// `GET /console/invoices`: invoices by number, filtered by account, status and period.
async fn invoices(
    req: HttpRequest,
    ctx: web::Data<Ctx>,
    Console(s): Console,
    q: web::Query<InvoicesQuery>,
) -> HttpResponse {
    let q = q.into_inner();
    let empty = |v: Option<String>| v.map(|s| s.trim().to_owned()).filter(|s| !s.is_empty());
    let (account, status) = (empty(q.account), empty(q.status));
    let from = match empty(q.from.clone()).map(|m| parse_month(&m).ok_or(m)) {
        None => None,
        Some(Ok(d)) => Some(d),
        Some(Err(m)) => return bad_param(&s, "from", &m),
    };
    let to = match empty(q.to.clone()).map(|m| parse_month(&m).ok_or(m)) {
        None => None,
        Some(Ok(d)) => Some(d),
        Some(Err(m)) => return bad_param(&s, "to", &m),
    };
    let csv = wants_csv(&req);
    let filter = InvoiceFilter {
        account: account.clone(),
        status: status.clone(),
        period_from: from.map(at_midnight),
        period_to: to
            .and_then(|d| d.checked_add_months(Months::new(1)))
            .map(at_midnight),
        after: q.after,
        // The CSV holds every match; the page a hundred at a time.
        limit: if csv { 100_000 } else { PAGE + 1 },
    };
    let mut rows = match billing::list_invoices(&ctx, &filter).await {
        Ok(r) => r,
        Err(e) => return service_error(Area::Console, e),
    };
    let more = !csv && rows.len() as i64 > PAGE;
    rows.truncate(if csv { rows.len() } else { PAGE as usize });
    let table = Table {
        name: "invoices".into(),
        caption: format!(
            "{} invoice{}",
            rows.len(),
            if rows.len() == 1 { "" } else { "s" }
        ),
        head: vec![
            "Number",
            "Account",
            "Kind",
            "Period start",
            "Period end",
            "Plan",
            "Status",
            "Issued",
            "Currency",
            "Total",
        ],
        rows: rows
            .iter()
            .map(|i| {
                vec![
                    Cell::link(
                        i.number.to_string(),
                        format!("/console/invoices/{}", i.number),
                    ),
                    Cell::text(i.account.clone()),
                    Cell::text(i.kind.clone()),
                    Cell::time(&i.period_start),
                    Cell::time(&i.period_end),
                    Cell::text(format!("{}@{}", i.plan, i.plan_version)),
                    Cell::text(i.status.clone()),
                    Cell::time(&i.issued_at),
                    Cell::text(i.currency.clone()),
                    Cell::money(i.total, &i.currency),
                ]
            })
            .collect(),
    };
    if let Some(csv) = csv_of(&req, &[&table]) {
        return csv;
    }
    let statuses = ["open", "paid", "void", "uncollectible"];
    let next = rows.last().filter(|_| more).map(|last| {
        let mut qs = url::form_urlencoded::Serializer::new(String::new());
        for (k, v) in [("account", &account), ("status", &status)] {
            if let Some(v) = v {
                qs.append_pair(k, v);
            }
        }
        if let Some(f) = &q.from {
            qs.append_pair("from", f);
        }
        if let Some(t) = &q.to {
            qs.append_pair("to", t);
        }
        qs.append_pair("after", &last.number.to_string());
        format!("/console/invoices?{}", qs.finish())
    });
    let body = html! {
        h1 { "Invoices" }
        form.inline.card method="get" action="/console/invoices" aria-label="Filter invoices" {
            div.field {
                label for="f-account" { "Account" }
                input #f-account type="text" name="account" value=[account.as_deref()];
            }
            div.field {
                label for="f-status" { "Status" }
                select #f-status name="status" {
                    option value="" { "Any" }
                    @for st in statuses {
                        option value=(st) selected[status.as_deref() == Some(st)] { (label(st)) }
                    }
                }
            }
            div.field {
                label for="f-from" { "Periods from (month)" }
                input #f-from type="month" name="from" value=[q.from.as_deref()] placeholder="2026-11";
            }
            div.field {
                label for="f-to" { "to (month)" }
                input #f-to type="month" name="to" value=[q.to.as_deref()] placeholder="2026-12";
            }
            button type="submit" { "Filter" }
        }
        section.card { (table.html(&req)) }
        @if let Some(n) = next {
            a.button.secondary href=(n) { "Next page" }
        }
    };
    page(&s, "Invoices", "/console/invoices", body)
}

/// `GET /console/invoices/{number}`: an invoice, its lines, its payment or settlement, and
/// each usage line down to its hourly rollups and events.
async fn invoice(
    req: HttpRequest,
    ctx: web::Data<Ctx>,
    Console(s): Console,
    path: web::Path<String>,
) -> HttpResponse {
    let Ok(number) = path.into_inner().parse::<i64>() else {
        return service_error(
            Area::Console,
            ServiceError::NotFound("invoice not found".into()),
        );
    };
    // The page lists 50 events a line; a CSV carries as many as the API gives (1,000).
    let per_line = if wants_csv(&req) { 1000 } else { 50 };
    let (inv, lineage) = match (
        billing::get_invoice(&ctx, number, None).await,
        billing::lineage(&ctx, number, None, per_line).await,
    ) {
        (Ok(i), Ok(l)) => (i, l),
        (Err(e), _) | (_, Err(e)) => return service_error(Area::Console, e),
    };
    let i = &inv.invoice;
    let cur = i.currency.clone();
    let lines = Table {
        name: format!("invoice-{number}-lines"),
        caption: "Lines".into(),
        head: vec![
            "#",
            "Kind",
            "Description",
            "Meter",
            "Quantity",
            "Events",
            "Amount",
        ],
        rows: inv
            .lines
            .iter()
            .map(|l| {
                vec![
                    Cell::text(l.line_no.to_string()),
                    Cell::text(l.kind.clone()),
                    Cell::text(l.description.clone()),
                    Cell::text(l.meter.clone().unwrap_or_default()),
                    Cell::number(l.quantity),
                    Cell::text(l.event_count.map(|n| n.to_string()).unwrap_or_default()),
                    Cell::money(l.amount, &cur),
                ]
            })
            .collect(),
    };
    let rollups = Table {
        name: format!("invoice-{number}-rollups"),
        caption: "Hourly rollups".into(),
        head: vec!["Line", "Meter", "Hour", "Events", "Sum", "Max"],
        rows: lineage
            .iter()
            .flat_map(|l| {
                l.rollups.iter().map(|r| {
                    vec![
                        Cell::text(l.line_no.to_string()),
                        Cell::text(l.meter.clone()),
                        Cell::text(crate::domain::ts::format(&r.bucket)),
                        Cell::number(Decimal::from(r.event_count)),
                        Cell::number(r.value_sum),
                        Cell::text(
                            r.value_max
                                .map(|m| m.normalize().to_string())
                                .unwrap_or_default(),
                        ),
                    ]
                })
            })
            .collect(),
    };
    let events = Table {
        name: format!("invoice-{number}-events"),
        caption: "Events".into(),
        head: vec![
            "Line",
            "Meter",
            "Event id",
            "Type",
            "Timestamp",
            "Properties",
        ],
        rows: lineage
            .iter()
            .flat_map(|l| {
                let listed = l.events.iter().map(|e| {
                    vec![
                        Cell::text(l.line_no.to_string()),
                        Cell::text(l.meter.clone()),
                        Cell::text(e.id.clone()),
                        Cell::text(e.event_type.clone()),
                        Cell::text(crate::domain::ts::format(&e.timestamp)),
                        Cell::text(e.properties.to_string()),
                    ]
                });
                // A line with more events than listed says so in a row of its own.
                let shown = l.events.len() as i64;
                let more = (l.events_truncated || l.event_count.unwrap_or(0) > shown).then(|| {
                    vec![
                        Cell::text(l.line_no.to_string()),
                        Cell::text(l.meter.clone()),
                        Cell::text(format!(
                            "(more: {shown} of {} events listed; GET /v1/invoices/{number}/lineage pages them)",
                            l.event_count.unwrap_or(0)
                        )),
                        Cell::text(""),
                        Cell::text(""),
                        Cell::text(""),
                    ]
                });
                listed.chain(more)
            })
            .collect(),
    };
    if let Some(csv) = csv_of(&req, &[&lines, &rollups, &events]) {
        return csv;
    }
    let title = format!("Invoice #{number}");
    let body = html! {
        div.toolbar {
            h1 { (title) }
            span.badge { (label(&i.status)) }
        }
        div.grid {
            div.card.stat {
                div.label { "Total" }
                div.value #invoice-total { (money(i.total, &cur)) }
                div.sub { (label(&i.kind)) " invoice, " (i.collection) " collection" }
            }
            div.card {
                dl.kv {
                    dt { "Account" } dd { a href={ "/console/invoices?account=" (urlencode(&i.account)) } { (i.account) } }
                    dt { "Period" } dd { (date(&i.period_start)) " – " (date(&i.period_end)) }
                    dt { "Plan" } dd { (i.plan) "@" (i.plan_version) ", " (i.seats) " seats" }
                    dt { "Issued" } dd { (datetime(&i.issued_at)) }
                    @if let Some(p) = &inv.payment {
                        dt { "Payment" } dd { (label(&p.state)) ", " (p.attempts) @if p.attempts == 1 { " attempt" } @else { " attempts" } }
                    }
                    @if let Some(st) = &inv.settlement {
                        dt { "Settled" } dd { (label(&st.kind)) " by " (st.settled_by) }
                    }
                }
            }
        }
        section.card { (lines.html(&req)) }
        section.card aria-labelledby="lineage-h" {
            h2 #lineage-h { "Lineage" }
            p.muted { "Each usage line, down to the hourly rollups and the events it priced (at most 50 events per line here; the API gives up to 1,000)." }
            div.actions {
                a.button.secondary href=(csv_href(&req, &rollups.name)) { "Download rollups CSV" }
                a.button.secondary href=(csv_href(&req, &events.name)) { "Download events CSV" }
            }
            @if lineage.is_empty() {
                p.muted { "This invoice has no usage lines." }
            }
            @for l in &lineage {
                details.lineage open {
                    summary {
                        "Line " (l.line_no) ": " (label(&l.meter)) " — " (quantity(l.quantity))
                        " from " (l.event_count.unwrap_or_default()) " events of type " code { (l.event_type) }
                    }
                    p.muted { (datetime(&l.usage_from)) " to " (datetime(&l.usage_to)) }
                    div.table-wrap tabindex="0" {
                        table {
                            caption { "Hourly rollups" }
                            thead { tr { th scope="col" { "Hour" } th.num scope="col" { "Events" } th.num scope="col" { "Sum" } th.num scope="col" { "Max" } } }
                            tbody {
                                @for r in &l.rollups {
                                    tr {
                                        td { (datetime(&r.bucket)) }
                                        td.num { (r.event_count) }
                                        td.num { (quantity(r.value_sum)) }
                                        td.num { (r.value_max.map(quantity).unwrap_or_default()) }
                                    }
                                }
                            }
                        }
                    }
                    div.table-wrap tabindex="0" {
                        table {
                            caption { "Events" @if l.events_truncated { " (more than shown)" } }
                            thead { tr { th scope="col" { "Event id" } th scope="col" { "Time" } th scope="col" { "Properties" } } }
                            tbody {
                                @for e in &l.events {
                                    tr {
                                        td { code { (e.id) } }
                                        td { (datetime(&e.timestamp)) }
                                        td { code { (e.properties.to_string()) } }
                                    }
                                }
                            }
                        }
                    }
                }
            }
        }
    };
    page(&s, &title, "/console/invoices", body)
}

fn urlencode(s: &str) -> String {
    url::form_urlencoded::byte_serialize(s.as_bytes()).collect()
}
