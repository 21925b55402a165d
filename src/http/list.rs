//! The one list convention: `?limit=&after=` in, `{"data": [...], "next_cursor": ...}` out.
//! `next_cursor` is the value to pass as `after` for the next page, `null` on the last page.
//! Handlers ask the store for `limit + 1` rows: the extra row only says that a next page exists,
//! so the last page is known without an extra, empty request.

use super::ApiError;
use actix_web::HttpResponse;
use serde::Serialize;
use serde_json::json;

/// A page of a list, as the document shows it (built by [`page`]).
#[derive(utoipa::ToSchema)]
#[allow(dead_code)] // documentation of the JSON `page` builds
pub struct Page<T: utoipa::ToSchema> {
    data: Vec<T>,
    /// The value to pass as `after` for the next page; `null` on the last page.
    #[schema(required = true)]
    next_cursor: Option<serde_json::Value>,
}

/// The page size: `limit` if given (1 to `max`), else `default`. Out of range (or not a
/// number, refused by the query reader) is a 422 naming the parameter.
pub fn limit(given: Option<i64>, default: i64, max: i64) -> Result<i64, ApiError> {
    match given {
        None => Ok(default),
        Some(n) if (1..=max).contains(&n) => Ok(n),
        Some(n) => Err(super::input::invalid_param(
            "limit",
            format!("must be 1 to {max}, got {n}"),
        )),
    }
}

/// A page of `rows` (fetched with `limit + 1`): at most `limit` of them, and the cursor of the
/// last one shown when more follow.
pub fn page<T: Serialize, C: Serialize>(
    mut rows: Vec<T>,
    limit: i64,
    cursor: impl Fn(&T) -> C,
) -> HttpResponse {
    let more = rows.len() as i64 > limit;
    rows.truncate(limit.max(0) as usize);
    let next = if more { rows.last().map(cursor) } else { None };
    HttpResponse::Ok().json(json!({ "data": rows, "next_cursor": next }))
}

/// A page of a list held whole in memory (small catalogues), sorted by `cursor`: the rows after
/// `after`.
pub fn page_of<T: Serialize, C: Serialize + PartialOrd>(
    mut rows: Vec<T>,
    after: Option<&C>,
    limit: i64,
    cursor: impl Fn(&T) -> C,
) -> HttpResponse {
    // The store's collation may order text differently from Rust: the cursor follows Rust's.
    rows.sort_by(|a, b| {
        cursor(a)
            .partial_cmp(&cursor(b))
            .unwrap_or(std::cmp::Ordering::Equal)
    });
    let start = match after {
        None => 0,
        Some(a) => rows
            .iter()
            .position(|r| cursor(r) > *a)
            .unwrap_or(rows.len()),
    };
    let rows: Vec<T> = rows
        .into_iter()
        .skip(start)
        .take(limit as usize + 1)
        .collect();
    page(rows, limit, cursor)
}
