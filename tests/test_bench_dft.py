"""scripts/bench_dft.py (the ethanol DFT benchmark): a run's tag, the commands it runs and the
report's keys carry every setting that changes a result (variant, seed), checked without training."""

from __future__ import annotations

import pytest
from script_modules import load_script


@pytest.fixture(scope="module")
def bench():
    return load_script("bench_dft")


def test_tags_name_every_setting_that_changes_a_result(bench):
    assert bench.run_tag("mlip-mace", 15, None, True) == "mlip-mace_15min"
    assert bench.run_tag("mlip-mace", 60, 250, False, "s24", 1) == "mlip-mace_60min_n250_nozbl_s24_seed1"
    assert bench.run_tag("mace-torch", 15, None, False, "s24", 0) == "mace-torch_15min_s24"  # seed 0: older tags unchanged
    tags = {bench.run_tag("mlip-mace", 15, None, True, "s24", seed) for seed in (0, 1, 2)}
    assert len(tags) == 3


def test_both_programs_get_the_seed(bench, tmp_path):
    mlip = bench.mlip_command("mace", tmp_path, tmp_path / "runs", "tag", 15, None, True, [], seed=3)
    assert "seed=3" in mlip
    mace = bench.mace_torch_command("python", tmp_path, tmp_path / "run", 15, None, seed=3)
    assert mace[mace.index("--seed") + 1] == "3"


def test_stored_results_keep_their_tag_and_label(bench):
    old = {"model": "mlip-mace", "minutes": 60, "n_train": 1000, "zbl": True, "variant": "float32"}  # before seeds
    assert bench.result_tag(old) == "mlip-mace_60min_float32"
    repeat = {**old, "variant": "s24", "seed": 1}
    assert bench.result_tag(repeat) == "mlip-mace_60min_s24_seed1"
    assert bench.label(repeat) == "mlip-mace [s24] seed 1"
