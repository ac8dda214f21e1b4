"""Feature detection, the info report, the attention benchmark and cheap imports."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import torch

from lib_accel import features, info
from lib_accel.__main__ import build_parser, main
from lib_accel.bench import attention as bench_attention


def test_features_report_reasons_when_missing():
    for feat in features.all_features():
        assert feat.available or feat.reason, feat


def test_info_collect_and_render():
    data = info.collect()
    assert data["torch"] == torch.__version__
    names = {k["name"] for k in data["kernels"]}
    assert {"sdpa", "sdpa-flash", "sdpa-math", "xformers", "chunked"} <= names
    text = info.render(data)
    assert "why not" in text and "sdpa" in text


def test_cli_info_json(capsys):
    assert main(["info", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert any(f["name"] == "xformers" for f in data["features"])


def test_sd15_shapes_at_512():
    shapes = bench_attention.sd15_shapes(512)
    tokens = sorted({s.q_tokens for s in shapes if "vae" not in s.name})
    assert tokens == [64, 256, 1024, 4096]
    assert sum(s.calls_per_step for s in shapes) == 2 * (5 + 5 + 5 + 1)
    assert any(s.head_dim == 512 and s.heads == 1 for s in shapes)


def test_bench_attention_tiny_run(tmp_path, capsys):
    out = tmp_path / "bench.csv"
    assert main(["bench", "attention", "--sizes", "128", "--min-seconds", "0", "--out", str(out)]) == 0
    text = out.read_text()
    assert text.startswith("# device:") and "webui-default" in text and "sdpa" in text
    printed = capsys.readouterr().out
    assert "attention ms / UNet step" in printed
    rows = bench_attention.run_bench([64], torch.float32, torch.device("cpu"), ["sdpa"], 0, 2, log=lambda m: None)
    ran = [r for r in rows if r["kernel"] == "sdpa"]
    assert ran and all(r["ms"] > 0 and r["max_abs_err"] < 1e-4 for r in ran)
    totals = bench_attention.per_step_totals(rows)
    assert {t["kernel"] for t in totals} == {"webui-default", "sdpa"}


def test_importing_accel_is_cheap():
    code = (
        "import sys, torch\n"
        "import lib_accel, lib_accel.attention, lib_accel.config, lib_accel.runtime.toggles, lib_accel.info\n"
        "import lib_accel.webui.extension, lib_accel.webui.optimizations, lib_accel.webui.options\n"
        "heavy = [m for m in ('xformers', 'triton', 'pynvml', 'gradio', 'modules') if m in sys.modules]\n"
        "assert not heavy, heavy\n"
        "assert not torch.cuda.is_initialized()\n"
        "print('ok')\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                            cwd=Path(__file__).resolve().parents[2])
    assert result.returncode == 0 and "ok" in result.stdout, result.stderr


COMMANDS = (["info"], ["bench", "attention"], ["bench", "webui"], ["bench", "unet"], ["slim"])


def _subparser(words: list[str]):
    parser = build_parser(words)
    for word in words:
        action = next(a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction")
        parser = action.choices[word]
    return parser


def test_every_option_has_help_and_plain_text():
    for words in COMMANDS:
        parser = _subparser(words)
        for action in parser._actions:
            assert action.help, f"{' '.join(words)} {action.option_strings or action.dest} has no help"
        text = parser.format_help()
        assert "``" not in text and ":mod:" not in text and ":func:" not in text, (words, text)
        assert "benchmarks/results" not in text, "the tracked results folder is never a default output"
    webui = " ".join(_subparser(["bench", "webui"]).format_help().split())
    assert "(default: http://127.0.0.1:7860)" in webui and "(default: Euler a)" in webui


def test_cli_imports_only_the_chosen_command():
    code = (
        "import sys\n"
        "from lib_accel.__main__ import main\n"
        "assert main(['info', '--json']) == 0\n"
        "loaded = sorted(m for m in sys.modules if m.startswith(('lib_accel.bench', 'lib_accel.checkpoint')))\n"
        "assert not loaded, loaded\n"
        "print('lazy-ok', file=sys.stderr)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                            cwd=Path(__file__).resolve().parents[2])
    assert result.returncode == 0 and "lazy-ok" in result.stderr, result.stderr


def test_bench_attention_rejects_bad_values(tmp_path, capsys):
    assert main(["bench", "attention", "--sizes", "abc"]) == 2
    assert "--sizes: 'abc' is not an image size" in capsys.readouterr().err
    assert main(["bench", "attention", "--sizes", "64", "--kernels", "sdpa,nope"]) == 2
    assert "--kernels: unknown nope" in capsys.readouterr().err
    existing = tmp_path / "keep.csv"
    existing.write_text("mine")
    assert main(["bench", "attention", "--sizes", "64", "--min-seconds", "0", "--out", str(existing)]) == 2
    assert "exists" in capsys.readouterr().err and existing.read_text() == "mine"


def test_bench_attention_writes_to_a_working_folder(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    args = ["bench", "attention", "--sizes", "64", "--min-seconds", "0", "--kernels", "sdpa,xformers"]
    assert main(args) == 0
    written = list((tmp_path / bench_attention.WORK_DIR).glob("attention-*.csv"))
    assert len(written) == 1
    text = written[0].read_text()
    assert "xformers" in text, "a named but unavailable kernel is a row with its reason, not dropped"


def test_bf16_note_on_cpus_without_bf16_instructions():
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    plain = "flags\t\t: fpu sse2 avx2 avx512f"
    assert info.notes(cpu, plain) and "slower than fp32" in info.notes(cpu, plain)[0]
    assert info.notes(cpu, plain + " avx512_bf16") == [] and info.notes(cpu, plain + " amx_bf16") == []
    assert info.notes(cuda, plain) == [] and info.notes(None, plain) == []
    data = {**info.collect(), "notes": info.notes(cpu, plain)}
    assert "Note: bf16 on CPU" in info.render(data)


def test_the_tab_shows_the_bf16_note():
    from lib_accel.webui import ui_tab
    text = ui_tab.backends_md({"notes": info.notes(torch.device("cpu"), "flags: sse2"), "kernels": [], "features": []})
    assert text.startswith("**Note:** bf16 on CPU")
