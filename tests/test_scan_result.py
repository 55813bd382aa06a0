"""The one scan result type: a consensus is its own kind and keeps the study's format to the byte,
a hand-made file gets the fields that follow from its matrices, and a broken file is one line
that names the file and the key, from Python, the CLI and the report."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import pytest

from speechprune.cli import main
from speechprune.errors import UserError
from speechprune.files import write_json
from speechprune.prune.strategies import angular, block_influence
from speechprune.report.discover import discover
from speechprune.scan.blocks import best_blocks, block_distances
from speechprune.scan.blocks import block_influence as influence_of
from speechprune.scan.consensus import consensus
from speechprune.scan.result import ScanResult
from tests.helpers import noisy_angular

LAYERS = 6


def _angular(seed: int) -> np.ndarray:
    return noisy_angular(LAYERS, seed, noise=0.05)


def _measured() -> dict:
    """A scan.json as ``speechprune scan`` lays it out (key order included), from made-up matrices."""
    regions = {}
    for k, region in enumerate(("all", "last")):
        a = _angular(k)
        c = np.cos(np.pi * a)
        regions[region] = {"angular": a.tolist(), "cosine": c.tolist(), "count": 30 + k,
                           "best_blocks": best_blocks(a), "block_influence": influence_of(c)}
    regions["empty"] = {"angular": None, "cosine": None, "count": 0, "best_blocks": [], "block_influence": []}
    regions["all"]["stability"] = [{"n": n, "start": 0, "change_rate": 0.0} for n in range(1, LAYERS + 1)]
    return {"num_layers": LAYERS, "index_convention": "0-based", "inputs": {"speech": {"regions": regions}},
            "model": {"path": "m", "family": "llama"}, "data": {"manifest": "d.jsonl"}, "settings": {"bootstrap": 10},
            "seconds": 1.5, "figures": ["best_blocks.png"]}


def test_a_measured_scan_saves_back_to_the_same_bytes(tmp_path):
    write_json(tmp_path / "scan.json", _measured())
    result = ScanResult.load(tmp_path)
    assert result.inputs["speech"]["last"].count == 31 and not result.inputs["speech"]["empty"].counted
    assert result.save(tmp_path / "again.json").read_bytes() == (tmp_path / "scan.json").read_bytes()


def test_the_consensus_is_its_own_kind_in_the_studys_format(tmp_path):
    angulars = {"a": _angular(1), "b": _angular(2), "c": _angular(3)}
    backbone = consensus(angulars, "speech", "all")
    mean = np.mean(list(angulars.values()), axis=0)
    for row in backbone.rows:  # the start minimising the mean block distance, recomputed directly
        n = row["n"]
        distances = [np.mean([m[l, l + n] for m in angulars.values()]) for l in range(LAYERS - n + 1)]
        assert row["consensus_start"] == int(np.argmin(distances))
    # the file the study wrote by hand before this type existed, byte for byte
    write_json(tmp_path / "by-hand.json", {
        "num_layers": LAYERS, "kind": "consensus", "conditions": ["a", "b", "c"],
        "inputs": {"speech": {"regions": {"all": {"angular": mean.tolist(), "best_blocks": best_blocks(mean),
                                                  "stability": None}}}}})
    assert backbone.scan.save(tmp_path / "scan").read_bytes() == (tmp_path / "by-hand.json").read_bytes()
    loaded = ScanResult.load(tmp_path / "by-hand.json")
    assert loaded.is_consensus and loaded.consensus_of == ["a", "b", "c"]
    region = loaded.inputs["speech"]["all"]
    assert region.count is None and region.cosine is None and region.stability is None
    # any angular strategy reads it like a scan; BI needs cosines a consensus does not hold
    assert angular(loaded, 2) == list(range(backbone.rows[1]["consensus_start"],
                                            backbone.rows[1]["consensus_start"] + 2))
    with pytest.raises(UserError, match="only angular"):
        block_influence(loaded, 2)


def test_a_hand_made_scan_gets_what_follows_from_its_matrices():
    payload = _measured()
    for entry in payload["inputs"]["speech"]["regions"].values():
        del entry["best_blocks"], entry["block_influence"]
    result = ScanResult.from_dict(payload)
    a = np.asarray(payload["inputs"]["speech"]["regions"]["all"]["angular"])
    c = np.asarray(payload["inputs"]["speech"]["regions"]["all"]["cosine"])
    blocks = result.inputs["speech"]["all"].best_blocks
    table = block_distances(a)
    assert [b["start"] for b in blocks] == [int(np.argmin(table[n - 1, : LAYERS - n + 1])) for n in range(1, LAYERS + 1)]
    assert result.inputs["speech"]["all"].block_influence == pytest.approx([1 - c[l, l + 1] for l in range(LAYERS)])
    assert result.inputs["speech"]["empty"].best_blocks == []


def _break(change):
    payload = _measured()
    change(payload)
    return payload


BROKEN = {
    "num_layers": (lambda p: p.pop("num_layers"), "num_layers is missing"),
    "layers": (lambda p: p.update(num_layers="six"), "num_layers is 'six'"),
    "inputs": (lambda p: p.update(inputs={}), "inputs is missing or empty"),
    "count": (lambda p: p["inputs"]["speech"]["regions"]["all"].pop("count"), "inputs.speech.regions.all.count is missing"),
    "shape": (lambda p: p["inputs"]["speech"]["regions"]["last"].update(angular=[[0.0]]),
              "inputs.speech.regions.last.angular is not a 7x7 matrix"),
    "cosine": (lambda p: p["inputs"]["speech"]["regions"]["all"].pop("cosine"), "regions.all.cosine is missing"),
    "kind": (lambda p: p.update(kind="mean"), "kind is 'mean'"),
    "conditions": (lambda p: p.update(kind="consensus"), "conditions"),
}


@pytest.mark.parametrize("name", BROKEN)
def test_a_broken_scan_is_one_line_naming_the_file_and_the_key(name, tmp_path, capsys):
    change, says = BROKEN[name]
    folder = tmp_path / "scan"
    write_json(folder / "scan.json", _break(change))
    with pytest.raises(UserError) as error:
        ScanResult.load(folder)
    message = str(error.value)
    assert str(folder / "scan.json") in message and says in message and "\n" not in message
    assert main(["compare", str(folder), str(folder), "--out", str(tmp_path / "cmp")]) == 2
    err = capsys.readouterr().err.strip()
    assert says in err and str(folder / "scan.json") in err and len(err.splitlines()) == 1
    assert not (tmp_path / "cmp").exists()


def test_not_json_and_no_file_are_one_line_too(tmp_path):
    (tmp_path / "scan.json").write_text("{ not json")
    with pytest.raises(UserError, match="not valid JSON"):
        ScanResult.load(tmp_path)
    with pytest.raises(UserError, match=r"not a scan: .*missing \(no scan.json\)"):
        ScanResult.load(tmp_path / "missing")


def test_the_report_lists_a_broken_scan_as_unreadable(tmp_path):
    write_json(tmp_path / "good" / "scan.json", _measured())
    write_json(tmp_path / "bad" / "scan.json", _break(BROKEN["count"][0]))
    write_json(tmp_path / "other" / "scan.json", {"something": "else"})  # another tool's file: not ours
    run = discover(tmp_path)
    assert [found.path.name for found in run.scans] == ["good"]
    assert isinstance(run.scans[0].data, ScanResult)
    assert len(run.unreadable) == 1 and "count is missing" in run.unreadable[0] and "bad" in run.unreadable[0]


def test_python_callers_may_pass_the_dict_of_a_scan_json():
    payload = _measured()
    as_dict = copy.deepcopy(payload)
    assert angular(as_dict, 3) == angular(ScanResult.from_dict(payload), 3)
    assert as_dict == payload  # read, not changed
    assert json.loads(json.dumps(ScanResult.from_dict(payload).to_dict())) == payload


def test_reading_a_region_says_what_the_scan_has():
    result = ScanResult.from_dict(_measured())
    with pytest.raises(UserError, match="no 'text' input"):
        result.matrix("text", "all")
    with pytest.raises(UserError, match="no region 'prompt'"):
        result.matrix("auto", "prompt")
    with pytest.raises(UserError, match="counted no position in region 'empty'"):
        result.matrix("speech", "empty")
    np.testing.assert_array_equal(result.matrix("auto", "last", "cosine"), np.cos(np.pi * _angular(1)))


def test_source_names_the_origin(tmp_path: Path):
    with pytest.raises(UserError, match=r"^the scan: not a valid scan result: num_layers is missing$"):
        ScanResult.from_dict({"inputs": {}})
