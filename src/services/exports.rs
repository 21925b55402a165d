//! Exports for warehouses and reverse-ETL tools (Snowflake, BigQuery, Hightouch, Census): usage
//! events, invoices, invoice lines, MRR movements and PQL changes, read page by page after a
//! cursor. Each is read in an order that new rows only ever join at the end of, so a sync that
//! resumes from the last cursor it was given never misses or repeats a row:
//!
//! - invoices and lines: by invoice number (numbers come from one counter row locked until the
//!   issuing transaction commits: they commit in number order);
//! - movements and PQL changes: by the outbound feed's `seq`, given in commit order;
//! - events: by (stored_at, account, id), where stored_at is the database's time at the storing
//!   transaction's start, showing only events stored ten minutes or more ago (longer than any
//!   ingest transaction can run, so none can still commit behind a cursor).
//!
//! The cursor is opaque (a string); an empty one starts from the beginning. `next_cursor` is
//! always given: the position after the last row of the page (or the one asked from when the
//! page is empty; for movements and PQL changes, the feed position looked through, which may
//! pass events of other kinds), to store and resume from. The feed positions are read only
//! as far as they are visible without a gap (on Citus a sequencing round reaches the shards
//! one after another), so a position never passes an event not yet visible.

use super::{Ctx, ServiceError};
use crate::store::{self, StoreError};
use chrono::{DateTime, TimeZone, Utc};
use serde::Serialize;
use serde_json::{json, Value};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Entity {
    Events,
    Invoices,
    Lines,
    Movements,
    Pql,
}

impl Entity {
    pub const ALL: [Entity; 5] = [
        Entity::Events,
        Entity::Invoices,
        Entity::Lines,
        Entity::Movements,
        Entity::Pql,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Entity::Events => "events",
            Entity::Invoices => "invoices",
            Entity::Lines => "lines",
            Entity::Movements => "movements",
            Entity::Pql => "pql",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|e| e.name() == s)
    }

    /// The columns of a CSV export, in order (every row has exactly these keys).
    pub fn columns(self) -> &'static [&'static str] {
        match self {
            Entity::Events => &[
                "account",
                "id",
                "type",
                "timestamp",
                "properties",
                "received_at",
            ],
            Entity::Invoices => &[
                "number",
                "account",
                "kind",
                "period_start",
                "period_end",
                "plan",
                "version",
                "seats",
                "currency",
                "total",
                "status",
                "collection",
                "issued_at",
            ],
            Entity::Lines => &[
                "number",
                "line_no",
                "account",
                "kind",
                "meter",
                "quantity",
                "amount",
                "currency",
                "description",
                "usage_from",
                "usage_to",
            ],
            Entity::Movements => &[
                "seq",
                "event_id",
                "account",
                "at",
                "kind",
                "cause",
                "mrr_before",
                "mrr_after",
                "delta",
                "currency",
            ],
            Entity::Pql => &["seq", "event_id", "account", "type", "at", "data"],
        }
    }
}

/// One page of an export.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
#[schema(as = ExportPage)]
pub struct Page {
    pub data: Vec<Value>,
    pub next_cursor: String,
}

fn bad_cursor(entity: Entity, cursor: &str) -> ServiceError {
    ServiceError::invalid_field(
        "invalid_cursor",
        "after",
        format!(
            "`{}` is not a cursor of the {} export (use the next_cursor it gave, or none)",
            cursor.chars().take(80).collect::<String>(),
            entity.name()
        ),
    )
}

/// The page of `entity` after `cursor` (`None` or empty: from the beginning).
pub async fn page(
    ctx: &Ctx,
    entity: Entity,
    cursor: Option<&str>,
    limit: i64,
) -> Result<Page, ServiceError> {
    let cursor = cursor.unwrap_or("");
    let mut conn = ctx.pool.get().await.map_err(StoreError::from)?;
    let number = |c: &str| -> Result<i64, ServiceError> {
        if c.is_empty() {
            return Ok(0);
        }
        c.parse::<i64>()
            .ok()
            .filter(|n| *n >= 0)
            .ok_or_else(|| bad_cursor(entity, c))
    };
    match entity {
        Entity::Invoices => {
            let after = number(cursor)?;
            let mut rows = store::invoices::numbered_after(&mut conn, after, limit).await?;
            let next = rows.last().map_or(after, |r| r.number);
            for r in &mut rows {
                super::billing::present(r, &mut []);
            }
            Ok(Page {
                data: rows
                    .iter()
                    .map(|r| {
                        json!({
                            "number": r.number, "account": r.account, "kind": r.kind,
                            "period_start": crate::domain::ts::format(&r.period_start),
                            "period_end": crate::domain::ts::format(&r.period_end),
                            "plan": r.plan, "version": r.plan_version, "seats": r.seats,
                            "currency": r.currency, "total": r.total.to_string(),
                            "status": r.status, "collection": r.collection,
                            "issued_at": crate::domain::ts::format(&r.issued_at),
                        })
                    })
                    .collect(),
                next_cursor: next.to_string(),
            })
        }
        Entity::Lines => {
            let after = match cursor.split_once('.') {
                None if cursor.is_empty() => (0, 0),
                Some((n, l)) => match (n.parse::<i64>(), l.parse::<i32>()) {
                    (Ok(n), Ok(l)) if n >= 0 && l >= 0 => (n, l),
                    _ => return Err(bad_cursor(entity, cursor)),
                },
                None => return Err(bad_cursor(entity, cursor)),
            };
            let mut rows = store::invoices::lines_after(&mut conn, after, limit).await?;
            for (i, l) in &mut rows {
                super::billing::present(i, std::slice::from_mut(l));
            }
            let next = rows.last().map_or(after, |(i, l)| (i.number, l.line_no));
            let ts = |t: &Option<DateTime<Utc>>| t.as_ref().map(crate::domain::ts::format);
            Ok(Page {
                data: rows
                    .iter()
                    .map(|(i, l)| {
                        json!({
                            "number": i.number, "line_no": l.line_no, "account": i.account,
                            "kind": l.kind, "meter": l.meter,
                            "quantity": l.quantity.to_string(),
                            "amount": l.amount.to_string(), "currency": i.currency,
                            "description": l.description,
                            "usage_from": ts(&l.usage_from), "usage_to": ts(&l.usage_to),
                        })
                    })
                    .collect(),
                next_cursor: format!("{}.{}", next.0, next.1),
            })
        }
        Entity::Movements | Entity::Pql => {
            let after = number(cursor)?;
            // Only sequenced events are read: sequence what committed first.
            store::outbox::sequence(&mut conn).await?;
            let kinds: &[&str] = match entity {
                Entity::Movements => &["revenue.movement"],
                _ => &["pql.tier_changed", "routing.zone_changed"],
            };
            let (rows, next) =
                store::outbox::of_kinds_after(&mut conn, kinds, after, limit).await?;
            let data = rows
                .iter()
                .map(|r| match entity {
                    Entity::Movements => {
                        let p = &r.payload;
                        json!({
                            "seq": r.seq, "event_id": r.event_id, "account": r.account,
                            "at": p["at"], "kind": p["kind"], "cause": p["cause"],
                            "mrr_before": p["mrr_before"], "mrr_after": p["mrr_after"],
                            "delta": p["delta"], "currency": p["currency"],
                        })
                    }
                    _ => json!({
                        "seq": r.seq, "event_id": r.event_id, "account": r.account,
                        "type": r.kind, "at": crate::domain::ts::format(&r.created_at),
                        "data": r.payload,
                    }),
                })
                .collect();
            Ok(Page {
                data,
                next_cursor: next.to_string(),
            })
        }
        Entity::Events => {
            let after = if cursor.is_empty() {
                None
            } else {
                Some(decode_event_cursor(cursor).ok_or_else(|| bad_cursor(entity, cursor))?)
            };
            let rows = store::events::stored_after(
                &mut conn,
                after.as_ref().map(|(t, a, i)| (*t, a.as_str(), i.as_str())),
                limit,
            )
            .await?;
            let next = match rows.last() {
                Some(r) => encode_event_cursor(r.stored_at, &r.event.account, &r.event.id),
                None => cursor.to_owned(),
            };
            Ok(Page {
                data: rows
                    .iter()
                    .map(|r| &r.event)
                    .map(|r| {
                        json!({
                            "account": r.account, "id": r.id, "type": r.event_type,
                            "timestamp": crate::domain::ts::format(&r.ts),
                            "properties": r.properties,
                            "received_at": crate::domain::ts::format(&r.received_at),
                        })
                    })
                    .collect(),
                next_cursor: next,
            })
        }
    }
}

/// An event's place in the export: hex of `<micros>\n<account>\n<id>` (ids may hold any
/// character but NUL; the hex keeps the cursor URL-safe).
fn encode_event_cursor(at: DateTime<Utc>, account: &str, id: &str) -> String {
    hex::encode(format!("{}\n{account}\n{id}", at.timestamp_micros()))
}

fn decode_event_cursor(c: &str) -> Option<(DateTime<Utc>, String, String)> {
    let text = String::from_utf8(hex::decode(c).ok()?).ok()?;
    let mut parts = text.splitn(3, '\n');
    let micros: i64 = parts.next()?.parse().ok()?;
    let account = parts.next()?.to_owned();
    let id = parts.next()?.to_owned();
    let at = Utc.timestamp_micros(micros).single()?;
    Some((at, account, id))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_event_cursor_reads_back_what_it_holds_whatever_the_id() {
        let at = Utc
            .timestamp_micros(1_764_000_000_123_456)
            .single()
            .unwrap();
        for (account, id) in [("acme", "e-1"), ("a.b", "x\ny:z"), ("ü", "")] {
            let c = encode_event_cursor(at, account, id);
            assert!(c.chars().all(|ch| ch.is_ascii_hexdigit()));
            assert_eq!(
                decode_event_cursor(&c),
                Some((at, account.to_owned(), id.to_owned()))
            );
        }
        assert_eq!(decode_event_cursor("zz"), None);
        assert_eq!(decode_event_cursor(&hex::encode("12")), None);
    }

    #[test]
    fn every_entity_is_named_and_parsed_back() {
        for e in Entity::ALL {
            assert_eq!(Entity::parse(e.name()), Some(e));
            assert!(!e.columns().is_empty());
        }
        assert_eq!(Entity::parse("customers"), None);
    }
}
