"""Migrations on a database with data in it (SQLite and PostgreSQL): rows written under the
previous schema survive each upgrade with the values the new columns promise, and the
migrated schema is the one the tables declare."""

import json

import psycopg
import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import text

from mec_platform import keys
from mec_platform.db import make_engine
from mec_platform.migrate import alembic_config, upgrade
from mec_platform.tables import Base

PG_ADMIN = "postgresql://postgres@127.0.0.1:5432/postgres"


@pytest.fixture(params=["sqlite", "postgres"])
def url(request, tmp_path):
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'mec.db'}"
        return
    name = f"mec_migrate_{tmp_path.name[-8:].replace('-', '_')}".lower()
    with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}"')
        conn.execute(f'CREATE DATABASE "{name}"')
    yield f"postgresql+psycopg://postgres@127.0.0.1:5432/{name}"
    with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def test_0004__existing_keys_jobs_and_models_join_default_with_every_scope(url):
    upgrade(url, "0003")
    engine = make_engine(url)
    with engine.begin() as conn:
        conn.execute(text(
            "INSERT INTO api_keys (name, prefix, hash, created_at) "
            "VALUES ('old', 'mec_oldkey12', :hash, CURRENT_TIMESTAMP)"),
            {"hash": keys.digest("mec_oldkey12-and-the-rest")})
        conn.execute(text(
            "INSERT INTO jobs (kind, name, tags, priority, queue, config, status, "
            "cancel_requested, step, epoch, attempts, idempotency_key, created_at) VALUES "
            "('pretrain', 'old job', '[]', 0, 'gpu', '{}', 'succeeded', false, 0, 0, 1, "
            "'retry-1', CURRENT_TIMESTAMP)"))
        conn.execute(text(
            "INSERT INTO models (job_id, name, backbone, dataset, artifacts, created_at) "
            "SELECT id, 'old model', 'convnet', 'digits', '{}', CURRENT_TIMESTAMP FROM jobs"))
    upgrade(url)
    with engine.connect() as conn:
        key = conn.execute(text("SELECT project, scopes FROM api_keys")).one()
        job = conn.execute(text("SELECT project, idempotency_key FROM jobs")).one()
        model = conn.execute(text("SELECT project FROM models")).one()
        audit = conn.execute(text("SELECT count(*) FROM audit_log")).scalar()
    scopes = key.scopes if isinstance(key.scopes, list) else json.loads(key.scopes)
    assert key.project == "default" and sorted(scopes) == sorted(keys.ALL_SCOPES)
    assert tuple(job) == ("default", "default:retry-1")  # idempotency keys are per project
    assert model.project == "default" and audit == 0
    command.downgrade(alembic_config(url), "0003")  # and back, as it was
    with engine.connect() as conn:
        assert conn.execute(text("SELECT idempotency_key FROM jobs")).scalar() == "retry-1"
    upgrade(url)
    engine.dispose()


def test_the_migrated_schema_is_the_one_the_tables_declare(url):
    upgrade(url)
    engine = make_engine(url)
    with engine.connect() as conn:
        drift = compare_metadata(MigrationContext.configure(conn), Base.metadata)
    engine.dispose()
    assert drift == []


def test_0009__galleries_keep_their_items_and_a_deleted_gallerys_id_is_never_given_again(url):
    command.upgrade(alembic_config(url), "0008")
    engine = make_engine(url)
    now = "2026-12-01 00:00:00.000000"
    with engine.begin() as conn:
        conn.execute(text("INSERT INTO jobs (id, kind, project, name, tags, priority, queue, "
                          "config, status, cancel_requested, step, epoch, attempts, "
                          "created_at) VALUES (1, 'pretrain', 'a', 'j', '[]', 0, 'gpu', '{}', "
                          f"'succeeded', false, 0, 0, 1, '{now}')"))
        conn.execute(text("INSERT INTO models (id, job_id, project, name, backbone, dataset, "
                          f"artifacts, created_at) VALUES (1, 1, 'a', 'm', 'convnet', "
                          f"'synthetic', '{{}}', '{now}')"))
        for gallery in (1, 2):  # ids from the database, as the API gets them
            conn.execute(text("INSERT INTO galleries (project, name, model_id, model_version, "
                              f"dim, seq, created_at) VALUES ('a', 'g{gallery}', 1, 1, 4, 1, "
                              f"'{now}')"))
            conn.execute(text("INSERT INTO gallery_items (gallery_id, item_id, metadata, "
                              f"vector, seq, updated_at) VALUES ({gallery}, 'x', "
                              f"'{{\"k\": {gallery}}}', NULL, 1, '{now}')"))
    upgrade(url)
    with engine.begin() as conn:
        items = conn.execute(text("SELECT gallery_id, metadata FROM gallery_items "
                                  "ORDER BY gallery_id")).all()
        assert [(g, json.loads(m) if isinstance(m, str) else m) for g, m in items] == [
            (1, {"k": 1}), (2, {"k": 2})]
        conn.execute(text("DELETE FROM galleries WHERE id = 2"))  # the highest id
        assert conn.execute(text("SELECT count(*) FROM gallery_items")).scalar() == 1
        new = conn.execute(text("INSERT INTO galleries (project, name, model_id, dim, seq, "
                                f"created_at) VALUES ('b', 'g', 1, 4, 0, '{now}') "
                                "RETURNING id")).scalar()
    engine.dispose()
    assert new == 3


def test_the_embedded_database_is_readable_by_its_owner_only(tmp_path):
    """It holds the API keys' hashes."""
    url = f"sqlite:///{tmp_path / 'mec.db'}"
    upgrade(url)
    engine = make_engine(url)
    with engine.connect() as conn:
        conn.execute(text("SELECT 1"))
        modes = {p.name: p.stat().st_mode & 0o777 for p in tmp_path.glob("mec.db*")}
    engine.dispose()
    assert modes and set(modes.values()) == {0o600}, modes


def test_0013__sweep_children_get_their_trial_number_from_their_old_keys(url):
    command.upgrade(alembic_config(url), "0012")
    engine = make_engine(url)
    now = "2026-12-01 00:00:00.000000"
    rows = [(1, "sweep", None, None), (2, "pretrain", 1, "p:sweep-1-trial-0"),
            (3, "pretrain", 1, "p:sweep-1-trial-1"), (4, "evaluate", 1, "p:sweep-1-evaluation-0"),
            (5, "pretrain", None, "p:sweep-1-trial-7")]  # a caller's own key: not a child
    with engine.begin() as conn:
        for job_id, kind, parent, key in rows:
            conn.execute(text(
                "INSERT INTO jobs (id, kind, project, name, tags, priority, queue, config, "
                "status, cancel_requested, step, epoch, attempts, idempotency_key, "
                "created_at, parent_id) VALUES (:id, :kind, 'p', 'j', '[]', 0, 'gpu', '{}', "
                f"'queued', false, 0, 0, 0, :key, '{now}', :parent)"),
                {"id": job_id, "kind": kind, "key": key, "parent": parent})
    upgrade(url)
    with engine.connect() as conn:
        got = conn.execute(text("SELECT id, trial, idempotency_key FROM jobs ORDER BY id")).all()
    assert [tuple(r) for r in got] == [(1, None, None), (2, 0, None), (3, 1, None),
                                       (4, 0, None), (5, None, "p:sweep-1-trial-7")]
    command.downgrade(alembic_config(url), "0012")  # and back, with the keys as they were
    with engine.connect() as conn:
        keys_back = conn.execute(text("SELECT idempotency_key FROM jobs ORDER BY id")).scalars()
        assert list(keys_back) == [key for *_, key in rows]
    upgrade(url)
    engine.dispose()
