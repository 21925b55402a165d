//! The chaos suite: the release binary (`target/release/accrue`, built by the README's test
//! command) run as separate processes against a PostgreSQL cluster of the suite's own, which it
//! stops and starts, while clients drive it. Each scenario prints its figures (`cargo test
//! --test chaos -- --nocapture` to see them; RELIABILITY.md records a run).
//!
//! The scenarios run one at a time (they measure the machine and restart databases).
//!
//! With `ACCRUE_CHAOS_CITUS=1` every scenario runs on a Citus cluster of its own instead (a
//! coordinator and two workers; see `harness::Cluster`): the README's test command runs the
//! suite once on each.

// The integration tests' fake Stripe (localstripe, started once per test binary) and the
// helpers it stands on; the chaos suite uses only part of them.
#[allow(dead_code)]
#[path = "../api/fake_stripe.rs"]
mod fake_stripe;
#[allow(dead_code)]
#[path = "../api/helpers.rs"]
mod helpers;
#[path = "../api/receiver.rs"]
mod receiver;

mod clocks;
mod collection;
mod harness;
mod ingest;
mod outbox;
mod stripe;

/// One scenario at a time.
pub static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
