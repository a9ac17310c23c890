"""The rows of `benchmarks/quality.py`'s results table: for each figure the experiment that trains it
(conf/experiment/quality_*.yaml), the metric read from each fold's metrics.json, its target (issues 6
and 16) and what judges it (the CV validation mean in domain; the held-out set's test split across
sets), or, for an ensemble row, the member rows whose runs of one seed and fold are scored as one model.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Row:
    experiment: str
    metric: str  # test metric in each fold's metrics.json
    target: float
    label: str
    per_part: bool = False  # trained on several sets (data=combined): print each set's figures too
    reference: str | None = None  # pipeline row: the ground-truth-crop figure it is compared with
    # what the target judges: the CV validation mean (in-domain) or the test split (LODO / cross-dataset: the held-out set)
    judged_on: str = "val"
    # further targets judged on the pooled out-of-fold crops: (validation metric, target, label)
    oof_targets: tuple[tuple[str, float, str], ...] = ()
    # a combined row's per-set targets (set name -> CV validation mean target): the sets' own rows' targets
    part_targets: tuple[tuple[str, float], ...] = ()
    # an ensemble row (no experiment of its own): these rows' runs of one seed and fold scored as one
    # model by evaluate.py (benchmarks/quality_ensembles.py)
    members: tuple[str, ...] = ()

    @property
    def val_metric(self) -> str:
        return self.metric.replace("test/", "val/")


# in-domain nucleus Dice targets (issue 16; dataset1's was 0.97): one set's own row and combined line share it
DICE_TARGETS = {"segmentation_wbc_d1": 0.975, "segmentation_wbc_d2": 0.98, "all_idb2": 0.975}

# the LODO rows' held-out sets: row key part, experiment name part, target (1.5 points under in-domain), name
LODO_SETS = (("d1", "d1", 0.9545, "dataset1"), ("d2", "d2", 0.9618, "dataset2"), ("idb2", "all_idb2", 0.951, "all_idb2"))

# the cross-source pipeline rows: (trained on, scored on, names)
CROSS_PAIRS = (("d1", "d2", "dataset1", "dataset2"), ("d2", "d1", "dataset2", "dataset1"))

ROWS = {
    "seg_d1": Row("quality_seg_d1", "test/dice_post", DICE_TARGETS["segmentation_wbc_d1"], "nucleus Dice, segmentation_wbc dataset1"),
    "seg_d2": Row("quality_seg_d2", "test/dice_post", DICE_TARGETS["segmentation_wbc_d2"], "nucleus Dice, segmentation_wbc dataset2"),
    "seg_idb2": Row("quality_seg_all_idb2", "test/dice_post", DICE_TARGETS["all_idb2"], "nucleus Dice, all_idb2"),
    "cls_idb2": Row("quality_cls_all_idb2", "test/balanced_accuracy", 0.98, "lymphoblast vs non-blast, all_idb2, balanced accuracy"),
    "cls_wbc": Row(
        "quality_cls_wbc", "test/macro_f1", 0.93, "4-class macro-F1, segmentation_wbc (both sets, basophil apart)",
        oof_targets=(("val/recall/eosinophil", 0.90, "eosinophil recall, 4-class, pooled OOF"),),
    ),
    # nucleus-masked crops, and the configured row's classifier + its masked twin as one (README "Plain and masked as one classifier")
    "cls_wbc_masked": Row("quality_cls_wbc_masked", "test/macro_f1", 0.93, "4-class macro-F1, segmentation_wbc, nucleus-masked crops",
                          oof_targets=(("val/recall/eosinophil", 0.90, "eosinophil recall, 4-class, pooled OOF"),)),
    "cls_wbc_pair": Row("", "test/macro_f1", 0.93, "4-class macro-F1, segmentation_wbc, plain + masked classifiers as one",
                        members=("cls_wbc", "cls_wbc_masked")),
    # targets of the cross-domain rows (issue 16): LODO within 1.5 Dice points of the in-domain CV
    # mean (0.9695 / 0.9768 / 0.9660); across datasets within 5 points of the in-domain 4-class CV macro-F1 (0.845)
    "seg_lodo_d1": Row("quality_seg_lodo_d1", "test/dice_post", 0.9545, "nucleus Dice, LODO: dataset1 by a segmenter of dataset2 + all_idb2", judged_on="test"),
    "seg_lodo_d2": Row("quality_seg_lodo_d2", "test/dice_post", 0.9618, "nucleus Dice, LODO: dataset2 by a segmenter of dataset1 + all_idb2", judged_on="test"),
    "seg_lodo_idb2": Row("quality_seg_lodo_all_idb2", "test/dice_post", 0.951, "nucleus Dice, LODO: all_idb2 by a segmenter of dataset1 + dataset2", judged_on="test"),
    # the same on grey + CLAHE, and both inputs averaged as one segmenter (README "Both inputs as one segmenter")
    **{f"seg_lodo_{s}_grey": Row(f"quality_seg_lodo_{e}_grey", "test/dice_post", t, f"nucleus Dice, LODO: {n}, grey + CLAHE", judged_on="test")
       for s, e, t, n in LODO_SETS},
    **{f"seg_lodo_{s}_both": Row("", "test/dice_post", t, f"nucleus Dice, LODO: {n}, RGB + grey + CLAHE segmenters as one ensemble", judged_on="test",
                                 members=(f"seg_lodo_{s}", f"seg_lodo_{s}_grey"))
       for s, e, t, n in LODO_SETS},
    # RGB trained through random convolutions (RandConv), alone and averaged with the grey twin (README "Both inputs as one segmenter")
    **{f"seg_lodo_{s}_randconv": Row(f"quality_seg_lodo_{e}_randconv", "test/dice_post", t, f"nucleus Dice, LODO: {n}, RGB + RandConv", judged_on="test")
       for s, e, t, n in LODO_SETS},
    **{f"seg_lodo_{s}_randconv_grey": Row("", "test/dice_post", t, f"nucleus Dice, LODO: {n}, RGB + RandConv and grey + CLAHE segmenters as one ensemble",
                                           judged_on="test", members=(f"seg_lodo_{s}_randconv", f"seg_lodo_{s}_grey"))
       for s, e, t, n in LODO_SETS},
    # one segmenter for all three sets (a lever for the in-domain targets): reported per set from each
    # fold's per-image Dice (`--collect` prints the parts), the pooled figure is the three sets' mean
    "seg_combined": Row("quality_seg_combined", "test/dice_post", 0.975, "nucleus Dice, one segmenter for dataset1 + dataset2 + all_idb2",
                         per_part=True, part_targets=tuple(DICE_TARGETS.items())),
    "cls_idb2_scratch": Row("quality_cls_all_idb2_scratch", "test/balanced_accuracy", 0.98, "lymphoblast vs non-blast, all_idb2, same network without pretraining"),
    "cls_wbc_scratch": Row("quality_cls_wbc_scratch", "test/macro_f1", 0.93, "4-class macro-F1, segmentation_wbc, same network without pretraining"),
    "cross_pipe_d1_d2": Row("quality_cross_pipeline_d1_to_d2", "pipeline/cell_macro_f1", 0.795,
                            "4-class cell macro-F1 (missed cells count), trained on dataset1, full pipeline on dataset2",
                            reference="classification/test/macro_f1", judged_on="test"),
    "cross_pipe_d2_d1": Row("quality_cross_pipeline_d2_to_d1", "pipeline/cell_macro_f1", 0.795,
                            "4-class cell macro-F1 (missed cells count), trained on dataset2, full pipeline on dataset1",
                            reference="classification/test/macro_f1", judged_on="test"),
    # with nucleus-masked crops, and plain + masked classifiers as one (README "Plain and masked as one classifier")
    **{f"cross_pipe_{a}_{b}_masked": Row(f"quality_cross_pipeline_{a}_to_{b}_masked", "pipeline/cell_macro_f1", 0.795,
                                         f"4-class cell macro-F1, trained on {src}, full pipeline on {dst}, nucleus-masked crops",
                                         reference="classification/test/macro_f1", judged_on="test")
       for a, b, src, dst in CROSS_PAIRS},
    **{f"cross_pipe_{a}_{b}_pair": Row("", "pipeline/cell_macro_f1", 0.795,
                                       f"4-class cell macro-F1, trained on {src}, full pipeline on {dst}, plain + masked classifiers as one",
                                       reference="classification/test/macro_f1", judged_on="test",
                                       members=(f"cross_pipe_{a}_{b}", f"cross_pipe_{a}_{b}_masked"))
       for a, b, src, dst in CROSS_PAIRS},
    # a grey + CLAHE classifier, and it as a third member beside the plain + masked pair
    **{f"cross_pipe_{a}_{b}_grey": Row(f"quality_cross_pipeline_{a}_to_{b}_grey", "pipeline/cell_macro_f1", 0.795,
                                       f"4-class cell macro-F1, trained on {src}, full pipeline on {dst}, grey + CLAHE classifier",
                                       reference="classification/test/macro_f1", judged_on="test")
       for a, b, src, dst in CROSS_PAIRS},
    **{f"cross_pipe_{a}_{b}_triple": Row("", "pipeline/cell_macro_f1", 0.795,
                                         f"4-class cell macro-F1, trained on {src}, full pipeline on {dst}, plain + masked + grey classifiers as one",
                                         reference="classification/test/macro_f1", judged_on="test",
                                         members=(f"cross_pipe_{a}_{b}", f"cross_pipe_{a}_{b}_masked", f"cross_pipe_{a}_{b}_grey"))
       for a, b, src, dst in CROSS_PAIRS},
    "pipeline_wbc": Row(
        "quality_pipeline_wbc", "pipeline/macro_f1", -0.02, "macro-F1 through the pipeline minus on ground-truth crops", reference="classification/test/macro_f1"
    ),
}
