"""The web page: trame-slicer's slice and 3D views, SAM2 prompt tools, propagate, reset, download.

Threads: trame runs the page, the views and every MRML change on its asyncio event loop. Engine
requests (a prompt: the first SAM2 prompt encodes the image for seconds; a propagation's polls) run
on one worker thread, in order; what they return is written into the segment back on the loop with
the module's write-back (``SegmentWithSAM2Logic.applyUpdates`` / ``PropagationTask``).
"""

from __future__ import annotations

import asyncio
import logging
import os
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from SegmentWithSAM2Lib.engine_link import EngineLink, Settings

from ..windowing import CT_PRESETS
from .guards import token_guard, web_guard
from .pointer import STROKES, PointerInput
from .uploads import ACCEPTED, MAX_FILES
from SegmentWithSAM2Lib.logic import (GUI_POLL_TIMEOUT_S, SHORTCUTS, SegmentWithSAM2Logic, box_corners, curve_points, describe_error,
                                      slice_node_for_point)

log = logging.getLogger("sam2volume.web")

TOOLS = ("view", "positive", "negative", "box", "scribble", "lasso")
LAYOUT = "Quad View"
SEGMENT_COLOUR = (1.0, 0.25, 1.0)  # magenta
# the next objects' colours (none the points' green or red): cyan, orange, blue, yellow, purple, brown
OBJECT_COLOURS = (SEGMENT_COLOUR, (0.1, 0.85, 0.95), (1.0, 0.6, 0.1), (0.25, 0.4, 1.0), (0.95, 0.9, 0.1),
                  (0.6, 0.3, 0.9), (0.65, 0.4, 0.2))
MAX_OBJECTS = 32
UPLOAD_PATH = "/sam2volume-upload"
# the module's keys (SHORTCUTS) anywhere in the page but in a text field or menu: sent to WebApp.shortcut
KEYS_SCRIPT = """document.addEventListener('keydown', (e) => {
  if (e.ctrlKey || e.metaKey || e.altKey || e.repeat || e.key.length !== 1) return;
  const t = e.target;
  if (t && (t.isContentEditable || ['INPUT', 'SELECT', 'TEXTAREA'].includes(t.tagName))) return;
  const key = e.key.toUpperCase();
  if (!KEYS.includes(key) || !window.trame) return;
  e.preventDefault();
  window.trame.trigger('shortcut', [key]);
});""".replace("KEYS", repr(sorted(SHORTCUTS)))
# the chosen files (several: a DICOM series, a .nhdr/.mhd and its data file; or one .zip) POSTed as one
# multipart form, its progress shown in #upload-progress (the server's status line says the rest)
UPLOAD_SCRIPT = """document.addEventListener('change', (e) => {
  if (e.target.id !== 'upload-file' || !e.target.files.length) return;
  const files = Array.from(e.target.files);
  e.target.value = '';
  const form = new FormData();
  for (const f of files) form.append('file', f, f.name);
  const total = files.reduce((n, f) => n + f.size, 0);
  const mb = (n) => (n / 1048576).toFixed(1);
  const show = (text) => { const el = document.getElementById('upload-progress'); if (el) el.textContent = text; };
  const xhr = new XMLHttpRequest();
  xhr.open('POST', 'sam2volume-upload');
  xhr.upload.onprogress = (ev) => {
    const of = ev.lengthComputable ? ev.total : total;
    show('upload ' + Math.floor(100 * ev.loaded / Math.max(1, of)) + ' % (' + mb(ev.loaded) + ' of ' + mb(of) + ' MB)');
  };
  xhr.upload.onload = () => show('upload 100 % (' + mb(total) + ' MB sent)');
  xhr.onerror = () => show('upload broken off (' + files.length + ' files)');
  show('upload 0 % (0.0 of ' + mb(total) + ' MB)');
  xhr.send(form);
});"""
POLL_S = 0.5  # longest a propagation's long poll waits on the worker thread for new slices


class FetchedJob:
    """A propagation job as :class:`PropagationTask` sees it on the event loop: :meth:`fetch` asks the
    server for new slices (on the worker thread), :meth:`poll` hands over what was fetched (no request)."""

    def __init__(self, job: Any):
        self.job = job
        self._slices: list = []
        self._error: BaseException | None = None

    def fetch(self, wait: float, timeout: float = GUI_POLL_TIMEOUT_S) -> None:
        """One long poll: back as soon as slices arrive, after ``wait`` s without news at the latest (no busy
        loop of requests beside the engine); a server that does not answer is bounded by ``timeout``."""
        try:
            self._slices += self.job.poll(wait, timeout=timeout)
        except Exception as exc:  # noqa: BLE001 - raised again on the loop, inside PropagationTask.poll
            self._error = exc

    def poll(self, wait: float = 0.0, *, timeout: float | None = None) -> list:
        """What :meth:`fetch` got; its failure (e.g. the engine server gone) is raised here, so that
        :class:`PropagationTask` ends the task with its own message, as in Slicer."""
        error, self._error = self._error, None
        if error is not None:
            raise error
        out, self._slices = self._slices, []
        return out

    def cancel(self, *, timeout: float | None = None) -> None:
        self.job.cancel(timeout=timeout)

    def __getattr__(self, name: str) -> Any:  # finished, error, report, progress: the server job's
        return getattr(self.job, name)


class WebApp(PointerInput):
    """One page (one trame server) on one volume, one segmentation with one segment per object."""

    def __init__(self, server: Any, image: str | os.PathLike[str], settings: Settings, link: EngineLink, *,
                 multisamples: int = 0, host: str = "127.0.0.1", token: str | None = None, port: int = 0,
                 dicom: Any = None, max_upload_bytes: int = 1024 << 20, series: list | None = None,
                 series_folder: str | os.PathLike[str] | None = None):
        from trame_slicer import module as trame_slicer_module
        from trame_slicer.core import LayoutManager, SlicerApp
        from trame_slicer.rca_view import register_rca_factories

        self.server, self.settings = server, settings
        self.state, self.ctrl = server.state, server.controller
        server.enable_module(trame_slicer_module)
        guards = [web_guard(host)] + ([token_guard(token, port)] if token else [])  # Host/Origin first, then the token
        server.controller.on_server_bind.add(lambda wslink_server: wslink_server.app.middlewares.extend(guards))
        self.max_upload_bytes = int(max_upload_bytes)
        server.controller.on_server_bind.add(lambda wslink_server: wslink_server.app.router.add_post(UPLOAD_PATH, self.upload))
        self.slicer_app = SlicerApp()
        register_rca_factories(self.slicer_app.view_manager, server, slice_view_ui_f=_slice_view_ui)
        self.layout_manager = LayoutManager(self.slicer_app.scene, self.slicer_app.view_manager, server)
        self.layout_manager.register_layout_dict({LAYOUT: LayoutManager.default_grid_configuration()[LAYOUT]})
        self._generation = 0  # counts Resets
        self.engine = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sam2volume-web-engine")
        self.logic = SegmentWithSAM2Logic(link=link, scene=self.slicer_app.scene)
        self._init_state()
        self._build_ui()
        self.layout_manager.set_layout(LAYOUT)
        for view in self.slicer_app.view_manager.get_views():
            # trame-slicer asks for 8x multisampling: click-to-picture 540-600 ms here, 210-250 ms without
            view.render_window().SetMultiSamples(int(multisamples))
        self.dicom = dicom  # the sam2volume Volume read from a DICOM series (the DICOM-SEG's reference), or None
        self._dicom_headers = None  # an upload's series: its files' headers (the files are gone), else None
        self.state.from_dicom = dicom is not None
        self._loading = False  # an upload or another series being read
        # the DICOM series the series menu offers: the command line's folder's, read when chosen
        self._series_read = None
        if series_folder is not None:
            from .. import read_volume

            folder = Path(series_folder)
            self._series_read = lambda uid: (read_volume(folder, series_uid=uid), None)
        self._publish_series(series or [], dicom.meta.get("series_uid", "") if dicom is not None else "")
        self.volume = self._load(image)
        if len(series or []) > 1:
            self.state.status = self._series_note(self._shown_series)
        self.segmentation, self.segment_id = self.logic.prepareSegmentation(self.volume)
        self._colour_segment()
        self._publish_objects()
        self._observe_prompt_nodes()
        self._observe_stroke_ends()
        self._publish_views()

    # ------------------------------------------------------------ set-up
    def _init_state(self) -> None:
        s = self.state
        s.trame__title = "Segment with SAM2"
        s.tool = "view"
        s.status = "choose + point, - point, box, scribble or lasso, then click in a slice view"
        s.progress = 0
        s.busy = False
        s.prompts = []  # one line per prompt sent: kind, view, voxel (i, j, k)
        s.prompt_points = []
        s.views = {}  # per slice view: XY-to-RAS matrix and size (for pixel positions, e.g. in tests)
        s.display_windows = ["auto", *CT_PRESETS]
        s.display_window = self.settings.window if self.settings.window in CT_PRESETS else "auto"
        s.display_window_level = []  # what the volume's display node shows: [width, level]
        s.objects = []  # the segments prompts may go to: id, name, colour (#rrggbb)
        s.current_object = ""
        s.new_object_name = ""
        s.object_colour = "#ff40ff"  # the chosen object's colour (the colour picker)
        s.volume_name = ""
        s.scribble_sign = "+"  # a scribble's points: positive (+) or negative (-)
        s.change("tool")(self._on_tool)
        s.change("scribble_sign")(lambda **_: self._on_tool(self.state.tool))
        s.series, s.current_series = [], ""  # the DICOM series of the folder (or upload) shown: uid, label
        s.change("current_series")(self._on_series)
        s.change("current_object")(self._on_current_object)
        s.change("object_colour")(self._on_object_colour)
        s.change("display_window")(self._on_display_window)

    def _build_ui(self) -> None:
        from trame.ui.vuetify3 import SinglePageLayout
        from trame.widgets import html
        from trame.widgets import vuetify3 as v

        from trame.widgets import client

        with SinglePageLayout(self.server) as layout:
            client.Script(UPLOAD_SCRIPT)  # a chosen file is POSTed to UPLOAD_PATH (streamed, size-capped there)
            client.Script(KEYS_SCRIPT)  # the module's keys: 1, 2, T, 3, 4, 5, P, U
            layout.title.set_text("SAM2")
            layout.icon.hide()
            with layout.toolbar:
                with v.VBtnToggle(v_model=("tool",), mandatory=True, density="compact", classes="mx-1"):
                    for label, value in (("View", "view"), ("+ point", "positive"), ("- point", "negative"), ("Box", "box"),
                                         ("Scribble", "scribble"), ("Lasso", "lasso")):
                        v.VBtn(label, value=value, id=f"tool-{value}", size="small", title=_key_hint(value))
                for label, name, disabled in (("Propagate", "propagate", "busy"), ("Cancel", "cancel", "!busy"),
                                              ("Undo", "undo", "busy"), ("Reset", "reset", None)):
                    v.VBtn(label, click=getattr(self.ctrl, name), disabled=(disabled,) if disabled else False, id=name,
                           size="small", classes="mx-1", title=_key_hint(name))
                html.Span("Window", classes="ml-2 mr-1 text-caption")
                with html.Select(v_model=("display_window",), id="display-window", style="border: 1px solid #999; padding: 0 4px;"):
                    html.Option("{{ w }}", v_for="w in display_windows", value=("w",), key="w")
                v.VProgressLinear(model_value=("progress",), id="progress", style="max-width: 160px", height=8, classes="mx-2")
            with layout.content:
                with html.Div(style="display: flex; flex-direction: column; height: 100%;"):
                    with html.Div(style="display: flex; align-items: center; flex: 0 0 auto;"):
                        # the objects: which one prompts go to, its colour, name, add, rename, remove
                        html.Span("object", classes="ml-2 mr-1 text-caption")
                        html.Input(v_model=("new_object_name",), id="object-name", placeholder="new object", maxlength=64,
                                   style="border: 1px solid #999; padding: 0 4px; width: 90px;")
                        v.VBtn("Add", id="add-object", size="small", classes="mx-1", click=self.ctrl.add_object, disabled=("busy",),
                               title="add an object (segment) with this name; prompts then go to it")
                        with html.Select(v_model=("current_object",), id="object", title="the object prompts go to",
                                         style="border: 1px solid #999; padding: 0 4px;"):
                            html.Option("{{ o.name }}", v_for="o in objects", value=("o.id",), key="o.id",
                                        style=("{color: o.colour}",))
                        html.Input(type="color", v_model=("object_colour",), id="object-colour", title="the chosen object's colour",
                                   style="width: 28px; height: 24px; margin-left: 4px;")
                        v.VBtn("Rename", id="rename-object", size="small", classes="mx-1", click=self.ctrl.rename_object,
                               title="give the chosen object the name typed in the name field")
                        v.VBtn("Remove", id="remove-object", size="small", classes="mx-1", disabled=("busy",),
                               title="remove the chosen object: its segment and its prompts",
                               click="utils.get('window').confirm('Remove the chosen object, its segment and its prompts?') && trigger('remove_object')")
                        html.Span("download", classes="ml-4 mr-1 text-caption")
                        v.VBtn(".seg.nrrd", id="download", size="small", classes="mx-1", title="download the segmentation (Slicer's .seg.nrrd)",
                               click="utils.download('segmentation.seg.nrrd', trigger('download_segmentation'), 'application/octet-stream')")
                        v.VBtn("DICOM-SEG", id="download-dicom", size="small", classes="mx-1", v_if=("from_dicom",),
                               title="download the objects as a DICOM-SEG referencing the DICOM series",
                               click="utils.download('segmentation.dcm', trigger('download_dicom'), 'application/dicom')")
                        v.VBtn("DICOM-SEG", id="download-dicom", size="small", classes="mx-1", v_else=True, click=self.ctrl.no_dicom,
                               title="a DICOM-SEG needs a volume read from a DICOM series")
                        v.VBtn("NIfTI", id="download-nifti", size="small", classes="mx-1", title="download the segment as a NIfTI labelmap",
                               click="utils.download('segmentation.nii.gz', trigger('download_nifti'), 'application/octet-stream')")
                    with html.Div(style="display: flex; align-items: center; flex: 0 0 auto;"):
                        # the stroke controls (the toolbar is full at 1200 px)
                        html.Span("scribble", classes="ml-2 mr-1 text-caption")
                        with html.Select(v_model=("scribble_sign",), id="scribble-sign", title="a scribble's points: + (object) or - (not)",
                                         style="border: 1px solid #999; padding: 0 4px;"):
                            html.Option("+", value="+")
                            html.Option("-", value="-")
                        v.VBtn("Finish stroke", id="finish-stroke", click=self.ctrl.finish_stroke, size="x-small", classes="mx-1",
                               title="send the scribble or lasso drawn (one click per vertex) as one prompt; "
                                     "double-clicking its last vertex or a right-click in the view sends it too")
                        html.Span("volume", classes="ml-2 mr-1 text-caption")
                        html.Input(type="file", id="upload-file", multiple=True,
                                   title=f"upload {ACCEPTED} (at most {self.max_upload_bytes / 2**20:g} MB, {MAX_FILES} files)",
                                   style="max-width: 190px; font-size: 12px;", disabled=("busy",))
                        html.Span("", id="upload-progress", classes="mx-1 text-caption", style="font-family: monospace;")
                        with html.Select(v_model=("current_series",), id="series", v_if=("series.length > 1",),
                                         title="the DICOM series shown (the folder holds several)", disabled=("busy",),
                                         style="border: 1px solid #999; padding: 0 4px; max-width: 320px; font-size: 12px;"):
                            html.Option("{{ s.label }}", v_for="s in series", value=("s.uid",), key="s.uid")
                        html.Div("{{ status }}", id="status", style="padding: 2px 8px; font-family: monospace;")
                    # a fixed height: a new prompt line must not move or resize the views under the pointer
                    with html.Div(id="prompts", style="padding: 0 8px; font-family: monospace; font-size: 12px; "
                                  "height: 48px; overflow-y: auto; flex: 0 0 auto;"):
                        html.Div("{{ p }}", v_for="p in prompts", classes="prompt")
                    with html.Div(style="flex: 1 1 auto; position: relative;"):
                        self.layout_manager.initialize_layout_grid(layout)
        self.ctrl.propagate.add(self.propagate)
        self.ctrl.finish_stroke.add(self.finish_stroke)
        self.ctrl.cancel.add(self.cancel)
        self.ctrl.undo.add(self.undo)
        self.ctrl.reset.add(self.reset)
        self.ctrl.add_object.add(self.add_object)
        self.ctrl.rename_object.add(self.rename_object)
        self.ctrl.trigger("shortcut")(self.shortcut)
        self.ctrl.trigger("remove_object")(self.remove_object)
        self.ctrl.trigger("download_segmentation")(self.download)
        self.ctrl.trigger("download_nifti")(self.download_nifti)
        self.ctrl.trigger("download_dicom")(self.download_dicom)
        self.ctrl.no_dicom.add(self.no_dicom)

    def _load(self, image: str | os.PathLike[str], read: Any = None):
        read = self.dicom if read is None else read
        if read is not None:  # a DICOM folder (Slicer's core reads none) or an upload: sam2volume's reader, handed over as NRRD
            from ..io.writers import write_volume

            with tempfile.TemporaryDirectory(prefix="sam2volume-web-") as folder:
                path = write_volume(read, Path(folder) / f"{Path(image).name or 'dicom'}.nrrd")
                volumes = self.slicer_app.io_manager.load_volumes([str(path)])
        else:
            volumes = self.slicer_app.io_manager.load_volumes([str(image)])
        if not volumes:
            raise RuntimeError(f"3D Slicer could not read {image} as a volume")
        volume = volumes[0]
        self.state.volume_name = Path(image).name
        dm = self.slicer_app.display_manager
        dm.show_volume_in_slice_background(volume)
        dm.show_volume_in_slice_foreground(None)
        for view in self.slicer_app.view_manager.get_slice_views():
            view.set_visible_in_3d(True)  # the slice planes in the 3D view (no volume rendering: CPU only)
            view.fit_view_to_content()
            view.get_view_node().AddObserver("ModifiedEvent", lambda *_: self._publish_views())
            # the view clicked last: where three planes cross, the nearest plane alone cannot tell
            view.interactor().AddObserver("LeftButtonPressEvent", lambda *_, n=view.get_view_node(): setattr(self, "_pressed", n), 10.0)
        volume.CreateDefaultDisplayNodes()
        self._display_node = volume.GetDisplayNode()
        self._on_display_window(self.state.display_window, volume_display=self._display_node)
        for view in self.slicer_app.view_manager.get_threed_views():
            view.reset_view()
            view.interactor().AddObserver("LeftButtonPressEvent", lambda *_: setattr(self, "_pressed", None), 10.0)
        return volume

    def _colour_segment(self) -> None:
        """The new segment in the first of OBJECT_COLOURS no other object has (SEGMENT_COLOUR first; unlike the
        green + and red - points), filled in the slice views."""
        segmentation = self.segmentation.GetSegmentation()
        used = {_hex(segmentation.GetNthSegment(i).GetColor()) for i in range(segmentation.GetNumberOfSegments())
                if segmentation.GetNthSegmentID(i) != self.segment_id}
        free = [c for c in OBJECT_COLOURS if _hex(c) not in used]
        n = segmentation.GetNumberOfSegments() - 1
        segmentation.GetSegment(self.segment_id).SetColor(*(free[0] if free else OBJECT_COLOURS[n % len(OBJECT_COLOURS)]))
        self.segmentation.GetDisplayNode().SetVisibility2DFill(True)

    def _publish_objects(self) -> None:
        segmentation = self.segmentation.GetSegmentation()
        objects = []
        for i in range(segmentation.GetNumberOfSegments()):
            segment = segmentation.GetNthSegment(i)
            objects.append({"id": segmentation.GetNthSegmentID(i), "name": segment.GetName(), "colour": _hex(segment.GetColor())})
        self.state.objects, self.state.current_object = objects, self.segment_id
        self.state.object_colour = next((o["colour"] for o in objects if o["id"] == self.segment_id), "#ff40ff")

    def _on_current_object(self, current_object: str, **_: Any) -> None:
        segment = self.segmentation.GetSegmentation().GetSegment(current_object) if current_object else None
        if segment is not None:
            self.segment_id = current_object
            self.state.object_colour = _hex(segment.GetColor())

    def _name_problem(self, name: str, segment_id: str | None = None) -> str | None:
        """Why ``name`` cannot name an object (``segment_id``'s own name is free for it), else None."""
        if not name.isprintable() or len(name) > 64:
            return f"the name {name[:64]!r} must be one printable line of at most 64 characters"
        owner = self.segmentation.GetSegmentation().GetSegmentIdBySegmentName(name)
        if owner and owner != segment_id:
            return f"an object is already named {name!r}; give another name"
        return None

    def add_object(self) -> None:
        """A new object (segment) named from the page; prompts go to it from now on."""
        name = " ".join(str(self.state.new_object_name or "").split())
        segmentation = self.segmentation.GetSegmentation()
        n = segmentation.GetNumberOfSegments()
        if n >= MAX_OBJECTS:
            self.state.status = f"no object added: at most {MAX_OBJECTS} objects in one page"
            return
        name = name or next(f"object {m}" for m in range(n + 1, n + MAX_OBJECTS + 2)
                            if not segmentation.GetSegmentIdBySegmentName(f"object {m}"))
        problem = self._name_problem(name)
        if problem:
            self.state.status = f"no object added: {problem}"
            return
        self.segmentation, self.segment_id = self.logic.prepareSegmentation(self.volume, self.segmentation, segmentName=name)
        self._colour_segment()
        self._publish_objects()
        self.state.new_object_name = ""
        self.state.status = f"object {name!r} added: prompts now go to it"

    def rename_object(self) -> None:
        """The chosen object takes the name field's text (its prompts and slices stay)."""
        name = " ".join(str(self.state.new_object_name or "").split())
        segment = self.segmentation.GetSegmentation().GetSegment(self.segment_id)
        if not name:
            self.state.status = f"not renamed: type the new name of {segment.GetName()!r} in the name field first"
            return
        problem = self._name_problem(name, self.segment_id)
        if problem:
            self.state.status = f"not renamed: {problem}"
            return
        old = segment.GetName()
        segment.SetName(name)
        self._publish_objects()
        self._relist_prompts()
        self.state.new_object_name = ""
        self.state.status = f"object {old!r} renamed {name!r}"

    def remove_object(self) -> None:
        """The chosen object goes: its segment, its prompts (from the engine and the views); the first
        object left is chosen, or a new empty one when none is left."""
        if self.logic.busy:
            self.state.status = "nothing removed: a propagation is running; wait for it or press Cancel"
            return
        segmentation = self.segmentation.GetSegmentation()
        name = segmentation.GetSegment(self.segment_id).GetName()
        try:
            self.logic.removeSegment(self.volume, self.segmentation, self.segment_id)
        except Exception as exc:  # noqa: BLE001 - shown in the page
            self.state.status = f"nothing removed: {describe_error(exc)}"
            return
        if segmentation.GetNumberOfSegments():
            self.segment_id = segmentation.GetNthSegmentID(0)
        else:
            self.segmentation, self.segment_id = self.logic.prepareSegmentation(self.volume, self.segmentation)
            self._colour_segment()
        self._publish_objects()
        self._relist_prompts()
        self.state.status = f"object {name!r} removed with its prompts"

    def _on_object_colour(self, object_colour: str, **_: Any) -> None:
        """The colour picker's #rrggbb becomes the chosen object's colour (in the views and the downloads)."""
        segment = self.segmentation.GetSegmentation().GetSegment(self.segment_id) if getattr(self, "segmentation", None) else None
        text = str(object_colour or "")
        if segment is None or len(text) != 7 or text[0] != "#" or any(c not in "0123456789abcdefABCDEF" for c in text[1:]):
            return
        rgb = tuple(int(text[i:i + 2], 16) / 255 for i in (1, 3, 5))
        if _hex(segment.GetColor()) != text.lower():
            segment.SetColor(*rgb)
            self._publish_objects()

    def _on_display_window(self, display_window: str, volume_display: Any = None, **_: Any) -> None:
        """The slice views' intensity window: a CT preset (width, level as sam2volume's windowing) or
        Slicer's automatic one. The engine's own window is --window, fixed for the session."""
        node = volume_display or getattr(self, "_display_node", None)
        if node is None:
            return
        if display_window in CT_PRESETS:
            node.SetAutoWindowLevel(0)
            node.SetWindowLevel(*CT_PRESETS[display_window])
        else:
            node.SetAutoWindowLevel(1)
        self.state.display_window_level = [round(node.GetWindow(), 3), round(node.GetLevel(), 3)]

    def slice_nodes(self) -> list:
        return [view.get_view_node() for view in self.slicer_app.view_manager.get_slice_views()]

    def view_of(self, point_ras) -> Any:
        """The slice view a prompt was placed in: the one clicked, else the one whose plane is nearest."""
        pressed = getattr(self, "_pressed", None)
        return pressed if pressed is not None else slice_node_for_point(point_ras, self.slice_nodes())

    def _publish_views(self) -> None:
        from slicer.util import arrayFromVTKMatrix

        views = {}
        for node in self.slice_nodes():
            views[node.GetOrientation().lower()] = {
                "id": f"view-{node.GetLayoutName()}",  # the page element that holds this view
                "xy_to_ras": arrayFromVTKMatrix(node.GetXYToRAS()).round(6).tolist(),
                "size": [int(x) for x in node.GetDimensions()[:2]],
            }
        if views != self.state.views:
            self.state.views = views
            self.state.flush()

    # ------------------------------------------------------------ prompts
    def _observe_prompt_nodes(self) -> None:
        import slicer

        for node, tag in getattr(self, "_observations", []):
            node.RemoveObserver(tag)
        self._prompt_nodes, self._observations = {}, []
        for kind in ("positive", "negative", "box"):
            node = self.logic.prompts.get(kind)
            tag = node.AddObserver(slicer.vtkMRMLMarkupsNode.PointPositionDefinedEvent,
                                   lambda caller, event, k=kind: self._on_placed(k, caller))
            self._prompt_nodes[kind] = node
            self._observations.append((node, tag))
        self._on_tool(self.state.tool)

    def _on_tool(self, tool: str, **_: Any) -> None:
        markups = self.slicer_app.markups_logic
        if tool in self._prompt_nodes:
            markups.place_node(self._prompt_nodes[tool], persistent=tool != "box")
        elif tool in STROKES:
            markups.place_node(self._stroke_node(tool), persistent=True)  # one click per vertex
        else:
            markups.disable_place_mode()

    def _stroke_node(self, tool: str):
        """The module's current (unused) curve node for a scribble of the page's sign, or a lasso."""
        kind = "negative_scribble" if tool == "scribble" and self.state.scribble_sign == "-" else tool
        return self.logic.prompts.get(kind)

    def finish_stroke(self) -> None:
        """The scribble or lasso drawn so far (the current curve node's vertices) becomes one prompt, sent
        as the module's addScribble / addLasso send it (the controller's add_scribble / add_lasso)."""
        tool = self.state.tool
        if tool not in STROKES:
            self.state.status = "no stroke to finish: choose Scribble or Lasso and click its vertices in a slice view"
            return
        node = self._stroke_node(tool)
        points = curve_points(node)
        if not len(points):
            self.state.status = f"no {tool} to finish: click its vertices in a slice view first"
            return
        self._last_press = None  # a click right after this starts the next stroke, never a double-click
        self._ending_placement = True  # this end is the app's own: not a right-click / double-click to send
        try:
            self.slicer_app.markups_logic.disable_place_mode()  # the next clicks go to the next stroke's node
        finally:
            self._ending_placement = False
        if self.logic.busy:
            self._refuse(tool, node, "a propagation is running; wait for it or press Cancel")
            self._on_tool(self.state.tool)
            return
        segment_id, key = self.segment_id, (node.GetID(), "stroke")
        if tool == "lasso":
            def send(c, s2r, w2l):
                return c.add_lasso(segment_id, points, s2r, w2l, key=key)
        else:
            positive = self.state.scribble_sign != "-"

            def send(c, s2r, w2l):
                return c.add_scribble(segment_id, points, positive, s2r, w2l, key=key)
        self._prompt(tool, node, send, self.view_of(points[0]))

    def _on_placed(self, kind: str, node) -> None:
        if self.logic.busy:
            self._refuse(kind, node, "a propagation is running; wait for it or press Cancel")
            return
        if kind == "box":
            corners = box_corners(node)
            if corners is None:
                return  # the first of the box's two clicks
            centre = [0.0] * 3
            node.GetCenterWorld(centre)
            slice_node = self.view_of(centre)
            self._prompt(kind, node, lambda c, s2r, w2l: c.add_box(self.segment_id, corners, s2r, w2l, key=(node.GetID(), "box")),
                         slice_node)
            return
        n = node.GetNumberOfControlPoints() - 1
        point = [0.0] * 3
        node.GetNthControlPointPositionWorld(n, point)
        node.SetNthControlPointDescription(n, self.segment_id)
        key = (node.GetID(), node.GetNthControlPointID(n))
        slice_node = self.view_of(point)
        self._prompt(kind, node, lambda c, s2r, w2l: c.add_points(self.segment_id, [point], [kind == "positive"], s2r, w2l, key=key),
                     slice_node, key=key)

    def _prompt(self, kind: str, node, send, slice_node, key=None) -> None:
        """The controller's prompt call on the worker thread, its mask written on the loop."""
        from slicer.util import arrayFromVTKMatrix
        from SegmentWithSAM2Lib.logic import world_to_local

        try:
            c = self.logic.controllerFor(self.volume, self.segmentation, self.settings)
            s2r, w2l = arrayFromVTKMatrix(slice_node.GetSliceToRAS()), world_to_local(self.volume)
        except Exception as exc:  # noqa: BLE001 - shown in the page
            self._refuse(kind, node, describe_error(exc), key)
            return
        self.state.status = f"{kind}: asking the engine ..."
        generation = self._generation

        async def run():
            try:
                update = await asyncio.get_running_loop().run_in_executor(self.engine, send, c, s2r, w2l)
            except Exception as exc:  # noqa: BLE001
                if generation == self._generation:
                    with self.state:
                        self._refuse(kind, node, describe_error(exc), key)
                return
            if generation != self._generation:
                return  # Reset was pressed while the engine answered: this prompt is gone
            with self.state:
                self.logic.applyUpdates([update], self.segmentation, self.volume)
                if kind == "box" or kind in STROKES:  # a used box or stroke stays (locked); the next is a new node
                    self.logic.prompts.retire_box(node, self.segment_id)
                    self._prompt_nodes["box"] = None
                    self._observe_prompt_nodes()
                self._list_prompts(c)
                note = f" ({self.logic.lastMessage})" if self.logic.lastMessage else ""
                self.logic.lastMessage = ""
                self.state.status = f"{kind}: mask shown on {c.axis} slice {update.first}{note}"

        _create_task(run())

    def _refuse(self, kind: str, node, message: str, key=None) -> None:
        """A refused prompt is not left on screen as if it counted."""
        if kind == "box" or kind in STROKES:
            node.RemoveAllControlPoints()
            if kind in STROKES:
                self._on_tool(self.state.tool)  # the stroke's node placed again (Finish stroke ended placing)
        elif key is not None:
            index = node.GetNthControlPointIndexByID(key[1])
            if index >= 0:
                node.RemoveNthControlPoint(index)
        else:
            node.RemoveNthControlPoint(node.GetNumberOfControlPoints() - 1)
        self.state.status = f"{kind} not used: {message}"

    def shortcut(self, key: str) -> None:
        """A key of the module's (SHORTCUTS) pressed in the page: the tool it names; T the other sign of the
        point tool (or of the scribble); P Propagate; U Undo."""
        action = SHORTCUTS.get(str(key).upper())
        if action is None:
            return
        with self.state:
            if action == "propagate":
                self.propagate()
            elif action == "undo":
                if not self.logic.busy:
                    self.undo()
            elif action == "toggle":
                tool = self.state.tool
                if tool == "scribble":
                    self.state.scribble_sign = "-" if self.state.scribble_sign == "+" else "+"
                else:
                    self.state.tool = "negative" if tool == "positive" else "positive"
            else:
                self.state.tool = action

    def _relist_prompts(self) -> None:
        c = self.logic.controllers.get((self.volume.GetID(), self.segmentation.GetID()))
        if c is not None:
            self._list_prompts(c)

    def _list_prompts(self, c) -> None:
        """The prompts the engine got, as lines in the page and as numbers (voxel indices i, j, k)
        in the state ``prompt_points`` (what a test reads back)."""
        lines, points = [], []
        segmentation = self.segmentation.GetSegmentation()
        for p in c.prompts:
            what = {"points": "+ point" if p.labels and p.labels[0] else "- point"}.get(p.kind, p.kind)
            ijk = " ".join("(" + ", ".join(f"{x:g}" for x in np.round(v, 2)) + ")" for v in p.ijk)
            segment = segmentation.GetSegment(p.segment_id)
            lines.append(f"{segment.GetName() if segment is not None else p.segment_id}: {what} {c.axis} ijk {ijk}")
            points.append({"kind": p.kind, "axis": c.axis, "ijk": np.asarray(p.ijk, float).tolist(), "labels": p.labels,
                           "segment": p.segment_id})
        self.state.prompts, self.state.prompt_points = lines, points

    # ------------------------------------------------------------ propagate
    def propagate(self) -> None:
        if self.logic.busy:
            self.state.status = "a propagation is already running"
            return

        async def run():
            loop = asyncio.get_running_loop()
            try:
                task = await loop.run_in_executor(self.engine, lambda: self.logic.startPropagation(
                    self.volume, self.segmentation, self.settings, onProgress=self._progress, onError=self._error))
                job = task.job = FetchedJob(task.job)
                with self.state:
                    self.state.busy, self.state.progress = True, 0
                    self.state.status = "propagating ... (Cancel stops after the current slice)"
                while not task.finished:
                    await loop.run_in_executor(self.engine, job.fetch, POLL_S)
                    with self.state:
                        task.poll()  # writes the fetched slices, and at the end the exact result
            except Exception as exc:  # noqa: BLE001
                with self.state:
                    self.state.status = f"not propagated: {describe_error(exc)}"
                    self.state.busy = False
                return
            with self.state:
                self.state.busy = False
                if task.error is None:
                    if not task.cancelled:  # a cancelled job's bar stays where it stopped
                        self.state.progress = 100
                    self.state.status = f"{'cancelled' if task.cancelled else 'propagated'}: {task.written} slices written"
                self.segmentation.CreateClosedSurfaceRepresentation()  # the segment in the 3D view

        _create_task(run())

    def _progress(self, done: int, total: int) -> None:
        self.state.progress = int(round(100 * done / max(1, total)))

    def _error(self, message: str) -> None:
        self.state.status = f"propagation failed: {message}"

    def cancel(self) -> None:
        self.logic.cancel()

    def undo(self) -> None:
        try:
            self.logic.undoLastPrompt(self.volume, self.segmentation, self.segment_id)
        except Exception as exc:  # noqa: BLE001
            self.state.status = f"nothing undone: {describe_error(exc)}"
            return
        self._relist_prompts()
        self.state.status = "last prompt undone"

    def reset(self) -> None:
        """Forget the prompts and clear the segment (a fresh start on this volume)."""
        self._generation += 1  # answers to prompts sent before now are dropped
        self.logic.reset(self.volume, self.segmentation)
        self.segmentation.GetSegmentation().RemoveAllSegments()  # every object
        self.segmentation, self.segment_id = self.logic.prepareSegmentation(self.volume, self.segmentation)
        self._colour_segment()
        self._publish_objects()
        self._observe_prompt_nodes()
        self.state.prompts, self.state.prompt_points, self.state.progress, self.state.busy = [], [], 0, False
        self.state.status = "reset: no prompts, empty segment"

    # ------------------------------------------------------------ upload
    async def upload(self, request: Any) -> Any:
        """Files POSTed by the page as one multipart form (aiohttp handler, behind the Host/Origin and token
        guards): a volume file, a .nhdr/.mhd with its data file, a DICOM series' files, or one .zip of those.
        Streamed into a private temporary folder under safe names (``uploads.receive``: at most
        ``max_upload_bytes`` and ``MAX_FILES`` files; a .zip's members checked by ``uploads.extract_zip``), read
        by sam2volume's ``read_volume`` off the event loop, the folder removed whatever happens; then the page's
        volume (several DICOM series: the series menu, the first shown). Refused: a JSON error, the reason in the
        page's status, the current volume kept."""
        from aiohttp import web

        from . import uploads

        def refuse(status: int, kind: str, message: str) -> Any:
            with self.state:
                self.state.status = f"no volume uploaded: {message}"
            return web.json_response({"error": {"type": kind, "message": message}}, status=status)

        cap = self.max_upload_bytes
        if cap <= 0:
            return refuse(403, "LimitError", "uploads are off (sam2volume web --max-upload-mb 0)")
        if self.logic.busy:
            return refuse(409, "BusyError", "a propagation is running; wait for it or press Cancel")
        if self._loading:
            return refuse(409, "BusyError", "another volume is being read; wait for it")
        self._loading = True
        try:
            with uploads.upload_folder() as folder:
                received = folder / "received"
                received.mkdir(mode=0o700)
                names, size = await uploads.receive(request, received, cap)
                root, name = received, names[0] if len(names) == 1 else f"{len(names)} files"
                if len(names) == 1 and names[0].lower().endswith(".zip"):
                    root = folder / "unpacked"  # unpacked off the event loop (up to --max-upload-mb)
                    with self.state:
                        self.state.status = f"unpacking {names[0]} ({size / 2**20:.1f} MB) ..."
                    await asyncio.get_running_loop().run_in_executor(None, uploads.extract_zip, received / names[0], root, cap)
                    (received / names[0]).unlink()
                elif any(n.lower().endswith(".zip") for n in names):
                    raise uploads.UploadError(400, "InputError", "a .zip must be uploaded alone; choose the .zip only, "
                                              "or the files themselves")
                with self.state:
                    self.state.status = f"reading the uploaded volume ({name}, {size / 2**20:.1f} MB) ..."
                got = await asyncio.get_running_loop().run_in_executor(None, uploads.read_upload, root, name)
        except uploads.UploadError as exc:
            return refuse(exc.status, exc.kind, exc.message)
        except Exception as exc:  # noqa: BLE001 - a broken connection, a full disk: said in the page
            return refuse(400, "InputError", f"the upload broke off ({describe_error(exc)}); try again")
        finally:
            self._loading = False
        with self.state:
            try:
                first = next((s.uid for s in got.series if not isinstance(got.read[s.uid], str)), None)
                vol, headers = got.read[first] if first is not None else (got.volume, None)
                self.replace_volume(vol, name, dicom=vol if headers else None, dicom_headers=headers or None)
            except Exception as exc:  # noqa: BLE001
                self.state.status = f"no volume uploaded: {describe_error(exc)}"
                return web.json_response({"error": {"type": "InputError", "message": describe_error(exc)}}, status=400)
            self._series_read = (lambda uid, read=got.read: _held_series(read, uid)) if got.series else None
            self._publish_series(got.series, first or "", "upload")
            if len(got.series) > 1:
                self.state.status = f"uploaded {name} ({size / 2**20:.1f} MB): " + self._series_note(first)
            else:
                self.state.status = f"uploaded {name} ({size / 2**20:.1f} MB): choose a tool and click in a slice view"
        return web.json_response({"volume": name, "shape": list(vol.shape), "series": [s.uid for s in got.series]})

    # ------------------------------------------------------------ DICOM series menu
    def _publish_series(self, series: list, shown: str, where: str = "folder") -> None:
        """The series menu's entries (``dicom_series.SeriesSummary``: UID, modality, files, description; never
        a path), the one shown and what holds them ("folder", "upload")."""
        self._series, self._series_where = list(series), where
        self.state.series = [{"uid": s.uid, "label": s.line()} for s in self._series]
        self._shown_series = shown
        self.state.current_series = shown

    def _series_note(self, shown: str) -> str:
        """The status line saying that the folder holds several series, which one is shown, and where to choose."""
        summary = next((s for s in self._series if s.uid == shown), None)
        return (f"the {self._series_where} holds {len(self._series)} DICOM series; shown: {summary.line() if summary else shown}; "
                "choose another in the series menu")

    def _on_series(self, current_series: str, **_: Any) -> None:
        """Another series chosen in the menu: read it (off the event loop) and show it as an upload would
        (prompts and objects reset; its DICOM-SEG references it). Refused while busy: the menu goes back."""
        uid = str(current_series if current_series is not None else "")
        if self._series_read is None or uid == self._shown_series or uid not in {s.uid for s in self._series}:
            return
        shown = self._shown_series

        def back(message: str) -> None:
            self.state.current_series = shown
            self.state.status = f"series {uid or '(blank UID)'} not shown: {message}"

        if self.logic.busy or self._loading:
            back("a propagation or an upload is running; wait for it (or press Cancel)")
            return
        self._loading = True
        self.state.status = f"reading series {uid or '(blank UID)'} ..."
        read = self._series_read

        async def run():
            try:
                try:
                    vol, headers = await asyncio.get_running_loop().run_in_executor(None, read, uid)
                except Exception as exc:  # noqa: BLE001 - the reader's sentence
                    with self.state:
                        back(describe_error(exc))
                    return
                with self.state:
                    try:
                        self.replace_volume(vol, self.state.volume_name or "dicom", dicom=vol, dicom_headers=headers)
                    except Exception as exc:  # noqa: BLE001
                        back(describe_error(exc))
                        return
                    self._shown_series = uid
                    self.state.current_series = uid
                    self.state.status = self._series_note(uid) + "; prompts and objects were reset"
            finally:
                self._loading = False

        _create_task(run())

    def replace_volume(self, vol: Any, name: str, *, dicom: Any = None, dicom_headers: list | None = None) -> None:
        """The page's volume becomes ``vol`` (a sam2volume Volume): the old one's prompts, objects and nodes go.
        ``dicom``: the DICOM-SEG's reference (a volume read from a DICOM series), ``dicom_headers`` its files'
        headers when the files themselves are gone (an upload)."""
        if self.logic.busy:
            raise RuntimeError("a propagation is running; wait for it or press Cancel")
        self._generation += 1  # answers to prompts on the old volume are dropped
        self.logic.reset(self.volume, self.segmentation)
        scene = self.slicer_app.scene
        old_volume, old_segmentation = self.volume, self.segmentation
        self.volume = self._load(name, read=vol)
        self.dicom, self._dicom_headers, self.state.from_dicom = dicom, dicom_headers, dicom is not None
        scene.RemoveNode(old_segmentation)
        scene.RemoveNode(old_volume)
        self.segmentation, self.segment_id = self.logic.prepareSegmentation(self.volume)
        self._colour_segment()
        self._publish_objects()
        self._observe_prompt_nodes()
        self.state.prompts, self.state.prompt_points, self.state.progress = [], [], 0
        self._publish_views()

    # ------------------------------------------------------------ download
    def download(self):
        """The segmentation as .seg.nrrd bytes, written by Slicer's own segmentation storage node (every
        object with its name, colour and label value, on the volume's whole grid; trame-slicer's
        ``write_segmentation`` writes a bare labelmap without names)."""
        import slicer

        with tempfile.TemporaryDirectory(prefix="sam2volume-web-") as folder:
            path = Path(folder) / "segmentation.seg.nrrd"
            storage = slicer.vtkMRMLSegmentationStorageNode()
            storage.SetCropToMinimumExtent(False)
            storage.SetFileName(str(path))
            if not storage.WriteData(self.segmentation):
                raise RuntimeError(f"3D Slicer could not write the segmentation to {path}")
            return self.server.protocol.addAttachment(path.read_bytes())

    def download_nifti(self):
        """The objects as a NIfTI labelmap (object N: label N in the page's order, a later object over an
        earlier one where they overlap; 0 elsewhere) on the volume's grid: read back with the module's
        write-back sampling (``read_slab``), written by sam2volume's labelmap writer (the sidecar it may
        add, names and colours, is not sent)."""
        from ..io.writers import write_labelmap

        labelmap, segments = self._labelmap()
        with tempfile.TemporaryDirectory(prefix="sam2volume-web-") as folder:
            path = Path(folder) / "segmentation.nii.gz"
            write_labelmap(labelmap, path, segments=segments)
            return self.server.protocol.addAttachment(path.read_bytes())

    def download_dicom(self):
        """The objects as a DICOM-SEG (sam2volume's highdicom writer) referencing the DICOM series the volume
        was read from; None, with a message in the page, for any other volume or an error."""
        from ..io.writers import write_labelmap
        from .uploads import dicom_reference

        if self.dicom is None:
            self.no_dicom()
            return None
        try:
            labelmap, segments = self._labelmap()
            with tempfile.TemporaryDirectory(prefix="sam2volume-web-") as folder, \
                    dicom_reference(self.dicom, self._dicom_headers) as reference:
                path = Path(folder) / "segmentation.dcm"
                write_labelmap(labelmap, path, segments=segments, reference=reference)
                return self.server.protocol.addAttachment(path.read_bytes())
        except Exception as exc:  # noqa: BLE001 - shown in the page
            self.state.status = f"no DICOM-SEG: {describe_error(exc)}"
            return None

    def no_dicom(self) -> None:
        self.state.status = ("no DICOM-SEG: the volume was not read from a DICOM series (start sam2volume web with the "
                             "series' folder, or upload the series' files); download .seg.nrrd or NIfTI instead")

    def _labelmap(self):
        """The objects as one labelmap Volume on the volume's grid (object N: label N) and their segments."""
        from SegmentWithSAM2Lib.geometry import volume_from_slicer
        from SegmentWithSAM2Lib.logic import matrix
        from SegmentWithSAM2Lib.writeback import read_slab

        dims = self.volume.GetImageData().GetDimensions()
        segmentation = self.segmentation.GetSegmentation()
        labels_kji, segments = None, []
        for n in range(segmentation.GetNumberOfSegments()):
            sid, segment = segmentation.GetNthSegmentID(n), segmentation.GetNthSegment(n)
            mask_kji = read_slab(self.segmentation, sid, self.volume, 2, 0, dims[2] - 1)
            labels_kji = np.zeros(mask_kji.shape, np.uint8) if labels_kji is None else labels_kji
            labels_kji[mask_kji > 0] = n + 1
            segments.append({"label": n + 1, "name": segment.GetName(), "color": list(segment.GetColor())})
        return volume_from_slicer(labels_kji, matrix(self.volume.GetIJKToRASMatrix), name="segmentation"), segments

    def close(self) -> None:
        self.logic.close()
        self.engine.shutdown(wait=False, cancel_futures=True)


def _key_hint(action: str) -> str:
    """A button's tooltip naming its key (SHORTCUTS), if it has one."""
    keys = [k for k, a in SHORTCUTS.items() if a == action]
    return f"key {keys[0]}" if keys else ""


def _hex(rgb) -> str:
    """An RGB colour (0..1 each) as the page's #rrggbb."""
    return "#" + "".join(f"{round(255 * c):02x}" for c in rgb)


def _slice_view_ui(server: Any, view_id: str, view: Any) -> None:
    """trame-slicer's own slice view controls, and an element naming the view (id view-Red, view-Yellow, ...)."""
    from trame.widgets import html
    from trame_slicer.app.ui import create_vertical_slice_view_gutter_ui

    create_vertical_slice_view_gutter_ui(server, view_id, view)
    html.Div(id=f"view-{view.get_singleton_tag()}", classes="sam2-view-marker", style="display: none;")


def _create_task(coro) -> None:
    from trame_server.utils.asynchronous import create_task

    create_task(coro)


def _held_series(read: dict, uid: str) -> tuple:
    """An uploaded series kept in memory (``uploads.Uploaded.read``): (Volume, headers), or its reason raised."""
    from ..errors import InputError

    got = read[uid]
    if isinstance(got, str):
        raise InputError(got)
    return got
