"""`ita-train`'s light parser (ita_segmentation/training/cli.py) against transformers' full one (entry.py): the
same options, the same values for the project's arguments, and the usage errors it answers before torch."""

import dataclasses

import pytest
from transformers import TrainingArguments

from ita_segmentation.training import cli
from ita_segmentation.training.arguments import ITADataArguments, ITAModelArguments, ITARecipeArguments
from ita_segmentation.training.entry import build_parser as build_full_parser
from ita_segmentation.training.entry import parse_arguments


def test_training_argument_fields_are_read_from_the_source_as_transformers_declares_them():
    fields = cli.training_argument_fields()
    assert fields is not None
    assert set(fields) == {field.name for field in dataclasses.fields(TrainingArguments) if field.init}
    declared = {field.name: field for field in dataclasses.fields(TrainingArguments)}
    assert fields["per_device_train_batch_size"].default == declared["per_device_train_batch_size"].default
    assert fields["use_cpu"].is_bool and not fields["output_dir"].is_bool
    assert fields["output_dir"].help == declared["output_dir"].metadata["help"]


def test_every_option_the_light_check_knows_is_one_the_full_parser_knows():
    parser = cli.build_parser(common_options=False)
    known = set(cli._known_options(parser))
    full = set(build_full_parser()._option_string_actions)
    assert known - {"--help-all"} == full
    # and the light parser's own options are exactly the project's fields (with their spellings)
    own = set(parser._option_string_actions) - {"-h", "--help", "--help-all"}
    fields = [
        field
        for group in (ITAModelArguments, ITADataArguments, ITARecipeArguments)
        for field in dataclasses.fields(group)
    ]
    assert {action.dest for action in parser._actions} - {"help", "help_all"} == {field.name for field in fields}
    assert own <= full


@pytest.mark.parametrize(
    "argv",
    [
        [],
        ["--crop_size", "512", "--min-scale", "0.5", "--no_random_flip", "--reduce_labels"],
        ["--class_names", "sofa,couch", "wall", "--lr_decay_steps", "5", "9", "--variant", "fcclip"],
        [
            "--random_flip",
            "false",
            "--skip_bad_samples",
            "yes",
            "--lr_decay_fractions",
            "0.5",
            "0.75",
            "--dataset_layout",
            "synthetic",
            "--ddp_find_unused_parameters",
            "--learning_rate",
            "3e-4",
        ],
        ["--output_dir", "runs/x", "--max_steps", "7", "--crop_size=64", "--bf16", "--warmup_steps", "2.5"],
    ],
)
def test_the_light_parser_reads_the_projects_arguments_as_the_full_parser(argv):
    light = vars(cli.check_arguments(argv))
    groups = parse_arguments([*argv, "--use_cpu"])
    full = {name: value for group in groups for name, value in vars(group).items()}
    for name, value in light.items():
        if name != "help_all":
            assert full[name] == value, name


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--crop_size", "big"], "argument --crop_size/--crop-size: invalid int value: 'big'"),
        (["--dataset_layout", "coco"], "invalid choice: 'coco'"),
        (["--variant", "clip"], "invalid choice: 'clip'"),
        (["--random_flip", "maybe"], "got 'maybe'"),
        (["--lr_decay_steps", "5", "later"], "invalid int value: 'later'"),
        (["--outptu_dir", "runs/x"], "unrecognized arguments: --outptu_dir; did you mean --output_dir"),
        (["--max_s", "3"], "ambiguous option: --max_s could match --max_scale, --max_steps"),
        (["--output_dir", "runs/x", "--bogus=1"], "unrecognized arguments: --bogus"),
    ],
)
def test_usage_errors_are_named(argv, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.check_arguments(argv)
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err
    with pytest.raises((SystemExit, ValueError)):  # the full parser refuses them too
        parse_arguments(argv)


def test_what_only_the_full_parser_can_judge_is_let_through():
    # TrainingArguments' values, their --no_ forms, negative numbers and an abbreviation of one field's option.
    argv = [
        "--output_dir",
        "runs/x",
        "--save_steps",
        "10",
        "--no_dataloader_pin_memory",
        "--seed",
        "-3",
        "--report_to",
        "none",
        "--per_device_train",
        "2",
    ]
    cli.check_arguments(argv)
    _, _, args = parse_arguments([*argv, "--use_cpu"])
    assert args.seed == -3 and args.per_device_train_batch_size == 2 and not args.dataloader_pin_memory


def test_a_stray_value_is_a_usage_error_after_the_full_parser(tmp_path, capsys):
    import ita_cli

    assert ita_cli.train(["stray", "--dataset_layout", "synthetic", "--output_dir", str(tmp_path / "run")]) == 2
    assert "ita-train: error: Some specified arguments are not used" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


def test_help_lists_the_projects_arguments_and_the_common_options(capsys):
    assert cli.main(["--help"]) == 0
    text = capsys.readouterr().out
    for option in (
        "--model_name_or_path",
        "--dataset_layout",
        "--crop_size",
        "--lr_schedule",
        "--learning_rate",
        "--output_dir",
        "--per_device_train_batch_size",
        "--max_steps",
        "--num_train_epochs",
        "--resume_from_checkpoint",
        "--help-all",
    ):
        assert option in text, option
    assert "--adam_beta1" not in text and "--help-all" in text
    assert cli.main(["--help-all"], prog="ita-train") == 0
    full = capsys.readouterr().out
    assert "usage: ita-train" in full and "--adam_beta1" in full and "--backbone_lr_multiplier" in full
