"""``python -m deploy.local`` (``make run``): start the whole system locally and print how to use it."""

from __future__ import annotations

import json
import shlex
import signal
import sys
import time
from pathlib import Path
from types import FrameType

from deploy.local.stack import LocalStack

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE_SERVICE = "99115005104000"  # Wohnsitz anmelden


def first_application() -> dict[str, object]:
    """A valid demo application: registering a residence in Kelheim, answered by email."""
    examples = json.loads((ROOT / "shared" / "catalogue" / "examples.json").read_text(encoding="utf-8"))
    return {
        "leika_key": EXAMPLE_SERVICE,
        "region": {"postal_code": "93309", "place": "Kelheim"},
        "applicant": {
            "name": "Erika Mustermann",
            "contact": {"email": "erika.mustermann@example.org"},
            "reply_channel": "email",
            "language": "de",
        },
        # The catalogue's example moves to Regensburg; the demo moves to Kelheim, where it is routed.
        "form": {**examples[EXAMPLE_SERVICE], "new_address": {"street": "Donaustraße", "house_number": "12",
                                                              "postal_code": "93309", "city": "Kelheim"}},
    }


def main() -> int:
    """Run until Ctrl-C."""
    stack = LocalStack(root=ROOT / ".run", log_json=False)
    stopping = False

    def _stop(_signum: int, _frame: FrameType | None) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGINT, _stop)
    signal.signal(signal.SIGTERM, _stop)
    print("Starting Tansu, the SMTP sink and the four services (state under .run/) ...", flush=True)
    try:
        stack.start()
        credentials = stack.create_demo_keys()
        body = json.dumps(first_application(), ensure_ascii=False)
        print(f"""
OZG backbone is running.

  intake   {stack.url('intake')}/docs      (OpenAPI: /openapi.json)
  routing  {stack.url('routing')}/docs
  notify   {stack.url('notify')}/docs
  audit    {stack.url('audit')}/docs
  Kafka    127.0.0.1:{stack.kafka_port} (Tansu, memory only)
  SMTP     127.0.0.1:{stack.smtp_port} -> .run/mail/*.eml
  Logs     .run/logs/

Demo API keys (also in .run/credentials.json):
  portal   {credentials['portal']}
  counter  {credentials['counter']}
  operator {credentials['operator']}
  auditor  {credentials['auditor']}
  destinations: {len(credentials['destinations'])} keys, one per demo back office

Post a first application:

curl -s -X POST {stack.url('intake')}/v1/applications \\
  -H 'Authorization: Bearer {credentials['portal']}' \\
  -H "Idempotency-Key: $(date +%s%N)" \\
  -H 'Content-Type: application/json' \\
  -d {shlex.quote(body)}

Then follow it (replace CASE_ID with the case_id from the answer):

curl -s -H 'Authorization: Bearer {credentials['portal']}' {stack.url('intake')}/v1/applications/CASE_ID
curl -s -H 'Authorization: Bearer {credentials['auditor']}' {stack.url('audit')}/v1/cases/CASE_ID/trail
ls .run/mail/

Ctrl-C stops everything.
""", flush=True)
        while not stopping:
            for name, process in stack.processes.items():
                if process.poll() is not None:
                    print(f"{name} exited with {process.returncode}; see .run/logs/{name}.log", file=sys.stderr)
                    stopping = True
            time.sleep(0.5)
    finally:
        print("Stopping ...", flush=True)
        stack.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
