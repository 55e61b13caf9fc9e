"""``compile=True`` (``--compile``): the compiled model gives the plain model's masks.

SAM2 hiera tiny, random weights, 128 px, float32, five real CT slices (../shared/data), a box on the
middle slice, propagated both ways. torch.compile's CPU backend (inductor) generates C++ and needs a
compiler; compiling takes one to two minutes here, which is why this is the only compiled test.
"""

from __future__ import annotations

import shutil

import numpy as np
import pytest

from sam2_helpers import engine_config

pytest.importorskip("sam2")
pytestmark = pytest.mark.skipif(not (shutil.which("g++") or shutil.which("c++")),
                                reason="torch.compile on CPU needs a C++ compiler (g++ or c++ on PATH)")


def test_compiled_model_gives_the_plain_models_masks(totalseg):
    from sam2volume import Volume, read_volume
    from sam2volume.engine.predictor import CompiledVideoPredictor, build_predictor
    from sam2volume.session import Session

    ct = read_volume(totalseg / "example_ct_sm.nii.gz")
    vol = Volume(np.ascontiguousarray(ct.array[:, :, 22:27]), ct.spacing, ct.origin, ct.direction, ct.meta)
    box = [[45, 27, 2], [104, 85, 2]]
    runs = {}
    for compiled in (False, True):
        cfg = engine_config(dtype="float32", compile=compiled)
        predictor = build_predictor(cfg)
        assert isinstance(predictor, CompiledVideoPredictor) == compiled
        s = Session(vol, "axial", cfg, predictor=predictor)
        s.add_box(1, box)
        s.propagate(stop_after=None)
        runs[compiled] = (np.stack([s.frame_logits(1, k) for k in range(5)]), s.result().array)
    (plain_logits, plain_mask), (comp_logits, comp_mask) = runs[False], runs[True]
    # the same weights (same seed); compiled kernels fuse and round differently, so logits are close, not equal
    np.testing.assert_allclose(comp_logits, plain_logits, atol=1e-2)
    assert plain_mask.any()
    assert (comp_mask == plain_mask).mean() >= 0.999
