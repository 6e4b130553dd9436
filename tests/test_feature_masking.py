"""SpecAugment-style masking: identity outside training, bounded contiguous spans inside."""

import keras
import numpy as np
import pytest

from keras_dae.models import StreamTower
from keras_dae.models.feature_masking import FeatureMasking


def masked_spans(row: np.ndarray) -> list[tuple[int, int]]:
    """(start, stop) of each run of True."""
    edges = np.flatnonzero(np.diff(np.concatenate([[0], row.astype(int), [0]])))
    return list(zip(edges[::2], edges[1::2], strict=True))


def test_identity_outside_training():
    layer = FeatureMasking(time_masks=3, feature_masks=3, seed=0)
    x = np.random.default_rng(0).standard_normal((2, 40, 12)).astype("float32")
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(layer(x)), x)
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(layer(x, training=False)), x)


def test_training_masks_whole_frames_and_channels_within_bounds():
    frames, features = 100, 40
    layer = FeatureMasking(time_masks=2, time_mask_fraction=0.1, feature_masks=1,
                           feature_mask_fraction=0.2, mask_value=-7.0, seed=3)
    x = np.ones((64, frames, features), "float32")
    y = keras.ops.convert_to_numpy(layer(x, training=True))
    assert set(np.unique(y)) <= {1.0, -7.0}
    masked = y == -7.0
    time_rows = masked.all(axis=2)        # (batch, frames): whole frames masked
    channel_rows = masked.all(axis=1)     # (batch, features): whole channels masked
    # Every masked value lies in a masked frame or a masked channel.
    assert not (masked & ~time_rows[:, :, None] & ~channel_rows[:, None, :]).any()
    for b in range(len(x)):
        spans = masked_spans(time_rows[b])
        assert len(spans) <= 2 and time_rows[b].sum() <= 2 * 10
        channels = masked_spans(channel_rows[b])
        assert len(channels) <= 1 and channel_rows[b].sum() <= 8
    # Something is masked in most examples, and not always the same place.
    assert time_rows.any(axis=1).mean() > 0.7
    assert len({tuple(np.flatnonzero(r)) for r in time_rows}) > 10


def test_zero_masks_is_identity_in_training():
    layer = FeatureMasking(time_masks=0, feature_masks=0)
    x = np.ones((2, 10, 4), "float32")
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(layer(x, training=True)), x)


@pytest.mark.parametrize("bad", [dict(time_masks=-1), dict(feature_masks=1.5),
                                 dict(time_mask_fraction=1.5)])
def test_bad_arguments_are_refused(bad):
    with pytest.raises(ValueError):
        FeatureMasking(**bad)


def test_tower_config_round_trip_and_switching():
    tower = StreamTower(d_model=16, num_layers=1, num_heads=2, intermediate_dim=32,
                        feature_masking={"time_masks": 1, "time_mask_fraction": 0.5})
    x = np.ones((3, 20, 6), "float32")
    tower(x)
    config = tower.get_config()
    assert config["feature_masking"] == {"time_masks": 1, "time_mask_fraction": 0.5}
    clone = StreamTower.from_config(config)
    assert clone.masking.time_masks == 1
    assert clone.masking.feature_masks == FeatureMasking().feature_masks  # layer default
    tower.set_feature_masking(None)
    assert tower.get_config()["feature_masking"] is None
    assert tower.masking.time_masks == 0 and not tower.masking.active
    # The masking layer holds no weights: switching it changes no weight file.
    assert tower.masking.trainable_weights == []
