//! The real sink toward the emulator over HTTPS, as the binary builds it: azure_identity tokens
//! from the emulated Entra, the Logs Ingestion API, a target per table.

use std::path::Path;
use std::sync::Arc;

use m365_emulator::Emulator;
use m365_sentinel::auth::{Cloud, CredentialConfig, credential};
use m365_sentinel::pipeline::Setup;
use m365_sentinel::sinks::logs_ingestion::LogsIngestionConfig;
use m365_sentinel::sinks::workspace::{Api, Target, WorkspaceSink};
use m365_sentinel::state::dlq::DeadLetterStore;

use super::measure::{CLIENT, DCR, TENANT};

/// `http` must trust the emulator's CA; the client secret is read from `dir/secret`.
pub fn emulator_sink(
    setup: &Setup,
    http: reqwest::Client,
    emulator: &Emulator,
    dir: &Path,
) -> (Arc<WorkspaceSink>, Vec<Target>) {
    let transport = azure_core::http::Transport::new(Arc::new(http.clone()));
    let cred = credential(
        &CredentialConfig::ClientSecret {
            tenant_id: TENANT.into(),
            client_id: CLIENT.into(),
            secret_file: Some(dir.join("secret")),
            secret_env: None,
        },
        Cloud::Public,
        Some(&emulator.url()),
        Some(transport),
    )
    .expect("credential");
    let dlq = Arc::new(DeadLetterStore::open(&dir.join("dlq")).expect("dlq"));
    let sink = Arc::new(WorkspaceSink::new(
        http,
        Api::LogsIngestion {
            credential: cred,
            scope: Cloud::Public.monitor_scope().to_string(),
        },
        setup.config.retry_policy(),
        dlq,
    ));
    let li = LogsIngestionConfig {
        endpoint: emulator.url(),
        dcr_immutable_id: DCR.into(),
        tables: Default::default(),
        allow_plain_http_loopback: false,
    };
    let targets = setup
        .schemas
        .tables
        .iter()
        .map(|t| li.target(t).expect("target"))
        .collect();
    (sink, targets)
}
