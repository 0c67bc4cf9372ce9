//! Mapping rules as APIcast evaluates them: pattern → anchored-prefix regex, method (or `ANY`), query-string
//! constraints, summed deltas per metric, `last` stops evaluation; and the normalised request path they match.

use percent_encoding::percent_decode_str;
use regex::Regex;
use std::collections::BTreeMap;

/// A pattern that could not be turned into a regex.
#[derive(Debug)]
pub struct MappingRuleError(pub String);

/// The character class APIcast substitutes for a `{placeholder}` (anything but `/`).
const PLACEHOLDER: &str = r"([\w\-.~%!$&'()*+,;=@:]+)";

#[derive(Debug, Clone)]
pub struct MappingRule {
    pub method: String,
    pub pattern: String,
    regex: Regex,
    /// The pattern's path when it is a plain literal (the usual case): matched as a prefix (or whole, with `$`)
    /// without the regex, whose per-thread cache is contended when several proxy threads share one rule.
    literal: Option<(String, bool)>,
    /// `(name, expected)`; `expected` is `None` for a `{placeholder}` (the arg only has to exist).
    params: Vec<(String, Option<String>)>,
    pub metric: String,
    pub delta: i64,
    pub last: bool,
}

impl MappingRule {
    pub fn new(
        method: &str,
        pattern: &str,
        params: Vec<(String, String)>,
        metric: String,
        delta: i64,
        last: bool,
    ) -> Result<Self, MappingRuleError> {
        let source = regexpify(pattern);
        let regex = Regex::new(&format!("^{source}")).map_err(|e| {
            MappingRuleError(format!(
                "{pattern:?} is not a supported pattern ({})",
                e.to_string().lines().last().unwrap_or_default()
            ))
        })?;
        let params = params
            .into_iter()
            .map(|(k, v)| {
                let is_placeholder = v.starts_with('{') && v.ends_with('}');
                (k, (!is_placeholder).then_some(v))
            })
            .collect();
        Ok(Self {
            method: method.to_owned(),
            pattern: pattern.to_owned(),
            literal: literal_path(pattern),
            regex,
            params,
            metric,
            delta,
            last,
        })
    }

    pub fn has_query_constraints(&self) -> bool {
        !self.params.is_empty()
    }

    /// Whether the rule applies to `method` and the normalised `path` with request `args`.
    pub fn matches(&self, method: &str, path: &str, args: &Args) -> bool {
        (self.method == "ANY" || self.method == method)
            && match &self.literal {
                Some((literal, true)) => path == literal,
                Some((literal, false)) => path.starts_with(literal.as_str()),
                None => self.regex.is_match(path),
            }
            && self
                .params
                .iter()
                .all(|(name, expected)| match (args.last(name), expected) {
                    (None, _) => false,
                    (Some(_), None) => true,
                    (Some(actual), Some(expected)) => actual == expected,
                })
    }
}

/// A pattern's path part with `//` collapsed, as APIcast reads it.
fn pattern_path(pattern: &str) -> String {
    let mut collapsed = String::with_capacity(pattern.len());
    for c in pattern.chars() {
        if c == '/' && collapsed.ends_with('/') {
            continue;
        }
        collapsed.push(c);
    }
    collapsed.truncate(collapsed.find('?').unwrap_or(collapsed.len()));
    collapsed
}

/// The path of a pattern that has no placeholder and nothing a regex reads specially (but a final `$`), with
/// whether it must match whole; `None` for the others.
fn literal_path(pattern: &str) -> Option<(String, bool)> {
    let collapsed = pattern_path(pattern);
    let path = collapsed.as_str();
    let (path, whole) = match path.strip_suffix('$') {
        Some(rest) => (rest, true),
        None => (path, false),
    };
    let plain = |c: char| c.is_ascii_alphanumeric() || "/-_~%.:@,;=&'!".contains(c);
    path.chars().all(plain).then(|| (path.to_owned(), whole))
}

/// Pattern → regex source in APIcast's order: collapse `//`, drop the query, placeholders, escape `.`.
fn regexpify(pattern: &str) -> String {
    let collapsed = pattern_path(pattern);
    let path = collapsed.as_str();
    let mut out = String::with_capacity(path.len() + 16);
    let mut rest = path;
    while let Some(open) = rest.find('{') {
        match rest[open..].find('}') {
            Some(close) => {
                out.push_str(&rest[..open].replace('.', r"\."));
                out.push_str(PLACEHOLDER);
                rest = &rest[open + close + 1..];
            }
            None => break,
        }
    }
    out.push_str(&rest.replace('.', r"\."));
    out
}

/// Request arguments (query string, then urlencoded body args which override same-named ones).
#[derive(Debug, Default, Clone)]
pub struct Args {
    pairs: Vec<(String, String)>,
}

impl Args {
    pub fn from_query(query: Option<&str>) -> Self {
        let mut args = Self::default();
        if let Some(q) = query {
            args.extend_from(q.as_bytes());
        }
        args
    }

    pub fn extend_from(&mut self, encoded: &[u8]) {
        self.pairs
            .extend(form_urlencoded::parse(encoded).map(|(k, v)| (k.into_owned(), v.into_owned())));
    }

    /// Appends `other`'s pairs, so they win for "last value" lookups.
    pub fn merge(&mut self, other: &Args) {
        self.pairs.extend(other.pairs.iter().cloned());
    }

    /// The last value of `name` (repeated args: the last one counts, as in nginx/APIcast).
    pub fn last(&self, name: &str) -> Option<&str> {
        self.pairs
            .iter()
            .rev()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    /// The first value of `name`.
    pub fn first(&self, name: &str) -> Option<&str> {
        self.pairs
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

/// Usage summed per metric, metrics with a total `<= 0` removed; sorted by name for stable cache keys.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Usage(pub BTreeMap<String, i64>);

impl Usage {
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// `usage%5Bhits%5D=2&...`, the form APIcast puts in cache keys and debug headers.
    /// `usage%5Bhits%5D=2&...`, form-encoded as backend expects (built without intermediate strings: this is part of
    /// every authorization cache key).
    pub fn encoded(&self) -> String {
        use std::fmt::Write;
        let mut out = String::with_capacity(self.0.len() * 24);
        for (i, (metric, delta)) in self.0.iter().enumerate() {
            if i > 0 {
                out.push('&');
            }
            out.push_str("usage%5B");
            out.extend(form_urlencoded::byte_serialize(metric.as_bytes()));
            out.push_str("%5D=");
            let _ = write!(out, "{delta}");
        }
        out
    }
}

/// Evaluates every rule in order; returns the usage and the matched patterns.
pub fn usage_for<'a>(
    rules: &'a [MappingRule],
    method: &str,
    path: &str,
    args: &Args,
) -> (Usage, Vec<&'a str>) {
    let mut sums: BTreeMap<String, i64> = BTreeMap::new();
    let mut matched = Vec::new();
    for rule in rules {
        if rule.matches(method, path, args) {
            *sums.entry(rule.metric.clone()).or_default() += rule.delta;
            matched.push(rule.pattern.as_str());
            if rule.last {
                break;
            }
        }
    }
    sums.retain(|_, v| *v > 0);
    (Usage(sums), matched)
}

/// nginx's `$uri` re-escaped as APIcast's `escape_uri`: percent-decoded, `//` merged, dot segments resolved,
/// then bytes outside the unreserved-and-sub-delims set escaped again.
pub fn normalize_path(raw: &str) -> String {
    if is_normal(raw) {
        return raw.to_owned();
    }
    rebuild_path(raw)
}

fn rebuild_path(raw: &str) -> String {
    let decoded = percent_decode_str(raw).collect::<Vec<u8>>();
    let mut segments: Vec<&[u8]> = Vec::new();
    let trailing = decoded.ends_with(b"/") || decoded.ends_with(b"/.") || decoded.ends_with(b"/..");
    for segment in decoded.split(|b| *b == b'/') {
        match segment {
            b"" | b"." => {}
            b".." => {
                segments.pop();
            }
            s => segments.push(s),
        }
    }
    let mut out = String::with_capacity(raw.len() + 4);
    for s in &segments {
        out.push('/');
        escape_into(s, &mut out);
    }
    if out.is_empty() || (trailing && !segments.is_empty()) {
        out.push('/');
    }
    out
}

/// Whether `raw` is already what [`normalize_path`] would make of it (the usual case): rooted, nothing escaped or to
/// escape, no empty or dot segments.
fn is_normal(raw: &str) -> bool {
    raw.starts_with('/')
        && !raw.contains("//")
        && raw.bytes().all(|b| b == b'/' || kept(b))
        && raw
            .split('/')
            .all(|segment| segment != "." && segment != "..")
}

/// Bytes APIcast's `escape_uri` leaves as they are.
fn kept(b: u8) -> bool {
    b.is_ascii_alphanumeric()
        || matches!(
            b,
            b'-' | b'.'
                | b'_'
                | b'~'
                | b'!'
                | b'$'
                | b'&'
                | b'\''
                | b'('
                | b')'
                | b'*'
                | b'+'
                | b','
                | b';'
                | b'='
                | b':'
                | b'@'
        )
}

fn escape_into(bytes: &[u8], out: &mut String) {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    for &b in bytes {
        if kept(b) {
            out.push(b as char);
        } else {
            out.push('%');
            out.push(HEX[usize::from(b >> 4)] as char);
            out.push(HEX[usize::from(b & 0xF)] as char);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(method: &str, pattern: &str, metric: &str, delta: i64, last: bool) -> MappingRule {
        MappingRule::new(method, pattern, vec![], metric.into(), delta, last).unwrap()
    }

    fn usage(rules: &[MappingRule], method: &str, path_and_query: &str) -> Usage {
        let (path, query) = match path_and_query.split_once('?') {
            Some((p, q)) => (p, Some(q)),
            None => (path_and_query, None),
        };
        usage_for(
            rules,
            method,
            &normalize_path(path),
            &Args::from_query(query),
        )
        .0
    }

    #[test]
    fn literal_patterns_match_exactly_as_their_regex_does() {
        let patterns = [
            "/",
            "/bench",
            "/bench$",
            "/a.b",
            "/x//y",
            "/v1/items?x=1",
            "/foo{bar}",
            "/a+b",
            "/hello$",
            "/$",
            "/a-b_c~d%20e",
        ];
        let paths = [
            "/",
            "/bench",
            "/bench/42",
            "/benchx",
            "/a.b",
            "/aXb",
            "/x/y",
            "/v1/items",
            "/a+b",
            "/aab",
            "/hello",
            "/hello/",
            "/a-b_c~d%20e/f",
            "/foobar",
        ];
        let mut literal = 0;
        for pattern in patterns {
            let rule =
                MappingRule::new("GET", pattern, Vec::new(), "hits".into(), 1, false).unwrap();
            literal += usize::from(rule.literal.is_some());
            for path in paths {
                assert_eq!(
                    rule.matches("GET", path, &Args::default()),
                    rule.regex.is_match(path),
                    "{pattern} on {path}"
                );
            }
        }
        assert_eq!(literal, 9, "the plain patterns take the literal path");
    }

    #[test]
    fn prefix_semantics_and_dollar_anchor() {
        let rules = [rule("GET", "/abc", "hits", 1, false)];
        assert_eq!(usage(&rules, "GET", "/abc/def").0["hits"], 1);
        assert_eq!(usage(&rules, "GET", "/abcd").0["hits"], 1);
        assert!(usage(&rules, "GET", "/ab").is_empty());
        assert!(usage(&rules, "POST", "/abc").is_empty());
        let anchored = [rule("GET", "/abc$", "hits", 1, false)];
        assert!(usage(&anchored, "GET", "/abc/def").is_empty());
        assert_eq!(usage(&anchored, "GET", "/abc?x=1").0["hits"], 1);
    }

    #[test]
    fn placeholders_do_not_cross_slashes_and_dots_are_literal() {
        let rules = [rule("GET", "/foo/{id}/bar.json", "hits", 1, false)];
        assert_eq!(usage(&rules, "GET", "/foo/12/bar.json").0["hits"], 1);
        assert!(usage(&rules, "GET", "/foo/1/2/bar.json").is_empty());
        assert!(usage(&rules, "GET", "/foo/12/barxjson").is_empty());
    }

    #[test]
    fn querystring_parameters_any_method_and_summing() {
        let with_params = MappingRule::new(
            "ANY",
            "/q?ignored=1",
            vec![("a".into(), "1".into()), ("b".into(), "{b}".into())],
            "hits".into(),
            3,
            false,
        )
        .unwrap();
        let rules = [with_params, rule("GET", "/", "hits", 1, false)];
        assert_eq!(usage(&rules, "DELETE", "/q?a=1&b=zz").0["hits"], 3);
        assert_eq!(usage(&rules, "GET", "/q?a=1&b=").0["hits"], 4);
        assert_eq!(usage(&rules, "GET", "/q?a=2&a=1&b=1").0["hits"], 4);
        assert_eq!(usage(&rules, "GET", "/q?a=1").0["hits"], 1);
        assert_eq!(usage(&rules, "GET", "/q?a=1&a=2&b=x").0["hits"], 1);
    }

    #[test]
    fn last_stops_and_nonpositive_totals_vanish() {
        let rules = [
            rule("GET", "/a", "hits", 1, true),
            rule("GET", "/", "hits", 5, false),
            rule("GET", "/", "zero", 0, false),
        ];
        assert_eq!(usage(&rules, "GET", "/a").0.len(), 1);
        assert_eq!(usage(&rules, "GET", "/a").0["hits"], 1);
        let u = usage(&rules, "GET", "/b");
        assert_eq!(u.0["hits"], 5);
        assert!(!u.0.contains_key("zero"));
        assert_eq!(u.encoded(), "usage%5Bhits%5D=5");
        let several = Usage(BTreeMap::from([
            ("hits".to_owned(), 2),
            ("a b&c".to_owned(), 10),
        ]));
        assert_eq!(
            several.encoded(),
            "usage%5Ba+b%26c%5D=10&usage%5Bhits%5D=2",
            "form-encoded as form_urlencoded's serializer would"
        );
    }

    #[test]
    fn path_normalisation() {
        assert_eq!(normalize_path("/a//b/./c/../d"), "/a/b/d");
        assert_eq!(normalize_path("/foo%20/bar/"), "/foo%20/bar/");
        assert_eq!(normalize_path("/a%2Fb"), "/a/b");
        assert_eq!(normalize_path(""), "/");
        assert_eq!(normalize_path("/../.."), "/");
        // Already normal paths come back as they are (the fast path), others are rebuilt.
        for same in ["/", "/bench/42", "/a/", "/v1/x.json", "/a:b@c/d;e=f"] {
            assert_eq!(normalize_path(same), same);
        }
        assert_eq!(normalize_path("/a/."), "/a/");
        assert_eq!(normalize_path("/a/.."), "/");
        assert_eq!(normalize_path("a/b"), "/a/b");
        assert_eq!(normalize_path("/a b"), "/a%20b");
        assert_eq!(normalize_path("/caf\u{e9}"), "/caf%C3%A9");
    }

    #[test]
    fn the_fast_path_agrees_with_rebuilding_on_every_short_path() {
        let alphabet = ['/', '.', 'a', '%', ' ', '2'];
        let mut paths = vec![String::new()];
        for _ in 0..6 {
            let longer: Vec<String> = paths
                .iter()
                .flat_map(|p| alphabet.iter().map(move |c| format!("{p}{c}")))
                .collect();
            paths.extend(longer);
            paths.dedup();
        }
        let mut normal = 0;
        for path in &paths {
            if is_normal(path) {
                normal += 1;
                assert_eq!(rebuild_path(path), *path, "{path:?}");
            }
        }
        assert!(
            normal > 1000,
            "only {normal} of {} paths took the fast path",
            paths.len()
        );
        let rules = [rule("GET", "/foo%20/bar/", "hits", 1, false)];
        assert_eq!(usage(&rules, "GET", "/foo%20/bar/").0["hits"], 1);
    }

    #[test]
    fn unsupported_regex_is_reported() {
        assert!(MappingRule::new("GET", "/(?=x)", vec![], "h".into(), 1, false).is_err());
    }
}
