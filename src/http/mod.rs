//! The only module that imports actix-web: the route table, authentication, one file per
//! resource, and the mapping of service errors to statuses and stable codes.

mod accounts;
mod auth;
mod body;
mod error;
mod events;
mod governance;
mod health;
mod invoices;
mod keys;
mod list;
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

/// The whole route table, top to bottom. Each path is one resource: a method it does not have
/// answers 405 with `Allow`, an unknown path 404.
pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.service(resource(
        "/healthz",
        vec![("GET", web::get().to(health::healthz))],
    ));
    cfg.service(resource(
        "/readyz",
        vec![("GET", web::get().to(health::readyz))],
    ));
    cfg.service(
        web::scope("/v1")
            .service(resource(
                "/events",
                vec![("POST", web::post().to(events::ingest))],
            ))
            .service(resource(
                "/accounts/{account}/usage",
                vec![("GET", web::get().to(usage::account_usage))],
            ))
            .service(resource(
                "/accounts/{account}",
                vec![
                    ("PUT", web::put().to(accounts::put_account)),
                    ("PATCH", web::patch().to(accounts::patch_account)),
                    ("GET", web::get().to(accounts::get_account)),
                ],
            ))
            .service(resource(
                "/accounts",
                vec![("GET", web::get().to(accounts::list_accounts))],
            ))
            .service(resource(
                "/accounts/{account}/subscription",
                vec![
                    ("POST", web::post().to(accounts::subscribe)),
                    ("GET", web::get().to(accounts::get_subscription)),
                ],
            ))
            .service(resource(
                "/accounts/{account}/subscription/changes",
                vec![("GET", web::get().to(accounts::changes))],
            ))
            .service(resource(
                "/accounts/{account}/subscription/scheduled-change",
                vec![("DELETE", web::delete().to(accounts::revoke_scheduled))],
            ))
            .service(resource(
                "/accounts/{account}/subscription/quotes",
                vec![("POST", web::post().to(accounts::quote))],
            ))
            .service(resource(
                "/accounts/{account}/subscription/quotes/{quote}/accept",
                vec![("POST", web::post().to(accounts::accept))],
            ))
            .service(resource(
                "/accounts/{account}/check",
                vec![("POST", web::post().to(accounts::check))],
            ))
            .service(resource(
                "/accounts/{account}/payment-method",
                vec![("PUT", web::put().to(payments::put_payment_method))],
            ))
            .service(resource(
                "/accounts/{account}/dunning",
                vec![("GET", web::get().to(payments::dunning))],
            ))
            .service(resource(
                "/stripe/webhook",
                vec![("POST", web::post().to(payments::webhook))],
            ))
            .service(resource(
                "/reports/reconciliation",
                vec![("GET", web::get().to(payments::reconciliation))],
            ))
            .service(resource(
                "/governance/event-types",
                vec![("GET", web::get().to(governance::event_types))],
            ))
            .service(resource(
                "/reports/billing-errors",
                vec![("GET", web::get().to(invoices::billing_errors))],
            ))
            .service(resource("/keys", vec![("GET", web::get().to(keys::list))]))
            .service(resource(
                "/keys/{id}",
                vec![("DELETE", web::delete().to(keys::revoke))],
            ))
            .service(resource(
                "/test-clocks",
                vec![("POST", web::post().to(test_clocks::create))],
            ))
            .service(resource(
                "/test-clocks/{id}",
                vec![("GET", web::get().to(test_clocks::get))],
            ))
            .service(resource(
                "/test-clocks/{id}/advance",
                vec![("POST", web::post().to(test_clocks::advance))],
            ))
            .service(resource(
                "/invoices",
                vec![("GET", web::get().to(invoices::list))],
            ))
            .service(resource(
                "/invoices/{number}",
                vec![("GET", web::get().to(invoices::get))],
            ))
            .service(resource(
                "/invoices/{number}/pay",
                vec![("POST", web::post().to(invoices::pay))],
            ))
            .service(resource(
                "/invoices/{number}/void",
                vec![("POST", web::post().to(invoices::void))],
            ))
            .service(resource(
                "/invoices/{number}/write-off",
                vec![("POST", web::post().to(invoices::write_off))],
            ))
            .service(resource(
                "/invoices/{number}/lineage",
                vec![("GET", web::get().to(invoices::lineage))],
            ))
            .service(resource(
                "/movements",
                vec![("GET", web::get().to(revenue::movements))],
            ))
            .service(resource(
                "/reports/nrr",
                vec![("GET", web::get().to(revenue::nrr))],
            ))
            .service(resource(
                "/webhook-endpoints",
                vec![
                    ("POST", web::post().to(revenue::create_endpoint)),
                    ("GET", web::get().to(revenue::list_endpoints)),
                ],
            ))
            .service(resource(
                "/webhook-endpoints/{id}",
                vec![
                    ("GET", web::get().to(revenue::get_endpoint)),
                    ("PATCH", web::patch().to(revenue::update_endpoint)),
                    ("DELETE", web::delete().to(revenue::delete_endpoint)),
                ],
            ))
            .service(resource(
                "/webhook-endpoints/{id}/rotate-secret",
                vec![("POST", web::post().to(revenue::rotate_secret))],
            ))
            .service(resource(
                "/webhook-endpoints/{id}/deliveries",
                vec![("GET", web::get().to(revenue::deliveries))],
            ))
            .service(resource(
                "/feed",
                vec![("GET", web::get().to(revenue::feed))],
            ))
            .service(resource(
                "/accounts/{account}/pql",
                vec![("GET", web::get().to(pql::account))],
            ))
            .service(resource("/pql", vec![("GET", web::get().to(pql::queue))]))
            .service(resource(
                "/reports/funnel",
                vec![("GET", web::get().to(pql::funnel))],
            ))
            .service(resource(
                "/plans",
                vec![("GET", web::get().to(plans::list))],
            ))
            .service(resource(
                "/plans/publish",
                vec![("POST", web::post().to(plans::publish))],
            ))
            .service(resource(
                "/plans/{plan}/versions/{version}",
                vec![("GET", web::get().to(plans::version))],
            )),
    );
}

/// One path and its methods; any other method answers 405 naming the allowed ones.
fn resource(path: &str, routes: Vec<(&'static str, actix_web::Route)>) -> actix_web::Resource {
    let allow = routes
        .iter()
        .map(|(m, _)| *m)
        .collect::<Vec<_>>()
        .join(", ");
    let mut r = web::resource(path);
    for (_, route) in routes {
        // The key is checked once the route matched (an unknown path is still 404, a wrong
        // method 405) and before its handler reads the body.
        r = r.route(route.wrap(actix_web::middleware::from_fn(auth::authenticate_first)));
    }
    r.default_service(web::to(move |req: actix_web::HttpRequest| {
        let allow = allow.clone();
        async move { error::method_not_allowed(&req, &allow) }
    }))
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
            .configure(routes)
            .default_service(web::to(error::not_found))
            .wrap_fn(|req, srv| {
                use actix_web::dev::Service;
                use actix_web::ResponseError;
                use futures_util::future::{ready, Either, FutureExt};
                // U+0000 cannot be stored or compared by PostgreSQL: refused in the path or
                // query string before any handler sees it (it reached queries as a 503).
                let nul = |s: &str| s.contains('\0') || s.to_ascii_lowercase().contains("%00");
                if nul(req.path()) || nul(req.query_string()) {
                    let res = error::ApiError::new(
                        actix_web::http::StatusCode::BAD_REQUEST,
                        "invalid_query",
                        "the path and query string must not contain the NUL character (%00)",
                    )
                    .error_response();
                    Either::Left(ready(Ok(req.into_response(res).map_into_right_body())))
                } else {
                    Either::Right(srv.call(req).map(|r| r.map(|r| r.map_into_left_body())))
                }
            })
    })
    .shutdown_timeout(SHUTDOWN_GRACE_SECS);
    if let Some(w) = workers {
        server = server.workers(w);
    }
    Ok(server.listen(listener)?.run())
}
