-- snapref catalog schema migration: version 3 -> version 4
-- Portable SQL (SQLite, PostgreSQL, duckdb), run after v3_to_v4.<dialect>.sql, which
-- adds and fills snapshots.log_entry with its database's JSON function.

UPDATE snapref_schema SET version = 4;
