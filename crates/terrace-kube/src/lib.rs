//! The Kubernetes target. So far: [`order`], which turns a unit's objects
//! into the steps they are applied in (hooks, sync waves, CRDs before
//! everything else so they can be waited for, then Namespaces, then Helm's
//! kind order) and the order they are pruned in.

pub mod order;
