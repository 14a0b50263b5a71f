"""Seeded synthetic cities: POIs with a city-specific layout and users moving by the EPR model.

Mobility model: exploration and preferential return (EPR; Song, Koren, Wang & Barabasi, "Modelling
the scaling properties of human mobility", Nature Physics 6, 2010), with home/work anchors and a
daily/weekly rhythm, simulated for all users at once (numpy, one iteration per record):

* **Anchors.** Every user has a home (a Residential POI); a fraction ``p_worker`` also has a
  workplace: its class is drawn (Commercial 0.6, Education 0.15, Public Service 0.25), then the
  nearest POI of that class to a point at a log-normal commute distance (median ``commute_km``).  Users get their own wake-up (~7 h), bedtime (~22.5 h) and work hours (~9-17.5 h).
* **Rhythm.** At night a user goes home (or, already home, sleeps until wake-up without a record).
  On weekdays workers go to work once a day and stay until their work end.  Other time is free time.
* **Free time = EPR.** With probability ``P_new = rho * S ** -gamma`` (``S`` = distinct places
  visited so far; rho = 0.6, gamma = 0.21 from Song et al.) the user explores: a jump of length
  ``dr`` drawn from the truncated power law ``P(dr) ~ (dr + dr0) ** -(1 + beta_r)`` (beta_r = 0.55,
  dr0 = 0.2 km, at most the city extent) in a uniform direction, landing on one of the
  ``explore_k`` POIs nearest to that point, chosen by a time-of-day/weekday class preference
  (e.g. Entertainment in the evening and at weekends).  Otherwise the user returns to a place with
  probability proportional to its past visits (= a uniformly drawn earlier visit).  The stay lasts
  ``dt ~ dt ** -(1 + beta_t)`` truncated to [``wait_min_h``, ``wait_max_h``] (beta_t = 0.8), cut at
  bedtime.  Travel takes distance / ``speed_kmh`` + 5 minutes.
* **City.** Seeded by ``(seed, city name)``: centre (lat/lon), extent (``extent_km`` square),
  number of POIs, class mix (a Dirichlet draw around a base mix) and 1-4 sub-centres.  Commercial
  POIs cluster around the centres, Education around a few campuses, Residential spreads widely,
  Entertainment and Public Service mix both.  So two cities differ in extent, density and mix,
  while the behaviour rules are shared (learnable, transferable).

Every stay is one check-in record at its arrival time, at the POI's coordinate; its category is the
POI's class name.  Times are local (UTC offset = round(lon / 15) hours), starting on Monday
2024-01-01.
"""

from __future__ import annotations

import zlib
from dataclasses import asdict, dataclass, field

import numpy as np
import pandas as pd
from scipy.spatial import cKDTree
from tqdm.auto import tqdm

from .taxonomy import DEFAULT_POI_CLASSES

KM_PER_DEG = 111.32
START = pd.Timestamp("2024-01-01").value // 10**9  # a Monday, seconds since epoch

# class preference weights for exploration: rows = weekday day, weekday evening, weekend day, weekend evening
PREFERENCE = np.array([
    [0.6, 2.0, 1.0, 1.5, 0.3],
    [2.0, 1.5, 0.3, 0.5, 0.5],
    [2.0, 1.5, 0.3, 0.7, 0.7],
    [2.5, 1.0, 0.1, 0.3, 0.5],
])
BASE_MIX = np.array([0.15, 0.35, 0.08, 0.17, 0.25])
WORK_CLASSES = (1, 2, 3)  # Commercial, Education, Public Service
WORK_CLASS_P = np.array([0.6, 0.15, 0.25])


@dataclass
class SyntheticCityParams:
    city: str = "synthetic"
    seed: int = 0
    n_users: int = 100
    records_per_user: int = 150
    n_pois: int | None = None  # default: drawn in [400, 1500]
    extent_km: float | None = None  # default: drawn in [5, 15]
    center_lat: float | None = None  # default: drawn in [-40, 60]
    center_lon: float | None = None  # default: drawn in [-180, 180]
    class_mix: list | None = None  # default: Dirichlet(40 * BASE_MIX)
    p_worker: float = 0.8
    commute_km: float = 3.0
    rho: float = 0.6
    gamma: float = 0.21
    beta_r: float = 0.55
    dr0_km: float = 0.2
    beta_t: float = 0.8
    wait_min_h: float = 0.25
    wait_max_h: float = 8.0
    explore_k: int = 12
    speed_kmh: float = 20.0
    extra: dict = field(default_factory=dict)


def _resolve(p: SyntheticCityParams) -> tuple[SyntheticCityParams, np.random.Generator]:
    rng = np.random.default_rng([int(p.seed), zlib.crc32(p.city.encode("utf-8"))])
    q = SyntheticCityParams(**asdict(p))
    q.n_pois = int(q.n_pois if q.n_pois is not None else rng.integers(400, 1501))
    q.extent_km = float(q.extent_km if q.extent_km is not None else rng.uniform(5.0, 15.0))
    q.center_lat = float(q.center_lat if q.center_lat is not None else rng.uniform(-40.0, 60.0))
    q.center_lon = float(q.center_lon if q.center_lon is not None else rng.uniform(-180.0, 180.0))
    mix = np.asarray(q.class_mix if q.class_mix is not None else rng.dirichlet(40.0 * BASE_MIX), dtype=np.float64)
    if mix.shape != (len(DEFAULT_POI_CLASSES),) or (mix < 0).any() or mix.sum() <= 0:
        raise ValueError(f"class_mix must be {len(DEFAULT_POI_CLASSES)} non-negative weights, got {q.class_mix!r}")
    q.class_mix = (mix / mix.sum()).round(6).tolist()
    if q.n_users < 1 or q.records_per_user < 2 or q.n_pois < 5:
        raise ValueError("synthetic city needs n_users >= 1, records_per_user >= 2 and n_pois >= 5")
    return q, rng


def _layout_pois(q: SyntheticCityParams, rng: np.random.Generator):
    E = q.extent_km
    n_sub = int(rng.integers(1, 5))
    centres = np.vstack([[0.0, 0.0], rng.uniform(-0.35 * E, 0.35 * E, size=(n_sub, 2))])
    cw = np.append(3.0, rng.uniform(0.5, 1.5, n_sub))
    cw /= cw.sum()
    campuses = rng.uniform(-0.4 * E, 0.4 * E, size=(int(rng.integers(2, 5)), 2))
    mix = np.asarray(q.class_mix, dtype=np.float64)
    cls = rng.choice(len(DEFAULT_POI_CLASSES), size=q.n_pois, p=mix / mix.sum())
    xy = np.empty((q.n_pois, 2))
    near_c = centres[rng.choice(len(centres), size=q.n_pois, p=cw)]
    near_campus = campuses[rng.integers(0, len(campuses), size=q.n_pois)]
    spread = rng.normal(0.0, E / 4.0, size=(q.n_pois, 2))
    uni = rng.uniform(-E / 2, E / 2, size=(q.n_pois, 2))
    for c, (base, sigma_frac) in {0: ("mix", 0.10), 1: ("centre", 0.06), 2: ("campus", 0.02), 3: ("mix", 0.12),
                                  4: ("spread", 0.0)}.items():
        m = cls == c
        k = int(m.sum())
        if base == "centre":
            xy[m] = near_c[m] + rng.normal(0.0, sigma_frac * E, size=(k, 2))
        elif base == "campus":
            xy[m] = near_campus[m] + rng.normal(0.0, sigma_frac * E, size=(k, 2))
        elif base == "spread":
            xy[m] = spread[m]
        else:
            half = rng.random(k) < 0.5
            xy[m] = np.where(half[:, None], near_c[m] + rng.normal(0.0, sigma_frac * E, size=(k, 2)), uni[m])
    xy = np.clip(xy, -E / 2, E / 2)
    return xy, cls


def _power_law(rng, n, lo, hi, beta, shift=0.0):
    """Inverse-CDF draw from p(v) ~ (v + shift) ** -(1 + beta) on [lo, hi]."""
    a, b = (lo + shift) ** -beta, (hi + shift) ** -beta
    u = rng.random(n)
    return (a - u * (a - b)) ** (-1.0 / beta) - shift


def generate_synthetic_city(params: SyntheticCityParams, show_progress: bool = False):
    """Return ``(records, pois, resolved_params)``; records in the canonical reader format."""
    q, rng = _resolve(params)
    xy, pcls = _layout_pois(q, rng)
    tree = cKDTree(xy)
    U = q.n_users
    n_target = np.maximum(2, np.round(q.records_per_user * rng.lognormal(0.0, 0.25, U))).astype(np.int64)
    # anchors
    res = np.flatnonzero(pcls == 4)
    if res.size == 0:
        res = np.arange(len(pcls))
    home = res[rng.integers(0, res.size, U)]
    worker = rng.random(U) < q.p_worker
    ang = rng.uniform(0, 2 * np.pi, U)
    dist = rng.lognormal(np.log(q.commute_km), 0.6, U)
    target = xy[home] + dist[:, None] * np.c_[np.cos(ang), np.sin(ang)]
    work = np.full(U, -1)
    work_class = np.asarray(WORK_CLASSES)[rng.choice(len(WORK_CLASSES), size=U, p=WORK_CLASS_P)]
    for c in WORK_CLASSES:  # nearest workplace of the drawn class to the commute target
        places = np.flatnonzero(pcls == c)
        m = worker & (work_class == c)
        if places.size and m.any():
            _, wi = cKDTree(xy[places]).query(target[m], k=1)
            work[m] = places[np.atleast_1d(wi)]
    worker = work >= 0
    wake = rng.normal(7.0, 0.7, U).clip(5.0, 9.5)
    bed = rng.normal(22.5, 0.8, U).clip(20.5, 23.9)
    wstart = rng.normal(9.0, 0.6, U).clip(7.5, 10.5)
    wend = (wstart + rng.normal(8.5, 0.7, U)).clip(wstart + 6, 19.5)
    # state
    maxn = int(n_target.max())
    visits = np.full((U, maxn + 2), -1, dtype=np.int64)
    visits[:, 0] = home
    nvis = np.ones(U, dtype=np.int64)
    has_w = work >= 0
    visits[has_w, 1] = work[has_w]
    nvis[has_w] = 2
    distinct = nvis.copy()
    loc = home.copy()
    T = rng.integers(0, 7, U) * 24.0 + wake  # hours since Monday 00:00 (local)
    worked_day = np.full(U, -1, dtype=np.int64)
    out_t = np.full((U, maxn), np.nan)
    out_loc = np.full((U, maxn), -1, dtype=np.int64)
    ar = np.arange(U)
    for step in tqdm(range(maxn), desc="simulating EPR", disable=not show_progress, leave=False):
        active = n_target > step
        h = T % 24.0
        day = np.floor(T / 24.0)
        # sleeping at home: skip to wake-up without a record
        sleep = active & (loc == home) & ((h >= bed) | (h < wake))
        T = np.where(sleep, np.where(h >= bed, (day + 1) * 24.0 + wake, day * 24.0 + wake), T)
        h = T % 24.0
        day = np.floor(T / 24.0)
        wd = (day.astype(np.int64) % 7) < 5
        night = (h >= bed) | (h < wake)
        go_home = active & night
        go_work = active & ~night & worker & wd & (worked_day != day) & (h < wend - 2.0)
        free = active & ~go_home & ~go_work
        dest = loc.copy()
        dest[go_home] = home[go_home]
        dest[go_work] = work[go_work]
        # EPR for free time
        fi = np.flatnonzero(free)
        if fi.size:
            p_new = q.rho * distinct[fi].astype(np.float64) ** (-q.gamma)
            explore = rng.random(fi.size) < p_new
            ei, ri = fi[explore], fi[~explore]
            if ei.size:
                dr = _power_law(rng, ei.size, 0.0, q.extent_km, q.beta_r, q.dr0_km)
                th = rng.uniform(0, 2 * np.pi, ei.size)
                pt = xy[loc[ei]] + dr[:, None] * np.c_[np.cos(th), np.sin(th)]
                k = min(q.explore_k, len(xy))
                _, nb = tree.query(pt, k=k)
                nb = nb.reshape(ei.size, k)
                period = (~wd[ei]).astype(np.int64) * 2 + (h[ei] >= 17.0).astype(np.int64)
                w = PREFERENCE[period[:, None], pcls[nb]]
                c = np.cumsum(w, axis=1)
                pick = (rng.random(ei.size)[:, None] * c[:, -1:] > c).sum(axis=1)
                dest[ei] = nb[np.arange(ei.size), np.minimum(pick, k - 1)]
            if ri.size:
                j = np.floor(rng.random(ri.size) * nvis[ri]).astype(np.int64)
                dest[ri] = visits[ri, j]
        travel = np.linalg.norm(xy[dest] - xy[loc], axis=1) / q.speed_kmh + 5.0 / 60.0
        start = T + travel
        start = np.where(go_work, np.maximum(start, day * 24.0 + wstart), start)
        sday = np.floor(start / 24.0)
        sh = start % 24.0
        next_wake = np.where(sh >= wake, (sday + 1) * 24.0 + wake, sday * 24.0 + wake)
        end = np.where(go_home, next_wake, start)
        end = np.where(go_work, sday * 24.0 + wend + rng.normal(0, 0.3, U), end)
        dt = _power_law(rng, U, q.wait_min_h, q.wait_max_h, q.beta_t)
        bedtime = sday * 24.0 + bed
        free_end = np.where(start < bedtime, np.minimum(start + dt, bedtime), start + dt)
        end = np.where(free, free_end, end)
        end = np.maximum(end, start + 1.0 / 60.0)
        # new places / visit history
        new = active & ~(visits == dest[:, None]).any(axis=1)
        distinct += new
        visits[ar[active], nvis[active]] = dest[active]
        nvis += active
        worked_day = np.where(go_work, day.astype(np.int64), worked_day)
        out_t[active, step] = start[active]
        out_loc[active, step] = dest[active]
        loc = np.where(active, dest, loc)
        T = np.where(active, end, T)
    # assemble
    uu, ss = np.nonzero(out_loc >= 0)
    t_local = START + np.round(out_t[uu, ss] * 3600.0).astype(np.int64)
    offset_h = int(np.round(q.center_lon / 15.0))
    lat0, lon0 = q.center_lat, q.center_lon
    kx = KM_PER_DEG * np.cos(np.radians(lat0))
    plat = lat0 + xy[:, 1] / KM_PER_DEG
    plon = lon0 + xy[:, 0] / kx
    names = np.asarray(DEFAULT_POI_CLASSES, dtype=object)
    L = out_loc[uu, ss]
    width = len(str(U))
    records = pd.DataFrame({
        "user_id": pd.array([f"u{u:0{width}d}" for u in range(U)], dtype="string")[uu],
        "ts": t_local - offset_h * 3600,
        "local_ts": t_local,
        "lat": plat[L],
        "lon": plon[L],
        "venue_id": pd.array(L.astype(str), dtype="string"),
        "category": pd.array(names[pcls[L]], dtype="string"),
    })
    pois = pd.DataFrame({"venue_id": np.arange(len(xy)).astype(str), "lat": plat, "lon": plon,
                         "poi_class": names[pcls]})
    info = asdict(q)
    info.update({"utc_offset_hours": offset_h, "workers": int(worker.sum()), "poi_class_counts":
                 {c: int((pcls == i).sum()) for i, c in enumerate(DEFAULT_POI_CLASSES)}})
    return records, pois, info
