//! Command-line arguments, and the limits on numbers in them.

use std::ffi::OsStr;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

/// terrace turns a layered infrastructure repository into running
/// infrastructure: one unit graph across every layer, one plan, one apply.
#[derive(Debug, Parser)]
#[command(
    name = "terrace",
    version,
    propagate_version = true,
    after_help = TOP_HELP
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

    /// Point cluster target TARGET at a live cluster through KUBECONFIG,
    /// whatever terrace.yaml binds it to (repeatable; `in-cluster` uses the
    /// pod's service account). Without it, and without a kubeconfig in
    /// terrace.yaml, a cluster target is the embedded default (rendered
    /// files): the shell's KUBECONFIG is never read.
    #[arg(
        long = "cluster",
        global = true,
        env = "TERRACE_CLUSTER",
        value_delimiter = ',',
        value_name = "TARGET=KUBECONFIG"
    )]
    pub clusters: Vec<String>,

    /// The kubeconfig context of cluster target TARGET (repeatable; default
    /// the kubeconfig's current context).
    #[arg(
        long = "cluster-context",
        global = true,
        env = "TERRACE_CLUSTER_CONTEXT",
        value_delimiter = ',',
        value_name = "TARGET=CONTEXT"
    )]
    pub cluster_contexts: Vec<String>,

    /// Point docker target TARGET at a Docker or Podman engine, whatever
    /// terrace.yaml binds it to (repeatable): `unix:///run/podman.sock`,
    /// `tcp://HOST:2376` or `ssh://USER@HOST`. The shell's DOCKER_HOST is
    /// never read.
    #[arg(
        long = "docker",
        global = true,
        env = "TERRACE_DOCKER",
        value_delimiter = ',',
        value_name = "TARGET=HOST"
    )]
    pub dockers: Vec<String>,

    /// More logging (-v info, -vv debug); RUST_LOG overrides.
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,

    #[command(subcommand)]
    pub command: Command,
}

impl Cli {
    /// Worker threads for the runtime: enough for `-j`, at most the cores
    /// (and never more than [`MAX_JOBS`]); at least one.
    pub fn worker_threads(&self) -> usize {
        let cores = std::thread::available_parallelism()
            .map_or(2, |n| n.get())
            .clamp(1, MAX_JOBS);
        match &self.command {
            Command::Apply(a) => a.jobs.clamp(1, cores),
            _ => cores.min(2),
        }
    }
}

impl OutputFormat {
    /// The `--output` of a command line clap refused, read from the raw
    /// arguments (without the program name) so that the error can still be
    /// given as JSON: `--output F`, `--output=F`, `-o F`, `-oF`, `-o=F`,
    /// also after boolean short flags (`-vo F`); the last one wins, and
    /// nothing after `--` counts. Text when there is none or it is no format.
    pub fn from_raw_args<I, S>(args: I) -> OutputFormat
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let mut args = args
            .into_iter()
            .map(|a| a.as_ref().to_string_lossy().into_owned());
        let mut format = OutputFormat::Text;
        while let Some(arg) = args.next() {
            if arg == "--" {
                break;
            }
            let value = if arg == "--output" {
                args.next()
            } else if let Some(v) = arg.strip_prefix("--output=") {
                Some(v.to_owned())
            } else if let Some(shorts) = arg.strip_prefix('-').filter(|a| !a.starts_with('-')) {
                // Short flags that take no value may come before `o`.
                match shorts.trim_start_matches(['v', 'i', 'y']).strip_prefix('o') {
                    Some("") => args.next(),
                    Some(v) => Some(v.strip_prefix('=').unwrap_or(v).to_owned()),
                    None => None,
                }
            } else {
                None
            };
            if let Some(f) =
                value.and_then(|v| <OutputFormat as ValueEnum>::from_str(&v, false).ok())
            {
                format = f;
            }
        }
        format
    }
}

/// Examples and the exit codes, for `terrace --help`.
const TOP_HELP: &str = "Examples:
  terrace -C examples/homelab plan
  terrace apply --env prod -j 4
  terrace plan --affected-since origin/main --output markdown
  terrace --cluster k3s=$HOME/.kube/k3s.yaml --cluster-context k3s=admin@k3s apply

Exit codes:
  0    success; for plan, no changes
  1    an error: in the command line, the repository, a unit, or writing output
  2    the plan has changes (also destroy and secrets updatekeys without --yes)
  101  a bug in terrace
  130  interrupted by SIGINT (Ctrl-C)
  143  stopped by SIGTERM";

/// The most units `-j` runs at once.
pub const MAX_JOBS: usize = 256;

/// The longest `--lock-timeout`, in seconds: a week.
pub const MAX_LOCK_TIMEOUT_SECS: u64 = 7 * 24 * 60 * 60;

/// `-j`: a whole number of units from 1 to [`MAX_JOBS`].
fn parse_jobs(text: &str) -> Result<usize, String> {
    match text.parse::<usize>() {
        Ok(n) if (1..=MAX_JOBS).contains(&n) => Ok(n),
        _ => Err(format!("expected a number of units from 1 to {MAX_JOBS}")),
    }
}

/// `--lock-timeout`: whole seconds from 0 to [`MAX_LOCK_TIMEOUT_SECS`].
fn parse_lock_timeout(text: &str) -> Result<u64, String> {
    match text.parse::<u64>() {
        Ok(n) if n <= MAX_LOCK_TIMEOUT_SECS => Ok(n),
        _ => Err(format!(
            "expected whole seconds from 0 to {MAX_LOCK_TIMEOUT_SECS} (a week)"
        )),
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
        after_help = "Examples:\n  terrace plan\n  terrace plan --layer apps --unit web\n  terrace plan --affected-since origin/main --output markdown\n  terrace plan --out plan.json      # in CI on a pull request; then `terrace apply plan.json` on merge\n\nExit codes: 0 no changes, 2 changes, 1 error."
    )]
    Plan(PlanArgs),
    /// A pull request's check: policy and plan of the units affected
    /// since the base revision, as a PR comment, JUnit XML and JSON.
    #[command(
        after_help = "Examples:\n  terrace ci --base origin/main --markdown comment.md --junit junit.xml\n  terrace ci --output json > ci.json\n\nThe base defaults to origin/$GITHUB_BASE_REF (GitHub Actions) or\norigin/$CI_MERGE_REQUEST_TARGET_BRANCH_NAME (GitLab CI), else origin/main.\nNo secret keys are needed: units whose secrets cannot be opened here are\nreported as needing keys, not as failures. examples/ci/ holds workflows.\n\nExit codes: 0 no changes, 2 changes, 1 a unit failed (an enforced policy\nrule included)."
    )]
    Ci(CiArgs),
    /// Apply changes in graph order.
    #[command(
        after_help = "Examples:\n  terrace apply\n  terrace apply -j 4 --layer platform\n  terrace apply plan.json           # exactly the plan `terrace plan --out plan.json` saved\n\nA unit that fails stops only the units that depend on it. A saved plan is\nrefused, naming what moved, when a unit's sources, inputs, dependency\noutputs or state changed since it was planned."
    )]
    Apply(ApplyArgs),
    /// Remove what units manage, dependents first.
    #[command(
        after_help = "Examples:\n  terrace destroy --unit web          # plan only\n  terrace destroy --unit web --yes    # do it\n  terrace destroy --unit removed-unit --yes   # a unit gone from the repository\n\nWithout --yes, destroy only plans and exits 2 when there is something to destroy."
    )]
    Destroy(DestroyArgs),
    /// Print a unit's outputs, or one of them.
    #[command(
        after_help = "Examples:\n  terrace output network\n  terrace output network cidr --output json\n  terrace output --output json          # every applied unit"
    )]
    Output(OutputArgs),
    /// Back up, list and restore the services of compose units (restic).
    #[command(subcommand)]
    Backup(BackupCommand),
    /// Inspect and repair state.
    #[command(subcommand)]
    State(StateCommand),
    /// Render kustomizations in process, like `kustomize build`.
    #[command(subcommand)]
    Kustomize(KustomizeCommand),
    /// Keep a Git remote's branch applied: fetch it every interval, and
    /// apply the units each new revision touches.
    #[command(
        after_help = "Example:\n  terrace serve --repo ssh://git@git.home.arpa/infra.git --branch main --interval 1m\n  terrace serve --repo file:///srv/git/infra.git --once   # one reconcile, then exit\n\nThe remote is fetched with gix into a private work directory (--workdir):\nmirror.git (a bare mirror), tree/ (the project at the revision checked out,\nits .terrace/ state kept from revision to revision) and serve.json (the\nrevision checked out and the last one applied whole). The first revision\napplies every unit; each later one applies the units whose files (or the\nfiles they read when last planned) changed, and their dependents. A\nrevision that fails is tried again at the next interval.\n\nWebhooks trigger a fetch at once: POST /hooks/github (X-Hub-Signature-256),\n/hooks/gitlab (X-Gitlab-Token), /hooks/gitea or /hooks/forgejo, and\n/hooks/generic (X-Signature: sha256=<hex of HMAC-SHA256 of the body>), all\nwith the secret of --webhook-secret-file. /metrics is Prometheus text.\n\nExit codes with --once: 0 applied (or nothing new), 1 a unit failed or the\nremote could not be read."
    )]
    Serve(ServeArgs),
    /// List past runs (apply, destroy, serve): when, what, how many units
    /// failed, at which revision. The same as `terrace state history`.
    #[command(
        after_help = "Example:\n  terrace runs\n  terrace -C ~/.local/state/terrace/serve/<id>/tree runs --output json   # the daemon's"
    )]
    Runs,
    /// Every unit, layer by layer: applied, failed, never applied, applied
    /// once; the revision; why it waits.
    #[command(
        after_help = "Examples:\n  terrace status\n  terrace status --output markdown\n  terrace status --server http://127.0.0.1:8080 --watch   # the daemon's view (TERRACE_TOKEN: its read token)"
    )]
    Status(UnitStatusArgs),
    /// The dashboard of the local project, without the daemon: read-only,
    /// on this machine only, refreshed from the state every two seconds.
    #[command(
        after_help = "Example:\n  terrace dashboard              # then open http://127.0.0.1:8081/"
    )]
    Dashboard(DashboardArgs),
    /// Move the chart pins of terrace.lock (helm units' remote charts).
    #[command(subcommand)]
    Charts(ChartsCommand),
    /// Read a repository as it is (a Flux tree) into units, leaving its
    /// files untouched.
    #[command(subcommand)]
    Import(ImportCommand),
    /// Encrypt, decrypt and edit SOPS files (age), as sops does.
    #[command(subcommand, after_help = SECRETS_HELP)]
    Secrets(SecretsCommand),
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
    /// Units planned at once (within a wave of the graph), 1 to 256.
    #[arg(short, long, default_value_t = 4, value_parser = parse_jobs)]
    pub jobs: usize,
    /// Read real infrastructure to find drift (Terraform refresh); `false`
    /// is the fast path that trusts the recorded state.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set, value_name = "BOOL")]
    pub refresh: bool,
    /// Save the plan to this file, for `terrace apply FILE` (it holds no
    /// secret: changes are sealed, and inputs are kept as digests).
    #[arg(long, value_name = "FILE")]
    pub out: Option<std::path::PathBuf>,
}

#[derive(Debug, Args)]
pub struct ApplyArgs {
    /// A plan saved by `terrace plan --out FILE`: apply exactly it (its
    /// environment and units; no selection flags).
    #[arg(value_name = "PLAN_FILE", conflicts_with_all = ["units", "layers", "affected_since"])]
    pub plan: Option<std::path::PathBuf>,
    #[command(flatten)]
    pub select: SelectArgs,
    /// Units applied at once, 1 to 256.
    #[arg(short, long, default_value_t = 4, value_parser = parse_jobs)]
    pub jobs: usize,
    /// Seconds to wait for a unit locked by another run (0: fail at once;
    /// at most 604800, a week).
    #[arg(
        long,
        default_value_t = 0,
        value_name = "SECS",
        value_parser = parse_lock_timeout
    )]
    pub lock_timeout: u64,
    /// Apply the `--unit`s again even when they are `lifecycle: once` and
    /// were applied (a once unit that handed its objects over takes them
    /// back).
    #[arg(long, requires = "units")]
    pub replace: bool,
    /// Take objects over even where the Flux Kustomization or HelmRelease,
    /// or the Argo CD Application, that applies them is not suspended
    /// (the two will then undo each other's changes).
    #[arg(long)]
    pub force: bool,
}

#[derive(Debug, Args)]
pub struct DestroyArgs {
    #[command(flatten)]
    pub select: SelectArgs,
    /// Really destroy; without it, destroy only plans.
    #[arg(long)]
    pub yes: bool,
    /// Remove the volumes of compose units too (their data). Without it,
    /// volumes are kept and listed.
    #[arg(long)]
    pub volumes: bool,
    /// Seconds to wait for a unit locked by another run (at most 604800,
    /// a week).
    #[arg(
        long,
        default_value_t = 0,
        value_name = "SECS",
        value_parser = parse_lock_timeout
    )]
    pub lock_timeout: u64,
}

#[derive(Debug, Args)]
pub struct DashboardArgs {
    /// Where to serve it (a loopback address: it has no tokens).
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:8081")]
    pub listen: std::net::SocketAddr,
}

#[derive(Debug, Args)]
pub struct UnitStatusArgs {
    /// Read a running `terrace serve` (its JSON API) instead of the local
    /// state; the read token is taken from TERRACE_TOKEN.
    #[arg(long, value_name = "URL")]
    pub server: Option<String>,
    /// Refresh every two seconds until interrupted.
    #[arg(long)]
    pub watch: bool,
}

#[derive(Debug, Subcommand)]
pub enum BackupCommand {
    /// Back up now every service with a `backup:` entry (of UNIT, or of
    /// every compose unit), then apply each one's retention.
    #[command(
        after_help = "Examples:\n  terrace backup run                   # every compose unit's backups\n  terrace backup run db --service postgres"
    )]
    Run {
        /// A compose unit (default: every one with backups).
        unit: Option<String>,
        /// Only this service.
        #[arg(long)]
        service: Option<String>,
    },
    /// List the snapshots of UNIT (or of every compose unit), oldest first.
    #[command(after_help = "Example:\n  terrace backup list db --output json")]
    List {
        unit: Option<String>,
        #[arg(long)]
        service: Option<String>,
    },
    /// Restore a service from its latest snapshot, or the one --at names.
    /// A volume is copied back into the stopped service, which is started
    /// again; a dump is fed to the entry's `restore` command.
    #[command(
        after_help = "Examples:\n  terrace backup restore db --service postgres --yes\n  terrace backup restore db --service postgres --at 2026-12-01T03:00:00Z --yes\n  terrace backup restore db --service postgres --at 4f2a9c1e --yes"
    )]
    Restore {
        unit: String,
        #[arg(long)]
        service: String,
        /// A snapshot id (or its first characters), or a time: the latest
        /// snapshot taken at or before it.
        #[arg(long, value_name = "SNAPSHOT|TIME")]
        at: Option<String>,
        /// Really restore; without it, restore says what it would do.
        #[arg(long)]
        yes: bool,
    },
}

#[derive(Debug, Args)]
pub struct OutputArgs {
    /// The unit (default: every applied unit, as a map by unit).
    pub unit: Option<String>,
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
    /// Copy every record and run of every environment to another backend,
    /// then read each back to check it. Refused while any unit is locked,
    /// or when the destination already holds state.
    #[command(
        after_help = "Examples:\n  terrace state migrate --to 's3://infra-state/homelab?endpoint=https://s3.home.arpa'\n  terrace state migrate --to local                 # .terrace/state\n  terrace state migrate --to local:state-backup\n  terrace state migrate --to etcd://127.0.0.1:2379/terrace/homelab\n  terrace state migrate --to 'etcd+https://etcd1:2379,etcd2:2379/terrace/homelab?ca=pki/ca.pem&cert=pki/me.pem&key=/etc/terrace/me.key'\n\nThen point terrace.yaml's `state:` at the destination. Records and runs are\nwritten sealed when terrace.yaml's `state.encryption` names recipients. S3\ncredentials come from AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY."
    )]
    Migrate {
        /// The destination: `local`, `local:DIR` (relative to the project
        /// root), `s3://BUCKET/PREFIX[?endpoint=URL&region=R]`,
        /// `etcd://HOST:PORT[,HOST:PORT]/PREFIX` or
        /// `etcd+https://…/PREFIX?ca=FILE[&cert=FILE&key=FILE]`.
        #[arg(long, value_name = "BACKEND")]
        to: String,
    },
}

#[derive(Debug, Args)]
pub struct CiArgs {
    /// The revision the change is compared with (default: the pull
    /// request's target branch, else origin/main).
    #[arg(long, value_name = "REF")]
    pub base: Option<String>,
    /// Write the pull-request comment (markdown, under 65,536 characters).
    #[arg(long, value_name = "FILE")]
    pub markdown: Option<PathBuf>,
    /// Write JUnit XML: a test case per unit and per policy violation.
    #[arg(long, value_name = "FILE")]
    pub junit: Option<PathBuf>,
    /// Write the whole report as JSON.
    #[arg(long, value_name = "FILE")]
    pub json: Option<PathBuf>,
    /// Units planned at once, 1 to 256.
    #[arg(short, long, default_value_t = 4, value_parser = parse_jobs)]
    pub jobs: usize,
}

#[derive(Debug, Args)]
pub struct SchemaArgs {
    /// Write `terrace.schema.json` and `unit.schema.json` into DIR.
    #[arg(long, value_name = "DIR")]
    pub write: Option<PathBuf>,
}

const SECRETS_HELP: &str =
    "Files are SOPS files: sops reads what terrace writes and the other way round.
Keys are found where sops finds them: SOPS_AGE_KEY, SOPS_AGE_KEY_FILE,
SOPS_AGE_KEY_CMD, ~/.config/sops/age/keys.txt, and SSH keys
(SOPS_AGE_SSH_PRIVATE_KEY_FILE, ~/.ssh/id_ed25519). New files are encrypted
to the recipients of the first matching `creation_rules` entry of the
nearest .sops.yaml (or --age).";

#[derive(Debug, Subcommand)]
pub enum SecretsCommand {
    /// Encrypt a plaintext YAML, JSON or dotenv file.
    #[command(
        after_help = "Examples:\n  terrace secrets encrypt -i secrets/db.yaml            # recipients from .sops.yaml\n  terrace secrets encrypt --age age1... app.env > app.enc.env\n  terrace secrets encrypt -i --encrypted-regex '^(data|stringData)$' secret.yaml"
    )]
    Encrypt(EncryptArgs),
    /// Decrypt a file to stdout (or in place with -i).
    #[command(
        after_help = "Examples:\n  terrace secrets decrypt secrets/db.yaml\n  terrace secrets decrypt secrets/db.yaml --extract db.password"
    )]
    Decrypt(DecryptArgs),
    /// Edit a file's plaintext in $EDITOR, then re-encrypt it.
    #[command(
        after_help = "Example:\n  EDITOR=nano terrace secrets edit secrets/db.yaml\n\nThe plaintext copy lives in a private (0700) temporary directory, in memory\n(/dev/shm) where there is one, and is removed afterwards, also on errors and\nCtrl-C. Values you did not change keep their ciphertext, so the Git diff shows\nonly your edits. A file that does not exist yet is created."
    )]
    Edit(EditArgs),
    /// Re-encrypt a file with a new data key.
    #[command(
        after_help = "Examples:\n  terrace secrets rotate -i secrets/db.yaml\n  terrace secrets rotate -i --add-age age1new... --rm-age age1old... secrets/db.yaml\n\nRotate after removing a recipient: until then, they still hold the old data key."
    )]
    Rotate(RotateArgs),
    /// Set a file's recipients to those of its .sops.yaml creation rule.
    #[command(
        after_help = "Examples:\n  terrace secrets updatekeys secrets/*.yaml         # show what would change\n  terrace secrets updatekeys --yes secrets/*.yaml   # do it\n\nThe data key stays the same; run `rotate` too when removing someone.\nWithout --yes it exits 2 when a file would change."
    )]
    Updatekeys(UpdatekeysArgs),
    /// Show whether files are encrypted, to whom, and whether you can open them.
    #[command(after_help = "Example:\n  terrace secrets status secrets/*.yaml --output json")]
    Status(StatusArgs),
    /// Git merge driver: merge two edits of an encrypted file by value.
    #[command(
        after_help = "Set up once per clone:\n  git config merge.terrace-sops.name 'terrace SOPS merge'\n  git config merge.terrace-sops.driver 'terrace secrets merge-driver %O %A %B %P'\nand in .gitattributes:\n  secrets/**/*.yaml merge=terrace-sops\n\nConflicts are reported by key path; the file is left as your side, to fix\nwith `terrace secrets edit`."
    )]
    MergeDriver(MergeArgs),
}

#[derive(Debug, Args)]
pub struct FileArgs {
    /// The file.
    pub file: PathBuf,
    /// The format: yaml, json or dotenv (default: from the extension).
    #[arg(long, value_name = "TYPE")]
    pub input_type: Option<String>,
}

#[derive(Debug, Args)]
pub struct EncryptArgs {
    #[command(flatten)]
    pub file: FileArgs,
    /// Write the result over the file instead of to stdout.
    #[arg(short, long)]
    pub in_place: bool,
    /// Recipients, comma-separated (age1… or ssh-ed25519 …); overrides .sops.yaml.
    #[arg(long, value_name = "RECIPIENTS")]
    pub age: Option<String>,
    /// Encrypt only values under keys matching this regex.
    #[arg(long, value_name = "REGEX", group = "rule")]
    pub encrypted_regex: Option<String>,
    /// Leave values under keys matching this regex plain.
    #[arg(long, value_name = "REGEX", group = "rule")]
    pub unencrypted_regex: Option<String>,
    /// Encrypt only values under keys ending with this suffix.
    #[arg(long, value_name = "SUFFIX", group = "rule")]
    pub encrypted_suffix: Option<String>,
    /// Leave values under keys ending with this suffix plain (default _unencrypted).
    #[arg(long, value_name = "SUFFIX", group = "rule")]
    pub unencrypted_suffix: Option<String>,
    /// Encrypt values after a comment matching this regex.
    #[arg(long, value_name = "REGEX", group = "rule")]
    pub encrypted_comment_regex: Option<String>,
    /// Leave values after a comment matching this regex plain.
    #[arg(long, value_name = "REGEX", group = "rule")]
    pub unencrypted_comment_regex: Option<String>,
    /// Compute the MAC over encrypted values only.
    #[arg(long)]
    pub mac_only_encrypted: bool,
}

#[derive(Debug, Args)]
pub struct DecryptArgs {
    #[command(flatten)]
    pub file: FileArgs,
    /// Write the plaintext over the file instead of to stdout.
    #[arg(short, long)]
    pub in_place: bool,
    /// Print only the value at this path (`a.b.0` or sops's `["a"]["b"][0]`).
    #[arg(long, value_name = "PATH")]
    pub extract: Option<String>,
}

#[derive(Debug, Args)]
pub struct EditArgs {
    #[command(flatten)]
    pub file: FileArgs,
}

#[derive(Debug, Args)]
pub struct RotateArgs {
    #[command(flatten)]
    pub file: FileArgs,
    /// Write the result over the file instead of to stdout.
    #[arg(short, long)]
    pub in_place: bool,
    /// Also encrypt to these recipients (comma-separated).
    #[arg(long, value_name = "RECIPIENTS")]
    pub add_age: Option<String>,
    /// Stop encrypting to these recipients (comma-separated).
    #[arg(long, value_name = "RECIPIENTS")]
    pub rm_age: Option<String>,
}

#[derive(Debug, Args)]
pub struct UpdatekeysArgs {
    /// The files.
    #[arg(required = true)]
    pub files: Vec<PathBuf>,
    /// Write the changes (without it, only show them).
    #[arg(short, long)]
    pub yes: bool,
}

#[derive(Debug, Args)]
pub struct StatusArgs {
    /// The files.
    #[arg(required = true)]
    pub files: Vec<PathBuf>,
}

#[derive(Debug, Args)]
pub struct MergeArgs {
    /// The common ancestor's version (%O).
    pub base: PathBuf,
    /// This branch's version (%A); the result is written here.
    pub ours: PathBuf,
    /// The other branch's version (%B).
    pub theirs: PathBuf,
    /// The file's path in the repository (%P), for its format.
    pub path: Option<PathBuf>,
}

#[derive(Debug, Subcommand)]
pub enum KustomizeCommand {
    /// Print what `kustomize build DIR` prints (the same objects, in order).
    #[command(
        after_help = "Example:\n  terrace kustomize build overlays/prod | kubectl apply -f -\n\nSupported: resources, bases, components, namespace, namePrefix/Suffix,\ncommonLabels, labels, commonAnnotations, images, replicas, config map and\nsecret generators, patches (strategic merge and JSON 6902), sortOptions,\nhelmCharts (with --enable-helm). Anything else is an error naming the field.\n\nFiles outside a kustomization's directory (or reached through a symlink\nthat leads outside it) are refused, as kustomize refuses them; pass\n--load-restrictor LoadRestrictionsNone to allow them."
    )]
    Build {
        /// The kustomization directories (each is built on its own; the
        /// outputs follow one another).
        #[arg(required = true)]
        dirs: Vec<PathBuf>,
        /// Where files may be loaded from, as kustomize's flag: only from
        /// within each kustomization's directory (the default), or from
        /// anywhere (`LoadRestrictionsNone`).
        #[arg(long, value_enum, default_value_t = LoadRestrictor::LoadRestrictionsRootOnly)]
        load_restrictor: LoadRestrictor,
        /// Render `helmCharts` with Helm (kustomize's flag; without it they
        /// are refused). A `kustomize` unit always may.
        #[arg(long)]
        enable_helm: bool,
        /// The helm binary for `--enable-helm` (default: `TERRACE_HELM`,
        /// else `helm` on the PATH).
        #[arg(long, value_name = "PATH", requires = "enable_helm")]
        helm_command: Option<String>,
    },
}

#[derive(Debug, Args)]
pub struct ServeArgs {
    /// The Git remote: file://, ssh:// or git:// (a path is a file:// remote).
    #[arg(long, value_name = "URL")]
    pub repo: String,
    /// The branch to follow.
    #[arg(long, default_value = "main")]
    pub branch: String,
    /// Follow a tag instead of a branch (the tag moved by force is a new
    /// revision).
    #[arg(long, value_name = "TAG", conflicts_with = "branch")]
    pub tag: Option<String>,
    /// The project's directory inside the repository.
    #[arg(long, value_name = "DIR", default_value = "")]
    pub path: String,
    /// Where the mirror, the work tree and the daemon's status live
    /// (default: $XDG_STATE_HOME/terrace/serve/<digest of the remote and
    /// branch>, else ~/.local/state/...).
    #[arg(long, value_name = "DIR")]
    pub workdir: Option<PathBuf>,
    /// How often the remote is fetched, as `30s`, `1m` or `1h`.
    #[arg(long, default_value = "1m", value_parser = parse_interval)]
    pub interval: std::time::Duration,
    /// Reconcile once and exit.
    #[arg(long)]
    pub once: bool,
    /// Fetch only the branch's last commit.
    #[arg(long)]
    pub shallow: bool,
    /// Units applied at once, 1 to 256.
    #[arg(short, long, default_value_t = 4, value_parser = parse_jobs)]
    pub jobs: usize,
    /// Where /healthz, /readyz, /metrics and the webhooks are served.
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:8080")]
    pub listen: std::net::SocketAddr,
    /// Serve no HTTP at all.
    #[arg(long, conflicts_with = "listen")]
    pub no_listen: bool,
    /// A file holding the secret webhooks are signed with (GitHub, Gitea,
    /// Forgejo and generic HMAC-SHA256 signatures; GitLab's token).
    /// Without it, webhooks are refused.
    #[arg(long, value_name = "FILE")]
    pub webhook_secret_file: Option<PathBuf>,
    /// A file holding the token that reads the JSON API (`Authorization:
    /// Bearer <token>`). Without tokens the API is served on loopback only.
    #[arg(long, value_name = "FILE")]
    pub read_token_file: Option<PathBuf>,
    /// A file holding the token that may also approve, reconcile, pause
    /// and resume through the API.
    #[arg(long, value_name = "FILE")]
    pub write_token_file: Option<PathBuf>,
    /// Elect a leader among replicas through a Kubernetes Lease: only the
    /// leader reconciles; a standby takes over once the leader stops
    /// renewing. The cluster is --kubeconfig, else the pod's service
    /// account.
    #[arg(long)]
    pub leader_election: bool,
    /// The kubeconfig of the cluster holding the Lease.
    #[arg(long, value_name = "FILE", requires = "leader_election")]
    pub kubeconfig: Option<PathBuf>,
    /// The kubeconfig's context.
    #[arg(long, value_name = "NAME", requires = "kubeconfig")]
    pub context: Option<String>,
    /// The Lease's namespace.
    #[arg(long, default_value = "default", requires = "leader_election")]
    pub lease_namespace: String,
    /// The Lease's name.
    #[arg(long, default_value = "terrace-serve", requires = "leader_election")]
    pub lease_name: String,
    /// How long the Lease holds without renewal (renewed every third of it).
    #[arg(long, default_value = "15s", value_parser = parse_interval, requires = "leader_election")]
    pub lease_duration: std::time::Duration,
}

fn parse_interval(s: &str) -> Result<std::time::Duration, String> {
    let d = humantime::parse_duration(s)
        .map_err(|e| format!("`{s}`: {e} (write it as 30s, 1m or 1h)"))?;
    if d < std::time::Duration::from_secs(1) {
        return Err(format!(
            "`{s}` is under a second; poll at most once a second"
        ));
    }
    Ok(d)
}

#[derive(Debug, Subcommand)]
pub enum ImportCommand {
    /// Every Flux Kustomization and HelmRelease under DIR becomes a unit.
    #[command(
        after_help = "Example:\n  terrace import flux kubernetes --layer kubernetes/flux=flux --layer kubernetes/apps/kube-system=platform\n  terrace import flux kubernetes --dry-run --output json\n\nKustomization -> kind: kustomize (path, dependsOn, targetNamespace,\nnamePrefix/Suffix, patches, components, wait, timeout, postBuild.substitute\nand substituteFrom with the ConfigMaps and Secrets found in the tree);\nHelmRelease -> kind: helm (chart from its HelmRepository, OCIRepository or\nthis repository, version, values with Flux's variables resolved,\ninstall.crds, postRenderers, dependsOn, targetNamespace, releaseName).\nEach unit goes to OUT/<layer>/<name>/unit.yaml; Flux's own objects are left\nout of what the units apply. Anything not mapped is listed with its file\nand what to do (exit code 3). terrace.yaml is written when there is none;\notherwise the layers to add are named. Run `terrace validate` and\n`terrace plan` after."
    )]
    Flux(ImportArgs),
    /// Every Argo CD Application (and what list and git-directory
    /// ApplicationSets generate) under DIR becomes a unit.
    #[command(
        after_help = "Example:\n  terrace import argocd argocd\n  terrace import argocd . --dry-run --output json\n\nA path with a chart -> kind: helm (valueFiles, values, valuesObject,\nparameters, releaseName, skipCrds, CreateNamespace); a kustomization ->\nkind: kustomize (namePrefix/Suffix, namespace, patches, components);\nanything else -> kind: manifests; a chart from a Helm repository or OCI ->\na remote helm unit. App-of-apps trees become layers (the children of an\nApplication go to the layer named after it, the roots to `argocd`), and\nthe sync-wave annotation orders the units of a layer. Anything not mapped\nis listed with its file and what to do (exit code 3)."
    )]
    Argocd(ImportArgs),
    /// Every terragrunt.hcl under DIR becomes a terraform unit.
    #[command(
        after_help = "Example:\n  terrace import terragrunt live --layer live/network=network\n\nEach stack: its module (`terraform.source`, a local path) called from a\nroot module in the unit's directory, its inputs (the root file's merged in\nas `include` merges them; `locals`, `read_terragrunt_config`,\n`find_in_parent_folders`, `path_relative_to_include`, `get_env` and the\ncommon functions evaluated), `dependency` outputs as `${unit.X.outputs.Y}`\n(mock_outputs dropped: terrace defers instead), `dependencies` as\n`dependsOn`, and `generate` blocks as files of the unit. Remote module\nsources and `remote_state` are listed with what to do (exit code 3)."
    )]
    Terragrunt(ImportArgs),
}

#[derive(Debug, Args)]
pub struct ImportArgs {
    /// The tree to read (inside the project).
    pub dir: PathBuf,
    /// Where the unit directories go, relative to the project root.
    #[arg(long, value_name = "DIR", default_value = "terrace")]
    pub out: String,
    /// PREFIX=LAYER: objects in files under PREFIX go to LAYER (first
    /// match wins; the layers are ordered as given, lowest first).
    #[arg(long = "layer", value_name = "PREFIX=LAYER")]
    pub layers: Vec<String>,
    /// The layer of everything no --layer names (default: `apps`, and
    /// `infra` for Terragrunt).
    #[arg(long, value_name = "LAYER")]
    pub default_layer: Option<String>,
    /// The cluster target the units apply to.
    #[arg(long, value_name = "NAME", default_value = "cluster")]
    pub target: String,
    /// Print what would be written; write nothing.
    #[arg(long)]
    pub dry_run: bool,
}

#[derive(Debug, Subcommand)]
pub enum ChartsCommand {
    /// Resolve every pinned chart's version constraint again and move its
    /// pin in terrace.lock to the newest match (plans then show the
    /// version change).
    #[command(
        after_help = "Example:\n  terrace charts update            # every pin\n  terrace charts update cert-manager\n\nA helm unit with a remote chart (`helm.repo`, or `oci://`) is pinned the\nfirst time it is planned: terrace.lock keeps the version its constraint\nresolved to and the archive's digest, and later plans use exactly that\n(offline, from .terrace/charts/). Commit terrace.lock."
    )]
    Update {
        /// Only these charts (by chart name).
        charts: Vec<String>,
    },
}

/// kustomize's `--load-restrictor` values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
#[allow(clippy::enum_variant_names)]
pub enum LoadRestrictor {
    #[value(name = "LoadRestrictionsRootOnly")]
    LoadRestrictionsRootOnly,
    #[value(name = "LoadRestrictionsNone")]
    LoadRestrictionsNone,
}

#[cfg(test)]
mod tests {
    use clap::error::ErrorKind;
    use clap::{CommandFactory, Parser};

    use super::{Cli, MAX_JOBS, OutputFormat};

    #[test]
    fn the_command_line_is_well_formed() {
        Cli::command().debug_assert();
    }

    #[test]
    fn absurd_numbers_are_usage_errors_naming_the_flag() {
        let cases: [(&[&str], &str); 5] = [
            (&["plan", "-j", "18446744073709551615"], "--jobs"),
            (&["apply", "-j", "0"], "--jobs"),
            (&["apply", "--jobs", "257"], "--jobs"),
            (
                &["apply", "--lock-timeout", "18446744073709551615"],
                "--lock-timeout",
            ),
            (&["destroy", "--lock-timeout", "604801"], "--lock-timeout"),
        ];
        for (args, flag) in cases {
            let e = Cli::try_parse_from(std::iter::once("terrace").chain(args.iter().copied()))
                .expect_err("an absurd number is refused");
            assert_eq!(e.kind(), ErrorKind::ValueValidation, "{args:?}");
            let text = e.to_string();
            assert!(text.contains(flag), "{args:?}: {text}");
        }
    }

    #[test]
    fn the_largest_numbers_are_accepted() {
        let cli =
            Cli::try_parse_from(["terrace", "apply", "-j", "256", "--lock-timeout", "604800"])
                .expect("the limits themselves are allowed");
        let threads = cli.worker_threads();
        assert!((1..=MAX_JOBS).contains(&threads), "{threads}");
        let cli = Cli::try_parse_from(["terrace", "plan"]).expect("plan parses");
        assert!((1..=2).contains(&cli.worker_threads()));
    }

    #[test]
    fn output_format_from_a_refused_command_line() {
        let format = |args: &[&str]| OutputFormat::from_raw_args(args);
        for json in [
            &["plan", "--output", "json", "--bogus"][..],
            &["--output=json", "plan"],
            &["-o", "json", "plan", "-j", "0"],
            &["-ojson"],
            &["-o=json"],
            &["-vo", "json"],
            &["-o", "text", "--output", "json"],
        ] {
            assert_eq!(format(json), OutputFormat::Json, "{json:?}");
        }
        for text in [
            &["plan", "--bogus"][..],
            &["-o", "json", "-o", "text"],
            &["secrets", "decrypt", "--", "-o", "json"],
            &["-Co", "json"],
            &["-o", "yaml"],
            &["--output"],
        ] {
            assert_eq!(format(text), OutputFormat::Text, "{text:?}");
        }
    }
}
