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
    with pytest.raises(ConfigError, match="res_blocks must be >= 0, got -1"):
        TrainConfig(architecture="conv", res_blocks=-1)
    with pytest.raises(ConfigError, match=r"res_blocks=2 needs architecture='conv'"):
        TrainConfig(architecture="mlp", res_blocks=2)


def test_image_size_and_channels_settings() -> None:
    assert TrainConfig.from_dict({"image_size": 32}).image_size == (32, 32)
    assert TrainConfig.from_dict({"image-size": [64, 48]}).image_size == (64, 48)
    assert TrainConfig.from_dict({"image_size": "20x24"}).image_size == (20, 24)
    assert TrainConfig.from_dict({"channels": 3, "dataset": "faces/"}).channels == 3
    # Runs and config files from before: `channels` held the conv widths.
    legacy = TrainConfig.from_dict({"channels": [4, 8]})
    assert legacy.conv_channels == (4, 8) and legacy.channels is None
    with pytest.raises(ConfigError, match=r"mnist is grayscale.*Leave --channels out"):
        TrainConfig(channels=3)
    with pytest.raises(ConfigError, match=r"1 \(grayscale\) or 3 \(RGB\).*conv_channels"):
        TrainConfig(channels=2, dataset="faces/")
    with pytest.raises(ConfigError, match="image_size"):
        TrainConfig.from_dict({"image_size": "big"})
    with pytest.raises(ConfigError, match="height and width >= 1"):
        TrainConfig.from_dict({"image_size": [0, 5]})


def test_conv_sizes_too_small_are_refused_with_the_minimum() -> None:
    with pytest.raises(ConfigError, match=r"at least 8x8 pixels.*got 6x6.*--architecture mlp"):
        TrainConfig(architecture="conv", image_size=(6, 6))
    with pytest.raises(ConfigError, match=r"at least 16x16 pixels.*4 stride-2"):
        TrainConfig(architecture="conv", image_size=(12, 40), conv_channels=(4, 4, 4, 4))
    TrainConfig(architecture="mlp", image_size=(6, 6))  # the MLP takes any size
    cfg = TrainConfig(architecture="conv", image_size=(8, 8))
    assert cfg.model_config().conv_channels == (32,)
    with pytest.raises(ConfigError, match="the data's images are 5x9"):
        TrainConfig(architecture="conv").model_config((1, 5, 9))
