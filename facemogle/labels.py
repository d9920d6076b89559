"""CelebAMask-HQ labels, palette, label-map conversions and mask decoupling (DESIGN.md section 5)."""

from __future__ import annotations

import numpy as np

# Index -> name, in CelebAMask-HQ / MM-CelebA-HQ order. "l_"/"r_" are the subject's left/right.
LABELS: tuple[str, ...] = (
    "background", "skin", "nose", "eye_g", "l_eye", "r_eye", "l_brow", "r_brow", "l_ear", "r_ear",
    "mouth", "u_lip", "l_lip", "hair", "hat", "ear_r", "neck_l", "neck", "cloth",
)
NUM_LABELS = len(LABELS)  # 19
NUM_SLOTS = NUM_LABELS + 1  # slot 0: global colour mask; slots 1..19: binary masks of labels 0..18
LABEL_INDEX: dict[str, int] = {name: i for i, name in enumerate(LABELS)}

# The dataset palette (the one in MM-CelebA-HQ's "P" PNGs), index -> RGB.
PALETTE = np.array(
    [
        (0, 0, 0), (204, 0, 0), (76, 153, 0), (204, 204, 0), (51, 51, 255), (204, 0, 204),
        (0, 255, 255), (255, 204, 204), (102, 51, 0), (255, 0, 0), (102, 204, 0), (255, 255, 0),
        (0, 0, 153), (0, 0, 204), (255, 51, 153), (0, 204, 204), (0, 51, 0), (255, 153, 51),
        (0, 204, 0),
    ],
    dtype=np.uint8,
)  # (19, 3)
