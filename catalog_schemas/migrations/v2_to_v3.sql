-- snapref catalog schema migration: version 2 -> version 3
-- Portable SQL (SQLite, PostgreSQL, duckdb), run after v2_to_v3.<dialect>.sql where
-- there is one for the catalog's database (v2_to_v3.sqlite.sql: the log's index).

UPDATE snapref_schema SET version = 3;
