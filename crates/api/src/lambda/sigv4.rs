//! AWS Signature Version 4, verified on the server side for the Lambda
//! surface: the canonical request is rebuilt from what arrived and its
//! signature recomputed with the secret of the key id the client named.
//!
//! The access key id is a flick key's id (`admin`) and the secret is the key
//! itself, so boto3 and the aws CLI authenticate with what flick already
//! has. Region comes from the credential scope and is not checked (any
//! region signs); the service must be `lambda`.

use axum::http::{HeaderMap, Method};
use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};

type HmacSha256 = Hmac<Sha256>;

const ALGORITHM: &str = "AWS4-HMAC-SHA256";
/// How far `X-Amz-Date` may be from the server's clock, either way (AWS's
/// own limit), so a captured request cannot be replayed later.
const MAX_SKEW_SECS: i64 = 15 * 60;
/// The `x-amz-content-sha256` value that signs headers but not the body.
const UNSIGNED_PAYLOAD: &str = "UNSIGNED-PAYLOAD";

/// Who signed a request that verified.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Signer {
    pub key_id: String,
    /// The region the client signed for (reported back in ARNs).
    pub region: String,
}

/// Why a request is refused. Each renders as Lambda's 403.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum SigError {
    /// No `Authorization` header at all.
    #[error("Missing Authentication Token")]
    Missing,
    /// The header or a signed part of the request is not what SigV4 needs.
    #[error("{0}")]
    Malformed(String),
    #[error("The security token included in the request is invalid: no key with id `{0}`")]
    UnknownKey(String),
    #[error(
        "The request signature we calculated does not match the signature you provided. Check your AWS Secret \
         Access Key and signing method."
    )]
    BadSignature,
    #[error("Signature expired: {date} is more than 15 minutes from the server's time ({now})")]
    Expired { date: String, now: String },
}

impl SigError {
    /// The `x-amzn-ErrorType` Lambda sends for this refusal.
    pub(crate) fn error_type(&self) -> &'static str {
        match self {
            Self::Missing => "MissingAuthenticationTokenException",
            Self::UnknownKey(_) => "UnrecognizedClientException",
            Self::Malformed(_) => "IncompleteSignatureException",
            Self::BadSignature | Self::Expired { .. } => "InvalidSignatureException",
        }
    }
}

/// The request as it arrived, as much of it as the signature covers.
pub(crate) struct SignedRequest<'a> {
    pub method: &'a Method,
    /// The path exactly as sent (still percent-encoded).
    pub path: &'a str,
    /// The raw query string, without `?`.
    pub query: Option<&'a str>,
    pub headers: &'a HeaderMap,
    pub body: &'a [u8],
}

/// The parts of an `Authorization: AWS4-HMAC-SHA256 …` header.
#[derive(Debug)]
struct Authorization<'a> {
    key_id: &'a str,
    date: &'a str,
    region: &'a str,
    service: &'a str,
    signed_headers: Vec<&'a str>,
    signature: Vec<u8>,
}

/// Verifies `request`, signed for `service`, at unix time `now`; `secret`
/// gives a key id's secret (`None`: no such key).
pub(crate) fn verify(
    request: &SignedRequest<'_>,
    service: &str,
    now: i64,
    secret: impl FnOnce(&str) -> Option<String>,
) -> Result<Signer, SigError> {
    let header = match request.headers.get(axum::http::header::AUTHORIZATION) {
        None => return Err(SigError::Missing),
        Some(value) => {
            value.to_str().map_err(|_| SigError::Malformed("the Authorization header is not ASCII".into()))?
        }
    };
    let auth = parse_authorization(header)?;
    if auth.service != service {
        return Err(SigError::Malformed(format!(
            "Credential should be scoped to correct service: '{service}', not '{}'",
            auth.service
        )));
    }
    let amz_date = header_str(request.headers, "x-amz-date")
        .ok_or_else(|| SigError::Malformed("the X-Amz-Date header is missing".into()))?;
    let signed_at = parse_amz_date(amz_date)
        .ok_or_else(|| SigError::Malformed(format!("X-Amz-Date `{amz_date}` is not yyyymmddThhmmssZ")))?;
    if !amz_date.starts_with(auth.date) || auth.date.len() != 8 {
        return Err(SigError::Malformed(format!(
            "the credential date {} does not match X-Amz-Date {amz_date}",
            auth.date
        )));
    }
    if (now - signed_at).abs() > MAX_SKEW_SECS {
        return Err(SigError::Expired { date: amz_date.to_string(), now: format_amz_date(now) });
    }
    if !auth.signed_headers.contains(&"host") {
        return Err(SigError::Malformed("SignedHeaders must include host".into()));
    }
    let Some(secret) = secret(auth.key_id) else {
        return Err(SigError::UnknownKey(auth.key_id.to_string()));
    };

    let canonical = canonical_request(request, &auth.signed_headers)?;
    let scope = format!("{}/{}/{}/aws4_request", auth.date, auth.region, auth.service);
    let string_to_sign = format!("{ALGORITHM}\n{amz_date}\n{scope}\n{}", hex::encode(Sha256::digest(&canonical)));
    let key = signing_key(&secret, auth.date, auth.region, auth.service);
    let mut mac = HmacSha256::new_from_slice(&key).expect("HMAC takes keys of any length");
    mac.update(string_to_sign.as_bytes());
    // `verify_slice` compares in constant time.
    mac.verify_slice(&auth.signature).map_err(|_| SigError::BadSignature)?;
    Ok(Signer { key_id: auth.key_id.to_string(), region: auth.region.to_string() })
}

fn parse_authorization(header: &str) -> Result<Authorization<'_>, SigError> {
    let malformed = |what: &str| SigError::Malformed(format!("Authorization header: {what}"));
    let rest = header
        .trim()
        .strip_prefix(ALGORITHM)
        .ok_or_else(|| malformed("only AWS4-HMAC-SHA256 signatures are accepted"))?;
    let (mut credential, mut signed, mut signature) = (None, None, None);
    for part in rest.split(',') {
        let Some((name, value)) = part.trim().split_once('=') else {
            return Err(malformed(&format!("`{}` is not name=value", part.trim())));
        };
        match name.trim() {
            "Credential" => credential = Some(value.trim()),
            "SignedHeaders" => signed = Some(value.trim()),
            "Signature" => signature = Some(value.trim()),
            _ => {}
        }
    }
    let credential = credential.ok_or_else(|| malformed("Credential is missing"))?;
    let signed = signed.ok_or_else(|| malformed("SignedHeaders is missing"))?;
    let signature = signature.ok_or_else(|| malformed("Signature is missing"))?;
    // AKID/DATE/REGION/SERVICE/aws4_request; a key id has no `/`.
    let parts: Vec<&str> = credential.split('/').collect();
    let [key_id, date, region, service, "aws4_request"] = parts[..] else {
        return Err(malformed("Credential must be KEY_ID/yyyymmdd/region/service/aws4_request"));
    };
    if key_id.is_empty() || region.is_empty() {
        return Err(malformed("Credential has an empty key id or region"));
    }
    let signature = hex::decode(signature)
        .ok()
        .filter(|s| s.len() == 32)
        .ok_or_else(|| malformed("Signature must be 64 hex digits"))?;
    let signed_headers: Vec<&str> = signed.split(';').collect();
    if signed_headers.iter().any(|h| h.is_empty() || h.bytes().any(|b| b.is_ascii_uppercase())) {
        return Err(malformed("SignedHeaders must be lower-case names separated by `;`"));
    }
    Ok(Authorization { key_id, date, region, service, signed_headers, signature })
}

fn header_str<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

/// The canonical request (SigV4 step 1), as bytes.
fn canonical_request(request: &SignedRequest<'_>, signed_headers: &[&str]) -> Result<Vec<u8>, SigError> {
    let mut out = String::new();
    out.push_str(request.method.as_str());
    out.push('\n');
    out.push_str(&canonical_uri(request.path));
    out.push('\n');
    out.push_str(&canonical_query(request.query.unwrap_or("")));
    out.push('\n');
    for name in signed_headers {
        let mut values = request.headers.get_all(*name).iter().peekable();
        if values.peek().is_none() {
            return Err(SigError::Malformed(format!("the signed header `{name}` is not in the request")));
        }
        let mut joined = Vec::new();
        for value in values {
            let value =
                value.to_str().map_err(|_| SigError::Malformed(format!("the signed header `{name}` is not ASCII")))?;
            joined.push(value.split_ascii_whitespace().collect::<Vec<_>>().join(" "));
        }
        out.push_str(name);
        out.push(':');
        out.push_str(&joined.join(","));
        out.push('\n');
    }
    out.push('\n');
    out.push_str(&signed_headers.join(";"));
    out.push('\n');
    match header_str(request.headers, "x-amz-content-sha256") {
        Some(UNSIGNED_PAYLOAD) => out.push_str(UNSIGNED_PAYLOAD),
        Some(claimed) => {
            // A claimed hash is what was signed, but it must be the body's:
            // otherwise the body could be swapped under a valid signature.
            let actual = hex::encode(Sha256::digest(request.body));
            if !claimed.eq_ignore_ascii_case(&actual) {
                return Err(SigError::Malformed(
                    "x-amz-content-sha256 does not match the body (chunked aws-chunked uploads are not \
                     accepted on this API)"
                        .into(),
                ));
            }
            out.push_str(claimed);
        }
        None => out.push_str(&hex::encode(Sha256::digest(request.body))),
    }
    Ok(out.into_bytes())
}

/// Every path segment encoded once more, as every service but S3 signs it:
/// a function ARN's `:` arrives as `%3A` and is signed as `%253A`.
fn canonical_uri(path: &str) -> String {
    if path.is_empty() {
        return "/".into();
    }
    path.split('/').map(|segment| uri_encode(segment.as_bytes())).collect::<Vec<_>>().join("/")
}

/// Parameters decoded, re-encoded the one canonical way and sorted by name,
/// then value.
fn canonical_query(query: &str) -> String {
    let mut pairs: Vec<(String, String)> = query
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|pair| {
            let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
            (uri_encode(&percent_decode(name)), uri_encode(&percent_decode(value)))
        })
        .collect();
    pairs.sort();
    pairs.iter().map(|(n, v)| format!("{n}={v}")).collect::<Vec<_>>().join("&")
}

/// RFC 3986 encoding as SigV4 defines it: `A-Z a-z 0-9 - _ . ~` kept, every
/// other byte `%XX` in upper-case hex.
fn uri_encode(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len());
    for &b in bytes {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// `%XX` decoded; anything else (including a stray `%`) kept as it is.
fn percent_decode(text: &str) -> Vec<u8> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%'
            && let Some(byte) =
                bytes.get(i + 1..i + 3).and_then(|h| u8::from_str_radix(std::str::from_utf8(h).ok()?, 16).ok())
        {
            out.push(byte);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    out
}

fn signing_key(secret: &str, date: &str, region: &str, service: &str) -> Vec<u8> {
    let mut key = format!("AWS4{secret}").into_bytes();
    for part in [date, region, service, "aws4_request"] {
        let mut mac = HmacSha256::new_from_slice(&key).expect("HMAC takes keys of any length");
        mac.update(part.as_bytes());
        key = mac.finalize().into_bytes().to_vec();
    }
    key
}

/// `yyyymmddThhmmssZ` → unix seconds.
fn parse_amz_date(text: &str) -> Option<i64> {
    let b = text.as_bytes();
    if b.len() != 16 || b[8] != b'T' || b[15] != b'Z' {
        return None;
    }
    let num = |range: std::ops::Range<usize>| -> Option<i64> {
        let part = text.get(range)?;
        part.bytes().all(|c| c.is_ascii_digit()).then(|| part.parse().ok())?
    };
    let (year, month, day) = (num(0..4)?, num(4..6)?, num(6..8)?);
    let (hour, minute, second) = (num(9..11)?, num(11..13)?, num(13..15)?);
    if !(1..=12).contains(&month) || !(1..=31).contains(&day) || hour > 23 || minute > 59 || second > 60 {
        return None;
    }
    Some(days_from_civil(year, month, day) * 86_400 + hour * 3600 + minute * 60 + second)
}

fn format_amz_date(unix: i64) -> String {
    let (days, secs) = (unix.div_euclid(86_400), unix.rem_euclid(86_400));
    let (y, m, d) = civil_from_days(days);
    format!("{y:04}{m:02}{d:02}T{:02}{:02}{:02}Z", secs / 3600, secs % 3600 / 60, secs % 60)
}

// Howard Hinnant's civil-date algorithms (proleptic Gregorian calendar).
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

pub(super) fn civil_from_days(days: i64) -> (i64, i64, i64) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    (if month <= 2 { yoe + era * 400 + 1 } else { yoe + era * 400 }, month, day)
}

#[cfg(test)]
mod tests {
    use axum::http::HeaderValue;

    use super::*;

    // AWS's published Signature Version 4 test suite: its example key,
    // scope and clock.
    const KEY_ID: &str = "AKIDEXAMPLE";
    const SECRET: &str = "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY";
    const DATE: &str = "20150830T123600Z";

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.append(
                axum::http::HeaderName::from_bytes(name.as_bytes()).unwrap(),
                HeaderValue::from_str(value).unwrap(),
            );
        }
        map
    }

    fn suite_auth(signed: &str, signature: &str) -> String {
        format!(
            "AWS4-HMAC-SHA256 Credential={KEY_ID}/20150830/us-east-1/service/aws4_request, SignedHeaders={signed}, Signature={signature}"
        )
    }

    fn secret_of(id: &str) -> Option<String> {
        (id == KEY_ID).then(|| SECRET.to_string())
    }

    fn check(
        method: &str,
        path: &str,
        query: Option<&str>,
        extra: &[(&str, &str)],
        body: &[u8],
        signed: &str,
        signature: &str,
    ) -> Result<Signer, SigError> {
        let auth = suite_auth(signed, signature);
        let mut pairs = vec![("host", "example.amazonaws.com"), ("x-amz-date", DATE), ("authorization", auth.as_str())];
        pairs.extend_from_slice(extra);
        let headers = headers(&pairs);
        let method = Method::from_bytes(method.as_bytes()).unwrap();
        let request = SignedRequest { method: &method, path, query, headers: &headers, body };
        verify(&request, "service", parse_amz_date(DATE).unwrap(), secret_of)
    }

    #[test]
    fn aws_test_suite_vectors_verify() {
        let plain = "host;x-amz-date";
        // get-vanilla
        check("GET", "/", None, &[], b"", plain, "5fa00fa31553b73ebf1942676e86291e8372ff2a2260956d9b8aae1d763fbf31")
            .unwrap();
        // get-vanilla-query-order-key-case: the query is sorted before signing.
        check(
            "GET",
            "/",
            Some("Param2=value2&Param1=value1"),
            &[],
            b"",
            plain,
            "b97d918cfa904a5beff61c982a1b6f458b799221646efd99d3219ec94cdf2500",
        )
        .unwrap();
        // get-vanilla-query-unreserved
        let unreserved = "-._~0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";
        let query = format!("{unreserved}={unreserved}");
        check(
            "GET",
            "/",
            Some(&query),
            &[],
            b"",
            plain,
            "9c3e54bfcdf0b19771a7f523ee5669cdf59bc7cc0884027167c21bb143a40197",
        )
        .unwrap();
        // get-vanilla-utf8-query: `ሴ=bar`, percent-encoded on the wire.
        check(
            "GET",
            "/",
            Some("%E1%88%B4=bar"),
            &[],
            b"",
            plain,
            "2cdec8eed098649ff3a119c94853b13c643bcf08f8b0a1d91e12c9027818dd04",
        )
        .unwrap();
        // get-header-value-trim: runs of blanks inside a value collapse.
        check(
            "GET",
            "/",
            None,
            &[("my-header1", "value1"), ("my-header2", "\"a   b   c\"")],
            b"",
            "host;my-header1;my-header2;x-amz-date",
            "acc3ed3afb60bb290fc8d2dd0098b9911fcaa05412b367055dee359757a9c736",
        )
        .unwrap();
        // post-x-www-form-urlencoded: the body's hash is signed.
        let form = [("content-type", "application/x-www-form-urlencoded")];
        let signature = "ff11897932ad3f4e8b18135d722051e5ac45fc38421b1da7b9d196a0fe09473a";
        let signer =
            check("POST", "/", None, &form, b"Param1=value1", "content-type;host;x-amz-date", signature).unwrap();
        assert_eq!(signer, Signer { key_id: KEY_ID.into(), region: "us-east-1".into() });
        // The same request with another body fails.
        let err =
            check("POST", "/", None, &form, b"Param1=value2", "content-type;host;x-amz-date", signature).unwrap_err();
        assert_eq!(err, SigError::BadSignature);
    }

    #[test]
    fn refusals_name_their_reason() {
        let good = "5fa00fa31553b73ebf1942676e86291e8372ff2a2260956d9b8aae1d763fbf31";
        let plain = "host;x-amz-date";
        // One digit off.
        let bad = "5fa00fa31553b73ebf1942676e86291e8372ff2a2260956d9b8aae1d763fbf30";
        let err = check("GET", "/", None, &[], b"", plain, bad).unwrap_err();
        assert_eq!((err.error_type(), err.clone()), ("InvalidSignatureException", SigError::BadSignature));
        // Host not signed.
        let err = check("GET", "/", None, &[], b"", "x-amz-date", good).unwrap_err();
        assert!(err.to_string().contains("host"), "{err}");
        // A signed header that is not there.
        let err = check("GET", "/", None, &[], b"", "host;x-amz-date;x-extra", good).unwrap_err();
        assert!(err.to_string().contains("x-extra"), "{err}");
        // Garbage signature.
        let err = check("GET", "/", None, &[], b"", plain, "zz").unwrap_err();
        assert_eq!(err.error_type(), "IncompleteSignatureException");
    }

    #[test]
    fn unknown_keys_wrong_services_and_stale_dates_are_refused() {
        let auth = suite_auth("host;x-amz-date", &"0".repeat(64));
        let map = headers(&[("host", "h"), ("x-amz-date", DATE), ("authorization", &auth)]);
        let request = SignedRequest { method: &Method::GET, path: "/", query: None, headers: &map, body: b"" };
        let now = parse_amz_date(DATE).unwrap();
        let err = verify(&request, "service", now, |_| None).unwrap_err();
        assert_eq!(err, SigError::UnknownKey(KEY_ID.into()));
        assert_eq!(err.error_type(), "UnrecognizedClientException");
        let err = verify(&request, "lambda", now, secret_of).unwrap_err();
        assert!(err.to_string().contains("'lambda'"), "{err}");
        let err = verify(&request, "service", now + 16 * 60, secret_of).unwrap_err();
        assert!(matches!(err, SigError::Expired { .. }), "{err:?}");
        assert!(err.to_string().contains("20150830T123600Z") && err.to_string().contains("20150830T125200Z"), "{err}");
        assert_eq!(err.error_type(), "InvalidSignatureException");
        let err = verify(&request, "service", now - 16 * 60, secret_of).unwrap_err();
        assert!(matches!(err, SigError::Expired { .. }));

        let no_auth = headers(&[("host", "h"), ("x-amz-date", DATE)]);
        let request = SignedRequest { method: &Method::GET, path: "/", query: None, headers: &no_auth, body: b"" };
        assert_eq!(verify(&request, "service", now, secret_of).unwrap_err(), SigError::Missing);
    }

    /// Signs like botocore does, to check what the suite does not cover:
    /// double-encoded paths and `x-amz-content-sha256`.
    fn sign(path: &str, query: Option<&str>, extra: &[(&str, &str)], body: &[u8], secret: &str) -> HeaderMap {
        let mut map = headers(&[("host", "localhost:8080"), ("x-amz-date", DATE)]);
        let mut signed = vec!["host", "x-amz-date"];
        for (name, value) in extra {
            map.append(
                axum::http::HeaderName::from_bytes(name.as_bytes()).unwrap(),
                HeaderValue::from_str(value).unwrap(),
            );
            signed.push(name);
        }
        signed.sort();
        let request = SignedRequest { method: &Method::POST, path, query, headers: &map, body };
        let canonical = canonical_request(&request, &signed).unwrap();
        let scope = "20150830/eu-west-1/lambda/aws4_request";
        let sts = format!("{ALGORITHM}\n{DATE}\n{scope}\n{}", hex::encode(Sha256::digest(&canonical)));
        let mut mac = HmacSha256::new_from_slice(&signing_key(secret, "20150830", "eu-west-1", "lambda")).unwrap();
        mac.update(sts.as_bytes());
        let auth = format!(
            "{ALGORITHM} Credential=admin/{scope}, SignedHeaders={}, Signature={}",
            signed.join(";"),
            hex::encode(mac.finalize().into_bytes())
        );
        map.insert("authorization", HeaderValue::from_str(&auth).unwrap());
        map
    }

    #[test]
    fn arn_paths_are_signed_double_encoded() {
        let path = "/2015-03-31/functions/arn%3Aaws%3Alambda%3Aus-east-1%3A000000000000%3Afunction%3Ahello/invocations";
        assert_eq!(
            canonical_uri(path),
            "/2015-03-31/functions/arn%253Aaws%253Alambda%253Aus-east-1%253A000000000000%253Afunction%253Ahello/invocations"
        );
        let map = sign(path, Some("Qualifier=%24LATEST"), &[], b"{}", "the-key");
        let request = SignedRequest {
            method: &Method::POST,
            path,
            query: Some("Qualifier=%24LATEST"),
            headers: &map,
            body: b"{}",
        };
        let now = parse_amz_date(DATE).unwrap();
        let admin = |id: &str| (id == "admin").then(|| "the-key".to_string());
        let signer = verify(&request, "lambda", now, admin).unwrap();
        assert_eq!(signer, Signer { key_id: "admin".into(), region: "eu-west-1".into() });
        let wrong = |_: &str| Some("another-key".to_string());
        assert_eq!(verify(&request, "lambda", now, wrong).unwrap_err(), SigError::BadSignature);
    }

    #[test]
    fn content_sha256_is_honoured_and_checked() {
        let now = parse_amz_date(DATE).unwrap();
        let admin = |id: &str| (id == "admin").then(|| "k".to_string());
        // UNSIGNED-PAYLOAD: headers signed, body not.
        let map = sign("/", None, &[("x-amz-content-sha256", UNSIGNED_PAYLOAD)], b"a", "k");
        let request = SignedRequest { method: &Method::POST, path: "/", query: None, headers: &map, body: b"b" };
        verify(&request, "lambda", now, admin).unwrap();
        // A claimed hash must be the body's.
        let hash = hex::encode(Sha256::digest(b"a"));
        let map = sign("/", None, &[("x-amz-content-sha256", &hash)], b"a", "k");
        let request = SignedRequest { method: &Method::POST, path: "/", query: None, headers: &map, body: b"a" };
        verify(&request, "lambda", now, admin).unwrap();
        let swapped = SignedRequest { body: b"b", ..request };
        let err = verify(&swapped, "lambda", now, admin).unwrap_err();
        assert!(err.to_string().contains("does not match the body"), "{err}");
    }

    #[test]
    fn dates_round_trip() {
        for date in ["19700101T000000Z", "20150830T123600Z", "20000229T235959Z", "20991231T000001Z"] {
            assert_eq!(format_amz_date(parse_amz_date(date).unwrap()), date);
        }
        assert_eq!(parse_amz_date("19700102T000000Z"), Some(86_400));
        for bad in ["2015-08-30T12:36:00Z", "20150830T123600", "20151330T123600Z", "2015083OT123600Z", ""] {
            assert_eq!(parse_amz_date(bad), None, "{bad}");
        }
    }

    #[test]
    fn query_canonical_form() {
        assert_eq!(canonical_query("b=2&a=1&A=0"), "A=0&a=1&b=2");
        assert_eq!(canonical_query("a=x%20y&flag"), "a=x%20y&flag=");
        assert_eq!(canonical_query("Marker=abc%3D%3D&MaxItems=2"), "Marker=abc%3D%3D&MaxItems=2");
        assert_eq!(canonical_query(""), "");
        assert_eq!(percent_decode("%zz%4"), b"%zz%4");
    }

    mod fuzz {
        use proptest::prelude::*;

        use super::*;

        proptest! {
            #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

            /// Whatever the Authorization header says: no panic, and never
            /// a verified request without the secret's signature.
            #[test]
            fn any_authorization_header_is_refused_without_a_panic(
                auth in prop_oneof![
                    "\\PC{0,200}",
                    ("[A-Za-z0-9/]{0,40}", "[a-z;-]{0,40}", "[0-9a-f]{0,70}").prop_map(|(c, h, s)| format!(
                        "AWS4-HMAC-SHA256 Credential={c}, SignedHeaders={h}, Signature={s}"
                    )),
                ],
                date in prop_oneof![Just(DATE.to_string()), "[0-9TZ]{0,20}"],
            ) {
                let mut map = headers(&[("host", "h"), ("x-amz-date", &date)]);
                if let Ok(value) = HeaderValue::from_str(&auth) {
                    map.insert("authorization", value);
                }
                let request = SignedRequest { method: &Method::GET, path: "/", query: None, headers: &map, body: b"" };
                let now = parse_amz_date(DATE).unwrap();
                prop_assert!(verify(&request, "lambda", now, |_| Some("k".to_string())).is_err());
            }

            /// A correctly signed request with any one part changed fails.
            #[test]
            fn any_change_to_a_signed_request_breaks_it(
                body in proptest::collection::vec(any::<u8>(), 0..64),
                which in 0usize..4,
                byte in any::<u8>(),
                at in any::<prop::sample::Index>(),
            ) {
                let path = "/2015-03-31/functions/f/invocations";
                let query = "Qualifier=1";
                let map = sign(path, Some(query), &[("x-amz-invocation-type", "Event")], &body, "k");
                let now = parse_amz_date(DATE).unwrap();
                let admin = |id: &str| (id == "admin").then(|| "k".to_string());
                let ok = SignedRequest { method: &Method::POST, path, query: Some(query), headers: &map, body: &body };
                prop_assert!(verify(&ok, "lambda", now, admin).is_ok());

                let mut body2 = body.clone();
                let mut map2 = map.clone();
                let (mut path2, mut query2) = (path.to_string(), query.to_string());
                match which {
                    0 => {
                        if body2.is_empty() { body2.push(byte) } else {
                            let i = at.index(body2.len());
                            body2[i] = body2[i].wrapping_add(byte.max(1));
                        }
                    }
                    1 => path2 = path2.replace("/f/", "/g/"),
                    2 => query2 = format!("Qualifier={}", byte.max(2)),
                    _ => { map2.insert("x-amz-invocation-type", HeaderValue::from_static("RequestResponse")); }
                }
                let changed = SignedRequest { method: &Method::POST, path: &path2, query: Some(&query2), headers: &map2, body: &body2 };
                prop_assert!(verify(&changed, "lambda", now, admin).is_err());
            }
        }
    }
}
