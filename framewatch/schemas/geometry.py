"""Plane geometry on normalised image coordinates (0..1, y pointing down): what regions, lines and boxes need."""

from __future__ import annotations

import math

Point = tuple[float, float]
Box = tuple[float, float, float, float]  # x1, y1, x2, y2


def inside(point: Point, polygon: list[Point]) -> bool:
    """Even-odd ray casting; points on an edge may fall either way."""
    x, y = point
    result = False
    for (x1, y1), (x2, y2) in zip(polygon, polygon[1:] + polygon[:1]):
        if (y1 > y) != (y2 > y) and x < x1 + (y - y1) * (x2 - x1) / (y2 - y1):
            result = not result
    return result


def side(a: Point, b: Point, point: Point) -> float:
    """> 0 when `point` lies right of the directed line a→b as seen on the image (y down), < 0 left, 0 on it."""
    return (b[0] - a[0]) * (point[1] - a[1]) - (b[1] - a[1]) * (point[0] - a[0])


def segments_cross(p1: Point, p2: Point, q1: Point, q2: Point) -> bool:
    """Whether segments p1p2 and q1q2 properly intersect (touching at an end point does not count)."""
    d1, d2 = side(q1, q2, p1), side(q1, q2, p2)
    d3, d4 = side(p1, p2, q1), side(p1, p2, q2)
    return d1 * d2 < 0 and d3 * d4 < 0


def self_crossing(polygon: list[Point]) -> tuple[int, int] | None:
    """The first pair of non-adjacent edges (by index) that cross, or None for a simple polygon."""
    edges = list(zip(polygon, polygon[1:] + polygon[:1]))
    for i, (a1, a2) in enumerate(edges):
        for j in range(i + 2, len(edges)):
            if i == 0 and j == len(edges) - 1:
                continue  # the first and last edges share a vertex
            b1, b2 = edges[j]
            if segments_cross(a1, a2, b1, b2):
                return i, j
    return None


def foot(box: Box) -> Point:
    """Where a standing person touches the ground: the bottom centre of the box."""
    return (box[0] + box[2]) / 2, box[3]


def area(box: Box) -> float:
    return max(0.0, box[2] - box[0]) * max(0.0, box[3] - box[1])


def iou(a: Box, b: Box) -> float:
    overlap = area((max(a[0], b[0]), max(a[1], b[1]), min(a[2], b[2]), min(a[3], b[3])))
    union = area(a) + area(b) - overlap
    return overlap / union if union > 0 else 0.0


def centre(box: Box) -> Point:
    return (box[0] + box[2]) / 2, (box[1] + box[3]) / 2


def distance(a: Point, b: Point) -> float:
    return math.hypot(a[0] - b[0], a[1] - b[1])


def grown(box: Box, by: float) -> Box:
    """The box widened on every side by `by` times its own width and height."""
    dx, dy = (box[2] - box[0]) * by, (box[3] - box[1]) * by
    return box[0] - dx, box[1] - dy, box[2] + dx, box[3] + dy


def overlaps(a: Box, b: Box) -> bool:
    return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]


def contains(box: Box, point: Point) -> bool:
    return box[0] <= point[0] <= box[2] and box[1] <= point[1] <= box[3]
