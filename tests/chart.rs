//! The Helm chart, rendered by Helm's own engine (helm-python-sdk embeds the Helm v4 Go SDK)
//! and every manifest validated with kubernetes-validate --strict against Kubernetes 1.29 and
//! 1.33, for the default values and the files in helm/m365-sentinel/ci. The Python tools live
//! in .venv, installed from helm/tests/requirements.txt by `scripts/test`.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use serde_json::Value;

#[allow(dead_code)]
#[path = "common/tools.rs"]
mod tools;

const VERSIONS: [&str; 2] = ["1.29", "1.33"];

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// The venv's python with the chart tools importable, checked once per test binary; missing
/// tools fail the test with one line saying how to install them.
fn python() -> &'static PathBuf {
    static PYTHON: OnceLock<PathBuf> = OnceLock::new();
    PYTHON.get_or_init(|| {
        let python = tools::require(&tools::CHART_PYTHON);
        let importable = Command::new(&python)
            .args(["-c", "import helm_python, kubernetes_validate, yaml"])
            .status()
            .is_ok_and(|s| s.success());
        if !importable {
            let reason = format!(
                "missing: the chart tools are not importable from {}; run `scripts/test`, which installs helm/tests/requirements.txt into .venv",
                python.display()
            );
            eprintln!("{reason}");
            std::panic::resume_unwind(Box::new(reason));
        }
        python
    })
}

/// Rendered manifests by template, or the reason rendering or validation failed.
fn render(values: &str) -> Result<Value, String> {
    let out = Command::new(python())
        .arg(root().join("helm/tests/render.py"))
        .arg(root().join("helm/m365-sentinel"))
        .arg(values)
        .args(VERSIONS)
        .output()
        .expect("render.py runs");
    if !out.status.success() {
        return Err(String::from_utf8_lossy(&out.stderr).into_owned());
    }
    serde_json::from_slice(&out.stdout).map_err(|e| e.to_string())
}

fn render_yaml(yaml: &str) -> Result<Value, String> {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("values.yaml");
    std::fs::write(&file, yaml).unwrap();
    render(&file.display().to_string())
}

fn manifest<'a>(rendered: &'a Value, template: &str) -> &'a Value {
    &rendered[format!("m365-sentinel/templates/{template}")][0]
}

#[test]
fn the_default_and_every_ci_values_file_render_and_validate_on_1_29_and_1_33() {
    let mut files = vec!["-".to_string()];
    for entry in std::fs::read_dir(root().join("helm/m365-sentinel/ci")).unwrap() {
        files.push(entry.unwrap().path().display().to_string());
    }
    assert!(files.len() >= 5, "default plus at least four values files");
    for file in files {
        let rendered = render(&file).unwrap_or_else(|e| panic!("{file}: {e}"));
        assert!(
            rendered
                .get("m365-sentinel/templates/statefulset.yaml")
                .is_some(),
            "{file}"
        );
    }
}

#[test]
fn the_statefulset_is_locked_down_probed_persistent_and_rolls_on_config_changes() {
    let rendered = render("-").unwrap();
    let sts = manifest(&rendered, "statefulset.yaml");
    let pod = &sts["spec"]["template"]["spec"];
    assert_eq!(pod["securityContext"]["runAsNonRoot"], true);
    assert_eq!(
        pod["securityContext"]["seccompProfile"]["type"],
        "RuntimeDefault"
    );
    let container = &pod["containers"][0];
    let sc = &container["securityContext"];
    assert_eq!(sc["readOnlyRootFilesystem"], true);
    assert_eq!(sc["allowPrivilegeEscalation"], false);
    assert_eq!(sc["capabilities"]["drop"][0], "ALL");
    assert_eq!(sc["seccompProfile"]["type"], "RuntimeDefault");
    assert_eq!(container["livenessProbe"]["httpGet"]["path"], "/healthz");
    assert_eq!(container["readinessProbe"]["httpGet"]["path"], "/readyz");
    assert_eq!(
        sts["spec"]["volumeClaimTemplates"][0]["spec"]["resources"]["requests"]["storage"],
        "10Gi"
    );
    let checksum = sts["spec"]["template"]["metadata"]["annotations"]["checksum/config"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(checksum.len(), 64);
    // A schema edit (a values override) changes the checksum, so the pods roll.
    let edited = render_yaml("schemaOverrides:\n  redaction.yaml: |\n    rules: []\n").unwrap();
    let after = manifest(&edited, "statefulset.yaml")["spec"]["template"]["metadata"]["annotations"]["checksum/config"]
        .as_str()
        .unwrap()
        .to_string();
    assert_ne!(checksum, after);
    let config = manifest(&edited, "configmap.yaml");
    assert_eq!(config["data"]["redaction.yaml"], "rules: []\n");
    assert!(
        config["data"]["OfficeActivity.yaml"]
            .as_str()
            .unwrap()
            .contains("OfficeActivity_CL")
    );
    // Egress: DNS and HTTPS only.
    assert_eq!(egress_ports(&rendered), [53, 53, 443]);
}

#[test]
fn several_replicas_share_the_tenants_by_ordinal() {
    let rendered = render(
        &root()
            .join("helm/m365-sentinel/ci/replicas-values.yaml")
            .display()
            .to_string(),
    )
    .unwrap();
    let sts = manifest(&rendered, "statefulset.yaml");
    assert_eq!(sts["spec"]["replicas"], 3);
    let env = sts["spec"]["template"]["spec"]["containers"][0]["env"]
        .as_array()
        .unwrap();
    let value = |name: &str| env.iter().find(|e| e["name"] == name).cloned().unwrap();
    assert_eq!(
        value("M365_SENTINEL__MANAGEMENT_API__SHARD__COUNT")["value"],
        "3"
    );
    assert_eq!(
        value("POD_NAME")["valueFrom"]["fieldRef"]["fieldPath"],
        "metadata.name"
    );
}

fn egress_ports(rendered: &Value) -> Vec<i64> {
    manifest(rendered, "networkpolicy.yaml")["spec"]["egress"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|rule| {
            rule["ports"]
                .as_array()
                .unwrap()
                .iter()
                .map(|p| p["port"].as_i64().unwrap())
        })
        .collect()
}

#[test]
fn defender_event_hubs_open_the_kafka_port_and_their_secrets_are_mounted() {
    let rendered = render(
        &root()
            .join("helm/m365-sentinel/ci/defender-values.yaml")
            .display()
            .to_string(),
    )
    .unwrap();
    assert_eq!(egress_ports(&rendered), [53, 53, 443, 9093]);
    let config = manifest(&rendered, "configmap.yaml")["data"]["config.yaml"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(
        config.contains("contoso-eh.servicebus.windows.net:9093"),
        "{config}"
    );
    let secret = &manifest(&rendered, "secret.yaml");
    let keys = secret["stringData"]
        .as_object()
        .or_else(|| secret["data"].as_object())
        .unwrap();
    assert!(keys.contains_key("eventhub-connection-string"));
}

#[test]
fn dry_run_and_workload_identity_values_do_what_they_say() {
    let dry = render(
        &root()
            .join("helm/m365-sentinel/ci/dryrun-values.yaml")
            .display()
            .to_string(),
    )
    .unwrap();
    let container =
        &manifest(&dry, "statefulset.yaml")["spec"]["template"]["spec"]["containers"][0];
    assert_eq!(container["args"][0], "dry-run");
    assert!(
        container["args"]
            .as_array()
            .unwrap()
            .iter()
            .any(|a| a == "/var/lib/m365-sentinel/dry-run")
    );
    let wi = render(
        &root()
            .join("helm/m365-sentinel/ci/workload-identity-values.yaml")
            .display()
            .to_string(),
    )
    .unwrap();
    let sa = manifest(&wi, "serviceaccount.yaml");
    assert_eq!(
        sa["metadata"]["annotations"]["azure.workload.identity/client-id"],
        "0f0e0d0c-0b0a-4909-8887-868584838281"
    );
    let pod = &manifest(&wi, "statefulset.yaml")["spec"]["template"];
    assert_eq!(
        pod["metadata"]["labels"]["azure.workload.identity/use"],
        "true"
    );
    let existing = render(
        &root()
            .join("helm/m365-sentinel/ci/existing-secret-values.yaml")
            .display()
            .to_string(),
    )
    .unwrap();
    assert!(
        existing
            .get("m365-sentinel/templates/secret.yaml")
            .is_none_or(|d| d.as_array().is_some_and(|a| a.is_empty()))
    );
    let volumes = manifest(&existing, "statefulset.yaml")["spec"]["template"]["spec"]["volumes"]
        .as_array()
        .unwrap()
        .clone();
    assert!(
        volumes
            .iter()
            .any(|v| v["secret"]["secretName"] == "m365-sentinel-credentials")
    );
}

#[test]
fn values_that_break_the_schema_are_refused() {
    for (yaml, why) in [
        ("replicaCount: three\n", "replicaCount"),
        ("replicaCount: 0\n", "replicaCount"),
        ("persistence:\n  size: lots\n", "size"),
        ("imageTag: v2\n", "imageTag"),
        ("metrics:\n  port: 70000\n", "port"),
    ] {
        let e = render_yaml(yaml).expect_err(yaml);
        assert!(e.contains(why), "{yaml}: {e}");
    }
}

#[test]
fn the_chart_ships_the_same_schemas_as_the_binary() {
    for entry in std::fs::read_dir(root().join("schemas")).unwrap() {
        let path = entry.unwrap().path();
        let copy = root()
            .join("helm/m365-sentinel/schemas")
            .join(path.file_name().unwrap());
        assert_eq!(
            std::fs::read_to_string(&path).unwrap(),
            std::fs::read_to_string(&copy).unwrap_or_default(),
            "{} differs from the chart's copy: cp schemas/* helm/m365-sentinel/schemas/",
            path.display()
        );
    }
}

#[test]
fn monitors_scrape_the_metrics_port_when_enabled() {
    let rendered = render(
        &root()
            .join("helm/m365-sentinel/ci/monitors-values.yaml")
            .display()
            .to_string(),
    )
    .unwrap();
    let service = manifest(&rendered, "servicemonitor.yaml");
    assert_eq!(service["kind"], "ServiceMonitor");
    assert_eq!(service["spec"]["endpoints"][0]["port"], "metrics");
    let pod = manifest(&rendered, "podmonitor.yaml");
    assert_eq!(pod["spec"]["podMetricsEndpoints"][0]["path"], "/metrics");
    // Off by default: no CRD needed to install the chart.
    let default = render("-").unwrap();
    assert!(
        default
            .get("m365-sentinel/templates/servicemonitor.yaml")
            .is_none_or(|d| d.as_array().is_some_and(|a| a.is_empty()))
    );
}

#[test]
fn the_integrity_keys_secret_is_mounted_where_keys_dir_points() {
    let rendered = render_yaml(
        "integrityKeysSecret: chain-keys\nconfig:\n  integrity:\n    keys_dir: /var/run/secrets/m365-sentinel-chain\n    key_id: k1\n",
    )
    .unwrap();
    let pod = &manifest(&rendered, "statefulset.yaml")["spec"]["template"]["spec"];
    let volume = pod["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["name"] == "chain-keys")
        .expect("a chain-keys volume");
    assert_eq!(volume["secret"]["secretName"], "chain-keys");
    let mounts = pod["containers"][0]["volumeMounts"].as_array().unwrap();
    assert!(mounts.iter().any(|m| m["name"] == "chain-keys"
        && m["mountPath"] == "/var/run/secrets/m365-sentinel-chain"
        && m["readOnly"] == true));
    let config = manifest(&rendered, "configmap.yaml")["data"]["config.yaml"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(
        config.contains("keys_dir: /var/run/secrets/m365-sentinel-chain"),
        "{config}"
    );
    // Without it, no such volume.
    let plain = render_yaml("dryRun: false\n").unwrap();
    let volumes = &manifest(&plain, "statefulset.yaml")["spec"]["template"]["spec"]["volumes"];
    assert!(
        !volumes
            .as_array()
            .unwrap()
            .iter()
            .any(|v| v["name"] == "chain-keys")
    );
}
