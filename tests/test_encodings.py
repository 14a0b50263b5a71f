"""Text encodings of user files (issue 24 point 5): UTF-8 by default, with or without a byte-order mark; a file that
is not valid UTF-8 is refused with its line and the way out (`--encoding`), never decoded with replacement
characters (which gave 'Caf\ufffd' another class than 'Café'); with `--encoding latin-1` a Latin-1 file builds the city
its UTF-8 copy builds."""

import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from processes import BASE_ENV, run

from nextlocllm_hf.data.build import BuildConfig, build_and_save, build_city
from nextlocllm_hf.modeling.records_nextlocllm import read_records

REPO = Path(__file__).resolve().parents[1]
ENV = {**BASE_ENV, "OMP_NUM_THREADS": "1"}
BUILD = [sys.executable, str(REPO / "dataset_scripts" / "build_city.py"), "--format", "csv", "--history-length", "2",
         "--current-length", "1", "--stride", "1", "--no-progress", "--city", "e"]
# Café is a Commercial name under an Entertainment root: decoded wrong, the name is unknown and the root decides.
VENUES = [("Café", "Arts & Entertainment"), ("Office", "Professional & Other Places"), ("Park", "Outdoors & Recreation"),
          ("Crêperie", "Food")]
WAY_OUT = "pass --encoding latin-1 (or the file's encoding)"


def checkins(with_root: bool = True) -> pd.DataFrame:
    rows = []
    for u in range(4):
        for k in range(8):
            v = (u + k) % len(VENUES)
            rows.append({"user_id": f"u{u}", "venue_id": f"v{v}", "category_name": VENUES[v][0],
                         "root_category": VENUES[v][1], "latitude": 40.70 + 0.01 * v, "longitude": -74.0 + 0.01 * v,
                         "utc_time": f"2012-05-0{1 + k % 7} {10 + u}:00:00"})
    frame = pd.DataFrame(rows)
    return frame if with_root else frame.drop(columns="root_category")


def write(frame: pd.DataFrame, path: Path, encoding: str) -> Path:
    frame.to_csv(path, index=False, encoding=encoding)
    return path


def first_bad_line(path: Path) -> tuple[int, int]:
    """(line, byte of the line) of the first non-ASCII byte: where a Latin-1 file stops being UTF-8 here."""
    for number, line in enumerate(path.read_bytes().split(b"\n"), start=1):
        for at, value in enumerate(line, start=1):
            if value > 127:
                return number, at
    raise AssertionError("no non-ASCII byte")


def config(path: Path, **options) -> BuildConfig:
    return BuildConfig(city="e", format="csv", input=str(path), history_length=2, current_length=1, stride=1,
                       show_progress=False, **options)


def classes(result) -> tuple:
    pois = result.report.info["pois"]
    return pois["per_class"], pois["via_root"], dict(result.report.unmapped_categories)


@pytest.mark.parametrize("with_root", [True, False], ids=["root_category", "no root_category"])
def test_latin1_with_its_encoding_builds_what_utf8_builds(tmp_path, with_root):
    frame = checkins(with_root)
    utf8 = build_city(config(write(frame, tmp_path / "utf8.csv", "utf-8")))
    per_class, via_root, unmapped = classes(utf8)
    assert unmapped == ({} if with_root else {"Crêperie": 1})
    # Café and Office by their names, Crêperie by its root "Food"; Park alone is Entertainment
    assert (per_class["Commercial"], per_class["Entertainment"], via_root) == (2 + with_root, 1, int(with_root))
    for path, encoding in ((write(frame, tmp_path / "bom.csv", "utf-8-sig"), "utf-8"),
                           (write(frame, tmp_path / "latin1.csv", "latin-1"), "latin-1"),
                           (write(frame, tmp_path / "cp1252.csv", "cp1252"), "cp1252")):
        other = build_city(config(path, encoding=encoding))
        assert classes(other) == classes(utf8), path.name
        pd.testing.assert_frame_equal(other.cells, utf8.cells)


def test_partitioned_build_reads_the_encoding_too(tmp_path):
    frame = checkins()
    single = build_and_save(config(write(frame, tmp_path / "utf8.csv", "utf-8"), output=str(tmp_path / "single")))
    latin1 = write(frame, tmp_path / "latin1.csv", "latin-1")
    parts = dict(partitions=2, scheduler="synchronous", block_size="400B")  # several blocks, read in tasks
    partitioned = build_and_save(config(latin1, output=str(tmp_path / "parts"), encoding="latin-1", **parts))
    assert classes(partitioned) == classes(single)
    bom = build_and_save(config(write(frame, tmp_path / "bom.csv", "utf-8-sig"), output=str(tmp_path / "bom"),
                                **parts))
    assert classes(bom) == classes(single)


@pytest.mark.parametrize("how", ["in process", "partitioned"])
def test_a_file_that_is_not_utf8_is_refused_with_its_line(tmp_path, how):
    frame = pd.concat([checkins()] * 150, ignore_index=True)  # ~350 kB: past the 256 kB Dask samples for types
    frame["category_name"] = frame["category_name"].str.replace("é", "e").str.replace("ê", "e")
    frame.loc[len(frame) - 5, "category_name"] = "Café"  # the only non-ASCII byte: in the last of many blocks
    path = write(frame, tmp_path / "latin1.csv", "latin-1")
    line, at = first_bad_line(path)
    assert line == len(frame) - 3
    options = {"partitions": 2, "scheduler": "synchronous", "block_size": "64kB"} if how == "partitioned" else {}
    expected = f"{path} line {line} is not valid UTF-8 (byte 0xe9 at byte {at} of the line): {WAY_OUT}"
    with pytest.raises(ValueError) as refused:
        build_and_save(config(path, output=str(tmp_path / "city"), **options))
    assert str(refused.value) == expected
    assert not (tmp_path / "city").exists()


def test_a_poi_file_and_records_for_predict_are_read_the_same_way(tmp_path):
    pois = pd.DataFrame({"lat": [40.70, 40.71], "lon": [-74.0, -73.99], "category_name": ["Café", "Park"]})
    latin1_pois = write(pois, tmp_path / "pois.csv", "latin-1")
    line, at = first_bad_line(latin1_pois)
    with pytest.raises(ValueError) as refused:
        build_city(config(write(checkins(), tmp_path / "in.csv", "utf-8"), pois=str(latin1_pois)))
    assert str(refused.value) == (f"{latin1_pois} line {line} is not valid UTF-8 (byte 0xe9 at byte {at} of the "
                                  f"line): {WAY_OUT}")
    built = build_city(config(tmp_path / "in.csv", pois=str(latin1_pois), encoding="latin-1"))
    assert built.report.info["pois"]["per_class"]["Commercial"] == 1 and not built.report.unmapped_categories

    records = pd.DataFrame({"user_id": ["José"] * 3, "latitude": [40.7, 40.71, 40.72],
                            "longitude": [-74.0, -74.0, -74.0],
                            "local_time": ["2024-05-03 08:00", "2024-05-03 09:00", "2024-05-03 10:00"]})
    utf8 = read_records(write(records, tmp_path / "utf8.csv", "utf-8-sig"))  # the BOM is not in 'user_id'
    pd.testing.assert_frame_equal(read_records(write(records, tmp_path / "latin1.csv", "latin-1"), "latin-1"), utf8)
    line, at = first_bad_line(tmp_path / "latin1.csv")
    with pytest.raises(ValueError) as refused:
        read_records(tmp_path / "latin1.csv")
    assert str(refused.value) == (f"{tmp_path / 'latin1.csv'} line {line} is not valid UTF-8 (byte 0xe9 at byte {at} "
                                  f"of the line): {WAY_OUT}")


def test_predict_reads_its_records_in_the_given_encoding(tmp_path, capsys):
    """The CLI and the pipeline (`encoding=`) predict from a Latin-1 file what they predict from its UTF-8 copy."""
    import torch
    from conftest import TINY_BACKBONES, build_model, build_synthetic_city, build_tokenizer

    from nextlocllm_hf import NextLocationPipeline
    from nextlocllm_hf.data import load_city_splits
    from nextlocllm_hf.predict import main

    city = build_synthetic_city(tmp_path / "city", "town", seed=3)
    tokenizer = build_tokenizer()
    torch.manual_seed(0)
    TINY_BACKBONES["gpt2"](len(tokenizer)).save_pretrained(tmp_path / "backbone")
    tokenizer.save_pretrained(tmp_path / "backbone")
    model = build_model(str(tmp_path / "backbone"))
    model.add_city(load_city_splits(city).retriever)
    model.save_pretrained(tmp_path / "model")
    cells = pd.read_parquet(Path(city) / "cells.parquet")
    rows = np.random.default_rng(0).integers(0, len(cells), 14)
    records = pd.DataFrame({"user_id": "José", "latitude": cells["lat"].to_numpy()[rows],
                            "longitude": cells["lon"].to_numpy()[rows],
                            "local_time": pd.date_range("2024-03-04 08:00", periods=14, freq="3h").astype(str)})
    pipe = NextLocationPipeline(model=model, device=model.device)
    printed, ranked = {}, {}
    for encoding in ("utf-8", "latin-1"):
        path = write(records, tmp_path / f"{encoding}.csv", encoding)
        assert main(["--model", str(tmp_path / "model"), "--city", "town", "--input", str(path), "--k", "3",
                     "--encoding", encoding, "--plot", str(tmp_path / f"{encoding}.png")]) == 0
        printed[encoding] = capsys.readouterr().out.replace(f"{encoding}.png", "PLOT")
        (result,) = pipe(str(path), city="town", k=3, encoding=encoding)  # a user column: one result per user
        ranked[encoding] = (result["user"], [cell["cell_id"] for cell in result["cells"]])
    assert printed["latin-1"] == printed["utf-8"] and "top-3 cells, best first" in printed["utf-8"]
    assert ranked["latin-1"] == ranked["utf-8"] and ranked["utf-8"][0] == "José"


def test_a_category_map_must_be_utf8(tmp_path):
    mapping = tmp_path / "map.json"
    mapping.write_bytes('{"mapping": {"Commercial": ["Brasserie du Café"]}}'.encode("latin-1"))
    at = mapping.read_bytes().index(b"\xe9") + 1
    with pytest.raises(ValueError) as refused:
        build_city(config(write(checkins(), tmp_path / "in.csv", "utf-8"), category_map=str(mapping)))
    assert str(refused.value) == (f"{mapping} line 1 is not valid UTF-8 (byte 0xe9 at byte {at} of the line): a JSON "
                                  f"mapping must be UTF-8: save it as UTF-8")


def test_the_commands_refuse_undecodable_input_and_unknown_encodings(tmp_path):
    """One `error:` line naming the file, the line and the way out, exit code 2; an unknown encoding while parsing."""
    latin1 = write(checkins(), tmp_path / "latin1.csv", "latin-1")
    line, at = first_bad_line(latin1)
    refused = run([*BUILD, "--input", str(latin1), "--output", str(tmp_path / "city")], env=ENV, cwd=REPO)
    assert refused.returncode == 2 and "Traceback" not in refused.stderr, refused.stderr[-3000:]
    assert [text for text in refused.stderr.splitlines() if "error" in text] == [
        f"error: {latin1} line {line} is not valid UTF-8 (byte 0xe9 at byte {at} of the line): {WAY_OUT}"]
    built = run([*BUILD, "--input", str(latin1), "--output", str(tmp_path / "city"), "--encoding", "latin-1"],
                env=ENV, cwd=REPO)
    assert built.returncode == 0, built.stderr[-3000:]
    assert "unmapped categories" not in built.stdout

    unknown = run([*BUILD, "--input", str(latin1), "--output", str(tmp_path / "other"), "--encoding", "klingon"],
                  env=ENV, cwd=REPO)
    assert unknown.returncode == 2 and not (tmp_path / "other").exists()
    assert unknown.stderr.strip().splitlines()[-1].endswith(
        "argument --encoding: encoding 'klingon' is not a text encoding Python knows (e.g. utf-8, latin-1, cp1252)")

    records = write(pd.DataFrame({"latitude": [40.7], "longitude": [-74.0], "local_time": ["2024-05-03 08:00"],
                                  "note": ["café"]}), tmp_path / "records.csv", "latin-1")
    predict = [sys.executable, "-m", "nextlocllm_hf.predict", "--model", str(tmp_path / "no-model"), "--city", "x",
               "--input", str(records)]
    line, at = first_bad_line(records)
    refused = run(predict, env=ENV, cwd=REPO)  # refused before the model is loaded
    assert refused.returncode == 2 and "Traceback" not in refused.stderr, refused.stderr[-3000:]
    assert [text for text in refused.stderr.splitlines() if "error" in text] == [
        f"error: {records} line {line} is not valid UTF-8 (byte 0xe9 at byte {at} of the line): {WAY_OUT}"]
    unknown = run([*predict, "--encoding", "klingon"], env=ENV, cwd=REPO)
    assert unknown.returncode == 2 and "argument --encoding: encoding 'klingon'" in unknown.stderr
