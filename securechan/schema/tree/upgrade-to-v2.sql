-- Version 1 kept its version in the table schema_version; from version 2 it is
-- PRAGMA user_version. The table stays as a fence for older code (see v2.sql).
UPDATE schema_version SET version = 2;
