"""Seeded synthetic cities: POIs with a city-specific layout and users moving by EPR plus daily routines.

Mobility model: exploration and preferential return (EPR; Song, Koren, Wang & Barabasi, "Modelling
the scaling properties of human mobility", Nature Physics 6, 2010) for free time, on top of
personal anchors visited by hour of day and day type (home at night, work or a daytime place on
weekdays, evening leisure, a weekend outing), simulated for all users at once (numpy, one
iteration per record).  The field names of :class:`SyntheticCityParams` are given in backticks.
One file (~630 lines, much of it this model description and the parameters' documentation) on purpose: the
mobility model, its parameters and the simulation are one concept and are checked against each other.

* **Anchors.** Every user has a home (a Residential POI); a fraction ``p_worker`` also has a
  workplace: its class is drawn (Commercial 0.6, Education 0.15, Public Service 0.25), then the
  nearest POI of that class to a point at a log-normal commute distance (median ``commute_km``).
  Routine anchors are placed the same way, at a log-normal distance (median ``routine_km``):
  one or, with probability ``p_second_leisure``, two **evening leisure** places (class drawn from
  ``leisure_classes``: a bar, gym or cinema, or a restaurant) near home or, for a fraction
  ``leisure_near_work`` of workers, near work; a **weekend daytime** place near home
  (``weekend_classes``: a park or a mall); and, used by non-workers only, a **weekday daytime**
  place near home (``day_anchor_classes``: school or library, community service, shops).  An
  anchor is never the user's home, workplace or an earlier anchor when another POI is available.
* **Rhythm.** Users get their own wake-up (~7 h; ``weekend_wake_delay_h`` later on Saturdays and
  Sundays), bedtime (~22.5 h) and work hours (~9-17.5 h).  At night a user goes home (or, already
  home, sleeps until wake-up without a record).  On weekdays workers go to work once a day and
  stay until their work end.
* **Routines.** Each user has a personal hour for each routine (normal around ``day_anchor_hour``,
  ``leisure_hour`` and ``weekend_hour``, sd ``routine_hour_sd``; leisure starts at least 0.5 h
  after the user's work end) and a personal probability for it, drawn from a Beta distribution
  with mean ``p_day_anchor``, ``p_leisure`` or ``p_weekend_anchor`` and concentration
  ``routine_concentration``.  Every morning each user decides, with these probabilities, which of
  today's routines happen: on weekdays the weekday daytime place (non-workers) and the evening
  leisure, on weekend days the weekend place.  A planned visit starts at the user's hour plus a
  day-to-day jitter (sd ``routine_jitter_h``): free-time stays are cut there, the user travels to
  the anchor (the second leisure place with probability ``second_leisure_share``) and stays
  ``*_stay_h`` (median; log-normal, sigma 0.3), cut at bedtime and at the next planned visit.  A
  visit the user is too busy for (more than ``routine_window_h`` late) is dropped.  After an
  evening leisure visit the user goes home for the night with probability
  ``p_home_after_leisure``.
* **Free time = EPR.** All other waking time.  With probability ``P_new = rho * S ** -gamma``
  (``S`` = distinct places visited so far; rho = 0.6, gamma = 0.21 from Song et al.) the user
  explores: a jump of length ``dr`` drawn from the truncated power law
  ``P(dr) ~ (dr + dr0) ** -(1 + beta_r)`` (beta_r = 0.55, dr0 = 0.2 km, at most the city extent)
  in a uniform direction, landing on one of the ``explore_k`` POIs nearest to that point, chosen
  by a time-of-day/weekday class preference (e.g. Entertainment in the evening and at weekends).
  Otherwise the user returns to a place with probability proportional to its past visits (= a
  uniformly drawn earlier visit; anchor visits count).  The stay lasts ``dt ~ dt ** -(1 + beta_t)``
  truncated to [``wait_min_h``, ``wait_max_h``] (beta_t = 0.8), cut at bedtime.  Travel takes
  distance / ``speed_kmh`` + 5 minutes.
* **City.** Seeded by ``(seed, city name)``: centre (lat/lon), extent (``extent_km`` square),
  number of POIs, class mix (a Dirichlet draw around a base mix) and 1-4 sub-centres.  Commercial
  POIs cluster around the centres, Education around a few campuses, Residential spreads widely,
  Entertainment and Public Service mix both.  So two cities differ in extent, density and mix,
  while the behaviour rules are shared (learnable, transferable).

With ``p_leisure = p_weekend_anchor = p_day_anchor = 0`` and ``weekend_wake_delay_h = 0`` the
routines are off and the simulation is, draw for draw, the plain EPR + home/work model (routines
use their own random stream).  With the defaults, the time of day carries information that a
frequency rule misses: over three 100-user cities (``tests/test_data_synthetic_routines.py``), "the
user's most visited input cell within +-2 h of the target hour" predicts the next cell in 32.1 % of
the samples, against 24.8 % for "the user's most visited input cell"; without routines the two
rules reach 30.4 % and 27.8 %.

Every stay is one check-in record at its arrival time, at the POI's coordinate; its category is the
POI's class name.  Times are local (UTC offset = round(lon / 15) hours), starting on Monday
2024-01-01.  ``resolved_params["routine_visits"]`` counts the routine visits by kind.
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
EPS_H = 1e-6  # hours; a clock set to exactly the wake-up time must not read as still night after float rounding
SLOT_ON_WEEKDAYS = np.array([True, True, False])  # routine slots of weekdays (the others: of weekend days)


@dataclass
class SyntheticCityParams:
    """Parameters of a synthetic city (the model is described in the module docstring).

    ``city``/``seed`` seed everything; ``None`` layout fields are drawn per city.  ``p_worker`` ..
    ``speed_kmh`` are the EPR + home/work parameters (rho, gamma, beta_r, dr0, beta_t from Song et
    al. 2010).  The routine fields, with the reason for each default:

    * ``weekend_wake_delay_h`` (1.5 h): later wake-up on Saturdays and Sundays, the usual weekend
      sleep-in of one to two hours; it also shortens weekend free time.  0 turns it off.
    * ``p_leisure`` (0.7): mean per-user probability of an evening leisure visit on a weekday.  High
      enough that the leisure place is the mode of a user's weekday evenings, low enough that about
      a third of the evenings stay EPR free time.  ``leisure_hour`` (18.5 h): mean start, after the
      ~17.5 h work end and the trip; ``leisure_stay_h`` (2.5 h): median stay (a meal, a workout, a
      film).
    * ``leisure_near_work`` (0.4): share of workers whose leisure places lie near work (after-work
      places) rather than near home.
    * ``p_home_after_leisure`` (0.8): probability that the user goes home for the night after a
      leisure visit instead of going on with free time.
    * ``p_second_leisure`` (0.4): share of users with a second leisure place ("one or two");
      ``second_leisure_share`` (0.3): share of those users' leisure visits that go to it, so the first
      place stays the clear favourite.
    * ``leisure_classes`` (Entertainment 0.6, Commercial 0.4): bars, gyms and cinemas are
      Entertainment, restaurants Commercial in the taxonomy.
    * ``p_weekend_anchor`` (0.7): mean per-user probability of visiting the weekend daytime place on a
      Saturday or Sunday; ``weekend_hour`` (12.5 h) and ``weekend_stay_h`` (4.5 h): a midday outing of
      a few hours; ``weekend_classes`` (Entertainment 0.5, Commercial 0.5): a park or a mall.
    * ``p_day_anchor`` (0.7): mean per-user probability that a non-worker spends a weekday at their
      daytime place (workers have work instead); ``day_anchor_hour`` (10 h), ``day_anchor_stay_h``
      (5 h): a morning-to-afternoon activity; ``day_anchor_classes`` (Education 0.4, Public Service
      0.35, Commercial 0.25): school, university or library, community services, shops.
    * ``routine_km`` (1.5 km): median distance of a routine place from its base (home or work),
      half the median commute: routine places are local.
    * ``routine_hour_sd`` (0.75 h): spread of the personal routine hours between users (the work
      start spreads 0.6 h); ``routine_jitter_h`` (0.3 h): day-to-day jitter of one user's hour.
    * ``routine_window_h`` (3 h): a planned visit more than this late (the user was busy, e.g. a
      long day at work) is dropped for the day.
    * ``routine_concentration`` (5): Beta concentration of the per-user probabilities (sd about 0.19
      around a mean of 0.7), so some users are very regular and others rarely follow a routine;
      0 gives every user the mean.

    Setting ``p_leisure``, ``p_weekend_anchor``, ``p_day_anchor`` and ``weekend_wake_delay_h`` to 0
    gives the plain EPR + home/work model.
    """

    city: str = "synthetic"
    seed: int = 0
    n_users: int = 100
    records_per_user: int = 150
    # One block of users of a larger city (generated block by block, e.g. `benchmarks/bench_data.py`): the city's
    # POI layout, users drawn from the block's own streams and named `b<block>-u<n>`. None: the city's only block.
    user_block: int | None = None
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
    # daily routines: personal anchors by hour and day type (see the module docstring)
    weekend_wake_delay_h: float = 1.5
    p_leisure: float = 0.7
    leisure_hour: float = 18.5
    leisure_stay_h: float = 2.5
    leisure_near_work: float = 0.4
    p_home_after_leisure: float = 0.8
    p_second_leisure: float = 0.4
    second_leisure_share: float = 0.3
    leisure_classes: dict = field(default_factory=lambda: {"Entertainment": 0.6, "Commercial": 0.4})
    p_weekend_anchor: float = 0.7
    weekend_hour: float = 12.5
    weekend_stay_h: float = 4.5
    weekend_classes: dict = field(default_factory=lambda: {"Entertainment": 0.5, "Commercial": 0.5})
    p_day_anchor: float = 0.7
    day_anchor_hour: float = 10.0
    day_anchor_stay_h: float = 5.0
    day_anchor_classes: dict = field(default_factory=lambda: {"Education": 0.4, "Public Service": 0.35,
                                                               "Commercial": 0.25})
    routine_km: float = 1.5
    routine_hour_sd: float = 0.75
    routine_jitter_h: float = 0.3
    routine_window_h: float = 3.0
    routine_concentration: float = 5.0
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
    for name in ("p_leisure", "leisure_near_work", "p_home_after_leisure", "p_second_leisure",
                 "second_leisure_share", "p_weekend_anchor", "p_day_anchor"):
        if not 0.0 <= float(getattr(q, name)) <= 1.0:
            raise ValueError(f"{name} must be a probability in [0, 1], got {getattr(q, name)!r}")
    for name in ("leisure_stay_h", "weekend_stay_h", "day_anchor_stay_h", "routine_km"):
        if not float(getattr(q, name)) > 0.0:
            raise ValueError(f"{name} must be > 0, got {getattr(q, name)!r}")
    if not 0.0 <= q.weekend_wake_delay_h <= 6.0 or q.routine_window_h < 0 or q.routine_hour_sd < 0 \
            or q.routine_jitter_h < 0 or q.routine_concentration < 0:
        raise ValueError("weekend_wake_delay_h must be in [0, 6] h and routine_window_h, routine_hour_sd, "
                         "routine_jitter_h, routine_concentration must be >= 0")
    for name in ("leisure_classes", "weekend_classes", "day_anchor_classes"):
        w = dict(getattr(q, name))
        bad = set(w) - set(DEFAULT_POI_CLASSES)
        if not w or bad or any(float(v) < 0 for v in w.values()) or sum(float(v) for v in w.values()) <= 0:
            raise ValueError(f"{name} must map class names of {DEFAULT_POI_CLASSES} to non-negative weights, "
                             f"got {w!r}")
        setattr(q, name, {k: float(v) for k, v in w.items()})
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


def _anchor_near(rng, xy, pcls, class_weights: dict, base_xy, median_km: float, exclude: np.ndarray):
    """Per user: a POI of a class drawn from ``class_weights``, the nearest one of that class to a point at a
    log-normal distance (median ``median_km``) from ``base_xy`` that is not in the user's ``exclude`` row."""
    n = len(base_xy)
    names = [c for c in class_weights if class_weights[c] > 0]
    w = np.array([class_weights[c] for c in names], dtype=np.float64)
    cls = np.array([DEFAULT_POI_CLASSES.index(c) for c in names])[rng.choice(len(names), size=n, p=w / w.sum())]
    ang = rng.uniform(0, 2 * np.pi, n)
    dist = rng.lognormal(np.log(max(median_km, 1e-3)), 0.6, n)
    pt = base_xy + dist[:, None] * np.c_[np.cos(ang), np.sin(ang)]
    out = np.full(n, -1)
    listed = np.flatnonzero(np.isin(pcls, cls))  # fallback when the drawn class has no POI in this city
    for c in np.unique(cls):
        places = np.flatnonzero(pcls == c)
        places = places if places.size else (listed if listed.size else np.arange(len(pcls)))
        m = np.flatnonzero(cls == c)
        k = min(exclude.shape[1] + 1, places.size)
        _, nb = cKDTree(xy[places]).query(pt[m], k=k)
        cand = places[np.asarray(nb).reshape(m.size, k)]
        ok = ~(cand[:, :, None] == exclude[m][:, None, :]).any(axis=2)
        first = np.where(ok.any(axis=1), ok.argmax(axis=1), 0)
        out[m] = cand[np.arange(m.size), first]
    return out


def _user_probability(rng, mean: float, concentration: float, n: int) -> np.ndarray:
    """Per-user probabilities ~ Beta with the given mean and concentration (a constant when degenerate)."""
    if mean <= 0.0 or mean >= 1.0 or concentration <= 0.0:
        return np.full(n, float(np.clip(mean, 0.0, 1.0)))
    return rng.beta(mean * concentration, (1.0 - mean) * concentration, n)


@dataclass
class _Users:
    """Who moves: each user's number of records, anchors and daily rhythm (hours of the day)."""

    n_target: np.ndarray  # records to simulate
    home: np.ndarray  # POI index
    work: np.ndarray  # POI index; -1: no workplace
    worker: np.ndarray  # has a workplace
    wake: np.ndarray
    bed: np.ndarray
    wstart: np.ndarray  # work start
    wend: np.ndarray  # work end


@dataclass
class _Routines:
    """Each user's routine slots (0 = weekday daytime anchor, non-workers; 1 = weekday evening leisure; 2 = weekend
    daytime anchor): the personal hour, probability and place of each."""

    hour: np.ndarray  # (users, 3)
    probability: np.ndarray  # (users, 3)
    anchors: np.ndarray  # (users, 4): by slot; column 3: the second leisure place
    two_leisure: np.ndarray  # the user has a second leisure place
    stay_h: np.ndarray  # (3,) median stay by slot


def _user_streams(q: SyntheticCityParams, rng: np.random.Generator,
                  block: tuple) -> tuple[np.random.Generator, np.random.Generator]:
    """The users' random stream (a block of a larger city draws its own, after the city's layout) and the routines'
    own stream, so that with the routines off the simulation is draw for draw the plain EPR + home/work one."""
    if block:
        rng = np.random.default_rng([int(q.seed), zlib.crc32(q.city.encode("utf-8")), 2, *block])
    return rng, np.random.default_rng([int(q.seed), zlib.crc32(q.city.encode("utf-8")), 1, *block])


def _home_and_work(q: SyntheticCityParams, rng: np.random.Generator, xy: np.ndarray,
                   pcls: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Each user's home (a Residential POI; any POI in a city without one) and, for a share ``p_worker``, a workplace:
    the POI of a drawn work class nearest to a point at a log-normal commute distance (-1: none of that class)."""
    U = q.n_users
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
    return home, work


def _draw_users(q: SyntheticCityParams, rng: np.random.Generator, xy: np.ndarray, pcls: np.ndarray) -> _Users:
    """The users: how many records each gets (log-normal around ``records_per_user``), home and work, then their own
    wake-up, bedtime and work hours."""
    U = q.n_users
    n_target = np.maximum(2, np.round(q.records_per_user * rng.lognormal(0.0, 0.25, U))).astype(np.int64)
    home, work = _home_and_work(q, rng, xy, pcls)
    wake = rng.normal(7.0, 0.7, U).clip(5.0, 9.5)
    bed = rng.normal(22.5, 0.8, U).clip(20.5, 23.9)
    wstart = rng.normal(9.0, 0.6, U).clip(7.5, 10.5)
    wend = (wstart + rng.normal(8.5, 0.7, U)).clip(wstart + 6, 19.5)
    return _Users(n_target, home, work, work >= 0, wake, bed, wstart, wend)


def _draw_routines(q: SyntheticCityParams, rr: np.random.Generator, xy: np.ndarray, pcls: np.ndarray,
                   users: _Users) -> _Routines:
    """The routine anchors (leisure near home or work, a weekend and a weekday daytime place near home, none the
    user's home, work or an earlier anchor), each user's hour of each routine and probability of following it."""
    U = q.n_users
    near_work = users.worker & (rr.random(U) < q.leisure_near_work)
    base = np.where(near_work[:, None], xy[np.maximum(users.work, 0)], xy[users.home])
    excl = np.c_[users.home, users.work]
    leis1 = _anchor_near(rr, xy, pcls, q.leisure_classes, base, q.routine_km, excl)
    leis2 = _anchor_near(rr, xy, pcls, q.leisure_classes, base, q.routine_km, np.c_[excl, leis1])
    two_leis = rr.random(U) < q.p_second_leisure
    wknd = _anchor_near(rr, xy, pcls, q.weekend_classes, xy[users.home], q.routine_km, np.c_[excl, leis1, leis2])
    dayp = _anchor_near(rr, xy, pcls, q.day_anchor_classes, xy[users.home], q.routine_km, np.c_[excl, leis1, leis2])
    hour = np.c_[
        rr.normal(q.day_anchor_hour, q.routine_hour_sd, U).clip(users.wake + 0.5, 14.0),
        rr.normal(q.leisure_hour, q.routine_hour_sd, U).clip(np.where(users.worker, users.wend + 0.5, 16.0),
                                                             users.bed - 1.0),
        rr.normal(q.weekend_hour, q.routine_hour_sd, U).clip(users.wake + q.weekend_wake_delay_h + 1.0, 17.0),
    ]
    probability = np.c_[
        np.where(users.worker, 0.0, _user_probability(rr, q.p_day_anchor, q.routine_concentration, U)),
        _user_probability(rr, q.p_leisure, q.routine_concentration, U),
        _user_probability(rr, q.p_weekend_anchor, q.routine_concentration, U),
    ]
    return _Routines(hour, probability, np.c_[dayp, leis1, wknd, leis2], two_leis,
                     np.array([q.day_anchor_stay_h, q.leisure_stay_h, q.weekend_stay_h]))


class _Simulation:
    """All users at once, one record per user and step (numpy): where each is, since when, where it has been, and
    today's planned routine visits. `rng` draws the EPR + home/work moves, `rr` the routines."""

    def __init__(self, q: SyntheticCityParams, xy: np.ndarray, pcls: np.ndarray, users: _Users,
                 routines: _Routines, rng: np.random.Generator, rr: np.random.Generator):
        U = q.n_users
        self.q, self.xy, self.pcls, self.users, self.routines = q, xy, pcls, users, routines
        self.rng, self.rr = rng, rr
        self.tree = cKDTree(xy)
        self.routine = routines.probability.max() > 0.0
        self.plan_day = np.full(U, -1.0)
        self.slot_t = np.full((U, 3), np.inf)  # today's planned routine visits (absolute hours); inf = none / done
        self.appt = np.full(U, np.inf)  # the earliest of them ...
        self.appt_slot = np.zeros(U, dtype=np.int64)  # ... and its slot
        self.n_routine = np.zeros(3, dtype=np.int64)
        self.evening_over = np.zeros(U, dtype=bool)  # after an evening leisure visit: home for the night next
        self.steps = int(users.n_target.max())
        home, work = users.home, users.work
        self.visits = np.full((U, self.steps + 2), -1, dtype=np.int64)
        self.visits[:, 0] = home
        self.nvis = np.ones(U, dtype=np.int64)
        has_w = work >= 0
        self.visits[has_w, 1] = work[has_w]
        self.nvis[has_w] = 2
        self.distinct = self.nvis.copy()
        # places seen so far, for S; a (users x POIs) table unless that is much larger than the visit history
        self.seen = np.zeros((U, len(xy)), dtype=bool) if len(xy) <= 8 * (self.steps + 2) else None
        if self.seen is not None:
            self.seen[np.arange(U), home] = True
            self.seen[has_w, work[has_w]] = True
        self.loc = home.copy()
        self.wake_we = users.wake + q.weekend_wake_delay_h
        self.T = rng.integers(0, 7, U) * 24.0 + users.wake  # hours since Monday 00:00 (local)
        self.worked_day = np.full(U, -1, dtype=np.int64)
        self.out_t = np.full((U, self.steps), np.nan)
        self.out_loc = np.full((U, self.steps), -1, dtype=np.int64)

    def wake_on(self, d: np.ndarray) -> np.ndarray:
        """Wake-up hour on day number d (day 0 = Monday): later at weekends."""
        return np.where(d % 7.0 >= 5.0, self.wake_we, self.users.wake)

    def step(self, step: int) -> None:
        """Every user with records left makes one move: home at night (or after evening leisure), to work once a
        weekday, to a planned routine visit when it is due, else free time by EPR; the stay's end sets the clock."""
        users = self.users
        active = users.n_target > step
        self._sleep_at_home(active)
        h = self.T % 24.0
        day = np.floor(self.T / 24.0)
        wd = (day.astype(np.int64) % 7) < 5
        night = (h >= users.bed) | (h < self.wake_on(day) - EPS_H)
        go_home = active & (night | self.evening_over)
        go_work = active & ~go_home & users.worker & wd & (self.worked_day != day) & (h < users.wend - 2.0)
        go_slot = np.zeros(len(active), dtype=bool)
        if self.routine:
            self._plan_routines(active, day, wd)
            go_slot = active & ~go_home & ~go_work & (self.T >= self.appt)
        free = active & ~go_home & ~go_work & ~go_slot
        dest = self.loc.copy()
        dest[go_home] = users.home[go_home]
        dest[go_work] = users.work[go_work]
        si, stay = self._routine_visits(go_slot, dest)
        self._free_time(free, dest, h, wd)
        start, end = self._stays(dest, day, go_home, go_work, free, si, stay)
        self._log(step, active, dest, start, end, day, go_home, go_work)

    def _sleep_at_home(self, active: np.ndarray) -> None:
        """A user at home at night sleeps until wake-up without a record: its clock jumps there."""
        users, T = self.users, self.T
        h = T % 24.0
        day = np.floor(T / 24.0)
        wk = self.wake_on(day)
        sleep = active & (self.loc == users.home) & ((h >= users.bed) | (h < wk - EPS_H))
        self.T = np.where(sleep, np.where(h >= users.bed, (day + 1) * 24.0 + self.wake_on(day + 1), day * 24.0 + wk), T)

    def _next_appointment(self, rows: np.ndarray) -> None:
        """The earliest planned visit left today of these users (a visit done or dropped is inf)."""
        self.appt_slot[rows] = self.slot_t[rows].argmin(axis=1)
        self.appt[rows] = self.slot_t[rows, self.appt_slot[rows]]

    def _plan_routines(self, active: np.ndarray, day: np.ndarray, wd: np.ndarray) -> None:
        """On a user's first move of a day, decide today's routine visits (per slot, with the user's probability, at
        the user's hour plus a jitter); a visit missed by more than ``routine_window_h`` (e.g. still at work) is
        dropped."""
        routines, rr = self.routines, self.rr
        nd = np.flatnonzero(active & (day != self.plan_day))
        if nd.size:
            take = (rr.random((nd.size, 3)) < routines.probability[nd]) & (SLOT_ON_WEEKDAYS[None, :] == wd[nd, None])
            t = day[nd, None] * 24.0 + routines.hour[nd] + rr.normal(0.0, self.q.routine_jitter_h, (nd.size, 3))
            self.slot_t[nd] = np.where(take, t, np.inf)
            self.plan_day[nd] = day[nd]
            self._next_appointment(nd)
        for _ in range(3):
            late = np.flatnonzero(self.T > self.appt + self.q.routine_window_h)
            if not late.size:
                break
            self.slot_t[late, self.appt_slot[late]] = np.inf
            self._next_appointment(late)

    def _routine_visits(self, go_slot: np.ndarray, dest: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """Users whose routine visit is due go to its anchor (sometimes the second leisure place) for a log-normal
        stay; returns those users and their stays (hours). After evening leisure, maybe home for the night."""
        if not go_slot.any():
            return np.zeros(0, dtype=np.int64), None
        routines, rr, q = self.routines, self.rr, self.q
        si = np.flatnonzero(go_slot)
        ss = self.appt_slot[si].copy()
        u2 = rr.random((si.size, 2))
        second = (ss == 1) & routines.two_leisure[si] & (u2[:, 0] < q.second_leisure_share)
        dest[si] = routines.anchors[si, np.where(second, 3, ss)]
        self.evening_over[si] = (ss == 1) & (u2[:, 1] < q.p_home_after_leisure)
        stay = routines.stay_h[ss] * np.exp(0.3 * rr.standard_normal(si.size))
        self.n_routine += np.bincount(ss, minlength=3)
        self.slot_t[si, ss] = np.inf
        self._next_appointment(si)
        return si, stay

    def _free_time(self, free: np.ndarray, dest: np.ndarray, h: np.ndarray, wd: np.ndarray) -> None:
        """EPR for free time: explore a new place (probability rho * S ** -gamma; a power-law jump, then one of the
        nearest POIs by the time of day's class preference) or return to a past visit, drawn uniformly."""
        fi = np.flatnonzero(free)
        if not fi.size:
            return
        q, rng, xy = self.q, self.rng, self.xy
        p_new = q.rho * self.distinct[fi].astype(np.float64) ** (-q.gamma)
        explore = rng.random(fi.size) < p_new
        ei, ri = fi[explore], fi[~explore]
        if ei.size:
            dr = _power_law(rng, ei.size, 0.0, q.extent_km, q.beta_r, q.dr0_km)
            th = rng.uniform(0, 2 * np.pi, ei.size)
            pt = xy[self.loc[ei]] + dr[:, None] * np.c_[np.cos(th), np.sin(th)]
            k = min(q.explore_k, len(xy))
            _, nb = self.tree.query(pt, k=k)
            nb = nb.reshape(ei.size, k)
            period = (~wd[ei]).astype(np.int64) * 2 + (h[ei] >= 17.0).astype(np.int64)
            w = PREFERENCE[period[:, None], self.pcls[nb]]
            c = np.cumsum(w, axis=1)
            pick = (rng.random(ei.size)[:, None] * c[:, -1:] > c).sum(axis=1)
            dest[ei] = nb[np.arange(ei.size), np.minimum(pick, k - 1)]
        if ri.size:
            j = np.floor(rng.random(ri.size) * self.nvis[ri]).astype(np.int64)
            dest[ri] = self.visits[ri, j]

    def _stays(self, dest: np.ndarray, day: np.ndarray, go_home: np.ndarray, go_work: np.ndarray, free: np.ndarray,
               si: np.ndarray, stay: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
        """Arrival (after the travel time; work not before its start) and end of each stay: home until the next
        wake-up, work until the work end, free time a power-law wait; cut at bedtime and at the next planned routine
        visit."""
        users, q, rng, xy = self.users, self.q, self.rng, self.xy
        U = len(dest)
        travel = np.linalg.norm(xy[dest] - xy[self.loc], axis=1) / q.speed_kmh + 5.0 / 60.0
        start = self.T + travel
        start = np.where(go_work, np.maximum(start, day * 24.0 + users.wstart), start)
        sday = np.floor(start / 24.0)
        sh = start % 24.0
        wk = self.wake_on(sday)
        next_wake = np.where(sh >= wk, (sday + 1) * 24.0 + self.wake_on(sday + 1), sday * 24.0 + wk)
        end = np.where(go_home, next_wake, start)
        end = np.where(go_work, sday * 24.0 + users.wend + rng.normal(0, 0.3, U), end)
        dt = _power_law(rng, U, q.wait_min_h, q.wait_max_h, q.beta_t)
        bedtime = sday * 24.0 + users.bed
        free_end = np.where(start < bedtime, np.minimum(start + dt, bedtime), start + dt)
        if self.routine:  # free time and routine stays end at the next planned routine visit
            nxt = np.where(self.appt > start, self.appt, np.inf)
            free_end = np.minimum(free_end, nxt)
            if si.size:
                stay = np.minimum(start[si] + stay, nxt[si])
                end[si] = np.where(start[si] < bedtime[si], np.minimum(stay, bedtime[si]), stay)
        end = np.where(free, free_end, end)
        return start, np.maximum(end, start + 1.0 / 60.0)

    def _log(self, step: int, active: np.ndarray, dest: np.ndarray, start: np.ndarray, end: np.ndarray,
             day: np.ndarray, go_home: np.ndarray, go_work: np.ndarray) -> None:
        """Record the arrivals and move the users there: the visit history (for returns) and S (distinct places)."""
        ar = np.arange(len(dest))
        if self.seen is not None:
            new = active & ~self.seen[ar, dest]
            self.seen[ar[active], dest[active]] = True
        else:
            new = active & ~(self.visits == dest[:, None]).any(axis=1)
        self.distinct += new
        self.visits[ar[active], self.nvis[active]] = dest[active]
        self.nvis += active
        self.worked_day = np.where(go_work, day.astype(np.int64), self.worked_day)
        self.evening_over &= ~go_home
        self.out_t[active, step] = start[active]
        self.out_loc[active, step] = dest[active]
        self.loc = np.where(active, dest, self.loc)
        self.T = np.where(active, end, self.T)


def _tables(q: SyntheticCityParams, xy: np.ndarray, pcls: np.ndarray, simulation: _Simulation,
            block: tuple) -> tuple[pd.DataFrame, pd.DataFrame, dict]:
    """The check-in records (one per stay, at its arrival, local and UTC), the POI table and the resolved
    parameters with the simulation's counts."""
    out_t, out_loc, U = simulation.out_t, simulation.out_loc, q.n_users
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
        "user_id": pd.array([f"{'b%d-' % block[0] if block else ''}u{u:0{width}d}" for u in range(U)],
                            dtype="string")[uu],
        "ts": t_local - offset_h * 3600,
        "local_ts": t_local,
        "lat": plat[L],
        "lon": plon[L],
        "venue_id": pd.array(L.astype(str), dtype="string"),
        "category": pd.array(names[pcls[L]], dtype="string"),
    })
    pois = pd.DataFrame({"venue_id": np.arange(len(xy)).astype(str), "lat": plat, "lon": plon,
                         "poi_class": names[pcls]})
    n_routine = simulation.n_routine
    info = asdict(q)
    info.update({"utc_offset_hours": offset_h, "workers": int(simulation.users.worker.sum()),
                 "routine_visits": {"day_anchor": int(n_routine[0]), "leisure": int(n_routine[1]),
                                    "weekend_anchor": int(n_routine[2])},
                 "poi_class_counts":
                 {c: int((pcls == i).sum()) for i, c in enumerate(DEFAULT_POI_CLASSES)}})
    return records, pois, info


def generate_synthetic_city(params: SyntheticCityParams, show_progress: bool = False):
    """Return ``(records, pois, resolved_params)``; records in the canonical reader format."""
    q, rng = _resolve(params)
    xy, pcls = _layout_pois(q, rng)
    block = () if q.user_block is None else (int(q.user_block),)
    rng, rr = _user_streams(q, rng, block)
    users = _draw_users(q, rng, xy, pcls)
    simulation = _Simulation(q, xy, pcls, users, _draw_routines(q, rr, xy, pcls, users), rng, rr)
    for step in tqdm(range(simulation.steps), desc="simulating EPR + routines", disable=not show_progress,
                     leave=False):
        simulation.step(step)
    return _tables(q, xy, pcls, simulation, block)
