"""Renders the chart with Helm's own engine (helm-python-sdk: the Helm v4 Go SDK) and validates
every manifest with kubernetes-validate --strict for the given Kubernetes versions.

    render.py CHART VALUES_FILE|- KUBE_VERSION...   -> JSON {template: [manifests]} on stdout

Exit status 1 with the reason on stderr when the values break values.schema.json, a template
fails, or a manifest is invalid for a version."""

import json
import sys

import helm_python as helm
import kubernetes_validate
import yaml


def check_monitor(doc: dict) -> str | None:
    """What a ServiceMonitor or PodMonitor of ours must have (monitoring.coreos.com/v1)."""
    if doc.get("apiVersion") != "monitoring.coreos.com/v1":
        return "monitors must be monitoring.coreos.com/v1"
    spec = doc.get("spec") or {}
    if not (spec.get("selector") or {}).get("matchLabels"):
        return f"{doc.get('kind')} without spec.selector.matchLabels"
    endpoints = {"ServiceMonitor": "endpoints", "PodMonitor": "podMetricsEndpoints"}.get(doc.get("kind"))
    if not endpoints or not spec.get(endpoints):
        return f"{doc.get('kind')} without spec.{endpoints}"
    if any(e.get("port") != "metrics" for e in spec[endpoints]):
        return "monitors must scrape the port named metrics"
    return None


def main() -> int:
    chart_dir, values_file, *versions = sys.argv[1:]
    values = {}
    if values_file != "-":
        with open(values_file, encoding="utf-8") as f:
            values = helm.values_from_yaml(f.read())
    chart = helm.Chart.load(chart_dir)
    try:
        chart.validate_schema(chart.merge_values(values))
        rendered = chart.render(values, name="m365-sentinel", namespace="security", is_install=True)
    except helm.HelmError as e:
        print(f"helm: {e}", file=sys.stderr)
        return 1
    report = helm.lint(chart_dir, values, strict=True)
    errors = [m for m in report.get("messages", []) if m.get("severity", 0) >= 3]
    if errors:
        print(f"helm lint: {errors}", file=sys.stderr)
        return 1
    out = {}
    for template, text in sorted(rendered.items()):
        if not template.endswith(".yaml"):
            continue
        docs = [d for d in yaml.safe_load_all(text) if d]
        for doc in docs:
            if doc.get("apiVersion", "").startswith("monitoring.coreos.com/"):
                # Prometheus Operator CRDs: kubernetes-validate carries only the core API's
                # schemas, so these get the checks the operator needs from us.
                problem = check_monitor(doc)
                if problem:
                    print(f"{template}: {problem}", file=sys.stderr)
                    return 1
                continue
            for version in versions:
                try:
                    kubernetes_validate.validate(doc, version, strict=True)
                except Exception as e:  # noqa: BLE001 - every failure is reported
                    print(f"{template} ({doc.get('kind')}) invalid for Kubernetes {version}: {e!r}", file=sys.stderr)
                    return 1
        out[template] = docs
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
