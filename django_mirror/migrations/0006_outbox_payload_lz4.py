"""Compress outbox payloads on PostgreSQL with lz4 rather than the default pglz.

Every captured write stores its events as one payload; a ``bulk_create`` of 1,000 rows
makes one of about 80 KB, which pglz compresses at a cost of roughly a millisecond per
insert. lz4 keeps the WAL small at a fraction of the time. A server built without lz4
keeps pglz: slower, equally correct.
"""

from django.db import DatabaseError, migrations, transaction


def _payload_compression(method: str):  # type: ignore[no-untyped-def]
    def alter(apps, schema_editor):  # type: ignore[no-untyped-def]
        connection = schema_editor.connection
        if connection.vendor != "postgresql":
            return
        model = apps.get_model("django_mirror", "OutboxBatch")
        table = connection.ops.quote_name(model._meta.db_table)
        try:
            with transaction.atomic(using=connection.alias):
                schema_editor.execute(
                    f"ALTER TABLE {table} ALTER COLUMN payload SET COMPRESSION {method}"
                )
        except DatabaseError:
            pass  # "compression method lz4 not supported": this server keeps pglz

    return alter


class Migration(migrations.Migration):
    dependencies = [
        ("django_mirror", "0005_dashboard"),
    ]

    operations = [
        migrations.RunPython(_payload_compression("lz4"), _payload_compression("DEFAULT")),
    ]
