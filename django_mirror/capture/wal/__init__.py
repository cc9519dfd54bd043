"""Capture from PostgreSQL's write-ahead log: a logical replication slot read with the
``pgoutput`` plugin, each committed transaction's changes stored as outbox batches.

``decoder`` reads pgoutput's binary messages, ``changes`` turns a transaction's changes
into outbox payloads like the ORM's, ``slot`` sets up and reads the publication and the
slot. ``manage.py mirror_capture`` runs it; see ``docs/wal-capture.md``.
"""
