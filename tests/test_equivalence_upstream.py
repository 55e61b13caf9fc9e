"""Our propagation equals upstream SAM2VideoPredictor's on the same frames and weights.

Upstream runs as its README shows: frames written to a JPEG folder, ``init_state`` on the folder,
prompts, ``propagate_in_video`` forward then ``reverse=True``. We decode the same JPEGs and hand
them to our Session as a volume (window 0..255), so both see identical pixels.
"""

import numpy as np
import pytest
import torch
from PIL import Image

from sam2_helpers import build_pair, ct_frames, engine_config
from sam2volume import Volume
from sam2volume.session import Session
from sam2volume.windowing import Window

pytestmark = pytest.mark.sam2


@pytest.fixture(scope="module")
def pair():
    return build_pair()


@pytest.fixture(scope="module")
def jpeg_video(tmp_path_factory, totalseg):
    folder = tmp_path_factory.mktemp("frames")
    for n, img in enumerate(ct_frames(totalseg)):
        Image.fromarray(img).save(folder / f"{n:05d}.jpg", quality=95)
    decoded = np.stack([np.array(Image.open(folder / f"{n:05d}.jpg").convert("RGB"))[..., 0] for n in range(len(list(folder.iterdir())))])
    return folder, decoded


def _upstream_masks(predictor, folder, prompts, directions):
    out = {}
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
        state = predictor.init_state(str(folder))
        for p in prompts:
            predictor.add_new_points_or_box(state, frame_idx=p["frame"], obj_id=p["obj"], points=p.get("points"),
                                            labels=p.get("labels"), box=p.get("box"))
        for reverse in directions:
            for frame_idx, obj_ids, masks in predictor.propagate_in_video(state, reverse=reverse):
                for i, obj in enumerate(obj_ids):
                    out[(obj, frame_idx)] = (masks[i, 0] > 0).numpy()
    return out


def _our_masks(predictor, decoded, prompts, direction):
    vol = Volume(decoded.transpose(2, 1, 0).astype(np.float32))  # axial frame k = decoded[k]
    session = Session(vol, "axial", engine_config(dtype="bfloat16"), predictor=predictor, window=Window(0.0, 255.0))
    for p in prompts:
        if "box" in p:
            session.add_box(p["obj"], p["box"], slice_index=p["frame"])
        if "points" in p:
            ijk = [[x, y, p["frame"]] for x, y in p["points"]]
            session.add_points(p["obj"], ijk, p["labels"])
    session.propagate(direction, stop_after=None)
    return session


CASES = {
    "box": [{"obj": 1, "frame": 3, "box": [30, 40, 90, 100]}],
    "points": [{"obj": 1, "frame": 4, "points": [[64, 60], [20, 20]], "labels": [1, 0]}],
    "two_objects": [
        {"obj": 1, "frame": 2, "box": [30, 40, 90, 100]},
        {"obj": 2, "frame": 5, "points": [[70, 50]], "labels": [1]},
    ],
}


@pytest.mark.parametrize("case", list(CASES))
def test_both_directions_equal_upstream(pair, jpeg_video, case):
    upstream, ours = pair
    folder, decoded = jpeg_video
    prompts = CASES[case]
    ref = _upstream_masks(upstream, folder, prompts, directions=[False, True])
    session = _our_masks(ours, decoded, prompts, "both")
    assert len(ref) == len({p["obj"] for p in prompts}) * len(decoded)
    fractions = [m.mean() for m in ref.values()]
    assert any(0.001 < f < 0.999 for f in fractions), fractions  # the comparison is not trivially empty/full
    for (obj, frame), mask in ref.items():
        np.testing.assert_array_equal(session.frame_mask(obj, frame), mask, err_msg=f"object {obj}, frame {frame}")


def test_backward_only_equals_upstream_reverse(pair, jpeg_video):
    upstream, ours = pair
    folder, decoded = jpeg_video
    prompts = [{"obj": 1, "frame": 5, "box": [30, 40, 90, 100]}]
    ref = _upstream_masks(upstream, folder, prompts, directions=[True])
    session = _our_masks(ours, decoded, prompts, "backward")
    assert sorted(f for _, f in ref) == list(range(6))
    for (obj, frame), mask in ref.items():
        np.testing.assert_array_equal(session.frame_mask(obj, frame), mask)
    assert not session.frame_mask(1, 7).any()  # never visited
