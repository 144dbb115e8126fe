"""python -m tinyvit.compare reads finetune runs' metrics.jsonl and sets them side by side."""
import json

import pytest

from tinyvit.compare import main


def write_run(path, accs):
    path.mkdir()
    with open(path / "metrics.jsonl", "w") as f:
        for i, a in enumerate(accs, start=1):
            row = dict(epoch=i, train_loss=1.0 / i, train_acc=a, val_loss=2.0 / i, val_acc=a, seconds=1.5, lr=1e-3)
            f.write(json.dumps(row) + "\n")


def test_compare_two_runs(tmp_path, capsys):
    write_run(tmp_path / "vit", [0.5, 0.9, 0.8])
    write_run(tmp_path / "resnet", [0.4, 0.6])
    vit, resnet = main([str(tmp_path / "vit"), str(tmp_path / "resnet")])
    assert vit.final_val_acc == 0.8 and vit.best_val_acc == 0.9 and vit.epochs == 3 and vit.seconds == 4.5
    assert resnet.final_val_loss == 1.0
    out = capsys.readouterr().out
    assert "vit" in out and "90.00%" in out and "60.00%" in out


def test_compare_names_a_missing_run(tmp_path, capsys):
    with pytest.raises(SystemExit):
        main([str(tmp_path / "nope")])
    assert "nope/metrics.jsonl: no metrics.jsonl" in capsys.readouterr().err


def test_compare_names_a_corrupt_line(tmp_path, capsys):
    (tmp_path / "r").mkdir()
    (tmp_path / "r" / "metrics.jsonl").write_text('{"epoch": 1}\n{oops\n')
    with pytest.raises(SystemExit):
        main([str(tmp_path / "r")])
    assert "line 2: not valid JSON" in capsys.readouterr().err
