//! Live views over HTTP: `GET /v1/logs` (log lines as server-sent events,
//! the moment instances write them), `GET /v1/stats` and
//! `GET /v1/stats/series` (the in-memory statistics of
//! `flick_platform::live`, read by `flick top` and the dashboard).

use std::time::Duration;

use axum::Json;
use axum::extract::{Query, State};
use axum::response::IntoResponse;
use axum::response::sse::{Event, KeepAlive, Sse};
use flick_core::units::parse_duration;
use flick_platform::PlatformError;
use flick_platform::live::Next;
use futures_util::StreamExt as _;
use serde::Deserialize;

use super::admin;
use crate::caller::Caller;
use crate::{ApiError, AppState};

type ApiResult = Result<axum::response::Response, ApiError>;

/// A comment every so often, so proxies and clients see a quiet stream is alive.
const PING_EVERY: Duration = Duration::from_secs(15);

pub(crate) fn routes() -> axum::Router<AppState> {
    use axum::routing::get;
    axum::Router::new()
        .route("/v1/logs", get(logs))
        .route("/v1/stats", get(stats))
        .route("/v1/stats/series", get(series))
}

/// A function named in a query must exist now (404 otherwise).
fn known(s: &AppState, function: Option<&str>) -> Result<(), ApiError> {
    match function {
        Some(f) if s.platform.route(f).is_none() => Err(PlatformError::FunctionNotFound(f.into()).into()),
        _ => Ok(()),
    }
}

fn duration(key: &str, text: Option<&str>, default: Duration) -> Result<Duration, ApiError> {
    match text {
        None => Ok(default),
        Some(t) => parse_duration(t).map_err(|e| ApiError::BadRequest(format!("`{key}`: {e}"))),
    }
}

#[derive(Deserialize)]
struct LogParams {
    function: Option<String>,
}

/// `GET /v1/logs[?function=NAME]`: `event: log` with the line as JSON
/// (`activation_id`, `function`, `stream`, `ts_ms`, `text`); `event: lagged`
/// with `{"skipped": N}` when this client fell behind and lines were
/// dropped for it (flick never waits for a reader).
async fn logs(State(s): State<AppState>, caller: Caller, Query(p): Query<LogParams>) -> ApiResult {
    admin(&caller)?;
    known(&s, p.function.as_deref())?;
    // Subscribed before the answer's head goes out: a client that has read
    // the head sees every line written after it.
    let follower = s.platform.live().follow().map_err(|e| ApiError::Unavailable(e.to_string()))?;
    let only = p.function;
    let lines = futures_util::stream::unfold(follower, move |mut f| {
        let only = only.clone();
        async move {
            loop {
                match f.next().await? {
                    Next::Line(line) if only.as_deref().is_none_or(|o| o == line.function) => {
                        return Some((Event::default().event("log").json_data(&*line), f));
                    }
                    Next::Line(_) => continue,
                    Next::Lagged(n) => {
                        let note = serde_json::json!({ "skipped": n }).to_string();
                        return Some((Ok(Event::default().event("lagged").data(note)), f));
                    }
                }
            }
        }
    });
    // A first comment at once, so the client knows it is following.
    let stream = futures_util::stream::once(async { Ok(Event::default().comment("following")) }).chain(lines);
    Ok(Sse::new(stream).keep_alive(KeepAlive::new().interval(PING_EVERY).text("ping")).into_response())
}

#[derive(Deserialize)]
struct StatsParams {
    window: Option<String>,
    function: Option<String>,
}

/// `GET /v1/stats[?window=60s][&function=NAME]`: every deployed function
/// (or the one named) and the host, over the last `window` (1s to 24h).
async fn stats(State(s): State<AppState>, caller: Caller, Query(p): Query<StatsParams>) -> ApiResult {
    admin(&caller)?;
    let window = duration("window", p.window.as_deref(), Duration::from_secs(60))?;
    known(&s, p.function.as_deref())?;
    let names: Vec<String> = match p.function {
        Some(f) => vec![f],
        None => {
            let mut names: Vec<String> =
                s.platform.routes_snapshot().iter().map(|r| r.revision.function.clone()).collect();
            names.sort();
            names
        }
    };
    let live = s.platform.live();
    // Instance counts as of now, not of the last periodic sample.
    live.sample(s.platform.scheduler());
    let report = live.report(window, &names).map_err(|e| ApiError::BadRequest(e.to_string()))?;
    Ok(Json(report).into_response())
}

#[derive(Deserialize)]
struct SeriesParams {
    function: Option<String>,
    since: Option<String>,
    step: Option<String>,
}

/// `GET /v1/stats/series[?function=NAME][&since=1h][&step=60s]`: points
/// over time for a function, or the host without `function`.
async fn series(State(s): State<AppState>, caller: Caller, Query(p): Query<SeriesParams>) -> ApiResult {
    admin(&caller)?;
    let since = duration("since", p.since.as_deref(), Duration::from_secs(3600))?;
    let step = duration("step", p.step.as_deref(), Duration::from_secs(60))?;
    known(&s, p.function.as_deref())?;
    let series = s
        .platform
        .live()
        .series(p.function.as_deref(), since, step)
        .map_err(|e| ApiError::BadRequest(e.to_string()))?;
    Ok(Json(series).into_response())
}
