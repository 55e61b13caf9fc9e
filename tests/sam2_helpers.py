"""Helpers for tests that build SAM2 with random weights (small image size keeps them fast on CPU)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

IMAGE_SIZE = 128
CONFIG = "configs/sam2.1/sam2.1_hiera_t.yaml"


def engine_config(**kw):
    from sam2volume.engine.config import EngineConfig

    base = dict(model="sam2.1-hiera-tiny", image_size=IMAGE_SIZE, random_weights=True, device="cpu", seed=0)
    base.update(kw)
    return EngineConfig(**base)


def build_pair():
    """Upstream's SAM2VideoPredictor (built as its README does) and ours, with the same random weights."""
    import torch
    from sam2.build_sam import build_sam2_video_predictor

    from sam2volume.engine.predictor import build_predictor

    feat = IMAGE_SIZE // 16
    torch.manual_seed(0)
    upstream = build_sam2_video_predictor(
        CONFIG,
        ckpt_path=None,
        device="cpu",
        hydra_overrides_extra=[
            f"++model.image_size={IMAGE_SIZE}",
            f"++model.memory_attention.layer.self_attention.feat_sizes=[{feat},{feat}]",
            f"++model.memory_attention.layer.cross_attention.feat_sizes=[{feat},{feat}]",
        ],
    )
    ours = build_predictor(engine_config())
    ours.load_state_dict(upstream.state_dict())
    return upstream, ours


def ct_frames(totalseg: Path, n: int = 8, first: int = 10) -> np.ndarray:
    """n real axial CT slices, abdomen window, as IMAGE_SIZE x IMAGE_SIZE uint8 images (rows, cols)."""
    from PIL import Image

    from sam2volume import choose_window, read_volume

    ct = read_volume(totalseg / "example_ct_sm.nii.gz")
    canon = ct.reoriented(ct.reorientation_to("LPS"))
    win = choose_window(canon.array, "CT", "abdomen")
    out = []
    for k in range(first, first + n):
        img = (win.apply(canon.array[:, :, k].T) * 255).round().astype(np.uint8)
        out.append(np.array(Image.fromarray(img).resize((IMAGE_SIZE, IMAGE_SIZE), Image.BILINEAR)))
    return np.stack(out)
