//! The storage story: every query of the trait, run on both backends.

mod story;

mod schema;
