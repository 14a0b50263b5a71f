"""Bad input: clear errors naming the field/value, or counted drops -- never silent loss."""

import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from processes import BASE_ENV, run

from nextlocllm_hf.data.build import BuildConfig, build_and_save, build_city
from nextlocllm_hf.evaluate import MAX_RANK

H, L = 2, 1


def frame(n_users=4, n=8):
    rng = np.random.default_rng(0)
    out = []
    for u in range(n_users):
        for k in range(n):
            out.append({"user_id": f"u{u}", "utc_time": f"2012-05-0{1 + k % 7} {10 + u}:00:00",
                        "latitude": 40.7 + rng.uniform(0, 0.05), "longitude": -74.0 + rng.uniform(0, 0.05),
                        "category_name": "Bar"})
    return pd.DataFrame(out)


def build(tmp_path, df, **kw):
    df.to_csv(tmp_path / "in.csv", index=False)
    base = dict(city="e", format="csv", input=str(tmp_path / "in.csv"), history_length=H, current_length=L, stride=1,
                show_progress=False)
    base.update(kw)
    return build_city(BuildConfig(**base))


def test_ok_baseline(tmp_path):
    res = build(tmp_path, frame())
    assert sum(t.num_rows for t in res.windows.values()) == 4 * 5
    assert not res.report.drops


def test_missing_column_names_the_field(tmp_path):
    with pytest.raises(ValueError, match="missing required field 'time'.*available columns"):
        build(tmp_path, frame().drop(columns="utc_time"))


def test_misnamed_mapping(tmp_path):
    with pytest.raises(ValueError, match="column 'stamp' \\(mapped to field 'time'\\) not found"):
        build(tmp_path, frame(), columns={"time": "stamp"})
    with pytest.raises(ValueError, match="unknown field"):
        build(tmp_path, frame(), columns={"tiem": "utc_time"})


def test_unparseable_timestamps(tmp_path):
    df = frame()
    df.loc[3, "utc_time"] = "yesterday-ish"
    res = build(tmp_path, df, max_invalid_fraction=0.05)
    assert res.report.drops["unparseable_time"] == 1
    assert "yesterday-ish" in res.report.examples["unparseable_time"]
    df["utc_time"] = "not a time"
    with pytest.raises(ValueError, match="unparseable_time.*'utc_time'.*not a time"):
        build(tmp_path, df)


def test_lat_lon_out_of_range(tmp_path):
    df = frame()
    df.loc[5, "latitude"] = 123.0
    res = build(tmp_path, df)
    assert res.report.drops["invalid_coordinates"] == 1 and "123.0" in res.report.examples["invalid_coordinates"]
    df.loc[:10, "longitude"] = 500.0
    with pytest.raises(ValueError, match="invalid_coordinates.*latitude/longitude"):
        build(tmp_path, df)


def test_nothing_left_after_filtering(tmp_path):
    with pytest.raises(ValueError, match="nothing left after filtering.*outside_bbox"):
        build(tmp_path, frame(), bbox=(10.0, 10.0, 11.0, 11.0))


def test_too_short_users_counted_or_error(tmp_path):
    df = pd.concat([frame(), frame(1, 3).assign(user_id="short")])
    res = build(tmp_path, df)
    assert res.report.user_drops["user_too_short"] == 1 and res.report.drops["segment_too_short"] == 3
    assert res.metadata["counts"]["drops"]["users"] == {"user_too_short": 1}
    with pytest.raises(ValueError, match="no user has a segment of at least"):
        build(tmp_path, frame(), history_length=20)
    with pytest.raises(ValueError, match="too few users"):
        build(tmp_path, frame(2))


def test_duplicates_counted(tmp_path):
    df = frame()
    res = build(tmp_path, pd.concat([df, df.iloc[:2]]))
    assert res.report.drops["duplicate_record"] == 2
    res = build(tmp_path, pd.concat([df, df.iloc[:2]]), drop_duplicates=False)
    assert "duplicate_record" not in res.report.drops


@pytest.mark.parametrize("kw,match", [
    ({"history_length": 0}, "history_length=0"), ({"split_fractions": (0.5, 0.1, 0.1)}, "fractions"),
    ({"format": "xml"}, "format"),
    ({"candidates": "some"}, "candidates"), ({"poi_normalization": "softmax"}, "normalization"),
    ({"split": "random"}, "split"),
])
def test_bad_config(tmp_path, kw, match):
    with pytest.raises(ValueError, match=match):
        build(tmp_path, frame(), **kw)


def test_missing_files_and_poi_without_categories(tmp_path):
    with pytest.raises(FileNotFoundError):
        build_city(BuildConfig(city="e", format="csv", input=str(tmp_path / "nope.csv"), show_progress=False))
    pd.DataFrame({"lat": [40.7], "lon": [-74.0], "name": ["x"]}).to_csv(tmp_path / "p.csv", index=False)
    with pytest.raises(ValueError, match="no category information"):
        build(tmp_path, frame(), pois=str(tmp_path / "p.csv"))


def test_cli_reports_errors_and_builds(tmp_path, capsys):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "dataset_scripts"))
    try:
        import build_city as cli
    finally:
        sys.path.pop(0)
    frame().drop(columns="latitude").to_csv(tmp_path / "bad.csv", index=False)
    rc = cli.main(["--format", "csv", "--input", str(tmp_path / "bad.csv"), "--city", "x", "--output",
                   str(tmp_path / "o"), "--no-progress"])
    assert rc == 2 and "missing required field 'lat'" in capsys.readouterr().err
    frame().to_csv(tmp_path / "ok.csv", index=False)
    rc = cli.main(["--format", "csv", "--input", str(tmp_path / "ok.csv"), "--city", "x", "--output",
                   str(tmp_path / "o"), "--history-length", "2", "--current-length", "1", "--stride", "1",
                   "--no-progress"])
    out = capsys.readouterr().out
    assert rc == 0 and "samples: train" in out and (tmp_path / "o" / "city.json").exists()


def test_build_and_save_requires_output(tmp_path):
    frame().to_csv(tmp_path / "in.csv", index=False)
    with pytest.raises(ValueError, match="output"):
        build_and_save(BuildConfig(city="e", format="csv", input=str(tmp_path / "in.csv"), show_progress=False))


@pytest.mark.parametrize("partitions", [[], ["--partitions", "2", "--scheduler", "synchronous"]],
                         ids=["in process", "partitioned"])
def test_a_city_in_one_cell_builds_with_a_warning(tmp_path, partitions):
    """Issue 24 point 6: training used to run all its steps on such a city and then fail on Hit@20; the build says
    so at once (exit 0: the city itself is valid)."""
    assert not build(tmp_path, frame()).report.warnings  # a city of more than MAX_RANK cells: nothing to say
    one_cell = frame()
    one_cell["latitude"] = 40.7 + (one_cell.index % 3) * 1e-5  # a metre apart: all in one 500 m cell
    one_cell["longitude"] = -74.0
    one_cell.to_csv(tmp_path / "one-cell.csv", index=False)
    repo = Path(__file__).resolve().parents[1]
    built = run([sys.executable, str(repo / "dataset_scripts" / "build_city.py"), "--format", "csv", "--input",
                 str(tmp_path / "one-cell.csv"), "--city", "dot", "--output", str(tmp_path / "dot"), "--history-length",
                 str(H), "--current-length", str(L), "--stride", "1", "--no-progress", *partitions],
                env={**BASE_ENV, "OMP_NUM_THREADS": "1"}, cwd=repo)
    assert built.returncode == 0, built.stderr[-3000:]
    warnings = [line for line in built.stdout.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 1, built.stdout
    assert warnings[0].startswith(f"warning: city 'dot' has 1 candidate cell (fewer than the {MAX_RANK} "
                                  f"Hit@{MAX_RANK} ranks): ")
    assert "--cell-size-m" in warnings[0]
    assert (tmp_path / "dot" / "city.json").is_file()
