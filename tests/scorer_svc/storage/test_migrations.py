"""The database schema under migrations, on both backends: a new database is made at the
head and matches the models; one made by the release before migrations is upgraded in place
with its history kept."""

import json
from pathlib import Path

import numpy as np
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.config import Config
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import create_engine, make_url, text

from scorer_svc.storage import checkpoints as checkpoint_store
from scorer_svc.storage import losses as loss_store
from scorer_svc.storage import runs as run_store
from scorer_svc.storage.db import MIGRATIONS, make_engine, make_sessionmaker
from scorer_svc.storage.tables import Base, now
from tests.support.scorer import stored_run_config


def _config(connection=None) -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.attributes["connection"] = connection
    return config


def _revision(engine) -> str | None:
    with engine.connect() as connection:
        return MigrationContext.configure(connection).get_current_revision()


def test_a_new_database_is_made_at_the_head_and_matches_the_models(database_url):
    engine = make_engine(database_url)
    head = ScriptDirectory.from_config(_config()).get_current_head()
    assert _revision(engine) == head
    with engine.connect() as connection:
        context = MigrationContext.configure(connection, opts={"compare_type": True})
        differences = compare_metadata(context, Base.metadata)
    if engine.dialect.name == "postgresql":  # 0004: the losses' key, checked per row, dropped
        assert [(d[0], d[1].parent.name) for d in differences] == [("add_fk", "losses")]
    else:
        assert differences == []
    make_engine(database_url).dispose()  # a second start: nothing to do
    engine.dispose()


def test_a_database_of_the_release_before_migrations_is_upgraded_in_place(database_url):
    if database_url.startswith("sqlite"):
        Path(make_url(database_url).database or "").parent.mkdir(parents=True, exist_ok=True)
    old = create_engine(database_url)
    with old.begin() as connection:  # what that release's create_all made: no version table
        command.upgrade(_config(connection), "0001")
        connection.execute(text("DROP TABLE alembic_version"))
    with old.begin() as connection:  # a run of that release, written as it wrote it
        connection.execute(
            text(
                "INSERT INTO runs (run_id, base_model, finetuning_type, config, fingerprint,"
                " n_samples, n_no_labels, window_size, update_times, initial_step, created_at)"
                " VALUES ('kept', 'none', 'lora', :config, :fp, 3, 0, 0.25, 3, 2, :now)"
            ),
            {"config": json.dumps(stored_run_config("kept", 3)), "fp": "0" * 64,
             "now": now()},
        )  # fmt: skip
        connection.execute(
            text(
                "INSERT INTO checkpoints (run_pk, step, update_index, kind, sha256, path,"
                " n_bytes, status, received_at) VALUES (1, 2, 1, 'lora', :digest, 'step-2',"
                " 1000, 'scored', :now)"
            ),
            {"digest": "0" * 64, "now": now()},
        )
        for index, loss in enumerate([1.0, None, 3.0]):
            connection.execute(
                text("INSERT INTO losses (run_pk, step, sample_index, loss) VALUES (1, 2, :i, :v)"),
                {"i": index, "v": loss},
            )
    old.dispose()

    engine = make_engine(database_url)  # as the scorer starts on it
    assert _revision(engine) == ScriptDirectory.from_config(_config()).get_current_head()
    sessions = make_sessionmaker(engine)
    with sessions() as session:
        run = run_store.get_run(session, run_id="kept")
        assert run.instance is None  # no scorer's until one starts on the database
        assert run_store.adopt_unowned_runs(session, instance="first") == 1
        assert run_store.adopt_unowned_runs(session, instance="second") == 0
        assert run_store.get_run(session, run_id="kept").instance == "first"
        got = loss_store.losses_at(session, run=run, step=2)
        np.testing.assert_array_equal(got, [1.0, np.nan, 3.0])
        big = checkpoint_store.Received(2**40, 2, "full", "xxh3-128:" + "0" * 32, "big", 16 << 30)
        checkpoint_store.add_checkpoint(
            session, run=run, received=big
        )  # 64-bit steps and sizes now
    with sessions() as session:
        assert checkpoint_store.get_checkpoint(session, run=run, step=2**40).n_bytes == 16 << 30
    engine.dispose()
