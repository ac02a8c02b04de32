"""What the scorer holds for its runs: their data (RunDataStore) and their scoring models
(ModelCatalogue), both reading within one access policy."""

from __future__ import annotations

from scorer_svc.config import Settings
from scorer_svc.scoring.model_catalogue import ModelCatalogue
from scorer_svc.scoring.run_data import RunDataStore
from scorer_svc.scoring.run_dataset import DatasetReader


class Registry:
    """A scorer's run data store and model catalogue, for the parts that use both (the intake,
    the worker, the other ranks): `runs` tokenizes and caches runs' data, `models` checks,
    describes and loads their models. Both read within `access`, the policy of `settings`."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        datasets = DatasetReader.of(settings)
        self.access = datasets.access
        self.runs = RunDataStore(settings, datasets)
        self.models = ModelCatalogue(settings, self.access)
