//! `.flickignore`: which files of a function directory stay out of its
//! package, with the gitignore syntax users already know (the common subset:
//! `*`, `?`, `**`, `!`, trailing `/`, anchoring; no `[...]` classes).

/// Always left out: VCS data, bytecode caches and flick's own state would
/// only bloat the package and change its hash for no reason. They come
/// first, so a `.flickignore` line can still re-include them with `!`.
const BUILTIN: &[&str] = &[".git/", "__pycache__/", ".flick/", "*.pyc", "node_modules/.cache/"];

pub(crate) struct IgnoreRules {
    rules: Vec<Rule>,
}

struct Rule {
    negate: bool,
    dir_only: bool,
    segments: Vec<Segment>,
}

enum Segment {
    /// `**`: any number of path components.
    AnyPath,
    Glob(Vec<Token>),
}

#[derive(Clone, Copy)]
enum Token {
    Literal(char),
    /// `?`
    AnyChar,
    /// `*`, never crossing a `/` (segments are matched one component each).
    Star,
}

impl IgnoreRules {
    /// Leaves nothing out.
    pub(crate) fn none() -> Self {
        Self { rules: Vec::new() }
    }

    pub(crate) fn builtin() -> Self {
        let mut rules = Self { rules: Vec::new() };
        for line in BUILTIN {
            if let Ok(Some(rule)) = parse_line(line) {
                rules.rules.push(rule);
            }
        }
        rules
    }

    /// Adds the lines of an ignore file after the existing rules. The error
    /// is the 1-based line number and what is wrong with it.
    pub(crate) fn add_lines(&mut self, text: &str) -> Result<(), (usize, String)> {
        for (index, line) in text.lines().enumerate() {
            if let Some(rule) = parse_line(line).map_err(|reason| (index + 1, reason))? {
                self.rules.push(rule);
            }
        }
        Ok(())
    }

    /// Whether `path` (relative to the package root, `/`-separated) is left
    /// out. The last matching rule decides, as in gitignore.
    pub(crate) fn is_ignored(&self, path: &str, is_dir: bool) -> bool {
        let components: Vec<&str> = path.split('/').filter(|c| !c.is_empty()).collect();
        self.rules
            .iter()
            .rev()
            .find(|rule| (is_dir || !rule.dir_only) && match_segments(&rule.segments, &components))
            .is_some_and(|rule| !rule.negate)
    }
}

fn parse_line(line: &str) -> Result<Option<Rule>, String> {
    let original = line;
    let line = line.trim_end();
    if line.is_empty() || line.starts_with('#') {
        return Ok(None);
    }
    let (negate, line) = match line.strip_prefix('!') {
        Some(rest) => (true, rest),
        None => (false, line),
    };
    // `\#` and `\!` stand for a leading literal `#` / `!`.
    let line = match line.strip_prefix('\\') {
        Some(rest) if rest.starts_with(['#', '!']) => rest,
        _ => line,
    };
    let dir_only = line.ends_with('/');
    let line = line.trim_end_matches('/');
    // A slash anywhere but at the end ties the pattern to the package root;
    // otherwise it is a name to match at any depth.
    let anchored = line.contains('/');
    let line = line.trim_start_matches('/');
    if line.is_empty() {
        return Err(format!("`{}` has no pattern to match", original.trim_end()));
    }

    let mut segments = Vec::new();
    if !anchored {
        segments.push(Segment::AnyPath);
    }
    for part in line.split('/').filter(|p| !p.is_empty()) {
        if part == "**" {
            // `a/**/**/b` is `a/**/b`; collapsing keeps matching linear-ish.
            if !matches!(segments.last(), Some(Segment::AnyPath)) {
                segments.push(Segment::AnyPath);
            }
        } else {
            segments.push(Segment::Glob(tokenize(part)));
        }
    }
    Ok(Some(Rule { negate, dir_only, segments }))
}

fn tokenize(glob: &str) -> Vec<Token> {
    let mut tokens = Vec::new();
    let mut chars = glob.chars();
    while let Some(c) = chars.next() {
        tokens.push(match c {
            '*' => Token::Star,
            '?' => Token::AnyChar,
            '\\' => Token::Literal(chars.next().unwrap_or('\\')),
            c => Token::Literal(c),
        });
    }
    tokens
}

fn match_segments(segments: &[Segment], components: &[&str]) -> bool {
    match segments.split_first() {
        None => components.is_empty(),
        // A trailing `**` (`docs/**`) means everything inside, not the
        // directory itself, as in gitignore.
        Some((Segment::AnyPath, [])) => !components.is_empty(),
        Some((Segment::AnyPath, rest)) => (0..=components.len()).any(|skip| match_segments(rest, &components[skip..])),
        Some((Segment::Glob(tokens), rest)) => match components.split_first() {
            Some((first, others)) => match_glob(tokens, first) && match_segments(rest, others),
            None => false,
        },
    }
}

/// Wildcard matching with single-star backtracking: on a mismatch, the last
/// `*` seen absorbs one more character. Linear enough for file names.
fn match_glob(tokens: &[Token], name: &str) -> bool {
    let text: Vec<char> = name.chars().collect();
    let (mut t, mut s) = (0, 0);
    let mut last_star: Option<(usize, usize)> = None;
    while s < text.len() {
        match tokens.get(t) {
            Some(Token::Star) => {
                last_star = Some((t, s));
                t += 1;
                continue;
            }
            Some(Token::AnyChar) => {
                t += 1;
                s += 1;
                continue;
            }
            Some(Token::Literal(c)) if *c == text[s] => {
                t += 1;
                s += 1;
                continue;
            }
            _ => {}
        }
        match last_star {
            Some((star_t, star_s)) => {
                last_star = Some((star_t, star_s + 1));
                t = star_t + 1;
                s = star_s + 1;
            }
            None => return false,
        }
    }
    tokens[t..].iter().all(|token| matches!(token, Token::Star))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rules(text: &str) -> IgnoreRules {
        let mut rules = IgnoreRules::builtin();
        rules.add_lines(text).unwrap();
        rules
    }

    #[test]
    fn globs() {
        let t = |p: &str| tokenize(p);
        assert!(match_glob(&t("*.log"), "a.log"));
        assert!(match_glob(&t("*.log"), ".log"));
        assert!(!match_glob(&t("*.log"), "a.log.txt"));
        assert!(match_glob(&t("a?c"), "abc"));
        assert!(!match_glob(&t("a?c"), "ac"));
        assert!(match_glob(&t("*a*b*"), "xxaxxbxx"));
        assert!(!match_glob(&t("*a*b*"), "xxbxxaxx"));
        assert!(match_glob(&t("\\*"), "*"));
        assert!(!match_glob(&t("\\*"), "a"));
        assert!(match_glob(&t("é*"), "éa"));
    }

    #[test]
    fn builtins() {
        let r = rules("");
        assert!(r.is_ignored(".git", true));
        assert!(r.is_ignored("sub/__pycache__", true));
        assert!(r.is_ignored("a/b/c.pyc", false));
        assert!(r.is_ignored(".flick", true));
        assert!(r.is_ignored("node_modules/.cache", true));
        assert!(!r.is_ignored("node_modules", true));
        // Dir-only: a file named `.git` is kept.
        assert!(!r.is_ignored(".git", false));
        assert!(!r.is_ignored("main.py", false));
    }

    #[test]
    fn basename_patterns_match_at_any_depth() {
        let r = rules("*.log\nsecret.txt\n");
        assert!(r.is_ignored("a.log", false));
        assert!(r.is_ignored("x/y/a.log", false));
        assert!(r.is_ignored("x/secret.txt", false));
        assert!(!r.is_ignored("secret.txt.bak", false));
        // `*` does not cross `/`, but the basename rule applies per component.
        assert!(!r.is_ignored("a.log/inner", false));
    }

    #[test]
    fn slashes_anchor_to_the_root() {
        let r = rules("/build\ndocs/draft.md\n");
        assert!(r.is_ignored("build", true));
        assert!(r.is_ignored("build", false));
        assert!(!r.is_ignored("src/build", true));
        assert!(r.is_ignored("docs/draft.md", false));
        assert!(!r.is_ignored("x/docs/draft.md", false));
    }

    #[test]
    fn trailing_slash_matches_directories_only() {
        let r = rules("tmp/\n");
        assert!(r.is_ignored("tmp", true));
        assert!(r.is_ignored("a/tmp", true));
        assert!(!r.is_ignored("tmp", false));
    }

    #[test]
    fn negation_and_last_match_wins() {
        let r = rules("*.md\n!README.md\n");
        assert!(r.is_ignored("notes.md", false));
        assert!(!r.is_ignored("README.md", false));
        let r = rules("!README.md\n*.md\n");
        assert!(r.is_ignored("README.md", false));
        // Builtins can be overridden.
        let r = rules("!.flick/\n");
        assert!(!r.is_ignored(".flick", true));
    }

    #[test]
    fn double_star() {
        let r = rules("**/test\n");
        assert!(r.is_ignored("test", true));
        assert!(r.is_ignored("a/b/test", false));

        let r = rules("docs/**\n!docs/keep.md\n");
        assert!(!r.is_ignored("docs", true));
        assert!(r.is_ignored("docs/a.md", false));
        assert!(r.is_ignored("docs/x/y", true));
        assert!(!r.is_ignored("docs/keep.md", false));

        let r = rules("a/**/b\n");
        assert!(r.is_ignored("a/b", false));
        assert!(r.is_ignored("a/x/b", false));
        assert!(r.is_ignored("a/x/y/b", false));
        assert!(!r.is_ignored("a/x/c", false));
        assert!(!r.is_ignored("z/a/b", false));
    }

    #[test]
    fn comments_blanks_and_escapes() {
        let r = rules("# a comment\n\n   \n\\#hash\n\\!bang\nspaced.txt   \r\n");
        assert!(!r.is_ignored("# a comment", false));
        assert!(r.is_ignored("#hash", false));
        assert!(r.is_ignored("!bang", false));
        assert!(r.is_ignored("spaced.txt", false));
    }

    #[test]
    fn empty_patterns_are_errors_with_their_line() {
        let mut r = IgnoreRules::builtin();
        let (line, reason) = r.add_lines("ok\n!\n").unwrap_err();
        assert_eq!(line, 2);
        assert!(reason.contains("`!`"), "{reason}");
    }
}
