"""Helpers of the SegmentWithSAM2 Slicer module that do not import Slicer (tested outside it)."""
