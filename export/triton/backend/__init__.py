"""Files of couturier's Python-based Triton backend named ``onnxruntime`` (see ``model.py``).

``model.py`` runs inside Triton's Python-backend stub, in the Triton environment (numpy < 2); it
imports nothing from couturier.
"""

from __future__ import annotations

from pathlib import Path

#: The backend's ``model.py``, copied into ``<state>/backends/onnxruntime/`` by the local server.
MODEL_PY = Path(__file__).with_name("model.py")
