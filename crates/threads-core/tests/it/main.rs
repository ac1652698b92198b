//! Integration tests of threads-core: golden bytes, cross-implementation vectors, properties.

mod golden;
mod interop;
mod props;
