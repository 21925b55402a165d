//! Test clocks, as Stripe offers integrators: a frozen time that the accounts created on a
//! clock live by ("now" for them everywhere: event timestamps, quotes, trials, closes,
//! collection, dunning), moved only by an explicit advance that runs, in time order, everything
//! falling due up to the new time. Enabled by `ACCRUE_TEST_CLOCKS=true`.

use super::{lifecycle, payments, subscriptions, Ctx, ServiceError};
use crate::store::locks::SessionLock;
use crate::store::test_clocks::{self as store, TestClockRow};
use crate::store::StoreError;
use chrono::{DateTime, Utc};

/// At most this many due instants are run by one advance (a runaway guard: a monthly
/// subscription advanced a century takes about 1,200).
const MAX_STEPS: usize = 100_000;

fn disabled() -> ServiceError {
    ServiceError::NotFound("test clocks are off on this server".into())
}

pub async fn create(
    ctx: &Ctx,
    frozen_time: DateTime<Utc>,
    name: Option<&str>,
) -> Result<TestClockRow, ServiceError> {
    if !ctx.test_clocks_on() {
        return Err(disabled());
    }
    if name.is_some_and(|n| n.len() > 200) {
        return Err(ServiceError::invalid_field(
            "invalid_name",
            "name",
            "name: at most 200 characters",
        ));
    }
    let mut b = [0u8; 12];
    let _ = getrandom::fill(&mut b);
    let id = format!("clk_{}", hex::encode(b));
    let mut conn = ctx.pool.get().await.map_err(StoreError::from)?;
    Ok(store::insert(&mut conn, &id, name, frozen_time, ctx.clock.now()).await?)
}

pub async fn get(ctx: &Ctx, id: &str) -> Result<TestClockRow, ServiceError> {
    if !ctx.test_clocks_on() {
        return Err(disabled());
    }
    let mut conn = ctx.pool.get().await.map_err(StoreError::from)?;
    store::find_by_id(&mut conn, id)
        .await?
        .ok_or_else(|| ServiceError::NotFound(format!("test clock `{id}` not found")))
}

/// Moves clock `id` to `to`, running in time order every trial end, period end and collection
/// attempt that falls due for its accounts on the way; answers when all of it is done. A
/// clock being advanced (by any instance) refuses another advance with 409 `clock_advancing`.
pub async fn advance(ctx: &Ctx, id: &str, to: DateTime<Utc>) -> Result<TestClockRow, ServiceError> {
    get(ctx, id).await?;
    // One advance at a time per clock, whichever instance runs it (as Stripe refuses to
    // advance a clock that is advancing): the steps never interleave, so time never goes back.
    let conn = ctx.pool.get().await.map_err(StoreError::from)?;
    let Some(mut lock) = SessionLock::try_take(conn, format!("test_clock/{id}")).await? else {
        return Err(ServiceError::Conflict {
            code: "clock_advancing",
            message: format!("test clock `{id}` is being advanced; try again when it is ready"),
        });
    };
    let clock = get(ctx, id).await?;
    if to < clock.frozen_time {
        return Err(ServiceError::invalid_field(
            "frozen_time_before_current",
            "frozen_time",
            format!(
                "frozen_time: a test clock only moves forward; it is at {}",
                crate::domain::ts::format(&clock.frozen_time)
            ),
        ));
    }
    let conn = lock.conn();
    let accounts = store::accounts_of(conn, id).await?;
    let mut at = clock.frozen_time;
    let result = async {
        for _ in 0..MAX_STEPS {
            let step = match store::next_due(conn, id, at).await? {
                Some(t) if t < to => t,
                _ => to,
            };
            store::set(conn, id, step, "advancing").await?;
            for account in &accounts {
                run_due(ctx, account).await?;
            }
            at = step;
            if step == to {
                return Ok(());
            }
        }
        Err(ServiceError::invalid(
            "too_many_steps",
            format!(
                "more than {MAX_STEPS} due instants before {}",
                crate::domain::ts::format(&to)
            ),
        ))
    }
    .await;
    store::set(lock.conn(), id, at, "ready").await?;
    lock.release().await?;
    for account in &accounts {
        ctx.checks.invalidate(account);
    }
    result?;
    get(ctx, id).await
}

/// What falls due for one account at its clock's time: the subscription's catch-up (trial
/// end, scheduled changes, renewals and their invoices; a canceled one's late usage), then
/// collection of what is due.
async fn run_due(ctx: &Ctx, account: &str) -> Result<(), ServiceError> {
    match subscriptions::get_subscription(ctx, account).await {
        Ok(s) if s.status == "canceled" => {
            // Late usage of a canceled subscription's periods, on an invoice of its own.
            let mut conn = ctx.pool.get().await.map_err(StoreError::from)?;
            let now = ctx.now_for(&mut conn, account).await?;
            lifecycle::late_invoice_after_cancellation(ctx, &mut conn, account, now).await?;
        }
        Ok(_) | Err(ServiceError::NotFound(_)) => {}
        Err(e) => return Err(e),
    }
    payments::collect_account(ctx, account).await?;
    Ok(())
}
