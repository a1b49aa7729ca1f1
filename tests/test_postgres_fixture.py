"""The throwaway PostgreSQL server the PostgreSQL tests run against really is one."""

from __future__ import annotations

import pytest

from securechan.testing.postgres import PostgresServer


def test_server_answers_and_databases_are_fresh(
    postgres_server: PostgresServer, postgres_url: str
) -> None:
    import psycopg

    with psycopg.connect(postgres_url, autocommit=True) as conn:
        version = conn.execute("SHOW server_version_num").fetchone()
        assert version is not None and int(version[0]) >= 150000
        conn.execute("CREATE TABLE t (x int)")
        conn.execute("INSERT INTO t VALUES (1)")
        assert conn.execute("SELECT count(*) FROM t").fetchone() == (1,)
    # Another database on the same server does not see that table.
    other = postgres_server.create_database("fixture_other")
    with psycopg.connect(other) as conn, pytest.raises(psycopg.errors.UndefinedTable):
        conn.execute("SELECT * FROM t")
