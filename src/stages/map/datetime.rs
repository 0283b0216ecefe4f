//! ISO 8601 timestamps to the one form Log Analytics reads unambiguously: UTC with a `Z`.
//! Hand-written because it runs for every row and the inputs are few and well known:
//! Management API `CreationTime` has no zone ("treat as UTC"), Defender has 7 fractional digits.

/// Fraction digits Log Analytics keeps (100 ns ticks).
const MAX_FRACTION_DIGITS: usize = 7;

/// Appends the UTC form of `text` to `out`; returns false (appending nothing) if it isn't a
/// valid ISO 8601 date-time.
pub fn push_utc(out: &mut String, text: &str) -> bool {
    match parse(text.trim().as_bytes()) {
        Some(dt) => {
            dt.write(out);
            true
        }
        None => false,
    }
}

/// Seconds since the Unix epoch as ISO 8601 UTC with milliseconds, e.g. for timestamps the
/// process writes itself (dead letters).
pub fn format_unix_millis(millis: i64) -> String {
    let secs = millis.div_euclid(1000);
    let (y, m, d) = civil_from_days(secs.div_euclid(86_400));
    let rem = secs.rem_euclid(86_400);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        millis.rem_euclid(1000)
    )
}

/// Milliseconds since the Unix epoch of an ISO 8601 date-time (no zone means UTC), for times the
/// process computes with (Management API `contentCreated`); None if it isn't one.
pub fn parse_unix_millis(text: &str) -> Option<i64> {
    let dt = parse(text.trim().as_bytes())?;
    let days = days_from_civil(dt.year, dt.month, dt.day);
    let secs = days * 86_400 + i64::from(dt.hour * 3600 + dt.minute * 60 + dt.second);
    let mut millis = 0i64;
    for i in 0..3 {
        millis = millis * 10 + dt.fraction.get(i).map_or(0, |d| i64::from(d - b'0'));
    }
    Some(secs * 1000 + millis)
}

/// `YYYY-MM-DDTHH:MM:SS` (UTC, whole seconds, no zone): the form the Management API's
/// `startTime` and `endTime` accept.
pub fn format_unix_seconds_plain(millis: i64) -> String {
    let mut s = format_unix_millis(millis.div_euclid(1000) * 1000);
    s.truncate(19);
    s
}

#[derive(Debug, PartialEq, Eq)]
struct DateTime<'a> {
    year: i64,
    month: u32,
    day: u32,
    hour: u32,
    minute: u32,
    second: u32,
    /// Fraction digits as written, at most seven.
    fraction: &'a [u8],
}

fn digits(b: &[u8], at: usize, n: usize) -> Option<u32> {
    let s = b.get(at..at + n)?;
    let mut v = 0u32;
    for &c in s {
        if !c.is_ascii_digit() {
            return None;
        }
        v = v * 10 + u32::from(c - b'0');
    }
    Some(v)
}

fn is_leap(y: i64) -> bool {
    (y % 4 == 0 && y % 100 != 0) || y % 400 == 0
}

fn days_in_month(y: i64, m: u32) -> u32 {
    match m {
        2 if is_leap(y) => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// Days since 1970-01-01 (Howard Hinnant's algorithm).
pub fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let m = i64::from(m);
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + i64::from(d) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

pub fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

fn parse(b: &[u8]) -> Option<DateTime<'_>> {
    let year = i64::from(digits(b, 0, 4)?);
    if b.get(4) != Some(&b'-') || b.get(7) != Some(&b'-') {
        return None;
    }
    let month = digits(b, 5, 2)?;
    let day = digits(b, 8, 2)?;
    if !(1..=12).contains(&month) || day == 0 || day > days_in_month(year, month) {
        return None;
    }
    let mut dt = DateTime {
        year,
        month,
        day,
        hour: 0,
        minute: 0,
        second: 0,
        fraction: &[],
    };
    let mut i = 10;
    if i == b.len() {
        return Some(dt);
    }
    if !matches!(b[i], b'T' | b't' | b' ') {
        return None;
    }
    dt.hour = digits(b, i + 1, 2)?;
    if b.get(i + 3) != Some(&b':') {
        return None;
    }
    dt.minute = digits(b, i + 4, 2)?;
    i += 6;
    if b.get(i) == Some(&b':') {
        dt.second = digits(b, i + 1, 2)?;
        i += 3;
        if matches!(b.get(i), Some(b'.' | b',')) {
            let start = i + 1;
            let mut end = start;
            while end < b.len() && b[end].is_ascii_digit() {
                end += 1;
            }
            if end == start {
                return None;
            }
            dt.fraction = &b[start..end.min(start + MAX_FRACTION_DIGITS)];
            i = end;
        }
    }
    if dt.hour > 23 || dt.minute > 59 || dt.second > 59 {
        return None;
    }
    let offset_minutes: i64 = match b.get(i) {
        None => 0,
        Some(b'Z' | b'z') if i + 1 == b.len() => 0,
        Some(&sign @ (b'+' | b'-')) => {
            let rest = &b[i + 1..];
            let (h, m) = match rest.len() {
                2 => (digits(rest, 0, 2)?, 0),
                4 => (digits(rest, 0, 2)?, digits(rest, 2, 2)?),
                5 if rest[2] == b':' => (digits(rest, 0, 2)?, digits(rest, 3, 2)?),
                _ => return None,
            };
            if h > 23 || m > 59 {
                return None;
            }
            let v = i64::from(h * 60 + m);
            if sign == b'+' { v } else { -v }
        }
        _ => return None,
    };
    if offset_minutes != 0 {
        let local =
            days_from_civil(dt.year, dt.month, dt.day) * 1440 + i64::from(dt.hour * 60 + dt.minute);
        let utc = local - offset_minutes;
        let (y, m, d) = civil_from_days(utc.div_euclid(1440));
        let mins = utc.rem_euclid(1440);
        if !(0..=9999).contains(&y) {
            return None;
        }
        dt.year = y;
        dt.month = m;
        dt.day = d;
        dt.hour = (mins / 60) as u32;
        dt.minute = (mins % 60) as u32;
    }
    Some(dt)
}

impl DateTime<'_> {
    fn write(&self, out: &mut String) {
        let mut buf = [0u8; 20];
        let two = |buf: &mut [u8], at: usize, v: u32| {
            buf[at] = b'0' + (v / 10 % 10) as u8;
            buf[at + 1] = b'0' + (v % 10) as u8;
        };
        let y = self.year as u32;
        two(&mut buf, 0, y / 100);
        two(&mut buf, 2, y % 100);
        buf[4] = b'-';
        two(&mut buf, 5, self.month);
        buf[7] = b'-';
        two(&mut buf, 8, self.day);
        buf[10] = b'T';
        two(&mut buf, 11, self.hour);
        buf[13] = b':';
        two(&mut buf, 14, self.minute);
        buf[16] = b':';
        two(&mut buf, 17, self.second);
        // Only ASCII digits and separators were written above.
        out.push_str(std::str::from_utf8(&buf[..19]).unwrap_or_default());
        if !self.fraction.is_empty() {
            out.push('.');
            out.push_str(std::str::from_utf8(self.fraction).unwrap_or_default());
        }
        out.push('Z');
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unix_millis_round_trip() {
        let ms = parse_unix_millis("2015-05-23T17:35:00.123Z").unwrap();
        assert_eq!(format_unix_millis(ms), "2015-05-23T17:35:00.123Z");
        assert_eq!(parse_unix_millis("1970-01-01T00:00:01"), Some(1000));
        assert_eq!(parse_unix_millis("1970-01-01T01:00:00+01:00"), Some(0));
        assert_eq!(format_unix_seconds_plain(ms), "2015-05-23T17:35:00");
        assert_eq!(parse_unix_millis("yesterday"), None);
    }

    fn utc(s: &str) -> Option<String> {
        let mut out = String::new();
        push_utc(&mut out, s).then_some(out)
    }

    #[test]
    fn zone_less_is_utc() {
        assert_eq!(utc("2020-02-07T16:44:07").unwrap(), "2020-02-07T16:44:07Z");
        assert_eq!(utc("2015-06-29T20:03:19").unwrap(), "2015-06-29T20:03:19Z");
    }

    #[test]
    fn fractions_and_zones() {
        assert_eq!(
            utc("2026-07-18T14:11:24.3832981Z").unwrap(),
            "2026-07-18T14:11:24.3832981Z"
        );
        assert_eq!(
            utc("2026-07-18T14:11:24.123456789Z").unwrap(),
            "2026-07-18T14:11:24.1234567Z"
        );
        assert_eq!(
            utc("2015-05-23T17:35:00.000Z").unwrap(),
            "2015-05-23T17:35:00.000Z"
        );
        assert_eq!(
            utc("2020-01-01T01:30:00+02:00").unwrap(),
            "2019-12-31T23:30:00Z"
        );
        assert_eq!(
            utc("2020-02-28T23:00:00-0130").unwrap(),
            "2020-02-29T00:30:00Z"
        );
        assert_eq!(utc("2020-02-07 16:44").unwrap(), "2020-02-07T16:44:00Z");
        assert_eq!(utc("2020-02-07").unwrap(), "2020-02-07T00:00:00Z");
    }

    #[test]
    fn rejects_nonsense() {
        for bad in [
            "",
            "yesterday",
            "2020-13-01T00:00:00",
            "2021-02-29T00:00:00",
            "2020-01-01T24:00:00",
            "2020-01-01T00:00:00Q",
            "2020-01-01T00:00:00.Z",
            "2020-01-01T00:00:00+5",
            "/Date(1580000000000)/",
        ] {
            assert_eq!(utc(bad), None, "{bad}");
        }
    }

    #[test]
    fn unix_millis() {
        assert_eq!(format_unix_millis(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(
            format_unix_millis(1_795_000_000_123),
            "2026-11-18T11:06:40.123Z"
        );
    }

    #[test]
    fn civil_round_trip() {
        for days in [-1_000_000, -1, 0, 1, 18_000, 2_932_896] {
            let (y, m, d) = civil_from_days(days);
            assert_eq!(days_from_civil(y, m, d), days);
        }
    }
}
