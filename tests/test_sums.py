"""tinyvit/sums.py, the one accumulator: what a step adds stays on the device, detached; totals are
read without disturbing the running sums (a mid-epoch checkpoint reads them, then training goes on)."""
import torch

from tinyvit.evaluate import Tally, evaluate
from tinyvit.sums import Sums


def test_sums_add_detach_total_and_load():
    s = Sums(torch.device("cpu"), ("loss_sum", "count"), confusion=(2, 2))
    w = torch.tensor(0.5, requires_grad=True)
    s.add(loss_sum=(w * 3).double(), count=3)
    s.add(loss_sum=torch.tensor(1.25), count=1, confusion=torch.tensor([[1, 0], [2, 1]]))
    assert not s["loss_sum"].requires_grad and s["loss_sum"].dtype == torch.float64
    total = s.total()
    assert total["loss_sum"] == 2.75 and total["count"] == 4.0 and isinstance(total["count"], float)
    assert total["confusion"].tolist() == [[1, 0], [2, 1]]
    total["confusion"] += 5  # a copy: the running sums are untouched
    s.add(count=1)
    assert s.total()["count"] == 5.0 and s["confusion"].tolist() == [[1, 0], [2, 1]]
    s.load({"loss_sum": 7.0})
    assert s.total()["loss_sum"] == 7.0 and s.total()["count"] == 0.0 and s["confusion"].sum() == 0


def test_evaluate_tallies_loss_accuracy_and_confusion():
    logits = torch.tensor([[2.0, 0.0], [0.0, 1.0], [3.0, 0.0]])
    labels = torch.tensor([0, 1, 1])
    tally = evaluate(lambda x: x, [(logits[:2], labels[:2]), (logits[2:], labels[2:])], 2, torch.device("cpu"))
    assert isinstance(tally, Tally) and tally.count == 3 and tally.acc == 2 / 3
    expected = torch.nn.functional.cross_entropy(logits, labels).item()
    assert abs(tally.loss - expected) < 1e-6
    assert tally.confusion.tolist() == [[1, 0], [1, 1]] and tally.per_class_acc() == [1.0, 0.5]
    assert evaluate(lambda x: x, [(logits, labels)], 2, torch.device("cpu"), should_stop=lambda: True) is None
