//! Request parameters as Rails sees them: query, form (with `a[b]=x` / `a[]=x` nesting) and JSON merged into one
//! map, plus porta's parameter wrapping (`name=x` ≡ `service[name]=x` ≡ `{"service":{"name":"x"}}`).

use crate::error::{ApiError, ApiResult};
use serde_json::{Map, Value};

#[derive(Debug, Default, Clone)]
pub struct Params(pub Map<String, Value>);

impl Params {
    /// Parses `a=1&b[c]=2&d[]=3` into nested JSON.
    pub fn from_form(raw: &str) -> Self {
        let mut map = Map::new();
        for (key, value) in form_urlencoded::parse(raw.as_bytes()) {
            insert_path(
                &mut map,
                &split_key(&key),
                Value::String(value.into_owned()),
            );
        }
        Self(map)
    }

    /// Merges `other` over `self` (later sources win, as in Rails: query < body).
    pub fn merge(&mut self, other: Params) {
        for (k, v) in other.0 {
            self.0.insert(k, v);
        }
    }

    /// The parameters under `key`, with flat top-level parameters copied in (wrapped values win).
    pub fn wrapped(&self, key: &str) -> ApiResult<Params> {
        let mut out = Map::new();
        for (k, v) in &self.0 {
            if k != key {
                out.insert(k.clone(), v.clone());
            }
        }
        match self.0.get(key) {
            None | Some(Value::Null) => {}
            Some(Value::Object(inner)) => {
                for (k, v) in inner {
                    out.insert(k.clone(), v.clone());
                }
            }
            Some(_) => {
                return Err(ApiError::PlainUnprocessable(format!(
                    "Wrong type for parameter: {key}"
                )))
            }
        }
        Ok(Params(out))
    }

    pub fn has(&self, key: &str) -> bool {
        self.0.contains_key(key)
    }

    pub fn get(&self, key: &str) -> Option<&Value> {
        self.0.get(key)
    }

    /// A scalar as text; `null` and objects/arrays count as absent.
    pub fn str(&self, key: &str) -> Option<String> {
        match self.0.get(key)? {
            Value::String(s) => Some(s.clone()),
            Value::Number(n) => Some(n.to_string()),
            Value::Bool(b) => Some(b.to_string()),
            _ => None,
        }
    }

    /// A present key whose value is `null` or an empty string yields `Some(None)`: "set it blank".
    pub fn opt_str(&self, key: &str) -> Option<Option<String>> {
        if !self.has(key) {
            return None;
        }
        Some(self.str(key).filter(|s| !s.is_empty()))
    }

    /// Rails' boolean cast: "1", "true", "t", "on" are true; anything else given is false.
    pub fn bool(&self, key: &str) -> Option<bool> {
        match self.0.get(key)? {
            Value::Bool(b) => Some(*b),
            Value::Number(n) => Some(n.as_i64() != Some(0)),
            Value::String(s) => Some(matches!(
                s.to_ascii_lowercase().as_str(),
                "1" | "true" | "t" | "on" | "yes"
            )),
            Value::Null => Some(false),
            _ => None,
        }
    }

    /// An integer; `Err(())` when present but not an integer.
    pub fn int(&self, key: &str) -> Option<Result<i64, ()>> {
        match self.0.get(key)? {
            Value::Number(n) => Some(n.as_i64().ok_or(())),
            Value::String(s) if s.trim().is_empty() => None,
            Value::String(s) => Some(s.trim().parse().map_err(|_| ())),
            Value::Null => None,
            _ => Some(Err(())),
        }
    }

    /// A list of strings from `k[]=a&k[]=b`, a JSON array, or a single value.
    pub fn list(&self, key: &str) -> Vec<String> {
        match self.0.get(key) {
            Some(Value::Array(items)) => items
                .iter()
                .filter_map(|v| match v {
                    Value::String(s) => Some(s.clone()),
                    Value::Number(n) => Some(n.to_string()),
                    _ => None,
                })
                .collect(),
            Some(_) => self.str(key).into_iter().collect(),
            None => Vec::new(),
        }
    }
}

fn split_key(key: &str) -> Vec<String> {
    let Some(open) = key.find('[') else {
        return vec![key.to_owned()];
    };
    let mut parts = vec![key[..open].to_owned()];
    let mut rest = &key[open..];
    while let Some(stripped) = rest.strip_prefix('[') {
        match stripped.find(']') {
            Some(close) => {
                parts.push(stripped[..close].to_owned());
                rest = &stripped[close + 1..];
            }
            None => break,
        }
    }
    parts
}

fn insert_path(map: &mut Map<String, Value>, path: &[String], value: Value) {
    let (head, tail) = match path.split_first() {
        Some(x) => x,
        None => return,
    };
    if tail.is_empty() {
        map.insert(head.clone(), value);
        return;
    }
    if tail[0].is_empty() {
        // `k[]=v`: an array of scalars (deeper nesting inside arrays is not needed by this API).
        let entry = map
            .entry(head.clone())
            .or_insert_with(|| Value::Array(Vec::new()));
        if !entry.is_array() {
            *entry = Value::Array(Vec::new());
        }
        if let Value::Array(items) = entry {
            items.push(value);
        }
        return;
    }
    let entry = map
        .entry(head.clone())
        .or_insert_with(|| Value::Object(Map::new()));
    if !entry.is_object() {
        *entry = Value::Object(Map::new());
    }
    if let Value::Object(inner) = entry {
        insert_path(inner, tail, value);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn nested_form_keys_become_objects_and_arrays() {
        let p = Params::from_form("name=a&service[system_name]=b&scopes[]=x&scopes[]=y&n[a][b]=1");
        assert_eq!(
            Value::Object(p.0.clone()),
            json!({"name":"a","service":{"system_name":"b"},"scopes":["x","y"],"n":{"a":{"b":"1"}}})
        );
        let w = p.wrapped("service").unwrap();
        assert_eq!(w.str("name").as_deref(), Some("a"));
        assert_eq!(w.str("system_name").as_deref(), Some("b"));
    }

    #[test]
    fn wrapper_that_is_not_a_hash_is_rejected() {
        let p = Params::from_form("service=x");
        assert!(matches!(
            p.wrapped("service"),
            Err(ApiError::PlainUnprocessable(_))
        ));
    }
}
