"""The inner loops of colour extraction, compiled (numba), holding the GIL.

Why compiled: `models.colours` runs at every upload, inside a server whose event loop, executor
workers and embedding batcher all want the GIL. Written as numpy, backdrop suppression alone
was some sixty array operations on a 64-pixel picture; each one let go of the GIL and took it
back, and under a bulk upload every hand-off was a context switch, so extraction cost about
twice its CPU measured alone (docs/colours.md, "Speed"). A compiled loop does the arithmetic
once per pixel rather than once per array pass, in one call. The hue clustering (histogram,
smoothing, climb to the peaks, merging of arcs) is compiled for the other half of the same
reason: as Python it held the GIL for about 0.15 ms per image, during which the event loop and
the batcher could not run, and two threads extracting at once cost 30% more per image than one.

Why `nogil=False`: with `nogil=True` numba lets go of the GIL on entering a kernel and takes it
back on leaving, which is one hand-off per call, and each call here lasts 10-50 microseconds.
Holding it instead took extraction from about ten hand-offs per image to six, compiling the
pixel unpacking and the Lab conversion (`planar_from_bytes`, `lab_from_linear`) to about two,
and the white balance's estimate and guards (`frame_neutral`, `balance_guards`) and the
backdrop cut out in C order to about one: Pillow's box reduction, and numpy for the few
pictures that are balanced or have a large faint or dark group (docs/colours.md, "Speed").

Each kernel computes what the numpy or Python code it replaced computed, in the same
arithmetic (float32 for pixels, double for the clustering, as Python's floats): palettes stayed
byte-identical on 1,100 thumbnails, and the Lab conversion moved one palette of 3,400 by one
pixel's share (its cube root is correctly rounded; numpy's vectorised one is not always).
`_lit_sums` (each colour as its lit half looks) came later and was written here directly. The
docstrings of `models.colours` explain the rules. `cache=True` keeps the machine code under
`__pycache__`, so only the first process on a machine compiles (about 12 s; `warm_up` does it
in the background at start-up, and an upload that comes first waits for it).
"""

from __future__ import annotations

import functools

import numpy as np
from numba import njit

from util.colour_spec import hue_distance

_F = np.float32

#: Every kernel's options: holding the GIL (see above) and caching the machine code.
_kernel = functools.partial(njit, nogil=False, cache=True)


@_kernel()
def planar_from_bytes(
    rgb: np.ndarray, linear_table: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:  # pragma: no cover - compiled; tested through models.colours
    """8-bit pixels, (n, 3), as planar (3, n) float32 in 0..1 and their sRGB decoding, looked up
    in `linear_table` (the decoding of each byte value): in numpy, three array passes and a
    pow per value, each letting go of the GIL."""
    n = rgb.shape[0]
    px = np.empty((3, n), dtype=np.float32)
    linear = np.empty((3, n), dtype=np.float32)
    scale = _F(1.0 / 255.0)
    for i in range(n):
        for c in range(3):
            v = rgb[i, c]
            px[c, i] = _F(v) * scale
            linear[c, i] = linear_table[v]
    return px, linear


@_kernel(error_model="numpy")
def lab_from_linear(
    linear: np.ndarray, to_xyz: np.ndarray
) -> np.ndarray:  # pragma: no cover - compiled; tested through models.colours
    """CIE Lab, planar float32, of planar linear RGB, with `to_xyz` the D65 matrix scaled so
    that white is (1, 1, 1). The cube root is a first guess from the float's bits refined by
    two Halley steps in double, which is as exact as the float32 result can be, and unlike a
    call to libm's cbrtf it vectorises: `error_model="numpy"` drops numba's check for division
    by zero, which would keep the divisions scalar (the divisor 2y^3 + x is positive here, as
    x >= 0 and the first guess is never 0)."""
    n = linear.shape[1]
    xyz = np.empty(3 * n, dtype=np.float32)
    for i in range(n):
        r, g, b = linear[0, i], linear[1, i], linear[2, i]
        for k in range(3):
            xyz[k * n + i] = to_xyz[k, 0] * r + to_xyz[k, 1] * g + to_xyz[k, 2] * b
    bits = xyz.view(np.int32)
    guess = np.empty(3 * n, dtype=np.int32)
    for i in range(3 * n):
        guess[i] = bits[i] // 3 + 709921077  # about the exponent divided by three
    first = guess.view(np.float32)
    f = np.empty(3 * n, dtype=np.float32)
    for i in range(3 * n):
        t = xyz[i]
        x = np.float64(t)
        y = np.float64(first[i])
        for _ in range(2):
            y3 = y * y * y
            y = y * (y3 + 2.0 * x) / (2.0 * y3 + x)
        f[i] = _F(y) if t > _F(0.008856) else t * _F(7.787) + _F(16.0 / 116.0)
    lab = np.empty((3, n), dtype=np.float32)
    for i in range(n):
        fx, fy, fz = f[i], f[n + i], f[2 * n + i]
        lab[0, i] = _F(116.0) * fy - _F(16.0)
        lab[1, i] = _F(500.0) * (fx - fy)
        lab[2, i] = _F(200.0) * (fy - fz)
    return lab


@_kernel()
def backdrop_core(
    lab: np.ndarray,
    height: int,
    width: int,
    ring: np.ndarray,
    lab_bins: np.ndarray,
    cell_size: float,
    support_share: float,
    max_share: float,
    ring_cover: float,
) -> np.ndarray:  # pragma: no cover - compiled; tested through models.colours
    """`models.colours.backdrop_mask` after the Lab conversion: a flat boolean mask, all False
    when there is no backdrop to remove."""
    n = height * width
    nl, na, nb = lab_bins[0], lab_bins[1], lab_bins[2]
    cells = np.empty(n, dtype=np.int64)
    for i in range(n):
        lab_l, lab_a, lab_b = lab[0, i], lab[1, i], lab[2, i]
        li = min(int(max(lab_l / _F(cell_size), _F(0.0))), nl - 1)
        ai = min(int(max((lab_a + _F(128.0)) / _F(cell_size), _F(0.0))), na - 1)
        bi = min(int(max((lab_b + _F(128.0)) / _F(cell_size), _F(0.0))), nb - 1)
        cells[i] = (li * na + ai) * nb + bi
    counts = np.zeros((nl + 2, na + 2, nb + 2), dtype=np.int64)
    ring_n = 0
    for i in range(n):
        if ring[i]:
            ring_n += 1
            c = cells[i]
            counts[c // (na * nb) + 1, (c // nb) % na + 1, c % nb + 1] += 1
    like = np.zeros(n, dtype=np.bool_)
    any_like = False
    threshold = support_share * ring_n
    support = np.full(nl * na * nb, -1, dtype=np.int64)  # per cell, summed when first met
    for i in range(n):
        c = cells[i]
        if support[c] < 0:
            x, y, z = c // (na * nb) + 1, (c // nb) % na + 1, c % nb + 1
            s = 0
            for dx in range(-1, 2):
                for dy in range(-1, 2):
                    for dz in range(-1, 2):
                        s += counts[x + dx, y + dy, z + dz]
            support[c] = s
        if support[c] >= threshold:
            like[i] = True
            any_like = True
    back = np.zeros(n, dtype=np.bool_)
    if not any_like:
        return back
    stack = np.empty(n, dtype=np.int64)
    top = 0
    for i in range(n):
        if ring[i] and like[i]:
            back[i] = True
            stack[top] = i
            top += 1
    while top > 0:
        top -= 1
        i = stack[top]
        row, col = i // width, i % width
        for j in (
            i - width if row > 0 else -1,
            i + width if row < height - 1 else -1,
            i - 1 if col > 0 else -1,
            i + 1 if col < width - 1 else -1,
        ):
            if j >= 0 and like[j] and not back[j]:
                back[j] = True
                stack[top] = j
                top += 1
    found = 0
    on_ring = 0
    for i in range(n):
        if back[i]:
            found += 1
            if ring[i]:
                on_ring += 1
    if found > max_share * n or on_ring < ring_cover * ring_n:
        back[:] = False
    return back


@_kernel(inline="always")
def _hi_lo(
    r: np.float32, g: np.float32, b: np.float32
) -> tuple[np.float32, np.float32]:  # pragma: no cover - compiled
    return max(max(r, g), b), min(min(r, g), b)


@_kernel(inline="always")
def _hue(
    r: np.float32, g: np.float32, b: np.float32, hi: np.float32, c: np.float32
) -> np.float32:  # pragma: no cover - compiled
    """HLS hue in degrees, [0, 360], of one pixel with its max and chroma (c > 0), in float32
    as `models.colours._hues` computes it."""
    if hi == r:
        h = (g - b) / c
    elif hi == g:
        h = (b - r) / c + np.float32(2.0)
    else:
        h = (r - g) / c + np.float32(4.0)
    h = h * np.float32(60.0)
    if h < np.float32(0.0):
        h = h + np.float32(360.0)
    return h


@_kernel()
def classify_pixels(
    px: np.ndarray,
    chroma_min: np.float32,
    faint_min: np.float32,
    light2_min: np.float32,
    light2_max: np.float32,
    dark_min: np.float32,
    dark_ratio: np.float32,
    dark_hue_lo: np.float32,
    dark_hue_hi: np.float32,
    dark_group_max: np.float32,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, int, int]:  # pragma: no cover - compiled
    """Per pixel: max(r, g, b), chroma, and its kind under the achromatic rule of
    `models.colours` (0 grey, white or black; 1 a colour; 2 a faint tint, chroma between
    `faint_min` and `chroma_min`). A dark pixel below `chroma_min` is a colour when its chroma
    is at least `dark_min` and `dark_ratio` of its max and its hue is in
    [`dark_hue_lo`, `dark_hue_hi`] (the DARK_* rule). Thresholds come as float32, compared in
    float32 as numpy compares a float32 array with a Python float.

    Also how many faint pixels there are, and how many of them have a max of at most
    `dark_group_max`: the faint and dark-group rules need a group of a size, and counting here
    spares most pictures the array passes (each a GIL hand-off) that would find none."""
    n = px.shape[1]
    mx = np.empty(n, dtype=np.float32)
    chroma = np.empty(n, dtype=np.float32)
    kind = np.zeros(n, dtype=np.int8)
    faint = 0
    dark = 0
    for i in range(n):
        r, g, b = px[0, i], px[1, i], px[2, i]
        hi, lo = _hi_lo(r, g, b)
        c = hi - lo
        light2 = hi + lo
        mx[i] = hi
        chroma[i] = c
        if light2 >= light2_min and light2 <= light2_max:
            if c >= chroma_min or (
                c >= dark_min
                and c >= dark_ratio * hi
                and dark_hue_lo <= _hue(r, g, b, hi, c) <= dark_hue_hi
            ):
                kind[i] = 1
            elif c >= faint_min:
                kind[i] = 2
                faint += 1
                if hi <= dark_group_max:
                    dark += 1
    return mx, chroma, kind, faint, dark


@_kernel(inline="always")
def _farthest(
    r: np.float32, g: np.float32, b: np.float32, to: np.ndarray
) -> np.float32:  # pragma: no cover - compiled
    """The largest per-channel distance from the colour `to`."""
    return max(max(abs(r - to[0]), abs(g - to[1])), abs(b - to[2]))


@_kernel()
def frame_neutral(
    px: np.ndarray,
    frame: np.ndarray,
    light2_min: np.float32,
    sat_max: np.float32,
    radius: np.float32,
) -> tuple[int, np.ndarray, int]:  # pragma: no cover - compiled
    """The white balance's estimate (`models.colours.white_balance_gains`) from the pixels at
    the flat indices `frame`: how many are pale and near-neutral (max + min at least
    `light2_min`, chroma at most `sat_max` of the max), their per-channel median in float32 as
    numpy's (the mean of the middle two when their number is even), and how many of them lie
    within `radius` of it in every channel. In numpy the median alone was a sort per channel
    that let go of the GIL."""
    pale = np.empty((3, frame.shape[0]), dtype=np.float32)
    n = 0
    for i in frame:
        r, g, b = px[0, i], px[1, i], px[2, i]
        hi, lo = _hi_lo(r, g, b)
        if hi + lo >= light2_min and hi - lo <= sat_max * hi:
            pale[0, n], pale[1, n], pale[2, n] = r, g, b
            n += 1
    neutral = np.zeros(3, dtype=np.float32)
    if n == 0:
        return 0, neutral, 0
    k = n // 2
    for c in range(3):
        part = np.partition(pale[c, :n], k)
        neutral[c] = part[k] if n % 2 else (part[:k].max() + part[k]) / np.float32(2.0)
    close = 0
    for j in range(n):
        if _farthest(pale[0, j], pale[1, j], pale[2, j], neutral) <= radius:
            close += 1
    return n, neutral, close


@_kernel(inline="always")
def _is_colour(
    hi: np.float32,
    lo: np.float32,
    chroma_min: np.float32,
    light2_min: np.float32,
    light2_max: np.float32,
) -> bool:  # pragma: no cover - compiled
    """`models.colours._chromatic_mask` for one pixel."""
    light2 = hi + lo
    return hi - lo >= chroma_min and light2 >= light2_min and light2 <= light2_max


@_kernel()
def balance_guards(
    px: np.ndarray,
    neutral: np.ndarray,
    gains: np.ndarray,
    radius: np.float32,
    whiter_light2: np.float32,
    chroma_min: np.float32,
    light2_min: np.float32,
    light2_max: np.float32,
) -> tuple[int, int]:  # pragma: no cover - compiled
    """What the white balance's last two guards count, in one pass: the pixels within `radius`
    of the backdrop colour `neutral` in every channel, and those brighter than it (max + min
    above `whiter_light2`) that are not a colour now but would be one after multiplying by
    `gains` (clipped at 1)."""
    near = 0
    made = 0
    one = np.float32(1.0)
    for i in range(px.shape[1]):
        r, g, b = px[0, i], px[1, i], px[2, i]
        if _farthest(r, g, b, neutral) <= radius:
            near += 1
        hi, lo = _hi_lo(r, g, b)
        if hi + lo > whiter_light2 and not _is_colour(hi, lo, chroma_min, light2_min, light2_max):
            r2, g2, b2 = min(r * gains[0], one), min(g * gains[1], one), min(b * gains[2], one)
            hi2, lo2 = _hi_lo(r2, g2, b2)
            if _is_colour(hi2, lo2, chroma_min, light2_min, light2_max):
                made += 1
    return near, made


@_kernel()
def colour_pixels(
    px: np.ndarray, mx: np.ndarray, chroma: np.ndarray, kind: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:  # pragma: no cover - compiled
    """The pixels of kind 1 (planar) and their 1-degree hue bins: HLS hue, float32 as in
    `models.colours._hues`, truncated to a bin."""
    n = 0
    for i in range(kind.size):
        if kind[i] == 1:
            n += 1
    out = np.empty((3, n), dtype=np.float32)
    bins = np.empty(n, dtype=np.int64)
    k = 0
    for i in range(kind.size):
        if kind[i] != 1:
            continue
        r, g, b = px[0, i], px[1, i], px[2, i]
        out[0, k], out[1, k], out[2, k] = r, g, b
        bins[k] = int(_hue(r, g, b, mx[i], chroma[i])) % 360
        k += 1
    return out, bins


@_kernel()
def _hls_hue(r: float, g: float, b: float) -> float:  # pragma: no cover - compiled
    """`colorsys.rgb_to_hls(r, g, b)[0] * 360`, step for step in double precision, so the
    compiled merge sees the very hues the Python one did."""
    maxc = max(r, g, b)
    minc = min(r, g, b)
    if minc == maxc:
        return 0.0
    rangec = maxc - minc
    rc = (maxc - r) / rangec
    gc = (maxc - g) / rangec
    bc = (maxc - b) / rangec
    if r == maxc:
        h = bc - gc
    elif g == maxc:
        h = 2.0 + rc - bc
    else:
        h = 4.0 + gc - rc
    return ((h / 6.0) % 1.0) * 360.0


@_kernel()
def _arc_hue(arc: np.ndarray) -> float:  # pragma: no cover - compiled
    return _hls_hue(arc[1] / arc[0], arc[2] / arc[0], arc[3] / arc[0])


@_kernel()
def _keeps_chroma(arc: np.ndarray, keep: float) -> bool:  # pragma: no cover - compiled
    """Whether the mean colour of an arc (count, sums of r, g, b and of chroma) keeps at least
    `keep` of its pixels' mean chroma: hues averaged from round the circle cancel to grey."""
    r, g, b = arc[1] / arc[0], arc[2] / arc[0], arc[3] / arc[0]
    return max(r, g, b) - min(r, g, b) >= keep * (arc[4] / arc[0])


#: The query side's hue distance (355 and 5 are 10 apart), compiled for the merge.
_hue_distance = _kernel()(hue_distance)


@_kernel()
def _valley(smooth: np.ndarray, lo: int, hi: int) -> float:  # pragma: no cover - compiled
    """Lowest smoothed value on the way from hue bin `lo` up to `hi` (wrapping past 359)."""
    if hi >= lo:
        return smooth[lo : hi + 1].min()
    return min(smooth[lo:].min(), smooth[: hi + 1].min())


@_kernel()
def _segment(
    hbin: np.ndarray, kernel: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:  # pragma: no cover - compiled
    """The 1-degree hue histogram of the bins, smoothed circularly by `kernel` (odd length),
    and for every bin the peak it climbs to: each bin points at its highest neighbour (itself
    on a peak, and on ties, so flat stretches stay put), then pointer jumping follows the
    pointers to their peaks in log2(360) rounds."""
    hist = np.zeros(360)
    for i in range(hbin.size):
        hist[hbin[i]] += 1.0
    half = kernel.size // 2
    smooth = np.zeros(360)
    for b in range(360):
        total = 0.0
        for k in range(kernel.size):
            total += hist[(b + k - half) % 360] * kernel[k]
        smooth[b] = total
    label = np.empty(360, dtype=np.int64)
    for b in range(360):
        left, right = (b - 1) % 360, (b + 1) % 360
        best, value = left, smooth[left]
        if smooth[b] + 1e-12 > value:
            best, value = b, smooth[b] + 1e-12
        if smooth[right] > value:
            best = right
        label[b] = best
    jumped = np.empty(360, dtype=np.int64)
    for _ in range(9):
        for b in range(360):
            jumped[b] = label[label[b]]
        label, jumped = jumped, label
    return label, smooth


@_kernel()
def cluster_arcs(
    cpx: np.ndarray,
    hbin: np.ndarray,
    kernel: np.ndarray,
    merge_degrees: float,
    valley_ratio: float,
    lit_fraction: float,
    chroma_keep: float = 0.0,
) -> np.ndarray:  # pragma: no cover - compiled
    """`models.colours` steps 4-5: the chromatic pixels (`cpx`, planar) vote with their hue
    bins in a circularly smoothed histogram, each joins the arc of the peak its bin climbs to,
    and neighbouring arcs merge while their mean hues are closer than `merge_degrees` or the
    valley between them is above `valley_ratio` of the smaller peak, closest pair first, and
    only if the merged arc's mean colour keeps at least `chroma_keep` of its pixels' mean
    chroma (0: no limit). Without that limit a smooth gradient round the whole circle (a
    rainbow, a hue wheel, colour noise) merged into one arc whose mean was grey.
    Returns the arcs in hue order as rows of (pixel count, sum of r, sum of g, sum of b), then
    the same four sums over the arc's brightest pixels only (`_lit_sums`), in double precision.

    Mean hues and the valleys between neighbours are kept up to date as arcs merge (a valley
    to a merged arc is the lower of the two it now spans), so one round is a pass over the
    neighbours, not a scan of the histogram per pair."""
    label, smooth = _segment(hbin, kernel)
    # columns: pixel count, sums of r, g and b, sum of chroma (for `chroma_keep`)
    arcs_by_bin = np.zeros((360, 5))
    for i in range(hbin.size):
        p = label[hbin[i]]
        r, g, b = np.float64(cpx[0, i]), np.float64(cpx[1, i]), np.float64(cpx[2, i])
        arcs_by_bin[p, 0] += 1.0
        arcs_by_bin[p, 1] += r
        arcs_by_bin[p, 2] += g
        arcs_by_bin[p, 3] += b
        arcs_by_bin[p, 4] += max(r, g, b) - min(r, g, b)
    n = 0
    for p in range(360):
        if arcs_by_bin[p, 0] > 0:
            n += 1
    arcs = np.empty((n, 5))
    peaks = np.empty(n, dtype=np.int64)
    k = 0
    for p in range(360):
        if arcs_by_bin[p, 0] > 0:
            arcs[k] = arcs_by_bin[p]
            peaks[k] = p
            k += 1
    first_peaks = peaks.copy()
    # each arc's first arc (before merging); `merged_into` links every first arc to the one
    # whose arc took it in, so that each peak's pixels can be followed to their final arc
    ident = np.arange(n)
    merged_into = np.arange(n)
    hues = np.empty(n)
    heights = np.empty(n)
    gaps = np.empty(n)  # gaps[k]: the valley between arc k and arc k + 1 (circularly)
    for k in range(n):
        hues[k] = _arc_hue(arcs[k])
        heights[k] = smooth[peaks[k]]
        gaps[k] = _valley(smooth, peaks[k], peaks[(k + 1) % n])
    while n > 1:
        best, best_k = -1.0, -1
        for k in range(n):
            j = (k + 1) % n
            d = _hue_distance(hues[k], hues[j])
            if (
                (best_k < 0 or d < best)
                and (d < merge_degrees or gaps[k] > valley_ratio * min(heights[k], heights[j]))
                and _keeps_chroma(arcs[k] + arcs[j], chroma_keep)
            ):
                best, best_k = d, k
        if best_k < 0:
            break
        i, j, left = best_k, (best_k + 1) % n, (best_k - 1) % n
        keep_i = heights[i] >= heights[j]  # the higher peak stays the cluster's peak
        # the merged arc spans both: its valleys reach from its kept peak across the other
        left_gap = gaps[left] if keep_i else min(gaps[left], gaps[i])
        right_gap = min(gaps[i], gaps[j]) if keep_i else gaps[j]
        arcs[i] = arcs[i] + arcs[j]
        merged_into[ident[j]] = ident[i]
        hues[i] = _arc_hue(arcs[i])
        if not keep_i:
            peaks[i], heights[i] = peaks[j], heights[j]
        gaps[left], gaps[i] = left_gap, right_gap
        for m in range(j, n - 1):  # remove arc j
            arcs[m] = arcs[m + 1]
            hues[m], peaks[m], heights[m], gaps[m], ident[m] = (
                hues[m + 1],
                peaks[m + 1],
                heights[m + 1],
                gaps[m + 1],
                ident[m + 1],
            )
        n -= 1
    # which final arc every peak's pixels ended in, through the chain of merges
    position = np.empty(first_peaks.size, dtype=np.int64)
    for k in range(n):
        position[ident[k]] = k
    arc_of_peak = np.full(360, -1, dtype=np.int64)
    for first in range(first_peaks.size):
        root = first
        while merged_into[root] != root:
            root = merged_into[root]
        arc_of_peak[first_peaks[first]] = position[root]
    out = np.empty((n, 8))
    out[:, :4] = arcs[:n, :4]
    out[:, 4:] = _lit_sums(cpx, hbin, label, arc_of_peak, n, lit_fraction)
    return out


@_kernel()
def _lit_sums(
    cpx: np.ndarray,
    hbin: np.ndarray,
    label: np.ndarray,
    arc_of_peak: np.ndarray,
    n: int,
    lit_fraction: float,
) -> np.ndarray:  # pragma: no cover - compiled
    """Per arc, (count, sum of r, g, b) of its brightest `lit_fraction` of pixels by value
    (max of r, g, b, in 1/255 steps; ties at the cut all count, so at least that fraction)."""
    levels = np.zeros((n, 256), dtype=np.int64)
    value = np.empty(hbin.size, dtype=np.int64)
    arc = np.empty(hbin.size, dtype=np.int64)
    for i in range(hbin.size):
        v = max(cpx[0, i], cpx[1, i], cpx[2, i])
        value[i] = min(255, max(0, int(v * 255.0 + 0.5)))
        arc[i] = arc_of_peak[label[hbin[i]]]
        levels[arc[i], value[i]] += 1
    cut = np.zeros(n, dtype=np.int64)
    for k in range(n):
        need = np.ceil(lit_fraction * levels[k].sum())
        seen = 0
        for q in range(255, -1, -1):
            seen += levels[k, q]
            if seen >= need:
                cut[k] = q
                break
    lit = np.zeros((n, 4))
    for i in range(hbin.size):
        k = arc[i]
        if value[i] >= cut[k]:
            lit[k, 0] += 1.0
            lit[k, 1] += np.float64(cpx[0, i])
            lit[k, 2] += np.float64(cpx[1, i])
            lit[k, 3] += np.float64(cpx[2, i])
    return lit


@_kernel()
def shade_counts(
    arcs: np.ndarray,
    px: np.ndarray,
    mx: np.ndarray,
    chroma: np.ndarray,
    kind: np.ndarray,
    min_count: float,
    hue_lo: float,
    hue_hi: float,
    chroma_min: float,
    darker: float,
    hue_tolerance: float,
    ratio_tolerance: float,
) -> np.ndarray:  # pragma: no cover - compiled
    """`models.colours`' shade: per arc (a row of `cluster_arcs`), how many of the pixels not
    yet a colour (`kind` != 1) with chroma at least `chroma_min` are that colour in less light.
    Only arcs of at least `min_count` pixels whose lit half's hue is in [`hue_lo`, `hue_hi`]
    take any. A pixel is an arc's shade when it is below `darker` of the lit half's max, within
    `hue_tolerance` degrees of its hue and within `ratio_tolerance` (relative) of its C/max; it
    counts for the arc nearest in hue (the first of equals)."""
    n = arcs.shape[0]
    lit_hue = np.empty(n)
    lit_ratio = np.empty(n)
    below = np.zeros(n)  # a pixel must be darker than this; 0 for arcs that take nothing
    for k in range(n):
        r, g, b = arcs[k, 5] / arcs[k, 4], arcs[k, 6] / arcs[k, 4], arcs[k, 7] / arcs[k, 4]
        hi = max(r, g, b)
        lit_hue[k] = _hls_hue(r, g, b)
        lit_ratio[k] = (hi - min(r, g, b)) / hi if hi > 0.0 else 0.0
        if arcs[k, 0] >= min_count and hue_lo <= lit_hue[k] <= hue_hi:
            below[k] = darker * hi
    counts = np.zeros(n)
    for i in range(kind.size):
        c = chroma[i]
        if kind[i] == 1 or c < chroma_min:
            continue
        hi = mx[i]
        hue = _hue(px[0, i], px[1, i], px[2, i], hi, c)
        ratio = c / hi
        best, best_apart = -1, 361.0
        for k in range(n):
            if hi >= below[k] or abs(ratio - lit_ratio[k]) > ratio_tolerance * lit_ratio[k]:
                continue
            apart = _hue_distance(hue, lit_hue[k])
            if apart <= hue_tolerance and apart < best_apart:
                best, best_apart = k, apart
        if best >= 0:
            counts[best] += 1.0
    return counts
