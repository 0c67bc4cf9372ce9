//! ActiveDocs body validation as porta does it: detect the spec version (Swagger 1.0/1.2/2.0, OpenAPI 3.0/3.1), check
//! the structure the specs require with json_schemer-style messages, and derive `base_path` and `swagger_version`.
//!
//! This is a structural subset of the official JSON schemas (root, `info`, `paths`, path items, operations, `servers`),
//! not a full schema validator: enough to reject what is not OpenAPI, with the messages porta's validator prints.

use serde_json::{Map, Value};

/// What porta's `ThreeScale::Swagger::Validator` concluded about a body.
#[derive(Debug, Default, PartialEq)]
pub struct Checked {
    /// Messages under `body` (empty when valid or when validation is skipped).
    pub body_errors: Vec<String>,
    /// The derived base path is neither blank nor an absolute http/https/ws/wss URL (checked even when skipping).
    pub base_path_invalid: bool,
    pub swagger_version: String,
    pub base_path: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Version {
    V10,
    V12,
    V20,
    V30,
    V31,
    Invalid,
}

/// Ruby's `String#to_f` for version strings: the leading `digits[.digits]`, 0 when there is none.
fn leading_float(s: &str) -> f64 {
    let s = s.trim_start();
    let int: String = s.chars().take_while(char::is_ascii_digit).collect();
    if int.is_empty() {
        return 0.0;
    }
    let frac: String = s[int.len()..]
        .strip_prefix('.')
        .map(|r| r.chars().take_while(char::is_ascii_digit).collect())
        .unwrap_or_default();
    let frac = if frac.is_empty() {
        "0".to_owned()
    } else {
        frac
    };
    format!("{int}.{frac}").parse().unwrap_or(0.0)
}

/// `"3.0.2"` → `"3.0"`; `None` unless the text is `<digits>.<digits>` optionally followed by `.<anything>`.
fn major_minor(s: &str) -> Option<String> {
    let (major, rest) = s.split_once('.')?;
    let minor: String = rest.chars().take_while(char::is_ascii_digit).collect();
    let tail = &rest[minor.len()..];
    let ok = !major.is_empty()
        && major.chars().all(|c| c.is_ascii_digit())
        && !minor.is_empty()
        && (tail.is_empty() || (tail.starts_with('.') && tail.len() > 1));
    ok.then(|| format!("{major}.{minor}"))
}

fn detect(doc: &Map<String, Value>) -> (String, Version) {
    let raw = ["openapi", "swagger", "swaggerVersion"]
        .into_iter()
        .find_map(|k| doc.get(k))
        .and_then(|v| match v {
            Value::String(s) => Some(s.clone()),
            Value::Number(n) => Some(n.to_string()),
            _ => None,
        });
    let Some(raw) = raw.filter(|r| leading_float(r) >= 1.2) else {
        return ("1.0".into(), Version::V10);
    };
    let Some(mm) = major_minor(&raw) else {
        return (raw, Version::Invalid);
    };
    let v = match mm.as_str() {
        "1.2" => Version::V12,
        "2.0" => Version::V20,
        "3.0" => Version::V30,
        "3.1" => Version::V31,
        _ => Version::Invalid,
    };
    (mm, v)
}

fn first_server(doc: &Map<String, Value>) -> Option<String> {
    let server = doc.get("servers")?.as_array()?.first()?;
    let mut url = server.get("url")?.as_str()?.to_owned();
    if let Some(vars) = server.get("variables").and_then(Value::as_object) {
        for (name, var) in vars {
            let value = var
                .get("enum")
                .and_then(Value::as_array)
                .and_then(|e| e.first())
                .or_else(|| var.get("default"))
                .and_then(Value::as_str)
                .unwrap_or("");
            url = url.replace(&format!("{{{name}}}"), value);
        }
    }
    Some(url)
}

fn base_path(doc: &Map<String, Value>, version: Version) -> Option<String> {
    match version {
        Version::V20 => {
            let scheme = doc
                .get("schemes")
                .and_then(Value::as_array)
                .and_then(|s| s.first())
                .and_then(Value::as_str);
            let host = doc.get("host").and_then(Value::as_str);
            Some(match (scheme, host) {
                (Some(s), Some(h)) => format!("{s}://{h}"),
                _ => String::new(),
            })
        }
        Version::V30 | Version::V31 => first_server(doc),
        _ => doc
            .get("basePath")
            .and_then(Value::as_str)
            .map(str::to_lowercase),
    }
}

fn valid_base_path(bp: Option<&str>) -> bool {
    match bp {
        None => true,
        Some(s) if s.trim().is_empty() => true,
        Some(s) => url::Url::parse(s).is_ok_and(|u| {
            ["http", "https", "ws", "wss"].contains(&u.scheme()) && u.host_str().is_some()
        }),
    }
}

/// Collects json_schemer-style messages.
struct Schema {
    errors: Vec<String>,
    /// OpenAPI 3.1 closes objects with `unevaluatedProperties`, the older schemas with `additionalProperties`.
    unevaluated: bool,
}

fn at(ptr: &str) -> String {
    if ptr.is_empty() {
        "root".into()
    } else {
        format!("`{ptr}`")
    }
}

fn child(ptr: &str, key: &str) -> String {
    format!("{ptr}/{}", key.replace('~', "~0").replace('/', "~1"))
}

impl Schema {
    fn object<'v>(&mut self, v: &'v Value, ptr: &str) -> Option<&'v Map<String, Value>> {
        let m = v.as_object();
        if m.is_none() {
            self.errors
                .push(format!("value at {} is not an object", at(ptr)));
        }
        m
    }

    fn required(&mut self, m: &Map<String, Value>, ptr: &str, keys: &[&str]) {
        let missing: Vec<&str> = keys
            .iter()
            .copied()
            .filter(|k| !m.contains_key(*k))
            .collect();
        if !missing.is_empty() {
            self.errors.push(format!(
                "object at {} is missing required properties: {}",
                at(ptr),
                missing.join(", ")
            ));
        }
    }

    fn closed(&mut self, m: &Map<String, Value>, ptr: &str, known: &[&str], paths: bool) {
        let kind = if self.unevaluated {
            "unevaluated"
        } else {
            "additional"
        };
        for k in m.keys() {
            let ok =
                known.contains(&k.as_str()) || k.starts_with("x-") || (paths && k.starts_with('/'));
            if !ok {
                self.errors.push(format!(
                    "object property at {} is a disallowed {kind} property",
                    at(&child(ptr, k))
                ));
            }
        }
    }

    fn strings(&mut self, m: &Map<String, Value>, ptr: &str, keys: &[&str]) {
        for k in keys {
            if let Some(v) = m.get(*k) {
                if !v.is_string() {
                    self.errors
                        .push(format!("value at {} is not a string", at(&child(ptr, k))));
                }
            }
        }
    }

    fn pattern(
        &mut self,
        m: &Map<String, Value>,
        key: &str,
        pattern: &str,
        ok: impl Fn(&str) -> bool,
    ) {
        if let Some(Value::String(s)) = m.get(key) {
            if !ok(s) {
                self.errors.push(format!(
                    "string at {} does not match pattern: {pattern}",
                    at(&child("", key))
                ));
            }
        }
    }

    fn info(&mut self, doc: &Map<String, Value>, extra: &[&str]) {
        let Some(info) = doc.get("info") else { return };
        let Some(info) = self.object(info, "/info") else {
            return;
        };
        self.required(info, "/info", &["title", "version"]);
        let mut known = vec![
            "title",
            "description",
            "termsOfService",
            "contact",
            "license",
            "version",
        ];
        known.extend_from_slice(extra);
        self.closed(info, "/info", &known, false);
        self.strings(info, "/info", &["title", "version", "description"]);
    }

    fn paths(&mut self, doc: &Map<String, Value>, item_keys: &[&str], responses_required: bool) {
        let Some(paths) = doc.get("paths") else {
            return;
        };
        let Some(paths) = self.object(paths, "/paths") else {
            return;
        };
        self.closed(paths, "/paths", &[], true);
        for (path, item) in paths.iter().filter(|(k, _)| k.starts_with('/')) {
            let ptr = child("/paths", path);
            let Some(item) = self.object(item, &ptr) else {
                continue;
            };
            self.closed(item, &ptr, item_keys, false);
            for (method, op) in item {
                if !OPERATIONS.contains(&method.as_str()) || !item_keys.contains(&method.as_str()) {
                    continue;
                }
                let op_ptr = child(&ptr, method);
                let Some(op) = self.object(op, &op_ptr) else {
                    continue;
                };
                if responses_required {
                    self.required(op, &op_ptr, &["responses"]);
                }
                if let Some(r) = op.get("responses") {
                    self.object(r, &child(&op_ptr, "responses"));
                }
            }
        }
    }

    fn servers(&mut self, doc: &Map<String, Value>) {
        let Some(servers) = doc.get("servers") else {
            return;
        };
        let Some(list) = servers.as_array() else {
            self.errors
                .push("value at `/servers` is not an array".into());
            return;
        };
        for (i, server) in list.iter().enumerate() {
            let ptr = format!("/servers/{i}");
            if let Some(s) = self.object(server, &ptr) {
                self.required(s, &ptr, &["url"]);
                self.strings(s, &ptr, &["url"]);
            }
        }
    }
}

const OPERATIONS: [&str; 8] = [
    "get", "put", "post", "delete", "options", "head", "patch", "trace",
];

fn validate_swagger2(doc: &Map<String, Value>) -> Vec<String> {
    let mut s = Schema {
        errors: Vec::new(),
        unevaluated: false,
    };
    s.required(doc, "", &["swagger", "info", "paths"]);
    s.closed(
        doc,
        "",
        &[
            "swagger",
            "info",
            "host",
            "basePath",
            "schemes",
            "consumes",
            "produces",
            "paths",
            "definitions",
            "parameters",
            "responses",
            "securityDefinitions",
            "security",
            "tags",
            "externalDocs",
        ],
        false,
    );
    if doc.get("swagger").is_some_and(|v| v != "2.0") {
        s.errors
            .push("value at `/swagger` is not one of: [\"2.0\"]".into());
    }
    s.info(doc, &[]);
    s.paths(
        doc,
        &[
            "$ref",
            "get",
            "put",
            "post",
            "delete",
            "options",
            "head",
            "patch",
            "parameters",
        ],
        true,
    );
    s.errors
}

fn validate_oas3(doc: &Map<String, Value>, v31: bool) -> Vec<String> {
    let mut s = Schema {
        errors: Vec::new(),
        unevaluated: v31,
    };
    if v31 {
        s.required(doc, "", &["openapi", "info"]);
        if !["paths", "components", "webhooks"]
            .iter()
            .any(|k| doc.contains_key(*k))
        {
            s.errors
                .push("value at root does not match anyOf schemas".into());
        }
        s.pattern(doc, "openapi", r"^3\.1\.\d+(-.+)?$", |v| {
            let rest = v.strip_prefix("3.1.").unwrap_or("");
            let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
            let tail = &rest[digits.len()..];
            !digits.is_empty() && (tail.is_empty() || (tail.starts_with('-') && tail.len() > 1))
        });
    } else {
        s.required(doc, "", &["openapi", "info", "paths"]);
        s.pattern(doc, "openapi", r"^3\.0\.\d(-.+)?$", |v| {
            let rest = v.strip_prefix("3.0.").unwrap_or("");
            let mut chars = rest.chars();
            chars.next().is_some_and(|c| c.is_ascii_digit()) && {
                let tail = chars.as_str();
                tail.is_empty() || (tail.starts_with('-') && tail.len() > 1)
            }
        });
    }
    let mut known = vec![
        "openapi",
        "info",
        "externalDocs",
        "servers",
        "security",
        "tags",
        "paths",
        "components",
    ];
    if v31 {
        known.extend_from_slice(&["webhooks", "jsonSchemaDialect"]);
    }
    s.closed(doc, "", &known, false);
    s.info(doc, if v31 { &["summary"] } else { &[] });
    s.servers(doc);
    s.paths(
        doc,
        &[
            "$ref",
            "summary",
            "description",
            "servers",
            "parameters",
            "get",
            "put",
            "post",
            "delete",
            "options",
            "head",
            "patch",
            "trace",
        ],
        !v31,
    );
    s.errors
}

fn validate_v10(doc: &Map<String, Value>) -> Vec<String> {
    let Some(apis) = doc.get("apis").and_then(Value::as_array) else {
        return vec![INVALID_SWAGGER.into()];
    };
    let mixed = apis
        .iter()
        .filter_map(|api| api.get("operations")?.as_array())
        .flatten()
        .filter_map(|op| op.get("parameters")?.as_array())
        .any(|params| {
            let types: Vec<&str> = params
                .iter()
                .filter_map(|p| p.get("paramType")?.as_str())
                .collect();
            types.contains(&"query") && types.contains(&"body")
        });
    if mixed {
        vec![
            "JSON Spec can not have paramType='body' and paramType='query' on the same method."
                .into(),
        ]
    } else {
        Vec::new()
    }
}

const INVALID_SWAGGER: &str = "JSON Spec is invalid";

/// Validates an ActiveDocs body. `skip` (`skip_swagger_validations`) skips the spec checks but not the base path.
pub fn check(body: &str, skip: bool) -> Checked {
    let parsed = serde_json::from_str::<Value>(body);
    let invalid_json = parsed.is_err();
    let doc = match parsed {
        Ok(Value::Object(m)) => m,
        _ => Map::new(),
    };
    let (swagger_version, version) = detect(&doc);
    let base_path = base_path(&doc, version);
    let base_path_invalid = !valid_base_path(base_path.as_deref());
    let body_errors = if skip {
        Vec::new()
    } else if invalid_json {
        vec!["Invalid JSON".into(), INVALID_SWAGGER.into()]
    } else {
        match version {
            Version::Invalid => vec!["Invalid Swagger version".into()],
            Version::V10 => validate_v10(&doc),
            Version::V12 => {
                let mut s = Schema {
                    errors: Vec::new(),
                    unevaluated: false,
                };
                s.required(&doc, "", &["swaggerVersion", "apis"]);
                if doc.get("apis").is_some_and(|a| !a.is_array()) {
                    s.errors.push("value at `/apis` is not an array".into());
                }
                s.errors
            }
            Version::V20 => validate_swagger2(&doc),
            Version::V30 => validate_oas3(&doc, false),
            Version::V31 => validate_oas3(&doc, true),
        }
    };
    Checked {
        body_errors,
        base_path_invalid,
        swagger_version,
        base_path,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn errors(doc: Value) -> Vec<String> {
        check(&doc.to_string(), false).body_errors
    }

    #[test]
    fn versions_are_detected_as_porta_does() {
        assert_eq!(check(r#"{"openapi":"3.0.3"}"#, true).swagger_version, "3.0");
        assert_eq!(check(r#"{"openapi":"3.1.0"}"#, true).swagger_version, "3.1");
        assert_eq!(check(r#"{"swagger":"2.0"}"#, true).swagger_version, "2.0");
        assert_eq!(
            check(r#"{"swaggerVersion":"1.2"}"#, true).swagger_version,
            "1.2"
        );
        assert_eq!(check(r#"{"apis":[]}"#, true).swagger_version, "1.0");
        assert_eq!(leading_float("3.0.3"), 3.0);
        assert_eq!(leading_float("abc"), 0.0);
        assert_eq!(
            errors(json!({"openapi": "4.0.0"})),
            vec!["Invalid Swagger version"]
        );
    }

    #[test]
    fn valid_documents_pass() {
        let oas3 = json!({"openapi": "3.0.2", "info": {"title": "t", "version": "1"},
            "servers": [{"url": "https://api.example.com/v1"}],
            "paths": {"/pets": {"get": {"responses": {"200": {"description": "ok"}}}}}});
        let c = check(&oas3.to_string(), false);
        assert_eq!(c.body_errors, Vec::<String>::new());
        assert_eq!(c.base_path.as_deref(), Some("https://api.example.com/v1"));
        let sw2 = json!({"swagger": "2.0", "info": {"title": "t", "version": "1"}, "host": "a.example.com",
            "schemes": ["https"], "paths": {"/x": {"post": {"responses": {"201": {"description": "c"}}}}}, "x-extra": 1});
        let c = check(&sw2.to_string(), false);
        assert!(c.body_errors.is_empty(), "{:?}", c.body_errors);
        assert_eq!(c.base_path.as_deref(), Some("https://a.example.com"));
        let oas31 = json!({"openapi": "3.1.0", "info": {"title": "t", "version": "1", "summary": "s"}, "webhooks": {}});
        assert!(errors(oas31).is_empty());
        assert!(
            errors(json!({"apis": [{"operations": []}], "basePath": "http://x.example.com"}))
                .is_empty()
        );
    }

    #[test]
    fn structural_errors_use_json_schemer_messages() {
        let e = errors(
            json!({"swagger": "2.0", "invalid": 1, "info": {"foo": 1, "version": "1"}, "paths": {}}),
        );
        assert!(
            e.contains(
                &"object property at `/invalid` is a disallowed additional property".to_owned()
            ),
            "{e:?}"
        );
        assert!(
            e.contains(&"object at `/info` is missing required properties: title".to_owned()),
            "{e:?}"
        );
        assert!(
            e.contains(
                &"object property at `/info/foo` is a disallowed additional property".to_owned()
            ),
            "{e:?}"
        );
        let e = errors(json!({"openapi": "3.0.0"}));
        assert_eq!(
            e,
            vec!["object at root is missing required properties: info, paths"]
        );
        let e = errors(
            json!({"openapi": "3.0.0", "info": {"title": "t", "version": "1"}, "paths": {"nope": {}, "/a": {"get": {}}}}),
        );
        assert!(
            e.contains(
                &"object property at `/paths/nope` is a disallowed additional property".to_owned()
            ),
            "{e:?}"
        );
        assert!(
            e.contains(
                &"object at `/paths/~1a/get` is missing required properties: responses".to_owned()
            ),
            "{e:?}"
        );
        let e = errors(
            json!({"openapi": "3.1.0", "info": {"title": "t", "version": "1"}, "bad": 1, "paths": {}}),
        );
        assert_eq!(
            e,
            vec!["object property at `/bad` is a disallowed unevaluated property"]
        );
        let e = errors(json!({"openapi": "3.0.x", "info": "x", "paths": {}}));
        assert!(
            e.iter()
                .any(|m| m.starts_with("string at `/openapi` does not match pattern")),
            "{e:?}"
        );
        assert!(
            e.contains(&"value at `/info` is not an object".to_owned()),
            "{e:?}"
        );
    }

    #[test]
    fn bad_json_and_base_paths() {
        assert_eq!(
            check("NOT JSON", false).body_errors,
            vec!["Invalid JSON", "JSON Spec is invalid"]
        );
        assert!(check("NOT JSON", true).body_errors.is_empty());
        assert_eq!(
            check("[1]", false).body_errors,
            vec!["JSON Spec is invalid"]
        );
        let rel = json!({"openapi": "3.0.0", "info": {"title": "t", "version": "1"}, "paths": {}, "servers": [{"url": "/v1"}]});
        assert!(check(&rel.to_string(), true).base_path_invalid);
        let var = json!({"openapi": "3.0.0", "servers": [{"url": "{root}/v1", "variables": {"root": {"default": "https://e.example.com"}}}]});
        let c = check(&var.to_string(), true);
        assert_eq!(c.base_path.as_deref(), Some("https://e.example.com/v1"));
        assert!(!c.base_path_invalid);
        assert!(check(r#"{"basePath":"ftp://x.example.com","apis":[]}"#, false).base_path_invalid);
    }
}
