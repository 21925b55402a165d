//! Integration tests: one binary, each test on its own freshly migrated PostgreSQL database,
//! talking to the real HTTP server over loopback.

mod fake_stripe;
mod helpers;

mod accounts;
mod auth;
mod billing;
mod check;
mod citus;
mod cli;
mod conventions;
mod crash;
mod exports;
mod fuzz;
mod governance;
mod ingest;
mod integrations;
mod layering;
mod metrics;
mod migration;
mod model;
mod model_cards;
mod money_edges;
mod openapi;
mod plans;
mod portal;
mod pql;
mod receiver;
mod restart;
mod revenue;
mod security;
mod settlement;
mod stripe;
mod subscriptions;
mod test_clocks;
mod usage;
