//! The only module that imports actix-web: the route table, authentication, one file per
//! resource, and the mapping of service errors to statuses and stable codes.

mod accounts;
mod auth;
mod error;
mod events;
mod governance;
mod health;
mod invoices;
mod keys;
mod payments;
mod plans;
mod pql;
mod revenue;
mod test_clocks;
mod time;
mod usage;

pub use error::ApiError;

use crate::services::Ctx;
use actix_web::dev::Server;
use actix_web::{web, App, HttpServer};
use std::net::TcpListener;

/// Seconds a stopping server waits for in-flight requests (ingest batches) to finish.
const SHUTDOWN_GRACE_SECS: u64 = 30;

/// The whole route table, top to bottom.
pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.route("/healthz", web::get().to(health::healthz))
        .route("/readyz", web::get().to(health::readyz))
        .service(
            web::scope("/v1")
                .route("/events", web::post().to(events::ingest))
                .route(
                    "/accounts/{account}/usage",
                    web::get().to(usage::account_usage),
                )
                .route("/accounts/{account}", web::put().to(accounts::put_account))
                .route("/accounts/{account}", web::get().to(accounts::get_account))
                .route(
                    "/accounts/{account}/subscription",
                    web::post().to(accounts::subscribe),
                )
                .route(
                    "/accounts/{account}/subscription",
                    web::get().to(accounts::get_subscription),
                )
                .route(
                    "/accounts/{account}/subscription/changes",
                    web::get().to(accounts::changes),
                )
                .route(
                    "/accounts/{account}/subscription/quotes",
                    web::post().to(accounts::quote),
                )
                .route(
                    "/accounts/{account}/subscription/quotes/{quote}/accept",
                    web::post().to(accounts::accept),
                )
                .route("/accounts/{account}/check", web::post().to(accounts::check))
                .route(
                    "/accounts/{account}/payment-method",
                    web::put().to(payments::put_payment_method),
                )
                .route(
                    "/accounts/{account}/dunning",
                    web::get().to(payments::dunning),
                )
                .route("/stripe/webhook", web::post().to(payments::webhook))
                .route(
                    "/reports/reconciliation",
                    web::get().to(payments::reconciliation),
                )
                .route(
                    "/governance/event-types",
                    web::get().to(governance::event_types),
                )
                .route(
                    "/reports/billing-errors",
                    web::get().to(invoices::billing_errors),
                )
                .route("/keys", web::get().to(keys::list))
                .route("/keys/{id}", web::delete().to(keys::revoke))
                .route("/test-clocks", web::post().to(test_clocks::create))
                .route("/test-clocks/{id}", web::get().to(test_clocks::get))
                .route(
                    "/test-clocks/{id}/advance",
                    web::post().to(test_clocks::advance),
                )
                .route("/invoices", web::get().to(invoices::list))
                .route("/invoices/{number}", web::get().to(invoices::get))
                .route(
                    "/invoices/{number}/lineage",
                    web::get().to(invoices::lineage),
                )
                .route("/movements", web::get().to(revenue::movements))
                .route("/reports/nrr", web::get().to(revenue::nrr))
                .route(
                    "/webhook-endpoints",
                    web::post().to(revenue::create_endpoint),
                )
                .route("/webhook-endpoints", web::get().to(revenue::list_endpoints))
                .route(
                    "/webhook-endpoints/{id}/deliveries",
                    web::get().to(revenue::deliveries),
                )
                .route("/feed", web::get().to(revenue::feed))
                .route("/accounts/{account}/pql", web::get().to(pql::account))
                .route("/pql", web::get().to(pql::queue))
                .route("/reports/funnel", web::get().to(pql::funnel))
                .route("/plans", web::get().to(plans::list))
                .route(
                    "/plans/{plan}/versions/{version}",
                    web::get().to(plans::version),
                ),
        );
}

/// Builds the server on an already-bound listener (tests bind port 0). SIGTERM/SIGINT stop it
/// gracefully: accepted requests finish, new connections are refused.
pub fn server(ctx: Ctx, listener: TcpListener, workers: Option<usize>) -> std::io::Result<Server> {
    let data = web::Data::new(ctx);
    let mut server = HttpServer::new(move || {
        App::new()
            .app_data(data.clone())
            .app_data(web::QueryConfig::default().error_handler(error::query_error))
            .app_data(web::PathConfig::default().error_handler(error::path_error))
            .app_data(accounts::json_config())
            .configure(routes)
            .default_service(web::to(error::not_found))
    })
    .shutdown_timeout(SHUTDOWN_GRACE_SECS);
    if let Some(w) = workers {
        server = server.workers(w);
    }
    Ok(server.listen(listener)?.run())
}
