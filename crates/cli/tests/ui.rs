//! The web dashboard at `/ui`: driven in Debian's headless Chromium by
//! tests/ui/dashboard.js (playwright-core) against a real `flick up`, and
//! its sessions attacked over plain HTTP: no session, a wrong key, a forged
//! or foreign login, the cookie without its CSRF token, a replayed cookie
//! after logout, a function fishing for the session.

mod common;

use std::path::PathBuf;
use std::process::Command;

use common::{Flick, manifest};

const LOG_LINE: &str = "hello from the dashboard test";
const SECRET_VALUE: &str = "s3cr3t-value-xyz";

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// `greeter`, deployed twice (revisions 1 and 2): prints a line and answers
/// its revision, the event and every header it got.
fn deploy_greeter(flick: &Flick) {
    let toml =
        manifest("greeter", "python3", "main.handler", &format!("[env]\nGREETING_SECRET = \"{SECRET_VALUE}\"\n"));
    for rev in [1, 2] {
        let code = format!(
            "import json\ndef handler(event, context):\n    print('{LOG_LINE}')\n    return {{'statusCode': 200, \
             'body': json.dumps({{'rev': {rev}, 'event': event, 'headers': context.http['headers']}}, indent=1)}}\n"
        );
        flick.deploy_files("greeter", &[("flick.toml", &toml), ("main.py", &code)]);
    }
    assert_eq!(flick.get("/v1/functions/greeter").json()["current_revision"], 2);
}

/// `evil`, public: a page whose script, run in a logged-in browser, tries
/// to read the dashboard's CSRF token from `/ui` and call `/v1` with it,
/// and writes what it got into the page's title.
fn deploy_evil_page(flick: &Flick) {
    let script = r#"(async () => {
  document.title = 'running';
  const out = [];
  let tok = null;
  try {
    const t = await (await fetch('/ui', { credentials: 'include' })).text();
    const m = t.match(/flick-csrf" content="([0-9a-f]{64})/);
    tok = m && m[1];
    out.push(tok ? 'token:' + tok : 'no-token');
  } catch (e) { out.push('ui-refused'); }
  try {
    const r = await fetch('/v1/functions', { credentials: 'include', headers: tok ? { 'X-Flick-CSRF': tok } : {} });
    out.push('v1:' + r.status);
  } catch (e) { out.push('v1-refused'); }
  document.title = 'done:' + out.join(',');
})();"#;
    let page = format!(
        "<!doctype html><html><head><title>untouched</title></head><body><script>{script}</script></body></html>"
    );
    let code = format!(
        "PAGE = {}\ndef handler(event, context):\n    return {{'statusCode': 200, 'headers': {{'content-type': \
         'text/html'}}, 'body': PAGE}}\n",
        serde_json::to_string(&page).unwrap()
    );
    let toml = manifest("evil", "python3", "main.handler", "public = true\n");
    flick.deploy_files("evil", &[("flick.toml", &toml), ("main.py", &code)]);
}

#[test]
fn the_dashboard_works_in_a_real_browser() {
    let tests = root().join("tests/ui");
    assert!(
        tests.join("node_modules/playwright-core").is_dir(),
        "playwright-core is missing: run `npm ci --prefix tests/ui`"
    );
    let chromium = std::env::var("CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into());
    assert!(std::path::Path::new(&chromium).exists(), "no Chromium at {chromium}: `apt-get install chromium`");
    let flick = Flick::start();
    deploy_greeter(&flick);
    deploy_evil_page(&flick);
    let artifacts = root().join("target/ci-artifacts/ui");

    let out = Command::new("node")
        .arg(tests.join("dashboard.js"))
        .env("FLICK_URL", flick.ui_base())
        .env("FLICK_MAIN_URL", &flick.base)
        .env("EVIL", "evil")
        .env("FLICK_KEY", &flick.key)
        .env("FUNCTION", "greeter")
        .env("LOG_LINE", LOG_LINE)
        .env("SECRET_VALUE", SECRET_VALUE)
        .env("ARTIFACTS", &artifacts)
        .env("CHROMIUM", &chromium)
        .output()
        .expect("node runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "the browser script failed:\n{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    let findings: serde_json::Value = serde_json::from_str(stdout.lines().last().unwrap_or("")).expect("findings");
    eprintln!("dashboard findings: {findings}");

    // What the browser did, seen from the API: the panel's call ran…
    let id = findings["activation"].as_str().expect("an activation id");
    let a = flick.activation(id);
    assert_eq!((a["function"].as_str(), a["status"].as_str()), (Some("greeter"), Some("success")), "{a}");
    assert!(a["logs"].to_string().contains(LOG_LINE), "{a}");
    // …the rollback button rolled back, and the forged POSTs changed nothing.
    assert_eq!(flick.get("/v1/functions/greeter").json()["current_revision"], 1);
    assert_eq!(flick.invoke("greeter", "{}").json()["rev"], 1);
    // Charts and the bill: drawn from the stats and usage endpoints when
    // this flick serves them, else the pages say "no data".
    let series = flick.get("/v1/stats/series?since=1h&step=60s");
    if series.status == 200 && series.json()["points"].as_array().is_some_and(|p| !p.is_empty()) {
        assert_eq!(findings["charts"], "drawn", "{findings}");
    } else {
        assert_eq!(findings["charts"], "no data", "{findings}");
    }
    if flick.get("/v1/usage").status == 200 {
        assert!(findings["usage"].as_str().is_some_and(|u| u.contains("greeter")), "{findings}");
    } else {
        assert_eq!(findings["usage"], "no data", "{findings}");
    }
    for page in
        ["01-login", "03-functions", "04-function", "05-invoke", "06-activation", "07-activations", "08-rollback"]
    {
        assert!(artifacts.join(format!("{page}.png")).is_file(), "screenshot {page}");
    }
}

/// A form post's body (reqwest's `form` is a feature flick does not build).
trait FormOf {
    fn form_of(self, pairs: &[(&str, &str)]) -> Self;
}

impl FormOf for reqwest::blocking::RequestBuilder {
    fn form_of(self, pairs: &[(&str, &str)]) -> Self {
        let body = url::form_urlencoded::Serializer::new(String::new()).extend_pairs(pairs).finish();
        self.header("content-type", "application/x-www-form-urlencoded").body(body)
    }
}

/// A client that shows redirects instead of following them.
fn browserish() -> reqwest::blocking::Client {
    common::install_tls_provider();
    reqwest::blocking::Client::builder().no_proxy().redirect(reqwest::redirect::Policy::none()).build().unwrap()
}

/// Logs in with a form post; returns the session cookie's value and the
/// page's CSRF token.
fn log_in(http: &reqwest::blocking::Client, flick: &Flick) -> (String, String) {
    let ui = flick.ui_base();
    let r = http.post(format!("{ui}/ui/login")).form_of(&[("id", "admin"), ("key", &flick.key)]).send().unwrap();
    assert_eq!(r.status(), 303);
    assert_eq!(r.headers()["location"], "/ui");
    let set = r.headers()["set-cookie"].to_str().unwrap().to_string();
    for attr in ["HttpOnly", "SameSite=Strict", "Path=/"] {
        assert!(set.contains(attr), "{set}");
    }
    let session = set.split(';').next().unwrap().strip_prefix("flick_session=").unwrap().to_string();
    let page = http.get(format!("{ui}/ui")).header("cookie", format!("flick_session={session}")).send().unwrap();
    assert_eq!(page.status(), 200);
    let csp = page.headers()["content-security-policy"].to_str().unwrap().to_string();
    assert!(
        csp.contains("default-src 'self'") && csp.contains("frame-ancestors 'none'") && !csp.contains("unsafe"),
        "{csp}"
    );
    assert_eq!(page.headers()["x-frame-options"], "DENY");
    let html = page.text().unwrap();
    let at = html.find("name=\"flick-csrf\" content=\"").expect("a CSRF token in the page") + 27;
    (session, html[at..at + 64].to_string())
}

#[test]
fn sessions_hold_against_forgery() {
    let flick = Flick::start();
    deploy_greeter(&flick);
    let http = browserish();
    let ui = flick.ui_base();
    let url = |p: &str| format!("{ui}{p}");
    let main = |p: &str| format!("{}{p}", flick.base);
    assert_ne!(ui, flick.base, "the dashboard has an origin of its own");

    // No session: the pages send the browser to the login page, the API refuses.
    let r = http.get(url("/ui")).send().unwrap();
    assert_eq!((r.status().as_u16(), r.headers()["location"].to_str().unwrap()), (303, "/ui/login"));
    assert_eq!(http.get(url("/v1/functions")).send().unwrap().status(), 401);
    assert_eq!(http.get(url("/ui/login")).send().unwrap().status(), 200);
    // The assets need no session and hold no data; a path outside them is not served.
    let js = http.get(url("/ui/assets/app.js")).send().unwrap();
    assert_eq!(js.status(), 200);
    assert_eq!(js.headers()["content-type"], "text/javascript; charset=utf-8");
    let etag = js.headers()["etag"].clone();
    let again = http.get(url("/ui/assets/app.js")).header("if-none-match", etag).send().unwrap();
    assert_eq!(again.status(), 304);
    for path in ["/ui/assets/../../Cargo.toml", "/ui/assets/vendor/SHA256SUMS", "/ui/assets/%2e%2e/src/lib.rs"] {
        assert_eq!(http.get(url(path)).send().unwrap().status(), 404, "{path}");
    }

    // A wrong key, a wrong id, an empty key: the form again with an error, no cookie.
    for (id, key) in [("admin", "wrong"), ("root", flick.key.as_str()), ("admin", ""), ("admin", &flick.key[..10])] {
        let r = http.post(url("/ui/login")).form_of(&[("id", id), ("key", key)]).send().unwrap();
        assert_eq!(r.status(), 401, "{id}");
        assert!(r.headers().get("set-cookie").is_none());
        let body = r.text().unwrap();
        assert!(body.contains("Wrong key id or key."), "{body}");
    }
    // The id is shown back escaped.
    let r = http.post(url("/ui/login")).form_of(&[("id", "<script>x</script>"), ("key", "k")]).send().unwrap();
    assert!(!r.text().unwrap().contains("<script>x"));
    // Another site's form, even with the right key (login CSRF): refused.
    for (name, value) in [("origin", "http://evil.example"), ("sec-fetch-site", "cross-site")] {
        let r = http.post(url("/ui/login")).header(name, value).form_of(&[("key", flick.key.as_str())]).send().unwrap();
        assert_eq!(r.status(), 403, "{name}");
        assert!(r.headers().get("set-cookie").is_none());
    }

    let (session, csrf) = log_in(&http, &flick);
    let cookie = format!("flick_session={session}");
    let with = |rb: reqwest::blocking::RequestBuilder, token: Option<&str>| {
        let rb = rb.header("cookie", &cookie);
        match token {
            Some(t) => rb.header("x-flick-csrf", t),
            None => rb,
        }
        .send()
        .unwrap()
    };
    assert_eq!(with(http.get(url("/v1/functions")), Some(&csrf)).status(), 200);
    // The cookie alone (what a forged cross-site request carries), or with a wrong token: 401.
    let rollback = || http.post(url("/v1/functions/greeter/rollback")).body("{\"revision\": 1}");
    assert_eq!(with(rollback(), None).status(), 401);
    assert_eq!(with(rollback(), Some(&"0".repeat(64))).status(), 401);
    assert_eq!(with(rollback(), Some(&session)).status(), 401);
    assert_eq!(with(http.get(url("/v1/functions")), None).status(), 401);
    assert_eq!(with(http.post(url("/fn/greeter")).body("{}"), None).status(), 401);
    assert_eq!(flick.get("/v1/functions/greeter").json()["current_revision"], 2, "nothing was rolled back");
    // The token without the cookie: nothing.
    let r = http.get(url("/v1/functions")).header("x-flick-csrf", &csrf).send().unwrap();
    assert_eq!(r.status(), 401);

    // On the main listener, where functions' pages live, the session is
    // nothing: not for /v1, not for a private function, and /ui there
    // only points at the dashboard's own address.
    assert_eq!(with(http.get(main("/v1/functions")), Some(&csrf)).status(), 401);
    assert_eq!(with(http.post(main("/fn/greeter")).body("{}"), Some(&csrf)).status(), 401);
    assert_eq!(with(http.get(main("/api/v1/namespaces/_/actions")), Some(&csrf)).status(), 401);
    for path in ["/ui", "/ui/", "/ui/login", "/ui/assets/app.js"] {
        let r = with(http.get(main(path)), Some(&csrf));
        assert_eq!(r.status(), 307, "{path}");
        assert_eq!(r.headers()["location"].to_str().unwrap(), format!("{ui}/ui"), "{path}");
        assert!(r.headers().get("set-cookie").is_none());
        assert!(!r.text().unwrap().contains(&csrf), "{path}");
    }
    // A login posted to the main listener opens nothing.
    let r = http.post(main("/ui/login")).form_of(&[("id", "admin"), ("key", &flick.key)]).send().unwrap();
    assert!(r.headers().get("set-cookie").is_none(), "{:?}", r.headers());
    assert!(r.status().is_client_error(), "{}", r.status());
    // On the dashboard's listener, a function's answer runs sandboxed (no
    // script, an opaque origin), whatever policy it sets itself.
    let r = with(http.post(url("/fn/greeter")).body("{}"), Some(&csrf));
    assert_eq!(r.status(), 200);
    let csp: Vec<_> = r.headers().get_all("content-security-policy").iter().map(|v| v.to_str().unwrap()).collect();
    assert!(csp.contains(&"sandbox"), "{csp:?}");
    // Only the native surface is there: no other API to reach with a session.
    assert_eq!(with(http.get(url("/api/v1/namespaces")), Some(&csrf)).status(), 404);
    assert_eq!(with(http.get(url("/system/functions")), Some(&csrf)).status(), 404);

    // The function, called through the session, sees neither the session
    // cookie nor the token; its own cookies still reach it.
    let r = http
        .post(url("/fn/greeter"))
        .header("cookie", format!("theirs=1; {cookie}; also=2"))
        .header("x-flick-csrf", &csrf)
        .body("{}")
        .send()
        .unwrap();
    assert_eq!(r.status(), 200);
    let seen = r.text().unwrap();
    assert!(!seen.contains(&session) && !seen.contains(&csrf), "{seen}");
    assert!(seen.contains("theirs=1; also=2"), "{seen}");

    // Logout needs the page's token; then the session is over on the server.
    let out = |token: &str| {
        http.post(url("/ui/logout")).header("cookie", &cookie).form_of(&[("csrf", token)]).send().unwrap().status()
    };
    assert_eq!(out("wrong"), 403);
    assert_eq!(with(http.get(url("/v1/functions")), Some(&csrf)).status(), 200, "still logged in");
    assert_eq!(out(&csrf), 303);
    assert_eq!(with(http.get(url("/v1/functions")), Some(&csrf)).status(), 401);
    let r = http.get(url("/ui")).header("cookie", &cookie).send().unwrap();
    assert_eq!(r.status(), 303, "the old cookie opens no page");
}
