"""Filter plots: frequency responses in Hz and dB, and readable PNGs of every kind."""

from __future__ import annotations

import numpy as np

from kws.plots import (
    frequency_responses,
    plot_first_layer,
    plot_first_layer_responses,
    plot_response_map,
    plot_second_layer,
)

PNG = b"\x89PNG\r\n\x1a\n"


def test_a_moving_average_is_a_low_pass_with_its_null_at_fs_over_taps():
    freqs, db = frequency_responses(np.array([[1.0, 1, 1, 1, 1], [1.0, -1, 1, -1, 1]]))
    assert freqs[0] == 0 and freqs[-1] == 8000
    assert np.argmax(db[0]) == 0 and db[0, 0] == 0.0  # 0 dB: the largest gain of all
    null = freqs[np.argmin(db[0, : len(freqs) // 2 + 1])]
    assert abs(null - 3200) < 20  # 16 kHz / 5 taps
    assert freqs[np.argmax(db[1])] == 8000  # alternating signs: a high-pass


def test_every_filter_figure_is_written(tmp_path):
    rng = np.random.default_rng(0)
    # 12 filters: a full row of 8 and a part row (its empty panels switched off); ch32's 32
    # drew 4x the panels for the same check (and `kws filters` draws a real checkpoint's).
    first, second = rng.standard_normal((12, 1, 5)), rng.standard_normal((12, 12, 5))
    paths = [
        plot_first_layer(first, tmp_path / "a.png", "t"),
        plot_first_layer_responses(first, tmp_path / "b.png", "t"),
        plot_response_map(first, tmp_path / "c.png", "t"),
        plot_second_layer(second, tmp_path / "d.png", "t"),
    ]
    assert all(p.read_bytes()[:8] == PNG for p in paths)
