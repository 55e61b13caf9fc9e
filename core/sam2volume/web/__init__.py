"""``sam2volume web``: a browser front-end on trame-slicer (3D Slicer's core libraries rendered for the web).

It drives the Slicer module's own GUI-free logic (``SegmentWithSAM2Lib``: controller, geometry,
write-back, engine link) on trame-slicer's MRML scene; the model runs in an engine server process as
for the module. Needs the optional extra ``web`` (trame-slicer) and slicer-core.
"""
