//! Pure domain rules: events, meters and aggregation; money, plans, rating, periods, proration
//! and invoices; revenue movements and retention; dunning; product-qualified leads.
//!
//! Nothing here does IO, awaits, or knows about the database or HTTP. Everything here is
//! deterministic given its inputs (time is passed in), which is what makes it property-testable.

pub mod account;
pub mod aggregate;
pub mod clock;
pub mod dunning;
pub mod event;
pub mod event_shapes;
pub mod invoice;
pub mod meter;
pub mod money;
pub mod period;
pub mod plan;
pub mod pql;
pub mod proration;
pub mod rating;
pub mod revenue;
pub mod scope;
pub mod ts;
