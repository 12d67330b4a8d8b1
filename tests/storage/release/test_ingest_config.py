import math

import pytest

from daug_core.settings import ConfigError
from storage.release.ingest_config import DEFAULT_MAX_DECODED_MB, ReaderConfig


@pytest.mark.parametrize("value", [math.nan, math.inf, 0.0, -5.0])
def test_the_decode_budget_is_a_finite_positive_number(value):
    with pytest.raises(ConfigError, match=r"ReaderConfig\.max_decoded_mb must be a finite"):
        ReaderConfig(max_decoded_mb=value)


def test_reader_config_round_trips_and_old_records_mean_the_default_budget():
    config = ReaderConfig(views=("PA",), image_format="dicom", max_decoded_mb=0.5)
    assert ReaderConfig.from_dict(config.as_dict()) == config
    assert config.max_decoded_bytes == 1 << 19
    old = {k: v for k, v in config.as_dict().items() if k != "max_decoded_mb"}
    assert ReaderConfig.from_dict(old).max_decoded_mb == DEFAULT_MAX_DECODED_MB == 128.0
    # A 4096 x 4096 16-bit radiograph fits the default budget four times over.
    assert ReaderConfig().max_decoded_bytes == 4 * 4096 * 4096 * 2
