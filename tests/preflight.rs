//! `check` constructs what `run` would at start-up, without a network call or a file written,
//! and names every refusal at once; `run` refuses the same configuration with the same list.

use std::path::Path;
use std::process::{Command, Output};

fn bin(args: &[&str], config: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_m365-sentinel"))
        .args(args)
        .arg("--config")
        .arg(config)
        .output()
        .unwrap()
}

/// Every start-up error the issue lists, in one file.
fn broken_config(dir: &Path) -> std::path::PathBuf {
    let d = dir.display();
    std::fs::write(dir.join("not-a-dir"), "").unwrap();
    let config = format!(
        "sink:
  logs_ingestion:
    endpoint: http://example.com
    dcr_immutable_id: nope
    tables:
      EmailEvents: {{ stream: Custom-OfficeActivity_CL }}
  credential:
    kind: client_secret
    tenant_id: x
    client_id: y
    secret_file: {d}/missing-secret
management_api:
  state_dir: {d}/not-a-dir/state
  tenants:
    - tenant_id: also-not-a-tenant
      publisher_identifier: p
      credential:
        kind: client_certificate
        tenant_id: also-not-a-tenant
        client_id: 0f0e0d0c-0b0a-4909-8887-868584838281
        certificate_file: {d}/missing.pfx
defender:
  state_dir: {d}/defender-state
  event_hubs:
    - bootstrap_servers: ns.servicebus.windows.net:9093
      event_hub: insights-logs-advancedhunting
      auth: {{ kind: connection_string, connection_string_file: {d}/missing-connection-string }}
  storage:
    - account: exports
      endpoint: http://example.com
      auth: {{ kind: shared_key, key_file: {d}/missing-key }}
http:
  ca_bundle: {d}/missing-ca.pem
metrics:
  listen: nope
spool:
  dir: {d}/spool
dlq:
  dir: {d}/dlq
"
    );
    let path = dir.join("config.yaml");
    std::fs::write(&path, config).unwrap();
    path
}

const EXPECTED: [&str; 14] = [
    "sink.logs_ingestion.endpoint: `http://example.com` is not HTTPS",
    "sink.logs_ingestion.dcr_immutable_id: `nope` is not a DCR immutable id",
    "sink.logs_ingestion.tables.EmailEvents.stream: EmailEvents and OfficeActivity would both post to stream Custom-OfficeActivity_CL",
    "sink.credential.tenant_id: `x` is neither a tenant GUID nor a domain",
    "sink.credential.client_id: `y` is not a GUID",
    "sink.credential.secret_file: ",
    "management_api.tenants[0].tenant_id: `also-not-a-tenant` is not the tenant's GUID",
    "management_api.tenants[0].publisher_identifier: `p` is not a GUID",
    "management_api.tenants[0].credential.certificate_file: ",
    "management_api.state_dir: ",
    "defender.event_hubs[0].auth.connection_string_file: ",
    "defender.storage[0].endpoint: `http://example.com` is not HTTPS",
    "defender.storage[0].auth.key_file: ",
    "http.ca_bundle: ",
];

#[test]
fn check_names_every_start_up_error_at_once_and_run_refuses_the_same() {
    let dir = tempfile::tempdir().unwrap();
    let config = broken_config(dir.path());
    let check = bin(&["check"], &config);
    assert_eq!(check.status.code(), Some(1));
    let check_err = String::from_utf8_lossy(&check.stderr);
    for expected in EXPECTED {
        assert!(
            check_err.contains(expected),
            "missing {expected:?} in\n{check_err}"
        );
    }
    assert!(
        check_err.contains("metrics.listen: `nope` is not host:port"),
        "{check_err}"
    );
    // Each line names the file, the key and what to do.
    let lines: Vec<&str> = check_err
        .lines()
        .filter(|l| l.starts_with("error: "))
        .collect();
    assert!(lines.len() > EXPECTED.len(), "{check_err}");
    for line in &lines[..lines.len() - 1] {
        assert!(
            line.starts_with(&format!("error: {}: ", config.display())),
            "{line}"
        );
        assert!(line.contains("; "), "a fix for {line}");
    }
    assert!(!String::from_utf8_lossy(&check.stdout).contains("configuration OK"));
    // Nothing was started or written.
    for made in ["spool", "dlq", "defender-state"] {
        assert!(!dir.path().join(made).exists(), "{made} was created");
    }

    let run = bin(&["run", "--once"], &config);
    assert_eq!(run.status.code(), Some(1));
    let run_err = String::from_utf8_lossy(&run.stderr);
    for expected in EXPECTED {
        assert!(
            run_err.contains(expected),
            "run: missing {expected:?} in\n{run_err}"
        );
    }
    for made in ["spool", "dlq", "defender-state"] {
        assert!(
            !dir.path().join(made).exists(),
            "run created {made} before refusing"
        );
    }
}

#[test]
fn secrets_never_appear_in_the_problems() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("secret"), "very-secret-value").unwrap();
    let config = dir.path().join("config.yaml");
    std::fs::write(
        &config,
        format!(
            "sink:\n  logs_ingestion:\n    endpoint: http://example.com\n    dcr_immutable_id: nope\n  credential:\n    kind: client_secret\n    tenant_id: x\n    client_id: y\n    secret_file: {}/secret\n",
            dir.path().display()
        ),
    )
    .unwrap();
    let check = bin(&["check"], &config);
    assert_eq!(check.status.code(), Some(1));
    let all = format!(
        "{}{}",
        String::from_utf8_lossy(&check.stdout),
        String::from_utf8_lossy(&check.stderr)
    );
    assert!(!all.contains("very-secret-value"), "{all}");
    assert!(
        !all.contains("secret_file"),
        "a readable secret file is no problem: {all}"
    );
}
