"""The configuration of a run: --set KEY=VALUE, --config FILE, the checks and their messages."""

import dataclasses
import json

import pytest

pytest.importorskip("tensorflow")

from cityscapes_unet.data.decode import AUGMENTS  # noqa: E402
from cityscapes_unet.errors import UsageError  # noqa: E402
from cityscapes_unet.train import config, run  # noqa: E402
from cityscapes_unet.train.config import TrainConfig, config_from_command_line  # noqa: E402
from conftest import TINY, run_main  # noqa: E402


def test_set_parses_by_the_fields_type():
    cfg, given = config_from_command_line(
        {},
        [
            "epochs=3",
            "learning_rate=1e-3",
            "val-split=0.25",  # a flag's spelling works too
            "tensorboard=yes",
            "limit=",  # empty: None, for a field that may be None
            "augment=none",  # the mode "none", not None
            "tta=flip",
            "seed=1",
            "seed=2",  # a later one wins
        ],
    )
    assert (cfg.epochs, cfg.learning_rate, cfg.val_split, cfg.tensorboard) == (3, 1e-3, 0.25, True)
    assert cfg.limit is None and cfg.augment == "none" and cfg.tta == "flip" and cfg.seed == 2
    assert isinstance(cfg.epochs, int) and isinstance(cfg.learning_rate, float)
    assert given == {"epochs", "learning_rate", "val_split", "tensorboard", "limit", "augment", "tta", "seed"}


@pytest.mark.parametrize(
    "item, needle",
    [
        ("nope=1", "--set nope=1: no setting 'nope'; the settings: data_dir, output_dir"),
        ("epochs", "--set epochs: expected KEY=VALUE"),
        ("epochs=abc", "--set epochs=abc: epochs must be an integer, not 'abc'"),
        ("batch_size=2.5", "--set batch_size=2.5: batch_size must be an integer or empty, not '2.5'"),
        ("tensorboard=maybe", "--set tensorboard=maybe: tensorboard must be true or false"),
        ("logit_adjust=x", "--set logit_adjust=x: logit_adjust must be a number"),
    ],
)
def test_set_bad_key_or_value(item, needle):
    with pytest.raises(UsageError) as e:
        config_from_command_line({}, [item])
    assert str(e.value).startswith(needle) and "\n" not in str(e.value)


def test_set_and_its_flag_together_is_refused():
    with pytest.raises(
        UsageError, match=r"^--set epochs=3: epochs is given as --epochs 2 too; give it once$"
    ):
        config_from_command_line({"epochs": 2}, ["epochs=3"])


def test_checks_name_set_only_settings_by_set():
    for field, value, needle in [
        ("tta", "bogus", "--set tta=bogus: must be one of none, flip, scales"),
        ("val_split", 1.5, "--set val_split=1.5: must be between 0 and 1 (exclusive)"),
        ("carve", "city", "--set carve=city: must be one of random, blocks"),
        ("class_weight_power", 1.5, "--set class_weight_power=1.5: must be between 0 and 1"),
        ("warmup_epochs", 20.0, "--set warmup_epochs=20.0: must be 0 or more and fewer than --epochs"),
        ("epochs", 0, "--epochs 0: must be at least 1"),
        ("image_size", 40, "--image-size 40: must be a positive multiple of 16 (2^4 down-sampling levels)"),
        (
            "final_size",
            100,
            "--set final_size=100: must be 0 (off) or a positive multiple of 16 (2^4 down-sampling levels)",
        ),
        ("final_epochs", 0, "--set final_epochs=0: must be at least 1"),
        (
            "first_size",
            40,
            "--set first_size=40: must be 0 (off) or a positive multiple of 16 (2^4 down-sampling levels)",
        ),
        ("first_epochs", 0, "--set first_epochs=0: must be at least 1"),
    ]:
        with pytest.raises(UsageError) as e:
            config.validate_config(TrainConfig(**{field: value}))
        assert str(e.value) == needle
    config.validate_config(TrainConfig())  # the defaults pass


def test_size_phases_switch_for_the_last_epochs_only():
    def phases(**given):
        fields = {"image_size": 96, "first_size": 0, "final_size": 128, "epochs": 10, "final_epochs": 2}
        return config.size_phases(TrainConfig(**{**fields, **given}))

    assert phases() == [(96, 0, 8), (128, 8, 10)]
    assert phases(final_epochs=3) == [(96, 0, 7), (128, 7, 10)]
    assert phases(epochs=2, final_epochs=5) == [(96, 0, 1), (128, 1, 2)]  # never the first epoch
    assert phases(epochs=1) == [(96, 0, 1)]
    assert phases(final_size=0) == phases(final_size=96) == [(96, 0, 10)]  # off, or not larger
    cfg = TrainConfig(image_size=96, first_size=0, final_size=128, epochs=10, final_epochs=2)
    assert [run.size_of_epoch(cfg, e) for e in range(10)] == [96] * 8 + [128] * 2


def test_size_phases_with_smaller_first_epochs():
    def phases(**given):
        fields = {"image_size": 96, "first_size": 80, "final_size": 128, "epochs": 10, "final_epochs": 4}
        return config.size_phases(TrainConfig(**{**fields, **given}))

    assert (TrainConfig().first_epochs, TrainConfig().final_epochs) == (4, 4)
    assert phases() == [(80, 0, 4), (96, 4, 6), (128, 6, 10)]
    assert phases(final_size=0) == [(80, 0, 4), (96, 4, 10)]
    assert phases(first_epochs=6) == [(80, 0, 6), (128, 6, 10)]  # nothing left at 96
    assert phases(first_epochs=9) == [(80, 0, 6), (128, 6, 10)]  # the final epochs keep theirs
    assert phases(final_size=0, epochs=3, first_epochs=5) == [(80, 0, 2), (96, 2, 3)]  # never the last
    assert phases(epochs=1) == [(96, 0, 1)]
    assert phases(first_size=0) == phases(first_size=96) == [(96, 0, 6), (128, 6, 10)]  # off, or not smaller
    cfg = TrainConfig(image_size=96, first_size=80, final_size=144, epochs=10)  # the bf16 CPU default
    assert [run.size_of_epoch(cfg, e) for e in range(10)] == [80] * 4 + [96] * 2 + [144] * 4


def test_the_machines_final_size_comes_with_its_image_size(monkeypatch):
    monkeypatch.setattr(config, "cpu_has_bf16_matmul", lambda: True)
    bf16 = {"precision": "mixed_bfloat16"}
    cfg, _, reasons = config.resolve_config(TrainConfig(**bf16), on_gpu=False)
    assert (cfg.first_size, cfg.image_size, cfg.final_size) == (80, 96, 144)
    assert "first_size = 80 (cpu_bf16 default)" in reasons
    assert "final_size = 144 (cpu_bf16 default)" in reasons
    # A size given on the command line (the long recipe's 128) trains at that size alone.
    cfg, _, reasons = config.resolve_config(TrainConfig(image_size=112, **bf16), on_gpu=False)
    assert cfg.first_size == cfg.final_size == 0 and config.size_phases(cfg) == [(112, 0, 10)]
    assert "first_size = 0 (one size throughout: --image-size or --encoder given)" in reasons
    assert "final_size = 0 (one size throughout: --image-size or --encoder given)" in reasons
    # Given with it: they stay.
    given = TrainConfig(image_size=64, final_size=96, **bf16)
    cfg, _, _ = config.resolve_config(given, on_gpu=False)
    assert config.size_phases(cfg) == [(64, 0, 6), (96, 6, 10)]  # the last 4 (`final_epochs`)
    cfg, _, _ = config.resolve_config(dataclasses.replace(given, first_size=48), on_gpu=False)
    assert config.size_phases(cfg) == [(48, 0, 4), (64, 4, 6), (96, 6, 10)]


def test_the_flags_and_set_only_settings_cover_the_config():
    import main

    parser = main.build_parser()
    dests = {a.dest for a in parser._actions} - {"help", *main.COMMAND_FLAGS}
    fields = {f.name: f.default for f in dataclasses.fields(TrainConfig)}
    assert dests | set(config.SET_ONLY) == set(fields) and not dests & set(config.SET_ONLY)
    # A flag left out takes the dataclass default: the two agree.
    for dest in dests:
        assert parser.get_default(dest) == fields[dest], dest
    for name in config.SET_ONLY:
        assert name in parser.epilog
    # Every help is one short line.
    for action in parser._actions:
        assert action.help and "\n" not in action.help and len(action.help) <= 90, action.dest


def test_the_flags_choices_are_the_configs():
    import main

    parser = main.build_parser()
    choices = {a.dest: tuple(a.choices) for a in parser._actions if a.choices}
    assert choices["augment"] == AUGMENTS
    assert choices["loss"] == config.LOSSES and choices["precision"] == config.PRECISIONS
    assert choices["schedule"] == config.SCHEDULES and choices["encoder"] == config.ENCODERS
    assert choices["xla"] == config.XLA_MODES


def test_resume_names_a_set_only_setting_by_set(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"output_dir": str(tmp_path), "tta": "scales"}))
    cfg = TrainConfig(output_dir=str(tmp_path), tta="flip")
    with pytest.raises(UsageError, match=r"^--resume: --set tta=flip contradicts the run in"):
        config.resume_config(cfg, {"tta"})


def test_resume_fills_settings_an_older_config_lacks_with_their_old_values(tmp_path):
    # A run saved before these settings trained with the values they had then.
    (tmp_path / "config.json").write_text(json.dumps({"output_dir": str(tmp_path)}))
    cfg, _ = config.resume_config(TrainConfig(output_dir=str(tmp_path)), set())
    assert (cfg.block, cfg.carve, cfg.class_weight_power) == ("plain", "random", 0.5)
    assert cfg.first_size == cfg.final_size == 0  # one size throughout, not the machine's choice
    assert TrainConfig().class_weight_power != 0.5  # so the fill is what gives 0.5
    assert TrainConfig().carve != "random"  # and "random"


def test_bad_set_key_on_the_command_line_is_one_line(tmp_path):
    r = run_main("--set", "nope=1", "--output-dir", tmp_path / "o", cwd=tmp_path)
    assert r.returncode == 2, r.stderr[-2000:]
    (line,) = r.stderr.strip().splitlines()[-1:]
    assert line.startswith("error: --set nope=1: no setting 'nope'")
    assert "Traceback" not in r.stderr and not (tmp_path / "o").exists()
    r = run_main("--config", tmp_path / "missing.json", "--output-dir", tmp_path / "o", cwd=tmp_path)
    assert r.returncode == 2 and "error: --config " in r.stderr and "missing.json: file not found" in r.stderr


def test_shipped_recipe_is_the_readme_command_line(tmp_path):
    # `--config long` is the long recipe's command line written out.
    import main

    flags = ["--epochs", "30", "--image-size", "128", "--augment", "flip"]
    parser = main.build_parser()
    given = {
        k: v for k, v in vars(parser.parse_args(flags)).items() if k in ("epochs", "image_size", "augment")
    }
    settings = ["first_size=96", "first_epochs=10", "final_size=160", "final_epochs=8"]
    written, _ = config_from_command_line(given, settings)
    preset, names = config_from_command_line({}, [], "long")
    assert preset == written and written != TrainConfig()
    assert names == {"epochs", "image_size", "augment", *(s.split("=")[0] for s in settings)}
    # A later flag still wins over the recipe; a file of that name wins over it.
    assert config_from_command_line({"epochs": 3}, [], "long")[0].epochs == 3
    (tmp_path / "long").write_text(json.dumps({"epochs": 2}))
    assert config_from_command_line({}, [], str(tmp_path / "long"))[0].epochs == 2
    for name in config.presets():
        assert name in _help(parser, "config")
    with pytest.raises(UsageError, match=r"^--config lon: file not found \(shipped recipes: long\)"):
        config_from_command_line({}, [], "lon")


def _help(parser, dest):
    return next(a.help for a in parser._actions if a.dest == dest)


def test_config_file_values_are_checked(tmp_path):
    path = tmp_path / "config.json"
    path.write_text(json.dumps({"epochs": "ten"}))
    with pytest.raises(UsageError, match="epochs must be an integer, not 'ten'"):
        config_from_command_line({}, [], str(path))
    path.write_text("[1, 2]")
    with pytest.raises(UsageError, match="not a config.json"):
        config_from_command_line({}, [], str(path))


def test_set_reaches_config_json_and_config_round_trips(tiny_data, tmp_path):
    out = tmp_path / "out"
    common = ("--epochs", 1, *TINY, "--num-preds", 0, "--progress-every", 0)
    r = run_main(
        "--data-dir", tiny_data, "--output-dir", out, *common,
        "--set", "tta=none", "--set", "val_split=0.25", "--set", "logit_adjust=0",
    )  # fmt: skip
    assert r.returncode == 0, r.stderr[-3000:]
    assert "tta = none, logit_adjust = 0.0" in r.stdout
    first = json.loads((out / "config.json").read_text())
    assert (first["tta"], first["val_split"], first["logit_adjust"]) == ("none", 0.25, 0.0)
    assert first["val_files"] == 3  # a quarter of the 12 pairs

    # Its config.json as the defaults of a new run (resolved in process, as
    # main.py does before training); a flag and --set override.
    out2 = tmp_path / "out2"
    second, _ = config_from_command_line({"output_dir": str(out2)}, ["seed=7"], str(out / "config.json"))
    assert second.output_dir == str(out2) and second.seed == 7
    changed = {k for k, v in dataclasses.asdict(second).items() if first[k] != v}
    assert changed == {"output_dir", "seed"}, changed
    # With nothing given, the file's fields come back as the same configuration.
    cfg, _ = config_from_command_line({}, [], str(out / "config.json"))
    assert dataclasses.asdict(cfg) == {k: first[k] for k in dataclasses.asdict(cfg)}
