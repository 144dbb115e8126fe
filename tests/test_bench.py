"""The benchmarks: their formulas, the timer, the results file, the targets table, and every script's
smoke mode end to end (what CI runs; on CPU the Triton kernels go through the interpreter that
conftest.py switches on).

The smoke runs are slow-ish on CPU, so `python -m bench all --smoke` runs once per session (a fixture)
and the tests below read its one results file.
"""
import json
import math
import time

import pytest
import torch

# bench/ is a top-level folder of the repository, found through pyproject's pytest `pythonpath`.
from bench import attention, common, finetune, layernorm, targets
from bench.__main__ import main as bench_main

PNG = b"\x89PNG\r\n\x1a\n"


# ---------------------------------------------------------------------------------------------
# Formulas.
# ---------------------------------------------------------------------------------------------


def test_attention_counts_follow_the_flashattention_convention():
    s = attention.Shape(256, 12, 197, 64)
    assert s.label == "B256 H12 N197 D64"
    assert attention.flops(s, "fwd") == 4 * 256 * 12 * 197**2 * 64  # 30.5 GFLOP
    assert attention.flops(s, "fwd+bwd") == 3.5 * attention.flops(s, "fwd")
    bhnd = 256 * 12 * 197 * 64
    assert attention.min_bytes(s, "fwd", 2) == 4 * bhnd * 2  # q, k, v, o in bf16: 310 MB
    assert attention.min_bytes(s, "fwd+bwd", 2) == 8 * bhnd * 2 + 4 * 256 * 12 * 197  # + do dq dk dv, fp32 lse


def test_layernorm_bytes_count_each_tensor_once():
    m, n = 50432, 768
    assert layernorm.min_bytes(m, n, "fwd", 2) == (2 * m * n + 2 * n) * 2
    assert layernorm.min_bytes(m, n, "bwd", 2) == (3 * m * n + 3 * n) * 2 + 2 * m * 4


def test_sweep_keeps_tokens_constant_and_contains_the_long_target_shape():
    shapes = attention.sweep_shapes(smoke=False)
    assert {s.b * s.n for s in shapes.values()} == {attention.SWEEP_TOKENS}
    assert attention.Shape(4, 16, 4096, 64) in shapes.values()
    assert max(s.n for s in shapes.values()) == 8192


# ---------------------------------------------------------------------------------------------
# Timer, runner, results file.
# ---------------------------------------------------------------------------------------------


def test_timer_separates_the_first_call_and_reports_two_medians():
    calls = []

    def fn():
        time.sleep(0.03 if not calls else 0.002)  # a "compile" on the first call
        calls.append(1)

    timer = common.Timer("cpu", warmup_ms=2, rep_ms=10, smoke=False)
    _, first = timer.first_call(fn)
    t = timer.steady_state(fn, first)
    assert first >= 30
    assert 2 <= t.ms < 25  # the first call's 30 ms is not in the median
    assert len(t.ms_runs) == 2 and t.reps >= common.MIN_REPS
    assert t.spread == abs(t.ms_runs[0] - t.ms_runs[1]) / min(t.ms_runs)


def _runner(tmp_path):
    return common.Runner(common.Settings(smoke=True, out=tmp_path, dtypes=("fp32",), compile=False))


def test_runner_records_timings_failures_and_wrong_results(tmp_path):
    runner = _runner(tmp_path)
    runner.limits = common.Limits(copy_gbps=10.0, matmul_tflops=1.0)
    ref = [torch.ones(4)]

    good = runner.measure(common.row("op", "s", "fp32", "fwd", "good"), lambda: [torch.ones(4)],
                          flops=1e9, nbytes=1e6, check=lambda out: common.rel_error(out, ref))
    assert good["ms"] > 0 and good["skipped"] is None and good["rel_err"] == 0
    assert math.isclose(good["tflops"], 1e9 / good["ms"] / 1e9)
    assert math.isclose(good["gbps"], 1e6 / good["ms"] / 1e6)
    assert math.isclose(good["pct_copy_bw"], 100 * good["gbps"] / 10.0)

    def refuses():
        raise RuntimeError("No available kernel.\nmore text")

    failed = runner.measure(common.row("op", "s", "fp32", "fwd", "fails"), refuses)
    assert failed["ms"] is None and failed["skipped"] == "RuntimeError: No available kernel."

    wrong = runner.measure(common.row("op", "s", "fp32", "fwd", "wrong"), lambda: [torch.zeros(4)],
                           check=lambda out: common.rel_error(out, ref))
    assert wrong["ms"] is None and wrong["rel_err"] == 1.0 and wrong["skipped"].startswith("wrong result")
    for r in runner.rows:
        assert set(common.REQUIRED_FIELDS) <= set(r)
        assert r["device"] == runner.env["device"] and r["smoke"] is True


def test_merge_keeps_other_ops_and_replaces_the_same_key(tmp_path):
    path = tmp_path / "dev-2026-01-01.json"
    old = [common.row("layernorm", "8x8", "fp32", "fwd", "torch", ms=1.0),
           common.row("attention", "B1", "fp32", "fwd", "eager", ms=2.0)]
    common.merge_rows(path, old)
    common.merge_rows(path, [common.row("attention", "B1", "fp32", "fwd", "eager", ms=3.0)])
    rows = common.read_rows(path)
    assert sorted((r["op"], r["ms"]) for r in rows) == [("attention", 3.0), ("layernorm", 1.0)]
    assert not list(tmp_path.glob("*.tmp"))


def test_merge_never_overwrites_an_unreadable_file(tmp_path):
    path = tmp_path / "dev-2026-01-01.json"
    path.write_text("{not json")
    new = [common.row("attention", "B1", "fp32", "fwd", "eager", ms=3.0)]
    with pytest.raises(common.ResultsFileError, match=str(path.name)) as info:
        common.merge_rows(path, new)
    assert path.read_text() == "{not json"
    side = [p for p in tmp_path.glob("*.json") if p != path]
    assert len(side) == 1 and str(side[0]) in str(info.value)
    assert common.read_rows(side[0]) == new


def test_read_rows_names_the_file_and_the_missing_key(tmp_path):
    path = tmp_path / "r.json"
    path.write_text(json.dumps([{"op": "x", "shape": "s", "dtype": "fp32", "pass": "fwd"}]))
    with pytest.raises(common.ResultsFileError, match=r"r\.json: row 0 lacks provider"):
        common.read_rows(path)


def test_smoke_results_never_go_to_bench_results():
    with pytest.raises(SystemExit):
        layernorm.parse_args(["--smoke", "--out", str(common.RESULTS_DIR)])
    cfg = layernorm.parse_args(["--smoke"])
    assert cfg.smoke and cfg.out.resolve() != common.RESULTS_DIR and cfg.dtypes == ("fp32",)


def test_bad_options_are_refused_by_name(capsys):
    for argv in (["--dtypes", "bf17"], ["--widths", "0"], ["--rep-ms", "0"]):
        with pytest.raises(SystemExit):
            layernorm.parse_args(argv)
        assert argv[0] in capsys.readouterr().err
    with pytest.raises(SystemExit):
        bench_main(["nonsense"])


# ---------------------------------------------------------------------------------------------
# Every script's smoke mode, through `python -m bench all`.
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench-smoke")
    bench_main(["all", "--smoke", "--out", str(out)])
    files = list(out.glob("*.json"))
    assert len(files) == 1, files
    return out, common.read_rows(files[0])


def _rows(rows, op):
    mine = [r for r in rows if r["op"] == op]
    assert mine, f"no {op} rows"
    for r in mine:
        missing = [k for k in common.REQUIRED_FIELDS if k not in r]
        assert not missing, (r["provider"], missing)
        assert r["smoke"] is True and r["dtype"] == "fp32"
        assert (r["ms"] is None) != (r["skipped"] is None), r  # timed, or says why not
        if r["ms"] is not None:
            assert r["ms"] > 0 and r["first_call_ms"] > 0
            assert len(r["ms_runs"]) == (1 if r["provider"] == "cache-build" else 2)  # built once
    return mine


def _plots(out, name):
    plots = list(out.glob(f"*-{name}*.png"))
    assert plots, f"no {name} plot in {out}"
    for p in plots:
        assert p.read_bytes()[:8] == PNG
    return plots


def test_smoke_limits_are_measured(smoke_run):
    _, rows = smoke_run
    copy, matmul = _rows(rows, "copy"), _rows(rows, "matmul")
    assert copy[0]["gbps"] > 0 and matmul[0]["tflops"] > 0


def test_smoke_attention(smoke_run):
    out, rows = smoke_run
    rows = _rows(rows, "attention")
    providers = {r["provider"] for r in rows}
    assert {"tinyvit", "eager", "sdpa-flash", "sdpa-efficient", "sdpa-cudnn", "sdpa-math"} <= providers
    assert {r["pass"] for r in rows} == {"fwd", "fwd+bwd"} and {r["group"] for r in rows} == {"vit", "sweep"}
    for r in rows:
        if r["provider"] in ("eager", "sdpa-math", "tinyvit"):  # these run everywhere (tinyvit: interpreter)
            assert r["ms"] is not None, r["skipped"]
            assert r["rel_err"] <= common.TOLERANCE["fp32"]
            assert r["tflops"] > 0 and r["gbps"] > 0 and r["pct_matmul"] > 0
    if not torch.cuda.is_available():
        refused = [r for r in rows if r["provider"] in ("sdpa-efficient", "sdpa-cudnn")]
        assert all(r["ms"] is None and r["skipped"] for r in refused)
    _plots(out, "attention-sweep-fp32")


def test_smoke_layernorm(smoke_run):
    out, rows = smoke_run
    rows = _rows(rows, "layernorm")
    assert {(r["provider"], r["pass"]) for r in rows} == {(p, q) for p in ("tinyvit", "torch") for q in ("fwd", "bwd")}
    for r in rows:
        assert r["ms"] is not None, r["skipped"]
        assert r["rel_err"] <= common.TOLERANCE["fp32"] and r["gbps"] > 0 and r["pct_copy_bw"] > 0
    _plots(out, "layernorm-fp32")


def test_smoke_vit_end_to_end(smoke_run):
    out, rows = smoke_run
    rows = _rows(rows, "vit")
    assert {(r["provider"], r["pass"]) for r in rows} == {
        (p, q) for p in ("tinyvit-kernels", "tinyvit-torch", "timm") for q in ("infer", "finetune-step")}
    for r in rows:
        assert r["ms"] is not None, r["skipped"]
        assert r["images_per_s"] == pytest.approx(r["batch"] * 1e3 / r["ms"])
        assert r["rel_err"] <= common.TOLERANCE["fp32"]  # same weights as timm: same logits, same loss
    _plots(out, "vit")


def test_smoke_finetune_epochs(smoke_run):
    _, rows = smoke_run
    rows = {r["provider"]: r for r in _rows(rows, "finetune-epoch")}
    assert {"uncached", "cache-build", "cached-cpu"} <= set(rows)
    for r in rows.values():
        assert r["ms"] is not None, r["skipped"]
        assert r["images_per_s"] == pytest.approx(finetune.SMOKE["images"] * 1e3 / r["ms"])
    assert rows["cached-cpu"]["rel_err"] <= common.TOLERANCE["fp32"]  # the cache holds the prefix's output


def test_layernorm_compile_provider_records_its_compile_time(tmp_path, monkeypatch):
    # Inductor's CPU code generation takes tens of seconds cold, over this file's time budget; the
    # provider's plumbing (a fresh dynamo trace per shape, AOTAutograd's backward, the first call timed
    # apart) is the same with backend="aot_eager", which skips only the code generation.
    def compiled():
        torch._dynamo.reset()
        return torch.compile(layernorm.torch_layer_norm, dynamic=False, backend="aot_eager")

    monkeypatch.setattr(layernorm, "_compiled", compiled)
    layernorm.main(["--smoke", "--compile", "--widths", "32", "--rows", "4", "--out", str(tmp_path)])
    rows = [r for r in common.read_rows(next(tmp_path.glob("*.json"))) if r["provider"] == "compile-torch"]
    assert {r["pass"] for r in rows} == {"fwd", "bwd"}
    for r in rows:
        assert r["ms"] is not None, r["skipped"]
        assert r["first_call_ms"] > r["ms"]  # the compile is in the first call, not in the median
        assert r["rel_err"] <= common.TOLERANCE["fp32"]


# ---------------------------------------------------------------------------------------------
# The targets table.
# ---------------------------------------------------------------------------------------------


def _target_rows():
    env = dict(device="NVIDIA H100 80GB HBM3", torch="2.14.1", triton="3.8.0", cuda="13.0", smoke=False)
    vit_b, long = targets.VIT_B, targets.LONG

    def r(op, shape, dtype, pass_, provider, **kw):
        return common.row(op, shape, dtype, pass_, provider, **env, **kw)

    return [
        r("attention", vit_b, "bf16", "fwd", "tinyvit", ms=0.100, gbps=3100.0, spread=0.01),
        r("attention", vit_b, "bf16", "fwd", "sdpa-cudnn", ms=0.170, spread=0.01),
        r("attention", vit_b, "bf16", "fwd", "sdpa-flash", ms=0.237, spread=0.01),
        r("attention", vit_b, "bf16", "fwd", "sdpa-efficient", ms=None, skipped="RuntimeError: refused"),
        r("attention", vit_b, "bf16", "fwd", "eager", ms=1.0, spread=0.01),
        r("attention", vit_b, "bf16", "fwd+bwd", "tinyvit", ms=None, skipped="ValueError: boom"),
        r("attention", long, "bf16", "fwd", "tinyvit", ms=1.0, tflops=350.0, spread=0.01),
        r("attention", long, "bf16", "fwd", "sdpa-cudnn", ms=0.95, spread=0.10),
        r("layernorm", targets.LN, "bf16", "fwd", "tinyvit", ms=0.05, pct_copy_bw=80.0, spread=0.0),
    ]


def test_targets_are_judged_from_rows_of_the_same_file():
    rows = _target_rows()
    by_text = {t.text: targets.evaluate(t, rows) for t in targets.TARGETS}
    v = [by_text[t.text] for t in targets.TARGETS]
    assert v[0].status == "met" and v[0].ratio == pytest.approx((0.170 / 0.100) / 1.2)  # fastest SDPA is cuDNN
    assert "sdpa-cudnn 0.17 ms" in v[0].measured
    assert v[1].status == "met" and v[1].ratio == pytest.approx(3100 / 2200)
    assert v[2].status == "met" and v[2].ratio == pytest.approx(10 / 5)
    assert v[3].ratio is None and "tinyvit: ValueError: boom" in v[3].status
    assert v[4].ratio == pytest.approx(0.95 / 0.9) and v[4].status.startswith("met (within the 10.0% spread")
    assert v[5].status == "missed" and v[5].ratio == pytest.approx(350 / 400)
    assert v[6].status == "missed" and v[6].ratio == pytest.approx(80 / 85)
    assert v[7].status.startswith("not measured: no tinyvit row")
    assert v[8].status.startswith("not measured")


def test_targets_rewrite_only_the_marked_block_of_the_readme(tmp_path):
    results = tmp_path / "nvidia-h100-2026-12-01.json"
    common.merge_rows(results, _target_rows())
    readme = tmp_path / "README.md"
    readme.write_text(f"# intro\n{targets.BEGIN}\nold table\n{targets.END}\ntail\n")
    table = targets.main(["--results", str(results), "--update-readme", "--readme", str(readme)])
    text = readme.read_text()
    assert text.startswith("# intro\n") and text.endswith("tail\n") and "old table" not in text
    assert table in text and "| target | measured | ratio | met? |" in text
    assert text.count("| met |") >= 2 and "| missed |" in text

    readme.write_text("no markers here\n")
    with pytest.raises(ValueError, match="README.md: expected exactly one"):
        targets.main(["--results", str(results), "--update-readme", "--readme", str(readme)])


def test_targets_without_results_say_not_yet_measured():
    table = targets.markdown(None, None)
    assert table.count(targets.NO_GPU_YET) == len(targets.TARGETS)


def test_targets_refuse_to_put_smoke_rows_in_the_readme(tmp_path):
    results = tmp_path / "cpu.json"
    common.merge_rows(results, [common.row("copy", "8 MiB", "fp32", "fwd", "torch", smoke=True, ms=1.0)])
    readme = tmp_path / "README.md"
    readme.write_text(f"{targets.BEGIN}\nx\n{targets.END}\n")
    with pytest.raises(SystemExit):
        targets.main(["--results", str(results), "--update-readme", "--readme", str(readme)])
    assert readme.read_text() == f"{targets.BEGIN}\nx\n{targets.END}\n"


# ---------------------------------------------------------------------------------------------
# The CPU mode (bench/cpu.py): rotated rounds, per-round ratios, every case kind in smoke mode.
# ---------------------------------------------------------------------------------------------


def test_cpu_rounds_rotate_the_order_and_ratio_within_each_round():
    from bench import cpu

    order = []
    sides = {"a": lambda: order.append("a"), "b": lambda: (order.append("b"), time.sleep(0.004))}
    stats = cpu.rounds(sides, "b", pairs=4, warmup=1)
    assert order == ["a", "b", "b", "a", "a", "b", "b", "a", "a", "b"]
    assert stats["b"]["speedup"] == 1.0 and stats["a"]["speedup"] > 1.5  # a is faster than the baseline b
    assert stats["a"]["speedup_min"] <= stats["a"]["speedup_q1"] <= stats["a"]["speedup"] <= stats["a"]["speedup_q3"]


def test_cpu_smoke_runs_every_case_kind(tmp_path):
    from bench import cpu

    out = tmp_path / "cpu.json"
    bench_main(["cpu", "--smoke", "--out", str(out)])
    rows = json.loads(out.read_text())
    assert {r["kind"] for r in rows} == {"infer", "train", "finetune-last", "checkpoint", "loop"}
    for r in rows:
        assert r["smoke"] and r["pairs"] == 3 and r["env"]["threads"] >= 1 and r["env"]["torch"]
        assert all(s["ms"] > 0 and s["speedup_min"] <= s["speedup"] <= s["speedup_max"] for s in r["sides"].values())
    finetune = next(r for r in rows if r["kind"] == "finetune-last")
    assert set(finetune["sides"]) == {"timm-frozen", "tinyvit-cache", "tinyvit-cache-reduced"}
    assert finetune["trained_flops_reduced"] < finetune["trained_flops_full"]
    memory = next(r for r in rows if r["kind"] == "checkpoint")["memory"]
    assert memory["plain"]["maxrss_peak_mib"] > 0 and memory["checkpoint"]["maxrss_peak_mib"] > 0
    assert "| finetune-last-vit-s-224 |" in cpu.table(rows)
    loop = next(r for r in rows if r["kind"] == "loop")
    assert set(loop["sides"]) == {"hand", "tinyvit", "tinyvit-augment", "per-image", "per-image-augment"}
    assert loop["train_images"] == 48 and "| loop-digits-vit-16 |" in cpu.table(rows)


def test_cpu_options_are_checked(capsys):
    from bench import cpu

    with pytest.raises(SystemExit):
        cpu.main(["--cases", "infer-vit-xl"])
    assert "unknown infer-vit-xl" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        cpu.main(["--smoke", "--out", str(cpu.RESULTS)])
