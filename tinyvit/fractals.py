"""FractalDB: images of random iterated function systems, the pretraining data of formula-driven
supervised learning (Kataoka et al., "Pre-training without Natural Images", ACCV 2020 / IJCV 2022).

Read from the official code, https://github.com/hirokatsukataoka16/FractalDB-Pretrained-ResNet-PyTorch
(`param_search/ifs_search.py`, `fractal_renderer/make_fractaldb.py`, `fractal_renderer/ifs_function.py`,
`exe.sh`), and written again vectorised in numpy:

- **A category** is one IFS: N = 2..7 affine maps (x, y) -> (a x + b y + e, c x + d y + f), each of
  a..f uniform in [-1, 1], map i chosen with probability |a_i d_i - b_i c_i| / sum_j |a_j d_j - b_j c_j|.
  A candidate is kept when its points, drawn one pixel each, cover at least `FILL_THRESHOLD` of the
  image (`search`). There is no contractivity check, as in the original: a system that diverges
  collapses to a few pixels under the min-max rescaling and fails the fill test.
- **An instance** (`render`) multiplies the category's a..f by one of 25 weight rows (the identity,
  and each single parameter times 0.2, 0.6, 1.4 or 1.8: `weights_0.4.csv`, exe.sh's choice; the map
  probabilities stay the category's, as `set_param` leaves them), draws the orbit with a random
  non-zero 3x3 binary patch per point (`draw_patch`, grey on black, a later patch overwriting an
  earlier one, zeros included, as PIL's paste does), flips it top to bottom, and saves it in 4 flips
  (as is, up-down, left-right, both). Instance i of a category is flip i % 4 of weight row
  (i // 4) % 25 with patch draw i // 100: 100 instances are the 25 weights x 4 flips, and every
  further 100 redraw the patches, as the official --instance does (10 draws: 1,000 instances).

Deviations, for small images and for speed (the official code draws one Python-loop point at a time
and pastes one PIL patch per point: hours for a dataset):
- **Resolution.** An image of side `size` is rendered at RENDER_SCALE x that side (128 px for 32)
  with the official patches and point density (exe.sh: 200,000 points at 362 px, so 1.53 points per
  pixel: 25,000 at 128 px), then averaged over 4x4 blocks. A 3x3 patch is then under one output
  pixel and a stroke keeps its grey levels, instead of 3x3 patches of a third of a 9-pixel stroke.
  Grey: each rendered pixel is 255 or 0 and the block mean is the output, so a densely drawn region,
  where about half the patch bits are set, comes out near the official grey of 127.
- **Orbits.** Many chains in parallel instead of one: 1,000 chains from (0, 0), the first BURN_IN
  steps of each dropped (one chain from (0, 0) has one transient; a thousand would have a thousand),
  then enough steps for the points. The map choices come from each image's own random stream; the
  original reseeds numpy with 100 before every image, so all its images share one sequence of map
  choices. The patches are seeded too (the original draws them from Python's unseeded `random`), so a
  dataset is the same in every process (tests/test_fractals.py runs two).
- **Patch placement.** Centred on its point (the original pastes its top-left corner at (x+1, y+1)),
  in a margin of PAD rendered pixels (the original's 6 of 362, to scale).
- **Fill threshold.** The original keeps a system whose 100,000 points cover 20% of a 512 x 512
  image. Points per pixel fall with the side squared, so the same rule at another size accepts
  other systems. Here the search draws 6,250 points (the original's density) at SEARCH_SIDE = 128 px,
  whatever the size of the images (so fractals of 16 and of 32 px have the same categories), and keeps a system whose points cover FILL_THRESHOLD of it. FILL_THRESHOLD = 0.2125 was chosen
  by `calibrate`, which runs the original rule as written (vectorised) next to this one on the same
  3,000 candidates of seed 0: the original keeps 82 (2.7%); this rule at 0.2125 keeps 103, 76 of them
  among the original's 82, and the two rules agree on 98.9% of the candidates, the best agreement on a
  grid of thresholds 0.15, 0.1625, ..., 0.275 (0.20: 162 kept, 97.2%; 0.225: 58 kept, 98.8%).

Speed (`python -m bench fractals`, bench/results/cpu/fractals.json): 100 categories x 100 instances
at 32 px in 37.7 s on a 2-core Xeon with another job on the other core (load 1.8-2.3): the search
6.0 s, the rendering 31.7 s (2026-12-05; numpy uses one core here).
"""
from __future__ import annotations

import math
from typing import Optional

import numpy as np

MAX_MAPS = 7  # np.random.randint(2, 8): 2..7 maps
WEIGHT_FACTORS = (0.2, 0.6, 1.4, 1.8)  # weights_0.4.csv
RENDER_SCALE = 4  # render at 4x the side, then average 4x4 blocks
POINTS_PER_PIXEL = 200_000 / 362**2  # exe.sh: 200,000 points at 362 px
SEARCH_POINTS_PER_PIXEL = 100_000 / 512**2  # ifs_search.py: 100,000 points at 512 px
FILL_THRESHOLD = 0.2125  # of the rendered pixels, at SEARCH_POINTS_PER_PIXEL; `calibrate` chose it
CHAINS = 1000
BURN_IN = 20
SEARCH_SIDE = 128  # the fill test's image side, whatever the images' size: the categories do not depend on it
PAD = 2  # rendered pixels of margin: the original's 6 of 362 at the 128-px render side


def weight_rows() -> np.ndarray:
    """weights_0.4.csv: [25, 6], multipliers of (a, b, c, d, e, f); the identity is row 2 (the file
    lists, per parameter, 0.2, 0.6, 1 (once, in the first block), 1.4, 1.8)."""
    rows = []
    for j in range(6):
        for w in WEIGHT_FACTORS[:2] + ((1.0,) if j == 0 else ()) + WEIGHT_FACTORS[2:]:
            row = np.ones(6)
            row[j] = w
            rows.append(row)
    return np.array(rows)


WEIGHTS = weight_rows()


def sample_system(rng: np.random.Generator) -> np.ndarray:
    """One candidate IFS, as ifs_search.py draws it: [N, 7] rows (a, b, c, d, e, f, p), N in 2..7."""
    n = int(rng.integers(2, MAX_MAPS + 1))
    params = rng.uniform(-1.0, 1.0, (n, 6))
    p = np.abs(params[:, 0] * params[:, 3] - params[:, 1] * params[:, 2])
    return np.concatenate([params, (p / p.sum())[:, None]], axis=1)


def _padded(systems: list) -> tuple[np.ndarray, np.ndarray]:
    """[B, 7, 6] parameters (unused maps zero) and [B, 7] cumulative probabilities (unused maps 2:
    never chosen)."""
    params = np.zeros((len(systems), MAX_MAPS, 6))
    cum = np.full((len(systems), MAX_MAPS), 2.0)
    for i, s in enumerate(systems):
        params[i, :len(s)] = s[:, :6]
        cum[i, :len(s)] = np.cumsum(s[:, 6])
        cum[i, len(s) - 1] = 1.0  # a rounding short of 1 must not leave u in (sum, 1] unmapped
    return params, cum


def orbits(systems: list, points: int, rngs: list) -> tuple[np.ndarray, np.ndarray]:
    """x, y [B, points] of each system's attractor: CHAINS chains from (0, 0) iterated in parallel,
    the first BURN_IN steps dropped, map i chosen with its probability (the first i with u <= cumsum(p)_i,
    as ifs_function.calculate picks it). rngs[b] draws system b's map choices."""
    steps = math.ceil(points / CHAINS)
    params, cum = _padded(systems)
    u = np.stack([rng.random((BURN_IN + steps, CHAINS)) for rng in rngs])  # [B, T, K]
    x = np.zeros((len(systems), CHAINS))
    y = np.zeros_like(x)
    xs, ys = [], []
    rows = np.arange(len(systems))[:, None]
    for t in range(BURN_IN + steps):
        j = (u[:, t, :, None] > cum[:, None, :]).sum(-1)  # [B, K]: the map each chain takes
        a, b, c, d, e, f = np.moveaxis(params[rows, j], -1, 0)
        x, y = a * x + b * y + e, c * x + d * y + f
        if t >= BURN_IN:
            xs.append(x)
            ys.append(y)
    return np.stack(xs, -1).reshape(len(systems), -1)[:, :points], np.stack(ys, -1).reshape(len(systems), -1)[:, :points]


def to_pixels(x: np.ndarray, y: np.ndarray, side: int, pad: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Min-max rescaling of each row into [pad, side - 1 - pad] (ifs_function.__rescale: its orbit
    starts at (0, 0), so its shift-then-divide is a min-max rescaling), integer pixel columns and
    rows, and which points were finite (a diverging orbit can overflow: those points are dropped, as
    the original drops its NaNs)."""
    ok = np.isfinite(x) & np.isfinite(y)
    with np.errstate(invalid="ignore", over="ignore"):
        out = []
        for v in (x, y):
            lo = np.where(ok, v, np.inf).min(1, keepdims=True)
            hi = np.where(ok, v, -np.inf).max(1, keepdims=True)
            span = np.where(hi > lo, hi - lo, 1.0)
            scaled = np.where(ok, (v - lo) / span, 0.0) * (side - 1 - 2 * pad) + pad
            out.append(np.clip(np.nan_to_num(scaled), pad, side - 1 - pad).astype(np.int64))
    return out[0], out[1], ok


def fill_rate(systems: list, side: int, rngs: list, points_per_pixel: float = SEARCH_POINTS_PER_PIXEL) -> np.ndarray:
    """The share of a side x side image that the systems' points cover, one pixel each (ifs_search.py's
    cal_pix after draw_point): [B]."""
    x, y = orbits(systems, round(points_per_pixel * side * side), rngs)
    cols, rows, ok = to_pixels(x, y, side, PAD)
    flat = (np.arange(len(systems))[:, None] * side + rows) * side + cols
    hit = np.zeros(len(systems) * side * side, dtype=bool)
    hit[flat[ok]] = True
    return hit.reshape(len(systems), -1).mean(1)


def search(categories: int, seed: int = 0, side: int = SEARCH_SIDE, threshold: float = FILL_THRESHOLD,
           batch: int = 64) -> list[np.ndarray]:
    """`categories` IFS (each [N, 7]) that pass the fill test, in the order drawn. Candidate k is drawn
    from the stream (seed, 0, k) and iterated with (seed, 1, k), so the result does not depend on `batch`."""
    found, k = [], 0
    while len(found) < categories:
        ks = range(k, k + batch)
        systems = [sample_system(np.random.default_rng([seed, 0, i])) for i in ks]
        rates = fill_rate(systems, side, [np.random.default_rng([seed, 1, i]) for i in ks])
        found += [s for s, r in zip(systems, rates) if r >= threshold]
        k += batch
    return found[:categories]


def render(systems: list, weights: np.ndarray, rngs: list, size: int) -> np.ndarray:
    """One image per system, [B, size, size] uint8: its parameters times its weight row ([B, 6]), the
    orbit drawn with a random non-zero 3x3 patch per point at RENDER_SCALE x size, each rendered
    pixel set by the last patch over it (PIL's paste), flipped top to bottom, averaged over blocks."""
    side = size * RENDER_SCALE
    points = round(POINTS_PER_PIXEL * side * side)
    scaled = [np.concatenate([s[:, :6] * w, s[:, 6:]], axis=1) for s, w in zip(systems, weights)]
    x, y = orbits(scaled, points, rngs)
    cols, rows, ok = to_pixels(x, y, side, PAD)
    b = len(systems)
    masks = np.stack([rng.integers(1, 512, points) for rng in rngs])  # random.randrange(1, 512)
    bits = (masks[..., None] >> np.arange(8, -1, -1)) & 1  # '{:09b}': bit k -> patch row k // 3, column k % 3
    dy, dx = np.divmod(np.arange(9), 3)
    target = ((np.arange(b)[:, None, None] * side + rows[..., None] + dy - 1) * side + cols[..., None] + dx - 1)
    order = np.arange(b * points * 9).reshape(b, points, 9)  # a later point's patch wins
    last = np.full(b * side * side, -1)
    np.maximum.at(last, target[ok], order[ok])
    image = np.where(last >= 0, bits.reshape(-1)[last], 0).reshape(b, side, side)[:, ::-1]
    blocks = image.reshape(b, size, RENDER_SCALE, size, RENDER_SCALE).mean((2, 4))
    return np.rint(255 * blocks).astype(np.uint8)


FLIPS = (lambda im: im, lambda im: im[::-1], lambda im: im[:, ::-1], lambda im: im[::-1, ::-1])


def generate(categories: int, instances: int, size: int = 32, seed: int = 0, batch: int = 32,
             systems: Optional[list] = None) -> tuple[np.ndarray, np.ndarray, list]:
    """FractalDB at `size` px: images [categories * instances, size, size] uint8 (category-major),
    labels [categories * instances] int64, and the categories' systems. Each rendering (category,
    weight row, patch draw) is drawn from the stream (seed, 2, category, row, draw) and gives 4 flips."""
    systems = search(categories, seed) if systems is None else systems
    renders = math.ceil(instances / 4)
    jobs = [(c, r % len(WEIGHTS), r // len(WEIGHTS)) for c in range(categories) for r in range(renders)]
    drawn = []
    for i in range(0, len(jobs), batch):
        part = jobs[i:i + batch]
        drawn.append(render([systems[c] for c, _, _ in part], WEIGHTS[[w for _, w, _ in part]],
                            [np.random.default_rng([seed, 2, c, w, d]) for c, w, d in part], size))
    drawn = np.concatenate(drawn).reshape(categories, renders, size, size)
    images = np.stack([FLIPS[i % 4](drawn[c, i // 4]) for c in range(categories) for i in range(instances)])
    labels = np.repeat(np.arange(categories, dtype=np.int64), instances)
    return np.ascontiguousarray(images), labels, systems


def calibrate(candidates: int = 3000, seed: int = 0, side: int = SEARCH_SIDE) -> dict:
    """The original fill test next to this module's, on the same candidates: the threshold at which
    this one accepts about as many as the original, and how often the two agree there.

    The original (ifs_search.py) is run as written, vectorised across candidates: one orbit of
    100,000 points from (0, 0) with no burn-in, drawn one pixel each at 512 px with a 6-pixel margin,
    kept at a fill of 0.2. calibrate(3000) on 2 cores takes about 90 s; its table for seed 0 is in the
    module docstring (2026-12-05)."""
    systems = [sample_system(np.random.default_rng([seed, 0, i])) for i in range(candidates)]
    rng = np.random.default_rng([seed, 3])
    original = np.concatenate([_original_fill(systems[i:i + 100], rng) for i in range(0, candidates, 100)]) >= 0.2
    ours = fill_rate(systems, side, [np.random.default_rng([seed, 1, i]) for i in range(candidates)])
    out = {"candidates": candidates, "original_accepts": int(original.sum()), "table": {}}
    for t in np.arange(0.15, 0.2751, 0.0125):
        kept = ours >= t
        out["table"][round(float(t), 4)] = {"accepts": int(kept.sum()), "both": int((kept & original).sum()),
                                            "agrees": round(float((kept == original).mean()), 4)}
    return out


def _original_fill(systems: list, rng: np.random.Generator, n: int = 100_000, side: int = 512) -> np.ndarray:
    """ifs_search.py's fill rate, vectorised across systems: one orbit of n points from (0, 0) each."""
    params, cum = _padded(systems)
    rows = np.arange(len(systems))
    x, y = np.zeros(len(systems)), np.zeros(len(systems))
    xs, ys = np.zeros((len(systems), n)), np.zeros((len(systems), n))
    with np.errstate(over="ignore", invalid="ignore"):
        for t in range(1, n):
            j = (rng.random(len(systems))[:, None] > cum).sum(1)
            a, b, c, d, e, f = params[rows, j].T
            x, y = a * x + b * y + e, c * x + d * y + f
            xs[:, t], ys[:, t] = x, y
    cols, rws, ok = to_pixels(xs, ys, side, 6)
    hit = np.zeros(len(systems) * side * side, dtype=bool)
    hit[((rows[:, None] * side + rws) * side + cols)[ok]] = True
    return hit.reshape(len(systems), -1).mean(1)
