"""Dataset readers and the organ vocabulary, on small layouts built from the real files in ../shared/data."""

import json

import numpy as np
import pytest
from eval_helpers import AMOS_LABELS, link, relabel, totalseg_ids

from sam2volume import InputError, read_labelmap
from sam2volume.evaluation.datasets import BTCV_LABELS, read_dataset
from sam2volume.evaluation.vocabulary import NSD_TOLERANCES_MM, canonical_labels, canonical_name

CT, SEG, MR, SEG_MR = "example_ct_sm.nii.gz", "example_seg.nii.gz", "example_mr_sm.nii.gz", "example_seg_mr.nii.gz"


def test_vocabulary_maps_btcv_amos_and_totalsegmentator_names_to_the_same_organs(totalseg):
    btcv = {canonical_name(n) for n in BTCV_LABELS.values()}
    amos = {canonical_name(n) for k, n in AMOS_LABELS.items() if k != "0"}
    total = set(totalseg_ids(totalseg))
    assert None not in btcv and None not in amos
    assert btcv <= total  # every BTCV organ has a TotalSegmentator label of the same canonical name
    assert amos - total == {"prostate_uterus"}  # TotalSegmentator has no prostate/uterus label in ct_total
    assert canonical_name("arota") == "aorta" and canonical_name("postcava") == "inferior_vena_cava"
    assert canonical_name("Right Kidney") == canonical_name("kidney_right") == "kidney_right"
    # FLARE22's table uses the same names
    assert set(NSD_TOLERANCES_MM["flare22"]) <= btcv | {"duodenum"}


def test_bare_lesion_names_take_their_organ_from_the_dataset():
    assert canonical_labels({1: "liver", 2: "cancer"})[0] == {1: "liver", 2: "liver_tumor"}
    assert canonical_labels({1: "pancreas", 2: "cancer"})[0] == {1: "pancreas", 2: "pancreas_tumor"}
    assert canonical_labels({1: "cancer"}, "Task06_Lung")[0] == {1: "lung_tumor"}
    names, unknown = canonical_labels({1: "tumor"})
    assert unknown == ["tumor"] and names == {1: "tumor"}


def test_btcv_layout_pairs_img_and_label_and_skips_unlabelled_images(totalseg, tmp_path):
    root = tmp_path / "BTCV"
    link(totalseg / CT, root / "RawData/Training/img/img0001.nii.gz")
    counts = relabel(totalseg, CT, SEG, "ct_total", BTCV_LABELS, root / "RawData/Training/label/label0001.nii.gz")
    link(totalseg / CT, root / "RawData/Testing/img/img0061.nii.gz")
    ds = read_dataset(root)
    assert ds.layout == "btcv" and [c.case_id for c in ds.cases] == ["img0001"]
    assert ds.skipped[0]["case"] == "img0061" and "not scored" in ds.skipped[0]["reason"]
    assert ds.objects["aorta"] == (8,) and ds.objects["portal_vein_and_splenic_vein"] == (10,) and len(ds.objects) == 13
    lab = read_labelmap(ds.cases[0].label)
    for organ in ("liver", "spleen", "kidney_right"):  # ids in the written label file give back the real organs
        assert int(np.isin(lab.array, ds.objects[organ]).sum()) == counts[organ] > 0


def test_amos_layout_reads_dataset_json_its_spelling_and_mri_ids(totalseg, tmp_path):
    root = tmp_path / "amos22"
    target = {int(k): v for k, v in AMOS_LABELS.items() if k != "0"}
    link(totalseg / CT, root / "imagesTr/amos_0001.nii.gz")
    relabel(totalseg, CT, SEG, "ct_total", target, root / "labelsTr/amos_0001.nii.gz")
    link(totalseg / MR, root / "imagesVa/amos_0507.nii.gz")
    relabel(totalseg, MR, SEG_MR, "mr_total", target, root / "labelsVa/amos_0507.nii.gz")
    link(totalseg / CT, root / "imagesTs/amos_0600.nii.gz")
    (root / "dataset.json").write_text(json.dumps({
        "name": "AMOS", "labels": AMOS_LABELS,
        "training": [{"image": "./imagesTr/amos_0001.nii.gz", "label": "./labelsTr/amos_0001.nii.gz"}],
        "validation": [{"image": "./imagesVa/amos_0507.nii.gz", "label": "./labelsVa/amos_0507.nii.gz"}],
    }))
    ds = read_dataset(root)
    assert ds.layout == "amos"
    assert {c.case_id: c.modality for c in ds.cases} == {"amos_0001": "CT", "amos_0507": "MR"}
    assert ds.objects["aorta"] == (8,) and ds.objects["inferior_vena_cava"] == (9,) and len(ds.objects) == 15
    assert [s["case"] for s in ds.skipped] == ["amos_0600"]
    mr_lab = read_labelmap(ds.cases[1].label)
    assert (mr_lab.array == ds.objects["liver"][0]).sum() > 1000  # the MR's liver under AMOS's id 6


def test_kits_layout_prefers_the_majority_vote_label_and_scores_regions(totalseg, tmp_path):
    root = tmp_path / "kits21"
    kits = {1: "kidney_right", 2: "kidney_left", 3: "gallbladder"}  # real shapes standing in for kidney/tumor/cyst
    for case in ("case_00000", "case_00001"):
        link(totalseg / CT, root / "data" / case / "imaging.nii.gz")
        relabel(totalseg, CT, SEG, "ct_total", kits, root / "data" / case / "segmentation.nii.gz")
    relabel(totalseg, CT, SEG, "ct_total", {1: "liver"}, root / "data/case_00001/aggregated_MAJ_seg.nii.gz")
    link(totalseg / CT, root / "data/case_00002/imaging.nii.gz")
    ds = read_dataset(root)
    assert ds.layout == "kits" and ds.tolerances == "kits21"
    assert ds.objects == {"kidney_and_masses": (1, 2, 3), "kidney_masses": (2, 3), "kidney_tumor": (2,)}
    assert [c.label.name for c in ds.cases] == ["segmentation.nii.gz", "aggregated_MAJ_seg.nii.gz"]
    assert ds.skipped[0]["case"] == "case_00002"
    assert NSD_TOLERANCES_MM["kits21"]["kidney_masses"] == pytest.approx(1.3929527150618852)


def test_nnunet_layout_with_name_to_id_labels_and_regions(totalseg, tmp_path):
    root = tmp_path / "Dataset001_Abdomen"
    link(totalseg / CT, root / "imagesTr/abd_001_0000.nii.gz")
    relabel(totalseg, CT, SEG, "ct_total", {1: "liver", 2: "kidney_right", 3: "kidney_left"}, root / "labelsTr/abd_001.nii.gz")
    link(totalseg / CT, root / "imagesTr/abd_002_0000.nii.gz")
    (root / "dataset.json").write_text(json.dumps({
        "channel_names": {"0": "CT"}, "file_ending": ".nii.gz", "numTraining": 2,
        "labels": {"background": 0, "liver": 1, "Right Kidney": 2, "left kidney": 3, "kidneys": [2, 3]},
    }))
    ds = read_dataset(root)
    assert ds.layout == "nnunet" and ds.cases[0].case_id == "abd_001" and ds.cases[0].modality == "CT"
    assert ds.objects == {"liver": (1,), "kidney_right": (2,), "kidney_left": (3,), "kidney": (2, 3)}
    assert ds.skipped[0]["case"] == "abd_002"


def test_msd_layout_with_id_to_name_labels(totalseg, tmp_path):
    root = tmp_path / "Task03_Liver"
    link(totalseg / CT, root / "imagesTr/liver_0.nii.gz")
    relabel(totalseg, CT, SEG, "ct_total", {1: "liver", 2: "gallbladder"}, root / "labelsTr/liver_0.nii.gz")
    (root / "dataset.json").write_text(json.dumps({
        "name": "Liver", "modality": {"0": "CT"}, "labels": {"0": "background", "1": "liver", "2": "cancer"},
        "training": [{"image": "./imagesTr/liver_0.nii.gz", "label": "./labelsTr/liver_0.nii.gz"}],
    }))
    ds = read_dataset(root)
    assert ds.layout == "msd" and ds.objects == {"liver": (1,), "liver_tumor": (2,)} and ds.cases[0].modality == "CT"
    multi = tmp_path / "Task01_BrainTumour"
    multi.mkdir()
    (multi / "dataset.json").write_text(json.dumps({"name": "BRATS", "modality": {"0": "FLAIR", "1": "T1w"}, "labels": {"0": "background", "1": "edema"},
                                                    "training": [{"image": "./imagesTr/a.nii.gz", "label": "./labelsTr/a.nii.gz"}]}))
    with pytest.raises(InputError, match="4D"):
        read_dataset(multi)


def test_plain_layout_with_a_text_label_file_and_bad_inputs(totalseg, tmp_path):
    root = tmp_path / "plain"
    link(totalseg / CT, root / "images/ct.nii.gz")
    relabel(totalseg, CT, SEG, "ct_total", {1: "liver", 2: "spleen"}, root / "labels/ct.nii.gz")
    link(totalseg / MR, root / "images/mr_no_label.nii.gz")
    (root / "labels.txt").write_text("# id name\n1 Liver\n2: Spleen\n")
    ds = read_dataset(root)
    assert ds.layout == "plain" and ds.objects == {"liver": (1,), "spleen": (2,)} and ds.skipped[0]["case"] == "mr_no_label"
    (root / "labels.txt").write_text("liver is one\n")
    with pytest.raises(InputError, match="line 1.*ID NAME"):
        read_dataset(root)
    with pytest.raises(InputError, match="several label maps.*KEY"):
        read_dataset(root, labels=totalseg / "labels.json")
    ds = read_dataset(root, labels=f"{totalseg / 'labels.json'}:ct_total")
    assert ds.objects["liver"] == (5,) and ds.objects["aorta"] == (52,)
    empty = tmp_path / "nothing"
    empty.mkdir()
    (empty / "notes.txt").write_text("x")
    with pytest.raises(InputError, match="no known dataset layout"):
        read_dataset(empty)
    with pytest.raises(InputError, match="needs a dataset.json"):
        read_dataset(empty, layout="amos")
    with pytest.raises(InputError, match="unknown dataset layout 'coco'"):
        read_dataset(root, layout="coco")
