from __future__ import annotations

import pytest

from training.config import ConfigError, TrainConfig


def test_config_validation_names_the_field() -> None:
    with pytest.raises(ConfigError, match="model='gan'"):
        TrainConfig(model="gan")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="latent_dim must be > 0"):
        TrainConfig(latent_dim=0)
    with pytest.raises(ConfigError, match="unknown setting 'hiden'"):
        TrainConfig.from_dict({"hiden": [3]})
    with pytest.raises(ConfigError, match="binarize needs"):
        TrainConfig(binarize=True, likelihood="gaussian")
