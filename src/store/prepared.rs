//! Hand-written SQL that PostgreSQL parses once per connection.
//!
//! `diesel::sql_query` marks every statement unsafe to cache, since its text may be built at
//! run time: each execution is then prepared afresh (a `Parse`/`Describe` round trip, the
//! statement parsed and analysed again) before it is bound and run (a second round trip).
//! [`prepared`] takes only a `&'static str`, so the set of statements a connection keeps is the
//! fixed set written in this crate, and marks it cacheable: after the first execution on a
//! connection, each execution is one `Bind`/`Execute` round trip with no parsing. The pool's
//! `plan_cache_mode = force_custom_plan` still plans each execution for its values, except
//! in an ingestion group's transaction, which reuses generic plans
//! ([`super::events::begin_group`]).
//!
//! Statements whose text varies with their input (the multi-row `VALUES` lists used on Citus,
//! built with `diesel::sql_query` or diesel's insert DSL) are not marked: caching each length
//! would grow without bound.

use diesel::pg::Pg;
use diesel::query_builder::{AstPass, BoxedSqlQuery, Query, QueryFragment, QueryId, SqlQuery};
use diesel::serialize::ToSql;
use diesel::sql_types::{HasSqlType, Untyped};
use diesel::QueryResult;

/// A statement with a fixed text and its bound values (see the module docs).
#[must_use = "a statement runs only when loaded or executed"]
pub struct Prepared<'f>(BoxedSqlQuery<'f, Pg, SqlQuery>);

/// The statement `sql`, to be bound with [`Prepared::bind`] as `sql_query`'s would.
pub fn prepared<'f>(sql: &'static str) -> Prepared<'f> {
    Prepared(diesel::sql_query(sql).into_boxed())
}

impl<'f> Prepared<'f> {
    /// Binds the next placeholder (`$1`, `$2`, ...) to `value` as SQL type `ST`.
    pub fn bind<ST, V>(self, value: V) -> Self
    where
        Pg: HasSqlType<ST>,
        V: ToSql<ST, Pg> + Send + 'f,
        ST: Send + 'f,
    {
        Prepared(self.0.bind::<ST, V>(value))
    }
}

impl QueryFragment<Pg> for Prepared<'_> {
    fn walk_ast<'b>(&'b self, pass: AstPass<'_, 'b, Pg>) -> QueryResult<()> {
        self.0.walk_ast(pass)
    }

    // The text is a `&'static str` (see [`prepared`]): one of a fixed set.
    fn is_safe_to_cache_prepared(&self, _backend: &Pg) -> QueryResult<bool> {
        Ok(true)
    }
}

impl QueryId for Prepared<'_> {
    type QueryId = ();
    const HAS_STATIC_QUERY_ID: bool = false;
}

impl Query for Prepared<'_> {
    type SqlType = Untyped;
}
