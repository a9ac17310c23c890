"""The white balance's background share and level and Reinhard's target colour have config addresses
(data.preprocess.*) and travel in the checkpoint with the switches: editing a default can no longer change
what an old checkpoint sees, and a checkpoint that predates the keys reads today's defaults."""

from __future__ import annotations

import numpy as np
import pytest

from tests.helpers_models import compose_cfg
from wbc.data.transforms import Preprocess


def test_the_constants_are_data_preprocess_keys_with_the_old_values(tmp_path) -> None:
    for data in ("synthetic", "segmentation_wbc", "all_idb2", "cross_cls_d1_to_d2", "lodo_seg_d1"):
        cfg = compose_cfg("train.yaml", [f"data={data}", "data.preprocess.stain_target=[[190,50],[135,12],[140,15]]",
                                         "data.preprocess.white_balance_level=230"], tmp_path / data)
        pre = Preprocess.from_config(cfg.data.preprocess)
        assert pre.stain_target == ((190.0, 50.0), (135.0, 12.0), (140.0, 15.0)) and pre.white_balance_level == 230.0
    old = Preprocess.from_config({"grayscale": False, "clahe": False, "white_balance": True, "stain_norm": "reinhard"})
    assert old.white_balance_share == 0.1 and old.white_balance_level == 235.0  # a checkpoint before the keys
    assert old.stain_target == ((198.0, 54.0), (138.0, 15.0), (141.0, 17.0))
    assert Preprocess.from_config(old.to_dict()) == old and Preprocess.same(old.to_dict(), {"white_balance": True, "clahe": False,
                                                                                           "stain_norm": "reinhard"})


def test_the_stored_values_are_what_runs() -> None:
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (40, 50, 3), dtype=np.uint8)
    base = Preprocess(clahe=False, white_balance=True)
    brighter = Preprocess.from_config({**base.to_dict(), "white_balance_level": 250.0})
    assert not Preprocess.same(base.to_dict(), brighter.to_dict())
    assert brighter(rgb).astype(float).mean() > base(rgb).astype(float).mean()
    pink = Preprocess.from_config({"clahe": False, "stain_norm": "reinhard", "stain_target": [[150, 40], [150, 10], [120, 10]]})
    import cv2

    lab = cv2.cvtColor(pink(rgb), cv2.COLOR_RGB2LAB).reshape(-1, 3).astype(float)
    assert abs(lab[:, 0].mean() - 150) < 5 and abs(lab[:, 1].mean() - 150) < 5


@pytest.mark.parametrize("key, value", [("white_balance_share", 0.0), ("white_balance_level", 300.0),
                                        ("stain_target", [[198, 54], [138, 15]]), ("stain_target", [[198, 0], [138, 15], [141, 17]]),
                                        ("stain_target", "pink")])
def test_bad_values_name_the_key(key: str, value) -> None:
    with pytest.raises(ValueError, match=f"data.preprocess.{key}="):
        Preprocess.from_config({key: value})
