"""The benchmark runner end to end, in its quick mode (a 1-2 minute smoke test of benchmarks/)."""

import json
import math
import os
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:  # `benchmarks` is a folder of the repository, not an installed package
    sys.path.insert(0, ROOT)

from benchmarks import SECTIONS  # noqa: E402
from benchmarks.__main__ import TITLES, main, write_markdown  # noqa: E402


def _numbers(row):
    return [v for v in row.values() if isinstance(v, (int, float)) and not isinstance(v, bool)]


def test_the_committed_results_render_again_from_their_json(tmp_path):
    """``--only`` keeps the other sections from results.json and renders them again: every
    section must render from its JSON form (float dict keys come back as strings)."""
    with open(os.path.join(ROOT, "benchmarks", "results.json")) as handle:
        results = json.load(handle)
    assert set(results["sections"]) == set(SECTIONS)
    path = tmp_path / "RESULTS.md"
    write_markdown(results, str(path))
    text = path.read_text()
    for name in SECTIONS:
        assert TITLES[name] in text, name
    assert "The section failed" not in text


def test_targets_compare_in_the_direction_they_name():
    from benchmarks.common import verdict  # noqa: PLC0415

    assert verdict(-0.8, 0.0, ">") == "MISS" and verdict(0.1, 0.0, ">") == "PASS"
    assert verdict(0.0, 0.0, ">") == "MISS" and verdict(0.0, 0.0, ">=") == "PASS"
    assert verdict(1.2, 1.0, "<=") == "MISS" and verdict(0.9, 1.0, "<") == "PASS"
    assert verdict(float("nan"), 0.0, ">=") == "MISS"
    with pytest.raises(ValueError, match="unknown comparison"):
        verdict(1.0, 0.0, "=>")


@pytest.mark.slow
@pytest.mark.skipif(os.environ.get("TFSYNAPSE_LONG") != "1", reason="TFSYNAPSE_LONG=1 (5 minutes)")
def test_quick_mode_writes_every_section(tmp_path):
    assert main(["--quick", "--output", tmp_path]) == 0

    results = json.loads((tmp_path / "results.json").read_text())
    assert results["meta"]["mode"] == "quick"
    machine = results["meta"]["machine"]
    assert machine["cores"] >= 1 and machine["versions"]["tensorflow"]
    assert set(results["sections"]) == set(SECTIONS)
    for name in SECTIONS:
        section = results["sections"][name]
        assert section["status"] == "ok", section.get("error")
        assert section["rows"], name
        for row in section["rows"]:
            numbers = _numbers(row)
            assert numbers, (name, row)
            assert all(math.isfinite(v) for v in numbers), (name, row)
        for plot in section["plots"]:
            assert (tmp_path / plot).stat().st_size > 0, plot
        for target in section["targets"]:
            assert target["status"] in ("PASS", "MISS")

    for name in ("speed", "speed_keras3"):  # tf_keras and Keras 3 models
        speed = results["sections"][name]["rows"]
        assert all(r["mac_factor"] > 1.0 and r["speedup"] > 0 for r in speed if r["kind"] == "shrunk")
        assert any("status" in r for r in speed)  # the 50% fp32 row is checked against its target
    overhead = results["sections"]["overhead"]["rows"]
    plain = next(r for r in overhead if r["variant"] == "plain")
    assert plain["ratio"] == 1.0 and all(r["ratio"] > 0 for r in overhead)
    accuracy = results["sections"]["accuracy"]
    summary = accuracy["summary"]
    assert 0.0 < summary["dense_test"] <= 1.0 and 0.0 < summary["control_p2_test"] <= 1.0
    assert summary["connection"] and summary["filter"] and summary["equal"] and summary["oneshot"]
    assert {c["method"] for c in summary["connection"]} == {
        "synaptic_strength", "gamma_kernel_norm", "kernel_norm"}
    for row in accuracy["rows"]:
        if row["part"] in ("filter", "equal"):  # the one-shot channels stayed pruned
            assert row["channels_removed"] >= row["channels_planned"], row
        if row["part"] == "connection":
            assert abs(row["connection_sparsity"] - row["sparsity"]) < 0.01, row
    assert summary["deploy"]["qat_minus_float"]["n"] == 1 and summary["verdicts"]
    scale = results["sections"]["scale"]["rows"]
    assert all(r["layers"] > 100 and r["prune_once_s"] > 0 for r in scale)

    markdown = (tmp_path / "RESULTS.md").read_text()
    assert "quick mode" in markdown and "## Machine" in markdown
    for title in TITLES.values():
        assert title in markdown
    assert "PASS" in markdown or "MISS" in markdown


def test_int8_layers_rebuilds_each_convolution_alone_with_its_fused_relu():
    """The int8_layers section times convolutions rebuilt alone: each must compute what the
    layer and the ReLU the converter fuses into it compute (batch norm aside, it is folded)."""
    import numpy as np

    from benchmarks.int8_layers import alone
    from tfsynapse.backends.tf_keras import keras

    inputs = keras.Input((8, 8, 3))
    x = keras.layers.Conv2D(4, 3, use_bias=False, name="conv")(inputs)
    x = keras.layers.BatchNormalization(name="bn")(x)
    x = keras.layers.ReLU(6.0, name="relu6")(x)
    y = keras.layers.DepthwiseConv2D(3, padding="same", name="dw")(x)
    y = keras.layers.Add(name="add")([x, y])
    model = keras.Model(inputs, y)
    sample = np.random.default_rng(0).standard_normal((2, 8, 8, 3)).astype("float32") * 20

    conv_alone, shape = alone(model.get_layer("conv"), model, keras)
    assert shape == (8, 8, 3)
    expected = np.clip(model.get_layer("conv")(sample).numpy(), 0.0, 6.0)
    assert expected.max() > 6.0 - 1e-6 and expected.min() == 0.0  # the cap and the floor act
    np.testing.assert_allclose(conv_alone(sample).numpy(), expected, atol=1e-5)

    features = model.get_layer("relu6").output
    dw_alone, shape = alone(model.get_layer("dw"), model, keras)  # followed by an Add: no ReLU
    assert shape == (6, 6, 4) and len(dw_alone.layers) == 2
    hidden = keras.Model(inputs, features)(sample)
    np.testing.assert_allclose(dw_alone(hidden).numpy(),
                               model.get_layer("dw")(hidden).numpy(), atol=1e-5)


def test_int8_speed_targets_take_the_median_of_the_interleaved_repeats():
    """The int8_speed targets: plain int8 and the better mixed export, each the median over
    repeats of protocol 'all' (never the pair protocol, never one lucky repeat)."""
    from benchmarks import int8_speed  # noqa: PLC0415

    def row(export, protocol, ratio):
        return {"model": "ResNet50", "threads": 1, "export": export, "protocol": protocol,
                "ratio": ratio}

    rows = ([row("int8", "all", r) for r in (0.85, 0.95, 0.88)]
            + [row("int8", "pair", r) for r in (0.99, 0.99, 0.99)]
            + [row("stem float", "all", r) for r in (0.91, 0.89, 0.92)]
            + [row("first resolution float", "all", r) for r in (0.80, 0.99, 0.80)])
    assert int8_speed.summary(rows)[("ResNet50", 1, "int8", "all")] == (0.88, 0.85, 0.95, 3)
    targets = int8_speed._targets(rows)
    assert [(t["value"], t["status"]) for t in targets] == [(0.88, "MISS"), (0.91, "PASS")]
    assert "stem float" in targets[1]["name"] and "pair" not in targets[0]["name"]
