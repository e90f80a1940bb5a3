-- snapref catalog schema version 4 (sqlite)

CREATE TABLE datasets (
	name VARCHAR(255) NOT NULL,
	created_at VARCHAR(32) NOT NULL,
	description TEXT NOT NULL,
	properties TEXT NOT NULL,
	PRIMARY KEY (name)
);

CREATE TABLE settings (
	"key" VARCHAR(255) NOT NULL,
	value TEXT NOT NULL,
	PRIMARY KEY ("key")
);

CREATE TABLE snapref_schema (
	version INTEGER NOT NULL,
	PRIMARY KEY (version)
);

CREATE TABLE dataset_sources (
	dataset VARCHAR(255) NOT NULL,
	prefix TEXT NOT NULL,
	PRIMARY KEY (dataset, prefix),
	FOREIGN KEY(dataset) REFERENCES datasets (name)
);

CREATE TABLE ref_log (
	id VARCHAR(32) NOT NULL,
	dataset VARCHAR(255) NOT NULL,
	ref VARCHAR(255) NOT NULL,
	action VARCHAR(16) NOT NULL,
	old_snapshot VARCHAR(32),
	new_snapshot VARCHAR(32),
	timestamp VARCHAR(32) NOT NULL,
	author TEXT NOT NULL,
	message TEXT,
	PRIMARY KEY (id),
	FOREIGN KEY(dataset) REFERENCES datasets (name)
);

CREATE INDEX ix_ref_log_dataset_ref_time ON ref_log (dataset, ref, timestamp);

CREATE TABLE snapshots (
	id VARCHAR(32) NOT NULL,
	dataset VARCHAR(255) NOT NULL,
	version INTEGER NOT NULL,
	manifest VARCHAR(64) NOT NULL,
	parents TEXT NOT NULL,
	branch VARCHAR(255) NOT NULL,
	timestamp VARCHAR(32) NOT NULL,
	author TEXT NOT NULL,
	message TEXT NOT NULL,
	snapref_version VARCHAR(32) NOT NULL,
	properties TEXT NOT NULL,
	summary TEXT NOT NULL,
	log_entry TEXT,
	PRIMARY KEY (id),
	UNIQUE (dataset, version),
	FOREIGN KEY(dataset) REFERENCES datasets (name)
);

CREATE INDEX ix_snapshots_log ON snapshots (dataset, version, log_entry);

CREATE TABLE refs (
	dataset VARCHAR(255) NOT NULL,
	name VARCHAR(255) NOT NULL,
	kind VARCHAR(8) NOT NULL,
	snapshot_id VARCHAR(32) NOT NULL,
	PRIMARY KEY (dataset, name),
	CONSTRAINT ck_refs_kind CHECK (kind IN ('branch', 'tag')),
	FOREIGN KEY(dataset) REFERENCES datasets (name),
	FOREIGN KEY(snapshot_id) REFERENCES snapshots (id)
);

CREATE TABLE snapshot_changes (
	snapshot_id VARCHAR(32) NOT NULL,
	"key" TEXT NOT NULL,
	op VARCHAR(1) NOT NULL,
	PRIMARY KEY (snapshot_id, "key"),
	CONSTRAINT ck_snapshot_changes_op CHECK (op IN ('A', 'M', 'D')),
	FOREIGN KEY(snapshot_id) REFERENCES snapshots (id)
);

CREATE INDEX ix_snapshot_changes_key_snapshot ON snapshot_changes ("key", snapshot_id);

CREATE TABLE snapshot_parents (
	snapshot_id VARCHAR(32) NOT NULL,
	ordinal INTEGER NOT NULL,
	parent_id VARCHAR(32) NOT NULL,
	PRIMARY KEY (snapshot_id, ordinal),
	FOREIGN KEY(snapshot_id) REFERENCES snapshots (id),
	FOREIGN KEY(parent_id) REFERENCES snapshots (id)
);

CREATE INDEX ix_snapshot_parents_parent ON snapshot_parents (parent_id);
