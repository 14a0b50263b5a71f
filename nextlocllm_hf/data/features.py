"""The explicit ``datasets.Features`` of a city's samples, its stored windows and its candidate-cell table."""

from __future__ import annotations

SEQUENCE_FIELDS = ("coordinates", "day", "hour", "duration", "poi", "cell")
TARGET_FIELDS = ("target_coordinates", "target_cell", "target_day", "target_hour", "target_duration", "target_time_gap")


def city_features(history_length: int = 40, current_length: int = 5, num_classes: int = 5):
    """Features of a sample (fixed-length lists): what a split's `WindowView` gathers for each window."""
    from datasets import Features, List, Value

    def seq(prefix: str, n: int) -> dict:
        return {
            f"{prefix}_coordinates": List(List(Value("float64"), length=2), length=n),
            f"{prefix}_day": List(Value("int64"), length=n),
            f"{prefix}_hour": List(Value("int64"), length=n),
            f"{prefix}_duration": List(Value("float32"), length=n),
            f"{prefix}_poi": List(List(Value("float32"), length=num_classes), length=n),
            f"{prefix}_cell": List(Value("int64"), length=n),
        }

    return Features({
        "city": Value("string"),
        "user_id": Value("string"),
        **seq("history", history_length),
        **seq("current", current_length),
        "target_coordinates": List(Value("float64"), length=2),
        "target_cell": Value("int64"),
        "target_day": Value("int64"),
        "target_hour": Value("int64"),
        "target_duration": Value("float32"),
        "target_time_gap": Value("float32"),
    })


def window_features():
    """Features of ``train/validation/test.parquet``: a split's windows (``start``: row of the first record)."""
    from datasets import Features, Value

    return Features({"city": Value("string"), "user_id": Value("string"), "start": Value("int64")})


def cell_features(num_classes: int = 5):
    """Features of ``cells.parquet``."""
    from datasets import Features, List, Value

    return Features({
        "cell_id": Value("int64"),
        "row": Value("int64"),
        "col": Value("int64"),
        "lat": Value("float64"),
        "lon": Value("float64"),
        "x": Value("float64"),
        "y": Value("float64"),
        "poi_counts": List(Value("int64"), length=num_classes),
        "poi_frequency": List(Value("float32"), length=num_classes),
        "n_records": Value("int64"),
        "top_categories": List(Value("string")),
    })
