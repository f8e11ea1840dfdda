"""The ledger's schema and its migrations; a later release adds a migration, never edits one."""

from __future__ import annotations

from sqlite_utils import Database
from sqlite_utils.migrations import Migrations

SCHEMA_VERSION = 2

migrations = Migrations("hzsyncd")


@migrations()
def m001_initial(db: Database) -> None:
    db.executescript(
        """
        CREATE TABLE files (
            id INTEGER PRIMARY KEY,
            sha256 TEXT NOT NULL,
            name TEXT NOT NULL,          -- the name it was dropped under
            origin TEXT NOT NULL,        -- where it was dropped: a file not finished goes back here
            drop_dir TEXT NOT NULL,
            table_name TEXT NOT NULL,
            op TEXT NOT NULL,
            work_path TEXT,
            dev INTEGER, ino INTEGER, size INTEGER, mtime_ns INTEGER,
            records INTEGER,
            state TEXT NOT NULL,         -- claimed | returned | moving | final
            disposition TEXT,            -- done | failed
            reason TEXT,
            dest TEXT,
            claimed_at REAL NOT NULL,
            finished_at REAL
        );
        CREATE INDEX files_sha256 ON files(sha256);
        CREATE INDEX files_open ON files(state) WHERE state != 'final';

        CREATE TABLE records (
            id INTEGER PRIMARY KEY,
            file_id INTEGER NOT NULL REFERENCES files(id),
            idx INTEGER NOT NULL,
            line INTEGER NOT NULL,
            table_name TEXT NOT NULL,
            op TEXT NOT NULL,
            key TEXT,
            hash TEXT,
            state TEXT NOT NULL,         -- pending | sending | deferred | final
            outcome TEXT,
            code TEXT,
            messages TEXT,               -- JSON array of the server's (or our) messages
            response TEXT,               -- the raw reply, verbatim
            field TEXT,
            payload TEXT,                -- kept only for records that did not go through
            attempts INTEGER NOT NULL DEFAULT 0,
            next_at REAL,
            relation_since REAL,
            created_at REAL NOT NULL,
            updated_at REAL NOT NULL,
            duration_ms REAL,
            UNIQUE (file_id, idx)
        );
        -- A key's story and its earlier rejections; the hash is left out to keep the index
        -- small, as every record of a re-dropped file writes to it.
        CREATE INDEX records_key ON records(table_name, key);
        CREATE INDEX records_open ON records(table_name, key) WHERE state != 'final';

        -- The duplicate rule's only input; never pruned.
        CREATE TABLE current (
            table_name TEXT NOT NULL,
            key TEXT NOT NULL,
            op TEXT NOT NULL,
            hash TEXT NOT NULL,
            record_id INTEGER NOT NULL,
            accepted_at REAL NOT NULL,
            PRIMARY KEY (table_name, key)
        ) WITHOUT ROWID;

        CREATE TABLE attempts (
            id INTEGER PRIMARY KEY,
            record_id INTEGER NOT NULL,
            at REAL NOT NULL,
            outcome TEXT NOT NULL,
            code TEXT,
            response TEXT,
            duration_ms REAL
        );
        CREATE INDEX attempts_record ON attempts(record_id);

        CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
        INSERT INTO meta VALUES ('schema_version', '1');
        """
    )


@migrations()
def m002_file_line(db: Database) -> None:
    # Where a file failed whole: the line and field of its reason (DESIGN §4, "source file and
    # line"), so that a report rebuilt from the ledger (after a crash) still names them.
    db.executescript(
        """
        ALTER TABLE files ADD COLUMN line INTEGER;
        ALTER TABLE files ADD COLUMN field TEXT;
        UPDATE meta SET value = '2' WHERE key = 'schema_version';
        """
    )
