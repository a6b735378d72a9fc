"""Seal the events written before the hash chain, and let the retention purge delete old events.

Existing events are linked in id order (the trigger is switched off for those
updates only). The trigger then refuses UPDATE and DELETE as before, except a
DELETE inside a transaction that has set ``muxer.audit_purge`` to ``on`` and
``muxer.audit_purge_before`` to a cutoff at least a day old, of a row older
than that cutoff (``audit.services.audit_events_purge``).
"""

from typing import Any

from django.db import migrations

PURGE_AWARE = """
CREATE OR REPLACE FUNCTION audit_event_append_only() RETURNS trigger AS $$
DECLARE
    cutoff timestamptz;
BEGIN
    IF TG_OP = 'DELETE' AND current_setting('muxer.audit_purge', true) = 'on' THEN
        cutoff := NULLIF(current_setting('muxer.audit_purge_before', true), '')::timestamptz;
        IF cutoff IS NOT NULL AND cutoff <= now() - interval '1 day' AND OLD.created_at < cutoff THEN
            RETURN OLD;
        END IF;
    END IF;
    RAISE EXCEPTION 'audit events are append-only (% refused)', TG_OP;
END;
$$ LANGUAGE plpgsql;
"""
REFUSE_ALL = """
CREATE OR REPLACE FUNCTION audit_event_append_only() RETURNS trigger AS $$
BEGIN
    RAISE EXCEPTION 'audit events are append-only (% refused)', TG_OP;
END;
$$ LANGUAGE plpgsql;
"""


def seal_existing(apps: Any, schema_editor: Any) -> None:
    from audit.chain import event_hash

    AuditEvent = apps.get_model("audit", "AuditEvent")
    db = schema_editor.connection.alias
    postgres = schema_editor.connection.vendor == "postgresql"
    unsealed = AuditEvent.objects.using(db).filter(hash="")
    if not unsealed.exists():
        return
    if postgres:
        # ALTER TABLE refuses to run while row triggers are still queued in this transaction.
        schema_editor.execute("SET CONSTRAINTS ALL IMMEDIATE", params=None)
        schema_editor.execute("ALTER TABLE audit_auditevent DISABLE TRIGGER audit_event_append_only", params=None)
    prev_hash = ""
    with schema_editor.connection.cursor() as cursor:
        for event in AuditEvent.objects.using(db).order_by("id").iterator(chunk_size=2000):
            if event.hash == "":
                event.prev_hash = prev_hash
                event.hash = event_hash(event)
                cursor.execute(
                    "UPDATE audit_auditevent SET prev_hash = %s, hash = %s WHERE id = %s",
                    [event.prev_hash, event.hash, event.pk],
                )
            prev_hash = event.hash
    if postgres:
        schema_editor.execute("ALTER TABLE audit_auditevent ENABLE TRIGGER audit_event_append_only", params=None)


def purge_aware_trigger(apps: Any, schema_editor: Any) -> None:
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute(PURGE_AWARE, params=None)


def refuse_all_trigger(apps: Any, schema_editor: Any) -> None:
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute(REFUSE_ALL, params=None)


class Migration(migrations.Migration):
    dependencies = [("audit", "0004_chain_fields")]
    operations = [
        migrations.RunPython(seal_existing, migrations.RunPython.noop),
        migrations.RunPython(purge_aware_trigger, refuse_all_trigger),
    ]
