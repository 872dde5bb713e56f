"""--config files (TOML and YAML): round trip, flags over file, unknown keys and bad values."""

from __future__ import annotations

try:
    import tomllib
except ImportError:  # Python 3.10
    import tomli as tomllib

import pytest

from conftest import kvsim, kvsim_json, one_line_error, without_wall_time


def test_file_then_flags_then_round_trip(tmp_path):
    config = tmp_path / "exp.toml"
    config.write_text('max_requests = 50\nrate_scale = 20.0\n\n[engine]\nkv_mem_gib = 0.05\n\n'
                      '[cache]\npolicy = "streaming"\nkv-dtype = "int8"\nbudget = 128\n\n[output]\nprogress = false\n')
    first = kvsim_json("replay", "--config", config, "--max-requests", "60", "--out", tmp_path / "a")
    assert (first["requests_submitted"], first["policy"], first["kv_dtype"], first["budget_tokens"]) == (
        60, "streaming", "int8", 128)  # the flag beat the file's 50; the rest came from the file
    saved = tmp_path / "a" / "config.toml"
    resolved = tomllib.loads(saved.read_text())
    assert resolved["workload"]["max_requests"] == 60 and resolved["cache"]["kv_dtype"] == "int8"
    assert resolved["engine"]["kv_mem_gib"] == 0.05 and "kv_blocks" not in resolved["engine"]
    again = kvsim_json("replay", "--config", saved, "--out", tmp_path / "b")
    assert without_wall_time(again) == without_wall_time(first)
    assert (tmp_path / "b" / "config.toml").read_text() == saved.read_text().replace(str(tmp_path / "a"),
                                                                                     str(tmp_path / "b"))


def test_yaml_config_and_size_group(tmp_path):
    config = tmp_path / "exp.yaml"
    config.write_text("workload:\n  max_requests: 40\n  rate_scale: 20\nengine:\n  kv_blocks: 4000\n"
                      "grid:\n  policies: [full]\n  kv_dtypes: fp16,int8\nparallel:\n  jobs: 1\n")
    records = kvsim_json("compare", "--config", config, "--no-progress", "--out", tmp_path / "c")
    assert [r["num_blocks"] for r in records] == [4000, 4000]  # the file's size beat compare's default
    records = kvsim_json("compare", "--config", config, "--kv-mem-gib", "0.05", "--no-progress",
                         "--out", tmp_path / "d")
    assert records[1]["num_blocks"] > 1.9 * records[0]["num_blocks"]  # the flag's size beat the file's


@pytest.mark.parametrize("text, fragments", [
    ("[engine]\nmodel = 'smollm2-135m'\nkv_dtpye = 'int8'\n", ["unknown key engine.kv_dtpye", "kv_mem_gib"]),
    ("polcy = 'h2o'\n", ["unknown key 'polcy'", "valid keys:", "policy", "rate_scale"]),
    ("rate_scale = 'fast'\n", ["rate_scale: expected a number, got 'fast'"]),
    ("[cache]\nbudget = 0\n", ["cache.budget (--budget): must be > 0, got 0"]),
    ("max_requests = [1, 2\n", ["not valid TOML"]),
])
def test_bad_config_files(tmp_path, text, fragments):
    config = tmp_path / "bad.toml"
    config.write_text(text)
    one_line_error(kvsim("replay", "--config", config, "--out", tmp_path / "x"), str(config), *fragments)


@pytest.mark.parametrize("args, fragments", [
    (["replay", "--rate-scale", "abc"], ["--rate-scale: expected a number, got 'abc'"]),
    (["replay", "--policy", "lru"], ["unknown 'lru'", "streaming", "h2o", "knorm"]),
    (["replay", "--kv-dtype", "int3"], ["--kv-dtype: 'int3' is not one of", "int8"]),
    (["replay", "--kv-blocks", "10", "--kv-mem-gib", "1"], ["give one of kv_blocks, kv_mem_gib, gpu_mem_util"]),
    (["replay", "/no/such/trace.csv"], ["/no/such/trace.csv: no such file"]),
    (["compare", "--budgets", "256,x"], ["--budgets: expected an integer, got 'x'"]),
    (["sweep", "--sessions", "8,4"], ["sessions.sessions (--sessions): must be increasing"]),
    (["replay", "--config", "/no/such.toml"], ["--config /no/such.toml: no such file"]),
    (["replay", "--config", "x.ini"], ["expected a .toml, .yaml"]),
    (["profile", "--batches", "1,0"], ["--batches: must be >= 1, got (1, 0)"]),
])
def test_bad_values_are_one_line_errors(tmp_path, args, fragments):
    one_line_error(kvsim(*args, "--out", tmp_path / "x") if args[0] != "profile" else kvsim(*args), *fragments)


def test_bad_trace_is_one_line(tmp_path):
    trace = tmp_path / "t.csv"
    trace.write_text("TIMESTAMP,ContextTokens,GeneratedTokens\n2023-11-16 18:15:46.68,374,44\n"
                     "2023-11-16 18:15:47.00,-3,5\n")
    one_line_error(kvsim("replay", trace, "--out", tmp_path / "x"), "t.csv:3", "ContextTokens")
    done = kvsim("replay", trace, "--skip-invalid", "--json", "--no-progress", "--out", tmp_path / "y")
    assert done.returncode == 0, done.stderr


def test_sessions_ellipsis_expands():
    from kvsim.config import Leaf, convert

    leaf = Leaf("sessions.sessions", "sessions", int, False, True, (1,), {"choices": None})
    assert convert(leaf, "1,2,4,...,64", "--sessions") == (1, 2, 4, 8, 16, 32, 64)
    assert convert(leaf, "0,10,...,40", "--sessions") == (0, 10, 20, 30, 40)
    assert convert(leaf, [1, 3, "...", 27], "file") == (1, 3, 9, 27)
