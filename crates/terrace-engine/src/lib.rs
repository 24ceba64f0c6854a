//! The engine: everything between a repository and the drivers.
//!
//! 1. [`project`] finds the project root, reads `terrace.yaml` and discovers
//!    every `unit.yaml` (skipping `.git`, `.terrace`, `.terraform`,
//!    `node_modules` and what `.terraceignore` lists);
//! 2. [`workspace`] picks an environment: merges variables, applies each
//!    unit's overrides, finds `${unit...}` references and builds the graph;
//! 3. [`run`] plans, applies and destroys in graph order, passing outputs
//!    from unit to unit, holding each unit's lock while it is applied, and
//!    recording state and run history;
//! 4. [`affected`] maps a Git diff to units and their dependents;
//! 5. [`saved`] is a plan written to a file and carried out later, exactly;
//! 6. `reuse` remembers no-op plans of file-rendering units, reused while
//!    nothing they read changed.

pub mod affected;
mod error;
mod locate;
pub mod project;
mod reads;
mod reuse;
pub mod run;
pub mod saved;
pub mod workspace;

pub use error::EngineError;
pub use project::Project;
pub use run::{Engine, Selection, render_with_driver};
pub use workspace::Workspace;
