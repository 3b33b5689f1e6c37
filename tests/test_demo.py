"""A shortened demo (tiny sizes) runs end to end offline and writes its run folder."""

import json

from typer.testing import CliRunner

from ssam.cli.main import app
from ssam.demo import DemoOptions, run_demo


def test_quick_demo_writes_everything_and_learns(tmp_path):
    result = run_demo(DemoOptions(output_dir=tmp_path / "demo", quick=True), say=lambda _: None)
    out = result.output_dir
    for name in ("learning_curve.png", "overlays.png", "demo.json", "untrained.safetensors"):
        assert (out / name).is_file(), name
    for name in ("metrics.csv", "summary.json"):
        assert (out / "eval" / name).is_file() and (out / "eval-untrained" / name).is_file()
    assert (out / "foundation" / "sam_demo.pth").is_file()
    assert list((out / "predictions").glob("*_overlay.png"))
    assert result.labels == ["liver", "kidney", "spleen", "lesion"]
    before = sum(result.dice_untrained.values()) / len(result.labels)
    after = sum(result.dice_trained.values()) / len(result.labels)
    assert after > before, (result.dice_untrained, result.dice_trained)
    report = json.loads((out / "demo.json").read_text())
    assert report["seconds"]["total"] > 0 and "tiny" not in report["weights"].split()[0]


def test_demo_refuses_a_foreign_folder(tmp_path):
    (tmp_path / "mine.txt").write_text("keep me")
    runner = CliRunner()
    outcome = runner.invoke(app, ["demo", "--quick", "--output-dir", str(tmp_path)])
    assert outcome.exit_code != 0
    assert (tmp_path / "mine.txt").read_text() == "keep me"
