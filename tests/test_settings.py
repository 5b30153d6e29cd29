"""settings: one source for every setting; the parsers, the README's tables, --set, --config, the checks."""

import dataclasses
import json
import os
import re

import pytest

from cityscapes_unet import settings
from cityscapes_unet.errors import UsageError
from cityscapes_unet.settings import TrainConfig, config_from_command_line, stages, validate_config
from conftest import ROOT, main_in_process


def test_the_readme_holds_the_generated_tables():
    with open(os.path.join(ROOT, "README.md")) as f:
        readme = f.read()
    flags, rest = settings.flag_tables()
    assert flags in readme and rest in readme


def test_the_tables_name_every_setting_once_with_its_default_and_choices():
    table = "".join(settings.flag_tables())
    for f in dataclasses.fields(TrainConfig):
        name = settings.flag_name(f.name) if f.metadata["flag"] else f.name
        (row,) = [r for r in table.splitlines() if r.startswith(f"| `{name}` |")]
        assert f"| {settings.default_text(f)} |" in row
        for choice in f.metadata["choices"] or ():
            assert choice in row
    # The machine's defaults come from its table: "8 on CPU, 16 on GPU".
    batch = TrainConfig.__dataclass_fields__["batch_size"]
    assert settings.default_text(batch) == "8 on CPU, 16 on GPU"


def test_the_parser_is_the_settings():
    import main

    parser = main.build_parser()
    flagged = {f.name for f in dataclasses.fields(TrainConfig) if f.metadata["flag"]}
    dests = {a.dest for a in parser._actions} - {"help", "config", "set", "resume", "overwrite"}
    assert dests == flagged
    # Only what is written out reaches the namespace, abbreviated flags included.
    assert vars(parser.parse_args([])) == {"config": None, "set": [], "resume": False, "overwrite": False}
    given = vars(parser.parse_args(["--epochs", "3", "--image-s", "64", "--tensorboard"]))
    assert (given["epochs"], given["image_size"], given["tensorboard"]) == (3, 64, True)
    with pytest.raises(SystemExit):
        parser.parse_args(["--loss", "focal"])  # choices come from the settings


def test_set_parses_by_the_settings_type():
    items = [
        "epochs=3",
        "learning_rate=1e-3",
        "val-split=0.25",
        "tensorboard=yes",
        "limit=",
        "augment=none",
        "seed=1",
        "seed=2",
    ]
    cfg, given = config_from_command_line({}, items)
    assert (cfg.epochs, cfg.learning_rate, cfg.val_split, cfg.tensorboard) == (3, 1e-3, 0.25, True)
    assert cfg.limit is None and cfg.augment == "none" and cfg.seed == 2  # a later one wins
    assert given == {"epochs", "learning_rate", "val_split", "tensorboard", "limit", "augment", "seed"}


@pytest.mark.parametrize("item", ["nope=1", "epochs", "epochs=abc", "batch_size=2.5", "tensorboard=maybe"])
def test_set_bad_key_or_value_names_it(item):
    with pytest.raises(UsageError) as e:
        config_from_command_line({}, [item])
    assert str(e.value).startswith(f"--set {item}:") and "\n" not in str(e.value)


def test_set_and_its_flag_together_is_refused():
    with pytest.raises(UsageError, match="^--set epochs=3: .*--epochs 2"):
        config_from_command_line({"epochs": 2}, ["epochs=3"])


@pytest.mark.parametrize(
    "field, value, flag",
    [
        ("epochs", 0, "--epochs 0"),
        ("image_size", 40, "--image-size 40"),
        ("val_split", 1.5, "--val-split 1.5"),
        ("final_size", 100, "--set final_size=100"),
        ("first_epochs", 0, "--set first_epochs=0"),
        ("loss", "focal", "--loss focal"),
        ("augment", "full", "--augment full"),
    ],
)
def test_checks_name_the_setting_as_the_user_gives_it(field, value, flag):
    with pytest.raises(UsageError) as e:
        validate_config(TrainConfig(**{field: value}))
    assert str(e.value).startswith(f"{flag}: ")
    validate_config(TrainConfig())  # the defaults pass


def test_encoders_need_multiples_of_32():
    with pytest.raises(UsageError, match="^--image-size 48: .*32"):
        validate_config(TrainConfig(encoder="resnet50", image_size=48))
    validate_config(TrainConfig(encoder="resnet50", image_size=64))


def test_stages_switch_for_the_first_and_last_epochs():
    def sizes(**given):
        fields = {"image_size": 96, "first_size": 80, "final_size": 128, "epochs": 10, "final_epochs": 4}
        return [(s.size, s.first, s.end) for s in stages(TrainConfig(**{**fields, **given}))]

    assert sizes() == [(80, 0, 4), (96, 4, 6), (128, 6, 10)]
    assert sizes(final_size=0) == [(80, 0, 4), (96, 4, 10)]
    assert sizes(first_epochs=9) == [(80, 0, 6), (128, 6, 10)]  # the final epochs keep theirs
    assert sizes(final_size=0, epochs=3, first_epochs=5) == [(80, 0, 2), (96, 2, 3)]  # never the last
    assert sizes(epochs=1) == [(96, 0, 1)]
    assert sizes(first_size=0, final_epochs=12) == [(96, 0, 1), (128, 1, 10)]  # never the first
    assert sizes(first_size=96, final_size=96) == [(96, 0, 10)]  # not smaller or larger: off
    cfg = TrainConfig(image_size=96, first_size=80, final_size=144, epochs=10)
    assert [settings.stage_of_epoch(cfg, e).size for e in range(10)] == [80] * 4 + [96] * 2 + [144] * 4


def test_the_shipped_recipe_is_its_command_line(tmp_path):
    written, _ = config_from_command_line(
        {"epochs": 30, "image_size": 128, "augment": "flip"},
        ["first_size=96", "first_epochs=10", "final_size=160", "final_epochs=8"],
    )
    recipe, names = config_from_command_line({}, [], "long")
    assert recipe == written and "long" in settings.recipes()
    assert names == {
        "epochs",
        "image_size",
        "augment",
        "first_size",
        "first_epochs",
        "final_size",
        "final_epochs",
    }
    assert config_from_command_line({"epochs": 3}, [], "long")[0].epochs == 3  # a flag still wins
    (tmp_path / "long").write_text(json.dumps({"epochs": 2}))  # a file of that name wins over it
    assert config_from_command_line({}, [], str(tmp_path / "long"))[0].epochs == 2
    with pytest.raises(UsageError, match="^--config lon: file not found"):
        config_from_command_line({}, [], "lon")


def test_config_files_are_checked(tmp_path):
    path = tmp_path / "config.json"
    for content, needle in (('{"epochs": "ten"}', "epochs must be an integer"), ("[1, 2]", "not a config.json"),
                            ("{", "not a JSON file"), ('{"tta": "scales", "loss": "focal"}', "loss=focal")):  # fmt: skip
        path.write_text(content)
        with pytest.raises(UsageError, match=f"^--config {re.escape(str(path))}: .*{needle}"):
            config_from_command_line({}, [], str(path))


def test_older_config_files_are_read_in_this_versions_terms():
    # A run's config.json from before these settings: what those runs used.
    fields, retired = settings.upgrade_config(
        {"precision_policy": "float32", "image_size": 96, "augment": True, "tta": "scales"}
    )
    assert (fields["block"], fields["first_size"], fields["final_size"], fields["augment"]) == (
        "plain",
        0,
        0,
        "flip",
    )
    assert retired == {"carve": "random", "class_weight_power": 0.5} and "tta" not in fields
    # One written now, or by the version before (with every setting written out): nothing retired.
    now = dataclasses.asdict(TrainConfig()) | {
        "precision_policy": "float32",
        "config_version": settings.CONFIG_VERSION,
    }
    assert settings.upgrade_config(now) == (dataclasses.asdict(TrainConfig()), {})
    before = now | {"config_version": 1, "carve": "blocks", "class_weight_power": 0.2, "tta": "scales"}
    assert settings.upgrade_config(before) == (dataclasses.asdict(TrainConfig()), {})
    # A recipe gets nothing filled in.
    assert settings.upgrade_config({"image_size": 128}) == ({"image_size": 128}, {})


def test_help_shows_defaults_and_the_commands_parse():
    r = main_in_process("--help")
    assert r.returncode == 0 and "(default: 8 on CPU, 16 on GPU)" in r.stdout and "final_size" in r.stdout
    for command in ("evaluate", "predict", "export", "plot"):
        r = main_in_process(command, "--help")
        assert r.returncode == 0 and "--" in r.stdout, command
