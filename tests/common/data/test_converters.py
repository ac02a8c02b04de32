"""The converter registry: one function per dataset_info.json formatting."""

import json
import re
from pathlib import Path

import pytest

from common.data.converters import CONVERTERS, converter
from common.data.dataset_info import (
    COLUMNS_READERS,
    FORMATTINGS,
    AlpacaColumns,
    SharegptColumns,
    Source,
    Tags,
)
from common.data.datasets import DatasetError, DatasetSpec, load_samples
from common.data.samples import Sample


def test_the_registry_holds_exactly_the_formattings_dataset_info_accepts():
    assert sorted(CONVERTERS) == sorted(FORMATTINGS) == sorted(COLUMNS_READERS)


@pytest.mark.parametrize("formatting", sorted(COLUMNS_READERS))
def test_each_formatting_reads_columns_that_name_it(formatting):
    columns, _ = COLUMNS_READERS[formatting](None, None)
    assert Source("file a.json", (), columns).formatting == formatting


@pytest.mark.parametrize("formatting", ["openai", "Alpaca", ""])
def test_an_unknown_formatting_is_refused_with_the_formats_read(tmp_path: Path, formatting):
    (tmp_path / "a.json").write_text(json.dumps([{"instruction": "q", "output": "a"}]))
    entry = {"x": {"file_name": "a.json", "formatting": formatting}}
    (tmp_path / "dataset_info.json").write_text(json.dumps(entry))
    where = f"dataset 'x' in {tmp_path / 'dataset_info.json'}"
    expected = (
        f"{where} has formatting '{formatting}'; this tool reads alpaca and sharegpt "
        "(OpenAI-style messages are sharegpt with tags role_tag 'role', content_tag "
        "'content', user_tag 'user', assistant_tag 'assistant', system_tag 'system')"
    )
    with pytest.raises(DatasetError, match=f"^{re.escape(expected)}$"):
        load_samples(DatasetSpec("x", str(tmp_path)))


def test_a_source_converts_by_its_formatting():
    alpaca = Source("file a.json", (), AlpacaColumns())
    sharegpt = Source("file c.json", (), SharegptColumns(), Tags())
    assert converter(alpaca)({"instruction": "q", "output": "a"}) == Sample((("q", "a"),), "")
    conversation = [{"from": "human", "value": "q"}, {"from": "gpt", "value": "a"}]
    assert converter(sharegpt)({"conversations": conversation}) == Sample((("q", "a"),), "")
