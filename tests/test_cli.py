import subprocess
import sys

import pandas as pd
import pytest

from lens_digits.cli import main
from lens_digits.grid import FILES


def run_cli(capsys, *args):
    code = main(list(args))
    out = capsys.readouterr()
    return code, out.out, out.err


def test_run_on_local_checkpoint_writes_run_directory(llama_dir, tmp_path, capsys):
    out = tmp_path / "runs" / "demo"
    code, stdout, _ = run_cli(
        capsys, "run", "--model", str(llama_dir), "--scales", "1-3", "--n", "30", "--target", "both", "--out", str(out), "--no-progress"
    )
    assert code == 0
    assert sorted(p.name for p in out.iterdir()) == sorted(FILES)
    df = pd.read_csv(out / "grid.csv")
    assert set(df["scale"]) == {1, 2, 3} and set(df["target"]) == {"first", "answer"}
    assert "logit_lens · target=answer" in stdout and str(out) in stdout


def test_cli_and_python_give_the_same_grid(llama_dir, llama_model, tmp_path, capsys):
    import lens_digits as ld

    out = tmp_path / "run"
    assert (
        run_cli(capsys, "run", "--model", str(llama_dir), "--scales", "2", "--n", "25", "--seed", "4", "--out", str(out), "--no-progress")[
            0
        ]
        == 0
    )
    api = ld.run_sweep(llama_model, scales=[2], n_per_scale=25, seed=4).to_dataframe()
    pd.testing.assert_frame_equal(pd.read_csv(out / "grid.csv"), api, check_dtype=False)


@pytest.mark.parametrize(
    "args,message",
    [
        (["--scales", "0-2"], "impossible digit scale 0"),
        (["--scales", "one"], "cannot read digit scales"),
        (["--n", "0"], "n_per_scale must be a positive integer"),
        (["--op", "pow"], "unknown op 'pow'"),
        (["--template", "{a}+"], "must contain {a} and {b}"),
        (["--methods", "nope"], "unknown method 'nope'"),
        (["--few-shot", "30", "--scales", "3"], "longer than the model's context"),
        (["--template", "{a} + {b} = "], "merges the answer into the prompt"),
    ],
)
def test_bad_input_exits_2_with_one_line_and_writes_nothing(args, message, gpt2_dir, tmp_path, capsys):
    out = tmp_path / "out"
    code, _, err = run_cli(capsys, "run", "--model", str(gpt2_dir), "--n", "20", "--out", str(out), "--no-progress", *args)
    assert code == 2
    assert message in err
    assert len(err.strip().splitlines()) == 1 and err.startswith("lens-digits: error: ")
    assert not out.exists() and list(tmp_path.iterdir()) == []


def test_missing_checkpoint(tmp_path, capsys):
    code, _, err = run_cli(capsys, "run", "--model", str(tmp_path / "nothing"), "--out", str(tmp_path / "o"))
    assert code == 2 and "no checkpoint folder" in err
    code, _, err = run_cli(capsys, "run", "--model", str(tmp_path), "--out", str(tmp_path / "o"))
    assert code == 2 and "no config.json" in err
    assert not (tmp_path / "o").exists()


def test_unwritable_or_non_empty_out(llama_dir, tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    code, _, err = run_cli(capsys, "run", "--model", str(llama_dir), "--out", str(blocker / "run"))
    assert code == 2 and "not writable" in err
    full = tmp_path / "full"
    full.mkdir()
    (full / "x").write_text("x")
    code, _, err = run_cli(capsys, "run", "--model", str(llama_dir), "--out", str(full))
    assert code == 2 and "not empty" in err and [p.name for p in full.iterdir()] == ["x"]


def test_argparse_errors_exit_2(capsys):
    with pytest.raises(SystemExit) as e:
        main(["run", "--target", "middle"])
    assert e.value.code == 2
    assert "invalid choice" in capsys.readouterr().err


def test_console_script_help():
    out = subprocess.run([sys.executable, "-m", "lens_digits.cli", "run", "--help"], capture_output=True, text=True, check=True).stdout
    for flag in ("--model", "--scales", "--n", "--op", "--target", "--out", "--device", "--dtype", "--batch-size", "--seed"):
        assert flag in out
