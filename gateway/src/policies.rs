//! The policies of a service's chain that change requests and responses (`cors`, `headers`, `upstream`,
//! `url_rewriting`), compiled from their APIcast configuration and run in chain order, phase by phase.
//!
//! APIcast runs every policy's `rewrite` phase in chain order, then `access`, `content` and `header_filter`. The
//! request side is modelled the same way: [`rewrite`] walks the chain over a mutable [`RequestState`]; what the
//! state looks like when the walk reaches `apicast` is what credentials and mapping rules see, and the final state
//! is what goes upstream. [`filter_response`] is the `header_filter` phase.

use http::header::{self, HeaderName};
use http::{HeaderMap, HeaderValue, Method};
use regex::Regex;
use serde_json::Value;
use std::net::IpAddr;
use url::Url;

/// A policy problem, already phrased relative to the policy's `configuration`.
type Problem = String;

/// One step of the request/response pipeline, in chain order.
#[derive(Debug)]
pub enum Step {
    /// The position of the `apicast` policy: credentials and mapping rules see the request as it is here.
    Apicast,
    Cors(Cors),
    Headers(Headers),
    Upstream(Vec<UpstreamRule>),
    UrlRewriting(UrlRewriting),
}

// ---------------------------------------------------------------------------------------------------------------
// Templates (`value_type`: `plain` or `liquid`).

#[derive(Debug, Clone)]
enum Piece {
    Text(String),
    Var(String),
}

/// A configured value: plain text, or a small Liquid template over the request (`{{ uri }}`, `{{ host }}`,
/// `{{ remote_addr }}`, `{{ http_method }}`, `{{ service.id }}`, `{{ service.system_name }}`). Unknown variables
/// render as empty text, as in Liquid.
#[derive(Debug, Clone)]
pub struct Template(Vec<Piece>);

impl Template {
    fn plain(s: &str) -> Self {
        Self(vec![Piece::Text(s.to_owned())])
    }

    fn liquid(s: &str) -> Result<Self, Problem> {
        let mut pieces = Vec::new();
        let mut rest = s;
        while let Some(start) = rest.find("{{") {
            if start > 0 {
                pieces.push(Piece::Text(rest[..start].to_owned()));
            }
            let after = &rest[start + 2..];
            let end = after
                .find("}}")
                .ok_or_else(|| format!("unterminated `{{{{` in liquid template {s:?}"))?;
            let name = after[..end].trim();
            if name.contains('|') {
                return Err(format!(
                    "liquid filters are not supported by this gateway ({s:?})"
                ));
            }
            pieces.push(Piece::Var(name.to_owned()));
            rest = &after[end + 2..];
        }
        if !rest.is_empty() {
            pieces.push(Piece::Text(rest.to_owned()));
        }
        Ok(Self(pieces))
    }

    fn parse(value: &str, value_type: Option<&str>) -> Result<Self, Problem> {
        match value_type.unwrap_or("plain") {
            "plain" | "" => Ok(Self::plain(value)),
            "liquid" => Self::liquid(value),
            other => Err(format!(
                "value_type: expected plain or liquid, got {other:?}"
            )),
        }
    }

    pub fn render(&self, vars: &Vars<'_>) -> String {
        let mut out = String::new();
        for piece in &self.0 {
            match piece {
                Piece::Text(t) => out.push_str(t),
                Piece::Var(name) => out.push_str(&vars.get(name)),
            }
        }
        out
    }
}

/// What Liquid templates can read.
pub struct Vars<'a> {
    pub uri: &'a str,
    pub host: &'a str,
    pub remote_addr: Option<IpAddr>,
    pub method: &'a str,
    pub service_id: &'a str,
    pub service_name: &'a str,
}

impl Vars<'_> {
    fn get(&self, name: &str) -> String {
        match name {
            "uri" => self.uri.to_owned(),
            "host" => self.host.to_owned(),
            "remote_addr" => self.remote_addr.map(|a| a.to_string()).unwrap_or_default(),
            "http_method" => self.method.to_owned(),
            "service.id" => self.service_id.to_owned(),
            "service.system_name" => self.service_name.to_owned(),
            _ => String::new(),
        }
    }
}

// ---------------------------------------------------------------------------------------------------------------
// Configuration helpers.

fn field_str<'a>(obj: &'a Value, name: &str) -> Result<Option<&'a str>, Problem> {
    match obj.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(other) => Err(format!("{name}: expected a string, got {other}")),
    }
}

fn required_str<'a>(obj: &'a Value, name: &str) -> Result<&'a str, Problem> {
    field_str(obj, name)?.ok_or_else(|| format!("{name}: is required"))
}

fn array<'a>(obj: &'a Value, name: &str) -> Result<&'a [Value], Problem> {
    match obj.get(name) {
        None | Some(Value::Null) => Ok(&[]),
        Some(Value::Array(items)) => Ok(items),
        Some(other) => Err(format!("{name}: expected an array, got {other}")),
    }
}

/// `methods`: the command only applies to these (upper-cased) methods; absent or empty means all.
fn methods(obj: &Value) -> Result<Option<Vec<String>>, Problem> {
    let list = array(obj, "methods")?;
    if list.is_empty() {
        return Ok(None);
    }
    list.iter()
        .map(|m| {
            m.as_str()
                .map(str::to_ascii_uppercase)
                .ok_or_else(|| format!("methods: expected strings, got {m}"))
        })
        .collect::<Result<Vec<_>, _>>()
        .map(Some)
}

fn applies(methods: &Option<Vec<String>>, method: &Method) -> bool {
    methods
        .as_ref()
        .is_none_or(|list| list.iter().any(|m| m == method.as_str()))
}

/// ngx.re options: `i` (case-insensitive), `x` (extended), `s` (dot matches newline), `m` (multi-line) map onto
/// the `regex` crate; the performance-only flags (`j`, `o`, `J`, `D`, `U`...) change nothing here.
fn compile_regex(pattern: &str, options: Option<&str>) -> Result<Regex, Problem> {
    let mut flags = String::new();
    for c in options.unwrap_or("").chars() {
        if matches!(c, 'i' | 'x' | 's' | 'm') && !flags.contains(c) {
            flags.push(c);
        }
    }
    let full = if flags.is_empty() {
        pattern.to_owned()
    } else {
        format!("(?{flags}){pattern}")
    };
    Regex::new(&full).map_err(|e| format!("regex {pattern:?} is not supported ({e})"))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Op {
    /// Replace every value; an empty value removes.
    Set,
    /// Append, only when already present.
    Add,
    /// Append, creating when absent.
    Push,
    Delete,
}

fn parse_op(s: &str) -> Result<Op, Problem> {
    match s {
        "set" => Ok(Op::Set),
        "add" => Ok(Op::Add),
        "push" => Ok(Op::Push),
        "delete" => Ok(Op::Delete),
        other => Err(format!(
            "op: expected set, add, push or delete, got {other:?}"
        )),
    }
}

// ---------------------------------------------------------------------------------------------------------------
// `headers`.

#[derive(Debug)]
pub struct HeaderCommand {
    op: Op,
    name: HeaderName,
    value: Template,
}

/// The `headers` policy: `request[]` commands in `rewrite`, `response[]` commands in `header_filter`.
#[derive(Debug)]
pub struct Headers {
    request: Vec<HeaderCommand>,
    response: Vec<HeaderCommand>,
}

fn header_commands(config: &Value, list: &str) -> Result<Vec<HeaderCommand>, Problem> {
    array(config, list)?
        .iter()
        .enumerate()
        .map(|(i, c)| {
            let at = |e: Problem| format!("{list}[{i}].{e}");
            let op = parse_op(required_str(c, "op").map_err(at)?).map_err(at)?;
            let name = required_str(c, "header").map_err(at)?;
            let name = HeaderName::from_bytes(name.as_bytes())
                .map_err(|_| at(format!("header: {name:?} is not a valid header name")))?;
            let value = field_str(c, "value").map_err(at)?.unwrap_or("");
            let value =
                Template::parse(value, field_str(c, "value_type").map_err(at)?).map_err(at)?;
            Ok(HeaderCommand { op, name, value })
        })
        .collect()
}

fn apply_header_commands(commands: &[HeaderCommand], headers: &mut HeaderMap, vars: &Vars<'_>) {
    for c in commands {
        let rendered = || HeaderValue::from_str(&c.value.render(vars)).ok();
        match c.op {
            Op::Delete => {
                headers.remove(&c.name);
            }
            Op::Set => match rendered() {
                Some(v) if !v.is_empty() => {
                    headers.insert(c.name.clone(), v);
                }
                _ => {
                    headers.remove(&c.name);
                }
            },
            Op::Push => {
                if let Some(v) = rendered() {
                    headers.append(c.name.clone(), v);
                }
            }
            Op::Add => {
                if headers.contains_key(&c.name) {
                    if let Some(v) = rendered() {
                        headers.append(c.name.clone(), v);
                    }
                }
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------------------------
// `cors`.

#[derive(Debug)]
enum Origin {
    Any,
    /// A literal origin or, when it is not a plain URL, a regular expression the request's `Origin` must match.
    Pattern {
        text: String,
        regex: Option<Regex>,
    },
}

/// The `cors` policy: answers preflights with 204 and adds `Access-Control-*` headers to responses of requests
/// that carry `Origin`.
#[derive(Debug)]
pub struct Cors {
    allow_headers: Option<String>,
    allow_methods: Option<String>,
    allow_origin: Option<Origin>,
    allow_credentials: bool,
    max_age: u64,
}

fn joined_list(config: &Value, name: &str) -> Result<Option<String>, Problem> {
    match config.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) if s.is_empty() => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(Value::Array(items)) if items.is_empty() => Ok(None),
        Some(Value::Array(items)) => items
            .iter()
            .map(|v| {
                v.as_str()
                    .map(str::to_owned)
                    .ok_or_else(|| format!("{name}: expected strings, got {v}"))
            })
            .collect::<Result<Vec<_>, _>>()
            .map(|v| Some(v.join(", "))),
        Some(other) => Err(format!("{name}: expected an array of strings, got {other}")),
    }
}

impl Cors {
    fn compile(config: &Value) -> Result<Self, Problem> {
        let allow_origin = match field_str(config, "allow_origin")? {
            None | Some("") => None,
            Some("*") => Some(Origin::Any),
            Some(text) => {
                let looks_like_url = Url::parse(text).is_ok_and(|u| u.host_str().is_some())
                    && !text.contains(['*', '(', '[', '|', '^', '$', '\\']);
                let regex = if looks_like_url {
                    None
                } else {
                    Some(Regex::new(&format!("^(?:{text})$")).map_err(|e| {
                        format!("allow_origin: {text:?} is not a valid regex ({e})")
                    })?)
                };
                Some(Origin::Pattern {
                    text: text.to_owned(),
                    regex,
                })
            }
        };
        let allow_credentials = match config.get("allow_credentials") {
            None | Some(Value::Null) => true,
            Some(Value::Bool(b)) => *b,
            Some(other) => {
                return Err(format!(
                    "allow_credentials: expected a boolean, got {other}"
                ))
            }
        };
        let max_age = match config.get("max_age") {
            None | Some(Value::Null) => 600,
            Some(v) => v
                .as_u64()
                .ok_or_else(|| format!("max_age: expected a number of seconds, got {v}"))?,
        };
        Ok(Self {
            allow_headers: joined_list(config, "allow_headers")?,
            allow_methods: joined_list(config, "allow_methods")?,
            allow_origin,
            allow_credentials,
            max_age,
        })
    }

    fn is_preflight(method: &Method, headers: &HeaderMap) -> bool {
        method == Method::OPTIONS
            && headers.contains_key(header::ORIGIN)
            && headers.contains_key(header::ACCESS_CONTROL_REQUEST_METHOD)
    }

    fn add_headers(&self, request: &HeaderMap, response: &mut HeaderMap) {
        let Some(origin) = request.get(header::ORIGIN) else {
            return;
        };
        let echo = |name: HeaderName| request.get(name).cloned();
        let configured =
            |v: &Option<String>| v.as_deref().and_then(|s| HeaderValue::from_str(s).ok());
        if let Some(v) =
            configured(&self.allow_headers).or_else(|| echo(header::ACCESS_CONTROL_REQUEST_HEADERS))
        {
            response.insert(header::ACCESS_CONTROL_ALLOW_HEADERS, v);
        }
        if let Some(v) =
            configured(&self.allow_methods).or_else(|| echo(header::ACCESS_CONTROL_REQUEST_METHOD))
        {
            response.insert(header::ACCESS_CONTROL_ALLOW_METHODS, v);
        }
        let allow_origin = match &self.allow_origin {
            None => Some(origin.clone()),
            Some(Origin::Any) => Some(HeaderValue::from_static("*")),
            Some(Origin::Pattern { text, regex }) => {
                let matched = origin.to_str().is_ok_and(|o| match regex {
                    Some(re) => re.is_match(o),
                    None => o == text,
                });
                if matched {
                    Some(origin.clone())
                } else {
                    // Not an allowed origin: the configured value is stated, and the browser refuses.
                    HeaderValue::from_str(text).ok()
                }
            }
        };
        if let Some(v) = allow_origin {
            response.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, v);
        }
        if self.allow_credentials {
            response.insert(
                header::ACCESS_CONTROL_ALLOW_CREDENTIALS,
                HeaderValue::from_static("true"),
            );
        }
        response.insert(
            header::ACCESS_CONTROL_MAX_AGE,
            HeaderValue::from(self.max_age),
        );
    }
}

// ---------------------------------------------------------------------------------------------------------------
// `upstream`.

/// One `upstream` rule: when `regex` matches the request path, the request goes to `url` instead of `api_backend`.
#[derive(Debug)]
pub struct UpstreamRule {
    regex: Regex,
    url: Url,
}

fn upstream_rules(config: &Value) -> Result<Vec<UpstreamRule>, Problem> {
    array(config, "rules")?
        .iter()
        .enumerate()
        .map(|(i, rule)| {
            let at = |e: Problem| format!("rules[{i}].{e}");
            let regex =
                compile_regex(required_str(rule, "regex").map_err(at)?, None).map_err(at)?;
            let url = required_str(rule, "url").map_err(at)?;
            let url = Url::parse(url)
                .ok()
                .filter(|u| matches!(u.scheme(), "http" | "https") && u.host_str().is_some())
                .ok_or_else(|| at(format!("url: {url:?} is not an http(s) URL with a host")))?;
            Ok(UpstreamRule { regex, url })
        })
        .collect()
}

// ---------------------------------------------------------------------------------------------------------------
// `url_rewriting`.

#[derive(Debug)]
struct RewriteCommand {
    global: bool,
    regex: Regex,
    replace: String,
    stop: bool,
    methods: Option<Vec<String>>,
}

#[derive(Debug)]
struct ArgCommand {
    op: Op,
    arg: String,
    value: Template,
    methods: Option<Vec<String>>,
}

/// The `url_rewriting` policy: `sub`/`gsub` commands on the path, then commands on the query arguments.
#[derive(Debug)]
pub struct UrlRewriting {
    commands: Vec<RewriteCommand>,
    args: Vec<ArgCommand>,
}

impl UrlRewriting {
    fn compile(config: &Value) -> Result<Self, Problem> {
        let commands = array(config, "commands")?
            .iter()
            .enumerate()
            .map(|(i, c)| {
                let at = |e: Problem| format!("commands[{i}].{e}");
                let global = match required_str(c, "op").map_err(at)? {
                    "sub" => false,
                    "gsub" => true,
                    other => return Err(at(format!("op: expected sub or gsub, got {other:?}"))),
                };
                let regex = compile_regex(
                    required_str(c, "regex").map_err(at)?,
                    field_str(c, "options").map_err(at)?,
                )
                .map_err(at)?;
                Ok(RewriteCommand {
                    global,
                    regex,
                    replace: field_str(c, "replace")
                        .map_err(at)?
                        .unwrap_or("")
                        .to_owned(),
                    stop: c.get("break").and_then(Value::as_bool).unwrap_or(false),
                    methods: methods(c).map_err(at)?,
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        let args = array(config, "query_args_commands")?
            .iter()
            .enumerate()
            .map(|(i, c)| {
                let at = |e: Problem| format!("query_args_commands[{i}].{e}");
                let op = parse_op(required_str(c, "op").map_err(at)?).map_err(at)?;
                let value = field_str(c, "value").map_err(at)?.unwrap_or("");
                Ok(ArgCommand {
                    op,
                    arg: required_str(c, "arg").map_err(at)?.to_owned(),
                    value: Template::parse(value, field_str(c, "value_type").map_err(at)?)
                        .map_err(at)?,
                    methods: methods(c).map_err(at)?,
                })
            })
            .collect::<Result<Vec<_>, Problem>>()?;
        Ok(Self { commands, args })
    }
}

/// ngx.re.sub's replacement template: `$0`..`$9…`, `${N}`, `$$`. Missing groups expand to nothing.
fn expand(replace: &str, caps: &regex::Captures<'_>, out: &mut String) {
    let bytes = replace.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] != b'$' {
            let next = replace[i..].find('$').map_or(replace.len(), |n| i + n);
            out.push_str(&replace[i..next]);
            i = next;
            continue;
        }
        let rest = &replace[i + 1..];
        if rest.starts_with('$') {
            out.push('$');
            i += 2;
        } else if let Some(inner) = rest.strip_prefix('{') {
            match inner.find('}') {
                Some(end) if inner[..end].chars().all(|c| c.is_ascii_digit()) && end > 0 => {
                    let n: usize = inner[..end].parse().unwrap_or(usize::MAX);
                    out.push_str(caps.get(n).map_or("", |m| m.as_str()));
                    i += 3 + end;
                }
                _ => {
                    out.push('$');
                    i += 1;
                }
            }
        } else {
            let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
            if digits == 0 {
                out.push('$');
                i += 1;
            } else {
                let n: usize = rest[..digits].parse().unwrap_or(usize::MAX);
                out.push_str(caps.get(n).map_or("", |m| m.as_str()));
                i += 1 + digits;
            }
        }
    }
}

fn substitute(command: &RewriteCommand, subject: &str) -> Option<String> {
    let mut out = String::with_capacity(subject.len() + 8);
    let mut last = 0;
    let mut changed = false;
    for caps in command.regex.captures_iter(subject) {
        let m = caps.get(0).expect("group 0 always exists");
        out.push_str(&subject[last..m.start()]);
        expand(&command.replace, &caps, &mut out);
        last = m.end();
        changed = true;
        if !command.global {
            break;
        }
    }
    if !changed {
        return None;
    }
    out.push_str(&subject[last..]);
    Some(out)
}

// ---------------------------------------------------------------------------------------------------------------
// Running the chain.

/// The request as the chain changes it.
pub struct RequestState {
    pub method: Method,
    /// The normalised path (what mapping rules match), rewritten by `url_rewriting`.
    pub path: String,
    /// `url_rewriting` changed the path: upstream gets `path` instead of the client's raw path.
    pub path_rewritten: bool,
    /// The query string (without `?`), rewritten by `url_rewriting`'s arg commands.
    pub query: Option<String>,
    pub headers: HeaderMap,
    /// Chosen by the `upstream` policy; wins over `api_backend`.
    pub upstream: Option<Url>,
}

/// What the `rewrite` phase decided.
pub enum Rewritten {
    /// Carry on; the snapshot is the request as the `apicast` policy saw it (`None`: no `apicast` in the chain).
    Continue(Option<Snapshot>),
    /// A CORS preflight: answer 204 now, without authorization.
    Preflight,
}

/// The request as seen at the `apicast` policy's position.
pub struct Snapshot {
    pub path: String,
    pub query: Option<String>,
    pub headers: HeaderMap,
}

/// Runs every step's `rewrite` phase in chain order.
pub fn rewrite(steps: &[Step], state: &mut RequestState, vars: &Vars<'_>) -> Rewritten {
    let mut snapshot = None;
    for step in steps {
        match step {
            Step::Apicast => {
                snapshot = Some(Snapshot {
                    path: state.path.clone(),
                    query: state.query.clone(),
                    headers: state.headers.clone(),
                });
            }
            Step::Cors(_) => {
                if Cors::is_preflight(&state.method, &state.headers) {
                    return Rewritten::Preflight;
                }
            }
            Step::Headers(h) => {
                let vars = Vars {
                    uri: &state.path,
                    ..*vars
                };
                apply_header_commands(&h.request, &mut state.headers, &vars);
            }
            Step::Upstream(rules) => {
                if let Some(rule) = rules.iter().find(|r| r.regex.is_match(&state.path)) {
                    state.upstream = Some(rule.url.clone());
                }
            }
            Step::UrlRewriting(rw) => rewrite_url(rw, state, vars),
        }
    }
    Rewritten::Continue(snapshot)
}

fn rewrite_url(rw: &UrlRewriting, state: &mut RequestState, vars: &Vars<'_>) {
    for command in &rw.commands {
        if !applies(&command.methods, &state.method) {
            continue;
        }
        if let Some(new_path) = substitute(command, &state.path) {
            state.path = if new_path.starts_with('/') {
                new_path
            } else {
                format!("/{new_path}")
            };
            state.path_rewritten = true;
            if command.stop {
                break;
            }
        }
    }
    if rw.args.is_empty() {
        return;
    }
    let mut pairs: Vec<(String, String)> = state
        .query
        .as_deref()
        .map(|q| {
            form_urlencoded::parse(q.as_bytes())
                .map(|(k, v)| (k.into_owned(), v.into_owned()))
                .collect()
        })
        .unwrap_or_default();
    let mut changed = false;
    for command in &rw.args {
        if !applies(&command.methods, &state.method) {
            continue;
        }
        let vars = Vars {
            uri: &state.path,
            ..*vars
        };
        let exists = pairs.iter().any(|(k, _)| *k == command.arg);
        match command.op {
            Op::Delete => pairs.retain(|(k, _)| *k != command.arg),
            Op::Set => {
                pairs.retain(|(k, _)| *k != command.arg);
                pairs.push((command.arg.clone(), command.value.render(&vars)));
            }
            Op::Push => pairs.push((command.arg.clone(), command.value.render(&vars))),
            Op::Add => {
                if exists {
                    pairs.push((command.arg.clone(), command.value.render(&vars)));
                }
            }
        }
        changed = true;
    }
    if changed {
        let encoded = form_urlencoded::Serializer::new(String::new())
            .extend_pairs(pairs.iter())
            .finish();
        state.query = (!encoded.is_empty()).then_some(encoded);
    }
}

/// The `header_filter` phase: every step's response changes, in chain order. `request` is the client's request
/// headers (CORS reads `Origin` and the `Access-Control-Request-*` headers from them).
pub fn filter_response(
    steps: &[Step],
    request: &HeaderMap,
    response: &mut HeaderMap,
    vars: &Vars<'_>,
) {
    for step in steps {
        match step {
            Step::Cors(cors) => cors.add_headers(request, response),
            Step::Headers(h) => apply_header_commands(&h.response, response, vars),
            _ => {}
        }
    }
}

/// Compiles one of this module's policies from its `configuration`; `None` when `name` is not one of them.
pub fn compile(name: &str, configuration: &Value) -> Option<Result<Step, Problem>> {
    let empty = Value::Object(Default::default());
    let config = if configuration.is_null() {
        &empty
    } else {
        configuration
    };
    let step = match name {
        "cors" => Cors::compile(config).map(Step::Cors),
        "headers" => (|| {
            Ok(Step::Headers(Headers {
                request: header_commands(config, "request")?,
                response: header_commands(config, "response")?,
            }))
        })(),
        "upstream" => upstream_rules(config).map(Step::Upstream),
        "url_rewriting" => UrlRewriting::compile(config).map(Step::UrlRewriting),
        _ => return None,
    };
    Some(step)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn vars() -> Vars<'static> {
        Vars {
            uri: "/x",
            host: "api.test",
            remote_addr: None,
            method: "GET",
            service_id: "42",
            service_name: "svc",
        }
    }

    fn state(path: &str, query: Option<&str>) -> RequestState {
        RequestState {
            method: Method::GET,
            path: path.into(),
            path_rewritten: false,
            query: query.map(str::to_owned),
            headers: HeaderMap::new(),
            upstream: None,
        }
    }

    #[test]
    fn replacement_templates_follow_ngx_re() {
        let cmd = RewriteCommand {
            global: true,
            regex: Regex::new(r"/v(\d+)/").unwrap(),
            replace: "/version-$1/${1}x/$$/$9/".into(),
            stop: false,
            methods: None,
        };
        assert_eq!(
            substitute(&cmd, "/v2/a/v3/").as_deref(),
            Some("/version-2/2x/$//a/version-3/3x/$//")
        );
        assert!(substitute(&cmd, "/none").is_none());
    }

    #[test]
    fn url_rewriting_sub_gsub_break_and_args() {
        let Some(Ok(Step::UrlRewriting(rw))) = compile(
            "url_rewriting",
            &json!({"commands": [
                {"op": "sub", "regex": "^/OLD", "replace": "/new", "options": "i", "break": true},
                {"op": "gsub", "regex": "new", "replace": "never"},
                {"op": "gsub", "regex": "a", "replace": "b", "methods": ["POST"]}
            ], "query_args_commands": [
                {"op": "add", "arg": "missing", "value": "no"},
                {"op": "add", "arg": "a", "value": "2"},
                {"op": "push", "arg": "p", "value": "{{ service.id }}", "value_type": "liquid"},
                {"op": "set", "arg": "s", "value": "v w"},
                {"op": "delete", "arg": "user_key"}
            ]}),
        ) else {
            panic!("compiles")
        };
        let mut s = state("/old/a", Some("a=1&user_key=k"));
        rewrite_url(&rw, &mut s, &vars());
        assert_eq!(s.path, "/new/a");
        assert!(s.path_rewritten);
        assert_eq!(s.query.as_deref(), Some("a=1&a=2&p=42&s=v+w"));
    }

    #[test]
    fn bad_configurations_name_the_field() {
        let err = |name: &str, c: Value| match compile(name, &c) {
            Some(Err(e)) => e,
            _ => panic!("{name} {c} should be rejected"),
        };
        assert_eq!(
            err(
                "headers",
                json!({"request": [{"op": "zap", "header": "x"}]})
            ),
            "request[0].op: expected set, add, push or delete, got \"zap\""
        );
        assert!(err(
            "headers",
            json!({"response": [{"op": "set", "header": "bad header"}]})
        )
        .starts_with("response[0].header"));
        assert!(err(
            "url_rewriting",
            json!({"commands": [{"op": "sub", "regex": "(?<=a)b"}]})
        )
        .starts_with("commands[0].regex"));
        assert!(err(
            "upstream",
            json!({"rules": [{"regex": "/", "url": "ftp://x"}]})
        )
        .starts_with("rules[0].url"));
        assert!(err("cors", json!({"max_age": "soon"})).starts_with("max_age"));
        assert!(compile("headers", &Value::Null).unwrap().is_ok());
        assert!(compile("something_else", &Value::Null).is_none());
    }
}
