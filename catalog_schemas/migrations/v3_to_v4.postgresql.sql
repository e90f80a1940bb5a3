-- snapref catalog schema migration: version 3 -> version 4, PostgreSQL
-- A log reads one text per version (snapshots.log_entry): the id, the first parent's
-- id or 32 spaces, then a JSON array [parents, version, branch, timestamp, author,
-- message].

ALTER TABLE snapshots ADD COLUMN log_entry TEXT;
UPDATE snapshots SET log_entry = id || CASE WHEN parents = '[]' THEN '                                ' ELSE substr(parents, 3, 32) END || json_build_array(parents::json, version, branch, timestamp, author, message)::text;
