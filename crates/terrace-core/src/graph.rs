//! The unit graph: nodes are units, edges point from a unit to what it
//! depends on. Building it checks the layer rule (no dependency on a higher
//! layer) and finds cycles; [`Graph::waves`] groups units that can run in
//! parallel.

use std::collections::{BTreeSet, HashMap};
use std::fmt::Write as _;

/// A node as the graph needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeSpec {
    pub name: String,
    pub layer: String,
    /// The layer's position in the project's `layers`, lowest first.
    pub layer_index: usize,
    pub kind: String,
    /// Names of direct dependencies, explicit and implicit.
    pub depends_on: Vec<String>,
}

/// Why a graph could not be built.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GraphError {
    #[error("unit `{unit}` depends on `{dependency}`, which is no unit of this environment")]
    UnknownDependency { unit: String, dependency: String },
    #[error(
        "unit `{unit}` (layer `{unit_layer}`) depends on `{dependency}` in the higher layer `{dependency_layer}`"
    )]
    LayerViolation {
        unit: String,
        unit_layer: String,
        dependency: String,
        dependency_layer: String,
    },
    #[error("dependency cycle: {}", .path.join(" -> "))]
    Cycle { path: Vec<String> },
}

impl GraphError {
    pub fn hint(&self) -> &'static str {
        match self {
            GraphError::UnknownDependency { .. } => {
                "check the name in `dependsOn` or in `${unit.NAME...}`; `terrace graph` lists the units"
            }
            GraphError::LayerViolation { .. } => {
                "a unit may depend only on units in its own or a lower layer: move one of them, or reorder `layers` in terrace.yaml"
            }
            GraphError::Cycle { .. } => "remove one of the dependencies in the cycle",
        }
    }
}

/// The unit graph of one environment.
#[derive(Debug, Clone)]
pub struct Graph {
    nodes: Vec<NodeSpec>,
    index: HashMap<String, usize>,
    /// `deps[i]`: indexes of what node `i` depends on, sorted.
    deps: Vec<Vec<usize>>,
    /// `rdeps[i]`: indexes of what depends on node `i`, sorted.
    rdeps: Vec<Vec<usize>>,
}

impl Graph {
    /// Builds the graph, reporting every unknown dependency and layer
    /// violation, then the first cycle found.
    pub fn build(nodes: Vec<NodeSpec>) -> Result<Graph, Vec<GraphError>> {
        let index: HashMap<String, usize> = nodes
            .iter()
            .enumerate()
            .map(|(i, n)| (n.name.clone(), i))
            .collect();
        let mut errors = Vec::new();
        let mut deps = vec![Vec::new(); nodes.len()];
        let mut rdeps = vec![Vec::new(); nodes.len()];
        for (i, n) in nodes.iter().enumerate() {
            let mut set = BTreeSet::new();
            for d in &n.depends_on {
                match index.get(d) {
                    None => errors.push(GraphError::UnknownDependency {
                        unit: n.name.clone(),
                        dependency: d.clone(),
                    }),
                    Some(&j) if nodes[j].layer_index > n.layer_index => {
                        errors.push(GraphError::LayerViolation {
                            unit: n.name.clone(),
                            unit_layer: n.layer.clone(),
                            dependency: d.clone(),
                            dependency_layer: nodes[j].layer.clone(),
                        })
                    }
                    Some(&j) => {
                        set.insert(j);
                    }
                }
            }
            for &j in &set {
                rdeps[j].push(i);
            }
            deps[i] = set.into_iter().collect();
        }
        if !errors.is_empty() {
            return Err(errors);
        }
        let graph = Graph {
            nodes,
            index,
            deps,
            rdeps,
        };
        if let Some(path) = graph.find_cycle() {
            return Err(vec![GraphError::Cycle { path }]);
        }
        Ok(graph)
    }

    fn find_cycle(&self) -> Option<Vec<String>> {
        #[derive(Clone, Copy, PartialEq)]
        enum Mark {
            New,
            Active,
            Done,
        }
        let mut marks = vec![Mark::New; self.nodes.len()];
        // Iterative depth-first search; the stack holds (node, next edge).
        for start in 0..self.nodes.len() {
            if marks[start] != Mark::New {
                continue;
            }
            let mut stack = vec![(start, 0usize)];
            marks[start] = Mark::Active;
            while let Some(&mut (node, ref mut edge)) = stack.last_mut() {
                if let Some(&next) = self.deps[node].get(*edge) {
                    *edge += 1;
                    match marks[next] {
                        Mark::New => {
                            marks[next] = Mark::Active;
                            stack.push((next, 0));
                        }
                        Mark::Active => {
                            let from = stack
                                .iter()
                                .position(|&(n, _)| n == next)
                                .expect("an active node is on the stack");
                            let mut path: Vec<String> = stack[from..]
                                .iter()
                                .map(|&(n, _)| self.nodes[n].name.clone())
                                .collect();
                            path.push(self.nodes[next].name.clone());
                            return Some(path);
                        }
                        Mark::Done => {}
                    }
                } else {
                    marks[node] = Mark::Done;
                    stack.pop();
                }
            }
        }
        None
    }

    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    pub fn nodes(&self) -> &[NodeSpec] {
        &self.nodes
    }

    pub fn node(&self, i: usize) -> &NodeSpec {
        &self.nodes[i]
    }

    pub fn index_of(&self, name: &str) -> Option<usize> {
        self.index.get(name).copied()
    }

    /// Direct dependencies of node `i`.
    pub fn dependencies(&self, i: usize) -> &[usize] {
        &self.deps[i]
    }

    /// Direct dependents of node `i`.
    pub fn dependents(&self, i: usize) -> &[usize] {
        &self.rdeps[i]
    }

    /// Every node that depends on one of `start`, directly or not, with
    /// `start` itself.
    pub fn with_dependents(&self, start: impl IntoIterator<Item = usize>) -> BTreeSet<usize> {
        self.closure(start, &self.rdeps)
    }

    /// Every node one of `start` depends on, directly or not, with `start`.
    pub fn with_dependencies(&self, start: impl IntoIterator<Item = usize>) -> BTreeSet<usize> {
        self.closure(start, &self.deps)
    }

    fn closure(
        &self,
        start: impl IntoIterator<Item = usize>,
        edges: &[Vec<usize>],
    ) -> BTreeSet<usize> {
        let mut seen = BTreeSet::new();
        let mut todo: Vec<usize> = start.into_iter().collect();
        while let Some(n) = todo.pop() {
            if seen.insert(n) {
                todo.extend(edges[n].iter().copied());
            }
        }
        seen
    }

    /// Nodes grouped in waves: every node's dependencies are in earlier
    /// waves. Within a wave, nodes are in layer order, then by name.
    pub fn waves(&self) -> Vec<Vec<usize>> {
        let mut depth = vec![0usize; self.nodes.len()];
        for &i in &self.topological_order() {
            depth[i] = self.deps[i]
                .iter()
                .map(|&d| depth[d] + 1)
                .max()
                .unwrap_or(0);
        }
        let max = depth.iter().copied().max().map_or(0, |m| m + 1);
        let mut waves = vec![Vec::new(); max];
        for (i, &d) in depth.iter().enumerate() {
            waves[d].push(i);
        }
        for w in &mut waves {
            w.sort_by(|&a, &b| self.order_key(a).cmp(&self.order_key(b)));
        }
        waves
    }

    fn order_key(&self, i: usize) -> (usize, &str) {
        (self.nodes[i].layer_index, &self.nodes[i].name)
    }

    /// A stable topological order: dependencies first; among ready nodes,
    /// lower layers first, then by name.
    pub fn topological_order(&self) -> Vec<usize> {
        let mut pending: Vec<usize> = self.deps.iter().map(Vec::len).collect();
        let mut ready: BTreeSet<(usize, &str, usize)> = (0..self.nodes.len())
            .filter(|&i| pending[i] == 0)
            .map(|i| (self.nodes[i].layer_index, self.nodes[i].name.as_str(), i))
            .collect();
        let mut order = Vec::with_capacity(self.nodes.len());
        while let Some(first) = ready.pop_first() {
            let i = first.2;
            order.push(i);
            for &r in &self.rdeps[i] {
                pending[r] -= 1;
                if pending[r] == 0 {
                    ready.insert((self.nodes[r].layer_index, self.nodes[r].name.as_str(), r));
                }
            }
        }
        order
    }

    /// A plain-text listing: one line per unit in topological order.
    pub fn to_text(&self) -> String {
        let mut out = String::new();
        for (w, wave) in self.waves().iter().enumerate() {
            let _ = writeln!(out, "wave {}:", w + 1);
            for &i in wave {
                let n = &self.nodes[i];
                let deps: Vec<&str> = self.deps[i]
                    .iter()
                    .map(|&d| self.nodes[d].name.as_str())
                    .collect();
                let _ = write!(out, "  {} [{} / {}]", n.name, n.layer, n.kind);
                if !deps.is_empty() {
                    let _ = write!(out, " <- {}", deps.join(", "));
                }
                out.push('\n');
            }
        }
        out
    }

    /// Graphviz DOT, one cluster per layer.
    pub fn to_dot(&self, layers: &[String]) -> String {
        let mut out = String::from("digraph terrace {\n  rankdir=BT;\n  node [shape=box];\n");
        for (li, layer) in layers.iter().enumerate() {
            let members: Vec<&NodeSpec> =
                self.nodes.iter().filter(|n| n.layer_index == li).collect();
            if members.is_empty() {
                continue;
            }
            let _ = writeln!(
                out,
                "  subgraph \"cluster_{layer}\" {{\n    label=\"{layer}\";"
            );
            for n in members {
                let _ = writeln!(
                    out,
                    "    \"{}\" [label=\"{}\\n({})\"];",
                    n.name, n.name, n.kind
                );
            }
            out.push_str("  }\n");
        }
        for i in self.topological_order() {
            for &d in &self.deps[i] {
                let _ = writeln!(
                    out,
                    "  \"{}\" -> \"{}\";",
                    self.nodes[i].name, self.nodes[d].name
                );
            }
        }
        out.push_str("}\n");
        out
    }

    /// A Mermaid flowchart, one subgraph per layer; arrows point from a
    /// dependency to its dependent.
    pub fn to_mermaid(&self, layers: &[String]) -> String {
        let id = |n: &str| n.replace(|c: char| !c.is_ascii_alphanumeric(), "_");
        let mut out = String::from("flowchart BT\n");
        for (li, layer) in layers.iter().enumerate() {
            let members: Vec<&NodeSpec> =
                self.nodes.iter().filter(|n| n.layer_index == li).collect();
            if members.is_empty() {
                continue;
            }
            let _ = writeln!(out, "  subgraph layer_{}[\"{layer}\"]", id(layer));
            for n in members {
                let _ = writeln!(out, "    {}[\"{} ({})\"]", id(&n.name), n.name, n.kind);
            }
            out.push_str("  end\n");
        }
        for i in self.topological_order() {
            for &d in &self.deps[i] {
                let _ = writeln!(
                    out,
                    "  {} --> {}",
                    id(&self.nodes[d].name),
                    id(&self.nodes[i].name)
                );
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(name: &str, layer: usize, deps: &[&str]) -> NodeSpec {
        NodeSpec {
            name: name.into(),
            layer: format!("l{layer}"),
            layer_index: layer,
            kind: "manifests".into(),
            depends_on: deps.iter().map(|d| d.to_string()).collect(),
        }
    }

    #[test]
    fn waves_follow_dependencies() {
        let g = Graph::build(vec![
            node("app", 2, &["db", "net"]),
            node("db", 1, &["net"]),
            node("net", 0, &[]),
            node("dns", 0, &[]),
        ])
        .expect("valid");
        let names = |w: &Vec<usize>| {
            w.iter()
                .map(|&i| g.node(i).name.clone())
                .collect::<Vec<_>>()
        };
        let waves: Vec<_> = g.waves().iter().map(names).collect();
        assert_eq!(waves, vec![vec!["dns", "net"], vec!["db"], vec!["app"]]);
        let topo: Vec<_> = g
            .topological_order()
            .iter()
            .map(|&i| g.node(i).name.clone())
            .collect();
        assert_eq!(topo, ["dns", "net", "db", "app"]);
    }

    #[test]
    fn higher_layer_dependency_names_both_units() {
        let errs = Graph::build(vec![node("net", 0, &["app"]), node("app", 2, &[])])
            .expect_err("violation");
        assert_eq!(
            errs[0].to_string(),
            "unit `net` (layer `l0`) depends on `app` in the higher layer `l2`"
        );
    }

    #[test]
    fn cycles_report_the_whole_path() {
        let errs = Graph::build(vec![
            node("a", 1, &["b"]),
            node("b", 1, &["c"]),
            node("c", 1, &["a"]),
            node("d", 0, &[]),
        ])
        .expect_err("cycle");
        assert_eq!(errs[0].to_string(), "dependency cycle: a -> b -> c -> a");
    }

    #[test]
    fn unknown_dependencies_are_all_reported() {
        let errs = Graph::build(vec![node("a", 1, &["x", "y"])]).expect_err("unknown");
        assert_eq!(errs.len(), 2);
    }

    #[test]
    fn closures() {
        let g = Graph::build(vec![
            node("net", 0, &[]),
            node("db", 1, &["net"]),
            node("app", 2, &["db"]),
            node("other", 2, &[]),
        ])
        .expect("valid");
        let net = g.index_of("net").expect("net");
        let names = |s: BTreeSet<usize>| {
            let mut v: Vec<_> = s.into_iter().map(|i| g.node(i).name.clone()).collect();
            v.sort();
            v
        };
        assert_eq!(names(g.with_dependents([net])), ["app", "db", "net"]);
        let app = g.index_of("app").expect("app");
        assert_eq!(names(g.with_dependencies([app])), ["app", "db", "net"]);
    }

    #[test]
    fn dot_and_mermaid() {
        let g = Graph::build(vec![node("net", 0, &[]), node("db", 1, &["net"])]).expect("valid");
        let layers = vec!["l0".to_string(), "l1".to_string()];
        let dot = g.to_dot(&layers);
        assert!(dot.contains("\"db\" -> \"net\";"), "{dot}");
        let mm = g.to_mermaid(&layers);
        assert!(mm.contains("net --> db"), "{mm}");
    }
}
