"""Catalog lints (after supabase/splinter): queries over pg_catalog that must find nothing."""

from __future__ import annotations

import psycopg
import pytest

LINTS = {
    "api function without COMMENT ON": """
        SELECT p.oid::regprocedure::text FROM pg_proc p
        WHERE p.pronamespace = 'api'::regnamespace AND obj_description(p.oid, 'pg_proc') IS NULL
    """,
    # Exempt: immutable single-expression SQL helpers in core, which a SET clause would
    # stop the planner from inlining into set-based callers (whose search_path is pinned);
    # they qualify every name with pg_catalog instead.
    "function without a pinned search_path": """
        SELECT p.oid::regprocedure::text FROM pg_proc p
        WHERE p.pronamespace IN ('api'::regnamespace, 'core'::regnamespace)
          AND NOT coalesce(p.proconfig, '{}') @> ARRAY['search_path=""']
          AND NOT (p.pronamespace = 'core'::regnamespace AND p.prolang = (SELECT oid FROM pg_language WHERE lanname = 'sql')
                   AND p.provolatile = 'i' AND p.proconfig IS NULL
                   AND p.prosrc !~ '(^|[^.a-z_])(core|api|pgmq|public)\\.' AND p.prosrc ~ 'pg_catalog\\.')
    """,
    "api function executable by PUBLIC": """
        SELECT p.oid::regprocedure::text FROM pg_proc p
        WHERE p.pronamespace = 'api'::regnamespace AND has_function_privilege('public', p.oid, 'EXECUTE')
    """,
    # Clients' roles reach tables only through api functions, which run as their owner
    # (api.stage_contacts too: it creates the staging table and grants INSERT on it).
    "api function running as its caller": """
        SELECT p.oid::regprocedure::text FROM pg_proc p
        WHERE p.pronamespace = 'api'::regnamespace AND NOT p.prosecdef
    """,
    "api function overloaded": """
        SELECT proname FROM pg_proc WHERE pronamespace = 'api'::regnamespace
        GROUP BY proname HAVING count(*) > 1
    """,
    "table in api": """
        SELECT relname FROM pg_class WHERE relnamespace = 'api'::regnamespace AND relkind IN ('r', 'p')
    """,
    "foreign key without an index that leads with its columns": """
        SELECT c.conrelid::regclass::text || ' ' || c.conname FROM pg_constraint c
        WHERE c.contype = 'f' AND c.connamespace = 'core'::regnamespace
          AND NOT EXISTS (
              SELECT 1 FROM pg_index i
              WHERE i.indrelid = c.conrelid
                AND (i.indkey::int2[])[0:cardinality(c.conkey) - 1] @> c.conkey
                AND (i.indkey::int2[])[0:cardinality(c.conkey) - 1] <@ c.conkey)
    """,
    "RAISE EXCEPTION without an ERRCODE": """
        SELECT p.oid::regprocedure::text FROM pg_proc p
        WHERE p.pronamespace IN ('api'::regnamespace, 'core'::regnamespace)
          AND regexp_count(p.prosrc, 'RAISE\\s+EXCEPTION', 1, 'i') > regexp_count(p.prosrc, 'USING\\s+ERRCODE', 1, 'i')
    """,
    "project SQLSTATE raised but not in core.error_codes": """
        SELECT DISTINCT m[1] FROM pg_proc p, regexp_matches(p.prosrc, 'ERRCODE\\s*=\\s*''(PW[0-9]{3})''', 'g') m
        WHERE p.pronamespace IN ('api'::regnamespace, 'core'::regnamespace)
          AND m[1] NOT IN (SELECT sqlstate FROM core.error_codes)
    """,
}


@pytest.mark.parametrize("lint", LINTS)
def test_catalog_lint_finds_nothing(db: psycopg.Connection, lint: str) -> None:
    offenders = [r[0] for r in db.execute(LINTS[lint])]
    assert offenders == [], f"{lint}: {offenders}"


def test_lints_do_catch_offenders(db: psycopg.Connection) -> None:
    """The lints are only worth having if they fire; plant one offender of each kind."""
    db.execute("CREATE FUNCTION api.undocumented() RETURNS int LANGUAGE sql AS 'SELECT 1'")
    db.execute("CREATE TABLE api.oops (id int)")
    db.execute("""CREATE FUNCTION core.bare_raise() RETURNS void LANGUAGE plpgsql SET search_path = ''
                  AS $$ BEGIN RAISE EXCEPTION 'no code'; END $$""")
    db.execute("CREATE TABLE core.child (tenant_id bigint REFERENCES core.tenants)")
    fired = {name for name, query in LINTS.items() if db.execute(query).fetchall()}
    assert {"api function without COMMENT ON", "function without a pinned search_path",
            "api function running as its caller", "table in api", "RAISE EXCEPTION without an ERRCODE",
            "foreign key without an index that leads with its columns"} <= fired
