//! The command line: every subcommand, its flags and its help text.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

const ABOUT: &str = "flick — functions as a service on your own machine.

Hand flick a function (Python, Node.js, any executable, any HTTP server) and get
an endpoint. Instances start when called, stay warm while busy and stop when idle;
every invocation is recorded with its result, logs, timing and cold/warm start.";

const EXAMPLES: &str = "Examples:
  flick up --examples                  run the platform with example functions
  flick new hello --runtime python3    scaffold a function in ./hello
  flick deploy ./hello                 deploy it (prints the revision)
  flick invoke hello -d '{\"name\":\"Ada\"}'
  curl -H \"Authorization: Bearer $(cat .flick/admin.key)\" localhost:8080/fn/hello
  flick activations hello              recent invocations
  flick logs hello -f                  follow its logs
  flick triggers                       cron/MQTT/NATS triggers and their state
  flick usage --since 7d               invocations, GB-seconds and cost per day
  FLICK_URL=https://flick.example.com FLICK_TOKEN=flk_… flick list
                                       use a flick on another machine

The CLI finds a local flick through <data-dir>/flick.addr and sends the key of
that data dir only after the server proved it is that data dir's flick (the
secret `flick up` writes beside flick.addr). Another flick's key is given with
FLICK_TOKEN; plain http:// is refused for non-loopback addresses unless
--insecure is given.";

#[derive(Debug, Parser)]
#[command(name = "flick", version, about = ABOUT, after_help = EXAMPLES, propagate_version = true)]
pub struct Cli {
    #[command(flatten)]
    pub global: Global,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Args)]
pub struct Global {
    /// Data directory of the platform (holds its database, code and admin.key).
    #[arg(long, global = true, env = "FLICK_DATA_DIR", default_value = ".flick")]
    pub data_dir: PathBuf,
    /// URL of a running flick, http(s)://host[:port] (default: the address
    /// `flick up` recorded in the data dir). With a URL, the data dir's key is
    /// sent only if that server proves it is the data dir's flick; give
    /// another flick's key with --token.
    #[arg(long, global = true, env = "FLICK_URL")]
    pub url: Option<String>,
    /// API key (default: <data-dir>/admin.key).
    #[arg(long, global = true, env = "FLICK_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// Allow plain http:// to a non-loopback address: the key and all data
    /// cross the network unencrypted. Only for networks you trust.
    #[arg(long, global = true)]
    pub insecure: bool,
    /// Extra CA certificate(s) (PEM) to trust for an https:// URL, e.g. the
    /// CA of a self-signed certificate; the system's roots are trusted too.
    #[arg(long, global = true, env = "FLICK_CA_CERT", value_name = "FILE")]
    pub ca_cert: Option<PathBuf>,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the platform in the foreground (API and invoker on one port).
    #[command(after_help = "Examples:
  flick up                                   on 127.0.0.1:8080, data in ./.flick
  flick up --examples                        also deploy the bundled examples
  flick up --listen 0.0.0.0:9000 --data-dir /var/lib/flick
  FLICK_LOG=debug flick up                   see every scheduling decision
  flick up --log-format json --log info,flick_platform=debug 2>flick.log
                                             JSON lines; grep an activation id for its call
  FLICK_METRICS_TOKEN=$(openssl rand -hex 24) flick up --metrics-listen 127.0.0.1:9100
                                             Prometheus scrapes :9100/metrics with that token
  flick up --ui-listen 127.0.0.1:9001        the web dashboard at http://127.0.0.1:9001/ui
  flick up --listen 10.0.0.5:8080 --store postgres://flick@db/flick --queue nats://nats:4222
                                             one node of a cluster (see README, Cluster mode)

Settings come from flags, then FLICK_* environment variables, then
<data-dir>/config.toml (or --config FILE), then defaults. See README.")]
    Up(UpArgs),
    /// Deploy a function directory (one with a flick.toml) as a new revision.
    #[command(after_help = "Examples:
  flick deploy ./hello
  flick deploy .            # from inside the function directory

Files listed in .flickignore (gitignore syntax) are left out. A requirements.txt
or package.json is installed at deploy time. Deploying unchanged code and config
changes nothing and says so.")]
    Deploy {
        /// The function directory.
        #[arg(default_value = ".")]
        dir: PathBuf,
    },
    /// Invoke a function and print its response body.
    #[command(after_help = "Examples:
  flick invoke hello
  flick invoke hello -d '{\"name\": \"Ada\"}'
  flick invoke sha512 -d @README.md
  echo hi | flick invoke sha512 -d @-
  flick invoke api -X GET --path /users/7 --query 'verbose=1'
  flick invoke resize --async -d @photo.json      # queued; prints the activation id
  flick invoke resize --async --idempotency-key order-42 -d @photo.json
  flick invoke resize --async --callback-url http://127.0.0.1:9000/done

Exits 1 when the invocation did not succeed (the error is still printed).
--async returns once the call is stored durably (202); follow it with
`flick activation ID` (queued, running, then its outcome).")]
    Invoke(InvokeArgs),
    /// List functions.
    #[command(visible_alias = "ls")]
    List,
    /// Show a function: its current revision and full manifest (the names
    /// of its environment variables; their values only with --env).
    Show {
        name: String,
        /// Also print the values of the function's environment variables.
        #[arg(long)]
        env: bool,
    },
    /// List a function's revisions.
    Revisions { name: String },
    /// Point a function back at an earlier revision.
    #[command(after_help = "Examples:
  flick rollback hello      # to the revision before the current one
  flick rollback hello 3")]
    Rollback { name: String, revision: Option<u32> },
    /// Delete a function, its revisions and its activation records.
    Delete { name: String },
    /// List triggers (cron, MQTT, NATS, CloudEvents) with their state and counts.
    #[command(after_help = "Examples:
  flick triggers                 every function's triggers
  flick triggers hello           the triggers of one function
  flick triggers --json          everything, as the API returns it

STATE: connected (subscribed), scheduled (cron), retrying (broker unreachable:
LAST ERROR says why and when the next attempt is), passive (cloudevents, matched
by POST /events), stopped. FIRED and FAILED count since flick started.
Triggers are declared in flick.toml under [[triggers]] (see README).")]
    Triggers {
        /// Only this function's triggers.
        name: Option<String>,
        /// Print the API's JSON.
        #[arg(long)]
        json: bool,
    },
    /// List the nodes of the cluster: address, load, last heartbeat.
    #[command(after_help = "Examples:
  flick nodes                    every live member
  flick nodes --json             as GET /v1/nodes returns it

With the embedded store the cluster is this one node. Nodes sharing a store
(`flick up --store postgres://… --queue nats://…`) beat every second; one that
stops cleanly leaves at once, one silent for 5 s is dropped.")]
    Nodes {
        /// Print the API's JSON.
        #[arg(long)]
        json: bool,
    },
    /// List recent activations (invocation records), newest first.
    #[command(after_help = "Examples:
  flick activations
  flick activations hello --limit 5
  flick activations --cause async        # accepted with X-Flick-Async
  flick activations hello --trigger every-10s
  flick activations --parent <ID>         # the steps of a sequence call

Causes: http, async, cron, mqtt, nats, cloudevent, sequence, redrive.
ATTEMPT shows `n of m` for calls that may be retried.")]
    Activations {
        name: Option<String>,
        #[arg(long, short = 'n', default_value_t = 20)]
        limit: u32,
        /// Only calls with this cause.
        #[arg(long)]
        cause: Option<String>,
        /// Only calls fired by the trigger of this name.
        #[arg(long)]
        trigger: Option<String>,
        /// Only the steps of this sequence activation.
        #[arg(long)]
        parent: Option<String>,
    },
    /// Show one activation: status, timing, response and logs.
    #[command(after_help = "Control characters in the response and logs (terminal escapes, carriage
returns) are shown escaped, e.g. \\x1b; --raw prints them as they are.")]
    Activation {
        id: String,
        /// Print the raw JSON record.
        #[arg(long)]
        json: bool,
        /// Print the function's output unescaped (it can then drive your terminal).
        #[arg(long)]
        raw: bool,
    },
    /// Print a function's log lines (from its recent activations).
    #[command(after_help = "Examples:
  flick logs hello
  flick logs hello -f       # keep printing new lines as they are written
  flick logs hello --raw    # control characters as they are, not escaped

Control characters in log lines (terminal escapes, carriage returns) are shown
escaped, e.g. \\x1b, so a function cannot drive your terminal.")]
    Logs {
        name: String,
        /// Follow: print new lines as functions write them (streamed from
        /// flick, each with its activation id and stream; reconnects when
        /// flick restarts).
        #[arg(long, short = 'f')]
        follow: bool,
        /// How many recent activations to read.
        #[arg(long, short = 'n', default_value_t = 20)]
        limit: u32,
        /// Print the lines unescaped (they can then drive your terminal).
        #[arg(long)]
        raw: bool,
    },
    /// Usage per function and day, and what it costs (a cloud-style bill).
    #[command(after_help = "Examples:
  flick usage                      every function, the last 30 days
  flick usage hello --since 7d     one function, from the day 7 days ago on
  flick usage --since 2026-11-01   from a date (UTC) on
  flick usage --json               everything, as GET /v1/usage returns it

Days are UTC. BILLED GB-S is configured memory (GiB) × duration (init + run,
each call rounded up to 1 ms), as Lambda bills; MEASURED GB-S uses the memory
peak the instance's cgroup measured instead; CPU-S is user + system CPU time.
COST = billed GB-s × the GB-s price + invocations × the price per million
requests, at the server's prices (`flick up --price-gb-second`, or
[pricing] in its config). The sums outlive pruned activation records and
deleted functions.")]
    Usage {
        /// Only this function's usage.
        name: Option<String>,
        /// From when: a duration back from now (7d, 24h) or a date
        /// (YYYY-MM-DD, UTC); the whole first day is counted.
        #[arg(long, default_value = "30d")]
        since: String,
        /// Print the API's JSON.
        #[arg(long)]
        json: bool,
    },
    /// Live per-function figures: request rate, p50/p99 latency, errors, cold
    /// starts, instances and memory, refreshed every second.
    #[command(after_help = "Examples:
  flick top                     full screen, refreshed every second
  flick top --sort errors       start sorted by errors
  flick top --window 5m         figures over the last 5 minutes
  flick top --once              one plain table (also when stdout is not a terminal)

Keys: n r l e c i m sort by name, rate, p99 latency, errors, cold starts,
instances, memory; Tab / Shift-Tab the next / previous; q, Esc or Ctrl-C quit.
INST S/I/B is instances starting/idle/busy now; MEM PEAK the largest measured
memory peak of a call in the window; the last row is the whole host.")]
    Top {
        /// Print one plain table and exit.
        #[arg(long)]
        once: bool,
        /// The span the figures cover, 1s to 24h.
        #[arg(long, default_value = "60s")]
        window: String,
        /// The column to sort by first.
        #[arg(long, value_enum, default_value_t = crate::commands::SortKey::Rate)]
        sort: crate::commands::SortKey,
        /// How often the screen refreshes.
        #[arg(long, default_value = "1s", value_parser = parse_interval)]
        interval: std::time::Duration,
    },
    /// Dead letters: async calls that failed every attempt.
    #[command(
        subcommand,
        after_help = "Examples:
  flick dlq ls                  every function's dead letters
  flick dlq ls resize
  flick dlq show ID             the stored request and each attempt's error
  flick dlq redrive ID          run it again (attempt 1, cause redrive)
  flick dlq redrive --all resize
  flick dlq purge resize        delete them"
    )]
    Dlq(DlqCommand),
    /// Check which isolation features this host gives instances.
    #[command(after_help = "Starts a probe process in a full sandbox and reports what it can and cannot do.
Exits 1 if the sandbox is incomplete (then `flick up` refuses to run functions
unless started with --insecure-no-sandbox).")]
    Doctor,
    /// Scaffold a working function in a new directory.
    #[command(after_help = "Examples:
  flick new hello --runtime python3
  flick new api --runtime http
  flick new hasher --runtime exec
  flick new pipeline --runtime sequence   # steps = [\"a\", \"b\"]: each output the next input")]
    New {
        /// The function's name: letters, digits, `-` and `_`, 1-64 characters
        /// (Lambda's rule; case-sensitive). Also the new directory's name.
        name: String,
        #[arg(long, short = 'r', default_value = "python3", value_parser = ["python3", "node", "exec", "http", "sequence"])]
        runtime: String,
        /// Parent directory (default: current directory).
        #[arg(long, default_value = ".")]
        dir: PathBuf,
    },
}

#[derive(Debug, Args)]
pub struct UpArgs {
    /// Address to listen on.
    #[arg(long, env = "FLICK_LISTEN")]
    pub listen: Option<SocketAddr>,
    /// Config file (default: <data-dir>/config.toml, if present).
    #[arg(long, env = "FLICK_CONFIG")]
    pub config: Option<PathBuf>,
    /// Largest invocation request body, e.g. 6MiB.
    #[arg(long, env = "FLICK_MAX_BODY")]
    pub max_body: Option<String>,
    /// Log filter, e.g. info, debug, flick_platform=debug (debug shows each
    /// call: accepted, cold or warm start, finished with status and duration).
    #[arg(long, env = "FLICK_LOG")]
    pub log: Option<String>,
    /// Log line format: `text` for people, `json` (one object per line) for
    /// log collectors. Lines logged while a call runs carry its
    /// `activation_id`, so `grep <activation id>` finds them (default: text;
    /// config file: `log_format`).
    #[arg(long, env = "FLICK_LOG_FORMAT", value_enum)]
    pub log_format: Option<crate::config::LogFormat>,
    /// How instances' CPU is limited: `shares` (default) gives each a weight
    /// in proportion to its memory and no quota, so a burst is never
    /// throttled; `hard` adds a CFS quota of `instance_cpus` per instance, a
    /// cap even on an idle host that stalls a burst past it until the next
    /// 100 ms period (config file: `cpu_limit`).
    #[arg(long, env = "FLICK_CPU_LIMIT", value_enum)]
    pub cpu_limit: Option<crate::config::CpuLimit>,
    /// Also deploy the bundled example functions.
    #[arg(long)]
    pub examples: bool,
    /// Run functions WITHOUT isolation (no namespaces, cgroups or seccomp):
    /// only for hosts that cannot sandbox, and only for code you trust.
    #[arg(long, env = "FLICK_INSECURE_NO_SANDBOX")]
    pub insecure_no_sandbox: bool,
    /// The AWS region in functions' ARNs and `AWS_REGION` (default: us-east-1;
    /// config file: `[lambda] region`).
    #[arg(long, env = "FLICK_LAMBDA_REGION")]
    pub lambda_region: Option<String>,
    /// The 12-digit AWS account id in functions' ARNs (default:
    /// 000000000000; config file: `[lambda] account`).
    #[arg(long, env = "FLICK_LAMBDA_ACCOUNT")]
    pub lambda_account: Option<String>,
    /// Price per GB-second billed, for `flick usage` (default: 0.0000166667;
    /// config file: `[pricing] gb_second`).
    #[arg(long, env = "FLICK_PRICE_GB_SECOND", value_name = "PRICE")]
    pub price_gb_second: Option<f64>,
    /// Price per million invocations (default: 0.20; config file:
    /// `[pricing] per_million_requests`).
    #[arg(long, env = "FLICK_PRICE_PER_MILLION_REQUESTS", value_name = "PRICE")]
    pub price_per_million_requests: Option<f64>,
    /// Currency of the prices, an ISO 4217 code (default: USD; config file:
    /// `[pricing] currency`).
    #[arg(long, env = "FLICK_CURRENCY", value_name = "CODE")]
    pub currency: Option<String>,
    /// A Bearer token that may read GET /metrics and nothing else (the admin
    /// key always may); at least 16 characters. Prefer the environment
    /// variable: flags show in `ps`. Config file: `[metrics] token`.
    #[arg(long, env = "FLICK_METRICS_TOKEN", hide_env_values = true)]
    pub metrics_token: Option<String>,
    /// Serve GET /metrics on this address alone (and not on --listen), e.g.
    /// 127.0.0.1:9100. Config file: `[metrics] listen`.
    #[arg(long, env = "FLICK_METRICS_LISTEN")]
    pub metrics_listen: Option<SocketAddr>,
    /// Keep no Prometheus metrics at all (no counting, no /metrics).
    /// Config file: `[metrics] enabled = false`.
    #[arg(long, env = "FLICK_NO_METRICS")]
    pub no_metrics: bool,
    /// Serve the web dashboard (/ui, with /v1 and /fn for its pages) on
    /// this address. It always has an address of its own, so that no
    /// function's page shares its browser origin. Default: --listen's
    /// address with the next port (8080 → 8081), or a free port when that
    /// one is taken. Config file: `[ui] listen`.
    #[arg(long, env = "FLICK_UI_LISTEN", value_name = "ADDR")]
    pub ui_listen: Option<SocketAddr>,
    /// No web dashboard. Config file: `[ui] enabled = false`.
    #[arg(long, env = "FLICK_NO_UI")]
    pub no_ui: bool,
    /// Where functions, revisions, keys and records are kept: `sqlite`
    /// (default: flick.db in the data dir) or a PostgreSQL URL shared by
    /// the nodes of a cluster, e.g. postgres://flick@db:5432/flick.
    /// Config file: `store`.
    #[arg(long, env = "FLICK_STORE", value_name = "URL", hide_env_values = true)]
    pub store: Option<String>,
    /// Where accepted async calls wait: `sqlite` (default: queue.db in the
    /// data dir) or a NATS JetStream server shared by the nodes, e.g.
    /// nats://127.0.0.1:4222 (needs --store postgres://…). Config file: `queue`.
    #[arg(long, env = "FLICK_QUEUE", value_name = "URL", hide_env_values = true)]
    pub queue: Option<String>,
    /// This node's name in a cluster: letters, digits, `-`, `_` (default:
    /// one made at the first start and kept in <data-dir>/node.id).
    /// Config file: `node_id`.
    #[arg(long, env = "FLICK_NODE_ID", value_name = "ID")]
    pub node_id: Option<String>,
    /// The URL other nodes reach this one at (default: http://<--listen>;
    /// required when --listen is 0.0.0.0 or [::]). Config file: `advertise`.
    #[arg(long, env = "FLICK_ADVERTISE", value_name = "URL")]
    pub advertise: Option<String>,
}

#[derive(Debug, Subcommand)]
pub enum DlqCommand {
    /// List dead letters, oldest first.
    #[command(visible_alias = "list")]
    Ls {
        /// Only this function's.
        name: Option<String>,
        #[arg(long, short = 'n', default_value_t = 100)]
        limit: u32,
    },
    /// Show one dead letter: its request and the error of each attempt.
    Show {
        id: String,
        /// Print the raw JSON.
        #[arg(long)]
        json: bool,
    },
    /// Send dead letters back to their function.
    Redrive {
        /// The dead letter to redrive.
        #[arg(required_unless_present = "all", conflicts_with = "all")]
        id: Option<String>,
        /// Every dead letter (of the function named by --function, or all).
        #[arg(long)]
        all: bool,
        /// With --all: only this function's.
        #[arg(long, requires = "all")]
        function: Option<String>,
    },
    /// Delete dead letters (of one function, or all).
    Purge { name: Option<String> },
}

#[derive(Debug, Args)]
pub struct InvokeArgs {
    pub name: String,
    /// Request body: text, @FILE, or @- for stdin.
    #[arg(long, short = 'd')]
    pub data: Option<String>,
    /// HTTP method.
    #[arg(long, short = 'X', default_value = "POST")]
    pub method: String,
    /// Extra header, `Name: value` (repeatable).
    #[arg(long, short = 'H')]
    pub header: Vec<String>,
    /// Sub-path passed to the function.
    #[arg(long, default_value = "/")]
    pub path: String,
    /// Query string passed to the function.
    #[arg(long)]
    pub query: Option<String>,
    /// Also print status, activation id and headers to stderr.
    #[arg(long, short = 'v')]
    pub verbose: bool,
    /// Queue the call and return at once (X-Flick-Async: true); prints the
    /// activation id.
    #[arg(long = "async")]
    pub is_async: bool,
    /// Idempotency-Key: a repeat within the window returns the first call.
    #[arg(long)]
    pub idempotency_key: Option<String>,
    /// With --async: where flick POSTs the outcome (X-Callback-Url; needs the admin key).
    #[arg(long, requires = "is_async")]
    pub callback_url: Option<String>,
}

/// `--interval`: a duration of at least 100ms.
fn parse_interval(text: &str) -> Result<std::time::Duration, String> {
    let d = flick_core::units::parse_duration(text)?;
    if d < std::time::Duration::from_millis(100) {
        return Err(format!("`{text}` is too short: at least 100ms"));
    }
    Ok(d)
}
