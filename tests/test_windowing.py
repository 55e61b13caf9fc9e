import numpy as np
import pytest

from sam2volume import CT_PRESETS, InputError, choose_window, read_volume
from sam2volume.windowing import Window, percentile_window


def test_ct_presets_map_level_and_width(totalseg):
    vol = read_volume(totalseg / "example_ct_sm.nii.gz")
    before = vol.array.copy()
    w = choose_window(vol.array, modality=vol.meta["modality"])  # auto -> abdomen for CT
    assert (w.low, w.high) == (40 - 200, 40 + 200)
    out = w.apply(vol.array)
    assert out.dtype == np.float32 and out.min() == 0.0 and out.max() == 1.0
    np.testing.assert_array_equal(vol.array, before)  # the loaded volume never changes
    for name, (width, level) in CT_PRESETS.items():
        win = choose_window(vol.array, preset=name)
        assert win.high - win.low == pytest.approx(width)
        assert (win.high + win.low) / 2 == pytest.approx(level)
        assert win.apply(np.array([level]))[0] == pytest.approx(0.5)


def test_mr_percentile_rule_uses_nonzero_voxels(totalseg):
    vol = read_volume(totalseg / "example_mr_sm.nii.gz")
    w = choose_window(vol.array, modality="MR")
    nz = vol.array[vol.array != 0].astype(float)
    assert w.low == pytest.approx(np.percentile(nz, 0.5))
    assert w.high == pytest.approx(np.percentile(nz, 99.5))


def test_explicit_window_and_errors():
    w = choose_window(np.zeros(3), width=100, level=50)
    assert (w.low, w.high) == (0, 100)
    with pytest.raises(InputError, match="both"):
        choose_window(np.zeros(3), width=100)
    with pytest.raises(InputError, match="unknown window preset 'nope'"):
        choose_window(np.zeros(3), preset="nope")
    with pytest.raises(InputError, match="positive"):
        Window.from_width_level(0, 3)
    assert percentile_window(np.zeros((3, 3))) == Window(0.0, 1.0)


def test_ct_preset_on_mr_warns_and_says_what_was_used(totalseg):
    """Before: a CT preset on an MR was used without a word (most of the image clipped)."""
    import pytest

    from sam2volume import read_volume

    mr = read_volume(totalseg / "example_mr_sm.nii.gz")
    with pytest.warns(UserWarning, match=r"preset 'abdomen' is for CT .* used it as asked. For MR use 'percentile'"):
        w = choose_window(mr.array, mr.meta["modality"], preset="abdomen")
    assert (w.low, w.high) == (-160.0, 240.0)
