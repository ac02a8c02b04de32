"""The scorer's database schema history (Alembic): `scorer_svc.storage.db.upgrade` brings a database
made by any release to the current schema when the scorer starts."""
