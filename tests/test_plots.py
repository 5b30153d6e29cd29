"""Figures: the training curves."""

import matplotlib
import matplotlib.figure
import numpy as np
import pytest

from cityscapes_unet import plots

matplotlib.use("Agg")


@pytest.mark.parametrize("n", [1, 3])
def test_plot_history_writes_curves_with_whole_epoch_ticks(tmp_path, monkeypatch, n):
    figures = []
    savefig = matplotlib.figure.Figure.savefig

    def keep(fig, *args, **kwargs):
        ax = fig.axes[0]
        low, high = ax.get_xlim()
        figures.append([t for t in ax.get_xticks() if low <= t <= high])
        return savefig(fig, *args, **kwargs)

    monkeypatch.setattr(matplotlib.figure.Figure, "savefig", keep)
    history = {
        "epoch": list(range(n)),
        "accuracy": list(np.linspace(0.5, 0.7, n)),
        "val_accuracy": list(np.linspace(0.4, 0.6, n)),
        "mean_iou": list(np.linspace(0.1, 0.3, n)),
        "val_mean_iou": list(np.linspace(0.1, 0.2, n)),
    }
    written = plots.plot_history(history, str(tmp_path))
    assert sorted(p.rsplit("/", 1)[1] for p in written) == ["acc.png", "miou.png"]
    assert all((tmp_path / name).stat().st_size > 0 for name in ("acc.png", "miou.png"))
    assert len(figures) == 2
    for ticks in figures:
        assert ticks and all(float(t).is_integer() for t in ticks), ticks
