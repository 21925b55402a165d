//! The API over actix-web: the route table, authentication, one file per resource, and the
//! mapping of service errors to statuses and stable codes. The server built here also serves
//! the pages of `crate::web`.

mod accounts;
mod auth;
mod error;
mod events;
mod governance;
mod health;
mod input;
mod invoices;
mod keys;
mod list;
mod openapi;
mod payments;
mod plans;
mod portal_sessions;
mod pql;
mod revenue;
mod test_clocks;
mod time;
mod usage;

pub use error::ApiError;
pub use openapi::document as openapi_document;

use crate::services::Ctx;
use actix_web::dev::Server;
use actix_web::{web, App, HttpServer};
use std::net::TcpListener;

/// The service context of a request, borrowed (every app has it: [`server`] sets it).
fn context(req: &actix_web::HttpRequest) -> Result<&Ctx, ApiError> {
    req.app_data::<web::Data<Ctx>>()
        .map(|d| &***d)
        .ok_or_else(|| {
            ApiError::new(
                actix_web::http::StatusCode::INTERNAL_SERVER_ERROR,
                "internal",
                "the service context is missing",
            )
        })
}

/// A path and its methods.
type Resource = (&'static str, Vec<(&'static str, actix_web::Route)>);

/// The whole route table, top to bottom. Each path is one resource: a method it does not have
/// answers 405 with `Allow`, an unknown path 404.
fn table() -> Vec<Resource> {
    vec![
        // The hot routes first: the router tries the patterns in this order (neither of these
        // two overlaps another pattern, so moving them changes no match). Most checks do not
        // reach the router at all: `server` answers them by `accounts::check_direct`.
        (
            accounts::CHECK,
            vec![("POST", web::post().to(accounts::check))],
        ),
        (
            "/v1/events",
            vec![
                ("POST", web::post().to(events::ingest)),
                ("GET", web::get().to(events::list)),
            ],
        ),
        ("/healthz", vec![("GET", web::get().to(health::healthz))]),
        ("/readyz", vec![("GET", web::get().to(health::readyz))]),
        ("/metrics", vec![("GET", web::get().to(health::metrics))]),
        (
            "/openapi.json",
            vec![("GET", web::get().to(openapi::openapi_json))],
        ),
        ("/docs", vec![("GET", web::get().to(openapi::docs))]),
        (
            "/docs/redoc.standalone.js",
            vec![("GET", web::get().to(openapi::redoc_js))],
        ),
        (
            "/v1/integrations/segment",
            vec![("POST", web::post().to(events::segment))],
        ),
        (
            "/v1/accounts/{account}/usage",
            vec![("GET", web::get().to(usage::account_usage))],
        ),
        (
            "/v1/accounts/{account}",
            vec![
                ("PUT", web::put().to(accounts::put_account)),
                ("PATCH", web::patch().to(accounts::patch_account)),
                ("GET", web::get().to(accounts::get_account)),
            ],
        ),
        (
            "/v1/accounts",
            vec![("GET", web::get().to(accounts::list_accounts))],
        ),
        (
            "/v1/accounts/{account}/subscription",
            vec![
                ("POST", web::post().to(accounts::subscribe)),
                ("GET", web::get().to(accounts::get_subscription)),
            ],
        ),
        (
            "/v1/accounts/{account}/subscription/changes",
            vec![("GET", web::get().to(accounts::changes))],
        ),
        (
            "/v1/accounts/{account}/subscription/scheduled-change",
            vec![("DELETE", web::delete().to(accounts::revoke_scheduled))],
        ),
        (
            "/v1/accounts/{account}/subscription/quotes",
            vec![("POST", web::post().to(accounts::quote))],
        ),
        (
            "/v1/accounts/{account}/subscription/quotes/{quote}",
            vec![("GET", web::get().to(accounts::get_quote))],
        ),
        (
            "/v1/accounts/{account}/subscription/quotes/{quote}/accept",
            vec![("POST", web::post().to(accounts::accept))],
        ),
        (
            "/v1/accounts/{account}/payment-method",
            vec![("PUT", web::put().to(payments::put_payment_method))],
        ),
        (
            "/v1/accounts/{account}/upcoming-invoice",
            vec![("GET", web::get().to(portal_sessions::upcoming))],
        ),
        (
            "/v1/portal-sessions",
            vec![("POST", web::post().to(portal_sessions::create))],
        ),
        (
            "/v1/accounts/{account}/dunning",
            vec![("GET", web::get().to(payments::dunning))],
        ),
        (
            "/v1/stripe/webhook",
            vec![("POST", web::post().to(payments::webhook))],
        ),
        (
            "/v1/reports/reconciliation",
            vec![("GET", web::get().to(payments::reconciliation))],
        ),
        (
            "/v1/governance/event-types",
            vec![("GET", web::get().to(governance::event_types))],
        ),
        (
            "/v1/reports/billing-errors",
            vec![("GET", web::get().to(invoices::billing_errors))],
        ),
        ("/v1/keys", vec![("GET", web::get().to(keys::list))]),
        (
            "/v1/keys/{id}",
            vec![("DELETE", web::delete().to(keys::revoke))],
        ),
        (
            "/v1/test-clocks",
            vec![("POST", web::post().to(test_clocks::create))],
        ),
        (
            "/v1/test-clocks/{id}",
            vec![("GET", web::get().to(test_clocks::get))],
        ),
        (
            "/v1/test-clocks/{id}/advance",
            vec![("POST", web::post().to(test_clocks::advance))],
        ),
        ("/v1/invoices", vec![("GET", web::get().to(invoices::list))]),
        (
            "/v1/invoices/{number}",
            vec![("GET", web::get().to(invoices::get))],
        ),
        (
            "/v1/invoices/{number}/pay",
            vec![("POST", web::post().to(invoices::pay))],
        ),
        (
            "/v1/invoices/{number}/void",
            vec![("POST", web::post().to(invoices::void))],
        ),
        (
            "/v1/invoices/{number}/write-off",
            vec![("POST", web::post().to(invoices::write_off))],
        ),
        (
            "/v1/invoices/{number}/lineage",
            vec![("GET", web::get().to(invoices::lineage))],
        ),
        (
            "/v1/movements",
            vec![("GET", web::get().to(revenue::movements))],
        ),
        (
            "/v1/reports/nrr",
            vec![("GET", web::get().to(revenue::nrr))],
        ),
        (
            "/v1/webhook-endpoints",
            vec![
                ("POST", web::post().to(revenue::create_endpoint)),
                ("GET", web::get().to(revenue::list_endpoints)),
            ],
        ),
        (
            "/v1/webhook-endpoints/{id}",
            vec![
                ("GET", web::get().to(revenue::get_endpoint)),
                ("PATCH", web::patch().to(revenue::update_endpoint)),
                ("DELETE", web::delete().to(revenue::delete_endpoint)),
            ],
        ),
        (
            "/v1/webhook-endpoints/{id}/rotate-secret",
            vec![("POST", web::post().to(revenue::rotate_secret))],
        ),
        (
            "/v1/webhook-endpoints/{id}/deliveries",
            vec![("GET", web::get().to(revenue::deliveries))],
        ),
        ("/v1/feed", vec![("GET", web::get().to(revenue::feed))]),
        (
            "/v1/exports/{entity}",
            vec![("GET", web::get().to(revenue::export))],
        ),
        (
            "/v1/accounts/{account}/pql",
            vec![("GET", web::get().to(pql::account))],
        ),
        ("/v1/pql", vec![("GET", web::get().to(pql::queue))]),
        (
            "/v1/reports/funnel",
            vec![("GET", web::get().to(pql::funnel))],
        ),
        ("/v1/plans", vec![("GET", web::get().to(plans::list))]),
        (
            "/v1/plans/publish",
            vec![("POST", web::post().to(plans::publish))],
        ),
        (
            "/v1/plans/{plan}",
            vec![("GET", web::get().to(plans::plan))],
        ),
        (
            "/v1/plans/{plan}/versions/{version}",
            vec![("GET", web::get().to(plans::version))],
        ),
    ]
}

/// Every path and its methods, as served (the conventions test walks them all).
pub fn route_table() -> Vec<(&'static str, Vec<&'static str>)> {
    table()
        .into_iter()
        .map(|(path, methods)| (path, methods.iter().map(|(m, _)| *m).collect()))
        .collect()
}

pub fn routes(cfg: &mut web::ServiceConfig) {
    for (path, methods) in table() {
        cfg.service(resource(path, methods));
    }
}

/// One path and its methods; any other method answers 405 naming the allowed ones.
fn resource(
    path: &'static str,
    routes: Vec<(&'static str, actix_web::Route)>,
) -> actix_web::Resource {
    let allow = routes
        .iter()
        .map(|(m, _)| *m)
        .collect::<Vec<_>>()
        .join(", ");
    let mut r = web::resource(path);
    // Middleware added here does not apply to the checks `accounts::check_direct` answers.
    for (_, route) in routes {
        // The key is checked once the route matched (an unknown path is still 404, a wrong
        // method 405) and before its handler reads the body.
        r = r.route(route.wrap(actix_web::middleware::from_fn(move |req, next| {
            auth::authenticate_first(path, req, next)
        })));
    }
    r.default_service(web::to(move |req: actix_web::HttpRequest| {
        let allow = allow.clone();
        async move { error::method_not_allowed(&req, &allow) }
    }))
}

/// Builds the server on an already-bound listener (tests bind port 0). It handles no signals:
/// `accrue serve` stops it through its handle on SIGTERM/SIGINT (gracefully: accepted requests
/// finish within `grace`, new connections are refused).
pub fn server(
    ctx: Ctx,
    listener: TcpListener,
    workers: Option<usize>,
    grace: std::time::Duration,
) -> std::io::Result<Server> {
    let data = web::Data::new(ctx);
    let mut server = HttpServer::new(move || {
        App::new()
            .app_data(data.clone())
            .app_data(web::PathConfig::default().error_handler(error::path_error))
            .configure(routes)
            .configure(crate::web::routes)
            .default_service(web::to(error::not_found))
            .wrap_fn(|req, srv| {
                use actix_web::dev::Service;
                use futures_util::future::{Either, FutureExt};
                // Refusals and failures show in the log with what was asked (successes do
                // not: the hot paths stay quiet). Overload answers (429, 503) are expected
                // under load and logged at debug. Every answer is counted and timed by route
                // (the route's pattern, never the path: ids stay out of the labels).
                let started = std::time::Instant::now();
                // A POST check whose account needs no decoding is answered here, without
                // the router (`accounts::check_direct`); everything else goes to the router.
                let direct = accounts::check_target(&req);
                let labelled = direct.is_some();
                let answer = if let Some(account) = direct {
                    Either::Left(
                        accounts::check_direct(req, account).map(|r| Ok(r.map_into_right_body())),
                    )
                } else {
                    Either::Right(srv.call(req).map(|r| r.map(|r| r.map_into_left_body())))
                };
                answer.map(move |res| {
                    if let Ok(r) = &res {
                        let (status, rq) = (r.status().as_u16(), r.request());
                        let (method, path) = (rq.method().as_str(), rq.path());
                        // Borrowed from the request: no count shared by the workers changes.
                        if let Some(m) = rq.app_data::<web::Data<Ctx>>().map(|c| &c.metrics) {
                            // A fixed set, as `&'static str` labels: any other token a
                            // client sends is `other`.
                            let method = match method {
                                "GET" => "GET",
                                "POST" => "POST",
                                "PUT" => "PUT",
                                "PATCH" => "PATCH",
                                "DELETE" => "DELETE",
                                "HEAD" => "HEAD",
                                "OPTIONS" => "OPTIONS",
                                _ => "other",
                            };
                            // An API route names itself; pages and 404s are matched again.
                            let api = match labelled {
                                true => Some(auth::Route(accounts::CHECK)),
                                false => actix_web::HttpMessage::extensions(rq)
                                    .get::<auth::Route>()
                                    .copied(),
                            };
                            let route = match api {
                                Some(auth::Route(p)) => std::borrow::Cow::Borrowed(p),
                                None => rq
                                    .match_pattern()
                                    .map_or("unmatched".into(), std::borrow::Cow::Owned),
                            };
                            m.http_request(route, method, status, started.elapsed());
                        }
                        match status {
                            429 | 503 => tracing::debug!(method, path, status, "request deferred"),
                            500.. => tracing::error!(method, path, status, "request failed"),
                            400.. => tracing::info!(method, path, status, "request refused"),
                            _ => {}
                        }
                    }
                    res
                })
            })
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
    .shutdown_timeout(grace.as_secs())
    // `serve` handles SIGTERM and SIGINT itself (graceful on the first, at once on a second).
    .disable_signals();
    if let Some(w) = workers {
        server = server.workers(w);
    }
    Ok(server.listen(listener)?.run())
}
