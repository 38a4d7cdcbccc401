"""The command line: a successful comparison, and one-line errors with a non-zero exit."""

import json
import subprocess
import sys

import pytest

from workbench.cli import main


def test_decode_prints_a_table_and_writes_images(tmp_path, capsys):
    out = tmp_path / "run"
    rc = main(["decode", "--model", "wan2.1", "--tiny", "--size", "64x96x5", "--mode", "tiled",
               "--tile", "32", "--stride", "24", "--out", str(out), "--no-progress"])
    assert rc == 0
    text = capsys.readouterr().out
    assert "wan2.1 (tiny) 64x96x5 float32" in text
    lines = {line.split()[0]: line for line in text.splitlines() if line.startswith(("full", "tiled"))}
    assert "exact" in lines["full"] and "tiled" in lines
    for name in ["full.png", "tiled.png", "tiled_overlay.png", "tiled.json", "summary.json"]:
        assert (out / name).is_file(), name
    summary = json.loads((out / "summary.json").read_text())
    assert [r["mode"] for r in summary["rows"]] == ["full", "tiled"]
    assert 0 < summary["quality"]["tiled"]["psnr_db"] < 100  # 32 px tiles on a 64 px image: an approximation


@pytest.mark.parametrize("argv,message", [
    (["--model", "sd15"], "unknown model 'sd15'; accepted: wan2.1, wan2.2-a14b"),
    (["--mode", "full,tilted"], "unknown mode tilted; accepted: full, tiled, parallel_tiled, patch, shard, auto"),
    (["--size", "512"], "size must be HxW or HxWxF"),
    (["--size", "500x512"], "qwen-image: height and width must be multiples of 8 pixels, got 500x512"),
    (["--dtype", "fp64"], "unknown dtype 'fp64'; accepted: float32, bfloat16, float16"),
    (["--mode", "tiled", "--tile", "100"], "tile_px must be a positive multiple of the spatial ratio 8"),
    (["--mode", "tiled", "--mid-block", "once"], "--mid-block: 'once' is not accepted; accepted: auto, global, tile"),
    (["--model", "glm-image", "--mode", "full", "--mid-block", "tile"], "--mid-block and --global-up-blocks apply to tiled"),
    (["--model", "glm-image", "--mode", "full", "--global-up-blocks", "2"], "--global-up-blocks apply to tiled and parallel_tiled"),
    (["--model", "wan2.1", "--mode", "tiled", "--global-up-blocks", "1"], "image decoders (glm-image) only, with --mid-block global or auto; wan2.1 with --mid-block auto takes 0"),
    (["--model", "glm-image", "--mode", "tiled", "--global-up-blocks", "-1"], "--global-up-blocks must be int >= 0"),
    (["--model", "glm-image", "--mode", "tiled", "--mid-block", "global", "--levers", "compile"],
     "--mid-block global passes the decoder's stem through"),
])
def test_bad_input_gets_a_one_line_error(argv, message, capsys, tmp_path):
    out = tmp_path / "never"
    rc = main(["decode", "--tiny", "--out", str(out), "--no-progress", *argv])
    err = capsys.readouterr().err.strip()
    assert rc == 2
    assert err.startswith("workbench: error: ") and message in err and "\n" not in err
    assert not out.exists(), "nothing is written on bad input"


def test_module_entry_point_exits_non_zero():
    proc = subprocess.run([sys.executable, "-m", "workbench", "decode", "--model", "nope"], capture_output=True, text=True)
    assert proc.returncode == 2 and "accepted:" in proc.stderr
