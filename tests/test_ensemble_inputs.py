"""Classifier ensembles whose members were trained on different inputs: a Reinhard RGB classifier, its
grey + CLAHE twin and a nucleus-masked one average as one model (the cross-source recipe's members).
The crops stack every member's preprocessing (and the masked view when one member is masked); each
member reads its own channels in the pipeline, in evaluate.py, in AdaBN, in the ONNX export and in the
fine-tuning command predict.py prints. Untrained tiny models: the averaging is checked numerically."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from tests.helpers_data import cell
from tests.helpers_models import save_checkpoint, tiny_modules
from wbc.cli import evaluate
from wbc.ensemble import ClassifierEnsemble
from wbc.inference import CellPipeline

pytestmark = pytest.mark.usefixtures("one_thread")

GREY = ["data.preprocess.grayscale=true", "data.preprocess.clahe=true"]


@pytest.fixture(scope="module")
def members(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """A segmenter and three untrained classifiers: plain RGB, grey + CLAHE, nucleus-masked RGB."""
    tmp = tmp_path_factory.mktemp("inputs")
    seg, plain = tiny_modules(tmp / "rgb", seed=0)
    _, grey = tiny_modules(tmp / "grey", GREY, seed=1)
    _, masked = tiny_modules(tmp / "masked", ["data.crops.masked=true"], seed=2)
    return {"seg": seg, "plain": plain, "grey": grey, "masked": masked, "tmp": tmp}


def test_each_member_reads_its_own_channels(members) -> None:
    """RGB 3 + grey 1 channels, then the same again masked: 8; the mean is over members, not views."""
    plain, grey, masked = members["plain"], members["grey"], members["masked"]
    ens = ClassifierEnsemble([plain, grey, masked, plain], ["plain", "grey", "masked", "plain2"]).eval()
    info = ens.hparams.data_info
    assert info["input_groups"][1]["grayscale"] is True and info["crops"]["masked"] == "both"
    assert ens.member_group == [0, 1, 2, 0]
    assert [(i["preprocess"]["grayscale"], i["crops"]["masked"]) for i in ens.group_infos()] == [(False, False), (True, False), (False, True)]
    assert all("input_groups" not in i for i in ens.group_infos())  # each view is one member's own input
    x = torch.rand(2, 8, 32, 32)
    pp, pg, pm = plain.predict_proba(x[:, :3]), grey.predict_proba(x[:, 3:4]), masked.predict_proba(x[:, 4:7])
    assert not torch.allclose(pp, pg) and not torch.allclose(pp, pm)
    torch.testing.assert_close(ens.predict_proba(x), (2 * pp + pg + pm) / 4, atol=1e-6, rtol=0)
    with pytest.raises(ValueError, match=r"takes 8 channels \(its members' inputs \[3, 1\], stacked, plain then nucleus-masked"):
        ens.predict_proba(x[:, :4])
    two = ClassifierEnsemble([grey, plain])  # no masked member: RGB and grey only, in the members' order
    assert two.member_group == [0, 1] and [g["grayscale"] for g in two.hparams.data_info["input_groups"]] == [True, False]
    y = x[:, :4]
    torch.testing.assert_close(two.predict_proba(y), (grey.predict_proba(y[:, :1]) + plain.predict_proba(y[:, 1:])) / 2,
                               atol=1e-6, rtol=0)


def test_the_pipeline_averages_what_each_member_gives_alone(members) -> None:
    """CellPipeline cuts the cells from the stacked preprocessings: class probabilities are the mean of
    what each classifier gives in a pipeline of its own, and AdaBN adapts each member on its own input."""
    seg, plain, grey, masked = members["seg"], members["plain"], members["grey"], members["masked"]
    rgb = cell(48, seed=7)[0]
    singles = [CellPipeline(seg, m)(rgb) for m in (plain, grey, masked)]
    pipe = CellPipeline(seg, ClassifierEnsemble([plain, grey, masked]))
    res = pipe(rgb)
    assert len(res.crops) == len(singles[0].crops) > 0 and res.crops[0].shape[2] == 8
    np.testing.assert_allclose(res.class_probs, sum(s.class_probs for s in singles) / 3, atol=1e-6)

    before = [{k: v.clone() for k, v in m.state_dict().items()} for m in (plain, grey, masked)]
    adapted = CellPipeline(seg, ClassifierEnsemble([plain, grey, masked]))
    assert adapted.adapt_batchnorm([rgb, cell(48, seed=8)[0]], models=("classifier",)) == 2
    moved = [any(not torch.equal(v, m.state_dict()[k]) for k, v in b.items() if "running_mean" in k)
             for b, m in zip(before, (plain, grey, masked))]
    assert all(moved)  # every member saw crops: its own channels (a wrong slice would have raised)
    for b, m in zip(before, (plain, grey, masked)):
        m.load_state_dict(b)


def test_evaluate_scores_each_member_on_its_own_crops(members, make_eval_cfg, tmp_path: Path) -> None:
    """evaluate.py on ground-truth crops: one DataModule per member input, each member's predictions those it
    gives alone, the ensemble's their mean."""
    from tests.test_ensemble import probs

    ckpts = [save_checkpoint(members[n], tmp_path / f"{n}.ckpt") for n in ("plain", "grey")]
    cls_data = ("data=synthetic_tiny", "data._target_=datamodules.classification.ClassificationDataModule")
    metrics, out = evaluate.evaluate(make_eval_cfg(f"[{ckpts[0]},{ckpts[1]}]", *cls_data))
    eval_dir = tmp_path / "eval"
    both = [probs(eval_dir / "members" / m / "predictions.csv") for m in ("member0", "member1")]
    np.testing.assert_allclose(probs(eval_dir / "predictions.csv"), (both[0] + both[1]) / 2, atol=2e-5)
    assert "test/macro_f1" in metrics and isinstance(out["module"], ClassifierEnsemble)
    evaluate.evaluate(make_eval_cfg(ckpts[1], *cls_data))  # the grey one alone (same output dir)
    np.testing.assert_allclose(both[1], probs(eval_dir / "predictions.csv"), atol=1e-5)


def test_export_and_fine_tuning_command_of_a_mixed_ensemble(members, tmp_path: Path) -> None:
    """export.py writes the ensemble as one graph of 4 input channels that the ONNX pipeline feeds from
    export.json; the fine-tuning command predict.py prints gives the first member's own inputs, not the stack."""
    pytest.importorskip("onnxruntime")
    from wbc.cli import export
    from wbc.cli.predict import fine_tune_inputs
    from wbc.onnx_backend import pipeline_from_export

    seg, grey, plain = members["seg"], members["grey"], members["plain"]
    seg_ckpt = save_checkpoint(seg, tmp_path / "seg" / "checkpoints" / "last.ckpt")
    ckpts = [save_checkpoint(m, tmp_path / n / "checkpoints" / "last.ckpt") for n, m in (("grey", grey), ("plain", plain))]
    meta = export.export([f"segmenter={seg_ckpt}", f"classifier=[{ckpts[0]},{ckpts[1]}]", f"out={tmp_path / 'export'}"])
    assert meta["classifier"]["input_shape"][1] == 4 and len(meta["classifier"]["data_info"]["input_groups"]) == 2
    eager = CellPipeline(seg, ClassifierEnsemble([grey, plain]))
    onnx = pipeline_from_export(tmp_path / "export")
    rgb = cell(48, seed=9)[0]
    a, b = eager(rgb), onnx(rgb)
    assert len(a.crops) > 0
    np.testing.assert_allclose(b.class_probs, a.class_probs, atol=1e-4, rtol=0)

    inputs = fine_tune_inputs(eager)
    assert "data.preprocess.grayscale=true" in inputs and "data.crops.masked=false" in inputs
    assert fine_tune_inputs(onnx) == inputs  # the export records what each member reads (data_info.member_inputs)
    assert fine_tune_inputs(CellPipeline(seg, ClassifierEnsemble([plain, grey]))).count("data.preprocess.grayscale=false") == 1
    masked_first = CellPipeline(seg, ClassifierEnsemble([members["masked"], plain]))
    assert "data.crops.masked=true" in fine_tune_inputs(masked_first)
    old = CellPipeline(seg, ClassifierEnsemble([grey, plain]))
    del old.classifier.hparams.data_info["member_inputs"]  # an export written before it was recorded: warned, first group
    assert "data.preprocess.grayscale=true" in fine_tune_inputs(old)

    from wbc.web.model_info import describe

    card = describe(onnx, str(tmp_path / "export"), "ONNX export")["classifier_inputs"]
    assert card == "grey (CLAHE) and RGB (CLAHE), crops; 2 models averaged, each on its own input"


def test_crops_people_see_are_the_first_members_input(members, tmp_path: Path) -> None:
    """Crops that stack RGB and grey (and masked views) are written as the first member's input: an RGB PNG
    for [plain, grey], a grey one for [grey, plain], never a 4- or 8-channel array (predict.py's crops/)."""
    from PIL import Image

    from tests.helpers_data import write_image
    from wbc.predict_io import _predict_one

    seg, plain, grey, masked = members["seg"], members["plain"], members["grey"], members["masked"]
    f = write_image(tmp_path / "field.png", cell(48, seed=7)[0])
    for order, mode in (((plain, grey, masked), "RGB"), ((grey, plain), "L")):
        pipe = CellPipeline(seg, ClassifierEnsemble(list(order)))
        out = tmp_path / mode
        assert _predict_one(pipe, f, "field", out, 50.0, True, None, []) is not None
        pngs = sorted((out / "crops").glob("*.png"))
        assert pngs and {Image.open(p).mode for p in pngs} == {mode}


def test_the_web_page_shows_and_zips_the_first_members_input(members) -> None:
    """The web app with a [grey, plain] classifier ensemble: classify works on the 4-channel crops, one
    cell's crop and the crops / all-images ZIPs are grey PNGs (the first member's input)."""
    import io
    import zipfile

    from fastapi.testclient import TestClient

    from tests.helpers_web import decode, field, png, upload, web_pipeline
    from wbc.web.app import create_app

    ens = ClassifierEnsemble([members["grey"], members["plain"]])
    with TestClient(create_app(web_pipeline(ens))) as client:
        iid = upload(client, png(field())).json()["id"]
        assert client.post(f"/api/images/{iid}/segment").status_code == 200
        cls = client.post(f"/api/images/{iid}/classify")
        assert cls.status_code == 200 and sum(cls.json()["counts"].values()) == 3
        assert decode(client.get(f"/api/images/{iid}/crops/1.png").content).ndim == 2
        with zipfile.ZipFile(io.BytesIO(client.get(f"/api/images/{iid}/files/all.zip").content)) as z:
            crops = [n for n in z.namelist() if n.startswith("crops/")]
            assert len(crops) == 3 and all(decode(z.read(n)).ndim == 2 for n in crops)


def test_the_model_card_says_what_each_member_reads(members) -> None:
    """The web page's model card names the ensemble's inputs and views in words."""
    from wbc.web.model_info import describe

    seg, plain, grey, masked = members["seg"], members["plain"], members["grey"], members["masked"]
    card = describe(CellPipeline(seg, ClassifierEnsemble([plain, grey, masked])), None, "checkpoints")
    assert card["classifier_inputs"] == "RGB (CLAHE) and grey (CLAHE), plain and nucleus-masked crops; 3 models averaged, each on its own input"
    assert describe(CellPipeline(seg, plain), None, "checkpoints")["classifier_inputs"] == "RGB (CLAHE), crops"
    assert describe(CellPipeline(seg, None), None, "checkpoints")["classifier_inputs"] is None
    folds = describe(CellPipeline(seg, ClassifierEnsemble([plain, plain])), None, "checkpoints")["classifier_inputs"]
    assert folds == "RGB (CLAHE), crops; 2 models averaged"  # a fold / seed ensemble: one input for all
