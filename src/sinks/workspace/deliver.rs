//! Delivering one body: send, read the verdict, then retry, split, bisect or dead-letter.

use std::time::{Duration, SystemTime};

use serde_json::value::RawValue;

use super::{Api, SinkError, SinkStats, Target, WorkspaceSink};
use crate::sinks::batch::Body;
use crate::sinks::data_collector;
use crate::sinks::retry::{Verdict, classify, parse_retry_after};
use crate::state::dlq::DeadLetter;

/// What the service said about one request.
struct Answer {
    status: u16,
    retry_after: Option<Duration>,
    error_code: Option<String>,
    body: String,
}

/// The service's error body, cut to what a dead letter needs.
const ERROR_BODY_BYTES: usize = 4096;

impl WorkspaceSink {
    fn count(&self, f: impl FnOnce(&mut SinkStats)) {
        if let Ok(mut s) = self.stats.lock() {
            f(&mut s);
        }
    }

    fn report(&self, problem: Option<String>) {
        if let Some(p) = &problem {
            tracing::warn!(problem = %p, "the workspace sink is not delivering");
        }
        if let Ok(mut slot) = self.problem.lock() {
            *slot = problem;
        }
    }

    /// Asks for a token now (Logs Ingestion), so a wrong credential shows in the sink's problem
    /// (and `/readyz`) at start-up rather than at the first delivery. True when it worked, or
    /// when the API needs no token.
    pub async fn check_credentials(&self) -> bool {
        let Api::LogsIngestion { credential, scope } = &self.api else {
            return true;
        };
        match credential.get_token(&[scope.as_str()], None).await {
            Ok(_) => {
                // Only clear a problem this check could have set.
                if self
                    .problem()
                    .is_some_and(|p| p.starts_with("token request failed"))
                {
                    self.report(None);
                }
                true
            }
            Err(e) => {
                self.count(|s| s.token_failures += 1);
                self.report(Some(format!("token request failed: {e}")));
                false
            }
        }
    }

    fn jittered(&self, step: Duration, retry_after: Option<Duration>) -> Duration {
        match self.rng.lock() {
            Ok(mut rng) => self.policy.delay(step, retry_after, &mut rng),
            Err(_) => step,
        }
    }

    /// One POST. Err is a failure before any answer (token, connection, timeout).
    async fn send(&self, target: &Target, body: &Body) -> Result<Answer, String> {
        let (request, sent) = match &self.api {
            Api::LogsIngestion { credential, scope } => {
                let token = credential
                    .get_token(&[scope.as_str()], None)
                    .await
                    .map_err(|e| {
                        self.count(|s| s.token_failures += 1);
                        format!("token request failed: {e}")
                    })?;
                let gzip = body.gzip().map_err(|e| format!("gzip failed: {e}"))?;
                // Only incompressible data grows under gzip; then the plain body goes.
                let (payload, encoding) = if gzip.len() <= body.bytes.len() {
                    (gzip, Some("gzip"))
                } else {
                    (body.bytes.clone(), None)
                };
                let sent = payload.len();
                let mut request = self
                    .client
                    .post(target.url.clone())
                    .header("Content-Type", "application/json")
                    .header("Authorization", format!("Bearer {}", token.token.secret()));
                if let Some(encoding) = encoding {
                    request = request.header("Content-Encoding", encoding);
                }
                (request.body(payload), sent)
            }
            Api::DataCollector {
                workspace_id,
                shared_key,
                azure_resource_id,
            } => {
                let payload = data_collector::request_body(body);
                let date = data_collector::rfc1123(SystemTime::now());
                let to_sign = data_collector::signature::string_to_sign(
                    payload.len(),
                    "application/json",
                    &date,
                );
                let authorization =
                    data_collector::signature::authorization(workspace_id, shared_key, &to_sign)
                        .map_err(|e| e.to_string())?;
                let sent = payload.len();
                let mut request = self
                    .client
                    .post(target.url.clone())
                    .header("Content-Type", "application/json")
                    .header("Authorization", authorization)
                    .header("Log-Type", target.stream.as_str())
                    .header("x-ms-date", date)
                    .header("time-generated-field", data_collector::TIME_FIELD);
                if let Some(id) = azure_resource_id {
                    request = request.header("x-ms-AzureResourceId", id.as_str());
                }
                (request.body(payload), sent)
            }
        };
        let response = request
            .send()
            .await
            .map_err(|e| format!("request failed: {e}"))?;
        self.count(|s| {
            s.requests += 1;
            s.bytes_sent += sent as u64;
            s.bytes_uncompressed += body.bytes.len() as u64;
        });
        let status = response.status().as_u16();
        self.count(|s| *s.responses_by_status.entry(status).or_default() += 1);
        let header = |name: &str| {
            response
                .headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string)
        };
        let retry_after =
            header("retry-after").and_then(|v| parse_retry_after(&v, SystemTime::now()));
        let error_code = header("x-ms-error-code");
        let mut text = response.text().await.unwrap_or_default();
        if text.len() > ERROR_BODY_BYTES {
            let mut cut = ERROR_BODY_BYTES;
            while !text.is_char_boundary(cut) {
                cut -= 1;
            }
            text.truncate(cut);
        }
        Ok(Answer {
            status,
            retry_after,
            error_code,
            body: text,
        })
    }

    fn dead_letter(
        &self,
        target: &Target,
        body: &Body,
        reason: String,
        answer: Option<&Answer>,
    ) -> Result<(), SinkError> {
        let mut letters = Vec::with_capacity(body.rows());
        for i in 0..body.rows() {
            let text = String::from_utf8_lossy(body.row(i)).into_owned();
            let Ok(row) = RawValue::from_string(text) else {
                continue;
            };
            let mut letter = DeadLetter::now(&target.table, &target.stream, reason.clone(), row);
            if let Some(a) = answer {
                letter.status = Some(a.status);
                letter.error_code = a.error_code.clone();
                letter.error_body = Some(a.body.clone());
            }
            letters.push(letter);
        }
        tracing::warn!(table = %target.table, rows = letters.len(), reason = %reason, "rows dead-lettered");
        self.dead_letter_rows(&letters)
    }

    fn table_failing(&self, target: &Target, throttled: bool, message: &str) {
        self.count(|s| {
            s.failing_by_table.insert(
                target.table.clone(),
                super::TableFailure {
                    throttled,
                    message: message.to_string(),
                },
            );
        });
    }

    /// Stores rows refused for good (by the service, or too large to send at all).
    pub fn dead_letter_rows(&self, letters: &[DeadLetter]) -> Result<(), SinkError> {
        self.dlq.append(letters)?;
        self.count(|s| {
            s.dead_lettered += letters.len() as u64;
            for letter in letters {
                *s.dead_lettered_by_table
                    .entry(letter.table.clone())
                    .or_default() += 1;
            }
        });
        Ok(())
    }

    /// Delivers every row of `body`, to the workspace or, when refused for good, to the
    /// dead-letter store. Returns only once that is done; Err only when the store fails.
    pub async fn deliver(&self, target: &Target, body: Body) -> Result<(), SinkError> {
        // Bodies still to send, last first: halves of a split keep their order.
        let mut pending = vec![body];
        while let Some(body) = pending.pop() {
            let mut steps = self.policy.exponential();
            let mut refreshed = false;
            loop {
                let step = steps.next().unwrap_or(self.policy.max_delay);
                let answer = match self.send(target, &body).await {
                    Ok(a) => a,
                    Err(problem) => {
                        self.table_failing(target, false, "the workspace could not be reached");
                        self.report(Some(problem));
                        self.count(|s| s.retries += 1);
                        tokio::time::sleep(self.jittered(step, None)).await;
                        continue;
                    }
                };
                let verdict = classify(answer.status);
                // What the health rows say of the table: throttled on 429; failing only on
                // answers that don't pass by themselves (refused identity, wrong endpoint).
                let message = || {
                    format!(
                        "HTTP {} {}",
                        answer.status,
                        answer.error_code.as_deref().unwrap_or("")
                    )
                    .trim_end()
                    .to_string()
                };
                match verdict {
                    Verdict::Retry if answer.status == 429 => {
                        self.table_failing(target, true, &message());
                    }
                    Verdict::Unauthorized if refreshed => {
                        self.table_failing(target, false, &message())
                    }
                    Verdict::Misconfigured => self.table_failing(target, false, &message()),
                    _ => {}
                }
                match verdict {
                    Verdict::Delivered => {
                        self.count(|s| {
                            s.delivered_rows += body.rows() as u64;
                            *s.delivered_by_table
                                .entry(target.table.clone())
                                .or_default() += body.rows() as u64;
                            s.last_delivery_ms_by_table.insert(
                                target.table.clone(),
                                crate::sources::management::client::now_millis(),
                            );
                            s.failing_by_table.remove(&target.table);
                        });
                        self.report(None);
                        break;
                    }
                    Verdict::Retry => {
                        self.count(|s| s.retries += 1);
                        tokio::time::sleep(self.jittered(step, answer.retry_after)).await;
                    }
                    Verdict::Split | Verdict::Bisect => match body.split() {
                        Some((first, second)) => {
                            self.count(|s| s.splits += 1);
                            pending.push(second);
                            pending.push(first);
                            break;
                        }
                        None => {
                            let reason = format!(
                                "the service refused this row: HTTP {} {}",
                                answer.status,
                                answer.error_code.as_deref().unwrap_or("")
                            );
                            self.dead_letter(target, &body, reason, Some(&answer))?;
                            break;
                        }
                    },
                    Verdict::Unauthorized => {
                        if !refreshed {
                            refreshed = true;
                            continue;
                        }
                        self.report(Some(format!(
                            "HTTP {} from the Logs Ingestion API for stream {}: grant the collector's identity the Monitoring Metrics Publisher role on the DCR (a new role assignment can take 30 minutes)",
                            answer.status, target.stream
                        )));
                        self.count(|s| s.retries += 1);
                        tokio::time::sleep(self.jittered(step, answer.retry_after)).await;
                    }
                    Verdict::Misconfigured => {
                        self.report(Some(format!(
                            "HTTP {} from {}: check the endpoint, DCR immutable id and stream name in the config",
                            answer.status, target.url
                        )));
                        self.count(|s| s.retries += 1);
                        tokio::time::sleep(self.policy.max_delay).await;
                    }
                }
            }
        }
        Ok(())
    }
}
