//! Reads and validates the catalogue under `pricing-plans/`: meters, plan versions, and the
//! differences between two versions.
//!
//! Validation errors always name the file, the entry and the rule broken, because the person
//! reading them is editing that file.

pub mod diff;
pub mod meters;
pub mod plans;
