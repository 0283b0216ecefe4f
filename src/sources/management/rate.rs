//! A client-side request budget per tenant, so the connector slows itself down before the API
//! does (AF429): requests are spaced evenly, with a burst of one second's worth allowed.
//! Uses tokio's clock, so tests drive it with a paused clock.

use std::time::Duration;

use tokio::sync::Mutex;
use tokio::time::Instant;

#[derive(Debug)]
pub struct RateLimiter {
    interval: Duration,
    burst: Duration,
    /// The theoretical arrival time of the next request.
    next: Mutex<Instant>,
}

impl RateLimiter {
    pub fn per_minute(requests: u32) -> Self {
        let interval = Duration::from_secs(60) / requests.max(1);
        let burst_requests = (requests / 60).max(1);
        Self {
            interval,
            burst: interval * (burst_requests - 1),
            next: Mutex::new(Instant::now()),
        }
    }

    /// Waits for this request's slot (GCRA: a theoretical arrival time that advances by one
    /// interval per request; a request may run up to `burst` ahead of it).
    pub async fn acquire(&self) {
        let release = {
            let mut next = self.next.lock().await;
            let now = Instant::now();
            let arrival = (*next).max(now);
            *next = arrival + self.interval;
            arrival.checked_sub(self.burst).unwrap_or(now)
        };
        tokio::time::sleep_until(release).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn spaces_requests_after_a_burst() {
        let limiter = RateLimiter::per_minute(120); // one every 500 ms, burst of 2
        let start = Instant::now();
        for _ in 0..2 {
            limiter.acquire().await;
        }
        assert!(start.elapsed() < Duration::from_millis(10), "burst is free");
        for _ in 0..10 {
            limiter.acquire().await;
        }
        let took = start.elapsed();
        assert!(
            took >= Duration::from_millis(4_900) && took <= Duration::from_millis(5_100),
            "{took:?}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_minute_holds_the_budget() {
        let limiter = RateLimiter::per_minute(2_000);
        let start = Instant::now();
        let mut in_first_minute = 0;
        loop {
            limiter.acquire().await;
            if start.elapsed() >= Duration::from_secs(60) {
                break;
            }
            in_first_minute += 1;
        }
        assert!(
            (2_000..=2_000 + 34).contains(&in_first_minute),
            "{in_first_minute}"
        );
    }
}
