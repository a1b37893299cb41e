"""Malformed space files (YAML and JSON) and ArchConfig JSON against the loaders: every input is
either accepted or refused with one of the project's one-line ValueErrors (SpaceError,
ConfigError, ...), never a KeyError / TypeError / AttributeError / RecursionError escaping."""
from __future__ import annotations

import json

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from attnsearch import search
from attnsearch.space.arch import ArchConfig
from attnsearch.search.export import check_export
from fuzz_inputs import TRIED, VALID_ARCH, VALID_SPACE, document_text, mutated, values

FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                        HealthCheck.function_scoped_fixture])


def assert_clear(fn, *args):
    """``fn(*args)`` succeeds or raises a project ValueError with a one-line message."""
    try:
        return fn(*args)
    except ValueError as exc:
        assert type(exc).__module__.startswith("attnsearch."), f"foreign {type(exc).__name__}: {exc}"
        text = str(exc)
        assert text.strip() and "\n" not in text, repr(text)
        return None


def test_fuzz_space_files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("spaces")

    @FUZZ
    @given(doc=document_text(VALID_SPACE))
    def run(doc):
        fmt, text = doc
        TRIED["space file (YAML/JSON text) -> search.load_space"] += 1
        path = folder / f"space.{fmt}"
        path.write_text(text, encoding="utf-8")
        space = assert_clear(search.load_space, path)
        if space is not None:              # accepted: it must be usable as a study space
            assert space.objective_names and space.mechanisms and space.fingerprint()
    run()


def test_fuzz_space_dicts():
    @FUZZ
    @given(doc=st.one_of(mutated(VALID_SPACE, max_mutations=4), values))
    def run(doc):
        TRIED["space object -> search.load_space(dict)"] += 1
        if isinstance(doc, dict):
            assert_clear(search.load_space, doc)
        else:   # not a mapping at all: the dict entry point refuses it, the text path too
            assert_clear(search.SearchSpace.from_dict, doc)
    run()


def test_fuzz_arch_json():
    @FUZZ
    @given(doc=document_text(VALID_ARCH))
    def run(doc):
        _fmt, text = doc
        if not text.lstrip()[:1] in ("{", "["):
            text = json.dumps(text)        # from_json treats other strings as paths
        TRIED["ArchConfig JSON text -> ArchConfig.from_json"] += 1
        arch = assert_clear(ArchConfig.from_json, text)
        if arch is not None:
            assert ArchConfig.from_json(arch.to_json()) == arch     # what is accepted round-trips
    run()


def test_fuzz_export_documents():
    good = {"format": "attnsearch-export", "export_schema_version": 1, "layer_types":
            ["full_attention", "sliding_attention", "linear_attention"],
            "layers": [{"mechanism": l["mechanism"]} for l in VALID_ARCH["layers"]],
            "arch": VALID_ARCH, "provenance": {}}

    @FUZZ
    @given(doc=mutated(good, max_mutations=3))
    def run(doc):
        TRIED["export document -> search.export.check_export"] += 1
        if isinstance(doc, dict):
            assert_clear(check_export, doc)
    run()
