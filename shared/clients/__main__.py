"""``python -m shared.clients issue|list|revoke``: manage API clients (SPEC §5)."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import uuid

from shared.auth import SCOPES
from shared.clients import current, issue, revoke
from shared.events import ClientKind
from shared.settings import KafkaSettings


def main(argv: list[str] | None = None) -> int:
    """Run the CLI; the broker comes from ``OZG_KAFKA_BOOTSTRAP_SERVERS``."""
    parser = argparse.ArgumentParser(prog="python -m shared.clients", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    issue_p = sub.add_parser("issue", help="register a client and print its key once")
    issue_p.add_argument("--kind", required=True, choices=[k.value for k in ClientKind])
    issue_p.add_argument("--name", required=True)
    issue_p.add_argument("--scope", action="append",
                         help=f"replace the kind's default scopes (repeatable; one of {', '.join(sorted(SCOPES))})")
    issue_p.add_argument("--destination-id", type=uuid.UUID,
                         help="binding of a destination's key (required for kind destination, refused for others)")
    sub.add_parser("list", help="list clients (never keys)")
    revoke_p = sub.add_parser("revoke", help="revoke a client's key on every service")
    revoke_p.add_argument("client_id", type=uuid.UUID)
    args = parser.parse_args(argv)
    settings = KafkaSettings()

    if args.command == "issue":
        try:
            record, key = asyncio.run(
                issue(settings, kind=ClientKind(args.kind), name=args.name, scopes=args.scope,
                      destination_id=args.destination_id)
            )
        except ValueError as exc:
            issue_p.error(str(exc))
        print(json.dumps({**record.model_dump(mode="json", exclude={"key_hash"}), "key": key}, indent=2))
    elif args.command == "list":
        for record in asyncio.run(current(settings)).values():
            print(json.dumps(record.model_dump(mode="json", exclude={"key_hash"})))
    else:
        try:
            record = asyncio.run(revoke(settings, args.client_id))
        except KeyError:
            print(f"unknown client {args.client_id}", file=sys.stderr)
            return 1
        print(json.dumps(record.model_dump(mode="json", exclude={"key_hash"})))
    return 0


if __name__ == "__main__":
    sys.exit(main())
