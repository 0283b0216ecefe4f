//! What to do with a response, and how long to wait before trying again. The delivery loop (issue
//! 3) drives backon with these: exponential backoff with full jitter, never fewer seconds than the
//! service's Retry-After asks for, no limit on attempts, a cap on the delay.

use std::time::{Duration, SystemTime};

use backon::{BackoffBuilder, ExponentialBuilder};

use crate::stages::map::datetime::days_from_civil;

/// The sink's decision for one response status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// 200, 204: the rows are the workspace's now.
    Delivered,
    /// 408, 429, 500, 502, 503, 504 (and timeouts, connection errors): back off, send again.
    Retry,
    /// 413: the body is too large; split it and send the halves.
    Split,
    /// 400: some row is refused; bisect to find it, deliver the rest, dead-letter it.
    Bisect,
    /// 401, 403: refresh the token once, then back off and report unhealthy (a new role
    /// assignment can take 30 minutes).
    Unauthorized,
    /// Any other status (404: wrong endpoint, DCR or stream): a configuration problem. The rows
    /// stay, sending backs off to the cap, and the process reports unhealthy.
    Misconfigured,
}

pub fn classify(status: u16) -> Verdict {
    match status {
        200..=299 => Verdict::Delivered,
        408 | 429 | 500 | 502 | 503 | 504 => Verdict::Retry,
        413 => Verdict::Split,
        400 => Verdict::Bisect,
        401 | 403 => Verdict::Unauthorized,
        _ if status >= 500 => Verdict::Retry,
        _ => Verdict::Misconfigured,
    }
}

/// Parses `Retry-After`: delay-seconds, or an HTTP date (IMF-fixdate,
/// `Sun, 06 Nov 1994 08:49:37 GMT`) taken relative to `now`. A date in the past means now.
pub fn parse_retry_after(value: &str, now: SystemTime) -> Option<Duration> {
    let value = value.trim();
    if let Ok(seconds) = value.parse::<u64>() {
        return Some(Duration::from_secs(seconds));
    }
    let at = parse_http_date(value)?;
    let now = now.duration_since(SystemTime::UNIX_EPOCH).ok()?.as_secs();
    Some(Duration::from_secs(at.saturating_sub(now)))
}

/// Seconds since the epoch of an IMF-fixdate.
pub(crate) fn parse_http_date(value: &str) -> Option<u64> {
    // "Sun, 06 Nov 1994 08:49:37 GMT"
    let (_, rest) = value.split_once(", ")?;
    let mut parts = rest.split(' ');
    let day: u32 = parts.next()?.parse().ok()?;
    let month = match parts.next()? {
        "Jan" => 1,
        "Feb" => 2,
        "Mar" => 3,
        "Apr" => 4,
        "May" => 5,
        "Jun" => 6,
        "Jul" => 7,
        "Aug" => 8,
        "Sep" => 9,
        "Oct" => 10,
        "Nov" => 11,
        "Dec" => 12,
        _ => return None,
    };
    let year: i64 = parts.next()?.parse().ok()?;
    let mut hms = parts.next()?.split(':').map(|p| p.parse::<u64>().ok());
    let (h, m, s) = (hms.next()??, hms.next()??, hms.next()??);
    if parts.next()? != "GMT" || !(1..=31).contains(&day) || h > 23 || m > 59 || s > 60 {
        return None;
    }
    let days = u64::try_from(days_from_civil(year, month, day)).ok()?;
    Some(days * 86_400 + h * 3600 + m * 60 + s)
}

/// Backoff settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// First delay (before jitter).
    pub min_delay: Duration,
    /// Longest delay between two attempts, unless the service's Retry-After asks for more.
    pub max_delay: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            min_delay: Duration::from_millis(500),
            max_delay: Duration::from_secs(300),
        }
    }
}

impl RetryPolicy {
    /// backon's exponential schedule (factor 2, capped, endless); jitter is applied in
    /// [`RetryPolicy::delay`], since backon's own jitter adds to the delay rather than choosing
    /// within it.
    pub fn exponential(&self) -> impl Iterator<Item = Duration> + use<> {
        ExponentialBuilder::default()
            .with_min_delay(self.min_delay)
            .with_max_delay(self.max_delay)
            .with_factor(2.0)
            .without_max_times()
            .build()
    }

    /// The wait before the next attempt: full jitter (uniform in [0, step]) on the exponential
    /// step, but never less than the service's Retry-After.
    pub fn delay(
        &self,
        step: Duration,
        retry_after: Option<Duration>,
        rng: &mut fastrand::Rng,
    ) -> Duration {
        let step = step.min(self.max_delay);
        let jittered = step.mul_f64(rng.f64());
        match retry_after {
            Some(asked) => asked.max(jittered),
            None => jittered,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses() {
        assert_eq!(classify(204), Verdict::Delivered);
        assert_eq!(classify(200), Verdict::Delivered);
        for s in [408, 429, 500, 502, 503, 504, 507] {
            assert_eq!(classify(s), Verdict::Retry, "{s}");
        }
        assert_eq!(classify(413), Verdict::Split);
        assert_eq!(classify(400), Verdict::Bisect);
        assert_eq!(classify(401), Verdict::Unauthorized);
        assert_eq!(classify(403), Verdict::Unauthorized);
        assert_eq!(classify(404), Verdict::Misconfigured);
    }

    #[test]
    fn retry_after_seconds_and_dates() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(784_111_777); // Sun, 06 Nov 1994 08:49:37 GMT
        assert_eq!(
            parse_retry_after("120", now),
            Some(Duration::from_secs(120))
        );
        assert_eq!(
            parse_retry_after("Sun, 06 Nov 1994 08:51:37 GMT", now),
            Some(Duration::from_secs(120))
        );
        assert_eq!(
            parse_retry_after("Sun, 06 Nov 1994 08:00:00 GMT", now),
            Some(Duration::ZERO)
        );
        assert_eq!(parse_retry_after("soon", now), None);
        assert_eq!(
            parse_retry_after("Sun, 06 Nov 1994 25:00:00 GMT", now),
            None
        );
        assert_eq!(parse_retry_after("-5", now), None);
    }

    #[test]
    fn exponential_steps_double_up_to_the_cap_and_never_end() {
        let policy = RetryPolicy {
            min_delay: Duration::from_secs(1),
            max_delay: Duration::from_secs(10),
        };
        let steps: Vec<u64> = policy.exponential().take(8).map(|d| d.as_secs()).collect();
        assert_eq!(steps, [1, 2, 4, 8, 10, 10, 10, 10]);
        assert_eq!(policy.exponential().take(1000).count(), 1000);
    }

    #[test]
    fn full_jitter_stays_within_the_step_and_retry_after_wins() {
        let policy = RetryPolicy::default();
        let mut rng = fastrand::Rng::with_seed(7);
        let step = Duration::from_secs(8);
        let delays: Vec<Duration> = (0..1000)
            .map(|_| policy.delay(step, None, &mut rng))
            .collect();
        assert!(delays.iter().all(|d| *d <= step));
        assert!(
            delays.iter().any(|d| *d < Duration::from_secs(2)),
            "spread over [0, step]"
        );
        assert!(delays.iter().any(|d| *d > Duration::from_secs(6)));
        for _ in 0..100 {
            let d = policy.delay(step, Some(Duration::from_secs(30)), &mut rng);
            assert_eq!(d, Duration::from_secs(30));
        }
        // A Retry-After beyond the cap is honoured: the service knows its throttling window.
        let far = policy.delay(step, Some(Duration::from_secs(900)), &mut rng);
        assert_eq!(far, Duration::from_secs(900));
    }
}
