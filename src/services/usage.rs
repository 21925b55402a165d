//! Reading usage: each meter's exact value for an account over a range of whole hours, from
//! the rollups (never from event history); and the event-type governance report.

use super::{Ctx, ServiceError};
use crate::domain::aggregate::is_bucket_boundary;
use crate::domain::meter::Aggregation;
use crate::store::{self, StoreError};
use chrono::{DateTime, Utc};
use rust_decimal::Decimal;
use serde::Serialize;

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct MeterUsage {
    pub meter: String,
    pub aggregation: Aggregation,
    #[serde(with = "rust_decimal::serde::str")]
    pub value: Decimal,
    pub event_count: i64,
    #[serde(serialize_with = "crate::domain::ts::ms_opt")]
    pub first_event_at: Option<DateTime<Utc>>,
    #[serde(serialize_with = "crate::domain::ts::ms_opt")]
    pub last_event_at: Option<DateTime<Utc>>,
}

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct UsageReport {
    pub account: String,
    #[serde(serialize_with = "crate::domain::ts::ms")]
    pub from: DateTime<Utc>,
    #[serde(serialize_with = "crate::domain::ts::ms")]
    pub to: DateTime<Utc>,
    pub meters: Vec<MeterUsage>,
}

/// Usage of every catalogue meter for `account` in `[from, to)`; both ends on whole hours.
pub async fn usage(
    ctx: &Ctx,
    account: &str,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
) -> Result<UsageReport, ServiceError> {
    for (name, t) in [("from", from), ("to", to)] {
        if !is_bucket_boundary(t) {
            return Err(ServiceError::invalid_field(
                "range_not_aligned",
                name,
                format!(
                    "`{name}` must be on a whole hour (UTC), got {}",
                    crate::domain::ts::format(&t)
                ),
            ));
        }
    }
    if from >= to {
        return Err(ServiceError::invalid_field(
            "invalid_range",
            "from",
            "`from` must be before `to`",
        ));
    }
    let mut conn = ctx.pool.get().await.map_err(StoreError::from)?;
    let found = store::usage::find_by_account_and_range(&mut conn, account, from, to).await?;
    let meters = ctx
        .meters
        .all()
        .iter()
        .map(|m| {
            let agg = found.get(&m.code).cloned().unwrap_or_default();
            let value = agg.value(m.aggregation);
            MeterUsage {
                meter: m.code.clone(),
                aggregation: m.aggregation,
                value,
                event_count: agg.state.event_count,
                first_event_at: agg.state.first_at,
                last_event_at: agg.state.last_at,
            }
        })
        .collect();
    Ok(UsageReport {
        account: account.to_owned(),
        from,
        to,
        meters,
    })
}

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct EventTypeUsage {
    pub event_type: String,
    pub event_count: i64,
    pub accounts: i64,
    #[serde(serialize_with = "crate::domain::ts::ms")]
    pub first_seen_at: DateTime<Utc>,
    #[serde(serialize_with = "crate::domain::ts::ms")]
    pub last_seen_at: DateTime<Utc>,
    /// Whether any meter reads this type; an unmetered type is stored but bills nothing.
    pub metered: bool,
    pub meters: Vec<String>,
}

pub async fn event_types(ctx: &Ctx) -> Result<Vec<EventTypeUsage>, ServiceError> {
    let mut conn = ctx.pool.get().await.map_err(StoreError::from)?;
    // Its two counters are read in one snapshot: a group commits to both together.
    let rows = conn
        .build_transaction()
        .read_only()
        .repeatable_read()
        .run::<_, StoreError, _>(async |c| store::usage::event_types(c).await)
        .await?;
    Ok(rows
        .into_iter()
        .map(|r| {
            let meters: Vec<String> = ctx
                .meters
                .for_event_type(&r.event_type)
                .map(|m| m.code.clone())
                .collect();
            EventTypeUsage {
                metered: !meters.is_empty(),
                meters,
                event_type: r.event_type,
                event_count: r.event_count,
                accounts: r.accounts,
                first_seen_at: r.first_seen_at,
                last_seen_at: r.last_seen_at,
            }
        })
        .collect())
}

/// `GET /v1/events`: what was stored for `account` (a debugging view: did my event arrive, as
/// what?), in id order.
pub async fn events(
    ctx: &Ctx,
    account: &str,
    event_type: Option<&str>,
    after: Option<&str>,
    limit: i64,
) -> Result<Vec<store::events::StoredEvent>, ServiceError> {
    let mut conn = ctx.pool.get().await.map_err(StoreError::from)?;
    Ok(store::events::list(&mut conn, account, event_type, after, limit).await?)
}
