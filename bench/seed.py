"""Bulk rows for the API and memory benchmarks, written with one INSERT ... SELECT per table.

Going through the API would take most of the benchmark's time budget for 100,000 cases, and what
is measured is reading them back. The rows have the shapes the service writes: a case with its
six steps and a few timeline events, mailboxes that recur (the same users over a year), and at
most one open case per mailbox.
"""

from __future__ import annotations

from sqlalchemy import bindparam, create_engine, text
from sqlalchemy.engine import Connection

from service.persistence import snapshots
from service.persistence.db import sync_url
from service.persistence.records import case_document, render_document

STEPS = ("reset_password", "revoke_sessions", "check_restriction", "unblock", "verify", "propagation")

_CASES = """
INSERT INTO cases (id, mailbox, state, outcome, is_open, ticket_ref, requested_by, note, actions,
                   require_approval, restriction, last_error, next_action_at, sending_restored_by,
                   lease_owner, lease_expires_at, created_by, created_at, updated_at, finished_at, version)
SELECT
  :prefix || lpad(i::text, 26 - length(:prefix), '0'),
  'user' || (i % :mailboxes) || '@contoso.com',
  CASE WHEN i > :total - :open THEN 'awaiting_propagation'
       WHEN i % 31 = 0 THEN 'failed' WHEN i % 3 = 0 THEN 'resolved' ELSE 'resolved' END,
  CASE WHEN i > :total - :open THEN NULL
       WHEN i % 31 = 0 THEN 'failed' WHEN i % 3 = 0 THEN 'not_restricted' ELSE 'unblocked' END,
  i > :total - :open,
  'INC' || lpad(i::text, 7, '0'),
  'servicedesk', NULL,
  '{"reset_password": true, "revoke_sessions": true, "remove_forwarding": false,
    "disable_suspicious_inbox_rules": false}'::jsonb,
  false,
  '{"reason": "EmailSendingLimitExceeded;ExceedingLimitType=External", "limit_type": "External",
    "internal_recipients_today": 0, "external_recipients_today": 1500, "blocked_at": null,
    "changed_at": null, "temporary_block": false}'::jsonb,
  CASE WHEN i % 31 = 0 THEN '{"code": "mailbox_not_found", "message": "no such user", "retryable": false}'::jsonb END,
  CASE WHEN i > :total - :open THEN now() + interval '1 hour' + (i % 600) * interval '1 second' END,
  NULL, NULL, NULL, 'servicedesk',
  now() - (:total - i) * interval '5 minutes',
  now() - (:total - i) * interval '5 minutes' + interval '3 seconds',
  CASE WHEN i > :total - :open THEN NULL ELSE now() - (:total - i) * interval '5 minutes' + interval '3 seconds' END,
  7
FROM generate_series(1, :total) AS i
"""

_STEPS = """
INSERT INTO case_steps (case_id, name, position, status, attempts, failures, started_at, finished_at, error)
SELECT c.id, s.name, s.position,
       CASE WHEN c.is_open AND s.name = 'propagation' THEN 'pending' ELSE 'succeeded' END,
       1, 0, c.created_at, c.updated_at, NULL
FROM cases c
CROSS JOIN (SELECT * FROM unnest(CAST(:names AS text[])) WITH ORDINALITY AS t(name, position)) AS s
WHERE c.id LIKE :prefix || '%'
"""

_EVENTS = """
INSERT INTO case_events (case_id, at, actor, type, from_state, to_state, step, detail)
SELECT c.id, c.created_at + e.n * interval '1 second', e.actor, e.type, e.from_state, e.to_state, e.step,
       '{}'::jsonb
FROM cases c
CROSS JOIN (VALUES
  (0, 'servicedesk', 'case.created', NULL, 'received', NULL),
  (1, 'worker', 'step.succeeded', 'securing_account', 'checking_restriction', 'revoke_sessions'),
  (2, 'worker', 'step.succeeded', 'unblocking', 'verifying', 'unblock'),
  (3, 'worker', 'case.resolved', 'awaiting_propagation', 'resolved', 'propagation')
) AS e(n, actor, type, from_state, to_state, step)
WHERE c.id LIKE :prefix || '%'
"""


def seed_cases(database_url: str, *, total: int, open_cases: int, prefix: str = "0bench") -> list[str]:
    """Insert ``total`` cases (the last ``open_cases`` of them open); returns a sample of their ids."""
    engine = create_engine(sync_url(database_url))
    params = {"prefix": prefix, "total": total, "open": open_cases, "mailboxes": max(open_cases, total // 5, 1)}
    try:
        with engine.begin() as connection:
            connection.execute(text(_CASES), params)
            connection.execute(text(_STEPS), {"prefix": prefix, "names": list(STEPS)})
            connection.execute(text(_EVENTS), {"prefix": prefix})
        with engine.begin() as connection:
            _store_documents(connection, prefix)
        with engine.begin() as connection:
            connection.execute(text("ANALYZE cases"))
            connection.execute(text("ANALYZE case_steps"))
            connection.execute(text("ANALYZE case_events"))
            rows = connection.execute(
                text("SELECT id FROM cases WHERE id LIKE :p || '%' ORDER BY random() LIMIT 5000"), {"p": prefix}
            )
            return [r[0] for r in rows]
    finally:
        engine.dispose()


_STORE = text("UPDATE cases SET document = :document WHERE id = :id")


def _store_documents(connection: Connection, prefix: str, batch: int = 2000) -> None:
    """Each seeded case's stored document, rendered by the service's own code (as its writer does)."""
    ids = [r[0] for r in connection.execute(text("SELECT id FROM cases WHERE id LIKE :p || '%'"), {"p": prefix})]
    rows_of = snapshots.CASE_ROWS.where(snapshots.CASES.c.id.in_(bindparam("ids", expanding=True)))
    for start in range(0, len(ids), batch):
        chunk = ids[start : start + batch]
        steps: dict[str, list[object]] = {i: [] for i in chunk}
        for step in connection.execute(snapshots.STEPS_OF, {"ids": chunk}):
            steps[step.case_id].append(step)
        documents = [
            {"id": row.id, "document": render_document(case_document(snapshots.snapshot_of(row, steps[row.id])))}
            for row in connection.execute(rows_of, {"ids": chunk})
        ]
        connection.execute(_STORE, documents)
