"""`mec keys` pointed at no platform database: a CLI error saying where it looked and what to
do, no traceback and no empty database file left behind."""

import os
import subprocess
import sys

import psycopg

from mec_platform.migrate import upgrade

PG_ADMIN = "postgresql://postgres@127.0.0.1:5432/postgres"


def _mec(*args: str, cwd=None, **env: str) -> subprocess.CompletedProcess:
    """`mec ARGS` with only the MEC_ settings given here."""
    base = {k: v for k, v in os.environ.items() if not k.startswith("MEC_")}
    return subprocess.run([sys.executable, "-m", "mec_client", *args], cwd=cwd, env=base | env,
                          capture_output=True, text=True, timeout=120)


def test_keys_outside_a_stacks_folder_say_where_they_looked(tmp_path):
    done = _mec("keys", "create", "--name", "x", cwd=tmp_path)
    assert done.returncode == 1 and "Traceback" not in done.stderr
    assert done.stderr.strip() == (
        f"Error: no platform database at {tmp_path}/mec-data/mec.db: run `mec up` (or `mec db "
        "upgrade`) first, or point MEC_DATA_DIR or MEC_DATABASE_URL at the stack's")
    assert list(tmp_path.iterdir()) == []


def test_keys_on_a_database_without_the_schema_say_so_and_work_once_upgraded(tmp_path):
    name = f"mec_keys_{os.getpid()}"
    with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}"')
        conn.execute(f'CREATE DATABASE "{name}"')
    url = f"postgresql+psycopg://postgres@127.0.0.1:5432/{name}"
    try:
        done = _mec("keys", "list", MEC_DATABASE_URL=url, MEC_DATA_DIR=str(tmp_path))
        assert done.returncode == 1 and "Traceback" not in done.stderr
        assert done.stderr.startswith(f"Error: the platform database {url} could not be used "
                                      '(relation "api_keys" does not exist): run `mec up`')
        upgrade(url)
        done = _mec("keys", "list", MEC_DATABASE_URL=url, MEC_DATA_DIR=str(tmp_path))
        assert done.returncode == 0 and done.stdout == ""  # no keys: no header either
        made = _mec("keys", "create", "--name", "ci", "--scope", "jobs:read",
                    MEC_DATABASE_URL=url, MEC_DATA_DIR=str(tmp_path))
        assert made.returncode == 0 and made.stdout.startswith("mec_")
        header, row = _mec("keys", "list", MEC_DATABASE_URL=url,
                           MEC_DATA_DIR=str(tmp_path)).stdout.splitlines()
        assert header.split() == ["id", "prefix", "state", "project", "scopes", "name"]
        assert row.split()[2:] == ["active", "default", "jobs:read", "ci"]
    finally:
        with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
