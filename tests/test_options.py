"""Option groups: one definition per option, CLI options generated from them, --help without repeats."""

from __future__ import annotations

import argparse
import re

import pytest

from qihuang.engines.load import BACKENDS
from qihuang.cli import build_parser, main
from qihuang.config import DTYPES, TrainConfig
from qihuang.flags import options_from_args
from qihuang.errors import ConfigError
from qihuang.options import (AnswerOptions, BuildOptions, EvalOptions, GenerationOptions, ModelOptions,
                             QuickstartOptions)


def _parsers(parser: argparse.ArgumentParser, path: tuple[str, ...] = ()):
    """Every (sub)command parser with its command words."""
    yield path, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from _parsers(sub, (*path, name))


COMMANDS = [path for path, _ in _parsers(build_parser()) if path]


def test_every_command_is_walked():
    names = {" ".join(p) for p in COMMANDS}
    assert {"infer", "chat", "export", "serve", "webui", "eval", "eval compare", "data build", "data synth",
            "quickstart", "train", "kb import"} <= names


@pytest.mark.parametrize("path", COMMANDS, ids=[" ".join(p) for p in COMMANDS])
def test_help_says_each_default_once(path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main([*path, "--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    assert "(default: None)" not in text
    parser = dict(_parsers(build_parser()))[path]
    formatter = parser._get_formatter()
    for action in parser._actions:
        if action.help in (None, argparse.SUPPRESS):
            continue
        rendered = formatter._expand_help(action)
        low = rendered.lower()
        assert low.count("(default") <= 1 and low.count("default:") <= 1, (path, action.option_strings, rendered)


def test_one_name_per_option_across_answering_commands():
    parse = build_parser().parse_args
    for command in (["infer", "--input", "a", "--output", "b"], ["chat"], ["serve"], ["webui"], ["eval"]):
        args = parse([*command, "--engine", "hf", "--dtype", "bfloat16", "--kb", "k.sqlite", "--max-new-tokens", "9"])
        assert (args.engine, args.dtype, args.kb, args.max_new_tokens) == ("hf", "bfloat16", "k.sqlite", 9)
        assert parse(command).engine == "auto"
        engine = next(a for a in dict(_parsers(build_parser()))[tuple(command[:1])]._actions if a.dest == "engine"
                      and "--engine" in a.option_strings)
        assert tuple(engine.choices) == tuple(dict.fromkeys(("auto", *BACKENDS)))  # the engine helpers' contract
    assert parse(["export", "--adapter", "a", "--out", "b"]).dtype == "float32"
    assert parse(["train", "--threads", "2"]).num_threads == parse(["chat", "--num-threads", "2"]).threads == 2
    assert parse(["kb", "stats", "--kb", "k"]).db == parse(["data", "build", "--out", "o", "--kb", "k"]).db == "k"


def test_one_dtype_list_everywhere():
    parser = dict(_parsers(build_parser()))
    for path in (("infer",), ("eval",), ("export",), ("train",), ("serve",)):
        choices = next(a.choices for a in parser[path]._actions if "--dtype" in a.option_strings)
        assert tuple(choices) == DTYPES, path
    assert TrainConfig.model_fields["dtype"].annotation.__args__ == DTYPES


def test_eval_backend_is_a_hidden_deprecated_alias_of_engine(capsys):
    parser = dict(_parsers(build_parser()))[("eval",)]
    args = parser.parse_args(["--backend", "vllm"])
    assert args.engine == "vllm" and not hasattr(args, "backend")
    assert "deprecated, use --engine" in capsys.readouterr().err
    assert "--backend" not in parser.format_help()
    with pytest.raises(SystemExit):
        parser.parse_args(["--backend", "nope"])


def test_quickstart_old_names_still_work(capsys):
    parse = build_parser().parse_args
    args = parse(["quickstart", "--steps", "3", "--budget-minutes", "2.5"])
    assert "--budget-minutes is deprecated, use --max-minutes" in capsys.readouterr().err
    options = options_from_args(QuickstartOptions, args)
    assert (options.max_steps, options.max_minutes) == (3, 2.5)
    assert options_from_args(QuickstartOptions, parse(["quickstart"])) == QuickstartOptions()


def test_options_from_args_validates_and_names_the_option():
    args = build_parser().parse_args(["chat", "--top-p", "1.5", "--batch-size", "0"])
    with pytest.raises(ConfigError, match=r"--top-p.*1\.5"):
        options_from_args(GenerationOptions, args)
    assert options_from_args(ModelOptions, args) == ModelOptions()
    assert options_from_args(AnswerOptions, args).on_unsupported == "drop"


def test_shared_fields_are_one_definition():
    for name in ("batch_size", "grounded"):
        eval_field = EvalOptions.model_fields[name]
        other = (GenerationOptions if name == "batch_size" else AnswerOptions).model_fields[name]
        assert (eval_field.default, eval_field.description) == (other.default, other.description)


def test_build_options_map_to_build_dataset_arguments(tmp_path):
    import inspect

    from qihuang.datagen.builder import build_dataset

    args = build_parser().parse_args(["data", "build", "--out", "o", "--kinds", "single，dialogue",
                                      "--attributes", "drugs,symptoms", "--balanced", "--phrasings", "3"])
    options = options_from_args(BuildOptions, args)
    kwargs = options.builder_kwargs()
    assert set(kwargs) <= set(inspect.signature(build_dataset).parameters)
    assert (kwargs["kinds"], kwargs["attributes"], kwargs["balanced"], kwargs["phrasings"], kwargs["phrasebook"]) == \
        (("single", "dialogue"), ["drugs", "symptoms"], True, 3, None)
    book = tmp_path / "p.yaml"
    book.write_text("{}", encoding="utf-8")
    own = options_from_args(BuildOptions, build_parser().parse_args(["data", "build", "--out", "o",
                                                                     "--phrasings", str(book)]))
    assert (own.builder_kwargs()["phrasings"], own.builder_kwargs()["phrasebook"]) == (2, str(book))


def test_generation_options_make_engine_params():
    params = GenerationOptions(max_new_tokens=12, temperature=0.5, top_k=4).params()
    assert (params.max_new_tokens, params.temperature, params.top_k, params.top_p) == (12, 0.5, 4, 1.0)
    with pytest.raises(ConfigError, match="max_new_tokens"):
        GenerationOptions.of(max_new_tokens=0)


def test_model_options_pass_engine_to_load_engine(monkeypatch):
    import qihuang.engines.load as engine_mod

    seen = {}
    monkeypatch.setattr(engine_mod, "load_engine", lambda **kw: seen.update(kw) or "engine")
    assert ModelOptions(engine="hf", adapter="ad", dtype="float16").load_engine(batch_size=3) == "engine"
    assert (seen["backend"], seen["adapter"], seen["dtype"], seen["batch_size"], seen["model"]) == \
        ("hf", "ad", "float16", 3, None)


def test_help_strings_have_no_stray_percent_or_duplicate_flags():
    for path, parser in _parsers(build_parser()):
        flags = [f for a in parser._actions for f in a.option_strings]
        assert len(flags) == len(set(flags)), path
        for action in parser._actions:
            assert not re.search(r"\(default: [^)]*\) \(default", action.help or ""), (path, action.help)
