//! accrue — usage metering and hybrid billing for product-led SaaS, on one PostgreSQL.
//!
//! # Layout
//! - [`domain`]: pure rules (events, meters, aggregation, money later). No IO, no async, no
//!   diesel/actix imports; a test in `tests/api/layering.rs` keeps it so.
//! - [`catalog`]: reads and validates the files under `pricing-plans/` (meters today).
//! - [`store`]: the only module that talks to PostgreSQL (diesel + diesel-async).
//! - [`services`]: use cases, one transaction each (ingest a batch, read usage, create a key).
//! - [`http`]: the only module that imports actix-web: route table, auth, handlers, error mapping.
//! - `main.rs`: the CLI (`serve`, `migrate`, `keys create`).
//!
//! Dependence runs one way: `http` → `services` → `store`/`catalog` → `domain`.

pub mod catalog;
pub mod config;
pub mod demo;
pub mod domain;
pub mod http;
pub mod jobs;
pub mod payments;
pub mod services;
pub mod store;
