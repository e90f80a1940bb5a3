-- snapref catalog schema migration: version 2 -> version 3, SQLite only
-- The log reads the columns it shows from this index alone, in version order.
-- (PostgreSQL limits B-tree entries to ~2.7 KB, which a long message would exceed.)

CREATE INDEX ix_snapshots_log ON snapshots (dataset, version, id, parents, branch, timestamp, author, message);
