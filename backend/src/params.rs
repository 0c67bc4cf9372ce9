//! Rack-compatible nested query parsing (`usage[hits]=1`, `transactions[0][usage][hits]=1`), with Rack's limits
//! and error classes, so malformed input gets the same 400/422 answers as apisonator.

use std::fmt;

/// Rack's default limits (`Rack::QueryParser`).
pub const PARAMS_LIMIT: usize = 4096;
pub const BYTESIZE_LIMIT: usize = 4 * 1024 * 1024;
pub const DEPTH_LIMIT: usize = 32;

/// A parsed parameter value: Ruby's `nil`, `String`, `Array` or `Hash` (insertion ordered).
#[derive(Clone, Debug, PartialEq)]
pub enum Param {
    Null,
    Str(String),
    List(Vec<Param>),
    Map(Vec<(String, Param)>),
}

impl Param {
    pub fn get(&self, key: &str) -> Option<&Param> {
        match self {
            Param::Map(entries) => entries.iter().find(|(k, _)| k == key).map(|(_, v)| v),
            _ => None,
        }
    }

    pub fn as_str(&self) -> Option<&str> {
        match self {
            Param::Str(s) => Some(s),
            _ => None,
        }
    }

    fn get_mut(&mut self, key: &str) -> Option<&mut Param> {
        match self {
            Param::Map(entries) => entries.iter_mut().find(|(k, _)| k == key).map(|(_, v)| v),
            _ => None,
        }
    }

    fn set(&mut self, key: &str, value: Param) {
        if let Param::Map(entries) = self {
            match entries.iter_mut().find(|(k, _)| k == key) {
                Some(slot) => slot.1 = value,
                None => entries.push((key.to_owned(), value)),
            }
        }
    }

    fn type_name(&self) -> &'static str {
        match self {
            Param::Null => "NilClass",
            Param::Str(_) => "String",
            Param::List(_) => "Array",
            Param::Map(_) => "Hash",
        }
    }
}

/// Why a query string was rejected; each maps to apisonator's `bad_request` text.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ParseError {
    /// Inconsistent nesting such as `usage[]=1&usage[hits]=1` or too deep nesting.
    Syntax,
    InvalidEncoding,
    TooManyParams(usize),
    TooLarge(usize),
}

impl fmt::Display for ParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ParseError::Syntax => f.write_str(
                "request contains syntax errors, should not be repeated without modification",
            ),
            ParseError::InvalidEncoding => {
                f.write_str("Invalid query parameters: invalid %-encoding")
            }
            ParseError::TooManyParams(n) => write!(
                f,
                "total number of query parameters ({n}) exceeds limit ({PARAMS_LIMIT})"
            ),
            ParseError::TooLarge(n) => {
                write!(f, "total query size ({n}) exceeds limit ({BYTESIZE_LIMIT})")
            }
        }
    }
}

/// The parameters plus whether every key and value was valid UTF-8 (checked later, in apisonator's order).
#[derive(Clone, Debug)]
pub struct Parsed {
    pub root: Param,
    pub valid_utf8: bool,
}

impl Parsed {
    pub fn empty() -> Self {
        Self {
            root: Param::Map(Vec::new()),
            valid_utf8: true,
        }
    }

    pub fn get(&self, key: &str) -> Option<&Param> {
        self.root.get(key)
    }
}

/// Percent-decodes with `+` as space; a `%` not followed by two hex digits is an error, as in Ruby's URI decoder.
fn unescape(input: &[u8]) -> Result<Vec<u8>, ParseError> {
    let mut out = Vec::with_capacity(input.len());
    let mut i = 0;
    while i < input.len() {
        match input[i] {
            b'+' => out.push(b' '),
            b'%' => {
                let hex = |b: u8| (b as char).to_digit(16);
                match (
                    input.get(i + 1).copied().and_then(hex),
                    input.get(i + 2).copied().and_then(hex),
                ) {
                    (Some(h), Some(l)) => {
                        out.push((h * 16 + l) as u8);
                        i += 2;
                    }
                    _ => return Err(ParseError::InvalidEncoding),
                }
            }
            b => out.push(b),
        }
        i += 1;
    }
    Ok(out)
}

/// Parses `query` (or a form body) with Rack's `parse_nested_query` semantics.
pub fn parse(query: &[u8]) -> Result<Parsed, ParseError> {
    parse_parts(&[query])
}

/// Parses several sources into one set of parameters (a report's query string, then its form body), each
/// checked against Rack's limits on its own as Rack parses them separately.
pub fn parse_parts(parts: &[&[u8]]) -> Result<Parsed, ParseError> {
    for query in parts {
        if query.len() > BYTESIZE_LIMIT {
            return Err(ParseError::TooLarge(query.len()));
        }
        let count = query.iter().filter(|b| **b == b'&').count();
        if count >= PARAMS_LIMIT {
            return Err(ParseError::TooManyParams(count));
        }
    }
    let mut root = Param::Map(Vec::new());
    let mut valid_utf8 = true;
    for part in parts.iter().flat_map(|query| query.split(|b| *b == b'&')) {
        if part.is_empty() {
            continue;
        }
        let (k, v) = match part.iter().position(|b| *b == b'=') {
            Some(at) => (&part[..at], Some(&part[at + 1..])),
            None => (part, None),
        };
        let key = unescape(k)?;
        let value = v.map(unescape).transpose()?;
        let key = match String::from_utf8(key) {
            Ok(s) => s,
            Err(e) => {
                valid_utf8 = false;
                String::from_utf8_lossy(e.as_bytes()).into_owned()
            }
        };
        let value = match value {
            None => Param::Null,
            Some(bytes) => match String::from_utf8(bytes) {
                Ok(s) => Param::Str(s),
                Err(e) => {
                    valid_utf8 = false;
                    Param::Str(String::from_utf8_lossy(e.as_bytes()).into_owned())
                }
            },
        };
        normalize(&mut root, &key, value, 0)?;
    }
    Ok(Parsed { root, valid_utf8 })
}

/// Splits `name` into its first key and the rest, like Rack's `\A[\[\]]*([^\[\]]+)\]*`.
fn split_name(name: &str) -> (&str, &str) {
    let start = name.find(|c| c != '[' && c != ']').unwrap_or(name.len());
    let rest = &name[start..];
    let key_end = rest.find(['[', ']']).unwrap_or(rest.len());
    let key = &rest[..key_end];
    let mut after = &rest[key_end..];
    // `\]*` after the key swallows closing brackets.
    let closing = after.len() - after.trim_start_matches(']').len();
    if !key.is_empty() {
        after = &after[closing..];
    }
    (key, after)
}

fn normalize(params: &mut Param, name: &str, value: Param, depth: usize) -> Result<(), ParseError> {
    if depth >= DEPTH_LIMIT {
        return Err(ParseError::Syntax);
    }
    let (k, after) = split_name(name);
    if k.is_empty() {
        return Ok(());
    }
    if after.is_empty() {
        params.set(k, value);
    } else if after == "[" {
        params.set(name, value);
    } else if after == "[]" {
        list_slot(params, k)?.push(value);
    } else if let Some(child) = after.strip_prefix("[]") {
        // `a[][b]=1` builds arrays of hashes: a new hash starts when the last one already has the key.
        let child_key = child
            .strip_prefix('[')
            .and_then(|c| c.strip_suffix(']'))
            .filter(|c| !c.contains(['[', ']']))
            .unwrap_or(child)
            .to_owned();
        let list = list_slot(params, k)?;
        let reuse = matches!(list.last(), Some(last @ Param::Map(_)) if last.get(split_name(&child_key).0).is_none());
        if reuse {
            if let Some(last) = list.last_mut() {
                normalize(last, &child_key, value, depth + 1)?;
            }
        } else {
            let mut fresh = Param::Map(Vec::new());
            normalize(&mut fresh, &child_key, value, depth + 1)?;
            list.push(fresh);
        }
    } else {
        // Ruby's `params[k] ||= {}`: nil counts as unset.
        if matches!(params.get(k), None | Some(Param::Null)) {
            params.set(k, Param::Map(Vec::new()));
        }
        match params.get_mut(k) {
            Some(child @ Param::Map(_)) => normalize(child, after, value, depth + 1)?,
            Some(other) => {
                tracing::debug!(
                    expected = "Hash",
                    got = other.type_name(),
                    "param type error"
                );
                return Err(ParseError::Syntax);
            }
            None => return Err(ParseError::Syntax),
        }
    }
    Ok(())
}

fn list_slot<'a>(params: &'a mut Param, k: &str) -> Result<&'a mut Vec<Param>, ParseError> {
    if params.get(k).is_none() {
        params.set(k, Param::List(Vec::new()));
    }
    match params.get_mut(k) {
        Some(Param::List(list)) => Ok(list),
        _ => Err(ParseError::Syntax),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn p(q: &str) -> Param {
        parse(q.as_bytes()).unwrap().root
    }

    #[test]
    fn nested_hashes_and_arrays() {
        let root = p("provider_key=pk&usage[hits]=1&usage[other]=%232&transactions[0][usage][hits]=3&a[]=x&a[]=y");
        assert_eq!(root.get("provider_key"), Some(&Param::Str("pk".into())));
        let usage = root.get("usage").unwrap();
        assert_eq!(usage.get("hits"), Some(&Param::Str("1".into())));
        assert_eq!(usage.get("other"), Some(&Param::Str("#2".into())));
        let t = root.get("transactions").unwrap().get("0").unwrap();
        assert_eq!(
            t.get("usage").unwrap().get("hits"),
            Some(&Param::Str("3".into()))
        );
        assert_eq!(
            root.get("a"),
            Some(&Param::List(vec![
                Param::Str("x".into()),
                Param::Str("y".into())
            ]))
        );
    }

    #[test]
    fn plus_is_space_and_missing_value_is_nil() {
        let root = p("referrer=a+b&flag");
        assert_eq!(root.get("referrer"), Some(&Param::Str("a b".into())));
        assert_eq!(root.get("flag"), Some(&Param::Null));
    }

    #[test]
    fn conflicting_shapes_are_syntax_errors() {
        assert_eq!(
            parse(b"usage[]=1&usage[hits]=1").unwrap_err(),
            ParseError::Syntax
        );
        assert_eq!(
            parse(b"usage=1&usage[hits]=1").unwrap_err(),
            ParseError::Syntax
        );
        assert_eq!(parse(b"a[x]=1&a[]=2").unwrap_err(), ParseError::Syntax);
    }

    #[test]
    fn bad_percent_encoding_and_invalid_utf8() {
        assert_eq!(parse(b"a=%zz").unwrap_err(), ParseError::InvalidEncoding);
        assert_eq!(parse(b"a=%4").unwrap_err(), ParseError::InvalidEncoding);
        let parsed = parse(b"app_id=%ff%fe").unwrap();
        assert!(!parsed.valid_utf8);
        assert!(parse(b"app_id=%C3%A9").unwrap().valid_utf8);
    }

    #[test]
    fn limits() {
        let many = vec!["a=1"; 5000].join("&");
        assert!(matches!(
            parse(many.as_bytes()),
            Err(ParseError::TooManyParams(4999))
        ));
        let big = "a=".to_owned() + &"x".repeat(BYTESIZE_LIMIT);
        assert!(matches!(
            parse(big.as_bytes()),
            Err(ParseError::TooLarge(_))
        ));
        let deep = "a".to_owned() + &"[b]".repeat(40) + "=1";
        assert_eq!(parse(deep.as_bytes()).unwrap_err(), ParseError::Syntax);
    }

    proptest! {
        #[test]
        fn never_panics_on_arbitrary_bytes(input in proptest::collection::vec(any::<u8>(), 0..300)) {
            let _ = parse(&input);
        }

        #[test]
        fn never_panics_on_bracket_soup(input in "[a-z0-9\\[\\]=&%#+]{0,120}") {
            let _ = parse(input.as_bytes());
        }

        #[test]
        fn nested_usage_round_trips(
            entries in proptest::collection::vec(("[a-z_]{1,8}", "[ -~]{0,12}"), 0..12)
        ) {
            let query: Vec<String> = entries
                .iter()
                .map(|(k, v)| format!("usage%5B{k}%5D={}", form_encode(v)))
                .collect();
            let parsed = parse(query.join("&").as_bytes()).unwrap();
            // A repeated key keeps its first position and takes the last value, as in a Ruby Hash.
            let mut expected: Vec<(String, Param)> = Vec::new();
            for (k, v) in &entries {
                match expected.iter_mut().find(|(e, _)| e == k) {
                    Some(slot) => slot.1 = Param::Str(v.clone()),
                    None => expected.push((k.clone(), Param::Str(v.clone()))),
                }
            }
            if entries.is_empty() {
                prop_assert_eq!(parsed.get("usage"), None);
            } else {
                prop_assert_eq!(parsed.get("usage"), Some(&Param::Map(expected)));
            }
            prop_assert!(parsed.valid_utf8);
        }

        #[test]
        fn the_parameter_limit_is_exact(n in 4090usize..4100) {
            let query = vec!["a=1"; n].join("&");
            prop_assert_eq!(parse(query.as_bytes()).is_err(), n > PARAMS_LIMIT);
        }

        #[test]
        fn parts_parse_like_their_concatenation(a in "[a-c0-9=&\\[\\]%]{0,40}", b in "[a-c0-9=&\\[\\]%]{0,40}") {
            let joined = parse(format!("{a}&{b}").as_bytes()).map(|p| (p.root, p.valid_utf8));
            let parts = parse_parts(&[a.as_bytes(), b.as_bytes()]).map(|p| (p.root, p.valid_utf8));
            prop_assert_eq!(joined, parts);
        }

        #[test]
        fn flat_pairs_round_trip(key in "[a-z_]{1,10}", value in "[ -~]{0,20}") {
            let encoded: String = form_encode(&value);
            let parsed = parse(format!("{key}={encoded}").as_bytes()).unwrap();
            prop_assert_eq!(parsed.get(&key), Some(&Param::Str(value)));
        }
    }

    fn form_encode(s: &str) -> String {
        s.bytes().map(|b| format!("%{b:02X}")).collect()
    }
}
