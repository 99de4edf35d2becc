"""Golden vectors: the digests of the current spec version must never change
(docs/fingerprint.md). Older versions' files stay as history: every digest changes with the
version (it keys the hash), so only their recipes are checked, to be pinned still."""

from __future__ import annotations

import importlib.util
import json
import pathlib

import pytest
from golden.recipes import OPTIONAL_MODULES, evaluate

import afml_cache

GOLDEN = pathlib.Path(__file__).parent / "golden" / f"fingerprint_v{afml_cache.SPEC_VERSION}.json"
VECTORS = json.loads(GOLDEN.read_text())["vectors"]


def test_the_golden_file_belongs_to_the_current_spec_version():
    assert json.loads(GOLDEN.read_text())["spec_version"] == afml_cache.SPEC_VERSION
    assert len(VECTORS) >= 70


@pytest.mark.parametrize("vector", VECTORS, ids=[v["name"] for v in VECTORS])
def test_digest_is_unchanged(vector):
    for alias, module in OPTIONAL_MODULES.items():
        if f"{alias}." in vector["recipe"] and importlib.util.find_spec(module) is None:
            pytest.skip(f"{module} is not installed")
    assert afml_cache.fingerprint(evaluate(vector["recipe"])) == vector["digest"], (
        f"the digest of {vector['recipe']} changed: if the fingerprint spec changed, bump "
        "SPEC_VERSION and write new golden vectors (docs/fingerprint.md)"
    )


def test_golden_digests_are_all_distinct():
    digests = [v["digest"] for v in VECTORS]
    assert len(set(digests)) == len(digests)


@pytest.mark.parametrize("version", range(1, afml_cache.SPEC_VERSION))
def test_older_versions_are_kept_and_their_recipes_still_pinned(version):
    older = json.loads((GOLDEN.parent / f"fingerprint_v{version}.json").read_text())
    assert older["spec_version"] == version
    current = {v["name"]: v["recipe"] for v in VECTORS}
    assert {v["name"]: v["recipe"] for v in older["vectors"]}.items() <= current.items()
    assert not {v["digest"] for v in older["vectors"]} & {v["digest"] for v in VECTORS}
