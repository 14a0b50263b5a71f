"""Build report: what was read, what was kept, and every drop counted by reason."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field


@dataclass
class BuildReport:
    city: str = ""
    format: str = ""
    input_rows: int = 0
    input_users: int = 0
    drops: Counter = field(default_factory=Counter)  # records dropped, by reason
    user_drops: Counter = field(default_factory=Counter)  # whole users dropped, by reason
    poi_drops: Counter = field(default_factory=Counter)  # POIs dropped, by reason
    examples: dict = field(default_factory=dict)  # reason -> an example offending value
    unmapped_categories: Counter = field(default_factory=Counter)  # name -> POIs without a class
    notes: list = field(default_factory=list)
    warnings: list = field(default_factory=list)  # what builds but will not serve as the user expects
    info: dict = field(default_factory=dict)
    # reason -> [invalid rows, rows checked, field, example]: what `check_fraction` saw, so that the partitioned build
    # can check the fractions of the whole input after counting block by block
    checked: dict = field(default_factory=dict)
    defer_checks: bool = False  # count only; the partitioned build checks the merged report (`check_fractions`)

    def drop(self, reason: str, n: int, example=None, kind: str = "records") -> None:
        if n <= 0:
            return
        {"records": self.drops, "users": self.user_drops, "pois": self.poi_drops}[kind][reason] += int(n)
        if example is not None and reason not in self.examples:
            self.examples[reason] = repr(example)

    def check_fraction(self, reason: str, n_bad: int, n_total: int, field_name: str, example, max_fraction: float) -> None:
        """Raise a ``ValueError`` naming the field when too many rows are invalid, else count a drop."""
        seen = self.checked.setdefault(reason, [0, 0, field_name, None])
        seen[0], seen[1] = seen[0] + int(max(n_bad, 0)), seen[1] + int(n_total)
        if n_bad <= 0:
            return
        if seen[3] is None:
            seen[3] = example
        if not self.defer_checks and (n_total == 0 or n_bad / n_total > max_fraction):
            raise _too_many(reason, n_bad, n_total, field_name, example, max_fraction)
        self.drop(reason, n_bad, example)

    def merge(self, other: "BuildReport") -> None:
        """Add `other`'s counts (a block's or a partition's) to this report; examples and notes: the first seen."""
        self.input_rows += other.input_rows
        self.input_users += other.input_users
        for mine, theirs in ((self.drops, other.drops), (self.user_drops, other.user_drops),
                             (self.poi_drops, other.poi_drops), (self.unmapped_categories, other.unmapped_categories)):
            mine.update(theirs)
        for reason, example in other.examples.items():
            self.examples.setdefault(reason, example)
        for text in other.notes:
            self.note(text)
        for text in other.warnings:
            self.warn(text)
        for key, value in other.info.items():
            self.info.setdefault(key, value)
        for reason, (bad, total, field_name, example) in other.checked.items():
            seen = self.checked.setdefault(reason, [0, 0, field_name, example])
            seen[0], seen[1] = seen[0] + bad, seen[1] + total
            seen[3] = seen[3] if seen[3] is not None else example

    def check_fractions(self, max_fraction: float) -> None:
        """The `check_fraction` rule over everything merged: raise when a reason's fraction of the whole input is
        above `max_fraction`."""
        for reason, (bad, total, field_name, example) in self.checked.items():
            if bad and (total == 0 or bad / total > max_fraction):
                raise _too_many(reason, bad, total, field_name, example, max_fraction)

    def note(self, text: str) -> None:
        if text not in self.notes:
            self.notes.append(text)

    def warn(self, text: str) -> None:
        """A problem the build does not stop for (the city is usable, but not as the user expects): printed as
        `warning: ...` by `render`."""
        if text not in self.warnings:
            self.warnings.append(text)

    def to_dict(self) -> dict:
        return {
            "input_rows": self.input_rows,
            "input_users": self.input_users,
            "dropped_records": dict(self.drops),
            "dropped_users": dict(self.user_drops),
            "dropped_pois": dict(self.poi_drops),
            "drop_examples": dict(self.examples),
            "unmapped_categories": dict(self.unmapped_categories.most_common()),
            "notes": list(self.notes),
            "warnings": list(self.warnings),
            **self.info,
        }

    def render(self) -> str:
        i = self.info
        L = []
        L.append(f"== city {self.city!r} (format {self.format}) ==")
        L.append(f"input: {self.input_rows:,} rows, {self.input_users:,} users")
        for k in ("raw_points", "stay_points"):
            if k in i:
                L.append(f"  {k.replace('_', ' ')}: {i[k]:,}")
        L.append(f"records kept: {i.get('records_kept', 0):,} of {i.get('records_clean', 0):,} valid "
                 f"({i.get('users_kept', 0):,} users, {i.get('segments_kept', 0):,} segments); "
                 f"records in samples: {i.get('records_in_samples', 0):,}")
        if self.drops:
            L.append("dropped records: " + ", ".join(f"{k} {v:,}" for k, v in sorted(self.drops.items())))
        else:
            L.append("dropped records: none")
        if self.user_drops:
            L.append("dropped users: " + ", ".join(f"{k} {v:,}" for k, v in sorted(self.user_drops.items())))
        if i.get("records_window_tail"):
            L.append(f"not in any sample (kept, after a user's last window): {i['records_window_tail']:,} records")
        for k, v in self.examples.items():
            L.append(f"  e.g. {k}: {v}")
        g = i.get("grid", {})
        if g:
            L.append(f"grid: {g.get('cell_size_m')} m ground = {g.get('cell_size_projected', 0):.1f} m projected "
                     f"(ref lat {g.get('reference_lat', 0):.4f}), {g.get('n_rows')} rows x {g.get('n_cols')} cols")
        c = i.get("cells", {})
        if c:
            L.append(f"cells: {c.get('candidates', 0):,} candidates ({i.get('candidates_rule')}); visited {c.get('visited', 0):,}, "
                     f"with POIs {c.get('with_pois', 0):,}")
        p = i.get("pois", {})
        if p:
            per = ", ".join(f"{k} {v:,}" for k, v in p.get("per_class", {}).items())
            L.append(f"POIs: {p.get('read', 0):,} read ({p.get('source')}), {p.get('in_area', 0):,} in area, "
                     f"{p.get('classified', 0):,} classified [{per}], {p.get('via_root', 0):,} via root category")
        if self.poi_drops:
            L.append("dropped POIs: " + ", ".join(f"{k} {v:,}" for k, v in sorted(self.poi_drops.items())))
        if self.unmapped_categories:
            top = self.unmapped_categories.most_common()
            shown = ", ".join(f"{k!r} {v:,}" for k, v in top[:15])
            more = f" (+{len(top) - 15} more names, see city.json)" if len(top) > 15 else ""
            L.append(f"unmapped categories ({sum(self.unmapped_categories.values()):,} POIs, no class): {shown}{more}")
        d = i.get("durations", {})
        if d:
            L.append(f"durations (h): cap {d.get('cap_hours')}, clipped {d.get('clipped', 0):,}; "
                     f"target duration unknown (segment end) {d.get('target_unknown', 0):,}")
        s = i.get("samples", {})
        if s:
            L.append("samples: " + " / ".join(f"{k} {v:,}" for k, v in s.items())
                     + "   users: " + " / ".join(f"{k} {v:,}" for k, v in i.get("split_users", {}).items()))
        for n in self.notes:
            L.append(f"note: {n}")
        for w in self.warnings:
            L.append(f"warning: {w}")
        if "seconds" in i:
            L.append(f"built in {i['seconds']:.1f} s")
        return "\n".join(L)


def _too_many(reason: str, bad: int, total: int, field_name: str, example, max_fraction: float) -> ValueError:
    return ValueError(f"{reason}: {bad} of {total} rows have an invalid {field_name!r} (e.g. {example!r}); more than "
                      f"the allowed fraction {max_fraction:g} (--max-invalid-fraction). Check the column mapping / "
                      f"format options.")
