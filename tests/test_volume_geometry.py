import itertools

import numpy as np
import pytest

from sam2volume import InputError, Volume
from sam2volume.volume import Reorientation


def _random_rotation(rng):
    q, _ = np.linalg.qr(rng.normal(size=(3, 3)))
    return q


def test_index_physical_roundtrip_lps_and_ras():
    rng = np.random.default_rng(0)
    vol = Volume(np.zeros((5, 6, 7)), spacing=[0.7, 1.3, 2.5], origin=[-10.0, 4.0, 33.0], direction=_random_rotation(rng))
    ijk = rng.uniform(0, 5, size=(20, 3))
    lps = vol.index_to_lps(ijk)
    np.testing.assert_allclose(vol.lps_to_index(lps), ijk, atol=1e-12)
    ras = vol.index_to_ras(ijk)
    np.testing.assert_allclose(ras[:, :2], -lps[:, :2])
    np.testing.assert_allclose(ras[:, 2], lps[:, 2])
    np.testing.assert_allclose(vol.ras_to_index(ras), ijk, atol=1e-12)
    homog = np.c_[ijk, np.ones(len(ijk))]
    np.testing.assert_allclose((vol.ijk_to_ras @ homog.T).T[:, :3], ras, atol=1e-12)


@pytest.mark.parametrize("perm", list(itertools.permutations(range(3))))
@pytest.mark.parametrize("signs", list(itertools.product([1.0, -1.0], repeat=3)))
def test_reorientation_is_exact_both_ways(perm, signs):
    direction = np.zeros((3, 3))
    for a, w in enumerate(perm):
        direction[w, a] = signs[a]
    rng = np.random.default_rng(1)
    arr = rng.integers(0, 100, size=(4, 5, 6)).astype(np.int16)
    vol = Volume(arr, spacing=[1.0, 2.0, 3.0], origin=[5.0, -7.0, 11.0], direction=direction)
    reo = vol.reorientation_to("LPS")
    can = vol.reoriented(reo)
    assert can.orientation == "LPS"
    np.testing.assert_allclose(can.direction, np.eye(3), atol=1e-12)
    # every voxel keeps its value and physical position
    for ijk in [(0, 0, 0), (3, 4, 5), (1, 2, 3)]:
        new = reo.apply_index(np.array(ijk), vol.shape).astype(int)
        assert can.array[tuple(new)] == arr[ijk]
        np.testing.assert_allclose(can.index_to_lps(new), vol.index_to_lps(ijk), atol=1e-9)
        np.testing.assert_allclose(reo.invert_index(new, vol.shape), ijk)
    np.testing.assert_array_equal(vol.undo_reorientation(reo, can.array), arr)


def test_reorientation_of_oblique_volume_keeps_positions():
    rng = np.random.default_rng(3)
    rot = _random_rotation(rng)
    vol = Volume(rng.normal(size=(3, 4, 5)), spacing=[1, 2, 3], origin=[1, 2, 3], direction=rot)
    reo = vol.reorientation_to("RAS")
    can = vol.reoriented(reo)
    idx = np.array([2, 1, 4])
    np.testing.assert_allclose(can.index_to_lps(reo.apply_index(idx, vol.shape)), vol.index_to_lps(idx), atol=1e-9)


def test_orientation_codes_follow_nibabel():
    nib = pytest.importorskip("nibabel")
    rng = np.random.default_rng(2)
    for _ in range(10):
        perm = rng.permutation(3)
        direction = np.zeros((3, 3))
        for a in range(3):
            direction[perm[a], a] = rng.choice([-1.0, 1.0])
        vol = Volume(np.zeros((2, 2, 2)), direction=direction)
        assert vol.orientation == "".join(nib.aff2axcodes(vol.ijk_to_ras))


def test_bad_volumes_are_refused():
    with pytest.raises(InputError, match="3D"):
        Volume(np.zeros((4, 4)))
    with pytest.raises(InputError, match="zero-size"):
        Volume(np.zeros((0, 4, 4)))
    with pytest.raises(InputError, match="spacing"):
        Volume(np.zeros((2, 2, 2)), spacing=[1, 0, 1])


def test_reorientation_identity_flag():
    assert Reorientation((0, 1, 2), (False, False, False)).is_identity
