//! The Log Analytics Query API (`POST {endpoint}/v1/workspaces/{id}/query`, body
//! `{"query": KQL}`), as `verify` uses it: a token for the API's scope, retries on throttling
//! and server errors, and a result over the API's limits (500,000 rows, about 100 MB: it then
//! answers 200 with a `PartialError` and a cut result) treated as an error so the caller reads
//! a smaller page. Reference: learn.microsoft.com/rest/api/loganalytics/dataaccess/query/execute
//! and learn.microsoft.com/azure/azure-monitor/service-limits (log queries).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use azure_core::credentials::TokenCredential;
use serde::Deserialize;
use serde_json::Value;

use crate::sinks::retry::{RetryPolicy, parse_retry_after};

/// Attempts for one query before giving up.
const ATTEMPTS: usize = 6;

#[derive(Debug, thiserror::Error)]
pub enum QueryError {
    #[error("token for the Query API ({scope}): {error}")]
    Token { scope: String, error: String },
    #[error("Query API request failed: {0}")]
    Transport(String),
    #[error(
        "the Query API answered {status}: {message} (a 403 means the identity needs the Log Analytics Reader role on the workspace)"
    )]
    Status { status: u16, message: String },
    #[error("the result was cut at the Query API's limits: {0}")]
    Partial(String),
    #[error("the Query API's answer could not be read: {0}")]
    Answer(String),
}

/// One result table: column names and rows of JSON values.
#[derive(Debug, Clone, Default)]
pub struct ResultTable {
    pub columns: Vec<String>,
    pub rows: Vec<Vec<Value>>,
}

impl ResultTable {
    /// Column name → index.
    pub fn index(&self) -> HashMap<&str, usize> {
        self.columns
            .iter()
            .enumerate()
            .map(|(i, c)| (c.as_str(), i))
            .collect()
    }
}

#[derive(Deserialize)]
struct Answer {
    #[serde(default)]
    tables: Vec<AnswerTable>,
    #[serde(default)]
    error: Option<Value>,
}

#[derive(Deserialize)]
struct AnswerTable {
    columns: Vec<AnswerColumn>,
    rows: Vec<Vec<Value>>,
}

#[derive(Deserialize)]
struct AnswerColumn {
    name: String,
}

pub struct QueryClient {
    http: reqwest::Client,
    credential: Arc<dyn TokenCredential>,
    url: String,
    scope: String,
    retry: RetryPolicy,
}

impl QueryClient {
    pub fn new(
        http: reqwest::Client,
        credential: Arc<dyn TokenCredential>,
        endpoint: &str,
        workspace_id: &str,
        scope: &str,
        retry: RetryPolicy,
    ) -> Self {
        Self {
            http,
            credential,
            url: format!("{endpoint}/v1/workspaces/{workspace_id}/query"),
            scope: scope.to_string(),
            retry,
        }
    }

    /// Runs `kql`; the first result table.
    pub async fn query(&self, kql: &str) -> Result<ResultTable, QueryError> {
        let mut steps = self.retry.exponential();
        let mut rng = fastrand::Rng::new();
        let mut last = None;
        for _ in 0..ATTEMPTS {
            let (retry_after, error) = match self.attempt(kql).await {
                Ok(table) => return Ok(table),
                Err(Attempt::Final(e)) => return Err(e),
                Err(Attempt::Again(after, e)) => (after, e),
            };
            tracing::warn!(error = %error, "Query API call failed; trying again");
            last = Some(error);
            let step = steps.next().unwrap_or(self.retry.max_delay);
            tokio::time::sleep(self.retry.delay(step, retry_after, &mut rng)).await;
        }
        Err(last.unwrap_or_else(|| QueryError::Transport("no attempt made".into())))
    }

    async fn attempt(&self, kql: &str) -> Result<ResultTable, Attempt> {
        let token = self
            .credential
            .get_token(&[self.scope.as_str()], None)
            .await
            .map_err(|e| {
                Attempt::Again(
                    None,
                    QueryError::Token {
                        scope: self.scope.clone(),
                        error: e.to_string(),
                    },
                )
            })?;
        let response = self
            .http
            .post(&self.url)
            .bearer_auth(token.token.secret())
            .header("content-type", "application/json")
            .body(serde_json::json!({ "query": kql }).to_string())
            .send()
            .await
            .map_err(|e| {
                Attempt::Again(
                    None,
                    QueryError::Transport(crate::http_client::error_chain(&e)),
                )
            })?;
        let status = response.status().as_u16();
        let retry_after = response
            .headers()
            .get("retry-after")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| parse_retry_after(v, SystemTime::now()));
        let body = response
            .bytes()
            .await
            .map_err(|e| Attempt::Again(None, QueryError::Transport(e.to_string())))?;
        if status != 200 {
            let message = serde_json::from_slice::<Value>(&body)
                .ok()
                .and_then(|v| v["error"]["message"].as_str().map(str::to_string))
                .unwrap_or_else(|| String::from_utf8_lossy(&body).chars().take(300).collect());
            let error = QueryError::Status { status, message };
            return Err(match status {
                408 | 429 | 500..=599 => Attempt::Again(retry_after, error),
                _ => Attempt::Final(error),
            });
        }
        let answer: Answer = serde_json::from_slice(&body)
            .map_err(|e| Attempt::Final(QueryError::Answer(e.to_string())))?;
        if let Some(error) = answer.error {
            let message = error["message"]
                .as_str()
                .or_else(|| error["code"].as_str())
                .unwrap_or("partial result")
                .to_string();
            return Err(Attempt::Final(QueryError::Partial(message)));
        }
        let table = answer
            .tables
            .into_iter()
            .next()
            .ok_or_else(|| Attempt::Final(QueryError::Answer("no result table".into())))?;
        Ok(ResultTable {
            columns: table.columns.into_iter().map(|c| c.name).collect(),
            rows: table.rows,
        })
    }
}

enum Attempt {
    Again(Option<Duration>, QueryError),
    Final(QueryError),
}
