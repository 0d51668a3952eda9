"""Routing's batch recording (SQLAlchemy Core) on SQLite and PostgreSQL: each event takes effect once, a case decided
again is replaced, clearing cases and webhook deliveries are written with their decision, kept withdrawals are
found once their case is recorded."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

from sqlalchemy import Engine
from sqlmodel import Session, select

from services.routing.models import CaseRecord, ClearingCase, EarlyWithdrawal, RoutedCase, WebhookDelivery
from services.routing.store import RoutingStore
from services.routing.withdrawals import WithdrawalStore
from shared.events import CaseStatus, UnroutableReason
from shared.idempotency import ProcessedEvent
from tests.factories import WOHNSITZ


def routed(case_id: uuid.UUID, destination_id: uuid.UUID, rule: str = "BY:gemeinde") -> CaseRecord:
    return CaseRecord(case_id=case_id, reference="OZG-2026-TEST-0001", leika_key=WOHNSITZ, status=CaseStatus.ROUTED,
                      destination_id=destination_id, authority_ars="092730137137", rule=rule)


def test_a_batch_takes_effect_once_per_event(engine: Engine) -> None:
    store = RoutingStore(engine)
    destination = uuid.uuid4()
    first, second, again = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    store.record_many([("e1", routed(first, destination), None, None),
                       ("e2", routed(second, destination), None, None),
                       ("e2", routed(second, destination, rule="duplicate"), None, None)])
    assert store.processed_among(["e1", "e2", "e3"]) == {"e1", "e2"}
    case = store.case(second)
    assert case is not None
    assert case.rule == "BY:gemeinde"  # the duplicate in the batch changed nothing

    # Redelivered: nothing changes. Another event deciding the same case again replaces its record.
    store.record_many([("e1", routed(first, destination, rule="redelivered"), None, None),
                       ("e3", routed(second, destination, rule="BY:kreis"), None, None),
                       ("e4", routed(again, destination), None, None)])
    cases = {c.case_id: c for c in store.destination_cases(destination, status=None, since=None, limit=10)}
    assert {case_id: c.rule for case_id, c in cases.items()} == {
        first: "BY:gemeinde", second: "BY:kreis", again: "BY:gemeinde"}
    assert cases[first].status == CaseStatus.ROUTED
    with Session(engine) as session:
        claimed = session.exec(select(ProcessedEvent.event_id).where(
            ProcessedEvent.consumer == RoutingStore.CONSUMER)).all()
    assert sorted(claimed) == ["e1", "e2", "e3", "e4"]
    store.record_many([])  # an empty batch (every record poison or a duplicate) is fine


def test_clearing_cases_and_webhook_deliveries_go_with_their_decision(engine: Engine) -> None:
    store = RoutingStore(engine)
    unroutable_case, routed_case, destination = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    clearing = ClearingCase(case_id=unroutable_case, reference="OZG-2026-TEST-0002", leika_key=WOHNSITZ,
                            reason=UnroutableReason.UNKNOWN_REGION, detail="no such Gemeinde", cause_event_id="u1",
                            application={"leika_key": WOHNSITZ})
    unroutable = CaseRecord(case_id=unroutable_case, reference="OZG-2026-TEST-0002", leika_key=WOHNSITZ,
                            status=CaseStatus.UNROUTABLE, reason=UnroutableReason.UNKNOWN_REGION)
    delivery = WebhookDelivery(delivery_id=uuid.uuid4(), event_id="d1", destination_id=destination,
                               case_id=routed_case, headers={"ce-id": "d1"}, body='{"case": 1}')
    store.record_many([("u1", unroutable, clearing, None), ("r1", routed(routed_case, destination), None, delivery)])

    kept = store.clearing_case(unroutable_case)
    assert kept is not None
    assert (kept.application, kept.reason) == ({"leika_key": WOHNSITZ}, "unknown_region")
    record = store.case(unroutable_case)
    assert record is not None
    assert (record.status, record.reason) == (CaseStatus.UNROUTABLE, "unknown_region")
    with Session(engine) as session:
        stored = session.get(WebhookDelivery, delivery.delivery_id)
        assert stored is not None
        assert (stored.headers, stored.body, stored.status, stored.attempts) == (
            {"ce-id": "d1"}, '{"case": 1}', "pending", 0)


def test_a_kept_withdrawal_is_found_once_its_case_is_recorded(engine: Engine) -> None:
    store, withdrawals = RoutingStore(engine), WithdrawalStore(engine)
    case_id, destination = uuid.uuid4(), uuid.uuid4()
    change = {"case_id": str(case_id), "reference": "OZG-2026-TEST-0003", "status": "withdrawn",
              "previous_status": "submitted", "changed_at": datetime.now(UTC).isoformat()}
    with Session(engine) as session:
        session.add(EarlyWithdrawal(case_id=case_id, event_id="w1", change=change))
        session.commit()
    assert withdrawals.apply_early([case_id]) == []  # not routed yet: kept
    store.record_many([("e1", routed(case_id, destination), None, None)])
    assert withdrawals.apply_early([uuid.uuid4()]) == []  # only the cases asked about
    assert withdrawals.apply_early([case_id]) == [case_id]
    assert withdrawals.apply_early([case_id]) == []  # applied once
    with Session(engine) as session:
        case = session.get(RoutedCase, case_id)
        assert case is not None
        assert case.status == CaseStatus.WITHDRAWN
