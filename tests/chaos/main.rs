//! The chaos suite: the release binary (`target/release/accrue`, built by the README's test
//! command) run as separate processes against a PostgreSQL cluster of the suite's own, which it
//! stops and starts, while clients drive it. Each scenario prints its figures (`cargo test
//! --test chaos -- --nocapture` to see them; RELIABILITY.md records a run).
//!
//! The scenarios run one at a time (they measure the machine and restart databases).

mod harness;
mod ingest;
mod stripe;

/// One scenario at a time.
pub static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
