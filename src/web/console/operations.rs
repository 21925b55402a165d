//! The console's operational pages: reconciliation with Stripe, the dunning queue, the PQL
//! queue, instrumentation governance, plan versions with their diffs and a migration's dry
//! run, and webhook endpoints with their dead letters. Each is a table of a service's answer
//! (the same the API gives) and downloads as CSV.

use super::{
    bad_param, csv_of, first_of_month, page, parse_month, urlencode, Cell, Console, Table,
};
use crate::catalog::diff::diff;
use crate::domain::plan::PlanRef;
use crate::services::{migration, outbox, payments, plans, pql, usage, Ctx};
use crate::web::format::{date, label, money};
use crate::web::{service_error, Area};
use actix_web::{web, HttpRequest, HttpResponse};
use maud::html;
use serde::Deserialize;

fn opt_time(t: Option<chrono::DateTime<chrono::Utc>>) -> Cell {
    match t {
        Some(t) => Cell::time(&t),
        None => Cell::text(""),
    }
}

fn invoices_of(account: &str) -> String {
    format!("/console/invoices?account={}", urlencode(account))
}

#[derive(Deserialize)]
pub(super) struct PeriodQuery {
    /// The month, `2026-11` (default: this one).
    period: Option<String>,
    #[serde(rename = "format")]
    _format: Option<String>,
    #[serde(rename = "table")]
    _table: Option<String>,
}

/// `GET /console/reconciliation`: a month's invoices beside Stripe's, and every difference.
pub(super) async fn reconciliation(
    req: HttpRequest,
    ctx: web::Data<Ctx>,
    Console(s): Console,
    q: web::Query<PeriodQuery>,
) -> HttpResponse {
    let period = match q.period.as_deref().filter(|p| !p.is_empty()) {
        None => first_of_month(ctx.clock.now()).format("%Y-%m").to_string(),
        Some(p) if parse_month(p).is_some() => p.to_owned(),
        Some(p) => return bad_param(&s, "period", p),
    };
    let r = match payments::reconciliation(&ctx, &period).await {
        Ok(r) => r,
        Err(e) => return service_error(Area::Console, e),
    };
    let totals = Table {
        name: format!("reconciliation-{period}-totals"),
        caption: "Totals".into(),
        head: vec![
            "Currency",
            "Invoiced",
            "Paid",
            "Voided",
            "Written off",
            "Outstanding",
        ],
        rows: r
            .totals
            .iter()
            .map(|(cur, t)| {
                vec![
                    Cell::text(cur.clone()),
                    Cell::money(t.invoiced, cur),
                    Cell::money(t.paid, cur),
                    Cell::money(t.voided, cur),
                    Cell::money(t.written_off, cur),
                    Cell::money(t.outstanding, cur),
                ]
            })
            .collect(),
    };
    let mismatches = Table {
        name: format!("reconciliation-{period}-mismatches"),
        caption: format!("{} mismatches", r.mismatches.len()),
        head: vec!["Invoice", "Account", "Kind", "accrue", "Stripe"],
        rows: r
            .mismatches
            .iter()
            .map(|m| {
                vec![
                    Cell::link(
                        m.number.to_string(),
                        format!("/console/invoices/{}", m.number),
                    ),
                    Cell::link(m.account.clone(), invoices_of(&m.account)),
                    Cell::text(m.kind),
                    Cell::text(m.ours.clone()),
                    Cell::text(m.stripe.clone()),
                ]
            })
            .collect(),
    };
    if let Some(csv) = csv_of(&req, &[&mismatches, &totals]) {
        return csv;
    }
    let body = html! {
        div.toolbar {
            div {
                h1 { "Reconciliation" }
                p.lead { (r.invoices.len()) " invoices issued in " (period) "; " (r.matched) " match Stripe." }
            }
            form.inline method="get" action="/console/reconciliation" {
                div.field {
                    label for="period" { "Month" }
                    input #period type="month" name="period" value=(period);
                }
                button.secondary type="submit" { "Show" }
            }
        }
        section.card { (mismatches.html(&req)) }
        section.card { (totals.html(&req)) }
    };
    page(&s, "Reconciliation", "/console/reconciliation", body)
}

#[derive(Deserialize)]
pub(super) struct CsvQuery {
    #[serde(rename = "format")]
    _format: Option<String>,
    #[serde(rename = "table")]
    _table: Option<String>,
}

/// Most accounts the dunning page lists (longest overdue first).
const DUNNING_ROWS: i64 = 1000;

/// `GET /console/dunning`: accounts past due or suspended, what is unpaid and what is next.
pub(super) async fn dunning(
    req: HttpRequest,
    ctx: web::Data<Ctx>,
    Console(s): Console,
    _q: web::Query<CsvQuery>,
) -> HttpResponse {
    let queue = match payments::dunning_queue(&ctx, DUNNING_ROWS).await {
        Ok(q) => q,
        Err(e) => return service_error(Area::Console, e),
    };
    let table = Table {
        name: "dunning".into(),
        caption: if queue.len() as i64 == DUNNING_ROWS {
            format!("The first {DUNNING_ROWS} accounts in dunning")
        } else {
            format!("{} accounts in dunning", queue.len())
        },
        head: vec![
            "Account",
            "Status",
            "Past due since",
            "Unpaid invoices",
            "Attempts",
            "Next attempt",
            "Grace ends",
            "Final action",
            "Final action at",
            "Last error",
        ],
        rows: queue
            .iter()
            .map(|d| {
                vec![
                    Cell::link(d.account.clone(), invoices_of(&d.account)),
                    Cell::text(d.status.clone()),
                    opt_time(d.past_due_since),
                    Cell::text(
                        d.unpaid
                            .iter()
                            .map(|n| format!("#{n}"))
                            .collect::<Vec<_>>()
                            .join(" "),
                    ),
                    Cell::text(d.attempts.to_string()),
                    opt_time(d.next_attempt_at),
                    opt_time(d.grace_ends_at),
                    Cell::text(
                        d.final_action
                            .map(|a| format!("{a:?}").to_lowercase())
                            .unwrap_or_default(),
                    ),
                    opt_time(d.final_action_at),
                    Cell::text(d.last_error.clone().unwrap_or_default()),
                ]
            })
            .collect(),
    };
    if let Some(csv) = csv_of(&req, &[&table]) {
        return csv;
    }
    let body = html! {
        h1 { "Dunning" }
        p.lead { "Past-due accounts keep working through their grace period; failed payments are retried on the policy's days, then the final action applies." }
        section.card { (table.html(&req)) }
    };
    page(&s, "Dunning", "/console/dunning", body)
}

#[derive(Deserialize)]
pub(super) struct PqlQuery {
    tier: Option<String>,
    #[serde(rename = "format")]
    _format: Option<String>,
    #[serde(rename = "table")]
    _table: Option<String>,
}

/// `GET /console/pql`: the PQL queue of a tier (hot first by default), with each score's
/// breakdown, the routing zone and its reasons, and the owner.
pub(super) async fn pql(
    req: HttpRequest,
    ctx: web::Data<Ctx>,
    Console(s): Console,
    q: web::Query<PqlQuery>,
) -> HttpResponse {
    let tier = q.tier.clone().unwrap_or_else(|| "hot".into());
    let rows = match pql::queue(&ctx, &tier, None, 500).await {
        Ok(r) => r,
        Err(e) => return service_error(Area::Console, e),
    };
    let breakdown = |v: &serde_json::Value| {
        v.as_array()
            .map(|signals| {
                signals
                    .iter()
                    .filter(|s| s["met"].as_bool().unwrap_or(false))
                    .map(|s| {
                        format!(
                            "{} +{}",
                            label(s["signal"].as_str().unwrap_or_default()),
                            s["points"]
                        )
                    })
                    .collect::<Vec<_>>()
                    .join(", ")
            })
            .unwrap_or_default()
    };
    let reasons = |v: &serde_json::Value| {
        v.as_array()
            .map(|r| {
                r.iter()
                    .filter_map(|x| x.as_str())
                    .collect::<Vec<_>>()
                    .join("; ")
            })
            .unwrap_or_default()
    };
    let table = Table {
        name: format!("pql-{tier}"),
        caption: if rows.len() == 500 {
            format!("The first 500 {tier} accounts")
        } else {
            format!("{} {} accounts", rows.len(), tier)
        },
        head: vec![
            "Account",
            "Score",
            "Tier",
            "Breakdown",
            "Zone",
            "Zone reasons",
            "Owner",
            "Tier since",
        ],
        rows: rows
            .iter()
            .map(|r| {
                vec![
                    Cell::link(r.account.clone(), invoices_of(&r.account)),
                    Cell::number(r.score.into()),
                    Cell::text(r.tier.clone()),
                    Cell::text(breakdown(&r.breakdown)),
                    Cell::text(label(&r.zone)),
                    Cell::text(reasons(&r.zone_reasons)),
                    Cell::text(r.owner.clone().unwrap_or_default()),
                    Cell::time(&r.tier_since),
                ]
            })
            .collect(),
    };
    if let Some(csv) = csv_of(&req, &[&table]) {
        return csv;
    }
    let body = html! {
        div.toolbar {
            div {
                h1 { "Product-qualified leads" }
                p.lead { "Scored on product signals; routed by segment and signals to self-serve, sales-available or sales-required." }
            }
            form.inline method="get" action="/console/pql" {
                div.field {
                    label for="tier" { "Tier" }
                    select #tier name="tier" {
                        @for t in ["hot", "warm", "watching", "none"] {
                            option value=(t) selected[t == tier] { (label(t)) }
                        }
                    }
                }
                button.secondary type="submit" { "Show" }
            }
        }
        section.card { (table.html(&req)) }
    };
    page(&s, "PQL queue", "/console/pql", body)
}

/// `GET /console/governance`: the event types seen, and whether a meter reads them.
pub(super) async fn governance(
    req: HttpRequest,
    ctx: web::Data<Ctx>,
    Console(s): Console,
    _q: web::Query<CsvQuery>,
) -> HttpResponse {
    let types = match usage::event_types(&ctx).await {
        Ok(t) => t,
        Err(e) => return service_error(Area::Console, e),
    };
    let table = Table {
        name: "event-types".into(),
        caption: format!("{} event types", types.len()),
        head: vec![
            "Event type",
            "Events",
            "Accounts",
            "First seen",
            "Last seen",
            "Metered",
            "Meters",
        ],
        rows: types
            .iter()
            .map(|t| {
                vec![
                    Cell::text(t.event_type.clone()),
                    Cell::number(t.event_count.into()),
                    Cell::number(t.accounts.into()),
                    Cell::time(&t.first_seen_at),
                    Cell::time(&t.last_seen_at),
                    Cell::text(if t.metered {
                        "yes"
                    } else {
                        "no: stored, billed nothing"
                    }),
                    Cell::text(t.meters.join(", ")),
                ]
            })
            .collect(),
    };
    if let Some(csv) = csv_of(&req, &[&table]) {
        return csv;
    }
    let body = html! {
        h1 { "Instrumentation governance" }
        p.lead { "An event type no meter reads is stored but bills nothing: a renamed event shows up here." }
        section.card { (table.html(&req)) }
    };
    page(&s, "Governance", "/console/governance", body)
}

/// `GET /console/plans`: the published plans and their versions.
pub(super) async fn plans(
    req: HttpRequest,
    ctx: web::Data<Ctx>,
    Console(s): Console,
    _q: web::Query<CsvQuery>,
) -> HttpResponse {
    let list = match plans::list(&ctx.pool).await {
        Ok(l) => l,
        Err(e) => return service_error(Area::Console, e),
    };
    let table = Table {
        name: "plan-versions".into(),
        caption: "Published versions".into(),
        head: vec![
            "Plan",
            "Name",
            "Self-serve",
            "Version",
            "Published",
            "Content hash",
        ],
        rows: list
            .iter()
            .flat_map(|p| {
                p.versions.iter().map(move |v| {
                    vec![
                        Cell::link(
                            p.plan.clone(),
                            format!("/console/plans/{}", urlencode(&p.plan)),
                        ),
                        Cell::text(p.name.clone()),
                        Cell::text(if p.self_serve { "yes" } else { "no" }),
                        Cell::text(v.version.to_string()),
                        Cell::time(&v.published_at),
                        // The page shows the hash's start; the CSV holds all of it.
                        Cell {
                            text: v.content_hash.chars().take(12).collect::<String>(),
                            ..Cell::text(v.content_hash.clone())
                        },
                    ]
                })
            })
            .collect(),
    };
    if let Some(csv) = csv_of(&req, &[&table]) {
        return csv;
    }
    let body = html! {
        h1 { "Plans" }
        p.lead { "Published versions are immutable; open a plan to compare versions and see what moving its subscribers would change." }
        section.card { (table.html(&req)) }
    };
    page(&s, "Plans", "/console/plans", body)
}

#[derive(Deserialize)]
pub(super) struct PlanQuery {
    /// The version to migrate from (default: the one before the latest).
    from: Option<u32>,
    /// The version to migrate to (default: the latest).
    to: Option<u32>,
    #[serde(rename = "format")]
    _format: Option<String>,
    /// The table a CSV download names.
    table: Option<String>,
}

/// `GET /console/plans/{plan}`: each version's changes from the one before, and, when the
/// form asks (`?from=N&to=M`), the dry run of migrating the subscribers of one version to
/// another (nothing is changed).
pub(super) async fn plan(
    req: HttpRequest,
    ctx: web::Data<Ctx>,
    Console(s): Console,
    path: web::Path<String>,
    q: web::Query<PlanQuery>,
) -> HttpResponse {
    let code = path.into_inner();
    let catalogue = ctx.plans();
    let mut versions: Vec<_> = catalogue
        .all()
        .filter(|p| p.plan == code && catalogue.is_published(&p.plan_ref()))
        .cloned()
        .collect();
    versions.sort_by_key(|p| p.version);
    let Some(latest) = versions.last().cloned() else {
        return service_error(
            Area::Console,
            crate::services::ServiceError::NotFound(format!("plan {code} is not published")),
        );
    };
    let changes = Table {
        name: format!("plan-{code}-changes"),
        caption: "Changes between versions".into(),
        head: vec!["Version", "Field", "Before", "After"],
        rows: versions
            .windows(2)
            .flat_map(|w| {
                diff(&w[0], &w[1]).into_iter().map(move |c| {
                    let show = |v: &Option<serde_json::Value>| {
                        v.as_ref()
                            .map_or("(none)".to_owned(), |v| match v.as_str() {
                                Some(s) => s.to_owned(),
                                None => v.to_string(),
                            })
                    };
                    vec![
                        Cell::text(format!("{} → {}", w[0].version, w[1].version)),
                        Cell::text(c.field.clone()),
                        Cell::text(show(&c.before)),
                        Cell::text(show(&c.after)),
                    ]
                })
            })
            .collect(),
    };
    // Versions not published fall back to the defaults: the latest, and the one before it.
    let listed = |v: u32| versions.iter().any(|p| p.version == v);
    let to = q.to.filter(|v| listed(*v)).unwrap_or(latest.version);
    let from = q.from.filter(|v| listed(*v)).unwrap_or_else(|| {
        versions
            .iter()
            .rev()
            .map(|p| p.version)
            .find(|v| *v < to)
            .unwrap_or(to)
    });
    // The dry run prices every subscriber of `from` twice: it runs when asked (the form names
    // both versions, or its table's CSV is downloaded), not on every view of the page, nor for
    // the CSV of the changes.
    let impact_name = format!("plan-{code}-{from}-to-{to}-dry-run");
    let wants_impact = super::wants_csv(&req) && q.table.as_deref() == Some(impact_name.as_str());
    if super::wants_csv(&req) && !wants_impact {
        if let Some(csv) = csv_of(&req, &[&changes]) {
            return csv;
        }
    }
    let asked = (q.from.is_some() && q.to.is_some()) || wants_impact;
    let dry = if asked && from != to {
        Some(
            migration::migrate(
                &ctx,
                &PlanRef {
                    plan: code.clone(),
                    version: from,
                },
                &PlanRef {
                    plan: code.clone(),
                    version: to,
                },
                true,
                migration::When::AtRenewal,
                &format!("console:{}", s.principal.name),
            )
            .await,
        )
    } else {
        None
    };
    let (report, dry_error) = match dry {
        Some(Ok(r)) => (Some(r), None),
        Some(Err(e)) => (None, Some(e.to_string())),
        None => (None, None),
    };
    let impact = Table {
        name: impact_name,
        caption: format!("Moving {code}@{from} subscribers to {code}@{to} (dry run)"),
        head: vec![
            "Account",
            "Seats",
            "Status",
            "Last period, current version",
            "Same period, new version",
            "Difference",
            "MRR before",
            "MRR after",
            "Not moved because",
        ],
        rows: report
            .iter()
            .flat_map(|r| {
                let cur = r.currency.clone();
                r.accounts.iter().map(move |l| {
                    vec![
                        Cell::link(l.account.clone(), invoices_of(&l.account)),
                        Cell::text(l.seats.to_string()),
                        Cell::text(l.status.clone()),
                        Cell::money(l.current_version_amount, &cur),
                        Cell::money(l.new_version_amount, &cur),
                        Cell::money(l.period_delta, &cur),
                        Cell::money(l.mrr_before, &cur),
                        Cell::money(l.mrr_after, &cur),
                        Cell::text(l.skipped.clone().unwrap_or_default()),
                    ]
                })
            })
            .collect(),
    };
    if let Some(csv) = csv_of(&req, &[&changes, &impact]) {
        return csv;
    }
    let title = format!("{} ({code})", latest.name);
    let body = html! {
        h1 { (title) }
        p.lead {
            (versions.len()) " published versions; the latest, " (latest.version) ", costs "
            (money(latest.base_fee, latest.currency.code())) " per "
            @if latest.interval.months() == 12 { "year" } @else { "month" }
            @if !latest.self_serve { " (sold by sales only)" }
            "."
        }
        section.card { (changes.html(&req)) }
        section.card aria-labelledby="dry-h" {
            h2 #dry-h { "Migration impact" }
            form.inline method="get" action={ "/console/plans/" (urlencode(&code)) } {
                div.field {
                    label for="from" { "From version" }
                    select #from name="from" {
                        @for v in &versions { option value=(v.version) selected[v.version == from] { (v.version) } }
                    }
                }
                div.field {
                    label for="to" { "To version" }
                    select #to name="to" {
                        @for v in &versions { option value=(v.version) selected[v.version == to] { (v.version) } }
                    }
                }
                button.secondary type="submit" { "Show the dry run" }
            }
            @if versions.len() < 2 {
                p.muted { "One version is published: there is nothing to migrate to." }
            } @else if !asked {
                p.muted { "Choose two versions and show the dry run: it prices each subscriber's last closed period on both versions. Nothing is changed." }
            } @else if from == to {
                p.muted { "The same version twice: nothing to move." }
            }
            @if let Some(e) = &dry_error {
                div.banner.warn role="status" { (e) }
            }
            @if let Some(r) = &report {
                p.muted {
                    (r.accounts.len()) " subscribers; their MRR goes from "
                    (money(r.total_mrr_before, &r.currency)) " to " (money(r.total_mrr_after, &r.currency))
                    ". Nothing changes until an operator runs " code { "accrue plans migrate" } "."
                }
                (impact.html_nested(&req))
            }
        }
    };
    page(&s, &title, "/console/plans", body)
}

/// `GET /console/webhooks`: the endpoints and, for each, the deliveries that gave up.
pub(super) async fn webhooks(
    req: HttpRequest,
    ctx: web::Data<Ctx>,
    Console(s): Console,
    _q: web::Query<CsvQuery>,
) -> HttpResponse {
    let endpoints = match outbox::endpoints(&ctx).await {
        Ok(e) => e,
        Err(e) => return service_error(Area::Console, e),
    };
    let mut dead = Vec::new();
    for e in &endpoints {
        match outbox::deliveries(&ctx, e.id, Some("dead"), None, 500).await {
            Ok(d) => dead.extend(d),
            Err(err) => return service_error(Area::Console, err),
        }
    }
    let list = Table {
        name: "webhook-endpoints".into(),
        caption: format!("{} endpoints", endpoints.len()),
        head: vec!["Id", "URL", "Event kinds", "Created", "Enabled"],
        rows: endpoints
            .iter()
            .map(|e| {
                vec![
                    Cell::text(e.id.to_string()),
                    Cell::text(e.url.clone()),
                    Cell::text(if e.kinds.is_empty() {
                        "all".to_owned()
                    } else {
                        e.kinds.join(", ")
                    }),
                    Cell::time(&e.created_at),
                    Cell::text(match e.disabled_at {
                        Some(t) => format!("no (since {})", date(&t)),
                        None => "yes".into(),
                    }),
                ]
            })
            .collect(),
    };
    let letters = Table {
        name: "webhook-dead-letters".into(),
        caption: format!("{} dead letters", dead.len()),
        head: vec![
            "Endpoint",
            "Sequence",
            "Account",
            "Event",
            "Attempts",
            "Last error",
            "Created",
        ],
        rows: dead
            .iter()
            .map(|d| {
                vec![
                    Cell::text(d.endpoint_id.to_string()),
                    Cell::text(d.seq.to_string()),
                    Cell::text(d.account.clone()),
                    Cell::text(d.event_id.clone()),
                    Cell::text(d.attempts.to_string()),
                    Cell::text(d.last_error.clone().unwrap_or_default()),
                    Cell::time(&d.created_at),
                ]
            })
            .collect(),
    };
    if let Some(csv) = csv_of(&req, &[&list, &letters]) {
        return csv;
    }
    let body = html! {
        h1 { "Webhooks" }
        p.lead { "Deliveries are retried with backoff; those that gave up are dead letters, listed here to replay from the feed." }
        section.card { (list.html(&req)) }
        section.card { (letters.html(&req)) }
    };
    page(&s, "Webhooks", "/console/webhooks", body)
}
