"""Write slabs of slices into a segment, and read them back, on Slicer's segmentation libraries (no Qt).

A slab is slices ``first..last`` along one voxel axis of the *volume* (mask in Slicer's [k, j, i]
order). It is written the way Segment Editor modifies a segment: first ``MODE_MERGE_MIN`` with an
image that is 0 exactly where the slab lies (this segment's voxels there are cleared, every other
voxel and every other segment is kept), then ``MODE_MERGE_MASK`` with the slab's mask (sets this
segment's label value under the mask, as Segment Editor's *Add* does), both limited to the slab's
extent (``vtkSlicerSegmentationsModuleLogic::SetBinaryLabelmapToSegment``; see
``vtkSegmentationModifier::AppendLabelmapToSegment`` and ``vtkSlicerSegmentEditorLogic``).
``MODE_REPLACE`` with an extent would replace the whole segment by the slab, and ``MODE_MERGE_MAX``
takes the raw maximum, which writes label 1 (another segment's value) into a shared layer.

Other segments under the mask follow the Segment Editor's overwrite setting, as its effects do
(``vtkSlicerSegmentEditorLogic::ModifySegmentByLabelmap``): the scene's Segment Editor node's
``OverwriteMode`` (else the default node's, which Slicer sets from the application settings) names the
segments the mask may take voxels from (all, visible, none); those sharing the layer are overwritten
by ``segmentIdsToOverwrite``, those in other layers lose the mask's voxels (``MODE_MERGE_MIN``), and
with "allow overlap" (none) a segment that would overlap another moves to a layer of its own.

Both images are built on the lattice the segment's labelmap already has (the segmentation's own
geometry, which may be oversampled or cover another extent than the volume), so Slicer never
resamples the shared labelmap layer: the volume's mask is sampled onto that lattice by nearest
neighbour. The same sampling reads a segment back in the volume's lattice.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import slicer
import vtk
from vtk.util import numpy_support

BINARY_LABELMAP = "Binary labelmap"


def _matrix(vtk_matrix) -> np.ndarray:
    return slicer.util.arrayFromVTKMatrix(vtk_matrix)


def volume_ijk_to_segmentation(volumeNode, segmentationNode) -> np.ndarray:
    """4x4 from the volume's voxel indices to the segmentation node's local coordinates."""
    ijk_to_ras = vtk.vtkMatrix4x4()
    volumeNode.GetIJKToRASMatrix(ijk_to_ras)
    between = vtk.vtkMatrix4x4()
    if not slicer.vtkMRMLTransformNode.GetMatrixTransformBetweenNodes(
            volumeNode.GetParentTransformNode(), segmentationNode.GetParentTransformNode(), between):
        raise ValueError(f"{volumeNode.GetName()} and {segmentationNode.GetName()} are related by a non-linear transform; "
                         "harden the transforms (Data module) before segmenting")
    return _matrix(between) @ _matrix(ijk_to_ras)


def segment_lattice(segmentationNode, segmentId, volumeNode) -> np.ndarray:
    """Image-to-segmentation matrix of the lattice the segment's labelmap uses (its layer's, else the
    segmentation's reference geometry, else the volume's)."""
    segmentation = segmentationNode.GetSegmentation()
    if segmentation.GetSourceRepresentationName() != BINARY_LABELMAP:
        raise ValueError(f"{segmentationNode.GetName()} keeps closed surfaces as its source representation; "
                         "switch it to binary labelmap (Segmentations module, Representations) before segmenting")
    labelmap = segmentationNode.GetBinaryLabelmapInternalRepresentation(segmentId)
    if labelmap is not None:
        e = labelmap.GetExtent()
        if e[0] <= e[1] and e[2] <= e[3] and e[4] <= e[5]:
            m = vtk.vtkMatrix4x4()
            labelmap.GetImageToWorldMatrix(m)
            return _matrix(m)
    geometry = segmentation.GetConversionParameter(slicer.vtkSegmentationConverter.GetReferenceImageGeometryParameterName())
    if geometry:
        image = slicer.vtkOrientedImageData()
        slicer.vtkSegmentationConverter.DeserializeImageGeometry(geometry, image, False)
        m = vtk.vtkMatrix4x4()
        image.GetImageToWorldMatrix(m)
        return _matrix(m)
    return volume_ijk_to_segmentation(volumeNode, segmentationNode)


SEGMENT_EDITOR_SINGLETON = "SegmentEditor"  # the Segment Editor module's node (SegmentEditor.py, selectParameterNode)


def overwrite_mode(scene) -> int:
    """The Segment Editor's overwrite setting (``vtkMRMLSegmentEditorNode.Overwrite*``): its node in the
    scene, else the scene's default Segment Editor node (set from Slicer's application settings), else
    Slicer's default, overwrite all."""
    node = scene.GetSingletonNode(SEGMENT_EDITOR_SINGLETON, "vtkMRMLSegmentEditorNode")
    if node is None:
        node = scene.GetDefaultNodeByClass("vtkMRMLSegmentEditorNode")
    return node.GetOverwriteMode() if node is not None else slicer.vtkMRMLSegmentEditorNode.OverwriteAllSegments


def overwritable_segments(segmentationNode, segmentId: str, mode: int) -> list[str]:
    """The other segments a mask written into ``segmentId`` may take voxels from under ``mode``
    (as ``vtkSlicerSegmentEditorLogic::ModifySegmentByLabelmap`` chooses them)."""
    editor = slicer.vtkMRMLSegmentEditorNode
    if mode == editor.OverwriteNone:
        return []
    ids = [i for i in segmentationNode.GetSegmentation().GetSegmentIDs() if i != segmentId]
    if mode == editor.OverwriteVisibleSegments:
        display = segmentationNode.GetDisplayNode()
        return [i for i in ids if display is not None and display.GetSegmentVisibility(i)]
    return ids


def _slab_bounds(voxel_axis: int, first: int, last: int, dims_ijk) -> tuple[np.ndarray, np.ndarray]:
    lo = np.zeros(3, int)
    hi = np.asarray(dims_ijk, int) - 1
    lo[voxel_axis], hi[voxel_axis] = first, last
    return lo, hi


def _lattice_box(vol_to_lat: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Integer index range of the lattice voxels whose centres can fall in the volume box lo..hi."""
    corners = np.array([[x, y, z, 1.0] for x in (lo[0] - 0.5, hi[0] + 0.5) for y in (lo[1] - 0.5, hi[1] + 0.5)
                        for z in (lo[2] - 0.5, hi[2] + 0.5)])
    c = (corners @ vol_to_lat.T)[:, :3]
    return np.floor(c.min(axis=0) + 1e-6).astype(int), np.ceil(c.max(axis=0) - 1e-6).astype(int)


def _integer_shift(vol_to_lat: np.ndarray) -> np.ndarray | None:
    """The index offset when the lattice is the volume's grid shifted by whole voxels (the usual case), else None."""
    shift = vol_to_lat[:3, 3]
    if np.allclose(vol_to_lat[:3, :3], np.eye(3), atol=1e-6) and np.allclose(shift, np.round(shift), atol=1e-4):
        return np.round(shift).astype(int)
    return None


def _nearest(points_h: np.ndarray, to: np.ndarray) -> np.ndarray:
    return np.floor((points_h @ to.T)[:, :3] + 0.5 + 1e-9).astype(int)


def _grid(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Homogeneous index points of the box a..b (inclusive), in [k, j, i] raster order."""
    k, j, i = np.meshgrid(np.arange(a[2], b[2] + 1), np.arange(a[1], b[1] + 1), np.arange(a[0], b[0] + 1), indexing="ij")
    return np.stack([i.ravel(), j.ravel(), k.ravel(), np.ones(i.size)], axis=1)


def _image(values_kji: np.ndarray, a: np.ndarray, lattice: np.ndarray):
    image = slicer.vtkOrientedImageData()
    image.SetExtent(int(a[0]), int(a[0]) + values_kji.shape[2] - 1, int(a[1]), int(a[1]) + values_kji.shape[1] - 1,
                    int(a[2]), int(a[2]) + values_kji.shape[0] - 1)
    image.AllocateScalars(vtk.VTK_UNSIGNED_CHAR, 1)
    numpy_support.vtk_to_numpy(image.GetPointData().GetScalars())[:] = values_kji.astype(np.uint8).ravel()
    image.GetPointData().GetScalars().Modified()
    image.SetImageToWorldMatrix(slicer.util.vtkMatrixFromArray(lattice))
    return image


def write_slab(segmentationNode, segmentId: str, volumeNode, voxel_axis: int, first: int, last: int, mask_kji: np.ndarray,
               overwrite: Sequence[str] = ()) -> None:
    """Make the segment equal ``mask_kji`` on volume slices first..last along ``voxel_axis``. The segments
    in ``overwrite`` (see :func:`overwritable_segments`) lose the mask's voxels; nothing else changes."""
    dims = volumeNode.GetImageData().GetDimensions()
    lo, hi = _slab_bounds(voxel_axis, first, last, dims)
    expected = (hi - lo + 1)[::-1]
    mask_kji = np.asarray(mask_kji)
    if tuple(mask_kji.shape) != tuple(expected):
        raise ValueError(f"slab mask of shape {mask_kji.shape} does not fit slices {first}..{last} (expected {tuple(expected)})")
    lattice = segment_lattice(segmentationNode, segmentId, volumeNode)
    vol_to_lat = np.linalg.inv(lattice) @ volume_ijk_to_segmentation(volumeNode, segmentationNode)
    shift = _integer_shift(vol_to_lat)
    if shift is not None:  # same voxels: the slab itself, no sampling
        a, b = lo + shift, hi + shift
        shape = tuple((b - a + 1)[::-1])
        inside = np.ones(int(np.prod(shape)), bool)
        values = (mask_kji > 0).astype(np.uint8).ravel()
    else:
        a, b = _lattice_box(vol_to_lat, lo, hi)
        pts = _grid(a, b)
        v = _nearest(pts, np.linalg.inv(vol_to_lat))  # lattice voxel centre -> nearest volume voxel
        inside = np.all((v >= lo) & (v <= hi), axis=1)
        shape = tuple((b - a + 1)[::-1])
        values = np.zeros(len(pts), np.uint8)
        vi = v[inside] - lo
        values[inside] = mask_kji[vi[:, 2], vi[:, 1], vi[:, 0]] > 0
    # Each image is cropped to where it can change something, so that Slicer never pads the segment's
    # labelmap to a whole slab (each call costs about the size of the images and of the labelmap):
    # clearing only matters inside the layer's current extent, setting only where the mask is on.
    logic = slicer.vtkSlicerSegmentationsModuleLogic
    keep = (~inside).astype(np.uint8).reshape(shape)
    values = values.reshape(shape)
    layer = segmentationNode.GetBinaryLabelmapInternalRepresentation(segmentId)
    e = layer.GetExtent() if layer is not None else (0, -1, 0, -1, 0, -1)
    if e[0] <= e[1] and e[2] <= e[3] and e[4] <= e[5]:  # then ``lattice`` is this layer's
        c_lo = np.maximum(a, [e[0], e[2], e[4]])
        c_hi = np.minimum(b, [e[1], e[3], e[5]])
        if np.all(c_hi >= c_lo):
            _set(segmentationNode, segmentId, logic.MODE_MERGE_MIN, keep, a, c_lo, c_hi, lattice, f"clear slices {first}..{last}",
                 overwrite)
    box = _bounding_box(values)
    if box is not None:
        m_lo, m_hi = a + box[0], a + box[1]
        _set(segmentationNode, segmentId, logic.MODE_MERGE_MASK, values, a, m_lo, m_hi, lattice, f"write slices {first}..{last}",
             overwrite)
        _erase_from_other_layers(segmentationNode, segmentId, overwrite, 1 - values, a, m_lo, m_hi, lattice)


def _erase_from_other_layers(segmentationNode, segmentId, overwrite, keep_kji, a, lo, hi, lattice) -> None:
    """The segments to overwrite that do not share the written segment's layer lose the mask's voxels
    (``segmentIdsToOverwrite`` only reaches the segments of the same layer)."""
    if not overwrite:
        return
    segmentation = segmentationNode.GetSegmentation()
    shared: list[str] = []
    segmentation.GetSegmentIDsSharingBinaryLabelmapRepresentation(segmentId, shared, True)
    logic = slicer.vtkSlicerSegmentationsModuleLogic
    for other in overwrite:
        if other not in shared and segmentation.GetSegment(other) is not None:
            _set(segmentationNode, other, logic.MODE_MERGE_MIN, keep_kji, a, lo, hi, lattice, "take the mask's voxels from", [])


def _bounding_box(values_kji: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
    """(lo, hi) offsets (i, j, k) of the non-zero voxels, or None when there are none."""
    lo, hi = [], []
    for axis in (2, 1, 0):  # i, j, k of a [k, j, i] array
        on = np.flatnonzero(np.any(values_kji, axis=tuple(x for x in range(3) if x != axis)))
        if not len(on):
            return None
        lo.append(on[0])
        hi.append(on[-1])
    return np.array(lo), np.array(hi)


def _set(segmentationNode, segmentId, mode, values_kji, a, lo, hi, lattice, what, overwrite: Sequence[str] = ()):
    """SetBinaryLabelmapToSegment with the part lo..hi (lattice indices) of an image that starts at ``a``."""
    o_lo, o_hi = lo - a, hi - a + 1
    part = values_kji[o_lo[2]:o_hi[2], o_lo[1]:o_hi[1], o_lo[0]:o_hi[0]]
    extent = [int(lo[0]), int(hi[0]), int(lo[1]), int(hi[1]), int(lo[2]), int(hi[2])]
    logic = slicer.vtkSlicerSegmentationsModuleLogic
    if not logic.SetBinaryLabelmapToSegment(_image(part, lo, lattice), segmentationNode, segmentId, mode, extent, False, list(overwrite)):
        raise RuntimeError(f"Slicer could not {what} of segment {segmentId}")


def read_slab(segmentationNode, segmentId: str, volumeNode, voxel_axis: int, first: int, last: int) -> np.ndarray:
    """The segment on volume slices first..last along ``voxel_axis``, sampled on the volume's lattice, bool [k, j, i]."""
    dims = volumeNode.GetImageData().GetDimensions()
    lo, hi = _slab_bounds(voxel_axis, first, last, dims)
    out_shape = tuple((hi - lo + 1)[::-1])
    labelmap = segmentationNode.GetBinaryLabelmapInternalRepresentation(segmentId)
    segment = segmentationNode.GetSegmentation().GetSegment(segmentId)
    if labelmap is None or segment is None:
        return np.zeros(out_shape, bool)
    e = labelmap.GetExtent()
    if e[0] > e[1] or e[2] > e[3] or e[4] > e[5]:
        return np.zeros(out_shape, bool)
    m = vtk.vtkMatrix4x4()
    labelmap.GetImageToWorldMatrix(m)
    vol_to_lat = np.linalg.inv(_matrix(m)) @ volume_ijk_to_segmentation(volumeNode, segmentationNode)
    data = numpy_support.vtk_to_numpy(labelmap.GetPointData().GetScalars()).reshape(e[5] - e[4] + 1, e[3] - e[2] + 1, e[1] - e[0] + 1)
    value = segment.GetLabelValue()
    shift = _integer_shift(vol_to_lat)
    if shift is not None:  # same voxels: copy the overlap of the slab and the labelmap's extent
        out = np.zeros(out_shape, bool)
        start = lo + shift - np.array([e[0], e[2], e[4]])  # slab origin in the labelmap's array, (i, j, k)
        src_lo = np.maximum(start, 0)
        src_hi = np.minimum(start + (hi - lo + 1), np.array(data.shape[::-1]))
        if np.all(src_hi > src_lo):
            dst_lo = src_lo - start
            dst_hi = dst_lo + (src_hi - src_lo)
            out[dst_lo[2]:dst_hi[2], dst_lo[1]:dst_hi[1], dst_lo[0]:dst_hi[0]] = (
                data[src_lo[2]:src_hi[2], src_lo[1]:src_hi[1], src_lo[0]:src_hi[0]] == value)
        return out
    p = _nearest(_grid(lo, hi), vol_to_lat) - np.array([e[0], e[2], e[4]])
    ok = np.all((p >= 0) & (p < np.array(data.shape[::-1])), axis=1)
    out = np.zeros(len(p), bool)
    q = p[ok]
    out[ok] = data[q[:, 2], q[:, 1], q[:, 0]] == value
    return out.reshape(out_shape)
