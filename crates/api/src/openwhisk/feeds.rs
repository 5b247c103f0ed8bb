//! Feeds: OpenWhisk's `/whisk.system/alarms/{alarm,interval,once}` actions,
//! which clients invoke with `lifecycleEvent` (`CREATE`, `UPDATE`, `READ`,
//! `DELETE`) and `triggerName` to attach an event source to a trigger (the
//! npm client's `ow.feeds.create`, `wsk trigger create --feed`). They map
//! onto the platform's alarms (`flick_platform::Alarm`), which fire the
//! trigger on a cron schedule, every n minutes, or once. Other feeds (and
//! other `whisk.system` actions) do not exist in flick: 404 naming the ones
//! that do. The answer is the activation of a blocking invoke: 200, or 502
//! with `{error}` as its result when the feed refuses the parameters.

use axum::Json;
use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::{Method, Request, StatusCode};
use axum::response::{IntoResponse, Response};
use flick_core::{ActivationId, now_ms};
use flick_platform::{Alarm, AlarmSchedule, PlatformError, RuleTrigger};
use serde_json::{Map, Value, json};

use super::actions::{flag, no_packages};
use super::invoke::{InvokeParams, params_object, with_id};
use super::{OwError, OwResult, authorize, shown};
use crate::AppState;

/// The namespace of OpenWhisk's system packages.
const SYSTEM: &str = "whisk.system";
const FEEDS: [&str; 3] = ["alarm", "interval", "once"];

/// `…/actions/{package}/{name}`: a feed of `/whisk.system/alarms`, or
/// flick's refusal of packages.
pub(crate) async fn package_action(
    State(s): State<AppState>,
    Path((ns, package, name)): Path<(String, String, String)>,
    Query(p): Query<InvokeParams>,
    req: Request<Body>,
) -> OwResult {
    let (parts, body) = req.into_parts();
    if ns != SYSTEM {
        authorize(&s, &parts.headers, &ns)?;
        return Err(no_packages(&package));
    }
    let key_id = super::auth::require_key(&parts.headers, &s.keys)?;
    if package != "alarms" || !FEEDS.contains(&name.as_str()) {
        return Err(OwError::Missing(format!(
            "/{SYSTEM}/{}/{}: flick provides only the feeds /{SYSTEM}/alarms/alarm, /{SYSTEM}/alarms/interval and \
             /{SYSTEM}/alarms/once",
            shown(&package),
            shown(&name)
        )));
    }
    if parts.method != Method::POST {
        return Err(OwError::MethodNotAllowed);
    }
    let blocking = flag("blocking", p.blocking.as_deref())?.unwrap_or(false);
    let body = crate::read_body(body, 64 << 10, &s.limits).await?;
    let params = params_object(&body)?;
    let start = now_ms();
    let answer = match lifecycle(&s, &key_id, &name, params).await {
        Ok(result) => Ok(result),
        // What the feed refuses is its application error, as OpenWhisk's feed actions answer.
        Err(OwError::BadRequest(m) | OwError::Missing(m)) => Err(m),
        Err(OwError::Platform(e @ (PlatformError::BadRequest(_) | PlatformError::NotFound { .. }))) => {
            Err(e.to_string())
        }
        Err(e) => return Err(e),
    };
    let id = ActivationId::generate();
    if !blocking && answer.is_ok() {
        return Ok(super::invoke::accepted(id.as_str()));
    }
    Ok(activation(&key_id, &name, id, start, answer))
}

/// Runs one lifecycle event of feed `feed`; its result.
async fn lifecycle(s: &AppState, key_id: &str, feed: &str, mut params: Map<String, Value>) -> Result<Value, OwError> {
    // The caller's key, sent along for feeds that fire on their own: flick's
    // alarms fire inside flick, so it is dropped, never stored.
    params.remove("authKey");
    let event = text(&params, "lifecycleEvent")?.ok_or_else(|| missing("lifecycleEvent"))?;
    let trigger_name = text(&params, "triggerName")?.ok_or_else(|| missing("triggerName"))?;
    let trigger = super::rules::entity_name(key_id, "triggerName", Some(&trigger_name))?;
    match event.as_str() {
        "CREATE" | "UPDATE" => {
            let alarm = alarm_of(feed, &params)?;
            s.platform.set_alarm(&trigger, Some(alarm)).await?;
            Ok(json!({}))
        }
        "READ" => {
            let t = s.platform.rule_trigger(&trigger).await?;
            let alarm = t.feed.as_ref().and_then(Alarm::from_json).ok_or_else(|| no_feed(&t))?;
            Ok(
                json!({ "config": config(&alarm, &trigger_name), "status": {"active": true, "dateChanged": t.updated_ms} }),
            )
        }
        "DELETE" => {
            s.platform.set_alarm(&trigger, None).await?;
            Ok(json!({}))
        }
        other => Err(OwError::BadRequest(format!(
            "lifecycleEvent must be CREATE, UPDATE, READ or DELETE, got '{}'",
            shown(other)
        ))),
    }
}

fn missing(field: &str) -> OwError {
    OwError::BadRequest(format!("no {field} parameter was provided"))
}

fn no_feed(t: &RuleTrigger) -> OwError {
    OwError::Missing(format!("trigger '{}' has no alarm feed", shown(&t.name)))
}

/// A string parameter.
fn text(params: &Map<String, Value>, key: &str) -> Result<Option<String>, OwError> {
    match params.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(_) => Err(OwError::BadRequest(format!("{key} must be a string"))),
    }
}

/// A date: ms since the epoch, or an ISO 8601 / RFC 3339 string.
fn date(params: &Map<String, Value>, key: &str) -> Result<Option<i64>, OwError> {
    let bad = || {
        OwError::BadRequest(format!("{key} must be a date (ms since the epoch, or ISO 8601 like 2030-01-01T00:00:00Z)"))
    };
    match params.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Number(n)) => n.as_i64().map(Some).ok_or_else(bad),
        Some(Value::String(s)) => flick_core::timefmt::parse_rfc3339(s).map(Some).ok_or_else(bad),
        Some(_) => Err(bad()),
    }
}

/// The alarm a feed's parameters describe (OpenWhisk's alarms package's
/// names: `cron`, `timezone`, `minutes`, `date`, `trigger_payload`,
/// `startDate`, `stopDate`).
fn alarm_of(feed: &str, params: &Map<String, Value>) -> Result<Alarm, OwError> {
    let schedule = match feed {
        "alarm" => AlarmSchedule::Cron {
            cron: text(params, "cron")?.ok_or_else(|| missing("cron"))?,
            timezone: text(params, "timezone")?.unwrap_or_else(|| "UTC".into()),
        },
        "interval" => AlarmSchedule::Interval {
            minutes: match params.get("minutes") {
                Some(Value::Number(n)) => n.as_u64().ok_or_else(missing_minutes)?,
                Some(Value::String(s)) => s.parse().map_err(|_| missing_minutes())?,
                _ => return Err(missing_minutes()),
            },
        },
        _ => AlarmSchedule::Once { at_ms: date(params, "date")?.ok_or_else(|| missing("date"))? },
    };
    let payload = match params.get("trigger_payload") {
        None | Some(Value::Null) => Map::new(),
        Some(Value::Object(m)) => m.clone(),
        // The CLI passes `-p trigger_payload '{...}'` as a string.
        Some(Value::String(s)) => match serde_json::from_str::<Value>(s) {
            Ok(Value::Object(m)) => m,
            _ => return Err(OwError::BadRequest("trigger_payload must be a JSON object".into())),
        },
        Some(_) => return Err(OwError::BadRequest("trigger_payload must be a JSON object".into())),
    };
    Ok(Alarm { schedule, payload, start_ms: date(params, "startDate")?, stop_ms: date(params, "stopDate")? })
}

fn missing_minutes() -> OwError {
    OwError::BadRequest("minutes must be a whole number of minutes, at least 1".into())
}

/// A feed's configuration under OpenWhisk's parameter names (`READ`).
fn config(a: &Alarm, trigger_name: &str) -> Value {
    let mut c = json!({ "name": trigger_name, "trigger_payload": a.payload });
    match &a.schedule {
        AlarmSchedule::Cron { cron, timezone } => {
            c["cron"] = json!(cron);
            c["timezone"] = json!(timezone);
        }
        AlarmSchedule::Interval { minutes } => c["minutes"] = json!(minutes),
        AlarmSchedule::Once { at_ms } => c["date"] = json!(flick_core::timefmt::rfc3339(*at_ms)),
    }
    if let Some(ms) = a.start_ms {
        c["startDate"] = json!(ms);
    }
    if let Some(ms) = a.stop_ms {
        c["stopDate"] = json!(ms);
    }
    c
}

/// The feed action's activation: 200 with its result, or 502 with
/// `{error}` (an application error).
fn activation(key_id: &str, feed: &str, id: ActivationId, start: i64, answer: Result<Value, String>) -> Response {
    let end = now_ms();
    let (status, ok, result) = match answer {
        Ok(r) => (StatusCode::OK, true, r),
        Err(e) => (StatusCode::BAD_GATEWAY, false, json!({ "error": e })),
    };
    let doc = json!({
        "namespace": SYSTEM,
        "name": feed,
        "version": "0.0.1",
        "subject": key_id,
        "activationId": id.as_str(),
        "start": start,
        "end": end,
        "duration": end - start,
        "statusCode": if ok { 0 } else { 1 },
        "annotations": [{"key": "path", "value": format!("{SYSTEM}/alarms/{feed}")}, {"key": "kind", "value": "nodejs:default"}],
        "publish": false,
        "logs": [],
        "response": {
            "status": if ok { "success" } else { "application error" },
            "statusCode": if ok { 0 } else { 1 },
            "success": ok,
            "result": result,
        },
    });
    with_id((status, Json(doc)).into_response(), id.as_str())
}
