"""The `evaluate` metric of next-location prediction, as a self-contained folder or Hub Space.

`nextloc_metric.py` here is the metric script; it computes with the shipped model code's `metrics_nextlocllm.py` and
`geometry_nextlocllm.py` through relative imports, so the metric and the package share one implementation.
`export_metric(folder)` writes the folder `evaluate.load` reads without this package: the script, those two modules,
the metric card (`README.md`, a Space card) and a Gradio `app.py`; `nextlocllm_hf.hub.push_metric(repo_id)` pushes it
as a Space, which `evaluate.load("ORG/NAME")` reads; `load_metric()` loads an export offline.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from pathlib import Path

METRIC_SOURCE_DIR = Path(__file__).resolve().parent
METRIC_NAME = "nextloc_metric"
# The modules the script imports (evaluate copies exactly these beside it): the one home of the scores and geometry.
SHIPPED_MODULES = ("metrics_nextlocllm.py", "geometry_nextlocllm.py")
SPACE_REQUIREMENTS = ("evaluate", "datasets", "numpy")
APP_TEMPLATE = '''import os

import evaluate
from evaluate.utils import launch_gradio_widget

module = evaluate.load(os.path.join(os.path.dirname(os.path.abspath(__file__)), "{script}"))
launch_gradio_widget(module)
'''


def check_metric_name(name: str) -> str:
    """The script's file name is the Space's name (evaluate fetches `<name>.py`), and it is imported by that name."""
    if not isinstance(name, str) or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_-]*", name):
        raise ValueError(f"metric name {name!r}: it names the script `<name>.py` that evaluate imports, so it must "
                         f"start with a letter or _ and hold only letters, digits, _ and -")
    return name


def export_metric(folder: str | os.PathLike, name: str = METRIC_NAME) -> str:
    """Write the self-contained metric into `folder` (created; files already there are replaced) and return the
    script's path. `evaluate.load(folder)` finds it when the folder is named `name`, `evaluate.load(script)` always."""
    from .. import modeling

    check_metric_name(name)
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    modeling_dir = Path(modeling.__file__).resolve().parent
    script = folder / f"{name}.py"
    shutil.copyfile(METRIC_SOURCE_DIR / f"{METRIC_NAME}.py", script)
    for module in SHIPPED_MODULES:
        shutil.copyfile(modeling_dir / module, folder / module)
    shutil.copyfile(METRIC_SOURCE_DIR / "README.md", folder / "README.md")
    (folder / "app.py").write_text(APP_TEMPLATE.format(script=script.name), encoding="utf-8")
    (folder / "requirements.txt").write_text("".join(f"{r}\n" for r in SPACE_REQUIREMENTS), encoding="utf-8")
    return str(script)


def load_metric(**kwargs):
    """`evaluate.load` of a fresh export (offline: local files); `kwargs` go to `evaluate.load`."""
    import evaluate

    with tempfile.TemporaryDirectory(prefix="nextloc-metric-") as tmp:
        return evaluate.load(export_metric(Path(tmp) / METRIC_NAME), **kwargs)  # evaluate copies the modules away


__all__ = ["METRIC_NAME", "check_metric_name", "export_metric", "load_metric"]
