//! The pages accrue serves: the customer portal (`/portal`, opened through a link from
//! `POST /v1/portal-sessions`, one account per session) and the finance console (`/console`,
//! signed in with a finance or admin key). Server-rendered HTML (maud) over the same services
//! as the API: no SQL and no pricing here, so the amount a page shows is the amount the API
//! charges. One stylesheet, embedded; no script at all (the Content-Security-Policy allows
//! none). Every form carries its session's token (CSRF) and the cookies are HttpOnly and
//! SameSite.
//!
//! Layout: `portal.rs` and `console.rs` hold the handlers and their pages, `charts.rs` draws
//! the console's SVG charts, `format.rs` writes amounts and dates; this file has the route
//! table, the page frame, cookies and the error pages.

mod charts;
mod console;
mod format;
mod portal;

use crate::http::ApiError;
use crate::services::web_sessions::{self, Started};
use crate::services::{Ctx, ServiceError};
use actix_web::cookie::{Cookie, SameSite};
use actix_web::http::{header, StatusCode};
use actix_web::{web, HttpRequest, HttpResponse};
use maud::{html, Markup, DOCTYPE};

const CSS: &str = include_str!("../../assets/web/app.css");

/// No script, no frames, nothing from elsewhere; forms post only here.
const CSP: &str = "default-src 'none'; style-src 'self'; img-src 'self' data:; \
                   form-action 'self'; frame-ancestors 'none'; base-uri 'none'";

/// The pages' routes (the API's are in `http`). Each area is a scope whose refusals are pages
/// too: a form or query string that does not parse, an unknown path.
pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.route("/assets/app.css", web::get().to(stylesheet));
    for area in [Area::Portal, Area::Console] {
        let scope = web::scope(area.path())
            .app_data(
                web::FormConfig::default()
                    .error_handler(move |e, _| bad_input(area, &e.to_string())),
            )
            .app_data(
                web::QueryConfig::default()
                    .error_handler(move |e, _| bad_input(area, &e.to_string())),
            )
            .configure(match area {
                Area::Portal => portal::routes,
                Area::Console => console::routes,
            })
            .default_service(web::to(move || async move {
                message_page(
                    area,
                    StatusCode::NOT_FOUND,
                    "Not found",
                    "There is no page at this address.",
                )
            }));
        cfg.service(scope);
    }
}

/// A form or query string that does not parse, answered as a page (400) that names the fault.
fn bad_input(area: Area, what: &str) -> actix_web::Error {
    let page = message_page(
        area,
        StatusCode::BAD_REQUEST,
        "That request could not be read",
        &format!("{what}. Go back, reload the page and try again."),
    );
    actix_web::error::InternalError::from_response(what.to_owned(), page).into()
}

async fn stylesheet() -> HttpResponse {
    HttpResponse::Ok()
        .content_type("text/css; charset=utf-8")
        .insert_header((header::CACHE_CONTROL, "public, max-age=3600"))
        .body(CSS)
}

/// Which of the two areas a page belongs to (its navigation and cookie).
#[derive(Clone, Copy, PartialEq, Eq)]
enum Area {
    Portal,
    Console,
}

impl Area {
    fn cookie(self) -> &'static str {
        match self {
            Area::Portal => "accrue_portal",
            Area::Console => "accrue_console",
        }
    }

    fn path(self) -> &'static str {
        match self {
            Area::Portal => "/portal",
            Area::Console => "/console",
        }
    }
}

/// A page: its title, the navigation of its area (when signed in), and its body.
struct Frame<'a> {
    title: &'a str,
    area: Area,
    /// (href, label) of the area's sections, the current one marked.
    nav: &'a [(&'a str, &'a str)],
    current: &'a str,
    /// The session's form token, for the sign-out button (None: not signed in).
    csrf: Option<&'a str>,
}

fn frame(f: &Frame<'_>, body: Markup) -> Markup {
    let subtitle = match f.area {
        Area::Portal => "Billing",
        Area::Console => "Finance console",
    };
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                meta name="referrer" content="no-referrer";
                title { (f.title) " · accrue" }
                link rel="stylesheet" href="/assets/app.css";
            }
            body {
                a.skip href="#main" { "Skip to content" }
                header.top {
                    div.bar {
                        a.brand href=(f.area.path()) { "accrue " span { (subtitle) } }
                        @if !f.nav.is_empty() {
                            nav.main aria-label="Sections" {
                                @for (href, label) in f.nav {
                                    @if *href == f.current {
                                        a href=(href) aria-current="page" { (label) }
                                    } @else {
                                        a href=(href) { (label) }
                                    }
                                }
                            }
                        }
                        @if let Some(csrf) = f.csrf {
                            form method="post" action={ (f.area.path()) "/sign-out" } {
                                input type="hidden" name="csrf" value=(csrf);
                                button.secondary type="submit" { "Sign out" }
                            }
                        }
                    }
                }
                main #main tabindex="-1" { (body) }
                footer.page { "Amounts are in the account's billing currency; periods and dates are UTC." }
            }
        }
    }
}

/// An HTML answer with the pages' security headers. Nothing is cached: every page is one
/// account's or finance's data.
fn respond(status: StatusCode, markup: Markup) -> HttpResponse {
    HttpResponse::build(status)
        .content_type("text/html; charset=utf-8")
        .insert_header((header::CONTENT_SECURITY_POLICY, CSP))
        .insert_header((header::X_FRAME_OPTIONS, "DENY"))
        .insert_header((header::REFERRER_POLICY, "no-referrer"))
        .insert_header((header::X_CONTENT_TYPE_OPTIONS, "nosniff"))
        .insert_header((header::CACHE_CONTROL, "no-store"))
        .body(markup.into_string())
}

/// A page that shows only a message: nothing of any account.
fn message_page(area: Area, status: StatusCode, title: &str, message: &str) -> HttpResponse {
    let f = Frame {
        title,
        area,
        nav: &[],
        current: "",
        csrf: None,
    };
    respond(
        status,
        frame(
            &f,
            html! {
                div.card.signin role="alert" {
                    h1 { (title) }
                    p { (message) }
                    @if area == Area::Console {
                        p { a href="/console/sign-in" { "Sign in" } }
                    }
                }
            },
        ),
    )
}

/// A service's refusal or failure as a page, with the status and message the API gives it.
fn service_error(area: Area, e: ServiceError) -> HttpResponse {
    let api = ApiError::from(e);
    let title = match api.status.as_u16() {
        404 => "Not found",
        409 | 422 => "That cannot be done",
        429 | 503 => "Please try again in a moment",
        _ => "Something went wrong",
    };
    message_page(area, api.status, title, &api.message)
}

/// A redirect after a form (303: the browser follows with GET).
fn see_other(to: &str) -> HttpResponse {
    HttpResponse::SeeOther()
        .insert_header((header::LOCATION, to))
        .insert_header((header::REFERRER_POLICY, "no-referrer"))
        .insert_header((header::CACHE_CONTROL, "no-store"))
        .finish()
}

/// The session cookie of `area` for a started session: HttpOnly, SameSite=Lax (it must come
/// with the top-level navigation from the app that opened the portal), Secure over https.
fn session_cookie(req: &HttpRequest, ctx: &Ctx, area: Area, started: &Started) -> Cookie<'static> {
    let secure = req.connection_info().scheme() == "https"
        || ctx
            .public_url
            .as_deref()
            .is_some_and(|u| u.starts_with("https:"));
    let max_age = started.session.expires_at - started.session.created_at;
    Cookie::build(area.cookie(), started.token.clone())
        .path(area.path())
        .http_only(true)
        .same_site(SameSite::Lax)
        .secure(secure)
        .max_age(actix_web::cookie::time::Duration::seconds(
            max_age.num_seconds(),
        ))
        .finish()
}

/// The cookie that clears `area`'s session.
fn cleared_cookie(area: Area) -> Cookie<'static> {
    let mut c = Cookie::build(area.cookie(), "")
        .path(area.path())
        .http_only(true)
        .same_site(SameSite::Lax)
        .finish();
    c.make_removal();
    c
}

/// The session token the browser sent for `area`.
fn session_token(req: &HttpRequest, area: Area) -> Option<String> {
    req.cookie(area.cookie())
        .map(|c| c.value().to_owned())
        .filter(|v| !v.is_empty() && v.len() <= 128)
}

/// A posted form's session token check: the page answers 403 when it does not match.
fn csrf_refused(area: Area) -> HttpResponse {
    message_page(
        area,
        StatusCode::FORBIDDEN,
        "This form has expired",
        "The page you submitted came from another session. Go back, reload the page and try again.",
    )
}

/// Ends the session of `area` (its cookie's token) and clears the cookie.
async fn sign_out(req: &HttpRequest, ctx: &Ctx, area: Area, csrf: &str) -> HttpResponse {
    if let Some(token) = session_token(req, area) {
        let own = match area {
            Area::Portal => web_sessions::portal_session(ctx, &token)
                .await
                .ok()
                .flatten(),
            Area::Console => web_sessions::console_session(ctx, &token)
                .await
                .ok()
                .flatten()
                .map(|c| c.session),
        };
        match own {
            Some(s) if web_sessions::csrf_matches(&s, csrf) => {
                if let Err(e) = web_sessions::sign_out(ctx, &token).await {
                    return service_error(area, e);
                }
            }
            Some(_) => return csrf_refused(area),
            None => {}
        }
    }
    let mut res = match area {
        Area::Portal => message_page(
            area,
            StatusCode::OK,
            "Signed out",
            "You have left the billing portal. Open it again from the app when you need it.",
        ),
        Area::Console => see_other("/console/sign-in"),
    };
    let _ = res.add_cookie(&cleared_cookie(area));
    res
}

/// The app's context, for extractors (`crate::http::server` registers it).
fn app_ctx(req: &HttpRequest) -> web::Data<Ctx> {
    req.app_data::<web::Data<Ctx>>()
        .cloned()
        .expect("the server registers its Ctx as app data")
}

/// An extractor's refusal that answers with `page` as it is (the sign-in redirect, the
/// "session ended" page): the handler never runs.
fn answer_with(page: HttpResponse) -> actix_web::Error {
    actix_web::error::InternalError::from_response("answered with a page", page).into()
}
