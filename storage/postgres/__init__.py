"""The PostgreSQL backend: a pool of psycopg connections (database.py) that runs the same
synchronous transaction bodies the SQLite store runs (connection.py adapts the SQL), its own
dialect of the numbered migrations (migrations.py), and LISTEN/NOTIFY wake-ups (wakeups.py)."""
