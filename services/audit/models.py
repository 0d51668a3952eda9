"""Audit's table and API schemas.

The table holds no event data, only its SHA-256 and a few non-personal query fields (SPEC §7).
"""

from __future__ import annotations

from datetime import datetime
from typing import Literal
from uuid import UUID

from pydantic import BaseModel
from pydantic import Field as PydanticField
from sqlalchemy import BigInteger, Column, Index, Integer, UniqueConstraint
from sqlmodel import Field, SQLModel

from shared.db import table_of

GENESIS_HASH = "0" * 64

ProblemKind = Literal[
    "changed", "removed", "unlinked", "truncated", "checkpoint_signature_invalid", "checkpoint_key_unknown",
    "checkpoint_key_retired", "checkpoint_mismatch",
]


class AuditEntry(SQLModel, table=True):
    """One link of the hash chain: an event's identity, position on Kafka and digest, never its data."""

    __tablename__ = "audit_entries"
    __table_args__ = (
        UniqueConstraint("event_id", name="uq_audit_entries_event_id"),
        Index("ix_audit_entries_subject", "subject", "seq"),
    )

    seq: int = Field(
        sa_column=Column(
            "seq", BigInteger().with_variant(Integer(), "sqlite"), primary_key=True, autoincrement=False
        )
    )
    event_id: str = Field(max_length=200)
    event_type: str = Field(max_length=200)
    source: str = Field(max_length=500)
    subject: str | None = Field(default=None, max_length=200)
    event_time: datetime
    recorded_at: datetime
    topic: str = Field(max_length=249)
    partition: int = Field(sa_column=Column("partition", Integer(), nullable=False))
    offset: int = Field(sa_column=Column("offset", BigInteger(), nullable=False))
    data_sha256: str = Field(max_length=64)
    status: str | None = Field(default=None, max_length=32)
    destination_id: UUID | None = None
    reason: str | None = Field(default=None, max_length=64)
    prev_hash: str = Field(max_length=64)
    hash: str = Field(max_length=64)


# The Core table: appends and verification bypass the ORM, which would cost more than the hashing itself.
ENTRIES = table_of(AuditEntry)


class AuditCheckpoint(SQLModel, table=True):
    """A signed statement "the chain had this head hash at this sequence number at this time"."""

    __tablename__ = "audit_checkpoints"

    seq: int = Field(
        sa_column=Column(
            "seq", BigInteger().with_variant(Integer(), "sqlite"), primary_key=True, autoincrement=False
        )
    )
    head_hash: str = Field(max_length=64)
    created_at: datetime
    key_id: str = Field(max_length=64)
    signature: str = Field(max_length=128)


CHECKPOINTS = table_of(AuditCheckpoint)


class TrailEntry(BaseModel):
    """An entry as an auditor sees it: every field that ``hash`` covers, so it can be recomputed."""

    seq: int = PydanticField(description="Position in the chain, 1, 2, 3, … without gaps")
    event_id: str = PydanticField(description="The CloudEvents id (ce_id)")
    event_type: str = PydanticField(description="The CloudEvents type (ce_type)")
    source: str = PydanticField(description="The CloudEvents source (ce_source)")
    subject: str | None = PydanticField(description="The CloudEvents subject (ce_subject): the case id")
    event_time: datetime = PydanticField(description="The CloudEvents time (ce_time)")
    recorded_at: datetime = PydanticField(description="When audit appended the entry")
    topic: str
    partition: int
    offset: int
    data_sha256: str = PydanticField(description="SHA-256 (hex) of the Kafka record's value bytes")
    status: str | None = PydanticField(description="Case status the event carries or implies")
    destination_id: UUID | None
    reason: str | None = PydanticField(description="Why a case was unroutable")
    prev_hash: str = PydanticField(description="hash of entry seq-1; 64 zeros for the first entry")
    hash: str = PydanticField(
        description="SHA-256 (hex) of the JSON object of all other fields: keys sorted, no whitespace, non-ASCII as "
        "\\uXXXX escapes, times as ISO-8601 UTC with microseconds (2026-01-31T12:00:00.000000+00:00), "
        "UUIDs as lower-case strings"
    )


class CaseTrail(BaseModel):
    """Every audit entry of one case, in chain order."""

    case_id: UUID
    entries: list[TrailEntry]


class Checkpoint(BaseModel):
    """A signed checkpoint, with everything needed to check its signature."""

    seq: int = PydanticField(description="The chain's length when the checkpoint was made")
    head_hash: str = PydanticField(description="hash of entry seq")
    created_at: datetime = PydanticField(description="When the checkpoint was signed")
    key_id: str = PydanticField(description="First 16 hex digits of the SHA-256 of the raw 32-byte public key")
    signature: str = PydanticField(
        description="Hex of the Ed25519 signature over the UTF-8 bytes of the JSON object "
        '{"head_hash", "seq", "time", "type": "de.ozg.audit.checkpoint.v1"}: keys sorted, no whitespace, '
        "time = created_at as ISO-8601 UTC with microseconds (2026-01-31T12:00:00.000000+00:00)"
    )


class CheckpointList(BaseModel):
    """Checkpoints in sequence order, and the id of the key that signs new ones."""

    key_id: str = PydanticField(description="Id of the key that signs new checkpoints (served at "
                                "/v1/checkpoints/public-key); each checkpoint names its own")
    checkpoints: list[Checkpoint]


class PublicKey(BaseModel):
    """One public key that checks checkpoint signatures."""

    key_id: str = PydanticField(description="First 16 hex digits of the SHA-256 of the raw 32-byte public key; a "
                                "checkpoint's key_id names the key that signed it")
    pem: str = PydanticField(description="The Ed25519 public key as PEM (SubjectPublicKeyInfo)")
    signing: bool = PydanticField(description="Whether this service signs new checkpoints with it")


class PublicKeyList(BaseModel):
    """Every public key verification accepts: the signing key's and the trusted earlier (or next) ones."""

    keys: list[PublicKey]


class VerifyReport(BaseModel):
    """The result of recomputing the whole chain and checking the signed checkpoints."""

    intact: bool
    length: int = PydanticField(description="Number of entries in the chain")
    head_hash: str = PydanticField(description="hash of the last entry (64 zeros for an empty chain)")
    first_bad_seq: int | None = PydanticField(
        description="The first entry found broken (for a truncated chain: the first missing one), or null")
    problem: str | None = PydanticField(description="What is wrong with that entry, or null")
    kind: ProblemKind | None = PydanticField(default=None, description="The class of the problem, or null")
    checkpoint_seq: int | None = PydanticField(
        default=None, description="The checkpoint that revealed the problem (by its seq; a stored one or an "
        "expected one given to verify), or null")
    checkpoints: int = PydanticField(default=0, description="Number of checkpoints checked")
    last_checkpoint_seq: int | None = PydanticField(default=None, description="seq of the newest checkpoint")
    anchors: int = PydanticField(
        default=0, description="Number of expected checkpoints given to verify (kept by the verifier) and checked")
