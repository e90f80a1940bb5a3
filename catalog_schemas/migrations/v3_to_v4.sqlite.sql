-- snapref catalog schema migration: version 3 -> version 4, SQLite
-- A log reads version, branch, timestamp, author and message as one JSON array
-- (snapshots.log_entry), from the log's index rebuilt around it.

ALTER TABLE snapshots ADD COLUMN log_entry TEXT;
UPDATE snapshots SET log_entry = json_array(version, branch, timestamp, author, message);
DROP INDEX ix_snapshots_log;
CREATE INDEX ix_snapshots_log ON snapshots (dataset, version, id, parents, log_entry);
