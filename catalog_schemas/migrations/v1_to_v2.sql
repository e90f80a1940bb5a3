-- snapref catalog schema migration: version 1 -> version 2
-- Portable SQL (SQLite, PostgreSQL, duckdb). snapref runs it in one transaction when it
-- connects to a version-1 catalog (Catalog.open); statements are separated by ';' at
-- the end of a line.

-- 1. Parents as rows, for ancestry in one recursive query. Version 1 has no merge
--    commits, so every snapshot has at most one parent, stored as '["<32 hex>"]'.
CREATE TABLE snapshot_parents (
	snapshot_id VARCHAR(32) NOT NULL,
	ordinal INTEGER NOT NULL,
	parent_id VARCHAR(32) NOT NULL,
	PRIMARY KEY (snapshot_id, ordinal),
	FOREIGN KEY(snapshot_id) REFERENCES snapshots (id),
	FOREIGN KEY(parent_id) REFERENCES snapshots (id)
);
CREATE INDEX ix_snapshot_parents_parent ON snapshot_parents (parent_id);
INSERT INTO snapshot_parents (snapshot_id, ordinal, parent_id)
	SELECT id, 0, substr(parents, 3, 32) FROM snapshots WHERE parents <> '[]';

-- 2. Why a ref moved (reset, merge, revert), for the audit log.
ALTER TABLE ref_log ADD COLUMN message TEXT;

-- 3. Blame reads every change of one key from the index alone.
DROP INDEX ix_snapshot_changes_key;
CREATE INDEX ix_snapshot_changes_key_snapshot ON snapshot_changes ("key", snapshot_id);

UPDATE snapref_schema SET version = 2;
