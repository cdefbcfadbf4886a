"""A rewritten module that one runtime's own PyTorch frontend cannot run faithfully refuses that
frontend's trace.

``surgery.export`` refuses such exports before tracing (``refuse_export`` of a method), but other
doors trace the live model themselves: optimum-intel's ``OVModelForImageClassification.from_pretrained(
folder, export=True)`` hands it to OpenVINO's PyTorch frontend, which traces it with ``torch.jit.trace``.
A module calls :func:`refuse_trace_by` while tracing (``torch.jit.is_tracing()``), and the trace stops
with the method's reason when that frontend's code is on the stack; every other trace (``torch.onnx``,
a user's own) goes on.
"""

from __future__ import annotations

import os
import sys

from surgery.errors import ExportError

# where each runtime's PyTorch frontend lives (a path fragment of its source files)
FRONTENDS = {"openvino": os.path.join("openvino", "frontend", "pytorch")}


def refuse_trace_by(runtime: str, method: str, reason: str) -> None:
    """Raise :class:`ExportError` naming ``method`` and ``reason`` when ``runtime``'s PyTorch frontend is
    the one tracing (a frame of its code is on the stack); return otherwise."""
    fragment = FRONTENDS[runtime]
    frame = sys._getframe(1)
    while frame is not None:
        if fragment in frame.f_code.co_filename:
            raise ExportError(
                f"{method}: {runtime}'s own PyTorch frontend is tracing this model, and it cannot run "
                f"it faithfully: {reason}. Export with surgery (surgery.export / surgery export), "
                "which checks every export against PyTorch."
            )
        frame = frame.f_back
