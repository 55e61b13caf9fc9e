"""Parts of the SegmentWithSAM2 Slicer module: GUI-free logic, engine link, write-back, controller.

Run from the source tree (the module folder added to Slicer's module paths), the ``core/`` folder
next to it holds ``sam2volume``; it is put on ``sys.path`` here, so adding only the module folder
is enough. A built extension installs ``sam2volume`` next to the module instead.
"""

import os
import sys


def _source_tree_core() -> str | None:
    core = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), "core")
    return core if os.path.isfile(os.path.join(core, "sam2volume", "__init__.py")) else None


_core = _source_tree_core()
if _core is not None and _core not in sys.path:
    sys.path.insert(0, _core)
