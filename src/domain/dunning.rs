//! Dunning rules: when a failed payment is retried, when access stops, and what happens when
//! the retries run out. Pure: collection records failures and asks what is next.
//!
//! Retries are scheduled relative to the *first* failure (default 3, 5 and 7 days after it),
//! and the next one is the first of those days still ahead: a slow retry does not push the
//! next one back, and an extra attempt (a new payment method tried at once) does not bring it
//! forward. While past due, access continues for the
//! grace period; when every retry has failed the final action applies (`suspend`: the account
//! falls to the plan's fallback; `cancel`).

use chrono::{DateTime, Duration, Utc};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum FinalAction {
    Suspend,
    Cancel,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DunningPolicy {
    /// Days after the first failure at which the payment is retried.
    pub retry_days: Vec<u32>,
    /// Days after the first failure during which access continues.
    pub grace_days: u32,
    pub final_action: FinalAction,
}

impl Default for DunningPolicy {
    fn default() -> Self {
        Self {
            retry_days: vec![3, 5, 7],
            grace_days: 7,
            final_action: FinalAction::Suspend,
        }
    }
}

/// What to do after a failed collection attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(tag = "step", rename_all = "snake_case")]
pub enum NextStep {
    /// Try again at this instant.
    Retry { at: DateTime<Utc> },
    /// Every retry failed: apply the final action now.
    Final { action: FinalAction },
}

impl DunningPolicy {
    /// Parses `3,5,7`-style retry schedules, refusing non-increasing or empty ones.
    pub fn with_retry_days(mut self, spec: &str) -> Result<Self, String> {
        let days: Vec<u32> = spec
            .split(',')
            .map(|d| {
                d.trim()
                    .parse::<u32>()
                    .map_err(|_| format!("`{d}` is not a whole number of days"))
            })
            .collect::<Result<_, _>>()?;
        if days.is_empty() || days.windows(2).any(|w| w[0] >= w[1]) || days[0] == 0 {
            return Err(format!(
                "retry days must be increasing and positive, got `{spec}`"
            ));
        }
        self.retry_days = days;
        Ok(self)
    }

    /// The step after an attempt that failed at `now`, the first failure having been at
    /// `first_failure`: the first retry day still ahead, or the final action when none is.
    pub fn next_step(&self, first_failure: DateTime<Utc>, now: DateTime<Utc>) -> NextStep {
        match self
            .retry_days
            .iter()
            .map(|d| first_failure + Duration::days((*d).into()))
            .find(|at| *at > now)
        {
            Some(at) => NextStep::Retry { at },
            None => NextStep::Final {
                action: self.final_action,
            },
        }
    }

    /// Whether a past-due account still has access at `now`.
    pub fn in_grace(&self, first_failure: DateTime<Utc>, now: DateTime<Utc>) -> bool {
        now < first_failure + Duration::days(self.grace_days.into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn t0() -> DateTime<Utc> {
        DateTime::parse_from_rfc3339("2026-12-25T12:00:00Z")
            .unwrap()
            .with_timezone(&Utc)
    }

    #[test]
    fn the_default_schedule_retries_3_5_and_7_days_after_the_first_failure_then_suspends() {
        let p = DunningPolicy::default();
        let at = |d| t0() + Duration::days(d);
        assert_eq!(p.next_step(t0(), at(0)), NextStep::Retry { at: at(3) });
        assert_eq!(p.next_step(t0(), at(3)), NextStep::Retry { at: at(5) });
        assert_eq!(p.next_step(t0(), at(5)), NextStep::Retry { at: at(7) });
        assert_eq!(
            p.next_step(t0(), at(7)),
            NextStep::Final {
                action: FinalAction::Suspend
            }
        );
    }

    #[test]
    fn an_extra_attempt_keeps_the_schedule_and_a_late_one_skips_the_missed_retries() {
        let p = DunningPolicy::default();
        let at = |h| t0() + Duration::hours(h);
        // A new card declined a day after the first failure: the next retry is still day 3.
        assert_eq!(p.next_step(t0(), at(24)), NextStep::Retry { at: at(72) });
        // A retry run late, on day 6: the next is day 7, not day 5.
        assert_eq!(p.next_step(t0(), at(144)), NextStep::Retry { at: at(168) });
        assert!(matches!(
            p.next_step(t0(), at(30 * 24)),
            NextStep::Final { .. }
        ));
    }

    #[test]
    fn access_continues_during_the_grace_period_only() {
        let p = DunningPolicy::default();
        assert!(p.in_grace(t0(), t0() + Duration::days(6)));
        assert!(!p.in_grace(t0(), t0() + Duration::days(7)));
    }

    #[test]
    fn retry_schedules_must_increase() {
        assert_eq!(
            DunningPolicy::default()
                .with_retry_days("1, 2,4")
                .unwrap()
                .retry_days,
            vec![1, 2, 4]
        );
        assert!(DunningPolicy::default().with_retry_days("3,3").is_err());
        assert!(DunningPolicy::default().with_retry_days("0,2").is_err());
        assert!(DunningPolicy::default().with_retry_days("x").is_err());
    }

    proptest! {
        /// Retries are strictly later one after another, and exactly one final action follows
        /// the last retry.
        #[test]
        fn retries_move_forward_and_end_in_one_final_action(days in prop::collection::btree_set(1u32..60, 1..6)) {
            let spec = days.iter().map(|d| d.to_string()).collect::<Vec<_>>().join(",");
            let p = DunningPolicy::default().with_retry_days(&spec).unwrap();
            // Failing at each retry in turn walks the schedule, then ends in the final action.
            let mut now = t0();
            for _ in 0..days.len() {
                match p.next_step(t0(), now) {
                    NextStep::Retry { at } => { prop_assert!(at > now); now = at; }
                    NextStep::Final { .. } => prop_assert!(false, "final too early"),
                }
            }
            let is_final = matches!(p.next_step(t0(), now), NextStep::Final { .. });
            prop_assert!(is_final);
        }
    }
}
