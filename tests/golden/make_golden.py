"""Writes the golden vectors of the current fingerprint spec: `python tests/golden/make_golden.py`.

Run it only when the spec version changes (see docs/fingerprint.md); the vectors of a released
version never change.
"""

from __future__ import annotations

import json
import pathlib
import sys

HERE = pathlib.Path(__file__).parent
sys.path.insert(0, str(HERE.parent))

import afml_cache  # noqa: E402
from golden.recipes import RECIPES, evaluate  # noqa: E402


def main() -> None:
    vectors = [
        {"name": name, "recipe": recipe, "digest": afml_cache.fingerprint(evaluate(recipe))}
        for name, recipe in RECIPES
    ]
    path = HERE / f"fingerprint_v{afml_cache.SPEC_VERSION}.json"
    document = {"spec_version": afml_cache.SPEC_VERSION, "vectors": vectors}
    path.write_text(json.dumps(document, indent=1, ensure_ascii=False) + "\n")
    print(f"wrote {len(vectors)} vectors to {path}")


if __name__ == "__main__":
    main()
