"""Progress reaches every sink (the flow's Prefect artifacts) and draws no bar off a terminal."""

import numpy as np

from crowdforge import progress


def test_sinks_see_every_step_and_no_bar_off_a_terminal(capsys):
    seen = []
    with progress.sink(lambda d, done, total: seen.append((d, done, total))), progress.track(3, "work") as advance:
        for _ in range(3):
            advance()
    assert seen == [("work", 0, 3), ("work", 1, 3), ("work", 2, 3), ("work", 3, 3)]
    assert not progress.bars_enabled()  # pytest captures stderr: not a terminal
    assert capsys.readouterr().err == ""
    with progress.track(2, "outside") as advance:  # the sink is gone outside its block
        advance()
    assert len(seen) == 4


def test_training_epochs_report_batches():
    import torch

    from crowdforge.modeling.classifier import FitConfig, fit_head, new_head

    rng = np.random.default_rng(0)
    x = rng.normal(size=(40, 8)).astype(np.float32)
    y = (x[:, 0] > 0).astype(int)
    q = np.eye(2)[y]
    seen = []
    torch.manual_seed(0)
    with progress.sink(lambda d, done, total: seen.append((d, done, total))):
        fit_head(new_head(8, 2, 0), x, q, np.ones(40), x, y, q, FitConfig(batch_size=16, max_epochs=2, name="m"))
    assert ("m epoch 1/2", 3, 3) in seen and ("m epoch 2/2", 3, 3) in seen
