//! Command-line arguments.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

/// terrace turns a layered infrastructure repository into running
/// infrastructure: one unit graph across every layer, one plan, one apply.
#[derive(Debug, Parser)]
#[command(
    name = "terrace",
    version,
    propagate_version = true,
    after_help = "Examples:\n  terrace -C examples/homelab plan\n  terrace apply --env prod -j 4\n  terrace plan --affected-since origin/main --output markdown\n\nExit codes: 0 success (plan: no changes), 2 plan has changes, 1 error."
)]
pub struct Cli {
    /// Run as if started in DIR (the project root is found from there upwards).
    #[arg(short = 'C', long = "directory", global = true, value_name = "DIR")]
    pub directory: Option<PathBuf>,

    /// The environment to act on (default: the project's defaultEnvironment).
    #[arg(
        short,
        long = "env",
        global = true,
        env = "TERRACE_ENV",
        value_name = "ENV"
    )]
    pub env: Option<String>,

    /// How to print results.
    #[arg(short, long, global = true, value_enum, default_value_t = OutputFormat::Text)]
    pub output: OutputFormat,

    /// More logging (-v info, -vv debug); RUST_LOG overrides.
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,

    #[command(subcommand)]
    pub command: Command,
}

impl Cli {
    /// Worker threads for the runtime: enough for `-j`, at most the cores.
    pub fn worker_threads(&self) -> usize {
        let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
        match &self.command {
            Command::Apply(a) => a.jobs.clamp(1, cores.max(1)),
            _ => cores.clamp(1, 2),
        }
    }
}

/// Output formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum OutputFormat {
    /// For people.
    Text,
    /// For programs: one JSON document on stdout.
    Json,
    /// For pull-request comments.
    Markdown,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Create a new project skeleton.
    #[command(after_help = "Example:\n  terrace init my-homelab --name homelab")]
    Init(InitArgs),
    /// Load and check everything, offline: files, expressions, the graph.
    #[command(
        after_help = "Example:\n  terrace validate            # every environment\n  terrace validate --env prod"
    )]
    Validate,
    /// Print the unit graph.
    #[command(
        after_help = "Examples:\n  terrace graph\n  terrace graph --format dot | dot -Tsvg > graph.svg\n  terrace graph --format mermaid"
    )]
    Graph(GraphArgs),
    /// Print what a unit would apply, as YAML.
    #[command(after_help = "Example:\n  terrace render web --env prod")]
    Render(RenderArgs),
    /// Show what apply would change, across all units or a selection.
    #[command(
        after_help = "Examples:\n  terrace plan\n  terrace plan --layer apps --unit web\n  terrace plan --affected-since origin/main --output markdown\n\nExit codes: 0 no changes, 2 changes, 1 error."
    )]
    Plan(PlanArgs),
    /// Apply changes in graph order.
    #[command(
        after_help = "Examples:\n  terrace apply\n  terrace apply -j 4 --layer platform\n\nA unit that fails stops only the units that depend on it."
    )]
    Apply(ApplyArgs),
    /// Remove what units manage, dependents first.
    #[command(
        after_help = "Examples:\n  terrace destroy --unit web          # plan only\n  terrace destroy --unit web --yes    # do it\n  terrace destroy --unit removed-unit --yes   # a unit gone from the repository\n\nWithout --yes, destroy only plans and exits 2 when there is something to destroy."
    )]
    Destroy(DestroyArgs),
    /// Print a unit's outputs, or one of them.
    #[command(
        after_help = "Examples:\n  terrace output network\n  terrace output network cidr --output json"
    )]
    Output(OutputArgs),
    /// Inspect and repair state.
    #[command(subcommand)]
    State(StateCommand),
    /// Print the JSON Schemas of terrace.yaml and unit.yaml.
    #[command(hide = true)]
    Schema(SchemaArgs),
}

#[derive(Debug, Args)]
pub struct InitArgs {
    /// The directory to create the project in.
    #[arg(default_value = ".")]
    pub dir: PathBuf,
    /// The project name (default: the directory name).
    #[arg(long)]
    pub name: Option<String>,
}

#[derive(Debug, Args)]
pub struct GraphArgs {
    #[arg(long, value_enum, default_value_t = GraphFormat::Text)]
    pub format: GraphFormat,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum GraphFormat {
    Text,
    Dot,
    Mermaid,
}

#[derive(Debug, Args)]
pub struct RenderArgs {
    /// The unit to render.
    pub unit: String,
}

/// Which units to act on; all when nothing is given.
#[derive(Debug, Args, Clone, Default)]
pub struct SelectArgs {
    /// Only this unit (repeatable).
    #[arg(short, long = "unit", value_name = "UNIT")]
    pub units: Vec<String>,
    /// Only units in this layer (repeatable).
    #[arg(short, long = "layer", value_name = "LAYER")]
    pub layers: Vec<String>,
    /// Only units whose files changed since this Git revision, and their dependents.
    #[arg(long, value_name = "REF")]
    pub affected_since: Option<String>,
}

#[derive(Debug, Args)]
pub struct PlanArgs {
    #[command(flatten)]
    pub select: SelectArgs,
    /// Show diffs of created and deleted objects too (updates always show theirs).
    #[arg(long)]
    pub full_diff: bool,
}

#[derive(Debug, Args)]
pub struct ApplyArgs {
    #[command(flatten)]
    pub select: SelectArgs,
    /// Units applied at once.
    #[arg(short, long, default_value_t = 4)]
    pub jobs: usize,
    /// Seconds to wait for a unit locked by another run (0: fail at once).
    #[arg(long, default_value_t = 0, value_name = "SECS")]
    pub lock_timeout: u64,
}

#[derive(Debug, Args)]
pub struct DestroyArgs {
    #[command(flatten)]
    pub select: SelectArgs,
    /// Really destroy; without it, destroy only plans.
    #[arg(long)]
    pub yes: bool,
    /// Seconds to wait for a unit locked by another run.
    #[arg(long, default_value_t = 0, value_name = "SECS")]
    pub lock_timeout: u64,
}

#[derive(Debug, Args)]
pub struct OutputArgs {
    pub unit: String,
    /// One output, as a path (`files["node1.yaml"].path`).
    pub key: Option<String>,
}

#[derive(Debug, Subcommand)]
pub enum StateCommand {
    /// List units with state in the environment.
    #[command(after_help = "Example:\n  terrace state list --env prod")]
    List,
    /// Show a unit's state record.
    #[command(after_help = "Example:\n  terrace state show web")]
    Show { unit: String },
    /// Break a unit's lock (after a crashed run).
    #[command(
        after_help = "Example:\n  terrace state unlock web --env prod\n\nOnly break a lock when no run holds it: the message of a locked apply names the holder."
    )]
    Unlock { unit: String },
    /// List past apply and destroy runs.
    #[command(after_help = "Example:\n  terrace state history")]
    History,
}

#[derive(Debug, Args)]
pub struct SchemaArgs {
    /// Write `terrace.schema.json` and `unit.schema.json` into DIR.
    #[arg(long, value_name = "DIR")]
    pub write: Option<PathBuf>,
}
