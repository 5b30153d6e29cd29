"""train.config: the machine's defaults, precision and XLA, and a resumed run's settings."""

import dataclasses
import json
import re

import keras
import pytest

pytest.importorskip("tensorflow")

from cityscapes_unet.errors import UsageError  # noqa: E402
from cityscapes_unet.settings import MACHINE_DEFAULTS, TrainConfig, stages  # noqa: E402
from cityscapes_unet.train import config  # noqa: E402
from cityscapes_unet.train.config import Machine, resolve_config, resolve_xla  # noqa: E402
from conftest import main_in_process, run_main  # noqa: E402

CPU, BF16, GPU = Machine(False, False), Machine(False, True), Machine(True, False)


@pytest.mark.parametrize(
    "precision, machine, policy, kind",
    [
        ("auto", BF16, "mixed_bfloat16", "cpu_bf16"),
        ("auto", CPU, "float32", "cpu"),
        ("float32", BF16, "float32", "cpu"),  # float32 asked for on a CPU with bf16 units: float32's defaults
        ("mixed_bfloat16", CPU, "mixed_bfloat16", "cpu"),  # bf16 without the units is no faster
        ("auto", GPU, "mixed_float16", "gpu"),
    ],
)
def test_defaults_follow_the_machine_and_precision(precision, machine, policy, kind):
    cfg, got, reasons = resolve_config(TrainConfig(precision=precision), machine)
    defaults, why = MACHINE_DEFAULTS[kind]
    assert got == policy and {k: getattr(cfg, k) for k in defaults} == defaults
    # One line says which machine's defaults and why; each default where it came from.
    assert reasons[0] == f"machine = {kind} ({why})"
    assert f"base_filters = {defaults['base_filters']} ({kind} default)" in reasons
    given, _, reasons = resolve_config(
        TrainConfig(precision=precision, base_filters=8, augment="flip"), machine
    )
    assert (given.base_filters, given.augment) == (
        8,
        "flip",
    ) and "base_filters = 8 (from the command line)" in reasons


def test_a_given_size_trains_at_that_size_alone():
    cfg, _, reasons = resolve_config(TrainConfig(), BF16)
    assert [(s.size, s.first, s.end) for s in stages(cfg)] == [(80, 0, 4), (96, 4, 6), (144, 6, 10)]
    cfg, _, reasons = resolve_config(TrainConfig(image_size=112), BF16)
    assert cfg.first_size == cfg.final_size == 0 and len(stages(cfg)) == 1
    assert "final_size = 0 (one size throughout: --image-size or --encoder given)" in reasons
    cfg, _, _ = resolve_config(TrainConfig(image_size=64, final_size=96), BF16)  # given with it: kept
    assert [(s.size, s.first, s.end) for s in stages(cfg)] == [(64, 0, 6), (96, 6, 10)]
    cfg, _, _ = resolve_config(TrainConfig(encoder="resnet50"), BF16)
    assert cfg.image_size % 32 == 0 and cfg.first_size == cfg.final_size == 0


def test_machine_defaults_table_has_a_reason_without_figures():
    for values, why in MACHINE_DEFAULTS.values():
        assert set(values) == set(MACHINE_DEFAULTS["cpu"][0])
        assert isinstance(why, str) and "\n" not in why and len(why) < 100
        assert not re.search(r"\b\d", why), why  # "bf16" is a name, not a figure


def test_xla_choice():
    assert resolve_xla("on", GPU) is True and resolve_xla("off", BF16, "mixed_bfloat16") is False
    assert resolve_xla("auto", GPU) == "auto"
    if keras.backend.backend() == "tensorflow":
        # CPU: Keras' "auto" would leave XLA off; float32, and bf16 without the units, run faster with it.
        assert resolve_xla("auto", CPU) is True and resolve_xla("auto", CPU, "mixed_bfloat16") is True
        assert resolve_xla("auto", BF16, "mixed_bfloat16") == "auto"  # oneDNN's kernels use the units
        assert resolve_xla("auto", CPU, cpu_replicas=2) is False  # XLA cannot run over CPU replicas
        with pytest.raises(UsageError, match="^--xla on: "):
            resolve_xla("on", CPU, cpu_replicas=2)


def test_resume_takes_the_saved_settings_and_refuses_contradictions(tmp_path):
    saved = {
        **dataclasses.asdict(TrainConfig(output_dir=str(tmp_path), epochs=3, image_size=32)),
        "precision_policy": "float32",
    }
    saved["config_version"] = 1  # the version before this one wrote every setting
    (tmp_path / "config.json").write_text(json.dumps({**saved, "carve": "blocks", "class_weight_power": 0.2}))
    cfg, _ = config.resume_config(
        TrainConfig(output_dir=str(tmp_path), num_preds=1), {"output_dir", "num_preds"}
    )
    assert (cfg.epochs, cfg.image_size, cfg.num_preds) == (3, 32, 1)  # num_preds may change
    with pytest.raises(UsageError, match=r"^--resume: --set final_size=48 contradicts the run in"):
        config.resume_config(TrainConfig(output_dir=str(tmp_path), final_size=48), {"final_size"})
    # A run of an older version that used a setting this one no longer has.
    (tmp_path / "config.json").write_text(json.dumps({**saved, "carve": "random"}))
    with pytest.raises(UsageError, match="^--resume: .*carve=random"):
        config.resume_config(TrainConfig(output_dir=str(tmp_path)), set())
    # One from before the block setting trains plain blocks, as it did.
    del saved["block"], saved["config_version"]
    (tmp_path / "config.json").write_text(json.dumps({**saved, "carve": "blocks", "class_weight_power": 0.2}))
    assert config.resume_config(TrainConfig(output_dir=str(tmp_path)), set())[0].block == "plain"


@pytest.mark.slow
def test_bad_set_key_or_config_on_the_command_line_is_one_line(tmp_path):
    # In a process of its own, as a user runs it: one line, exit code 2, nothing written.
    r = run_main("--set", "nope=1", "--output-dir", tmp_path / "o", cwd=tmp_path)
    assert r.returncode == 2 and r.stderr.strip().splitlines()[-1].startswith("error: --set nope=1: "), (
        r.stderr[-2000:]
    )
    assert "Traceback" not in r.stderr and not (tmp_path / "o").exists()
    r = main_in_process("--config", tmp_path / "missing.json", "--output-dir", tmp_path / "o")
    assert r.returncode == 2 and r.stderr.startswith(f"error: --config {tmp_path / 'missing.json'}")
