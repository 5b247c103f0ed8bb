//! `GET /v1/usage[?function=NAME][&since=7d|YYYY-MM-DD]`: usage per
//! function and UTC day (invocations, errors, cold starts, billed and
//! measured GB-s, CPU-s) with per-function and overall totals, priced at
//! the configured `[pricing]`.

use axum::Json;
use axum::extract::{Query, State};
use axum::response::IntoResponse;
use serde::Deserialize;

use super::admin;
use crate::caller::Caller;
use crate::{ApiError, AppState};

/// Without `since`: the last 30 days.
const DEFAULT_SINCE_MS: i64 = 30 * 86_400_000;

pub(crate) fn routes() -> axum::Router<AppState> {
    axum::Router::new().route("/v1/usage", axum::routing::get(usage))
}

#[derive(Deserialize)]
struct UsageParams {
    function: Option<String>,
    since: Option<String>,
}

/// The first moment counted: `now_ms` minus a duration (`7d`, `24h`), or
/// the midnight (UTC) of a date (`2026-11-25`), or an RFC 3339 time. Its
/// whole (UTC) day is counted.
fn since_ms(text: &str, now_ms: i64) -> Result<i64, ApiError> {
    if let Some(ms) = flick_core::timefmt::parse_date(text).or_else(|| flick_core::timefmt::parse_rfc3339(text)) {
        return Ok(ms);
    }
    let looks_like_date = text.len() == 10 && text.as_bytes().get(4) == Some(&b'-');
    match flick_core::units::parse_duration(text) {
        Ok(d) if !looks_like_date => Ok(now_ms.saturating_sub(i64::try_from(d.as_millis()).unwrap_or(i64::MAX))),
        _ => Err(ApiError::BadRequest(format!(
            "`since` must be a duration such as 7d or 24h, or a date such as 2026-11-25 (UTC), not `{}`",
            text.escape_debug()
        ))),
    }
}

async fn usage(State(s): State<AppState>, caller: Caller, Query(p): Query<UsageParams>) -> impl IntoResponse {
    admin(&caller)?;
    let now = flick_core::now_ms();
    let since = match p.since.as_deref() {
        Some(text) => since_ms(text, now)?,
        None => now - DEFAULT_SINCE_MS,
    };
    let report = s.platform.usage(p.function.as_deref(), since).await?;
    Ok::<_, ApiError>(Json(report))
}

#[cfg(test)]
mod tests {
    use super::since_ms;

    #[test]
    fn since_is_a_duration_back_from_now_or_a_date() {
        let now = 1_795_605_698_123; // 2026-11-25T11:21:38.123Z
        assert_eq!(since_ms("7d", now).unwrap(), now - 7 * 86_400_000);
        assert_eq!(since_ms("24h", now).unwrap(), now - 86_400_000);
        assert_eq!(since_ms("2026-11-20", now).unwrap(), 1_795_132_800_000);
        assert_eq!(since_ms("2026-11-20T01:00:00+01:00", now).unwrap(), 1_795_132_800_000);
        for bad in ["", "garbage", "-7d", "7 days", "2026-02-30", "2026-11-20T25:00:00Z", "1e99d", "7y", "99999999999d"]
        {
            let err = since_ms(bad, now).unwrap_err().to_string();
            assert!(err.contains("`since`"), "{bad}: {err}");
        }
    }
}
