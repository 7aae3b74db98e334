"""A constant-velocity Kalman filter for a tracked box.

The state is the box's centre x, centre y, width and height, each with its velocity: SORT's and ByteTrack's
eight-state filter, whose transition, process noise and measurement noise are all per coordinate, written as four
independent two-state filters. A filter holds `(value, velocity, var, cov, var_velocity)` per coordinate, 20 floats
in all, small enough to live in the rule state's changelog.

Steps are the capture times' differences, so frames at uneven intervals (a throttled camera, a missed detection)
are predicted as far apart as they are. Noise is in box heights, as in ByteTrack: a far person is small and moves
fewer normalised units.
"""

from __future__ import annotations

import numpy as np

from framewatch.schemas.geometry import Box

Motion = tuple[float, ...]  # 4 x (value, velocity, var, cov, var_velocity): centre x, centre y, width, height

MEASUREMENT_STD = 0.1  # of a measured coordinate, in box heights (a detector's boxes jitter)
ACCELERATION_STD = 0.5  # change of velocity in a second, in box heights a second
START_VELOCITY_STD = 1.0  # of the unknown velocity of a new track, in box heights a second
STRIDE = 5


def _coordinates(box: Box) -> tuple[float, float, float, float]:
    x1, y1, x2, y2 = box
    return (x1 + x2) / 2, (y1 + y2) / 2, x2 - x1, y2 - y1


def _scale(box: Box) -> float:
    return max(box[3] - box[1], 1e-3)


def start(box: Box) -> Motion:
    """A filter at `box`, standing still as far as it knows."""
    r = (MEASUREMENT_STD * _scale(box)) ** 2
    v = (START_VELOCITY_STD * _scale(box)) ** 2
    return tuple(x for value in _coordinates(box) for x in (value, 0.0, r, 0.0, v))


def predict(motion: Motion, dt_s: float) -> Motion:
    """Where the filter expects the box `dt_s` seconds on, with its uncertainty grown accordingly."""
    q = (ACCELERATION_STD * motion[3 * STRIDE]) ** 2  # white acceleration, scaled by the height
    predicted: list[float] = []
    for i in range(0, 4 * STRIDE, STRIDE):
        x, v, a, b, c = motion[i:i + STRIDE]
        predicted += (x + v * dt_s, v,
                      a + 2 * dt_s * b + dt_s * dt_s * c + q * dt_s ** 3 / 3,
                      b + dt_s * c + q * dt_s * dt_s / 2,
                      c + q * dt_s)
    return tuple(predicted)


def correct(motion: Motion, box: Box) -> Motion:
    """The filter after measuring `box` (for a prediction to the time it was seen)."""
    r = (MEASUREMENT_STD * _scale(box)) ** 2
    corrected: list[float] = []
    for i, z in zip(range(0, 4 * STRIDE, STRIDE), _coordinates(box)):
        x, v, a, b, c = motion[i:i + STRIDE]
        s = a + r
        gain_x, gain_v = a / s, b / s
        residual = z - x
        corrected += (x + gain_x * residual, v + gain_v * residual,
                      (1 - gain_x) * a, (1 - gain_x) * b, c - gain_v * b)
    return tuple(corrected)


def centre_distances(expected: list[Motion], boxes: np.ndarray) -> np.ndarray:
    """Filter (row) by box (column, x1 y1 x2 y2): how far the box's centre is from where the filter expects it, in
    its standard deviations (the squared Mahalanobis distance, chi-squared with 2 degrees of freedom)."""
    filters = np.array(expected)[:, None, :]
    cx, cy = (boxes[:, 0] + boxes[:, 2]) / 2, (boxes[:, 1] + boxes[:, 3]) / 2
    r = (MEASUREMENT_STD * np.maximum(boxes[:, 3] - boxes[:, 1], 1e-3)) ** 2
    return ((cx - filters[..., 0]) ** 2 / (filters[..., 2] + r)
            + (cy - filters[..., STRIDE]) ** 2 / (filters[..., STRIDE + 2] + r))


def box_of(motion: Motion) -> Box:
    cx, cy, w, h = (motion[i] for i in range(0, 4 * STRIDE, STRIDE))
    w, h = max(w, 1e-3), max(h, 1e-3)
    return cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2
