"""How a rendered SynthFaces set is laid out, measured on its label maps, against `TARGETS`.

    python -m facemogle.data.synthfaces.stats --n 512 --out metrics/synthfaces/variety.json \
        --plot metrics/synthfaces/variety.png

Per face: the eye-centre distance over the image side, the eye level, the face's horizontal
centre, the roll of the eye line, a yaw proxy from the nose's offset in the face, and the area
share of every class; per set, the shares of faces with an open mouth, a smile and each
accessory (from the attributes). The figure shows `template` and `varied` side by side with the
target ranges shaded.
"""

from __future__ import annotations

import argparse
from typing import Any

import numpy as np

from facemogle.core.io import atomic_path, write_json
from facemogle.core.labels import LABEL_INDEX, LABELS
from facemogle.data.synthfaces.face import render
from facemogle.data.synthfaces.layout import TARGETS

MEASURES: tuple[str, ...] = ("interocular", "eye_level_y", "face_x", "roll_deg", "yaw_deg")
SHARES: dict[str, str] = {"share_mouth_open": "mouth_open", "share_smiling": "smiling",
                          "share_eyeglasses": "eyeglasses", "share_hat": "hat",
                          "share_earrings": "earrings", "share_necklace": "necklace"}
_LAYOUT_COLOURS = {"template": "tab:gray", "varied": "tab:blue", "beyond": "tab:red"}  # plot



def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m facemogle.data.synthfaces.stats")
    parser.add_argument("--n", type=int, default=512)
    parser.add_argument("--resolution", type=int, default=128)
    parser.add_argument("--out", required=True, help="JSON summary")
    parser.add_argument("--plot", default=None, help="PNG figure")
    args = parser.parse_args(argv)
    sets = [collect(args.n, layout, resolution=args.resolution)
            for layout in ("template", "varied")]
    write_json(args.out, {"resolution": args.resolution,
                          "sets": [summarize(s) for s in sets]})
    if args.plot:
        plot(sets, args.plot)


def collect(n: int, layout: str, *, seed: int = 0, resolution: int = 128,
            variant: str = "standard") -> dict[str, Any]:
    """Measures of `n` rendered faces: {"faces": [per-face dicts], "shares": {...}}."""
    faces, attrs = [], []
    for i in range(n):
        face = render(i, seed=seed, resolution=resolution, variant=variant, num_captions=0,
                      layout=layout)
        m = measure(face.label_map)
        m["yaw_deg"] = float(face.attributes.get("head_yaw_deg", 0.0))  # as rendered
        faces.append(m)
        attrs.append(face.attributes)
    shares = {key: float(np.mean([bool(a.get(attr)) for a in attrs]))
              for key, attr in SHARES.items() if any(attr in a for a in attrs)}
    return {"layout": layout, "n": n, "resolution": resolution, "faces": faces,
            "shares": shares}


def measure(label_map: np.ndarray) -> dict[str, float | None]:
    """The layout of one (H, W) label map; a measure that needs an absent part is None."""
    left, right = _centroid(label_map, "l_eye"), _centroid(label_map, "r_eye")
    face = _centroid(label_map, "skin")
    nose = _centroid(label_map, "nose")
    out: dict[str, float | None] = dict.fromkeys(MEASURES)
    if left is not None and right is not None:
        dx, dy = left - right  # the subject's left eye is on the image's right
        out["interocular"] = float(np.hypot(dx, dy) / 2)  # image side = 2 units
        out["eye_level_y"] = float((left[1] + right[1]) / 2)
        out["roll_deg"] = float(np.degrees(np.arctan2(dy, dx)))
    if face is not None:
        out["face_x"] = float(face[0])
        cols = np.nonzero((label_map == LABEL_INDEX["skin"]).any(0))[0]
        half = max((cols.max() - cols.min() + 1) / label_map.shape[1], 1e-6)  # image units
        if nose is not None:
            out["nose_offset"] = float((nose[0] - face[0]) / half)
    counts = np.bincount(label_map.reshape(-1), minlength=len(LABELS)) / label_map.size
    out.update({f"area_{name}": float(c) for name, c in zip(LABELS, counts)})
    return out


def _centroid(label_map: np.ndarray, name: str) -> np.ndarray | None:
    """(x, y) centroid of a class in image units ([-1, 1]), None when absent."""
    ys, xs = np.nonzero(label_map == LABEL_INDEX[name])
    if len(xs) == 0:
        return None
    side = label_map.shape[0]
    return np.array([(xs.mean() + 0.5) * 2 / side - 1, (ys.mean() + 0.5) * 2 / side - 1])


def summarize(stats: dict[str, Any]) -> dict[str, Any]:
    """Quantiles of every measure and the shares of faces inside / beyond each target range."""
    out: dict[str, Any] = {"layout": stats["layout"], "n": stats["n"], "measures": {},
                           "shares": stats["shares"]}
    for key in MEASURES:
        values = np.array([f[key] for f in stats["faces"] if f.get(key) is not None])
        lo, hi = TARGETS[key]
        out["measures"][key] = {
            "target": [lo, hi], "measured_faces": int(len(values)),
            "quantiles_5_25_50_75_95": [round(float(v), 4)
                                        for v in np.percentile(values, [5, 25, 50, 75, 95])],
            "share_inside": round(float(np.mean((values >= lo) & (values <= hi))), 4),
        }
    out["shares_target"] = {k: list(TARGETS[k]) for k in stats["shares"]}
    return out


def plot(sets: list[dict[str, Any]], path: str) -> None:
    """Histograms of the measures, the shares and per-class areas, target ranges shaded."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig = plt.figure(figsize=(18, 8))
    axes = [fig.add_subplot(2, 4, i) for i in range(1, 7)]
    for ax, key in zip(axes, MEASURES):
        _plot_measure(ax, key, sets)
    _plot_shares(axes[5], sets)
    _plot_areas(fig.add_subplot(2, 4, (7, 8)), sets)
    fig.suptitle(f"SynthFaces layout over {sets[0]['n']} faces per layout: "
                 + ", ".join(s["layout"] for s in sets))
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=80)
    plt.close(fig)


def _plot_measure(ax, key: str, sets: list[dict[str, Any]]) -> None:
    """A histogram of one measure per set (a line where a set has one value), target shaded."""
    lo, hi = TARGETS[key]
    ax.axvspan(lo, hi, color="tab:green", alpha=0.15, label="target range")
    for s in sets:
        values = np.array([f[key] for f in s["faces"] if f.get(key) is not None])
        colour = _LAYOUT_COLOURS[s["layout"]]
        if np.ptp(values) == 0:  # one value (the template's yaw): a line, not a spike
            ax.axvline(values[0], color=colour, lw=1.5,
                       label=f"{s['layout']} (all {values[0]:g})")
            continue
        ax.hist(values, bins=40, histtype="step", lw=1.5, color=colour, label=s["layout"])
    ax.set_title(f"{key} (faces per bin)")
    ax.legend(fontsize=7)


def _plot_shares(ax, sets: list[dict[str, Any]]) -> None:
    """Bars of the shares of faces per set, the target range as green lines."""
    keys = list(SHARES)
    for k, s in enumerate(sets):
        ax.bar(np.arange(len(keys)) + 0.25 * k, [s["shares"].get(x, np.nan) for x in keys], 0.25,
               color=_LAYOUT_COLOURS[s["layout"]], label=s["layout"])
    for j, key in enumerate(keys):
        lo, hi = TARGETS[key]
        ax.plot([j - 0.15, j + 0.4], [lo, lo], "g-", [j - 0.15, j + 0.4], [hi, hi], "g-")
    ax.set_xticks(np.arange(len(keys)) + 0.12, [k.replace("share_", "") for k in keys],
                  rotation=30, fontsize=8)
    ax.set_title("shares of faces (green: target range)")


def _plot_areas(ax, sets: list[dict[str, Any]]) -> None:
    """Box plots of each class's area share per set, log scale (1e-5 = absent)."""
    for k, s in enumerate(sets):
        data = [[max(f[f"area_{name}"], 1e-5) for f in s["faces"]] for name in LABELS]
        ax.boxplot(data, positions=np.arange(len(LABELS)) * len(sets) + k, widths=0.7,
                   showfliers=False, patch_artist=True,
                   boxprops={"facecolor": _LAYOUT_COLOURS[s["layout"]], "alpha": 0.5})
    ax.set_yscale("log")
    ax.set_xticks(np.arange(len(LABELS)) * len(sets) + 0.5, LABELS, rotation=60, fontsize=8)
    ax.set_title("area share per class (1e-5 = absent)")


if __name__ == "__main__":
    main()
