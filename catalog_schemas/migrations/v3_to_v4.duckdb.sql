-- snapref catalog schema migration: version 3 -> version 4, duckdb
-- A log reads version, branch, timestamp, author and message as one JSON array
-- (snapshots.log_entry).

ALTER TABLE snapshots ADD COLUMN log_entry TEXT;
UPDATE snapshots SET log_entry = json_array(version, branch, timestamp, author, message);
