"""The database schema under migrations, on both backends: a new database is made at the
head and matches the models; one made by the release before migrations is upgraded in place
with its history kept."""

from pathlib import Path

import numpy as np
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.config import Config
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import create_engine, make_url, text

from scorer_svc import crud
from scorer_svc.db import MIGRATIONS, make_engine, make_sessionmaker
from scorer_svc.models import Base
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
        assert compare_metadata(context, Base.metadata) == []
    make_engine(database_url).dispose()  # a second start: nothing to do
    engine.dispose()


def test_a_database_of_the_release_before_migrations_is_upgraded_in_place(database_url):
    if database_url.startswith("sqlite"):
        Path(make_url(database_url).database or "").parent.mkdir(parents=True, exist_ok=True)
    old = create_engine(database_url)
    with old.begin() as connection:  # what that release's create_all made: no version table
        command.upgrade(_config(connection), "0001")
        connection.execute(text("DROP TABLE alembic_version"))
    sessions = make_sessionmaker(old)
    with sessions() as session:
        run = crud.create_run(session, config=stored_run_config("kept", 3), n_no_labels=0)
        received = crud.Received(2, 1, "lora", "0" * 64, "step-2", 1000)
        checkpoint = crud.add_checkpoint(session, run=run, received=received)
        crud.store_scores(session, checkpoint=checkpoint, losses=np.array([1.0, np.nan, 3.0]),
                          window=None, seconds=0.1)  # fmt: skip
    old.dispose()

    engine = make_engine(database_url)  # as the scorer starts on it
    assert _revision(engine) == ScriptDirectory.from_config(_config()).get_current_head()
    sessions = make_sessionmaker(engine)
    with sessions() as session:
        run = crud.get_run(session, run_id="kept")
        got = crud.losses_at(session, run=run, step=2)
        np.testing.assert_array_equal(got, [1.0, np.nan, 3.0])
        big = crud.Received(2**40, 2, "full", "xxh3-128:" + "0" * 32, "big", 16 << 30)
        crud.add_checkpoint(session, run=run, received=big)  # 64-bit steps and sizes now
    with sessions() as session:
        assert crud.get_checkpoint(session, run=run, step=2**40).n_bytes == 16 << 30
    engine.dispose()
