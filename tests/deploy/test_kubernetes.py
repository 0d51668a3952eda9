"""The Kubernetes manifests: valid against the Kubernetes schemas, and KEDA scaling wired to the real groups."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
MANIFESTS = sorted((ROOT / "deploy" / "k8s").glob("*.yaml"))
SERVICES = ("intake", "routing", "notify", "audit")


def documents() -> list[dict[str, Any]]:
    return [doc for path in MANIFESTS for doc in yaml.safe_load_all(path.read_text(encoding="utf-8")) if doc]


@pytest.mark.parametrize("doc", [d for d in documents() if d["kind"] != "ScaledObject"],
                         ids=lambda d: f"{d['kind']}/{d['metadata']['name']}")
def test_core_resources_match_the_kubernetes_schemas(doc: dict[str, Any]) -> None:
    kubernetes_validate.validate(doc, "1.30.0", strict=True)


def by_kind(kind: str) -> dict[str, dict[str, Any]]:
    return {d["metadata"]["name"]: d for d in documents() if d["kind"] == kind}


def test_every_service_has_probes_a_budget_and_an_autoscaler() -> None:
    deployments, budgets, scalers = by_kind("Deployment"), by_kind("PodDisruptionBudget"), by_kind("ScaledObject")
    assert set(deployments) == set(SERVICES) == set(budgets) == set(scalers)
    for name in SERVICES:
        pod = deployments[name]["spec"]["template"]["spec"]
        container = pod["containers"][0]
        assert container["command"] == ["python", "-m", f"services.{name}"]
        assert container["readinessProbe"]["httpGet"]["path"] == "/health/ready"
        assert container["livenessProbe"]["httpGet"]["path"] == "/health/live"
        assert pod["securityContext"]["runAsNonRoot"] is True
        scaler = scalers[name]["spec"]
        assert scaler["scaleTargetRef"]["name"] == name
        # Never scale below what the disruption budget keeps available plus one.
        assert scaler["minReplicaCount"] > budgets[name]["spec"]["minAvailable"]


@pytest.mark.parametrize("name", ["routing", "notify", "audit"])
def test_consumers_scale_on_the_lag_of_their_own_consumer_group(name: str) -> None:
    settings_module = __import__(f"services.{name}.settings", fromlist=["Settings"])
    group = settings_module.Settings().consumer_group
    triggers = by_kind("ScaledObject")[name]["spec"]["triggers"]
    kafka = [t for t in triggers if t["type"] == "kafka"]
    assert kafka, f"{name} should scale on Kafka lag"
    for trigger in kafka:
        assert trigger["metadata"]["consumerGroup"] == group
        assert int(trigger["metadata"]["lagThreshold"]) > 0
        assert trigger["metadata"]["offsetResetPolicy"] == "earliest"
