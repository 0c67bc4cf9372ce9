//! Typed configuration from environment variables, read once at start, with every problem reported together.

use std::collections::HashMap;
use std::fmt;
use std::str::FromStr;
use std::time::Duration;

/// Reads environment variables into typed values and collects every error instead of stopping at the first.
pub struct EnvReader {
    vars: HashMap<String, String>,
    errors: Vec<String>,
}

/// Every invalid or missing variable found while reading the configuration.
#[derive(Debug, thiserror::Error)]
#[error("{}", .problems.iter().map(|p| format!("  - {p}")).collect::<Vec<_>>().join("\n"))]
pub struct ConfigError {
    pub problems: Vec<String>,
}

impl EnvReader {
    /// A reader over the process environment. Variables that are not valid UTF-8 count as errors when read.
    pub fn from_env() -> Self {
        let mut errors = Vec::new();
        let mut vars = HashMap::new();
        for (key, value) in std::env::vars_os() {
            match (key.into_string(), value.into_string()) {
                (Ok(key), Ok(value)) => {
                    vars.insert(key, value);
                }
                (Ok(key), Err(_)) => errors.push(format!("{key}: the value is not valid UTF-8")),
                _ => {}
            }
        }
        Self { vars, errors }
    }

    /// A reader over the given pairs, for tests.
    pub fn from_pairs<'a>(pairs: impl IntoIterator<Item = (&'a str, &'a str)>) -> Self {
        Self {
            vars: pairs
                .into_iter()
                .map(|(k, v)| (k.to_owned(), v.to_owned()))
                .collect(),
            errors: Vec::new(),
        }
    }

    /// The raw value; an empty value counts as unset, as most deployment tools cannot unset a variable.
    pub fn raw(&self, name: &str) -> Option<&str> {
        self.vars
            .get(name)
            .map(String::as_str)
            .filter(|v| !v.trim().is_empty())
    }

    /// An optional value parsed with `FromStr`; `expected` tells the operator what a valid value looks like.
    pub fn optional<T>(&mut self, name: &str, expected: &str) -> Option<T>
    where
        T: FromStr,
        T::Err: fmt::Display,
    {
        let raw = self.raw(name)?.trim().to_owned();
        match raw.parse::<T>() {
            Ok(value) => Some(value),
            Err(err) => {
                self.errors
                    .push(format!("{name}: expected {expected}, got {raw:?} ({err})"));
                None
            }
        }
    }

    /// A value with a default used when the variable is unset. An invalid value is an error, never the default.
    pub fn or<T>(&mut self, name: &str, expected: &str, default: T) -> T
    where
        T: FromStr,
        T::Err: fmt::Display,
    {
        self.optional(name, expected).unwrap_or(default)
    }

    /// A value that must be set.
    pub fn required<T>(&mut self, name: &str, expected: &str) -> Option<T>
    where
        T: FromStr,
        T::Err: fmt::Display,
    {
        if self.raw(name).is_none() {
            self.errors
                .push(format!("{name}: is required, expected {expected}"));
            return None;
        }
        self.optional(name, expected)
    }

    /// A secret value; it is never echoed back in an error message.
    pub fn secret(&mut self, name: &str) -> Option<Secret> {
        self.raw(name).map(|v| Secret::new(v.to_owned()))
    }

    /// A duration given in (possibly fractional) seconds.
    pub fn seconds(&mut self, name: &str, default: Duration) -> Duration {
        match self.optional::<f64>(name, "a number of seconds") {
            Some(secs) if secs.is_finite() && secs >= 0.0 => Duration::from_secs_f64(secs),
            Some(secs) => {
                self.errors.push(format!(
                    "{name}: expected a non-negative number of seconds, got {secs}"
                ));
                default
            }
            None => default,
        }
    }

    /// One of a fixed set of words, compared case-insensitively.
    pub fn choice(
        &mut self,
        name: &str,
        allowed: &[&'static str],
        default: &'static str,
    ) -> &'static str {
        let Some(raw) = self.raw(name) else {
            return default;
        };
        let raw = raw.trim().to_ascii_lowercase();
        match allowed.iter().find(|a| **a == raw) {
            Some(found) => found,
            None => {
                self.errors.push(format!(
                    "{name}: expected one of {}, got {raw:?}",
                    allowed.join(", ")
                ));
                default
            }
        }
    }

    /// Records a problem found by a service's own validation, so it is reported with the others.
    pub fn error(&mut self, problem: impl Into<String>) {
        self.errors.push(problem.into());
    }

    /// `Ok` when every variable read so far was valid.
    pub fn finish(self) -> Result<(), ConfigError> {
        if self.errors.is_empty() {
            Ok(())
        } else {
            Err(ConfigError {
                problems: self.errors,
            })
        }
    }
}

/// A value that must never appear in logs: `Debug` and `Display` print `[redacted]`.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    /// The secret itself, for the one place that needs it (a header, a comparison, a digest).
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

impl FromStr for Secret {
    type Err = std::convert::Infallible;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(Self::new(s))
    }
}

/// A Postgres connection URL; its password is hidden when printed.
#[derive(Clone)]
pub struct DatabaseUrl(url::Url);

impl DatabaseUrl {
    pub fn as_str(&self) -> &str {
        self.0.as_str()
    }

    pub fn url(&self) -> &url::Url {
        &self.0
    }

    /// The database name (the URL's path), if any.
    pub fn database(&self) -> Option<&str> {
        let name = self.0.path().trim_start_matches('/');
        (!name.is_empty()).then_some(name)
    }
}

impl FromStr for DatabaseUrl {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let url = url::Url::parse(s).map_err(|e| e.to_string())?;
        match url.scheme() {
            "postgres" | "postgresql" => Ok(Self(url)),
            other => Err(format!("scheme {other:?} is not postgres://")),
        }
    }
}

impl fmt::Display for DatabaseUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut shown = self.0.clone();
        if shown.password().is_some() {
            let _ = shown.set_password(Some("redacted"));
        }
        f.write_str(shown.as_str())
    }
}

impl fmt::Debug for DatabaseUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::SocketAddr;

    #[test]
    fn reports_every_bad_variable_at_once() {
        let mut env = EnvReader::from_pairs([
            ("LISTEN_ADDR", "not-an-address"),
            ("TIMEOUT", "-3"),
            ("LOG_FORMAT", "xml"),
        ]);
        let _: SocketAddr = env.or("LISTEN_ADDR", "host:port", "0.0.0.0:1".parse().unwrap());
        let _ = env.seconds("TIMEOUT", Duration::from_secs(1));
        let _ = env.choice("LOG_FORMAT", &["text", "json"], "text");
        let _: Option<String> = env.required("MUST_HAVE", "a word");
        let err = env.finish().unwrap_err();
        assert_eq!(err.problems.len(), 4, "{err}");
        let text = err.to_string();
        for name in ["LISTEN_ADDR", "TIMEOUT", "LOG_FORMAT", "MUST_HAVE"] {
            assert!(text.contains(name), "{name} missing from {text}");
        }
    }

    #[test]
    fn defaults_apply_only_when_unset_or_empty() {
        let mut env = EnvReader::from_pairs([("A", ""), ("B", "7")]);
        assert_eq!(env.or("A", "n", 1u32), 1);
        assert_eq!(env.or("B", "n", 1u32), 7);
        assert_eq!(env.or("C", "n", 1u32), 1);
        assert!(env.finish().is_ok());
    }

    #[test]
    fn secrets_never_print() {
        let mut env = EnvReader::from_pairs([("TOKEN", "s3cr3t")]);
        let secret = env.secret("TOKEN").unwrap();
        assert_eq!(secret.expose(), "s3cr3t");
        assert_eq!(format!("{secret} {secret:?}"), "[redacted] [redacted]");
    }

    #[test]
    fn database_url_hides_password() {
        let url: DatabaseUrl = "postgres://u:pw@h:5432/db".parse().unwrap();
        assert_eq!(url.to_string(), "postgres://u:redacted@h:5432/db");
        assert_eq!(url.database(), Some("db"));
        assert!("mysql://h/db".parse::<DatabaseUrl>().is_err());
    }
}
