"""Cached functions defined in notebooks, run in real Jupyter kernels (nbclient + ipykernel).

A kernel started for a notebook knows the notebook's path (Jupyter passes it as
``JPY_SESSION_NAME``, which ipykernel puts in the namespace as ``__session__``); the notebook's
functions are named by it, so two notebooks that each define ``load_data`` keep their own
entries, statistics and maintenance. Each run starts a kernel and stops it at the end, as a
kernel restart does.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
pytest.importorskip("ipykernel")

CELL_TIMEOUT_S = 300

IMPORTS = """
import json
import joblib
from afml_cache import maintain_cache, robust_cacheable, smart_cache_clear
"""

LOADER = """
@robust_cacheable(ignore=("counter",))
def load_data(n, counter):
    with open(counter, "a") as fh:
        fh.write(f"{n}\\n")
    return [STEP * i for i in range(n)]
"""

USE = """
data = load_data(3, COUNTER)
removed = [smart_cache_clear()["entries_removed"], maintain_cache()["entries_removed"]]
info = load_data.cache_info()
print(json.dumps({
    "data": data,
    "uncached": load_data.uncached(3, "/dev/null"),
    "removed": removed,
    "name": load_data.__afml_cache__.name,
    "stats": [info["total_calls"], info["cache_hits"], info["cache_misses"]],
}))
"""

# A sweep in worker processes, which get the notebook's function by value, then maintenance.
SWEEP = """
swept = joblib.Parallel(n_jobs=2)(joblib.delayed(load_data)(n, COUNTER) for n in (2, 3))
removed = [smart_cache_clear()["entries_removed"], maintain_cache()["entries_removed"]]
print(json.dumps({"swept": swept, "removed": removed}))
"""


def run_notebook(path: Path, step: int, counter: Path, cache: Path) -> list[dict[str, Any]]:
    """Writes the notebook at ``path``, runs it in a fresh kernel that knows its path, and
    returns what its last two cells printed (a cell that raised gives its error instead)."""
    cells = [IMPORTS, LOADER.replace("STEP", str(step)), f"COUNTER = {str(counter)!r}", USE, SWEEP]
    notebook = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(c) for c in cells])
    nbformat.write(notebook, path)
    env = {**os.environ, "JPY_SESSION_NAME": str(path), "AFML_CACHE_DIR": str(cache)}
    env.pop("AFML_CACHE_DISABLE", None)
    client = nbclient.NotebookClient(
        notebook,
        kernel_name="python3",
        timeout=CELL_TIMEOUT_S,
        allow_errors=True,  # every cell runs: each one's outcome is asserted on its own
        resources={"metadata": {"path": str(path.parent)}},
    )
    client.execute(env=env)
    return [printed(cell) for cell in notebook.cells[-2:]]


def printed(cell: Any) -> dict[str, Any]:
    for output in cell.outputs:
        if output.output_type == "error":
            return {"error": f"{output.ename}: {output.evalue}"}
    [text] = [o["text"] for o in cell.outputs if o.get("name") == "stdout"]
    return json.loads(text.strip().splitlines()[-1])


def computed(counter: Path) -> list[int]:
    return sorted(int(x) for x in counter.read_text().split())


def test_two_notebooks_functions_of_one_name_keep_their_own_entries(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    first, second = tmp_path / "a" / "explore.ipynb", tmp_path / "b" / "explore.ipynb"
    first.parent.mkdir()
    second.parent.mkdir()
    counter_a, counter_b = tmp_path / "a.txt", tmp_path / "b.txt"

    a, a_sweep = run_notebook(first, 1, counter_a, cache)
    b, b_sweep = run_notebook(second, 10, counter_b, cache)
    again, again_sweep = run_notebook(first, 1, counter_a, cache)  # a new kernel: a restart

    assert a["data"] == a["uncached"] == again["data"] == [0, 1, 2]
    assert b["data"] == b["uncached"] == [0, 10, 20]
    # The second notebook's maintenance left the first's entries alone, and each notebook's
    # statistics are its own calls (its workers' included).
    assert a["removed"] == b["removed"] == again["removed"] == [0, 0]
    assert a["stats"] == b["stats"] == [1, 0, 1]
    assert again["stats"] == [4, 2, 2]  # after the first run's sweep: 2 computed, 3 read
    assert a["name"] == again["name"] == f"__main__[{first}].load_data"
    assert b["name"] == f"__main__[{second}].load_data"
    # The workers computed only what the notebook had not, and maintenance kept their entries.
    assert a_sweep == again_sweep == {"swept": [[0, 1], [0, 1, 2]], "removed": [0, 0]}
    assert b_sweep == {"swept": [[0, 10], [0, 10, 20]], "removed": [0, 0]}
    assert computed(counter_a) == [2, 3] and computed(counter_b) == [2, 3]


DYNAMIC = [
    "import json\nfrom afml_cache import robust_cacheable\nSCALE = 2",
    '@robust_cacheable\ndef by_name(x):\n    return x * globals()["SCALE"]',
    "by_name(3)",
    "_",  # the kernel's history of outputs grows at every cell
    'print(json.dumps([by_name(3), by_name.cache_info()["cache_hits"]]))',
    "SCALE = 5",
    'print(json.dumps([by_name(3), by_name.uncached(3), by_name.cache_info()["cache_hits"]]))',
]


def test_a_function_reading_globals_by_name_hits_across_cells_until_one_changes(
    tmp_path: Path,
) -> None:
    path = tmp_path / "dynamic.ipynb"
    notebook = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(c) for c in DYNAMIC])
    nbformat.write(notebook, path)
    env = {**os.environ, "JPY_SESSION_NAME": str(path), "AFML_CACHE_DIR": str(tmp_path / "c")}
    env.pop("AFML_CACHE_DISABLE", None)
    client = nbclient.NotebookClient(
        notebook,
        kernel_name="python3",
        timeout=CELL_TIMEOUT_S,
        allow_errors=True,
        resources={"metadata": {"path": str(tmp_path)}},
    )
    client.execute(env=env)
    assert printed(notebook.cells[4]) == [6, 1]  # IPython's In, Out, _, _3 do not count
    assert printed(notebook.cells[6]) == [15, 15, 1]
