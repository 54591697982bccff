"""The scenes' class schemes: the 13 fine classes every scene is labelled with, and their 7- and 2-class merges."""

from __future__ import annotations

import numpy as np

CLASS_NAMES: dict[int, list[str]] = {
    13: [
        "floor",
        "wall",
        "ceiling",
        "bed",
        "sofa",
        "chair",
        "table",
        "cabinet",
        "tv",
        "painting",
        "window",
        "books",
        "object",
    ],
    7: ["floor", "wall", "ceiling", "soft_furniture", "hard_furniture", "wall_decor", "props"],
    2: ["layout", "object"],
}

#: fine (13-class) id -> coarse id
_MERGE: dict[int, np.ndarray] = {
    13: np.arange(13, dtype=np.int64),
    7: np.array([0, 1, 2, 3, 3, 4, 4, 4, 5, 5, 1, 6, 6], dtype=np.int64),
    2: np.array([0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 0, 1, 1], dtype=np.int64),
}

FLOOR, WALL, CEILING, BED, SOFA, CHAIR, TABLE, CABINET, TV, PAINTING, WINDOW, BOOKS, OBJECT = range(13)
