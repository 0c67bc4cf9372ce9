//! Small query helpers: rows as JSON documents (`to_jsonb`), porta's time format, system names.

use crate::error::{ApiError, ApiResult};
use serde_json::Value;
use sqlx::{PgConnection, Postgres, Transaction};

pub type Tx<'a> = Transaction<'a, Postgres>;

/// Runs `sql` (which must select one `jsonb` column) and returns the first row.
pub async fn one(conn: &mut PgConnection, sql: &str, binds: &[Bind]) -> ApiResult<Option<Value>> {
    let mut q = sqlx::query_scalar::<_, Value>(sql);
    for b in binds {
        q = match b {
            Bind::I(v) => q.bind(*v),
            Bind::S(v) => q.bind(v.clone()),
        };
    }
    Ok(q.fetch_optional(conn).await?.map(fix_times))
}

pub async fn all(conn: &mut PgConnection, sql: &str, binds: &[Bind]) -> ApiResult<Vec<Value>> {
    let mut q = sqlx::query_scalar::<_, Value>(sql);
    for b in binds {
        q = match b {
            Bind::I(v) => q.bind(*v),
            Bind::S(v) => q.bind(v.clone()),
        };
    }
    Ok(q.fetch_all(conn)
        .await?
        .into_iter()
        .map(fix_times)
        .collect())
}

pub async fn must(conn: &mut PgConnection, sql: &str, binds: &[Bind]) -> ApiResult<Value> {
    one(conn, sql, binds).await?.ok_or(ApiError::NotFound)
}

#[derive(Clone, Debug)]
pub enum Bind {
    I(i64),
    S(String),
}

/// Postgres renders `timestamptz` in JSON with microseconds and an offset; porta shows whole seconds in UTC.
pub fn fix_times(mut v: Value) -> Value {
    if let Value::Object(map) = &mut v {
        for key in ["created_at", "updated_at", "expires_at", "deployed_at"] {
            if let Some(Value::String(s)) = map.get(key) {
                if let Ok(t) = chrono::DateTime::parse_from_rfc3339(s) {
                    let t = t.with_timezone(&chrono::Utc);
                    map.insert(key.to_owned(), Value::String(crate::api::ts(t)));
                }
            }
        }
    }
    v
}

/// ASCII approximations of U+00C0..U+017F, lowercased, as Rails' `transliterate` (used by `parameterize`) makes them.
/// An empty entry is not a letter and separates words.
const LATIN: [&str; 192] = [
    "a", "a", "a", "a", "a", "a", "ae", "c", "e", "e", "e", "e", "i", "i", "i", "i", "d", "n", "o",
    "o", "o", "o", "o", "x", "o", "u", "u", "u", "u", "y", "th", "ss", "a", "a", "a", "a", "a",
    "a", "ae", "c", "e", "e", "e", "e", "i", "i", "i", "i", "d", "n", "o", "o", "o", "o", "o", "",
    "o", "u", "u", "u", "u", "y", "th", "y", "a", "a", "a", "a", "a", "a", "c", "c", "c", "c", "c",
    "c", "c", "c", "d", "d", "d", "d", "e", "e", "e", "e", "e", "e", "e", "e", "e", "e", "g", "g",
    "g", "g", "g", "g", "g", "g", "h", "h", "h", "h", "i", "i", "i", "i", "i", "i", "i", "i", "i",
    "i", "ij", "ij", "j", "j", "k", "k", "k", "l", "l", "l", "l", "l", "l", "l", "l", "l", "l",
    "n", "n", "n", "n", "n", "n", "n", "ng", "ng", "o", "o", "o", "o", "o", "o", "oe", "oe", "r",
    "r", "r", "r", "r", "r", "s", "s", "s", "s", "s", "s", "s", "s", "t", "t", "t", "t", "t", "t",
    "u", "u", "u", "u", "u", "u", "u", "u", "u", "u", "u", "u", "w", "w", "y", "y", "y", "z", "z",
    "z", "z", "z", "z", "s",
];

fn transliterate(c: char) -> Option<&'static str> {
    let i = (c as u32).checked_sub(0xC0)? as usize;
    LATIN.get(i).copied().filter(|s| !s.is_empty())
}

/// Rails' `name.parameterize.underscore`: Latin letters transliterated, every other run of characters one `_`.
pub fn system_name_from(name: &str) -> String {
    let mut out = String::new();
    let mut dash = false;
    for c in name.chars() {
        let piece = if c.is_ascii_alphanumeric() {
            Some(c.to_ascii_lowercase().to_string())
        } else {
            transliterate(c).map(str::to_owned)
        };
        match piece {
            Some(p) => {
                if dash && !out.is_empty() {
                    out.push('_');
                }
                dash = false;
                out.push_str(&p);
            }
            None => dash = true,
        }
    }
    out
}

/// porta's `generate_system_name`: the name's slug, or `<model>_<12 hex>` when the name gives none (blank or non-ASCII).
pub fn generated_system_name(name: &str, model: &str) -> String {
    let slug = system_name_from(name);
    if slug.is_empty() {
        format!("{model}_{}", crate::api::random_hex(6))
    } else {
        slug
    }
}

pub fn valid_system_name(s: &str) -> bool {
    let mut chars = s.chars();
    let first_ok = chars
        .next()
        .is_some_and(|c| c.is_alphanumeric() || c == '_');
    s.chars().count() >= 2
        && s.len() <= 255
        && first_ok
        && chars.all(|c| c.is_alphanumeric() || c == '_' || c == '-' || c == '/')
}

#[cfg(test)]
mod tests {
    #[test]
    fn system_names_follow_parameterize_underscore() {
        assert_eq!(super::system_name_from("My API v2!"), "my_api_v2");
        assert_eq!(
            super::system_name_from("Café Straße Łódź"),
            "cafe_strasse_lodz"
        );
        assert_eq!(super::system_name_from("a × b ÷ c"), "a_x_b_c");
        assert!(super::valid_system_name("my_api/v2-x"));
        assert!(!super::valid_system_name("-x"));
        assert!(!super::valid_system_name("a"));
        assert_eq!(super::generated_system_name("My Doc", "service"), "my_doc");
        let internal = super::generated_system_name("Документ", "service");
        assert!(
            internal.starts_with("service_") && internal.len() == 20,
            "{internal}"
        );
        assert!(super::valid_system_name(&internal));
    }
}
