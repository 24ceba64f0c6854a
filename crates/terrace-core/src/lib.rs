//! The model at the centre of terrace: what `terrace.yaml` and `unit.yaml`
//! say ([`config`]), the `${...}` expression language ([`expr`]), the unit
//! graph ([`graph`]), what a plan and a state record hold ([`plan`],
//! [`state`]), the [`driver::Driver`] trait every unit kind implements, and
//! the [`kind::Registry`] of kinds a build knows.
//!
//! This crate does no I/O and needs no async runtime: everything here can be
//! tested with plain values.

pub mod config;
pub mod diag;
pub mod driver;
pub mod expr;
pub mod graph;
pub mod kind;
pub mod plan;
pub mod policy;
pub mod secrets;
pub mod state;
pub mod value_path;

pub use diag::Diagnostic;
pub use value_path::{Seg, ValuePath};
