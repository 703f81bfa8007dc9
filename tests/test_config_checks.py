"""Configuration mistakes end in one line naming the flag and the cause, exit 2, before any model loads (seconds).

Each case runs the real entry (`vqrl.grpo.main`, what `python -m vqrl.grpo` and `vqrl train` call) with the model
loaders replaced by a tripwire; two cases also run as real subprocesses. docs/reliability.md lists every case.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from trainer_utils import EXAMPLES, flags
from vqrl.training.heartbeat import CONFIG_ERROR_PHASE, EXIT_CONFIG_ERROR, read_heartbeat

ROOT = Path(__file__).resolve().parents[1]
DATA = os.path.join(EXAMPLES, "RL_examples.json")


class ModelLoaded(AssertionError):
    pass


@pytest.fixture
def no_model_loads(monkeypatch):
    """Any attempt to load a model or processor fails the test."""
    import transformers

    import vqrl.grpo

    def tripwire(*args, **kwargs):
        raise ModelLoaded("a model was loaded before the configuration was checked")

    monkeypatch.setattr(vqrl.grpo, "load_model_and_processor", tripwire)
    for name in ("AutoModelForImageTextToText", "AutoProcessor"):
        monkeypatch.setattr(getattr(transformers, name), "from_pretrained", tripwire)
    monkeypatch.delenv("VQRL_RESUME", raising=False)
    monkeypatch.delenv("VQRL_HEARTBEAT", raising=False)


@pytest.fixture(scope="module")
def folders(tmp_path_factory, tiny_model_dir):
    """Broken model folders, recipes and checkpoints, each made from the working tiny model."""
    base = tmp_path_factory.mktemp("fixtures")
    made = []

    def model_without(*drop, add=()):
        made.append(drop)
        folder = base / f"model{len(made)}"
        shutil.copytree(tiny_model_dir, folder)
        for pattern in drop:
            for path in folder.glob(pattern):
                path.unlink()
        for fname in add:
            (folder / fname).write_bytes(b"x")
        return str(folder)

    (base / "empty_model").mkdir()
    text_only = Path(model_without("config.json"))
    from transformers import Qwen2Config

    Qwen2Config(hidden_size=16, num_hidden_layers=1, num_attention_heads=1, intermediate_size=16).to_json_file(
        text_only / "config.json")
    sharded = Path(model_without("model.safetensors"))
    (sharded / "model.safetensors.index.json").write_text(json.dumps(
        {"weight_map": {"a": "model-00001-of-00002.safetensors", "b": "model-00002-of-00002.safetensors"}}))
    (sharded / "model-00001-of-00002.safetensors").write_bytes(b"x")
    truncated = Path(model_without())
    weights = (truncated / "model.safetensors").read_bytes()
    (truncated / "model.safetensors").write_bytes(weights[: len(weights) // 2])
    recipes = {
        "typo": "lerning_rate: 1.0e-5\n", "list": "- a\n- b\n", "broken": "a: [1, 2\n",
        "scalar_list": "reward_funcs: nosuch_reward\n",
    }
    for name, text in recipes.items():
        (base / f"{name}.yaml").write_text(text)
    (base / "partial" / "checkpoint-3").mkdir(parents=True)
    (base / "a_file").write_text("x")
    return {
        "base": str(base), "empty": str(base / "empty_model"), "config_only": model_without("*.safetensors"),
        "bin_only": model_without("model.safetensors", add=("pytorch_model.bin",)),
        "no_processor": model_without("processor_config.json"), "no_tokenizer": model_without("tokenizer*"),
        "text_only": str(text_only), "missing_shard": str(sharded),
        "truncated": str(truncated),
    }


# (case id, extra flags given the fixture folders, words the one-line message must contain)
CASES = [
    ("unknown trainer", lambda f: ["--trainer", "foo"], ["--trainer foo", "standard, vllm, refine"]),
    ("unknown reward", lambda f: ["--reward_funcs", "format", "nosuch"], ["rewards: unknown reward 'nosuch'"]),
    ("reward module not importable", lambda f: ["--reward_funcs", "nopkg.mod:fn"], ["cannot import module 'nopkg.mod'"]),
    ("reward function missing", lambda f: ["--reward_funcs", "vqrl.rewards:nosuch"], ["has no attribute 'nosuch'"]),
    ("reward option out of range", lambda f: ["--answer_threshold", "-1"], ["answer_threshold", ">= 0"]),
    ("reward_weights count", lambda f: ["--reward_weights", "1", "1", "1"], ["--reward_weights", "3 weight(s) for 2"]),
    ("reward_weights not finite", lambda f: ["--reward_weights", "1", "nan"], ["--reward_weights", "finite"]),
    ("num_generations not dividing the batch", lambda f: ["--num_generations", "3"], ["divisible by num_generations"]),
    ("num_generations 1", lambda f: ["--num_generations", "1"], ["at least 2 generations"]),
    ("model folder missing", lambda f: ["--model_name_or_path", f["base"] + "/nothing"], ["no such model folder"]),
    ("relative model folder missing", lambda f: ["--model_name_or_path", "examples/no-model"], ["no such model folder"]),
    ("hub id not cached while offline", lambda f: ["--model_name_or_path", "nobody/no-such-model"], ["offline"]),
    ("model path is a file", lambda f: ["--model_name_or_path", f["base"] + "/a_file"], ["is a file"]),
    ("empty model folder", lambda f: ["--model_name_or_path", f["empty"]], ["no config.json"]),
    ("model folder without weights", lambda f: ["--model_name_or_path", f["config_only"]], ["has no weights"]),
    ("model folder with .bin weights only", lambda f: ["--model_name_or_path", f["bin_only"]], ["safetensors only"]),
    ("sharded model missing a shard", lambda f: ["--model_name_or_path", f["missing_shard"]], ["00002-of-00002", "missing"]),
    ("weights cut short", lambda f: ["--model_name_or_path", f["truncated"]], ["model.safetensors is cut short"]),
    ("model folder without processor", lambda f: ["--model_name_or_path", f["no_processor"]], ["no image processor"]),
    ("model folder without tokenizer", lambda f: ["--model_name_or_path", f["no_tokenizer"]], ["no tokenizer"]),
    ("text-only model", lambda f: ["--model_name_or_path", f["text_only"]], ["'qwen2' model", "vision-language"]),
    ("recipe typo", lambda f: ["--config", f["base"] + "/typo.yaml"], ["unknown key lerning_rate", "--learning_rate"]),
    ("recipe missing", lambda f: ["--config", f["base"] + "/nope.yaml"], ["--config", "no such file"]),
    ("recipe not a mapping", lambda f: ["--config", f["base"] + "/list.yaml"], ["YAML mapping"]),
    ("recipe not YAML", lambda f: ["--config", f["base"] + "/broken.yaml"], ["not valid YAML"]),
    ("recipe scalar where a list is meant", lambda f: ["--config", f["base"] + "/scalar_list.yaml"],
     ["unknown reward 'nosuch_reward'"]),  # one name, not its characters
    ("unknown flag", lambda f: ["--lerning_rate", "1e-5"], ["unknown flag --lerning_rate", "--learning_rate"]),
    ("bad flag value", lambda f: ["--max_steps", "ten"], ["--max_steps", "invalid int value: 'ten'"]),
    ("bad choice", lambda f: ["--dtype", "float99"], ["--dtype", "invalid choice"]),
    ("image_root count", lambda f: ["--image_root", EXAMPLES, EXAMPLES], ["--image_root", "2 image_root values for 1"]),
    ("video_root count", lambda f: ["--video_root", EXAMPLES, EXAMPLES, EXAMPLES], ["3 video_root values"]),
    ("image_root missing", lambda f: ["--image_root", f["base"] + "/no-images"], ["--image_root", "no such folder"]),
    ("data file missing", lambda f: ["--data_files", f["base"] + "/nope.json"], ["--data_files", "no such file"]),
    ("data_weights count", lambda f: ["--data_weights", "1", "1"], ["--data_weights", "2 weight(s) for 1 data file"]),
    ("data_weights negative", lambda f: ["--data_weights", "-1"], ["--data_weights", ">= 0"]),
    ("data_weights all zero", lambda f: ["--data_weights", "0"], ["all zero"]),
    ("data_weights nan", lambda f: ["--data_weights", "nan"], ["finite"]),
    ("resume folder missing", lambda f: ["--resume", f["base"] + "/nothing"], ["--resume", "no such checkpoint folder"]),
    ("resume a word", lambda f: ["--resume", "latest"], ["--resume latest", "auto"]),
    ("resume a file", lambda f: ["--resume", f["base"] + "/a_file"], ["not a folder"]),
    ("resume an incomplete checkpoint", lambda f: ["--resume", f["base"] + "/partial/checkpoint-3"], ["half-written"]),
    ("on_bad_sample", lambda f: ["--on_bad_sample", "ignore"], ["--on_bad_sample ignore", "error or skip"]),
    ("max_pixels negative", lambda f: ["--max_pixels", "-5"], ["--max_pixels -5", "positive number of pixels"]),
    ("max_pixels zero", lambda f: ["--max_pixels", "0"], ["--max_pixels 0", "positive"]),
    ("min_pixels above max_pixels", lambda f: ["--min_pixels", "100000", "--max_pixels", "50000"],
     ["below --min_pixels"]),
    ("video_max_pixels negative", lambda f: ["--video_max_pixels", "-1"], ["--video_max_pixels -1"]),
    ("video_total_pixels negative", lambda f: ["--video_total_pixels", "-1"], ["--video_total_pixels -1"]),
    ("video_fps zero", lambda f: ["--video_fps", "0"], ["--video_fps"]),
    ("video_max_frames zero", lambda f: ["--video_max_frames", "0"], ["--video_max_frames 0", "at least 2"]),
    ("compiled_generation", lambda f: ["--compiled_generation", "yes"], ["--compiled_generation yes"]),
    ("output_dir is a file", lambda f: ["--output_dir", f["base"] + "/a_file"], ["--output_dir", "not a folder"]),
    ("output_dir under a file", lambda f: ["--output_dir", f["base"] + "/a_file/out"], ["cannot be written"]),
    ("output_dir uncreatable", lambda f: ["--output_dir", "/proc/vqrl-out"], ["cannot be written"]),
    ("vllm trainer without vLLM", lambda f: ["--trainer", "vllm"], ["vLLM is not installed"]),
    ("use_vllm without vLLM", lambda f: ["--use_vllm", "true"], ["vLLM is not installed"]),
    ("flash attention not installed", lambda f: ["--attn_implementation", "flash_attention_2"], ["flash-attn"]),
    ("checkpoint_layers", lambda f: ["--checkpoint_layers", "half"], ["--checkpoint_layers half", "all, auto"]),
    ("pd_mode", lambda f: ["--trainer", "refine", "--pd_mode", "foo"], ["--pd_mode foo", "seed, paper"]),
    ("pd_weights count", lambda f: ["--trainer", "refine", "--pd_weights", "1", "2"], ["--pd_weights", "4 finite"]),
    ("think false with the think format reward", lambda f: ["--think", "false"], ["format_nothink"]),
    ("batch size 0", lambda f: ["--per_device_train_batch_size", "0"], ["--per_device_train_batch_size 0"]),
    ("gradient_accumulation_steps 0", lambda f: ["--gradient_accumulation_steps", "0"], ["at least 1"]),
    ("max_completion_length 0", lambda f: ["--max_completion_length", "0"], ["--max_completion_length 0"]),
    ("max_prompt_length 0", lambda f: ["--max_prompt_length", "0"], ["--max_prompt_length 0"]),
    ("negative learning rate", lambda f: ["--learning_rate=-1e-5"], ["--learning_rate -1e-05", ">= 0"]),
    ("negative exponent value without =", lambda f: ["--learning_rate", "-1e-5"],  # argparse reads -1e-5 as a flag
     ["--learning_rate", "expected one argument", "--flag=-1"]),
    ("LoRA target module missing", lambda f: ["--use_peft", "true", "--lora_target_modules", "q_proj", "nosuch"],
     ["--lora_target_modules nosuch: no such module", "q_proj"]),
    ("LoRA target regex matching nothing", lambda f: ["--use_peft", "true", "--lora_target_modules", "nosuch.*"],
     ["--lora_target_modules nosuch.*: no such module"]),
    ("nothing to train", lambda f: ["--max_steps", "-1", "--num_train_epochs", "0"], ["nothing to train"]),
]
if importlib.util.find_spec("deepspeed") is None:
    CASES.append(("deepspeed not installed", lambda f: ["--deepspeed", "configs/deepspeed/zero2.json"], ["deepspeed"]))


def _argv(tmp_path, extra, model_dir):
    base = flags(model_dir, tmp_path / "out", [DATA], max_steps=1)
    return base + extra


@pytest.mark.parametrize("case, extra, words", CASES, ids=[c[0] for c in CASES])
def test_configuration_error_is_one_line_before_any_model_loads(case, extra, words, folders, tmp_path,
                                                                 tiny_model_dir, no_model_loads, capsys, monkeypatch):
    from vqrl.grpo import main

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.chdir(ROOT)  # relative paths in the cases are the repository's
    assert main(_argv(tmp_path, extra(folders), tiny_model_dir)) == EXIT_CONFIG_ERROR
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert err and err[0].startswith("vqrl: configuration error: "), err
    assert len(err) == 1 and "Traceback" not in err[0], err  # one problem, one line
    message = " ".join(err)
    for word in words:
        assert word in message, f"{word!r} not in {message!r}"


def test_every_problem_is_listed_at_once(tmp_path, tiny_model_dir, no_model_loads, capsys):
    from vqrl.grpo import main

    argv = _argv(tmp_path, ["--trainer", "foo", "--max_pixels", "-5", "--on_bad_sample", "drop"], tiny_model_dir)
    assert main(argv) == EXIT_CONFIG_ERROR
    err = capsys.readouterr().err
    assert "--trainer foo" in err and "--max_pixels -5" in err and "--on_bad_sample drop" in err


def test_a_configuration_error_is_reported_to_the_watchdog(tmp_path, tiny_model_dir, no_model_loads, monkeypatch):
    """Launchers turn exit 2 into 1; the heartbeat the watchdog reads says it was a configuration error."""
    from vqrl.grpo import main

    hb = tmp_path / "hb.json"
    monkeypatch.setenv("VQRL_HEARTBEAT", str(hb))
    assert main(_argv(tmp_path, ["--trainer", "foo"], tiny_model_dir)) == EXIT_CONFIG_ERROR
    beat = read_heartbeat(hb)
    assert beat["phase"] == CONFIG_ERROR_PHASE and "--trainer foo" in beat["reason"] and beat["step"] is None


def test_a_good_configuration_passes_the_checks(tmp_path, tiny_model_dir):
    from vqrl.config import parse
    from vqrl.config_checks import check_config

    args, model_args = parse(_argv(tmp_path, ["--trainer", "refine", "--reward_weights", "1", "0.5",
                                              "--max_pixels", "3136", "--min_pixels", "3136"], tiny_model_dir))
    check_config(args, model_args)  # raises nothing
    assert os.path.isdir(args.output_dir) and os.listdir(args.output_dir) == []  # the write probe left nothing


def test_a_recipe_scalar_becomes_a_one_element_list(tmp_path, tiny_model_dir):
    from vqrl.config import parse

    recipe = tmp_path / "r.yaml"
    recipe.write_text(f"reward_funcs: format\ndata_files: {DATA}\n")
    args, _ = parse(["--config", str(recipe), "--model_name_or_path", tiny_model_dir, "--output_dir", str(tmp_path),
                    "--use_cpu", "true"])
    assert args.reward_funcs == ["format"] and args.data_files == [DATA]


def test_trls_own_single_string_options_keep_their_meaning(tmp_path, tiny_model_dir):
    """ModelConfig turns one LoRA target into a string on purpose ("all-linear", a regex): it must stay one."""
    from vqrl.config import parse
    from vqrl.config_checks import check_config

    args, model_args = parse(_argv(tmp_path, ["--use_peft", "true", "--lora_target_modules", "all-linear"],
                                   tiny_model_dir))
    assert model_args.lora_target_modules == "all-linear"
    check_config(args, model_args)
    args, model_args = parse(_argv(tmp_path, ["--use_peft", "true", "--lora_target_modules", ".*q_proj"],
                                   tiny_model_dir))
    check_config(args, model_args)  # a regex that matches: accepted


def test_help_lists_vqrls_flags_first_then_trls(capsys):
    from vqrl.config import VQRLParser

    text = VQRLParser().format_help()
    lines = text.splitlines()
    assert lines[0].startswith("usage: vqrl train [--config RECIPE.yaml]") and len(lines[0]) < 120
    sections = [line for line in lines if line and not line.startswith(" ") and line.endswith(":")]
    assert sections == ["vqrl options:", "TRL GRPO options:", "TRL model options:", "transformers training options:"]
    first = text.index("vqrl options:")
    for flag in ("--trainer", "--data_files", "--max_pixels", "--reward_funcs", "--resume"):
        assert first < text.index(f"  {flag}") < text.index("TRL GRPO options:"), flag
    for flag, section in (("--num_generations", "TRL GRPO options:"), ("--model_name_or_path", "TRL model options:"),
                          ("--learning_rate", "transformers training options:")):
        assert text.index(section) < text.index(f"  {flag}"), flag
    assert text.index("  --trainer") < 40 * 80  # on the first screen, not after 1,300 lines of TRL's


def _subprocess(argv, tmp_path):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")])}
    env.pop("VQRL_HEARTBEAT", None)
    return subprocess.run(argv, capture_output=True, text=True, timeout=120, env=env, cwd=tmp_path)


def test_python_m_vqrl_grpo_refuses_in_one_line(tmp_path, tiny_model_dir):
    proc = _subprocess([sys.executable, "-m", "vqrl.grpo", *_argv(tmp_path, ["--max_pixels", "-5"], tiny_model_dir)],
                       tmp_path)
    assert proc.returncode == EXIT_CONFIG_ERROR
    err = [line for line in proc.stderr.splitlines() if line.strip()]
    assert err == ["vqrl: configuration error: --max_pixels -5: must be a positive number of pixels (e.g. 802816 = "
                   "1024 x 28 x 28), or unset for the processor's own"], proc.stderr
    assert "Loading weights" not in proc.stdout + proc.stderr


def test_vqrl_train_refuses_a_recipe_typo_in_one_line(tmp_path, tiny_model_dir):
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text("trainer: standard\nnum_generation: 4\n")
    proc = _subprocess([sys.executable, "-m", "vqrl.cli", "train", "--config", str(recipe),
                        *_argv(tmp_path, [], tiny_model_dir)], tmp_path)
    assert proc.returncode == EXIT_CONFIG_ERROR
    assert proc.stderr.strip() == (f"vqrl: configuration error: recipe {recipe}: unknown key num_generation "
                                   "(did you mean --num_generations?)")
