"""Tests for slimprune.plots: BatchNorm scales, the |γ| histogram and the channel bar chart."""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from matplotlib import image as mpimg
from matplotlib import pyplot as plt
from matplotlib.figure import Figure
from torch import nn

from slimprune import plots
from slimprune.plots import bn_scales, plot_channels, plot_gamma_histogram

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def png_size(path: Path) -> tuple[int, int]:
    """Check the file is a PNG matplotlib can read; return its (width, height) in pixels."""
    assert path.read_bytes()[:8] == PNG_SIGNATURE
    pixels = mpimg.imread(path)
    return pixels.shape[1], pixels.shape[0]


@pytest.fixture
def drawn(monkeypatch: pytest.MonkeyPatch) -> list[Figure]:
    """Collect every figure the plots save, so tests can read their legends and bars."""
    figures: list[Figure] = []
    save = plots._save

    def keep_and_save(figure: Figure, out: Path) -> Path:
        figures.append(figure)
        return save(figure, out)

    monkeypatch.setattr(plots, "_save", keep_and_save)
    return figures


def narrow_net(width: int) -> nn.Sequential:
    """conv 3→width, BN(width), ReLU, conv width→4, flatten, linear 4→10 (on 3×3 inputs)."""
    return nn.Sequential(
        nn.Conv2d(3, width, 1),
        nn.BatchNorm2d(width),
        nn.ReLU(),
        nn.Conv2d(width, 4, 3),
        nn.Flatten(),
        nn.Linear(4, 10),
    )


def test_bn_scales_are_the_absolute_gammas_that_were_set() -> None:
    """|γ| of BatchNorm1d/2d/3d in order; non-affine and repeated BatchNorms add nothing."""
    bn2d, bn1d, plain, bn3d = nn.BatchNorm2d(3), nn.BatchNorm1d(2), nn.BatchNorm2d(4, affine=False), nn.BatchNorm3d(1)
    with torch.no_grad():
        bn2d.weight.copy_(torch.tensor([-0.5, 0.25, 2.0]))
        bn1d.weight.copy_(torch.tensor([0.1, -3.0]))
        bn3d.weight.copy_(torch.tensor([7.0]))
    model = nn.ModuleDict({"a": bn2d, "conv": nn.Conv2d(3, 3, 1), "b": bn1d, "c": plain, "d": bn3d, "again": bn2d})

    scales = bn_scales(model)
    assert scales.dtype == np.float32
    np.testing.assert_array_equal(scales, np.array([0.5, 0.25, 2.0, 0.1, 3.0, 7.0], dtype=np.float32))


def test_bn_scales_of_a_model_without_batchnorm_is_empty() -> None:
    """No BatchNorm, no scales."""
    assert bn_scales(nn.Linear(3, 3)).shape == (0,)


@pytest.mark.parametrize("log", [True, False], ids=["log", "linear"])
@pytest.mark.parametrize("threshold", [None, 1e-2], ids=["no-threshold", "threshold"])
def test_gamma_histogram_is_a_png_of_the_expected_size(tmp_path: Path, log: bool, threshold: float | None) -> None:
    """With or without threshold, log or linear bins: a 700×450 PNG at the returned path."""
    rng = np.random.default_rng(0)
    before, after = rng.uniform(0.2, 1.0, 64), rng.uniform(0, 1, 64) ** 6
    path = plot_gamma_histogram(before, after, threshold=threshold, path=tmp_path / "gamma.png", log=log)
    assert path == tmp_path / "gamma.png"
    assert png_size(path) == (700, 450)


def test_gamma_histogram_legend_counts_the_channels_below_the_threshold(tmp_path: Path, drawn: list[Figure]) -> None:
    """The legend gives each series' size, how many are below the threshold, and the threshold itself."""
    before = np.array([0.0, 1e-4, 5e-3, 0.02, 0.5, 1.0])
    after = np.array([1e-3, 0.3, 0.9])
    plot_gamma_histogram(before, after, threshold=1e-2, path=tmp_path / "gamma.png")

    (figure,) = drawn
    legend = [text.get_text() for text in figure.axes[0].get_legend().get_texts()]
    assert legend == [
        "before: 6 channels, 3 (50.0%) < 0.01, 1 exactly 0 (leftmost bin)",
        "after: 3 channels, 1 (33.3%) < 0.01",
        "threshold = 0.01",
    ]


@pytest.mark.parametrize("log", [True, False], ids=["log", "linear"])
def test_gamma_histogram_bins_every_value_including_zeros(tmp_path: Path, drawn: list[Figure], log: bool) -> None:
    """The bars of each histogram add up to its number of channels, exact zeros included."""
    before = np.array([0.0, 0.0, 1e-6, 0.3, 1.0])
    plot_gamma_histogram(before, before[2:], path=tmp_path / "gamma.png", log=log)

    (figure,) = drawn
    heights = [sum(bar.get_height() for bar in container) for container in figure.axes[0].containers]
    assert heights == [5, 3]


def test_gamma_histogram_reads_models_and_tensors(tmp_path: Path, drawn: list[Figure]) -> None:
    """A model contributes its BatchNorm |γ|; a tensor with gradients is read as it is."""
    model = nn.Sequential(nn.Conv2d(1, 4, 1), nn.BatchNorm2d(4))
    path = plot_gamma_histogram(model, torch.full((2,), -0.5, requires_grad=True), path=tmp_path / "gamma.png")
    assert png_size(path) == (700, 450)
    legend = [text.get_text() for text in drawn[0].axes[0].get_legend().get_texts()]
    assert legend == ["before: 4 channels", "after: 2 channels"]


def test_plots_create_parent_folders_and_leave_no_figure_open(tmp_path: Path) -> None:
    """Missing folders are created, and pyplot has no more open figures than before."""
    open_before = plt.get_fignums()
    gamma = plot_gamma_histogram(np.array([0.1, 0.2]), path=tmp_path / "a" / "b" / "gamma.png")
    channels = plot_channels(narrow_net(8), narrow_net(5), tmp_path / "c" / "channels.png")
    assert gamma.is_file() and channels.is_file()
    assert plt.get_fignums() == open_before


@pytest.mark.parametrize(
    "kw, words",
    [
        ({"threshold": -1.0}, "threshold"),
        ({"threshold": 0.0}, "log axis"),
        ({"threshold": float("nan")}, "threshold"),
        ({"path": "gamma.pdf"}, r"\.png"),
    ],
    ids=["negative-threshold", "zero-threshold-on-log", "nan-threshold", "not-png"],
)
def test_gamma_histogram_refuses_bad_settings(tmp_path: Path, kw: dict[str, object], words: str) -> None:
    """Thresholds a log axis cannot show and non-PNG paths are refused before drawing."""
    kw.setdefault("path", tmp_path / "gamma.png")
    with pytest.raises(ValueError, match=words):
        plot_gamma_histogram(np.array([0.1, 0.2]), **kw)


@pytest.mark.parametrize(
    "before, words",
    [
        (nn.Linear(2, 2), "no BatchNorm"),
        (np.array([]), "empty"),
        (np.array([0.1, np.nan]), "NaN"),
    ],
    ids=["model-without-bn", "empty", "nan"],
)
def test_gamma_histogram_refuses_data_it_cannot_plot(tmp_path: Path, before: object, words: str) -> None:
    """Nothing to plot, or values that cannot be binned, give a ValueError that says which."""
    with pytest.raises(ValueError, match=words):
        plot_gamma_histogram(before, path=tmp_path / "gamma.png")


def test_channel_plot_is_a_png_of_the_expected_size(tmp_path: Path) -> None:
    """Four layers fit the minimum height: an 800×300 PNG; more layers make it taller, not wider."""
    short = plot_channels(narrow_net(8), narrow_net(5), tmp_path / "short.png")
    assert png_size(short) == (800, 300)

    deep = nn.Sequential(*[nn.Linear(4, 4) for _ in range(30)])
    tall = plot_channels(deep, deep, tmp_path / "tall.png")
    width, height = png_size(tall)
    assert width == 800 and height > 300


def test_channel_plot_draws_matched_layers_and_annotates_the_pruned_fraction(tmp_path: Path, drawn: list[Figure]) -> None:
    """One bar pair per Conv/BN/Linear name in both models; narrowed layers say kept/original and the change."""
    pruned = narrow_net(5)
    del pruned[5]  # a layer only the original has is not drawn
    plot_channels(narrow_net(8), pruned, tmp_path / "channels.png")

    (figure,) = drawn
    axes = figure.axes[0]
    assert [label.get_text() for label in axes.get_yticklabels()] == ["0", "1", "3"]
    original, kept = axes.containers
    assert [bar.get_width() for bar in original] == [8, 8, 4]
    assert [bar.get_width() for bar in kept] == [5, 5, 4]
    assert [text.get_text() for text in axes.texts] == ["5/8, -38%", "5/8, -38%"]
    assert axes.get_title() == "Channels kept per layer: 2 of 3 layers narrowed"


def test_channel_plot_never_rounds_a_kept_channel_to_minus_100_percent(tmp_path: Path, drawn: list[Figure]) -> None:
    """1 of 256 channels kept reads -99.6%, not -100%, which would mean the layer is gone."""
    plot_channels(nn.Sequential(nn.Linear(4, 256)), nn.Sequential(nn.Linear(4, 1)), tmp_path / "channels.png")
    assert [text.get_text() for text in drawn[0].axes[0].texts] == ["1/256, -99.6%"]


def test_channel_plot_draws_at_most_max_layers_and_says_so(tmp_path: Path, drawn: list[Figure]) -> None:
    """Only the first max_layers layers are drawn; the title counts the rest."""
    plot_channels(narrow_net(8), narrow_net(5), tmp_path / "channels.png", max_layers=2)
    axes = drawn[0].axes[0]
    assert len(axes.get_yticklabels()) == 2
    assert "first 2 of 4 layers shown" in axes.get_title()


def test_channel_plot_refuses_models_with_no_common_layer(tmp_path: Path) -> None:
    """Models whose layer names do not overlap cannot be compared layer by layer."""
    original = nn.Sequential(nn.Linear(2, 2))
    pruned = nn.ModuleDict({"other": nn.Linear(2, 1)})
    with pytest.raises(ValueError, match="by module name"):
        plot_channels(original, pruned, tmp_path / "channels.png")


def test_missing_matplotlib_gives_the_install_command(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Without matplotlib, plotting raises ImportError with the pip command and writes nothing."""
    for name in ("matplotlib", "matplotlib.figure", "matplotlib.backends", "matplotlib.backends.backend_agg"):
        monkeypatch.setitem(sys.modules, name, None)
    with pytest.raises(ImportError, match=r'pip install "slimprune\[plots\]"'):
        plot_gamma_histogram(np.array([0.1]), path=tmp_path / "gamma.png")
    assert not (tmp_path / "gamma.png").exists()


def test_importing_plots_does_not_need_matplotlib(monkeypatch: pytest.MonkeyPatch) -> None:
    """The module loads, and bn_scales works, while matplotlib cannot be imported."""
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    reloaded = importlib.reload(plots)
    assert reloaded.bn_scales(nn.BatchNorm1d(2)).tolist() == [1.0, 1.0]
