//! `GET /metrics` (Prometheus/OpenMetrics text, rendered by the platform's
//! registry) behind the metrics token or the admin key, and the layer that
//! counts every HTTP response by surface and status code.
//!
//! The scrape shows counts, names of functions and triggers, and versions:
//! never an environment variable, a key or a request's content.

use std::sync::Arc;

use axum::Router;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use flick_platform::Platform;
use flick_platform::metrics::Format;

use crate::caller::{Credentials, Keys, constant_time_eq};
use crate::{AdminKey, ApiError};

/// Who may scrape: holders of the metrics token (Bearer) and the admin.
#[derive(Clone)]
pub struct MetricsAccess {
    /// The scrape-only token; `None`: the admin key only.
    token: Option<Arc<str>>,
    keys: Keys,
}

impl std::fmt::Debug for MetricsAccess {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MetricsAccess").field("token", &self.token.as_ref().map(|_| "(hidden)")).finish()
    }
}

impl MetricsAccess {
    pub fn new(token: Option<String>, admin: &AdminKey) -> Self {
        Self { token: token.map(Arc::from), keys: Keys::new(admin) }
    }

    /// Does `headers`' `Authorization` carry the metrics token or a key?
    fn allows(&self, headers: &HeaderMap) -> bool {
        if let Some(token) = &self.token {
            let mut values = headers.get_all(header::AUTHORIZATION).iter();
            if let (Some(value), None) = (values.next(), values.next())
                && let Ok(value) = value.to_str()
                && let Some((scheme, given)) = value.trim_matches([' ', '\t']).split_once([' ', '\t'])
                && scheme.eq_ignore_ascii_case("bearer")
                && constant_time_eq(given.trim_start_matches([' ', '\t']).as_bytes(), token.as_bytes())
            {
                return true;
            }
        }
        matches!(self.keys.credentials(headers), Credentials::Key(_))
    }
}

#[derive(Clone)]
struct MetricsState {
    platform: Arc<Platform>,
    access: MetricsAccess,
}

/// A router with `GET /metrics` alone: merged into the main one, or served
/// on `[metrics] listen` by itself.
pub fn router(platform: Arc<Platform>, access: MetricsAccess) -> Router {
    Router::new().route("/metrics", get(scrape)).with_state(MetricsState { platform, access })
}

async fn scrape(State(s): State<MetricsState>, headers: HeaderMap) -> Response {
    if !s.access.allows(&headers) {
        let mut response = ApiError::Unauthorized.into_response();
        response.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer realm=\"flick\""));
        return response;
    }
    let format = format_for(&headers);
    match s.platform.render_metrics(format).await {
        Some(body) => {
            (StatusCode::OK, [(header::CONTENT_TYPE, format.content_type()), (header::CACHE_CONTROL, "no-store")], body)
                .into_response()
        }
        // `[metrics] enabled = false`: as if there were no such endpoint.
        None => ApiError::NoRoute.into_response(),
    }
}

/// OpenMetrics for scrapers that ask for it (Prometheus does), the
/// classic text format for everyone else (curl piped to promtool).
fn format_for(headers: &HeaderMap) -> Format {
    let asks = headers
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| v.to_ascii_lowercase().contains("application/openmetrics-text"));
    if asks { Format::OpenMetrics } else { Format::Classic }
}

/// Counts every response of `router` in `flick_http_responses` (its
/// surface from the path, its status code). Apply it last, over every
/// merged router. Nothing is added when metrics are disabled.
pub fn count_responses(router: Router, platform: Arc<Platform>) -> Router {
    if !platform.metrics().enabled() {
        return router;
    }
    router.layer(axum::middleware::from_fn_with_state(platform, count))
}

async fn count(State(platform): State<Arc<Platform>>, request: Request, next: Next) -> Response {
    let surface = surface(request.uri().path());
    let response = next.run(request).await;
    platform.metrics().http_response(surface, response.status().as_u16());
    response
}

/// Which API a path belongs to (a fixed set: the label's values stay few
/// whatever paths clients send).
pub(crate) fn surface(path: &str) -> &'static str {
    let first = path.trim_start_matches('/').split('/').next().unwrap_or("");
    match first {
        "fn" | "v1" | "healthz" => "native",
        // Lambda's API versions are dates: /2015-03-31/…, /2014-11-13/….
        date if is_date(date) => "lambda",
        "api" => "openwhisk",
        "system" | "function" | "async-function" => "openfaas",
        "events" => "events",
        "metrics" => "metrics",
        "ui" => "ui",
        _ => "other",
    }
}

/// `YYYY-MM-DD` in ASCII digits.
fn is_date(segment: &str) -> bool {
    let b = segment.as_bytes();
    b.len() == 10 && b.iter().enumerate().all(|(i, c)| if i == 4 || i == 7 { *c == b'-' } else { c.is_ascii_digit() })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn surfaces_are_a_fixed_set() {
        for (path, want) in [
            ("/fn/hello", "native"),
            ("/fn/hello/a/b", "native"),
            ("/v1/functions", "native"),
            ("/healthz", "native"),
            ("/2015-03-31/functions/hello/invocations", "lambda"),
            ("/2014-11-13/functions/hello/invoke-async", "lambda"),
            ("/2015-03-3x/functions", "other"),
            ("/api/v1/namespaces/_/actions/x", "openwhisk"),
            ("/system/functions", "openfaas"),
            ("/function/hello", "openfaas"),
            ("/async-function/hello", "openfaas"),
            ("/events", "events"),
            ("/metrics", "metrics"),
            ("/ui/login", "ui"),
            ("/", "other"),
            ("/../../etc/passwd", "other"),
            ("/%66n/x", "other"),
        ] {
            assert_eq!(surface(path), want, "{path}");
        }
    }

    fn access(token: Option<&str>) -> MetricsAccess {
        MetricsAccess::new(token.map(String::from), &AdminKey::new("the-admin-key".into()))
    }

    fn auth(value: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(header::AUTHORIZATION, HeaderValue::from_str(value).unwrap());
        h
    }

    #[test]
    fn token_or_admin_key_and_nothing_else() {
        let a = access(Some("scrape-token-0123456789"));
        assert!(a.allows(&auth("Bearer scrape-token-0123456789")));
        assert!(a.allows(&auth("bearer   scrape-token-0123456789")));
        assert!(a.allows(&auth("Bearer the-admin-key")));
        assert!(!a.allows(&HeaderMap::new()));
        assert!(!a.allows(&auth("Bearer scrape-token-012345678")), "a prefix is not the token");
        assert!(!a.allows(&auth("Bearer scrape-token-0123456789x")));
        assert!(!a.allows(&auth("Basic c2NyYXBlLXRva2VuLTAxMjM0NTY3ODk=")), "the token is Bearer only");
        assert!(!a.allows(&auth("scrape-token-0123456789")));
        let mut two = auth("Bearer scrape-token-0123456789");
        two.append(header::AUTHORIZATION, HeaderValue::from_static("Bearer nope"));
        assert!(!a.allows(&two), "two Authorization headers prove nothing");
        // Without a token configured, only the admin key.
        let a = access(None);
        assert!(!a.allows(&auth("Bearer ")));
        assert!(!a.allows(&auth("Bearer scrape-token-0123456789")));
        assert!(a.allows(&auth("Bearer the-admin-key")));
    }

    #[test]
    fn debug_hides_the_token() {
        let text = format!("{:?}", access(Some("scrape-token-0123456789")));
        assert!(!text.contains("scrape-token"), "{text}");
    }
}
