//! The web dashboard's files, embedded in the binary at build time: the
//! page shell and login page (templates `crates/api/src/ui.rs` fills in),
//! the dashboard's own script and style, and the vendored third-party
//! modules (Preact, hooks, htm, uPlot; see `vendor.sh`, which re-vendors
//! them from npm and checks their sha256). Nothing here is fetched at run
//! time, and building needs neither npm nor a network.

use std::sync::OnceLock;

/// The page every dashboard view is drawn in; `{{csrf}}` is replaced by the
/// session's CSRF token (HTML-safe: 64 hex digits).
pub const SHELL_HTML: &str = include_str!("../assets/index.html");
/// The login page; `{{error}}` and `{{id}}` are replaced (HTML-escaped).
pub const LOGIN_HTML: &str = include_str!("../assets/login.html");

/// One embedded file under `/ui/assets/`.
#[derive(Debug)]
pub struct Asset {
    pub path: &'static str,
    pub body: &'static [u8],
    pub content_type: &'static str,
}

impl Asset {
    /// A strong validator for `ETag`: the SHA-256 of the bytes, computed
    /// once. Paths carry no version, so browsers revalidate (`no-cache`)
    /// and get a 304 while the binary is the same.
    pub fn etag(&self) -> &'static str {
        static TAGS: OnceLock<Vec<String>> = OnceLock::new();
        let tags = TAGS.get_or_init(|| {
            ASSETS.iter().map(|a| format!("\"{}\"", &hex::encode(sha2::Sha256::digest(a.body))[..32])).collect()
        });
        let at = ASSETS.iter().position(|a| a.path == self.path).unwrap_or(0);
        &tags[at]
    }
}

use sha2::Digest as _;

const JS: &str = "text/javascript; charset=utf-8";
const CSS: &str = "text/css; charset=utf-8";

macro_rules! asset {
    ($path:literal, $type:expr) => {
        Asset { path: $path, body: include_bytes!(concat!("../assets/", $path)), content_type: $type }
    };
}

/// Every file served under `/ui/assets/`, by its path there.
pub static ASSETS: &[Asset] = &[
    asset!("app.js", JS),
    asset!("app.css", CSS),
    asset!("vendor/preact.mjs", JS),
    asset!("vendor/hooks.mjs", JS),
    asset!("vendor/htm.mjs", JS),
    asset!("vendor/uPlot.iife.min.js", JS),
    asset!("vendor/uPlot.min.css", CSS),
];

/// The asset at `path` (relative to `/ui/assets/`), if there is one.
pub fn asset(path: &str) -> Option<&'static Asset> {
    ASSETS.iter().find(|a| a.path == path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_asset_is_found_with_its_type_and_a_distinct_etag() {
        for a in ASSETS {
            assert!(!a.body.is_empty(), "{}", a.path);
            assert_eq!(asset(a.path).map(|f| f.path), Some(a.path));
            assert!(a.content_type.starts_with("text/"), "{}", a.path);
        }
        let mut tags: Vec<&str> = ASSETS.iter().map(Asset::etag).collect();
        tags.sort_unstable();
        tags.dedup();
        assert_eq!(tags.len(), ASSETS.len());
        assert!(asset("../Cargo.toml").is_none());
        assert!(asset("vendor/SHA256SUMS").is_none());
        assert!(asset("").is_none());
    }

    #[test]
    fn the_shell_loads_only_its_own_files_and_runs_no_inline_script() {
        assert!(SHELL_HTML.contains("{{csrf}}"));
        assert!(LOGIN_HTML.contains("{{error}}"));
        for page in [SHELL_HTML, LOGIN_HTML] {
            // Every <script> has a src (the CSP forbids inline scripts anyway).
            for tag in page.split("<script").skip(1) {
                let head = &tag[..tag.find('>').unwrap()];
                assert!(head.contains("src=\"/ui/assets/"), "inline or foreign script: <script{head}>");
            }
            assert!(!page.contains("http://") && !page.contains("https://"), "nothing from elsewhere");
            for handler in ["onclick=", "onload=", "onsubmit=", "onerror=", "javascript:"] {
                assert!(!page.contains(handler), "no inline handlers: {handler}");
            }
        }
    }
}
