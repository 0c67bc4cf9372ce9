//! Usage-limit periods, calendar-aligned in UTC (weeks start on Monday), as apisonator's `Period::Boundary`.

use chrono::{DateTime, Utc};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Period {
    Eternity,
    Year,
    Month,
    Week,
    Day,
    Hour,
    Minute,
}

impl Period {
    /// apisonator's load order: longest first.
    pub const ALL: [Period; 7] = [
        Period::Eternity,
        Period::Year,
        Period::Month,
        Period::Week,
        Period::Day,
        Period::Hour,
        Period::Minute,
    ];

    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "eternity" => Period::Eternity,
            "year" => Period::Year,
            "month" => Period::Month,
            "week" => Period::Week,
            "day" => Period::Day,
            "hour" => Period::Hour,
            "minute" => Period::Minute,
            _ => return None,
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Period::Eternity => "eternity",
            Period::Year => "year",
            Period::Month => "month",
            Period::Week => "week",
            Period::Day => "day",
            Period::Hour => "hour",
            Period::Minute => "minute",
        }
    }

    /// The start of the period instance containing `t`.
    pub fn start(self, t: DateTime<Utc>) -> DateTime<Utc> {
        DateTime::from_timestamp(self.start_ts(t.timestamp()), 0).unwrap_or(t)
    }

    /// The exclusive end of the instance containing `t`: the next instance's start.
    pub fn end(self, t: DateTime<Utc>) -> DateTime<Utc> {
        DateTime::from_timestamp(self.end_ts(t.timestamp()), 0).unwrap_or(t)
    }

    /// [`Period::start`] on UNIX seconds: integer arithmetic only, as it runs several times per request.
    pub fn start_ts(self, ts: i64) -> i64 {
        let days = ts.div_euclid(DAY);
        match self {
            Period::Eternity => 0,
            Period::Minute => ts - ts.rem_euclid(60),
            Period::Hour => ts - ts.rem_euclid(3600),
            Period::Day => days * DAY,
            // 1970-01-01 was a Thursday, three days after a Monday.
            Period::Week => (days - (days + 3).rem_euclid(7)) * DAY,
            Period::Month => {
                let (y, m, _) = civil_from_days(days);
                days_from_civil(y, m, 1) * DAY
            }
            Period::Year => {
                let (y, _, _) = civil_from_days(days);
                days_from_civil(y, 1, 1) * DAY
            }
        }
    }

    /// [`Period::end`] on UNIX seconds.
    pub fn end_ts(self, ts: i64) -> i64 {
        let start = self.start_ts(ts);
        match self {
            // apisonator's eternity ends at 9999-12-31 23:59:59.
            Period::Eternity => days_from_civil(9999, 12, 31) * DAY + DAY - 1,
            Period::Minute => start + 60,
            Period::Hour => start + 3600,
            Period::Day => start + DAY,
            Period::Week => start + 7 * DAY,
            Period::Month => {
                let (y, m, _) = civil_from_days(start.div_euclid(DAY));
                let (y, m) = if m == 12 { (y + 1, 1) } else { (y, m + 1) };
                days_from_civil(y, m, 1) * DAY
            }
            Period::Year => {
                let (y, _, _) = civil_from_days(start.div_euclid(DAY));
                days_from_civil(y + 1, 1, 1) * DAY
            }
        }
    }
}

const DAY: i64 = 86_400;

/// (year, month, day) of a day count since 1970-01-01 in the proleptic Gregorian calendar (H. Hinnant's algorithm).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

/// The inverse of [`civil_from_days`].
fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let m = i64::from(m);
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + i64::from(d) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// The `%Y-%m-%d %H:%M:%S %z` format of the XML documents.
pub fn xml_time(t: DateTime<Utc>) -> String {
    let mut out = String::with_capacity(25);
    push_xml_time(&mut out, t.timestamp());
    out
}

/// Appends `ts` (UNIX seconds) as `YYYY-MM-DD hh:mm:ss +0000` without going through a format string.
pub fn push_xml_time(out: &mut String, ts: i64) {
    let (y, m, d) = civil_from_days(ts.div_euclid(DAY));
    let secs = ts.rem_euclid(DAY);
    let mut buf = [0u8; 19];
    let y = y.clamp(0, 9999) as u32;
    let digits = [
        (0, y / 1000),
        (1, y / 100 % 10),
        (2, y / 10 % 10),
        (3, y % 10),
        (5, m / 10),
        (6, m % 10),
        (8, d / 10),
        (9, d % 10),
        (11, (secs / 3600) as u32 / 10),
        (12, (secs / 3600) as u32 % 10),
        (14, (secs / 60 % 60) as u32 / 10),
        (15, (secs / 60 % 60) as u32 % 10),
        (17, (secs % 60) as u32 / 10),
        (18, (secs % 60) as u32 % 10),
    ];
    for (at, digit) in digits {
        buf[at] = b'0' + digit as u8;
    }
    buf[4] = b'-';
    buf[7] = b'-';
    buf[10] = b' ';
    buf[13] = b':';
    buf[16] = b':';
    out.push_str(std::str::from_utf8(&buf).unwrap_or_default());
    out.push_str(" +0000");
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    #[test]
    fn boundaries() {
        let t = at("2025-04-23T17:42:13Z"); // a Wednesday
        assert_eq!(
            xml_time(Period::Minute.start(t)),
            "2025-04-23 17:42:00 +0000"
        );
        assert_eq!(xml_time(Period::Hour.end(t)), "2025-04-23 18:00:00 +0000");
        assert_eq!(xml_time(Period::Week.start(t)), "2025-04-21 00:00:00 +0000");
        assert_eq!(xml_time(Period::Week.end(t)), "2025-04-28 00:00:00 +0000");
        assert_eq!(
            xml_time(Period::Month.end(at("2025-12-31T23:59:59Z"))),
            "2026-01-01 00:00:00 +0000"
        );
        assert_eq!(xml_time(Period::Year.start(t)), "2025-01-01 00:00:00 +0000");
        // A Monday starts its own week.
        assert_eq!(
            xml_time(Period::Week.start(at("2025-04-21T00:00:00Z"))),
            "2025-04-21 00:00:00 +0000"
        );
        // Sunday belongs to the week that started the Monday before.
        assert_eq!(
            xml_time(Period::Week.start(at("2025-04-27T23:59:59Z"))),
            "2025-04-21 00:00:00 +0000"
        );
    }

    #[test]
    fn integer_arithmetic_agrees_with_chrono_over_many_instants() {
        use chrono::{Datelike, Duration, NaiveDate, TimeZone, Timelike};
        let midnight = |d: NaiveDate| Utc.from_utc_datetime(&d.and_hms_opt(0, 0, 0).unwrap());
        // Every 7,919 seconds (prime) over 1999..2031 crosses every kind of boundary, leap years included.
        let mut t = at("1999-01-01T00:00:00Z");
        let stop = at("2031-01-01T00:00:00Z");
        while t < stop {
            let date = t.date_naive();
            let expect = [
                (
                    Period::Minute,
                    midnight(date) + Duration::minutes((t.hour() * 60 + t.minute()) as i64),
                ),
                (
                    Period::Hour,
                    midnight(date) + Duration::hours(t.hour() as i64),
                ),
                (Period::Day, midnight(date)),
                (
                    Period::Week,
                    midnight(date - Duration::days(date.weekday().num_days_from_monday() as i64)),
                ),
                (Period::Month, midnight(date.with_day(1).unwrap())),
                (
                    Period::Year,
                    midnight(NaiveDate::from_ymd_opt(date.year(), 1, 1).unwrap()),
                ),
            ];
            for (period, start) in expect {
                assert_eq!(period.start(t), start, "{period:?} {t}");
                assert!(
                    period.end(t) > t && period.start(period.end(t)) == period.end(t),
                    "{period:?} {t}"
                );
                assert_eq!(
                    period.start(period.end(t) - Duration::seconds(1)),
                    start,
                    "{period:?} {t}"
                );
            }
            assert_eq!(xml_time(t), t.format("%Y-%m-%d %H:%M:%S %z").to_string());
            t += Duration::seconds(7_919);
        }
        assert_eq!(
            xml_time(Period::Eternity.end(t)),
            "9999-12-31 23:59:59 +0000"
        );
    }
}
