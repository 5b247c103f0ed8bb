//! What both stores put in their columns and how it reads back: the column
//! lists, the row shapes and their encodings (logs through `logcodec`,
//! JSON text columns, ids and enums as text), so SQLite and PostgreSQL
//! cannot drift apart. Each store only moves values between its driver and
//! these rows.

use flick_core::{Activation, ActivationId, ActivationStatus, Cause, FunctionInfo, Manifest, Revision};

use crate::{Rule, RuleTrigger, StoreError, logcodec};

pub(crate) const DEFAULT_LIMIT: u32 = 100;
pub(crate) const MAX_LIMIT: u32 = 1000;

/// A query's `limit`: 0 means the default, and no query returns more than
/// [`MAX_LIMIT`].
pub(crate) fn effective_limit(limit: u32) -> u32 {
    match limit {
        0 => DEFAULT_LIMIT,
        n => n.min(MAX_LIMIT),
    }
}

/// Per-record bytes on top of response and logs (columns, index entries),
/// for estimating how much room a record needs. Errs high, so a batch fits.
const RECORD_OVERHEAD: u64 = 512;

/// About what a record takes in the database.
pub(crate) fn record_bytes(a: &Activation) -> u64 {
    let logs: usize = a.logs.iter().map(|l| l.text.len() + 13).sum();
    (a.response.len() + logs) as u64 + RECORD_OVERHEAD
}

pub(crate) fn corrupt(what: String, detail: impl ToString) -> StoreError {
    StoreError::Corrupt { what, detail: detail.to_string() }
}

pub(crate) fn json_column(what: &str, text: &str) -> Result<serde_json::Value, StoreError> {
    serde_json::from_str(text).map_err(|e| corrupt(what.into(), e))
}

/// A stored number that must fit its type (a revision number, a status).
fn fits<T: TryFrom<i64>>(what: impl Fn() -> String, field: &str, v: i64) -> Result<T, StoreError> {
    T::try_from(v).map_err(|_| corrupt(what(), format!("{field} {v} is out of range")))
}

pub(crate) const REVISION_COLUMNS: &str = "id, function, number, hash, manifest_json, created_ms, code_size";

/// A row of `revisions`, in [`REVISION_COLUMNS`] order.
pub(crate) struct RevisionRow {
    pub id: i64,
    pub function: String,
    pub number: i64,
    pub hash: String,
    pub manifest_json: String,
    pub created_ms: i64,
    pub code_size: i64,
}

impl RevisionRow {
    pub fn decode(self) -> Result<Revision, StoreError> {
        let what = || format!("`{}` revision {}", self.function, self.number);
        let manifest =
            serde_json::from_str(&self.manifest_json).map_err(|e| corrupt(format!("manifest of {}", what()), e))?;
        Ok(Revision {
            id: fits(what, "id", self.id)?,
            number: fits(what, "number", self.number)?,
            code_size: fits(what, "code size", self.code_size)?,
            function: self.function,
            hash: self.hash,
            manifest,
            created_ms: self.created_ms,
        })
    }
}

/// Functions with what their current revision says: [`FunctionRow`]'s columns.
pub(crate) const FUNCTION_SELECT: &str = "
    SELECT f.name, f.current_revision, f.created_ms, f.updated_ms,
           (SELECT MAX(number) FROM revisions WHERE function = f.name),
           r.hash, r.manifest_json
    FROM functions f
    LEFT JOIN revisions r ON r.function = f.name AND r.number = f.current_revision";

pub(crate) struct FunctionRow {
    pub name: String,
    pub current_revision: i64,
    pub created_ms: i64,
    pub updated_ms: i64,
    pub latest_revision: Option<i64>,
    pub hash: Option<String>,
    pub manifest_json: Option<String>,
}

impl FunctionRow {
    pub fn decode(self) -> Result<FunctionInfo, StoreError> {
        let name = self.name;
        let what = || format!("function `{name}`");
        let current = self.current_revision;
        let (Some(latest), Some(hash), Some(json)) = (self.latest_revision, self.hash, self.manifest_json) else {
            return Err(corrupt(what(), format!("current revision {current} is missing")));
        };
        let manifest: Manifest =
            serde_json::from_str(&json).map_err(|e| corrupt(format!("manifest of `{name}` revision {current}"), e))?;
        Ok(FunctionInfo {
            runtime: manifest.runtime,
            public: manifest.public,
            current_revision: fits(what, "current revision", current)?,
            latest_revision: fits(what, "latest revision", latest)?,
            hash,
            created_ms: self.created_ms,
            updated_ms: self.updated_ms,
            name,
        })
    }
}

pub(crate) const RULE_TRIGGER_SELECT: &str =
    "SELECT name, params_json, annotations_json, feed_json, created_ms, updated_ms FROM rule_triggers";
pub(crate) const RULE_SELECT: &str =
    "SELECT name, trigger, action, active, annotations_json, created_ms, updated_ms FROM rules";

/// A row of `rule_triggers`, in [`RULE_TRIGGER_SELECT`] order.
pub(crate) struct RuleTriggerRow {
    pub name: String,
    pub params_json: String,
    pub annotations_json: String,
    pub feed_json: Option<String>,
    pub created_ms: i64,
    pub updated_ms: i64,
}

impl RuleTriggerRow {
    pub fn decode(self) -> Result<RuleTrigger, StoreError> {
        let serde_json::Value::Object(params) = json_column("trigger parameters", &self.params_json)? else {
            return Err(corrupt("trigger parameters".into(), "not an object"));
        };
        Ok(RuleTrigger {
            params,
            annotations: json_column("trigger annotations", &self.annotations_json)?,
            feed: self.feed_json.as_deref().map(|f| json_column("trigger feed", f)).transpose()?,
            name: self.name,
            created_ms: self.created_ms,
            updated_ms: self.updated_ms,
        })
    }
}

/// What a rule trigger's JSON columns hold: params, annotations, feed.
pub(crate) fn rule_trigger_json(t: &RuleTrigger) -> (String, String, Option<String>) {
    (
        serde_json::Value::Object(t.params.clone()).to_string(),
        t.annotations.to_string(),
        t.feed.as_ref().map(|f| f.to_string()),
    )
}

/// A row of `rules`, in [`RULE_SELECT`] order.
pub(crate) struct RuleRow {
    pub name: String,
    pub trigger: String,
    pub action: String,
    pub active: bool,
    pub annotations_json: String,
    pub created_ms: i64,
    pub updated_ms: i64,
}

impl RuleRow {
    pub fn decode(self) -> Result<Rule, StoreError> {
        Ok(Rule {
            annotations: json_column("rule annotations", &self.annotations_json)?,
            name: self.name,
            trigger: self.trigger,
            action: self.action,
            active: self.active,
            created_ms: self.created_ms,
            updated_ms: self.updated_ms,
        })
    }
}

/// Every column of `activations` but `seq`, in the order of
/// [`activation_values!`] (and, after `seq`, of [`activation_row!`]).
pub(crate) const ACTIVATION_INSERT_COLUMNS: &str = "id, function, revision, start_ms, end_ms, duration_ms, \
     init_ms, wait_ms, cold, status, http_status, response, response_truncated, logs, logs_truncated, exec_ms, prewarmed, \
     revision_id, cause, trigger, attempt, max_attempts, attempts_json, parent, caller_gave_up_ms, callback_json, \
     memory_mb, cpu_ms, memory_peak_bytes, trace_id, span_id, parent_span_id, traceparent";

/// How many values [`activation_values!`] gives.
pub(crate) const ACTIVATION_VALUES: usize = 33;

/// An activation record as its columns hold it. The response stays a
/// `String` here; a store whose column is bytes converts it itself.
#[derive(Debug)]
pub(crate) struct ActivationRow {
    pub seq: i64,
    pub id: String,
    pub function: String,
    pub revision: i64,
    pub start_ms: i64,
    pub end_ms: i64,
    pub duration_ms: f64,
    pub init_ms: f64,
    pub wait_ms: f64,
    pub cold: bool,
    pub status: String,
    pub http_status: i64,
    pub response: String,
    pub response_truncated: bool,
    pub logs: Vec<u8>,
    pub logs_truncated: bool,
    pub exec_ms: f64,
    pub prewarmed: bool,
    pub revision_id: i64,
    pub cause: String,
    pub trigger: Option<String>,
    pub attempt: i64,
    pub max_attempts: i64,
    pub attempts_json: String,
    pub parent: Option<String>,
    pub caller_gave_up_ms: Option<f64>,
    pub callback_json: Option<String>,
    pub memory_mb: i64,
    pub cpu_ms: Option<f64>,
    pub memory_peak_bytes: Option<i64>,
    pub trace_id: Option<String>,
    pub span_id: Option<String>,
    pub parent_span_id: Option<String>,
    pub traceparent: Option<String>,
}

/// Reads an [`ActivationRow`] from a driver row whose columns are `seq`
/// and then [`ACTIVATION_INSERT_COLUMNS`]: `activation_row!(row.get,
/// response = expr)` calls `row.get(i)?` for every other column.
macro_rules! activation_row {
    ($row:ident . $get:ident, response = $response:expr) => {
        $crate::rows::ActivationRow {
            seq: $row.$get(0)?,
            id: $row.$get(1)?,
            function: $row.$get(2)?,
            revision: $row.$get(3)?,
            start_ms: $row.$get(4)?,
            end_ms: $row.$get(5)?,
            duration_ms: $row.$get(6)?,
            init_ms: $row.$get(7)?,
            wait_ms: $row.$get(8)?,
            cold: $row.$get(9)?,
            status: $row.$get(10)?,
            http_status: $row.$get(11)?,
            response: $response,
            response_truncated: $row.$get(13)?,
            logs: $row.$get(14)?,
            logs_truncated: $row.$get(15)?,
            exec_ms: $row.$get(16)?,
            prewarmed: $row.$get(17)?,
            revision_id: $row.$get(18)?,
            cause: $row.$get(19)?,
            trigger: $row.$get(20)?,
            attempt: $row.$get(21)?,
            max_attempts: $row.$get(22)?,
            attempts_json: $row.$get(23)?,
            parent: $row.$get(24)?,
            caller_gave_up_ms: $row.$get(25)?,
            callback_json: $row.$get(26)?,
            memory_mb: $row.$get(27)?,
            cpu_ms: $row.$get(28)?,
            memory_peak_bytes: $row.$get(29)?,
            trace_id: $row.$get(30)?,
            span_id: $row.$get(31)?,
            parent_span_id: $row.$get(32)?,
            traceparent: $row.$get(33)?,
        }
    };
}
pub(crate) use activation_row;

/// The values of an [`ActivationRow`] in [`ACTIVATION_INSERT_COLUMNS`]
/// order, as an array of the driver's parameter type (give it one:
/// `let v: [&dyn ToSql; ACTIVATION_VALUES] = activation_values!(r, response = …)`).
macro_rules! activation_values {
    ($r:ident, response = $response:expr) => {
        [
            &$r.id,
            &$r.function,
            &$r.revision,
            &$r.start_ms,
            &$r.end_ms,
            &$r.duration_ms,
            &$r.init_ms,
            &$r.wait_ms,
            &$r.cold,
            &$r.status,
            &$r.http_status,
            $response,
            &$r.response_truncated,
            &$r.logs,
            &$r.logs_truncated,
            &$r.exec_ms,
            &$r.prewarmed,
            &$r.revision_id,
            &$r.cause,
            &$r.trigger,
            &$r.attempt,
            &$r.max_attempts,
            &$r.attempts_json,
            &$r.parent,
            &$r.caller_gave_up_ms,
            &$r.callback_json,
            &$r.memory_mb,
            &$r.cpu_ms,
            &$r.memory_peak_bytes,
            &$r.trace_id,
            &$r.span_id,
            &$r.parent_span_id,
            &$r.traceparent,
        ]
    };
}
pub(crate) use activation_values;

impl ActivationRow {
    /// The columns of a record about to be stored (`seq` is the store's).
    pub fn encode(a: &Activation) -> Self {
        Self {
            seq: 0,
            id: a.id.as_str().to_string(),
            function: a.function.clone(),
            revision: a.revision.into(),
            start_ms: a.start_ms,
            end_ms: a.end_ms,
            duration_ms: a.duration_ms,
            init_ms: a.init_ms,
            wait_ms: a.wait_ms,
            cold: a.cold,
            status: a.status.as_str().to_string(),
            http_status: a.http_status.into(),
            response: a.response.clone(),
            response_truncated: a.response_truncated,
            logs: logcodec::encode(&a.logs),
            logs_truncated: a.logs_truncated,
            exec_ms: a.exec_ms,
            prewarmed: a.prewarmed,
            revision_id: a.revision_id.min(i64::MAX as u64) as i64,
            cause: a.cause.as_str().to_string(),
            trigger: a.trigger.clone(),
            attempt: a.attempt.into(),
            max_attempts: a.max_attempts.into(),
            attempts_json: serde_json::to_string(&a.attempts).unwrap_or_else(|_| "[]".into()),
            parent: a.parent.as_ref().map(|p| p.as_str().to_string()),
            caller_gave_up_ms: a.caller_gave_up_ms,
            callback_json: a.callback.as_ref().and_then(|c| serde_json::to_string(c).ok()),
            memory_mb: a.memory_mb.into(),
            cpu_ms: a.cpu_ms,
            memory_peak_bytes: a.memory_peak_bytes.map(|b| b.min(i64::MAX as u64) as i64),
            trace_id: a.trace_id.clone(),
            span_id: a.span_id.clone(),
            parent_span_id: a.parent_span_id.clone(),
            traceparent: a.traceparent.clone(),
        }
    }

    pub fn decode(self) -> Result<Activation, StoreError> {
        let id = self.id;
        let what = || format!("activation {id}");
        let Some(parsed_id) = ActivationId::parse(&id) else {
            return Err(corrupt(what(), "malformed id"));
        };
        let Some(status) = ActivationStatus::parse(&self.status) else {
            return Err(corrupt(what(), format!("unknown status `{}`", self.status)));
        };
        let Some(cause) = Cause::parse(&self.cause) else {
            return Err(corrupt(what(), format!("unknown cause `{}`", self.cause)));
        };
        let attempts =
            serde_json::from_str(&self.attempts_json).map_err(|e| corrupt(what(), format!("attempts: {e}")))?;
        let parent = match self.parent {
            None => None,
            Some(p) => Some(ActivationId::parse(&p).ok_or_else(|| corrupt(what(), "malformed parent id"))?),
        };
        let callback = match self.callback_json {
            None => None,
            Some(text) => Some(serde_json::from_str(&text).map_err(|e| corrupt(what(), format!("callback: {e}")))?),
        };
        let logs = logcodec::decode(&self.logs).map_err(|e| corrupt(what(), format!("logs: {e}")))?;
        Ok(Activation {
            seq: self.seq,
            function: self.function,
            revision: fits(what, "revision", self.revision)?,
            start_ms: self.start_ms,
            end_ms: self.end_ms,
            duration_ms: self.duration_ms,
            init_ms: self.init_ms,
            wait_ms: self.wait_ms,
            cold: self.cold,
            status,
            http_status: fits(what, "http status", self.http_status)?,
            response: self.response,
            response_truncated: self.response_truncated,
            logs,
            logs_truncated: self.logs_truncated,
            exec_ms: self.exec_ms,
            prewarmed: self.prewarmed,
            revision_id: self.revision_id.max(0) as u64,
            cause,
            trigger: self.trigger,
            attempt: fits(what, "attempt", self.attempt)?,
            max_attempts: fits(what, "max attempts", self.max_attempts)?,
            attempts,
            parent,
            caller_gave_up_ms: self.caller_gave_up_ms,
            callback,
            memory_mb: fits(what, "memory", self.memory_mb)?,
            cpu_ms: self.cpu_ms,
            memory_peak_bytes: self.memory_peak_bytes.map(|b| b.max(0) as u64),
            trace_id: self.trace_id,
            span_id: self.span_id,
            parent_span_id: self.parent_span_id,
            traceparent: self.traceparent,
            id: parsed_id,
        })
    }
}

/// What one call adds to its function's `usage_daily` row.
pub(crate) struct UsageDelta {
    pub errors: i64,
    pub cold_starts: i64,
    pub billed_ms: i64,
    pub billed_mib_ms: i64,
    pub measured_byte_ms: f64,
    pub cpu_ms: f64,
}

impl UsageDelta {
    pub fn of(a: &Activation) -> Self {
        let billed = a.billed_ms().min(i64::MAX as u64) as i64;
        Self {
            errors: i64::from(a.status != ActivationStatus::Success),
            cold_starts: i64::from(a.cold),
            billed_ms: billed,
            billed_mib_ms: i64::from(a.memory_mb).saturating_mul(billed),
            measured_byte_ms: a.memory_peak_bytes.unwrap_or(0) as f64 * billed as f64,
            cpu_ms: a.cpu_ms.unwrap_or(0.0),
        }
    }
}
