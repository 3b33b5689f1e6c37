"""Smoke runs of the benchmark scripts in quick mode (tiny SAM): every path works and writes its
table; no timing is asserted (this machine's numbers say nothing in a test)."""

import json
from pathlib import Path

import pytest
import torch

BENCH = Path(__file__).resolve().parents[1] / "bench"


@pytest.fixture()
def bench_modules(monkeypatch):
    monkeypatch.syspath_prepend(str(BENCH))


@pytest.mark.slow
def test_suite_quick_measures_every_configuration(bench_modules, tmp_path, capsys):
    import run_suite
    import workloads

    out = tmp_path / "suite.json"
    run_suite.main(["--quick", "--threads", "1", "--out", str(out)])
    results = json.loads(out.read_text())
    printed = capsys.readouterr().out
    assert "Training step" in printed and "command: python bench/run_suite.py" in printed
    assert results["command"] == f"python bench/run_suite.py --quick --threads 1 --out {out}"
    settings = results["settings"]
    assert settings["variant"] == "tiny" and settings["threads"] == 1
    trained = {(r["config"], r["batch"]) for r in results["training"]}
    assert trained == {(c, b) for c in workloads.TRAIN_CONFIGS for b in settings["train_batches"]}
    inferred = {(r["config"], r["batch"]) for r in results["inference"]}
    assert inferred == {(c, b) for c in workloads.INFER_CONFIGS for b in settings["infer_batches"]}
    for section, rounds in (("training", "rounds"), ("inference", "infer_rounds")):
        for row in results[section]:
            assert row["median_s"] > 0 and len(row["samples_s"]) == settings[rounds]
    assert {r["config"] for r in results["memory"]} == {
        *workloads.TRAIN_CONFIGS,
        *workloads.INFER_CONFIGS,
    }
    for row in results["memory"]:  # fresh interpreters: imports and the real-size text tower
        assert row["peak_rss_mib"] >= row["model_rss_mib"] > row["baseline_rss_mib"] > 0
    assert {(r["mode"], r["batch"]) for r in results["memory"]} == {("train", 2), ("infer", 1)}
    assert [r["kind"] for r in results["load"]] == ["svd_first", "svd_cached", "merged"]
    assert all(r["median_s"] > 0 for r in results["load"])
    starts = results["first_mask"]  # ssam predict run as a user runs it: mask before exit
    assert [r["kind"] for r in starts] == ["first_start", "cached_start"]
    assert all(
        0 < s < e for r in starts for s, e in zip(r["samples_s"], r["exit_samples_s"], strict=True)
    )
    flops = {r["config"]: r for r in results["encoder_flops"] if r["batch"] == 1}
    stock, same = flops["encoder:sam_stock"], flops["encoder:sam_same_layout"]
    assert stock["gflop"] > same["gflop"] > 0  # stock SAM pads its windows
    assert any(r["config"] == "matmul 2048^3" for r in results["encoder_flops"])
    for row in results["inference"]:
        assert row["ratio"] > 0 and row["ratio_stock"] > 0
    assert results["trainable"]["ssam"] < results["trainable"]["sam_same_layout"]
    assert set(results["adapter_bytes"]) == set(workloads.METHODS)
    assert len(results["targets"]) == 7
    assert all(t["met"] is None and t["value"] is not None for t in results["targets"])


@pytest.mark.slow
def test_compare_methods_quick(bench_modules, tmp_path, shared_data):
    import compare_methods

    out = tmp_path / "compare.json"
    argv = ["--quick", "--methods", "ssam", "token", "--datasets", "glas", "--threads", "1"]
    results = compare_methods.main([*argv, "--out", str(out), "--data-root", str(shared_data)])
    assert json.loads(out.read_text())["picked_lr"] == results["picked_lr"]
    glas = results["datasets"]["glas"]
    assert glas["split"]["train"] + glas["split"]["val"] == 22
    refs = glas["references"]
    assert refs["untrained"]["gland"]["dice"] < 0.1  # a fresh label token finds nothing
    assert refs["box_256"]["gland"]["dice"] > 0.9 > refs["box_64"]["gland"]["dice"] > 0.7
    runs = glas["runs"]
    assert {(r["method"], r["lr"]) for r in runs.values()} == {
        (m, lr) for m in ("ssam", "token") for lr in compare_methods.LR_GRID[m]
    }
    for r in runs.values():
        assert r["peak_rss_mib"] > 500 and r["seconds_per_epoch"] > 0
        assert len(r["val_curve"]) == 2 and r["labels"]["gland"]["n"] == glas["split"]["val"]
    table = results["table"]["glas"]
    assert table["ssam"]["trainable"] == 180_648 and table["token"]["trainable"] == 136_448
    assert table["token"]["lr"] == results["picked_lr"]["token"]
    best_token = max(compare_methods.mean_dice(r) for r in runs.values() if r["method"] == "token")
    assert compare_methods.mean_dice(table["token"]) == pytest.approx(best_token)
    assert "S-SAM" in results["verdicts"]["glas"]
    for suffix in ("_params.png", "_time.png"):
        assert (tmp_path / f"compare{suffix}").stat().st_size > 0


def test_threads_quick_compares_one_and_two_threads_quiet_and_loaded(bench_modules, tmp_path):
    import threads

    out = tmp_path / "threads.json"
    threads.main(["--quick", "--rounds", "2", "--out", str(out)])
    phases = json.loads(out.read_text())["phases"]
    assert set(phases) == {"quiet", "one busy process"}
    for phase in phases.values():
        assert set(phase["median_s"]) == {"1", "2"} and all(
            v > 0 for v in phase["median_s"].values()
        )
        assert phase["auto_threads"] >= 1
    # the busy process is seen: auto never asks for more threads than when quiet
    assert phases["one busy process"]["auto_threads"] <= phases["quiet"]["auto_threads"]


@pytest.mark.parametrize("given", [None, "absent", "empty"])
def test_reference_code_without_a_checkout_stops_with_one_line(
    bench_modules, tmp_path, capsys, given
):
    """The external comparison needs the user's checkout of the paper's code: without one it
    stops before building anything, exit status 2, one line naming the path."""
    import reference_code

    (tmp_path / "empty").mkdir()
    argv = [] if given is None else ["--reference", str(tmp_path / given)]
    with pytest.raises(SystemExit) as stop:
        reference_code.main(argv)
    assert stop.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--reference" in err[0] and "SVDSAM" in err[0]
    if given is not None:
        assert str((tmp_path / given).resolve()) in err[0]


@pytest.mark.slow  # compiles the tiny encoder at 1 and 2 threads
def test_backends_quick_times_every_backend_against_the_floor(bench_modules, tmp_path, capsys):
    pytest.importorskip("onnxruntime")
    import backends

    out = tmp_path / "backends.json"
    backends.main(["--quick", "--rounds", "1", "--profile", "--out", str(out)])
    results = json.loads(out.read_text())
    assert results["command"].startswith("python bench/backends.py --quick")
    cells = {(r["backend"], r["batch"], r["threads"]) for r in results["rows"]}
    backend_names = ("torch", "torch-plain", "torch-compile", "onnx", "onnx-int8")
    assert cells == {(b, n, t) for b in backend_names for n in (1, 8) for t in (1, 2)}
    assert set(results["first_use_s"]) == {"torch-compile", "onnx", "onnx-int8"}
    assert set(results["profile"]) == {"torch", "torch-compile"}
    assert all(0 < op["share"] <= 1 for ops in results["profile"].values() for op in ops)
    for row in results["rows"]:
        assert row["ms_per_image"] > 0 and row["floor_ms_per_image"] > 0
    floor = results["floor"]
    assert floor["encoder_flops"] > 0 and set(floor["matmul_gflops"]) == {"1", "2"}
    assert "of floor" in capsys.readouterr().out


@pytest.mark.slow
def test_train_cpu_quick_breaks_each_step_down_against_the_floor(bench_modules, tmp_path, capsys):
    import train_cpu

    out = tmp_path / "train_cpu.json"
    train_cpu.main(["--quick", "--threads", "1", "--passes", "1", "--out", str(out)])
    results = json.loads(out.read_text())
    assert results["command"].startswith("python bench/train_cpu.py --quick --threads 1 --passes")
    runs = {r["method"]: r for r in results["runs"]}
    assert set(runs) == {"ssam", "full"}
    assert all(r["micro_batch"] == 1 and r["batch"] == 2 for r in runs.values())
    for run in runs.values():  # each in a fresh interpreter with the real-size text tower
        parts = run["parts_per_image"]
        assert run["seconds_per_image"] >= parts["forward"] > 0 and parts["backward"] > 0
        assert run["forward_gflop_per_image"] > 0 and run["backward_gflop_per_image"] > 0
        assert run["floor_ratio"] > 1 and run["peak_rss_mib"] > 500
    assert runs["ssam"]["parts_per_image"]["svd_weights"] > 0
    assert runs["full"]["parts_per_image"]["svd_weights"] == 0
    assert runs["ssam"]["trainable"] < runs["full"]["trainable"]
    full = runs["full"]  # every weight's gradient: the backward costs about two forwards
    assert 1.5 < full["backward_gflop_per_image"] / full["forward_gflop_per_image"] < 2.5
    assert runs["ssam"]["profile"] and all(row["self_ms"] >= 0 for row in runs["ssam"]["profile"])
    assert "| tiny | 64 | ssam |" in capsys.readouterr().out


@pytest.mark.slow
def test_stock_baseline_of_a_tinyvit_base_is_its_own_layout(bench_modules, tmp_path):
    import workloads

    base = workloads.write_random_checkpoint("litemedsam", tmp_path)
    clip = workloads.write_random_clip(tmp_path)
    setup = workloads.BenchSetup("litemedsam", 64, str(base), str(tmp_path), 1, str(tmp_path),
                                 str(clip))  # fmt: skip
    stock = workloads.build_plain_sam(setup, stock=True).image_encoder
    same = workloads.build_plain_sam(setup).image_encoder
    assert repr(stock) == repr(same)
    assert all(torch.equal(a, b) for a, b in zip(stock.state_dict().values(),
                                                  same.state_dict().values(), strict=True))  # fmt: skip


@pytest.mark.slow
def test_input_size_quick_runs_one_recipe_per_size(bench_modules, tmp_path, shared_data):
    import input_size

    out = tmp_path / "sizes.json"
    results = input_size.main(["--quick", "--threads", "1", "--out", str(out),
                               "--data-root", str(shared_data)])  # fmt: skip
    assert json.loads(out.read_text())["rows"] == results["rows"]
    assert [r["size"] for r in results["rows"]] == [64, 48]
    for row in results["rows"]:
        assert row["label"] == "gland" and 0 <= row["ssam_dice"] <= 1
        assert 0.5 < row["box_dice"] <= 1 and row["seconds_per_image"] > 0
    for size in ("64", "48"):
        settings = results["sizes"][size]["settings"]
        assert settings["image_size"] == int(size) and settings["methods"] == ["ssam"]


@pytest.mark.slow
def test_afternoon_quick_times_ssam_train_as_a_user_runs_it(bench_modules, tmp_path, shared_data):
    import afternoon

    out = tmp_path / "afternoon.json"
    data = shared_data / "kvasir-seg"
    results = afternoon.main(["--quick", "--threads", "1", "--data", str(data), "--out", str(out)])
    assert json.loads(out.read_text())["wall_seconds"] == results["wall_seconds"]
    assert results["train_command"].startswith("ssam train --data ")
    assert results["train_cases"] + results["val_cases"] == 20
    assert len(results["epoch_seconds"]) == 1 and results["epoch_seconds"][0] > 0
    assert results["wall_seconds"] > sum(results["epoch_seconds"])
    assert results["peak_rss_mib"] > 500 and 0 <= results["scores"]["polyp"]["dice"] <= 1


def test_flop_counter_counts_a_depthwise_backward_as_two_forwards(bench_modules):
    """torch's own formula takes a grouped convolution's weight gradient for a dense one
    (257x the forward for 256 depthwise channels); the bench's counter divides it by groups."""
    from measure import count_flops, flop_counter

    for groups in (1, 64):
        conv = torch.nn.Conv2d(64, 64, 3, padding=1, groups=groups, bias=False)
        x = torch.randn(2, 64, 16, 16, requires_grad=True)
        forward = count_flops(lambda conv=conv, x=x: conv(x))
        assert forward == 2 * 2 * 16 * 16 * 64 * (64 // groups) * 9
        y = conv(x)
        with flop_counter() as counter:
            y.sum().backward()
        assert counter.get_total_flops() == 2 * forward


@pytest.mark.parametrize("size", [96, 256])
def test_methods_table_has_one_column_per_box_size(bench_modules, size):
    import compare_methods

    score = {"labels": {"polyp": {"dice": 0.5, "dice_sd_cases": 0.1}}, "trainable": 10}
    score |= {"seconds_per_epoch": 3.0, "peak_rss_mib": 1024.0}
    boxes = {f"box_{b}": {"polyp": {"dice": 0.9}} for b in (size, 256)}
    output = {
        "settings": {"methods": ["ssam", "lora"], "image_size": size},
        "table": {"kvasir": {"ssam": score, "lora": score}},
        "datasets": {"kvasir": {"references": {"untrained": {"polyp": {"dice": 0.1}}, **boxes}}},
        "picked_lr": {"ssam": 3e-3, "lora": 1e-3},
    }
    lines = compare_methods.markdown_table(output).splitlines()
    head = [c.strip() for c in lines[0].strip("|").split("|")]
    assert len(head) == len(set(head)) == 5 + (size != 256)  # 2 methods
    assert {line.count("|") for line in lines} == {len(head) + 1}
