"""Bad input gets a one-line error that names what and where, and a nonzero exit, no traceback."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from engine.errors import ModelLoadError
from engine.loader import load_config, load_model
from tests.engine.helpers import tiny_hf_model, write_tiny_gguf


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "kvsim.cli", *args], capture_output=True, text=True, timeout=300)


def test_unknown_model_lists_known_ones():
    with pytest.raises(ModelLoadError, match=r"unknown model 'gpt-9'.*llama-3\.1-8b.*smollm2-135m"):
        load_model("gpt-9")


def test_missing_file():
    with pytest.raises(ModelLoadError, match=r"/no/such/model\.gguf: no such file"):
        load_model("/no/such/model.gguf")


def test_corrupt_gguf(tmp_path):
    path = tmp_path / "broken.gguf"
    path.write_bytes(b"GGUF" + bytes(range(256)) * 3)
    with pytest.raises(ModelLoadError, match=r"broken\.gguf: not a readable GGUF file"):
        load_model(str(path))


def test_unsupported_gguf_type_is_named(tmp_path):
    pytest.importorskip("transformers")
    path = tmp_path / "q5.gguf"
    write_tiny_gguf(path, tiny_hf_model(rope_scaling=None, rope_theta=10000.0), "Q5_0")
    with pytest.raises(ModelLoadError, match=r"q5\.gguf: tensor '[\w.]+' is Q5_0.*supported: F32"):
        load_model(str(path))


def test_config_json_missing_field_is_named(tmp_path):
    cfg = {"hidden_size": 64, "num_attention_heads": 4, "num_hidden_layers": 2, "vocab_size": 256}
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ModelLoadError, match=r"config\.json has no field 'intermediate_size'"):
        load_config(str(tmp_path))


def test_config_json_bad_value_is_named(tmp_path):
    cfg = {"hidden_size": 64, "num_attention_heads": 4, "num_key_value_heads": 3, "num_hidden_layers": 2,
           "vocab_size": 256, "intermediate_size": 128}
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match=r"num_heads \(4\) must be a multiple of num_kv_heads \(3\)"):
        load_config(str(tmp_path))


def test_shape_too_large_is_still_a_shape():
    cfg = load_config("llama-3.1-70b")
    assert cfg.num_layers == 80 and cfg.num_kv_heads == 8 and 70e9 < cfg.num_params < 71e9
    with pytest.raises(ModelLoadError, match=r"llama-3\.1-70b: .* GiB .* do not fit .*used as a shape"):
        load_model("llama-3.1-70b", dtype=__import__("torch").bfloat16)


@pytest.mark.parametrize("args, message", [
    (["generate", "--model", "gpt-9"], "unknown model 'gpt-9'"),
    (["generate", "--model", "/no/such.gguf"], "/no/such.gguf: no such file"),
    (["generate", "--batch-file", "/no/prompts.txt"], "--batch-file /no/prompts.txt: no such file"),
])
def test_cli_errors_are_one_line(args, message):
    done = run_cli(*args)
    assert done.returncode == 2
    assert "Traceback" not in done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("kvsim: error: ") and message in lines[0]
