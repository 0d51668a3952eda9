"""The operations files are valid: alert rules (checked and unit-tested by promtool), the Prometheus
configuration, the Grafana dashboard's queries, and the docker-compose production shape."""

from __future__ import annotations

import base64
import json
import re
import shutil
import subprocess
from pathlib import Path

import yaml

from tests.conftest import skip_or_fail

ROOT = Path(__file__).resolve().parents[2]
PROMETHEUS = ROOT / "deploy" / "prometheus"
DASHBOARD = ROOT / "deploy" / "grafana" / "dashboards" / "ozg.json"


def tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        skip_or_fail(f"{name} is not installed (make test installs it from Debian's packages)")
    assert path is not None
    return path


def run(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, cwd=cwd, capture_output=True, text=True, timeout=120, check=False)


def test_alert_rules_pass_promtool_check_and_unit_tests() -> None:
    promtool = tool("promtool")
    checked = run(promtool, "check", "rules", "alerts.yml", cwd=PROMETHEUS)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    tested = run(promtool, "test", "rules", "alerts_test.yml", cwd=PROMETHEUS)
    assert tested.returncode == 0, tested.stdout + tested.stderr
    config = run(promtool, "check", "config", "prometheus.yml", cwd=PROMETHEUS)
    assert config.returncode == 0, config.stdout + config.stderr


def test_every_alert_has_a_runbook_in_the_readme() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    section = readme.split("### Alerts: what they mean and what to do", 1)[1].split("\n#", 1)[0]
    # Rows of the table: | `Alert` | what it means | what to do |
    rows = {match[1]: (match[2].strip(), match[3].strip())
            for match in re.finditer(r"^\| `(\w+)` \|(.*)\|(.*)\|$", section, re.MULTILINE)}
    rules = yaml.safe_load((PROMETHEUS / "alerts.yml").read_text(encoding="utf-8"))
    alerts = {rule["alert"] for group in rules["groups"] for rule in group["rules"]}
    assert alerts
    assert set(rows) == alerts, "README alert table and alerts.yml differ"
    empty = [alert for alert, (means, do) in rows.items() if not means or not do]
    assert not empty, f"alerts without 'means' or 'do' in README.md: {empty}"


def test_dashboard_queries_are_valid_promql(tmp_path: Path) -> None:
    promtool = tool("promtool")
    dashboard = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    exprs = [target["expr"] for panel in dashboard["panels"] for target in panel["targets"]]
    assert len(exprs) >= 8
    # promtool parses every expression of a rules file: the dashboard's queries as recording rules.
    rules = {"groups": [{"name": "dashboard", "rules": [
        {"record": f"dashboard:query_{i}", "expr": expr} for i, expr in enumerate(exprs)
    ]}]}
    path = tmp_path / "dashboard_rules.yml"
    path.write_text(yaml.safe_dump(rules), encoding="utf-8")
    checked = run(promtool, "check", "rules", str(path))
    assert checked.returncode == 0, checked.stdout + checked.stderr


def test_docker_compose_is_the_production_shape() -> None:
    compose = tool("docker-compose")
    rendered = run(compose, "-f", "docker-compose.yml", "config")
    assert rendered.returncode == 0, rendered.stderr
    config = yaml.safe_load(rendered.stdout)
    services = config["services"]
    brokers = [name for name in services if name.startswith("kafka-")]
    assert len(brokers) == 3
    for name in brokers:
        env = services[name]["environment"]
        assert env["KAFKA_PROCESS_ROLES"] == "broker,controller"  # KRaft, no ZooKeeper
        assert env["KAFKA_DEFAULT_REPLICATION_FACTOR"] == "3"
        assert env["KAFKA_MIN_INSYNC_REPLICAS"] == "2"
        assert env["KAFKA_AUTO_CREATE_TOPICS_ENABLE"] == "false"
        # kafka-storage.sh formats only with a cluster id of 16 bytes in base64url (22 characters, no padding).
        assert len(base64.urlsafe_b64decode(env["CLUSTER_ID"] + "==")) == 16
        assert len(env["CLUSTER_ID"]) == 22
    for name in ("intake", "routing", "notify", "audit"):
        service = services[name]
        assert service["user"] == "10001"
        assert "healthcheck" in service
        assert service["environment"]["OZG_KAFKA_IDEMPOTENCE"] == "true"
        assert service["environment"][f"{name.upper()}_DATABASE_URL"].startswith("postgresql+psycopg://")
    assert services["audit"]["environment"]["AUDIT_ENVIRONMENT"] == "production"  # refuses to run unsigned
    # Attachments and letters outlive the containers: named volumes where the settings put them.
    for name, variable in (("intake", "INTAKE_BLOB_DIR"), ("notify", "NOTIFY_LETTER_DIR")):
        # docker-compose 1 renders a mount as "source:target:mode", Compose 2 as a mapping.
        mounts = [tuple(m.split(":")[:2]) if isinstance(m, str) else (m["source"], m["target"])
                  for m in services[name]["volumes"]]
        assert any(source in config["volumes"] and target == services[name]["environment"][variable]
                   for source, target in mounts)
    # Status links lead to the published intake port, not to 127.0.0.1 inside a container.
    public = services["intake"]["environment"]["INTAKE_PUBLIC_BASE_URL"]
    assert public == f"http://localhost:{services['intake']['ports'][0]['published']}"
    assert services["notify"]["environment"]["NOTIFY_STATUS_BASE_URL"] == f"{public}/v1/applications"
    assert {"postgres", "prometheus", "grafana", "mailpit"} <= set(services)
    dockerfile = (ROOT / "Dockerfile").read_text(encoding="utf-8")
    assert "USER 10001" in dockerfile
    assert dockerfile.count("FROM ") == 2  # multi-stage
    # uid 10001 must be able to create its state under WORKDIR /app (a new named volume takes the owner from there).
    assert "mkdir -p /app/.run/blobs /app/.run/letters && chown -R 10001 /app/.run" in dockerfile
