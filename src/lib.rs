//! accrue — usage metering and hybrid billing for product-led SaaS, on one PostgreSQL.
//!
//! # Layout
//! - [`domain`]: pure rules (events, meters, aggregation, money, rating, periods, proration,
//!   invoices, revenue, dunning, PQL). No IO, no async, no diesel/actix imports; a test in
//!   `tests/api/layering.rs` keeps it so.
//! - [`catalog`]: reads and validates the files under `pricing-plans/` (meters and plans).
//! - [`store`]: talks to PostgreSQL (diesel + diesel-async), one file per entity.
//! - [`payments`]: the payment rail (Stripe through async-stripe; a simulated card network for
//!   the demo).
//! - [`services`]: use cases, usually one transaction each. Among them the `lifecycle` alone
//!   moves a subscription through time and calls billing, which never calls back; a test in
//!   `tests/api/layering.rs` keeps the services free of cycles.
//! - [`http`]: the API over actix-web: route table, auth, handlers, error mapping.
//! - [`web`]: the pages (customer portal, finance console) over actix-web and maud, calling the
//!   same services as the API; only `http` and `web` import actix-web.
//! - [`jobs`]: the cron scheduler and its job queue (period close, collection).
//! - [`telemetry`]: the instance's Prometheus recorder (`GET /metrics`).
//! - `main.rs`: the CLI (`serve`, `migrate`, `keys`, `plans`, `price`, `quote`, `report`,
//!   `export`, `demo`, `revops`).
//!
//! Dependence runs one way: `http`/`web`/`jobs` → `services` → `store`/`catalog`/`payments` → `domain`.

pub mod catalog;
pub mod config;
pub mod demo;
pub mod domain;
pub mod http;
pub mod jobs;
pub mod payments;
pub mod services;
pub mod store;
pub mod telemetry;
pub mod web;
