//! The function manifest (`flick.toml`): what users write, and the validated
//! form the rest of flick works with.
//!
//! The file is parsed into [`RawManifest`] (mirrors the TOML, rejects unknown
//! keys), then checked once into [`Manifest`] (typed durations and sizes,
//! defaults filled in). Every error names the line and key it is about.

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::name::FunctionName;
use crate::trigger::{RawTrigger, TriggerKind, TriggerSpec};
use crate::units::{format_duration, format_size, parse_duration, parse_size};

/// The manifest's file name inside a function directory.
pub const MANIFEST_FILE: &str = "flick.toml";

/// Upper bound of `timeout`: a synchronous call held open longer than this is
/// a job, not a request (Lambda's own limit is 15 minutes).
pub const MAX_TIMEOUT: Duration = Duration::from_secs(15 * 60);

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RuntimeKind {
    Python3,
    Node,
    Exec,
    Http,
    /// No code of its own: `steps` names functions run one after another,
    /// each one's response the next one's request (OpenWhisk sequences).
    Sequence,
    /// A Lambda custom runtime: the package's `bootstrap` executable runs
    /// for the instance's life and asks flick's Lambda Runtime API for
    /// events (`provided.al2` and `provided.al2023` are read as this).
    Provided,
}

impl RuntimeKind {
    pub const ALL: [RuntimeKind; 6] =
        [Self::Python3, Self::Node, Self::Exec, Self::Http, Self::Sequence, Self::Provided];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Python3 => "python3",
            Self::Node => "node",
            Self::Exec => "exec",
            Self::Http => "http",
            Self::Sequence => "sequence",
            Self::Provided => "provided",
        }
    }
}

impl fmt::Display for RuntimeKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for RuntimeKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        if matches!(s, "provided.al2" | "provided.al2023") {
            return Ok(Self::Provided);
        }
        Self::ALL
            .into_iter()
            .find(|k| k.as_str() == s)
            .ok_or_else(|| format!("unknown runtime `{s}` (expected python3, node, exec, http, sequence or provided)"))
    }
}

/// Which network an instance is in.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Network {
    /// A private network namespace with only loopback: the function can
    /// reach nothing, and nothing can reach it.
    None,
    /// The host's network: outbound calls to APIs and databases work.
    Host,
}

impl Network {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::None => "none",
            Self::Host => "host",
        }
    }
}

/// How a python3/node handler is written: which platform's contract it
/// follows. `auto` guesses from the handler (its parameters and name), as
/// flick always has; the others say it outright, and are what the
/// compatibility surfaces deploy with.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Shape {
    /// Lambda for `(event, context)`, OpenWhisk for `main(params)`, OpenFaaS
    /// for `handle(req)` (and the OpenFaaS templates' `handler.handle(event,
    /// context)` / `module.exports = (event, context) =>`).
    #[default]
    Auto,
    /// AWS Lambda: `handler(event, context)`. Called over HTTP it gets an
    /// API Gateway HTTP API (payload 2.0) event.
    Lambda,
    /// Apache OpenWhisk: `main(params)`.
    Openwhisk,
    /// OpenFaaS templates: `handle(req)` (python3), `handle(event, context)`
    /// (python3-http), `module.exports = async (event, context)` (node).
    Openfaas,
    /// Google Cloud Functions: `fn(request)` with a Flask-like request
    /// (python3), `(req, res) =>` with Express-like ones (node).
    Gcf,
}

impl Shape {
    pub const ALL: [Shape; 5] = [Self::Auto, Self::Lambda, Self::Openwhisk, Self::Openfaas, Self::Gcf];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Auto => "auto",
            Self::Lambda => "lambda",
            Self::Openwhisk => "openwhisk",
            Self::Openfaas => "openfaas",
            Self::Gcf => "gcf",
        }
    }

    fn is_auto(&self) -> bool {
        *self == Self::Auto
    }
}

impl fmt::Display for Shape {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for Shape {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Self::ALL.into_iter().find(|k| k.as_str() == s).ok_or_else(|| {
            format!("unknown shape `{s}` (expected \"auto\", \"lambda\", \"openwhisk\", \"openfaas\" or \"gcf\")")
        })
    }
}

/// `flick.toml` exactly as written. Unknown keys are an error, so a typo
/// (`time_out = "5s"`) is reported instead of silently ignored.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawManifest {
    name: String,
    runtime: String,
    handler: Option<String>,
    shape: Option<String>,
    steps: Option<Vec<String>>,
    timeout: Option<String>,
    memory: Option<String>,
    concurrency: Option<i64>,
    min_instances: Option<i64>,
    max_instances: Option<i64>,
    keep_alive: Option<String>,
    public: Option<bool>,
    network: Option<String>,
    tmp_size: Option<String>,
    retries: Option<i64>,
    max_queued: Option<i64>,
    web: Option<bool>,
    lambda_ric: Option<bool>,
    fork_template: Option<bool>,
    #[serde(default)]
    env: BTreeMap<String, String>,
    /// `[params]`: default parameters (any TOML values but dates).
    #[serde(default)]
    params: BTreeMap<String, toml::Value>,
    #[serde(default)]
    labels: BTreeMap<String, String>,
    #[serde(default)]
    annotations: BTreeMap<String, String>,
    scaling: Option<RawScaling>,
    #[serde(default)]
    triggers: Vec<toml::Spanned<RawTrigger>>,
}

/// `[scaling]`: per-function overrides of the autoscaler's policy.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawScaling {
    target_utilisation: Option<f64>,
    stable_window: Option<String>,
    panic_window: Option<String>,
    panic_threshold: Option<f64>,
}

/// The autoscaler's policy for one function (Knative KPA's knobs).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Scaling {
    /// Percent of `concurrency` an instance should carry on average (70 = 0.7).
    pub target_percent: u32,
    /// Load is averaged over this window before scaling down; never longer
    /// than `keep_alive`, so it cannot hold an idle instance past it.
    #[serde(with = "duration_text")]
    pub stable_window: Duration,
    /// The short window that detects bursts.
    #[serde(with = "duration_text")]
    pub panic_window: Duration,
    /// Panic when the burst needs this many times (percent) the instances running.
    pub panic_percent: u32,
}

impl Default for Scaling {
    fn default() -> Self {
        Self {
            target_percent: 70,
            stable_window: Duration::from_secs(60),
            panic_window: Duration::from_secs(6),
            panic_percent: 200,
        }
    }
}

/// A validated manifest with every default filled in. This is what a
/// revision stores, so changing a default later does not change old revisions.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    pub name: FunctionName,
    pub runtime: RuntimeKind,
    pub handler: String,
    /// The handler's contract (python3/node only; `auto` elsewhere).
    /// Revisions stored before it existed read as `auto`.
    #[serde(default, skip_serializing_if = "Shape::is_auto")]
    pub shape: Shape,
    #[serde(with = "duration_text")]
    pub timeout: Duration,
    /// Bytes.
    pub memory: u64,
    pub concurrency: u32,
    pub min_instances: u32,
    pub max_instances: u32,
    #[serde(with = "duration_text")]
    pub keep_alive: Duration,
    pub public: bool,
    pub network: Network,
    /// Bytes of private `/tmp`.
    pub tmp_size: u64,
    /// Absent where the API hides values (`GET /v1/functions/{name}`).
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    #[serde(default)]
    pub scaling: Scaling,
    /// The functions a `runtime = "sequence"` runs, in order (empty for
    /// every other runtime).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub steps: Vec<FunctionName>,
    /// `[[triggers]]`: what invokes the function besides HTTP callers.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub triggers: Vec<TriggerSpec>,
    /// Retries of a failed async call (its attempts are `retries + 1`).
    #[serde(default = "default_retries")]
    pub retries: u32,
    /// The most async calls that may wait for this function; `None`: the
    /// server's default (`max_queued` in config.toml).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_queued: Option<u64>,
    /// `[params]`: default parameters of the function. A surface that
    /// passes the event as a JSON object (OpenWhisk's invoke and web
    /// actions) merges the caller's parameters over these; the native
    /// `/fn` path passes the request as it came.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub params: BTreeMap<String, serde_json::Value>,
    /// `web = true`: callable without the key through web-action routes
    /// (OpenWhisk's `web-export`), which present the request as parameters.
    /// `public` is what opens `/fn/{name}`; this opens only those routes.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub web: bool,
    /// python3/node only: run the handler under AWS's own runtime interface
    /// client (`awslambdaric`, `aws-lambda-ric`, from the package's
    /// dependencies) against flick's Lambda Runtime API, instead of flick's
    /// bootstrap.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub lambda_ric: bool,
    /// python3 only, `true` unless the manifest says otherwise: the revision
    /// may get a fork template, whose forks share one sandbox (`/tmp`
    /// included); `false` gives every instance a sandbox of its own.
    #[serde(default = "yes", skip_serializing_if = "is_true")]
    pub fork_template: bool,
    /// `[labels]`: the deployer's own key/value tags (OpenFaaS `labels`);
    /// flick keeps and shows them, nothing more.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    /// `[annotations]`: like `labels`, for longer values (OpenFaaS `annotations`).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

fn yes() -> bool {
    true
}

fn is_true(b: &bool) -> bool {
    *b
}

fn default_retries() -> u32 {
    Manifest::DEFAULT_RETRIES
}

/// Most retries a manifest may ask for.
pub const MAX_RETRIES: u32 = 10;
/// Largest `max_queued` a manifest may ask for.
pub const MAX_QUEUED_LIMIT: u64 = 10_000_000;

/// `retries` and `max_queued`, checked (shared by every runtime).
fn async_keys(
    raw: &RawManifest,
    invalid: &impl Fn(&str, String) -> ManifestError,
) -> Result<(u32, Option<u64>), ManifestError> {
    let retries = match raw.retries {
        None => Manifest::DEFAULT_RETRIES,
        Some(n) if (0..=i64::from(MAX_RETRIES)).contains(&n) => n as u32,
        Some(n) => return Err(invalid("retries", format!("{n} is out of range 0..={MAX_RETRIES}"))),
    };
    let max_queued = match raw.max_queued {
        None => None,
        Some(n) if (1..=MAX_QUEUED_LIMIT as i64).contains(&n) => Some(n as u64),
        Some(n) => return Err(invalid("max_queued", format!("{n} is out of range 1..={MAX_QUEUED_LIMIT}"))),
    };
    Ok((retries, max_queued))
}

/// Most steps a sequence may have.
pub const MAX_STEPS: usize = 50;

/// Keys of `flick.toml` that describe instances, which a sequence has none of.
const INSTANCE_KEYS: [&str; 11] = [
    "handler",
    "shape",
    "memory",
    "concurrency",
    "min_instances",
    "max_instances",
    "keep_alive",
    "network",
    "tmp_size",
    "env",
    "scaling",
];

impl Manifest {
    pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);
    pub const DEFAULT_MEMORY: u64 = 256 << 20;
    pub const DEFAULT_MAX_INSTANCES: u32 = 10;
    pub const DEFAULT_KEEP_ALIVE: Duration = Duration::from_secs(600);
    pub const DEFAULT_TMP_SIZE: u64 = 64 << 20;
    pub const DEFAULT_RETRIES: u32 = 2;

    /// Parses and validates the text of a `flick.toml`.
    pub fn parse(text: &str) -> Result<Self, ManifestError> {
        let mut raw: RawManifest = toml::from_str(text).map_err(|e| {
            let line = e.span().map(|s| line_at(text, s.start));
            ManifestError::Syntax {
                line,
                key: line.and_then(|l| key_on_line(text, l)),
                message: e.message().trim().to_string(),
            }
        })?;
        let invalid = |key: &str, message: String| ManifestError::Invalid {
            line: line_of_key(text, key),
            key: key.to_string(),
            message,
        };

        let name = FunctionName::new(&raw.name).map_err(|e| invalid("name", e.to_string()))?;
        let runtime: RuntimeKind = raw.runtime.parse().map_err(|e| invalid("runtime", e))?;
        let triggers = crate::trigger::parse_triggers(std::mem::take(&mut raw.triggers))
            .map_err(|e| ManifestError::Invalid { line: Some(line_at(text, e.at)), key: e.key, message: e.message })?;
        if raw.fork_template.is_some() && runtime != RuntimeKind::Python3 {
            return Err(invalid("fork_template", format!("is for python3 handlers, not `{runtime}`")));
        }
        if raw.lambda_ric == Some(true) && !matches!(runtime, RuntimeKind::Python3 | RuntimeKind::Node) {
            return Err(invalid("lambda_ric", format!("is for python3 and node handlers, not `{runtime}`")));
        }
        let labels = check_tags("labels", std::mem::take(&mut raw.labels)).map_err(|e| invalid("labels", e))?;
        let annotations =
            check_tags("annotations", std::mem::take(&mut raw.annotations)).map_err(|e| invalid("annotations", e))?;
        if runtime == RuntimeKind::Sequence {
            let m = Self::sequence(&mut raw, name, triggers, |key, m| invalid(key, m))?;
            return Ok(Manifest { labels, annotations, ..m });
        }
        if raw.steps.is_some() {
            return Err(invalid("steps", "only a `runtime = \"sequence\"` has steps".into()));
        }
        let (retries, max_queued) = async_keys(&raw, &invalid)?;
        let handler = match raw.handler.as_deref() {
            // A custom runtime's handler is only what its bootstrap reads
            // from `_HANDLER`; Lambda lets it be anything, or nothing.
            None if runtime == RuntimeKind::Provided => String::new(),
            None => return Err(invalid("runtime", format!("runtime `{runtime}` needs a `handler`"))),
            Some(h) => h.trim().to_string(),
        };
        check_handler(runtime, &handler).map_err(|e| invalid("handler", e))?;
        let shape = match raw.shape.as_deref() {
            None => Shape::Auto,
            Some(text) => {
                let shape: Shape = text.parse().map_err(|e| invalid("shape", e))?;
                match runtime {
                    RuntimeKind::Python3 | RuntimeKind::Node => shape,
                    _ => {
                        return Err(invalid(
                            "shape",
                            format!(
                                "has no meaning for runtime `{runtime}` (only python3 and node handlers have a shape)"
                            ),
                        ));
                    }
                }
            }
        };

        let duration = |key: &str, v: Option<String>, default: Duration| match v {
            None => Ok(default),
            Some(t) => parse_duration(&t).map_err(|e| invalid(key, e)),
        };
        let timeout = duration("timeout", raw.timeout, Self::DEFAULT_TIMEOUT)?;
        if timeout.is_zero() || timeout > MAX_TIMEOUT {
            return Err(invalid("timeout", "must be between 1ms and 15m".into()));
        }
        let keep_alive = duration("keep_alive", raw.keep_alive, Self::DEFAULT_KEEP_ALIVE)?;
        if keep_alive < Duration::from_millis(100) {
            return Err(invalid("keep_alive", "must be at least 100ms".into()));
        }
        let memory = match raw.memory {
            None => Self::DEFAULT_MEMORY,
            Some(t) => parse_size(&t).map_err(|e| invalid("memory", e))?,
        };
        if !(16 << 20..=64u64 << 30).contains(&memory) {
            return Err(invalid("memory", "must be between 16MiB and 64GiB".into()));
        }

        let count = |key: &str, v: Option<i64>, default: u32, min: i64, max: i64| match v {
            None => Ok(default),
            Some(n) if (min..=max).contains(&n) => Ok(n as u32),
            Some(n) => Err(invalid(key, format!("{n} is out of range {min}..={max}"))),
        };
        let concurrency = count("concurrency", raw.concurrency, 1, 1, 1000)?;
        let lambda_ric = raw.lambda_ric.unwrap_or(false);
        if (lambda_ric || runtime == RuntimeKind::Provided) && concurrency != 1 {
            return Err(invalid(
                "concurrency",
                "must be 1 with the Lambda Runtime API (it hands an instance one event at a time)".into(),
            ));
        }
        let min_instances = count("min_instances", raw.min_instances, 0, 0, 1000)?;
        let max_instances =
            count("max_instances", raw.max_instances, Self::DEFAULT_MAX_INSTANCES.max(min_instances), 1, 1000)?;
        if max_instances < min_instances {
            return Err(invalid("max_instances", format!("{max_instances} is below min_instances ({min_instances})")));
        }
        // Closed by default: a function reaches the network only when its
        // author says so (http servers too: flick reaches them inside their
        // own namespace).
        let network = match raw.network.as_deref() {
            None | Some("none") => Network::None,
            Some("host") => Network::Host,
            Some(other) => {
                return Err(invalid("network", format!("`{other}` is not a network (use \"none\" or \"host\")")));
            }
        };
        let tmp_size = match raw.tmp_size {
            None => Self::DEFAULT_TMP_SIZE,
            Some(t) => parse_size(&t).map_err(|e| invalid("tmp_size", e))?,
        };
        if !(1 << 20..=16u64 << 30).contains(&tmp_size) {
            return Err(invalid("tmp_size", "must be between 1MiB and 16GiB".into()));
        }
        let scaling = scaling(raw.scaling, keep_alive, |key, m| invalid(key, m))?;
        for (key, value) in &raw.env {
            check_env_key(key).map_err(|e| invalid("env", e))?;
            check_env_value(key, value).map_err(|e| invalid("env", e))?;
        }
        let env_bytes: usize = raw.env.iter().map(|(k, v)| k.len() + v.len() + 2).sum();
        if env_bytes > MAX_ENV_BYTES {
            return Err(invalid(
                "env",
                format!(
                    "takes {env_bytes} bytes; the limit is {MAX_ENV_BYTES} (keep large data in files of the package)"
                ),
            ));
        }

        let params = params(std::mem::take(&mut raw.params), |key, m| invalid(key, m))?;

        Ok(Manifest {
            name,
            runtime,
            handler,
            shape,
            timeout,
            memory,
            concurrency,
            min_instances,
            max_instances,
            keep_alive,
            public: raw.public.unwrap_or(false),
            network,
            tmp_size,
            env: raw.env,
            scaling,
            steps: Vec::new(),
            triggers,
            retries,
            max_queued,
            params,
            web: raw.web.unwrap_or(false),
            lambda_ric,
            fork_template: raw.fork_template.unwrap_or(true),
            labels,
            annotations,
        })
    }

    /// The rest of a `runtime = "sequence"` manifest: `steps`, `timeout`
    /// (the deadline of the whole chain) and `public`; keys about instances
    /// are refused, a sequence runs none of its own.
    fn sequence(
        raw: &mut RawManifest,
        name: FunctionName,
        triggers: Vec<TriggerSpec>,
        invalid: impl Fn(&str, String) -> ManifestError,
    ) -> Result<Self, ManifestError> {
        let present = [
            raw.handler.is_some(),
            raw.shape.is_some(),
            raw.memory.is_some(),
            raw.concurrency.is_some(),
            raw.min_instances.is_some(),
            raw.max_instances.is_some(),
            raw.keep_alive.is_some(),
            raw.network.is_some(),
            raw.tmp_size.is_some(),
            !raw.env.is_empty(),
            raw.scaling.is_some(),
        ];
        if let Some((key, _)) = INSTANCE_KEYS.iter().zip(present).find(|(_, p)| *p) {
            return Err(invalid(
                key,
                "has no meaning for a sequence (it runs no instance of its own; set it on its steps)".into(),
            ));
        }
        let steps =
            raw.steps.as_ref().ok_or_else(|| invalid("runtime", "a sequence needs `steps = [\"a\", \"b\"]`".into()))?;
        if steps.is_empty() || steps.len() > MAX_STEPS {
            return Err(invalid("steps", format!("a sequence has 1 to {MAX_STEPS} steps, not {}", steps.len())));
        }
        let steps = steps
            .iter()
            .enumerate()
            .map(|(i, s)| {
                let step = FunctionName::new(s).map_err(|e| invalid("steps", format!("step {}: {e}", i + 1)))?;
                if step == name {
                    return Err(invalid("steps", format!("step {}: a sequence cannot call itself", i + 1)));
                }
                Ok(step)
            })
            .collect::<Result<Vec<_>, _>>()?;
        let timeout = match &raw.timeout {
            None => Self::DEFAULT_TIMEOUT,
            Some(t) => parse_duration(t).map_err(|e| invalid("timeout", e))?,
        };
        if timeout.is_zero() || timeout > MAX_TIMEOUT {
            return Err(invalid("timeout", "must be between 1ms and 15m".into()));
        }
        let (retries, max_queued) = async_keys(raw, &invalid)?;
        let params = params(std::mem::take(&mut raw.params), &invalid)?;
        Ok(Manifest {
            name,
            runtime: RuntimeKind::Sequence,
            handler: String::new(),
            shape: Shape::Auto,
            timeout,
            memory: Self::DEFAULT_MEMORY,
            concurrency: 1,
            min_instances: 0,
            max_instances: Self::DEFAULT_MAX_INSTANCES,
            keep_alive: Self::DEFAULT_KEEP_ALIVE,
            public: raw.public.unwrap_or(false),
            network: Network::None,
            tmp_size: Self::DEFAULT_TMP_SIZE,
            env: BTreeMap::new(),
            scaling: Scaling::default(),
            steps,
            triggers,
            retries,
            max_queued,
            params,
            web: raw.web.unwrap_or(false),
            lambda_ric: false,
            fork_template: true,
            labels: BTreeMap::new(),
            annotations: BTreeMap::new(),
        })
    }

    /// The manifest as TOML, every default spelled out (what `flick` shows).
    pub fn to_toml(&self) -> String {
        let mut out = self.to_toml_base();
        // After the top-level keys, before any table.
        let mut extra = String::new();
        if matches!(self.runtime, RuntimeKind::Python3 | RuntimeKind::Node) {
            extra.push_str(&format!("shape = \"{}\"\n", self.shape));
        }
        extra.push_str(&format!("retries = {}\n", self.retries));
        if let Some(n) = self.max_queued {
            extra.push_str(&format!("max_queued = {n}\n"));
        }
        if self.web {
            extra.push_str("web = true\n");
        }
        if self.lambda_ric {
            extra.push_str("lambda_ric = true\n");
        }
        if !self.fork_template {
            extra.push_str("fork_template = false\n");
        }
        let at = out.find("\n[").map_or(out.len(), |i| i + 1);
        out.insert_str(at, &extra);
        // Stored params were checked at parse time, so they print back.
        if let Ok(section) = params_toml(&self.params) {
            let at = out.find("\n[[triggers]]").map_or(out.len(), |i| i + 1);
            out.insert_str(at, &section);
        }
        for (table, tags) in [("labels", &self.labels), ("annotations", &self.annotations)] {
            if !tags.is_empty() {
                out.push_str(&format!("\n[{table}]\n"));
                for (k, v) in tags {
                    out.push_str(&format!("{} = {}\n", toml_string(k), toml_string(v)));
                }
            }
        }
        out
    }

    fn to_toml_base(&self) -> String {
        if self.runtime == RuntimeKind::Sequence {
            let steps: Vec<String> = self.steps.iter().map(|s| toml_string(s.as_str())).collect();
            let mut out = format!(
                "name = {:?}\nruntime = \"sequence\"\nsteps = [{}]\ntimeout = {:?}\npublic = {}\n",
                self.name.as_str(),
                steps.join(", "),
                format_duration(self.timeout),
                self.public,
            );
            self.push_triggers(&mut out);
            return out;
        }
        let mut out = format!(
            "name = {:?}\nruntime = {:?}\nhandler = {}\ntimeout = {:?}\nmemory = {:?}\n\
             concurrency = {}\nmin_instances = {}\nmax_instances = {}\nkeep_alive = {:?}\npublic = {}\n\
             network = {:?}\ntmp_size = {:?}\n",
            self.name.as_str(),
            self.runtime.as_str(),
            toml_string(&self.handler),
            format_duration(self.timeout),
            format_size(self.memory),
            self.concurrency,
            self.min_instances,
            self.max_instances,
            format_duration(self.keep_alive),
            self.public,
            self.network.as_str(),
            format_size(self.tmp_size),
        );
        let sc = &self.scaling;
        out.push_str(&format!(
            "\n[scaling]\ntarget_utilisation = {}\nstable_window = {:?}\npanic_window = {:?}\npanic_threshold = {}\n",
            f64::from(sc.target_percent) / 100.0,
            format_duration(sc.stable_window),
            format_duration(sc.panic_window),
            f64::from(sc.panic_percent) / 100.0,
        ));
        if !self.env.is_empty() {
            out.push_str("\n[env]\n");
            for (k, v) in &self.env {
                out.push_str(&format!("{k} = {}\n", toml_string(v)));
            }
        }
        self.push_triggers(&mut out);
        out
    }

    /// `[[triggers]]` as TOML, every default spelled out.
    fn push_triggers(&self, out: &mut String) {
        for t in &self.triggers {
            out.push_str(&format!(
                "\n[[triggers]]\nname = {}\ntype = {:?}\n",
                toml_string(&t.name),
                t.kind.type_name()
            ));
            let mut put = |k: &str, v: &str| out.push_str(&format!("{k} = {}\n", toml_string(v)));
            match &t.kind {
                TriggerKind::Cron { schedule, timezone } => {
                    put("schedule", schedule);
                    put("timezone", timezone);
                }
                TriggerKind::Mqtt { url, topic, qos } => {
                    put("url", url);
                    put("topic", topic);
                    out.push_str(&format!("qos = {qos}\n"));
                }
                TriggerKind::Nats { url, subject, stream, consumer } => {
                    put("url", url);
                    put("subject", subject);
                    if let Some(s) = stream {
                        put("stream", s);
                    }
                    if let Some(c) = consumer {
                        put("consumer", c);
                    }
                }
                TriggerKind::CloudEvents { filter } => {
                    let pairs: Vec<String> = filter.iter().map(|(k, v)| format!("{k} = {}", toml_string(v))).collect();
                    out.push_str(&format!("filter = {{ {} }}\n", pairs.join(", ")));
                }
            }
        }
    }
}

/// Most entries of `[labels]` (and of `[annotations]`).
pub const MAX_TAGS: usize = 64;
/// Longest label or annotation key (a Kubernetes-style `prefix/name`).
pub const MAX_TAG_KEY: usize = 253;
/// Longest label or annotation value.
pub const MAX_TAG_VALUE: usize = 4096;

/// `[labels]` / `[annotations]`: bounded, keys of `[A-Za-z0-9._/-]`,
/// values without control characters (they are shown in terminals).
fn check_tags(table: &str, tags: BTreeMap<String, String>) -> Result<BTreeMap<String, String>, String> {
    if tags.len() > MAX_TAGS {
        return Err(format!("has {} entries; the limit is {MAX_TAGS}", tags.len()));
    }
    for (k, v) in &tags {
        let key_ok = (1..=MAX_TAG_KEY).contains(&k.len())
            && k.bytes().all(|b| b.is_ascii_alphanumeric() || b"._/-".contains(&b));
        if !key_ok {
            return Err(format!(
                "{table} key `{}` must be 1 to {MAX_TAG_KEY} characters of letters, digits, `.`, `_`, `/` and `-`",
                k.chars().take(64).flat_map(char::escape_default).collect::<String>()
            ));
        }
        if v.len() > MAX_TAG_VALUE {
            return Err(format!("the value of `{k}` is {} bytes; the limit is {MAX_TAG_VALUE}", v.len()));
        }
        if v.chars().any(char::is_control) {
            return Err(format!("the value of `{k}` contains a control character"));
        }
    }
    Ok(tags)
}

/// `s` as a TOML basic string. Rust's `{:?}` is not one: it writes
/// `\u{301}` and `\'`, which TOML rejects, so a manifest shown by `to_toml`
/// would not parse back.
fn toml_string(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\t' => out.push_str("\\t"),
            '\n' => out.push_str("\\n"),
            c if c.is_control() => out.push_str(&format!("\\u{:04X}", u32::from(c))),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

fn scaling(
    raw: Option<RawScaling>,
    keep_alive: Duration,
    invalid: impl Fn(&str, String) -> ManifestError,
) -> Result<Scaling, ManifestError> {
    let d = Scaling::default();
    let Some(raw) = raw else {
        let stable_window = d.stable_window.min(keep_alive);
        return Ok(Scaling { stable_window, panic_window: d.panic_window.min(tenth(stable_window)), ..d });
    };
    let percent = |key: &str, v: Option<f64>, default: u32, range: std::ops::RangeInclusive<f64>| match v {
        None => Ok(default),
        Some(x) if range.contains(&x) => Ok((x * 100.0).round() as u32),
        Some(x) => {
            Err(invalid("scaling", format!("`{key}` = {x} is out of range {}..={}", range.start(), range.end())))
        }
    };
    let window = |key: &str, v: Option<String>, default: Duration| match v {
        None => Ok(default),
        Some(t) => parse_duration(&t).map_err(|e| invalid("scaling", format!("`{key}`: {e}"))),
    };
    let stable_window = window("stable_window", raw.stable_window, d.stable_window)?.min(keep_alive);
    let panic_window = window("panic_window", raw.panic_window, d.panic_window.min(tenth(stable_window)))?;
    if panic_window.is_zero() || panic_window > stable_window {
        return Err(invalid("scaling", "`panic_window` must be above zero and at most `stable_window`".into()));
    }
    Ok(Scaling {
        target_percent: percent("target_utilisation", raw.target_utilisation, d.target_percent, 0.1..=1.0)?,
        stable_window,
        panic_window,
        panic_percent: percent("panic_threshold", raw.panic_threshold, d.panic_percent, 1.1..=10.0)?,
    })
}

/// A tenth of `d` in whole milliseconds (what manifests can write).
fn tenth(d: Duration) -> Duration {
    Duration::from_millis((d.as_millis() / 10) as u64)
}

fn check_handler(runtime: RuntimeKind, handler: &str) -> Result<(), String> {
    if runtime == RuntimeKind::Provided {
        // Lambda's own limit; the value only reaches `_HANDLER`.
        if handler.len() > 128 || handler.chars().any(char::is_control) {
            return Err("must be at most 128 characters, without control characters".into());
        }
        return Ok(());
    }
    if handler.is_empty() {
        return Err("must not be empty".into());
    }
    match runtime {
        RuntimeKind::Python3 | RuntimeKind::Node => {
            let example = if runtime == RuntimeKind::Python3 { "main.handler" } else { "index.handler" };
            let (module, func) = handler
                .rsplit_once('.')
                .ok_or_else(|| format!("`{handler}` must be `module.function`, e.g. `{example}`"))?;
            let ident = |s: &str| {
                !s.is_empty()
                    && !s.starts_with(|c: char| c.is_ascii_digit())
                    && s.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '$')
            };
            let module_ok = !module.is_empty()
                && module.split(['/', '.']).all(|p| {
                    !p.is_empty() && p != ".." && p.chars().all(|c| c.is_ascii_alphanumeric() || "_-".contains(c))
                });
            if !module_ok || !ident(func) {
                return Err(format!("`{handler}` must be `module.function`, e.g. `{example}`"));
            }
            Ok(())
        }
        RuntimeKind::Exec | RuntimeKind::Http => shell_split_ok(handler),
        RuntimeKind::Sequence => Err("a sequence has no handler".into()),
        RuntimeKind::Provided => Ok(()),
    }
}

/// Exec and http handlers are command lines split like a shell would split
/// them (quotes, no expansion); an unbalanced quote is a manifest error.
fn shell_split_ok(handler: &str) -> Result<(), String> {
    let mut quote: Option<char> = None;
    let mut escaped = false;
    for c in handler.chars() {
        match (quote, c) {
            _ if escaped => escaped = false,
            (Some('\''), '\'') => quote = None,
            (Some('\''), _) => {}
            (_, '\\') => escaped = true,
            (Some('"'), '"') => quote = None,
            (None, '"' | '\'') => quote = Some(c),
            _ => {}
        }
    }
    match quote {
        Some(q) => Err(format!("`{handler}` has an unclosed {q} quote")),
        None => Ok(()),
    }
}

/// Bound of `[env]`, names and values together: the environment of every
/// process of the function, handed over on each exec (Lambda allows 4 KiB).
pub const MAX_ENV_BYTES: usize = 64 << 10;

/// An environment string ends at its first NUL: such a value would reach the
/// process cut short, or make it fail to start at every call.
fn check_env_value(key: &str, value: &str) -> Result<(), String> {
    if let Some(at) = value.find('\0') {
        return Err(format!("`{key}` has a NUL character (at byte {at}); environment values cannot hold one"));
    }
    Ok(())
}

fn check_env_key(key: &str) -> Result<(), String> {
    let ok = !key.is_empty()
        && !key.starts_with(|c: char| c.is_ascii_digit())
        && key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
    if !ok {
        return Err(format!("`{key}` is not a valid environment variable name"));
    }
    if key.starts_with("FLICK_") || key == "PORT" {
        return Err(format!("`{key}` is reserved by flick"));
    }
    Ok(())
}

/// Bound of `[params]` as JSON: they travel with every call that merges them.
pub const MAX_PARAMS_BYTES: usize = 64 << 10;

/// `[params]` checked and turned into JSON (dates, which JSON lacks, are refused).
fn params(
    raw: BTreeMap<String, toml::Value>,
    invalid: impl Fn(&str, String) -> ManifestError,
) -> Result<BTreeMap<String, serde_json::Value>, ManifestError> {
    let mut out = BTreeMap::new();
    for (key, value) in raw {
        let json = toml_to_json(&value).map_err(|e| invalid("params", format!("`{key}`: {e}")))?;
        out.insert(key, json);
    }
    let bytes = serde_json::to_vec(&out).map_or(0, |v| v.len());
    if bytes > MAX_PARAMS_BYTES {
        return Err(invalid("params", format!("take {bytes} bytes as JSON; the limit is {MAX_PARAMS_BYTES}")));
    }
    Ok(out)
}

fn toml_to_json(v: &toml::Value) -> Result<serde_json::Value, String> {
    use serde_json::Value as J;
    Ok(match v {
        toml::Value::String(s) => J::String(s.clone()),
        toml::Value::Integer(i) => J::from(*i),
        toml::Value::Float(f) => {
            serde_json::Number::from_f64(*f).map(J::Number).ok_or("nan and inf have no JSON form")?
        }
        toml::Value::Boolean(b) => J::Bool(*b),
        toml::Value::Datetime(_) => return Err("dates have no JSON form (write them as strings)".into()),
        toml::Value::Array(a) => J::Array(a.iter().map(toml_to_json).collect::<Result<_, _>>()?),
        toml::Value::Table(t) => {
            J::Object(t.iter().map(|(k, v)| Ok((k.clone(), toml_to_json(v)?))).collect::<Result<_, String>>()?)
        }
    })
}

/// `params` as a `[params]` section of a `flick.toml` (empty text for
/// none). Surfaces that generate manifests use it; `null` (TOML has no
/// such value) and integers beyond i64 are refused, naming the parameter.
pub fn params_toml(params: &BTreeMap<String, serde_json::Value>) -> Result<String, String> {
    if params.is_empty() {
        return Ok(String::new());
    }
    let mut out = String::from("\n[params]\n");
    for (key, value) in params {
        let v = json_to_toml(value).map_err(|e| format!("parameter `{key}`: {e}"))?;
        out.push_str(&format!("{} = {v}\n", toml_string(key)));
    }
    Ok(out)
}

fn json_to_toml(v: &serde_json::Value) -> Result<String, String> {
    use serde_json::Value as J;
    Ok(match v {
        J::Null => return Err("null values are not supported (leave the parameter out)".into()),
        J::Bool(b) => b.to_string(),
        J::Number(n) if n.is_i64() => n.to_string(),
        J::Number(n) if n.is_u64() => return Err(format!("{n} is beyond the 64-bit signed range")),
        J::Number(n) => {
            let f = n.as_f64().ok_or("not a number")?;
            // TOML floats need a fraction or an exponent.
            let text = format!("{f:?}");
            if text.contains(['.', 'e', 'E']) { text } else { format!("{text}.0") }
        }
        J::String(s) => toml_string(s),
        J::Array(a) => format!("[{}]", a.iter().map(json_to_toml).collect::<Result<Vec<_>, _>>()?.join(", ")),
        J::Object(o) => {
            let pairs = o
                .iter()
                .map(|(k, v)| Ok(format!("{} = {}", toml_string(k), json_to_toml(v)?)))
                .collect::<Result<Vec<_>, String>>()?;
            format!("{{ {} }}", pairs.join(", "))
        }
    })
}

/// 1-based line of a byte offset.
fn line_at(text: &str, offset: usize) -> usize {
    text[..offset.min(text.len())].matches('\n').count() + 1
}

/// The key assigned on a 1-based line (`key = …`), if the line is an assignment.
fn key_on_line(text: &str, line: usize) -> Option<String> {
    let (key, _) = text.lines().nth(line - 1)?.split_once('=')?;
    let key = key.trim().trim_matches('"');
    (!key.is_empty() && key.chars().all(|c| c.is_ascii_alphanumeric() || "_-.".contains(c))).then(|| key.to_string())
}

/// 1-based line where `key = …` (or the `[key]` table) is written, if it is.
fn line_of_key(text: &str, key: &str) -> Option<usize> {
    text.lines()
        .position(|l| {
            let l = l.trim_start();
            l.strip_prefix(key).is_some_and(|rest| rest.trim_start().starts_with('='))
                || l.starts_with(&format!("[{key}]"))
        })
        .map(|i| i + 1)
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ManifestError {
    #[error("{MANIFEST_FILE}{}: {}{message}", at_line(*line), key.as_ref().map(|k| format!("`{k}`: ")).unwrap_or_default())]
    Syntax { line: Option<usize>, key: Option<String>, message: String },
    #[error("{MANIFEST_FILE}{}: `{key}`: {message}", at_line(*line))]
    Invalid { line: Option<usize>, key: String, message: String },
}

fn at_line(line: Option<usize>) -> String {
    line.map(|l| format!(" line {l}")).unwrap_or_default()
}

mod duration_text {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&crate::units::format_duration(*d))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let text = String::deserialize(d)?;
        crate::units::parse_duration(&text).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str = "name = \"hello\"\nruntime = \"python3\"\nhandler = \"main.handler\"\n";

    #[test]
    fn fork_template_is_python3_only_and_on_unless_turned_off() {
        assert!(Manifest::parse(MINIMAL).unwrap().fork_template);
        let off = Manifest::parse(&format!("{MINIMAL}fork_template = false\n")).unwrap();
        assert!(!off.fork_template);
        assert!(!Manifest::parse(&off.to_toml()).unwrap().fork_template, "{}", off.to_toml());
        let node = "name = \"n\"\nruntime = \"node\"\nhandler = \"index.handler\"\nfork_template = false\n";
        let e = Manifest::parse(node).unwrap_err().to_string();
        assert!(e.contains("fork_template"), "{e}");
    }

    #[test]
    fn provided_and_lambda_ric() {
        let m = Manifest::parse("name = \"p\"\nruntime = \"provided.al2023\"\n").unwrap();
        assert_eq!((m.runtime, m.handler.as_str(), m.concurrency), (RuntimeKind::Provided, "", 1));
        assert_eq!(Manifest::parse(&m.to_toml()).unwrap(), m, "{}", m.to_toml());
        let m = Manifest::parse("name = \"p\"\nruntime = \"provided\"\nhandler = \"function.handler\"\n").unwrap();
        assert_eq!(m.handler, "function.handler");
        let m = Manifest::parse(&format!("{MINIMAL}lambda_ric = true\n")).unwrap();
        assert!(m.lambda_ric);
        assert_eq!(Manifest::parse(&m.to_toml()).unwrap(), m, "{}", m.to_toml());
        for (text, key) in [
            ("name = \"p\"\nruntime = \"provided\"\nconcurrency = 2\n", "concurrency"),
            (&format!("{MINIMAL}lambda_ric = true\nconcurrency = 4\n"), "concurrency"),
            ("name = \"p\"\nruntime = \"exec\"\nhandler = \"./x\"\nlambda_ric = true\n", "lambda_ric"),
            ("name = \"p\"\nruntime = \"sequence\"\nsteps = [\"a\"]\nlambda_ric = true\n", "lambda_ric"),
            ("name = \"p\"\nruntime = \"provided\"\nhandler = \"a\\nb\"\n", "handler"),
            ("name = \"p\"\nruntime = \"provided.al1\"\n", "runtime"),
        ] {
            let err = Manifest::parse(text).unwrap_err();
            assert!(err.to_string().contains(&format!("`{key}`")), "{text}: {err}");
        }
    }

    #[test]
    fn labels_and_annotations_are_kept_checked_and_shown() {
        let text = format!(
            "{MINIMAL}[labels]\n\"com.openfaas.scale.min\" = \"1\"\nteam = \"a\"\n\
             [annotations]\ntopic = \"x \\\"quoted\\\"\"\n"
        );
        let m = Manifest::parse(&text).unwrap();
        assert_eq!(m.labels.get("com.openfaas.scale.min").map(String::as_str), Some("1"));
        assert_eq!(m.annotations.get("topic").map(String::as_str), Some("x \"quoted\""));
        assert_eq!(Manifest::parse(&m.to_toml()).unwrap(), m, "{}", m.to_toml());
        let seq = "name = \"s\"\nruntime = \"sequence\"\nsteps = [\"a\"]\n[labels]\nk = \"v\"\n";
        let m = Manifest::parse(seq).unwrap();
        assert_eq!(Manifest::parse(&m.to_toml()).unwrap(), m, "{}", m.to_toml());

        for (bad, what) in [
            ("[labels]\n\"a b\" = \"1\"\n", "labels key `a b`"),
            ("[labels]\n\"\" = \"1\"\n", "labels key"),
            ("[annotations]\nk = \"a\\u0007\"\n", "control character"),
        ] {
            let err = Manifest::parse(&format!("{MINIMAL}{bad}")).unwrap_err().to_string();
            assert!(err.contains(what), "{bad}: {err}");
        }
        let many: String = (0..=MAX_TAGS).map(|i| format!("k{i} = \"v\"\n")).collect();
        let err = Manifest::parse(&format!("{MINIMAL}[labels]\n{many}")).unwrap_err().to_string();
        assert!(err.contains("the limit is 64"), "{err}");
    }

    #[test]
    fn defaults_are_filled_in() {
        let m = Manifest::parse(MINIMAL).unwrap();
        assert_eq!(m.name.as_str(), "hello");
        assert_eq!(m.runtime, RuntimeKind::Python3);
        assert_eq!(m.timeout, Duration::from_secs(30));
        assert_eq!(m.memory, 256 << 20);
        assert_eq!(m.concurrency, 1);
        assert_eq!(m.min_instances, 0);
        assert_eq!(m.max_instances, 10);
        assert_eq!(m.keep_alive, Duration::from_secs(600));
        assert!(!m.public);
        assert_eq!(m.network, Network::None);
        assert_eq!(m.tmp_size, 64 << 20);
    }

    #[test]
    fn params_and_web_parse_print_back_and_refuse_what_json_lacks() {
        let m = Manifest::parse(MINIMAL).unwrap();
        assert!(m.params.is_empty() && !m.web);
        let text = format!(
            "{MINIMAL}web = true\n[params]\nname = \"Ada\"\nn = 3\nf = 1.5\nlist = [1, \"two\", true]\nnested = {{ a = {{ b = 1 }} }}\n"
        );
        let m = Manifest::parse(&text).unwrap();
        assert!(m.web);
        assert_eq!(
            serde_json::to_value(&m.params).unwrap(),
            serde_json::json!({"name": "Ada", "n": 3, "f": 1.5, "list": [1, "two", true], "nested": {"a": {"b": 1}}})
        );
        assert_eq!(Manifest::parse(&m.to_toml()).unwrap(), m);
        // Surfaces generate `[params]` from JSON with the same rules.
        let section = params_toml(&m.params).unwrap();
        assert_eq!(Manifest::parse(&format!("{MINIMAL}{section}")).unwrap().params, m.params);
        let mut bad = BTreeMap::new();
        bad.insert("x".to_string(), serde_json::Value::Null);
        assert!(params_toml(&bad).unwrap_err().contains("`x`"));
        bad.insert("x".to_string(), serde_json::json!(u64::MAX));
        assert!(params_toml(&bad).is_err());
        match Manifest::parse(&format!("{MINIMAL}[params]\nwhen = 1979-05-27\n")) {
            Err(ManifestError::Invalid { key, message, .. }) => assert!(key == "params" && message.contains("`when`")),
            other => panic!("{other:?}"),
        }
        let big = format!("{MINIMAL}[params]\nx = \"{}\"\n", "y".repeat(MAX_PARAMS_BYTES));
        assert!(matches!(Manifest::parse(&big), Err(ManifestError::Invalid { key, .. }) if key == "params"));
        // Old revisions (stored before these keys) read with the defaults.
        let mut v = serde_json::to_value(Manifest::parse(MINIMAL).unwrap()).unwrap();
        v.as_object_mut().unwrap().remove("params");
        assert!(serde_json::from_value::<Manifest>(v).unwrap().params.is_empty());
    }

    #[test]
    fn retries_and_max_queued_default_bound_and_name_their_line() {
        let m = Manifest::parse(MINIMAL).unwrap();
        assert_eq!((m.retries, m.max_queued), (2, None));
        let m = Manifest::parse(&format!("{MINIMAL}retries = 0\nmax_queued = 50\n")).unwrap();
        assert_eq!((m.retries, m.max_queued), (0, Some(50)));
        assert_eq!(Manifest::parse(&m.to_toml()).unwrap(), m);
        for (extra, key) in [("retries = 11", "retries"), ("retries = -1", "retries"), ("max_queued = 0", "max_queued")]
        {
            match Manifest::parse(&format!("{MINIMAL}{extra}\n")) {
                Err(ManifestError::Invalid { line: Some(4), key: k, .. }) => assert_eq!(k, key),
                other => panic!("{extra}: {other:?}"),
            }
        }
        assert!(Manifest::parse(&format!("{MINIMAL}retry = 3\n")).is_err(), "unknown keys stay rejected");
        // Revisions stored before these keys existed read with the defaults.
        let mut json = serde_json::to_value(Manifest::parse(MINIMAL).unwrap()).unwrap();
        json.as_object_mut().unwrap().remove("retries");
        assert_eq!(serde_json::from_value::<Manifest>(json).unwrap().retries, 2);
    }

    #[test]
    fn shape_defaults_to_auto_is_checked_and_names_its_line() {
        assert_eq!(Manifest::parse(MINIMAL).unwrap().shape, Shape::Auto);
        for shape in Shape::ALL {
            let m = Manifest::parse(&format!("{MINIMAL}shape = \"{shape}\"\n")).unwrap();
            assert_eq!(m.shape, shape);
            assert_eq!(Manifest::parse(&m.to_toml()).unwrap(), m);
        }
        let node = "name = \"n\"\nruntime = \"node\"\nhandler = \"index.handler\"\n";
        assert_eq!(Manifest::parse(&format!("{node}shape = \"openfaas\"\n")).unwrap().shape, Shape::Openfaas);
        assert_eq!(Manifest::parse(&format!("{node}shape = \"gcf\"\n")).unwrap().shape, Shape::Gcf);
        let exec = "name = \"e\"\nruntime = \"exec\"\nhandler = \"./run\"\n";
        let seq = "name = \"s\"\nruntime = \"sequence\"\nsteps = [\"a\"]\n";
        for (text, needle) in [
            (format!("{MINIMAL}shape = \"aws\"\n"), "unknown shape `aws`"),
            (format!("{MINIMAL}shape = \"Lambda\"\n"), "unknown shape"),
            (format!("{exec}shape = \"lambda\"\n"), "no meaning for runtime `exec`"),
            (format!("{seq}shape = \"lambda\"\n"), "no meaning for a sequence"),
        ] {
            match Manifest::parse(&text) {
                Err(e @ ManifestError::Invalid { line: Some(4), .. }) => {
                    let shown = e.to_string();
                    assert!(shown.contains("line 4: `shape`") && shown.contains(needle), "{shown}");
                }
                other => panic!("{text}: {other:?}"),
            }
        }
        // Revisions stored before the key existed read as auto; auto is not stored.
        let json = serde_json::to_value(Manifest::parse(MINIMAL).unwrap()).unwrap();
        assert!(json.get("shape").is_none());
        assert_eq!(serde_json::from_value::<Manifest>(json).unwrap().shape, Shape::Auto);
    }

    #[test]
    fn scaling_defaults_follow_keep_alive_and_can_be_overridden() {
        let m = Manifest::parse(&format!("{MINIMAL}keep_alive = \"20s\"\n")).unwrap();
        assert_eq!(m.scaling.stable_window, Duration::from_secs(20), "capped at keep_alive");
        assert_eq!(m.scaling.panic_window, Duration::from_secs(2));
        assert_eq!((m.scaling.target_percent, m.scaling.panic_percent), (70, 200));
        let text = format!(
            "{MINIMAL}[scaling]\ntarget_utilisation = 0.5\nstable_window = \"30s\"\npanic_window = \"3s\"\npanic_threshold = 3.0\n"
        );
        let m = Manifest::parse(&text).unwrap();
        assert_eq!(m.scaling.target_percent, 50);
        assert_eq!(m.scaling.stable_window, Duration::from_secs(30));
        assert_eq!(m.scaling.panic_window, Duration::from_secs(3));
        assert_eq!(m.scaling.panic_percent, 300);
        assert_eq!(Manifest::parse(&m.to_toml()).unwrap(), m);
        for bad in ["target_utilisation = 2.0", "panic_window = \"2m\"", "panic_threshold = 0.5", "surge = 1"] {
            assert!(Manifest::parse(&format!("{MINIMAL}[scaling]\n{bad}\n")).is_err(), "{bad}");
        }
    }

    #[test]
    fn default_panic_window_is_whole_milliseconds() {
        // Found by tests/fuzz_manifest.rs: 221ms / 10 gave 22.1ms, shown as "22ms".
        let m = Manifest::parse(&format!("{MINIMAL}keep_alive = \"221ms\"\n")).unwrap();
        assert_eq!(m.scaling.panic_window, Duration::from_millis(22));
        assert_eq!(Manifest::parse(&m.to_toml()).unwrap(), m);
    }

    #[test]
    fn network_defaults_and_rules() {
        let http = "name = \"w\"\nruntime = \"http\"\nhandler = \"./server\"\n";
        assert_eq!(Manifest::parse(http).unwrap().network, Network::None, "closed by default, servers too");
        let m = Manifest::parse(&format!("{MINIMAL}network = \"host\"\ntmp_size = \"8MiB\"\n")).unwrap();
        assert_eq!((m.network, m.tmp_size), (Network::Host, 8 << 20));
        assert!(Manifest::parse(&format!("{MINIMAL}network = \"bridge\"\n")).is_err());
    }

    #[test]
    fn every_key_parses_and_round_trips() {
        let text = "name = \"sha\"\nruntime = \"exec\"\nhandler = \"sha512sum\"\ntimeout = \"5s\"\n\
                    memory = \"128MiB\"\nconcurrency = 4\nmin_instances = 1\nmax_instances = 3\n\
                    keep_alive = \"2m\"\npublic = true\n[env]\nGREETING = \"hi\"\n";
        let m = Manifest::parse(text).unwrap();
        assert_eq!(m.timeout, Duration::from_secs(5));
        assert_eq!(m.memory, 128 << 20);
        assert_eq!((m.concurrency, m.min_instances, m.max_instances), (4, 1, 3));
        assert_eq!(m.keep_alive, Duration::from_secs(120));
        assert!(m.public);
        assert_eq!(m.env["GREETING"], "hi");
        assert_eq!(Manifest::parse(&m.to_toml()).unwrap(), m);
        let json = serde_json::to_string(&m).unwrap();
        assert_eq!(serde_json::from_str::<Manifest>(&json).unwrap(), m);
    }

    #[test]
    fn to_toml_round_trips_any_string() {
        // Found by tests/fuzz_manifest.rs: `{:?}` wrote `\u{20d0}`, which is not TOML.
        let mut m = Manifest::parse("name = \"x\"\nruntime = \"exec\"\nhandler = \"echo \\u0301 \\\"\\\"\"\n").unwrap();
        for value in ["\u{20d0}", "a\u{1}b\u{7f}", "tab\tnew\nline", "quote \" back \\ '", "é\u{9c}"] {
            m.env.insert("V".into(), value.into());
            assert_eq!(Manifest::parse(&m.to_toml()).as_ref(), Ok(&m), "{}", m.to_toml());
        }
    }

    #[test]
    fn unknown_key_names_key_and_line() {
        let err = Manifest::parse(&format!("{MINIMAL}time_out = \"5s\"\n")).unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("line 4"), "{msg}");
        assert!(msg.contains("time_out"), "{msg}");
    }

    #[test]
    fn syntax_error_names_line() {
        let err = Manifest::parse("name = \"a\"\nruntime = \n").unwrap_err();
        assert!(matches!(err, ManifestError::Syntax { line: Some(2), .. }), "{err}");
    }

    #[test]
    fn missing_required_key_is_named() {
        let err = Manifest::parse("name = \"a\"\nruntime = \"exec\"\n").unwrap_err();
        assert!(err.to_string().contains("handler"), "{err}");
    }

    #[test]
    fn bad_values_name_key_and_line() {
        let cases = [
            ("name = \"Bad.Name\"\nruntime = \"exec\"\nhandler = \"cat\"\n", "name", 1),
            ("name = \"a\"\nruntime = \"ruby\"\nhandler = \"x\"\n", "runtime", 2),
            ("name = \"a\"\nruntime = \"python3\"\nhandler = \"nodot\"\n", "handler", 3),
            ("name = \"a\"\nruntime = \"exec\"\nhandler = \"echo 'x\"\n", "handler", 3),
            (&format!("{MINIMAL}timeout = \"soon\"\n"), "timeout", 4),
            (&format!("{MINIMAL}timeout = \"1h\"\n"), "timeout", 4),
            (&format!("{MINIMAL}memory = \"1KiB\"\n"), "memory", 4),
            (&format!("{MINIMAL}concurrency = 0\n"), "concurrency", 4),
            (&format!("{MINIMAL}min_instances = 5\nmax_instances = 2\n"), "max_instances", 5),
            (&format!("{MINIMAL}[env]\nFLICK_X = \"1\"\n"), "env", 4),
            (&format!("{MINIMAL}[env]\n\"A B\" = \"1\"\n"), "env", 4),
            (&format!("{MINIMAL}[env]\nA = \"x\\u0000y\"\n"), "env", 4),
            (&format!("{MINIMAL}[env]\nA = \"{}\"\n", "x".repeat(MAX_ENV_BYTES)), "env", 4),
        ];
        for (text, key, line) in cases {
            match Manifest::parse(text) {
                Err(ManifestError::Invalid { key: k, line: l, .. }) => {
                    assert_eq!((k.as_str(), l), (key, Some(line)), "{text}")
                }
                other => panic!("{text}: expected invalid `{key}`, got {other:?}"),
            }
        }
    }

    #[test]
    fn sequences_have_steps_and_nothing_about_instances() {
        let text = "name = \"pipe\"\nruntime = \"sequence\"\nsteps = [\"a\", \"b-2\", \"a\"]\ntimeout = \"5s\"\npublic = true\n";
        let m = Manifest::parse(text).unwrap();
        assert_eq!(m.runtime, RuntimeKind::Sequence);
        assert_eq!(m.steps.iter().map(|s| s.as_str()).collect::<Vec<_>>(), ["a", "b-2", "a"]);
        assert_eq!((m.timeout, m.public, m.min_instances), (Duration::from_secs(5), true, 0));
        assert_eq!(Manifest::parse(&m.to_toml()).unwrap(), m);
        let json = serde_json::to_string(&m).unwrap();
        assert_eq!(serde_json::from_str::<Manifest>(&json).unwrap(), m);
        // Manifests stored before sequences existed still load.
        let plain = Manifest::parse(MINIMAL).unwrap();
        assert!(!serde_json::to_string(&plain).unwrap().contains("steps"));

        let seq = "name = \"pipe\"\nruntime = \"sequence\"\n";
        let cases = [
            (format!("{seq}steps = []\n"), "steps", 3),
            (format!("{seq}steps = [\"B.d\"]\n"), "steps", 3),
            (format!("{seq}steps = [\"a\", \"pipe\"]\n"), "steps", 3),
            (format!("{seq}steps = {:?}\n", vec!["a"; MAX_STEPS + 1]), "steps", 3),
            (format!("{seq}steps = [\"a\"]\nhandler = \"x\"\n"), "handler", 4),
            (format!("{seq}steps = [\"a\"]\nmemory = \"1GiB\"\n"), "memory", 4),
            (format!("{seq}steps = [\"a\"]\n[env]\nA = \"1\"\n"), "env", 4),
            (format!("{seq}steps = [\"a\"]\ntimeout = \"1h\"\n"), "timeout", 4),
            (seq.to_string(), "runtime", 2),
            (format!("{MINIMAL}steps = [\"a\"]\n"), "steps", 4),
        ];
        for (text, key, line) in cases {
            match Manifest::parse(&text) {
                Err(ManifestError::Invalid { key: k, line: l, .. }) => {
                    assert_eq!((k.as_str(), l), (key, Some(line)), "{text}")
                }
                other => panic!("{text}: expected invalid `{key}`, got {other:?}"),
            }
        }
        assert!(Manifest::parse(&format!("{seq}steps = \"a\"\n")).is_err(), "steps is a list");
    }

    #[test]
    fn triggers_parse_with_defaults_and_round_trip() {
        let text = format!(
            "{MINIMAL}\n[[triggers]]\ntype = \"cron\"\nschedule = \"*/10 * * * * *\"\n\n[[triggers]]\ntype = \"cron\"\nname = \"nightly\"\nschedule = \"0 0 3 * * *\"\ntimezone = \"Europe/Rome\"\n\n\
             [[triggers]]\ntype = \"mqtt\"\nurl = \"mqtt://127.0.0.1:1883\"\ntopic = \"sensors/+/temperature\"\n\n\
             [[triggers]]\ntype = \"nats\"\nurl = \"nats://127.0.0.1:4222\"\nsubject = \"orders.*\"\nstream = \"ORDERS\"\nconsumer = \"flick-orders\"\n\n\
             [[triggers]]\ntype = \"cloudevents\"\nfilter = {{ type = \"com.example.created\", source = \"/shop\" }}\n"
        );
        let m = Manifest::parse(&text).unwrap();
        let names: Vec<&str> = m.triggers.iter().map(|t| t.name.as_str()).collect();
        assert_eq!(names, ["cron-1", "nightly", "mqtt-1", "nats-1", "cloudevents-1"]);
        assert_eq!(m.triggers[0].kind, TriggerKind::Cron { schedule: "*/10 * * * * *".into(), timezone: "UTC".into() });
        assert!(matches!(&m.triggers[2].kind, TriggerKind::Mqtt { qos: 1, .. }), "qos 1 by default");
        assert_eq!(Manifest::parse(&m.to_toml()).unwrap(), m, "{}", m.to_toml());
        let json = serde_json::to_string(&m).unwrap();
        assert_eq!(serde_json::from_str::<Manifest>(&json).unwrap(), m);
        assert!(!serde_json::to_string(&Manifest::parse(MINIMAL).unwrap()).unwrap().contains("triggers"));
    }

    #[test]
    fn bad_triggers_name_key_and_line() {
        let t = |body: &str| format!("{MINIMAL}[[triggers]]\n{body}");
        let cases = [
            (t("type = \"kafka\"\n"), "triggers.type", 5),
            (t("type = \"cron\"\nschedule = \"* * *\"\n"), "triggers.schedule", 6),
            (t("type = \"cron\"\nschedule = \"* * * * * *\"\ntimezone = \"Mars/Olympus\"\n"), "triggers.timezone", 7),
            (t("type = \"cron\"\n"), "triggers.schedule", 4),
            (t("type = \"cron\"\nschedule = \"* * * * * *\"\ntopic = \"a\"\n"), "triggers.topic", 7),
            (t("type = \"mqtt\"\nurl = \"http://x\"\ntopic = \"a\"\n"), "triggers.url", 6),
            (t("type = \"mqtt\"\nurl = \"mqtt://x\"\ntopic = \"a/#/b\"\n"), "triggers.topic", 7),
            (t("type = \"mqtt\"\nurl = \"mqtt://x\"\ntopic = \"a\"\nqos = 3\n"), "triggers.qos", 8),
            (t("type = \"nats\"\nurl = \"nats://x\"\nsubject = \"a b\"\n"), "triggers.subject", 7),
            (t("type = \"nats\"\nurl = \"nats://x\"\nsubject = \"a\"\nstream = \"S\"\n"), "triggers.stream", 8),
            (t("type = \"cloudevents\"\nfilter = { Type = \"x\" }\n"), "triggers.filter", 6),
            (t("type = \"cron\"\nname = \"Bad Name\"\nschedule = \"* * * * * *\"\n"), "triggers.name", 6),
            (
                format!(
                    "{}[[triggers]]\ntype = \"cron\"\nschedule = \"* * * * * *\"\nname = \"cron-1\"\n",
                    t("type = \"cron\"\nschedule = \"* * * * * *\"\n")
                ),
                "triggers.name",
                10,
            ),
        ];
        for (text, key, line) in cases {
            match Manifest::parse(&text) {
                Err(ManifestError::Invalid { key: k, line: l, message }) => {
                    assert_eq!((k.as_str(), l), (key, Some(line)), "{text}\n{message}")
                }
                other => panic!("{text}: expected invalid `{key}`, got {other:?}"),
            }
        }
        let err = Manifest::parse(&t("type = \"cron\"\nschedule = \"* * * * * *\"\nsurprise = 1\n")).unwrap_err();
        assert!(matches!(err, ManifestError::Syntax { line: Some(7), .. }), "{err}");
        assert!(err.to_string().contains("surprise"), "{err}");
        let err = Manifest::parse(&t("schedule = \"* * * * * *\"\n")).unwrap_err();
        assert!(err.to_string().contains("type"), "{err}");
    }

    #[test]
    fn wrong_type_is_a_clear_error() {
        let err = Manifest::parse(&format!("{MINIMAL}concurrency = \"many\"\n")).unwrap_err();
        assert!(matches!(err, ManifestError::Syntax { line: Some(4), .. }), "{err}");
        assert!(err.to_string().contains("`concurrency`"), "{err}");
        let err = Manifest::parse("name = \"a\"\nruntime = \"python3\"\nhandler = main.handler\n").unwrap_err();
        assert!(err.to_string().contains("line 3: `handler`"), "{err}");
    }
}
