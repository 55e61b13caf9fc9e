"""Pointer input in the page's slice views beyond what trame-rca forwards as is: a double-click or right-click
ending a scribble or lasso (as 3D Slicer's markups placement ends), a box dragged from corner to corner, and a
scribble or lasso drawn by dragging. A mixin of :class:`~sam2volume.web.app.WebApp` (its state, scene and
stroke nodes); events are VTK interactor events of the slice views, handled before Slicer's own widgets.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import numpy as np

from SegmentWithSAM2Lib.logic import curve_points

STROKES = ("scribble", "lasso")  # drawn as markups curves, one click per vertex, sent by "Finish stroke" ...
# ... or ended as 3D Slicer ends markups placement: a right-click, or a double-click. trame-rca forwards no
# double-click (two press/release pairs, repeat count 0), so a second left press this near the last one, in
# place and in time, is taken for one; the time is the app's (the events carry none): network and rendering
# stretch the browser's gap (84 ms for a Chromium double-click here), so it is longer than a desktop's 400-500 ms
DOUBLE_CLICK_PX = 4
DOUBLE_CLICK_S = 0.8
# A box is placed by two clicks (Slicer's ROI placement) or by a drag: with the box tool, a press and its release in a
# slice view farther apart than this are handed to Slicer's widget as those two clicks (at the press and the release)
DRAG_PX = 4
# A scribble or lasso is drawn by clicking its vertices (Slicer's curve placement) or by dragging: a press, moves
# and a release more than DRAG_PX apart are one stroke through the path's points STROKE_STEP_PX apart (at most
# MAX_STROKE_POINTS), sent on the release as Finish stroke sends it
STROKE_STEP_PX = 5
MAX_STROKE_POINTS = 200


class PointerInput:
    """The slice views' left-button and move handling (see the module docstring); WebApp mixes it in."""

    def _observe_stroke_ends(self) -> None:
        """A stroke also ends as 3D Slicer's markups placement ends (vtkSlicerMarkupsWidget in its place state):
        on a right button release, or on a left double-click; Slicer's widget then leaves place mode and the
        interaction node sends EndPlacementEvent, and the stroke drawn is sent as Finish stroke sends it.
        The right button reaches the views through trame-rca; a double-click does not (see DOUBLE_CLICK_S), so
        it is recognised here and handed to Slicer's widget as the LeftButtonDoubleClickEvent Qt would give:
        the double-click's first click places the last vertex (as in Slicer), its second click places nothing."""
        import slicer
        from vtkmodules.vtkCommonCore import vtkCommand

        self._last_press = None  # (interactor, event position, time) of the last left press in a slice view
        self._swallow_release = None  # the interactor whose next left release is a double-click's own
        self._held = None  # (interactor, "box" or "stroke", [event positions since]) of a left press held back
        self._slice_of = {}  # interactor -> its slice view's node
        self._clicking = False  # a click the app hands to the views itself (see _click)
        self._ending_placement = False
        for view in self.slicer_app.view_manager.get_slice_views():
            iren, tags = view.interactor(), {}
            self._slice_of[iren] = view.get_view_node()
            tags["move"] = iren.AddObserver(vtkCommand.MouseMoveEvent, lambda i, _e: self._on_mouse_move(i), 20.0)
            # before the views' own observers (Slicer's interactor style: priority 0; view_of's: 10)
            tags["press"] = iren.AddObserver(vtkCommand.LeftButtonPressEvent, lambda i, _e, t=tags: self._on_left_press(
                i, i.GetCommand(t["press"])), 20.0)
            tags["release"] = iren.AddObserver(vtkCommand.LeftButtonReleaseEvent, lambda i, _e, t=tags: self._on_left_release(
                i, i.GetCommand(t["release"])), 20.0)
        interaction = self.slicer_app.markups_logic.interaction_node
        interaction.AddObserver(slicer.vtkMRMLInteractionNode.EndPlacementEvent, lambda *_: self._on_end_placement())

    def _placing(self, *tools: str) -> bool:
        """One of ``tools`` is chosen and Slicer's markups placement is on (its place mode)."""
        import slicer

        mode = self.slicer_app.markups_logic.interaction_node.GetCurrentInteractionMode()
        return self.state.tool in tools and mode == slicer.vtkMRMLInteractionNode.Place

    def _click(self, iren: Any, position: tuple[int, int]) -> None:
        """A left click at ``position`` handed to the view's observers (Slicer's widgets) as a user's would be."""
        from vtkmodules.vtkCommonCore import vtkCommand

        self._press(iren, position)
        self._clicking = True
        try:
            iren.InvokeEvent(vtkCommand.LeftButtonReleaseEvent)
        finally:
            self._clicking = False

    def _press(self, iren: Any, position: tuple[int, int]) -> None:
        from vtkmodules.vtkCommonCore import vtkCommand

        self._clicking = True
        try:
            iren.SetEventPosition(*position)
            iren.InvokeEvent(vtkCommand.LeftButtonPressEvent)
        finally:
            self._clicking = False

    def _on_left_press(self, iren: Any, command: Any) -> None:
        if self._clicking:
            return
        if self._placing("box"):  # held back until its release tells a click from a drag
            command.SetAbortFlag(1)
            self._held = (iren, "box", [tuple(iren.GetEventPosition())])
            return
        now, position = time.monotonic(), iren.GetEventPosition()
        last, self._last_press = self._last_press, (iren, position, now)
        if (last is None or last[0] is not iren or not self._placing(*STROKES) or now - last[2] > DOUBLE_CLICK_S
                or max(abs(position[0] - last[1][0]), abs(position[1] - last[1][1])) > DOUBLE_CLICK_PX):
            if self._placing(*STROKES):  # held back until its release tells a click (a vertex) from a drag (a stroke)
                command.SetAbortFlag(1)
                self._held = (iren, "stroke", [tuple(position)])
            return
        from vtkmodules.vtkCommonCore import vtkCommand

        self._last_press = None  # a third click is a first click again
        command.SetAbortFlag(1)  # the second press reaches no widget ...
        self._swallow_release = iren  # ... nor does its release: no second vertex
        iren.SetRepeatCount(1)  # what Qt's interactor adapter gives Slicer with a double-click
        try:
            iren.InvokeEvent(vtkCommand.LeftButtonDoubleClickEvent)  # Slicer's markups widget: stop placing
        finally:
            iren.SetRepeatCount(0)

    def _on_left_release(self, iren: Any, command: Any) -> None:
        if self._clicking:
            return
        if self._held is not None and self._held[0] is iren:
            _, kind, path = self._held
            self._held = None
            path = path + [tuple(iren.GetEventPosition())]
            start, end = path[0], path[-1]

            def far(point: tuple) -> bool:
                return max(abs(point[0] - start[0]), abs(point[1] - start[1])) > DRAG_PX

            if kind == "box" and far(end):  # a box dragged: a click at each corner
                command.SetAbortFlag(1)
                self._click(iren, start)
                self._click(iren, end)
            elif kind == "stroke" and any(far(point) for point in path):  # a stroke drawn along the path
                command.SetAbortFlag(1)
                self._last_press = None  # a click after a drag is a first click
                self._draw_stroke(iren, path)
            else:  # a click: the press held back, then this release, reach Slicer's widget in their order
                self._press(iren, start)
                iren.SetEventPosition(*end)
            return
        if self._swallow_release is iren:
            self._swallow_release = None
            command.SetAbortFlag(1)

    def _on_mouse_move(self, iren: Any) -> None:
        if self._held is not None and self._held[0] is iren:
            position, path = tuple(iren.GetEventPosition()), self._held[2]
            if max(abs(position[0] - path[-1][0]), abs(position[1] - path[-1][1])) >= 1:
                path.append(position)

    def _draw_stroke(self, iren: Any, path: list) -> None:
        """A dragged stroke: the path's points (STROKE_STEP_PX apart, at most MAX_STROKE_POINTS) become the stroke
        node's vertices on the view's slice plane (its XY-to-RAS), then the stroke is sent as Finish stroke sends it."""
        from slicer.util import arrayFromVTKMatrix

        kept = [path[0]]
        for x, y in path[1:]:
            if max(abs(x - kept[-1][0]), abs(y - kept[-1][1])) >= STROKE_STEP_PX:
                kept.append((x, y))
        if kept[-1] != path[-1]:
            kept.append(path[-1])
        if len(kept) > MAX_STROKE_POINTS:
            kept = [kept[int(i)] for i in np.linspace(0, len(kept) - 1, MAX_STROKE_POINTS)]
        xy_to_ras = arrayFromVTKMatrix(self._slice_of[iren].GetXYToRAS())
        node = self._stroke_node(self.state.tool)
        for x, y in kept:
            node.AddControlPointWorld(*(xy_to_ras @ [x, y, 0.0, 1.0])[:3])
        self._pressed = self._slice_of[iren]  # the view the stroke was drawn in

        def send() -> None:
            with self.state:
                self.finish_stroke()

        try:
            asyncio.get_running_loop().call_soon(send)
        except RuntimeError:  # no event loop (a script driving the app): at once
            send()

    def _on_end_placement(self) -> None:
        """Place mode ended by Slicer's markups widget (right-click, double-click) with a stroke tool chosen: the
        stroke is sent (after the widget's own event handling is done); none drawn: the tool places again."""
        if self._ending_placement or self.state.tool not in STROKES:
            return

        def end() -> None:
            with self.state:
                if self.state.tool not in STROKES or self._placing(*STROKES):
                    return
                if len(curve_points(self._stroke_node(self.state.tool))):
                    self.finish_stroke()
                else:
                    self._on_tool(self.state.tool)
                    self.state.status = f"no {self.state.tool} to finish: click its vertices in a slice view first"

        try:
            asyncio.get_running_loop().call_soon(end)
        except RuntimeError:  # no event loop (a script driving the app): at once
            end()
