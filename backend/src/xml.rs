//! The hand-built XML documents of the Service Management API (`<status>` and `<error>`), byte-compatible with
//! apisonator: no whitespace, prolog first, fixed element order.

use crate::period::{push_xml_time, Period};

pub const PROLOG: &str = r#"<?xml version="1.0" encoding="UTF-8"?>"#;

/// Appends `s` with `& < >` escaped (and `"` too when `attr`), as Builder does for text and attributes.
pub fn push_escaped(out: &mut String, s: &str, attr: bool) {
    let mut rest = s;
    while let Some(at) = rest.find(|c| matches!(c, '&' | '<' | '>') || (attr && c == '"')) {
        out.push_str(&rest[..at]);
        out.push_str(match rest.as_bytes()[at] {
            b'&' => "&amp;",
            b'<' => "&lt;",
            b'>' => "&gt;",
            _ => "&quot;",
        });
        rest = &rest[at + 1..];
    }
    out.push_str(rest);
}

pub fn escape_text(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    push_escaped(&mut out, s, false);
    out
}

pub fn escape_attr(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    push_escaped(&mut out, s, true);
    out
}

pub fn error(code: &str, message: &str) -> String {
    let mut x = String::with_capacity(PROLOG.len() + 32 + code.len() + message.len());
    x.push_str(PROLOG);
    x.push_str("<error code=\"");
    push_escaped(&mut x, code, true);
    x.push_str("\">");
    push_escaped(&mut x, message, false);
    x.push_str("</error>");
    x
}

pub struct UsageReport<'a> {
    pub metric: &'a str,
    pub period: Period,
    pub max: i64,
    pub current: i64,
    pub exceeded: bool,
    /// The request time, UNIX seconds.
    pub at: i64,
}

pub struct OauthApp {
    pub id: String,
    pub key: String,
    pub url_tag: &'static str,
    pub url: String,
}

pub struct StatusDoc<'a> {
    pub authorized: bool,
    pub reason: Option<String>,
    pub application: Option<OauthApp>,
    pub plan: &'a str,
    pub reports: Vec<UsageReport<'a>>,
    /// (app id, service id, keys)
    pub app_keys: Option<(String, String, Vec<String>)>,
    /// One (metric name, children names) per usage report.
    pub hierarchy: Option<Vec<(String, Vec<String>)>>,
}

impl StatusDoc<'_> {
    pub fn render(&self) -> String {
        use std::fmt::Write;
        let mut x = String::with_capacity(256 + 240 * self.reports.len());
        x.push_str(PROLOG);
        x.push_str("<status><authorized>");
        x.push_str(if self.authorized { "true" } else { "false" });
        x.push_str("</authorized>");
        if let Some(reason) = &self.reason {
            x.push_str("<reason>");
            push_escaped(&mut x, reason, false);
            x.push_str("</reason>");
        }
        if let Some(app) = &self.application {
            x.push_str("<application><id>");
            push_escaped(&mut x, &app.id, false);
            x.push_str("</id><key>");
            push_escaped(&mut x, &app.key, false);
            let _ = write!(x, "</key><{}>", app.url_tag);
            push_escaped(&mut x, &app.url, false);
            let _ = write!(x, "</{}></application>", app.url_tag);
        }
        x.push_str("<plan>");
        push_escaped(&mut x, self.plan, false);
        x.push_str("</plan>");
        if !self.reports.is_empty() {
            x.push_str("<usage_reports>");
            for r in &self.reports {
                x.push_str("<usage_report metric=\"");
                push_escaped(&mut x, r.metric, true);
                x.push_str("\" period=\"");
                x.push_str(r.period.as_str());
                x.push_str(if r.exceeded {
                    "\" exceeded=\"true\">"
                } else {
                    "\">"
                });
                if r.period != Period::Eternity {
                    x.push_str("<period_start>");
                    push_xml_time(&mut x, r.period.start_ts(r.at));
                    x.push_str("</period_start><period_end>");
                    push_xml_time(&mut x, r.period.end_ts(r.at));
                    x.push_str("</period_end>");
                }
                let _ = write!(
                    x,
                    "<max_value>{}</max_value><current_value>{}</current_value></usage_report>",
                    r.max, r.current
                );
            }
            x.push_str("</usage_reports>");
        }
        if let Some((app, svc, keys)) = &self.app_keys {
            x.push_str("<app_keys app=\"");
            push_escaped(&mut x, app, true);
            x.push_str("\" svc=\"");
            push_escaped(&mut x, svc, true);
            x.push_str("\">");
            for k in keys.iter().take(256) {
                x.push_str("<key id=\"");
                push_escaped(&mut x, k, true);
                x.push_str("\"/>");
            }
            x.push_str("</app_keys>");
        }
        if let Some(h) = &self.hierarchy {
            x.push_str("<hierarchy>");
            for (name, children) in h {
                x.push_str("<metric name=\"");
                push_escaped(&mut x, name, true);
                x.push_str("\" children=\"");
                push_escaped(&mut x, &children.join(" "), true);
                x.push_str("\"/>");
            }
            x.push_str("</hierarchy>");
        }
        x.push_str("</status>");
        x
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escaping() {
        assert_eq!(escape_text(r#"a&b<c>"d""#), r#"a&amp;b&lt;c&gt;"d""#);
        assert_eq!(escape_attr(r#"a&b<c>"d""#), "a&amp;b&lt;c&gt;&quot;d&quot;");
        assert_eq!(escape_text("plain é"), "plain é");
        assert_eq!(
            error("x", "a<b"),
            r#"<?xml version="1.0" encoding="UTF-8"?><error code="x">a&lt;b</error>"#
        );
    }
}
