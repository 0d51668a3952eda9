"""The Kubernetes manifests: valid against the Kubernetes schemas and KEDA's ScaledObject schema, and every consumer
group the services really subscribe with scaled on its lag.

KEDA's ScaledObject schema comes from ``cloudcoil-models-keda`` (pydantic models generated from KEDA's CRDs). The
API server rejects unknown fields of a structural CRD schema (``kubectl apply`` validates strictly), so the schema is
made strict the same way; the metadata of a kafka trigger, an open map of strings in the CRD, is checked against
``keda_kafka_trigger.schema.json``, written by hand from KEDA's documentation of the Kafka scaler.
"""

from __future__ import annotations

import copy
import importlib
import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml
from cloudcoil.models.keda.v1alpha1 import ScaledObject
from jsonschema import Draft202012Validator

from shared.settings import KafkaSettings

ROOT = Path(__file__).resolve().parents[2]
MANIFESTS = sorted((ROOT / "deploy" / "k8s").glob("*.yaml"))
SERVICES = ("intake", "routing", "notify", "audit")
KAFKA_TRIGGER = Draft202012Validator(
    json.loads((Path(__file__).parent / "keda_kafka_trigger.schema.json").read_text(encoding="utf-8"))
)


def strict(schema: Any) -> Any:
    """``schema`` with every object that lists its properties closed to others, as the API server treats a CRD."""
    if isinstance(schema, dict):
        closed = {name: strict(value) for name, value in schema.items()}
        if "properties" in closed and "additionalProperties" not in closed:
            closed["additionalProperties"] = False
        return closed
    if isinstance(schema, list):
        return [strict(item) for item in schema]
    return schema


SCALED_OBJECT = Draft202012Validator(strict(ScaledObject.model_json_schema(by_alias=True)))


def documents() -> list[dict[str, Any]]:
    return [doc for path in MANIFESTS for doc in yaml.safe_load_all(path.read_text(encoding="utf-8")) if doc]


def by_kind(kind: str) -> dict[str, dict[str, Any]]:
    return {d["metadata"]["name"]: d for d in documents() if d["kind"] == kind}


def keda_problems(scaler: dict[str, Any]) -> list[str]:
    """What KEDA's API (the CRD schema) or its Kafka scaler (the trigger metadata) would reject."""

    def where(path: Any) -> str:
        return "/".join(map(str, path)) or "(root)"

    problems = [f"{where(e.absolute_path)}: {e.message}" for e in SCALED_OBJECT.iter_errors(scaler)]
    for i, trigger in enumerate(scaler.get("spec", {}).get("triggers", [])):
        if isinstance(trigger, dict) and trigger.get("type") == "kafka":
            problems += [f"spec/triggers/{i}/metadata/{where(e.absolute_path)}: {e.message}"
                         for e in KAFKA_TRIGGER.iter_errors(trigger.get("metadata", {}))]
    return problems


@dataclass(frozen=True)
class Consumer:
    """One consumer group a service subscribes with, and what it reads: topics or a pattern."""

    service: str
    group: str
    topics: frozenset[str]
    pattern: str | None = None

    def reads(self, topic: str) -> bool:
        return topic in self.topics or (self.pattern is not None and re.fullmatch(self.pattern, topic) is not None)


@pytest.fixture(scope="module")
def consumers(tmp_path_factory: pytest.TempPathFactory) -> list[Consumer]:
    """The consumer groups of the four services, read from their brokers' subscribers as the services build them."""
    found: list[Consumer] = []
    for name in SERVICES:
        settings_class = importlib.import_module(f"services.{name}.settings").Settings
        build = importlib.import_module(f"services.{name}.app").build
        database = tmp_path_factory.mktemp(name) / f"{name}.db"
        service, _ = build(settings_class(database_url=f"sqlite:///{database}"))
        # Subscribers without a group (the client directory) read a whole topic in every replica: no lag to scale on.
        found += [Consumer(name, sub.group_id, frozenset(sub.topic_names), sub.pattern)
                  for sub in service.broker.subscribers if sub.group_id]
        service.engine.dispose()
    return found


def scaling_problems(scalers: dict[str, dict[str, Any]], consumers: list[Consumer]) -> list[str]:
    """Consumer groups without a lag trigger covering all they read, and triggers on groups or topics nobody reads."""
    problems: list[str] = []

    def kafka_triggers(service: str) -> list[dict[str, str]]:
        spec = scalers.get(service, {}).get("spec", {})
        return [t.get("metadata", {}) for t in spec.get("triggers", []) if t.get("type") == "kafka"]

    for consumer in consumers:
        mine = [t for t in kafka_triggers(consumer.service) if t.get("consumerGroup") == consumer.group]
        if not mine:
            problems.append(f"{consumer.service}: consumer group {consumer.group} has no kafka trigger")
        elif all("topic" in t for t in mine):  # a trigger without a topic covers every topic of the group
            if consumer.pattern is not None:
                problems.append(f"{consumer.service}: {consumer.group} reads a pattern; its trigger needs no topic")
            uncovered = consumer.topics - {t["topic"] for t in mine}
            if uncovered:
                problems.append(f"{consumer.service}: lag of {consumer.group} on {sorted(uncovered)} not scaled on")
    for service in scalers:
        groups = {c.group: c for c in consumers if c.service == service}
        for trigger in kafka_triggers(service):
            group = trigger.get("consumerGroup")
            if group not in groups:
                problems.append(f"{service}: trigger on consumer group {group}, which {service} does not use")
            elif "topic" in trigger and not groups[group].reads(trigger["topic"]):
                problems.append(f"{service}: trigger on topic {trigger['topic']}, which {group} does not read")
    return problems


@pytest.mark.parametrize("doc", [d for d in documents() if d["kind"] != "ScaledObject"],
                         ids=lambda d: f"{d['kind']}/{d['metadata']['name']}")
def test_core_resources_match_the_kubernetes_schemas(doc: dict[str, Any]) -> None:
    kubernetes_validate.validate(doc, "1.30.0", strict=True)


@pytest.mark.parametrize("name", SERVICES)
def test_scaled_objects_match_kedas_schema(name: str) -> None:
    scaler = by_kind("ScaledObject")[name]
    assert keda_problems(scaler) == []
    model = ScaledObject.model_validate(scaler)
    assert model.spec is not None
    assert model.spec.scale_target_ref.name == name


def test_every_service_has_probes_a_budget_and_an_autoscaler() -> None:
    deployments, budgets, scalers = by_kind("Deployment"), by_kind("PodDisruptionBudget"), by_kind("ScaledObject")
    assert set(deployments) == set(SERVICES) == set(budgets) == set(scalers)
    for name in SERVICES:
        pod = deployments[name]["spec"]["template"]["spec"]
        container = pod["containers"][0]
        assert container["command"] == ["python", "-m", f"services.{name}"]
        assert container["readinessProbe"]["httpGet"]["path"] == "/health/ready"
        assert container["livenessProbe"]["httpGet"]["path"] == "/health/live"
        # Migrations run before a service listens: the startup probe gives them minutes, the liveness probe 30 s.
        startup = container["startupProbe"]
        assert startup["httpGet"]["path"] == "/health/live"
        assert startup["periodSeconds"] * startup["failureThreshold"] >= 300
        assert pod["securityContext"]["runAsNonRoot"] is True
        scaler = scalers[name]["spec"]
        # Never scale below what the disruption budget keeps available plus one.
        assert scaler["minReplicaCount"] > budgets[name]["spec"]["minAvailable"]


def container_env(name: str) -> dict[str, Any]:
    """A service's environment: the keys of the ConfigMaps it takes whole, then its own variables (value or source)."""
    container = by_kind("Deployment")[name]["spec"]["template"]["spec"]["containers"][0]
    config_maps = by_kind("ConfigMap")
    env: dict[str, Any] = {}
    for source in container.get("envFrom", []):
        env.update(config_maps[source["configMapRef"]["name"]]["data"])
    env.update({var["name"]: var.get("value", var.get("valueFrom")) for var in container.get("env", [])})
    return env


@pytest.mark.parametrize("name", SERVICES)
def test_every_variable_names_a_setting(name: str) -> None:
    # The settings ignore unknown variables: a misspelt one would silently leave the default in place.
    settings_class = importlib.import_module(f"services.{name}.settings").Settings
    known = {f"OZG_KAFKA_{field.upper()}" for field in KafkaSettings.model_fields}
    known |= {f"{name.upper()}_{field.upper()}" for field in settings_class.model_fields}
    assert set(container_env(name)) - known == set()


def test_what_replicas_share_is_shared_and_links_are_public() -> None:
    intake, notify = container_env("intake"), container_env("notify")
    # Several replicas: attachments in the object store, letters on a volume every replica mounts.
    assert intake["INTAKE_BLOB_STORE"] == "s3"
    assert intake["INTAKE_S3_BUCKET"]
    assert {"INTAKE_S3_ACCESS_KEY_ID", "INTAKE_S3_SECRET_ACCESS_KEY"} <= {
        var for var, value in intake.items() if isinstance(value, dict) and "secretKeyRef" in value}
    pod = by_kind("Deployment")["notify"]["spec"]["template"]["spec"]
    mount = next(m for m in pod["containers"][0]["volumeMounts"] if m["mountPath"] == notify["NOTIFY_LETTER_DIR"])
    claim = next(v for v in pod["volumes"] if v["name"] == mount["name"])["persistentVolumeClaim"]["claimName"]
    assert by_kind("PersistentVolumeClaim")[claim]["spec"]["accessModes"] == ["ReadWriteMany"]
    assert notify["NOTIFY_SMTP_HOST"]
    assert "secretKeyRef" in notify["NOTIFY_SMTP_PASSWORD"]
    # Applicants' status links, from intake's answers and in notify's messages, lead to the same public host.
    assert intake["INTAKE_PUBLIC_BASE_URL"].startswith("https://")
    assert notify["NOTIFY_STATUS_BASE_URL"] == intake["INTAKE_PUBLIC_BASE_URL"] + "/v1/applications"


def test_every_consumer_group_is_scaled_on_its_lag(consumers: list[Consumer]) -> None:
    groups = {(c.service, c.group) for c in consumers}
    # The groups the code has today; a new one fails the check below until the manifests scale on it too.
    assert {("routing", "ozg-routing"), ("routing", "ozg-routing-status"), ("notify", "ozg-notify"),
            ("audit", "ozg-audit"), ("intake", "ozg-intake")} <= groups
    assert scaling_problems(by_kind("ScaledObject"), consumers) == []
    for scaler in by_kind("ScaledObject").values():
        for trigger in scaler["spec"]["triggers"]:
            if trigger["type"] == "kafka":
                # The services start new groups at the beginning of their topics; lag must count the same way.
                assert trigger["metadata"]["offsetResetPolicy"] == "earliest"


def _kafka_metadata(scaler: dict[str, Any], index: int = 0) -> dict[str, str]:
    triggers = [t for t in scaler["spec"]["triggers"] if t["type"] == "kafka"]
    metadata: dict[str, str] = triggers[index]["metadata"]
    return metadata


def _misspelt_spec_key(scaler: dict[str, Any]) -> None:
    scaler["spec"]["pollingIntervall"] = scaler["spec"].pop("pollingInterval")


def _number_not_string(scaler: dict[str, Any]) -> None:
    _kafka_metadata(scaler)["lagThreshold"] = 500  # type: ignore[assignment]  # the CRD takes strings only


def _misspelt_metadata_key(scaler: dict[str, Any]) -> None:
    metadata = _kafka_metadata(scaler)
    metadata["consumergroup"] = metadata.pop("consumerGroup")


def _missing_consumer_group(scaler: dict[str, Any]) -> None:
    del _kafka_metadata(scaler)["consumerGroup"]


def _unknown_reset_policy(scaler: dict[str, Any]) -> None:
    _kafka_metadata(scaler)["offsetResetPolicy"] = "beginning"


@pytest.mark.parametrize(("break_it", "expected"), [
    (_misspelt_spec_key, "pollingIntervall"),
    (_number_not_string, "500 is not of type 'string'"),
    (_misspelt_metadata_key, "consumergroup"),
    (_missing_consumer_group, "'consumerGroup' is a required property"),
    (_unknown_reset_policy, "'beginning' is not one of"),
])
def test_keda_schema_check_rejects_broken_scalers(break_it: Callable[[dict[str, Any]], None], expected: str) -> None:
    scaler = copy.deepcopy(by_kind("ScaledObject")["routing"])
    break_it(scaler)
    problems = keda_problems(scaler)
    assert any(expected in problem for problem in problems), problems


@pytest.mark.parametrize(("key", "value", "expected"), [
    ("consumerGroup", "ozg-routing-withdrawals",
     ["routing: trigger on consumer group ozg-routing-withdrawals, which routing does not use",
      "routing: consumer group ozg-routing-status has no kafka trigger"]),
    ("topic", "ozg.applications.routed",
     ["routing: trigger on topic ozg.applications.routed, which ozg-routing-status does not read",
      "routing: lag of ozg-routing-status on ['ozg.cases.status'] not scaled on"]),
])
def test_scaling_check_rejects_a_trigger_on_what_routing_does_not_consume(
    consumers: list[Consumer], key: str, value: str, expected: list[str]
) -> None:
    scalers = copy.deepcopy(by_kind("ScaledObject"))
    _kafka_metadata(scalers["routing"], 1)[key] = value
    assert sorted(scaling_problems(scalers, consumers)) == sorted(expected)


def test_scaling_check_rejects_a_new_group_without_a_scaler(consumers: list[Consumer]) -> None:
    new = Consumer("notify", "ozg-notify-reminders", frozenset({"ozg.cases.status"}))
    problems = scaling_problems(by_kind("ScaledObject"), [*consumers, new])
    assert problems == ["notify: consumer group ozg-notify-reminders has no kafka trigger"]
