"""Commands check what they were given before the expensive part (loading the model)."""

from __future__ import annotations

import subprocess
import sys


def test_predict_on_a_missing_file_fails_before_loading_the_model(tmp_path):
    missing_adapter = tmp_path / "never-read.safetensors"  # loading it would be the error
    done = subprocess.run(
        [sys.executable, "-m", "ssam", "predict", str(tmp_path / "scan.nii.gz"), "-o",
         str(tmp_path / "out"), "--adapter", str(missing_adapter), "--offline"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert "scan.nii.gz" in done.stderr and "no such file or folder" in done.stderr
    assert "never-read" not in done.stdout + done.stderr
    assert "torch threads" not in done.stderr  # nothing past the input check ran
