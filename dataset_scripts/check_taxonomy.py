#!/usr/bin/env python
"""Check that the shipped Foursquare mapping covers every category name of some files.

    python dataset_scripts/check_taxonomy.py FILE [FILE ...] [--column category_name] [--root-column root_category]

Prints, per file and overall, the distinct names, how many map directly / via the root category,
and every unmapped name with its row count.  Exit status 1 if any name is unmapped.
"""

from __future__ import annotations

import argparse
import sys
from collections import Counter

import pandas as pd

# The package must be installed (`make install`, or `pip install -e .`), as for build_city.py.
from nextlocllm_hf.data.taxonomy import CategoryMapping


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("files", nargs="+")
    p.add_argument("--column", default="category_name")
    p.add_argument("--root-column", default="root_category")
    p.add_argument("--category-map", help="extra JSON mapping to apply on top of the shipped one")
    a = p.parse_args(argv)
    m = CategoryMapping.foursquare()
    if a.category_map:
        m = m.extended(CategoryMapping.from_json(a.category_map))
    names_all, unmapped_all = set(), Counter()
    for f in a.files:
        df = pd.read_csv(f, dtype=str, keep_default_na=False)
        cats = df[a.column]
        roots = df[a.root_column] if a.root_column in df.columns else None
        cls, st = m.map(cats, roots)
        direct, _ = m.map(cats)
        names = set(cats[cats.str.strip() != ""])
        names_all |= names
        unmapped_all.update(st["unmapped"])
        per = Counter(m.classes[i] for i in cls if i >= 0)
        print(f"{f}: {len(df):,} rows, {len(names)} distinct names; rows mapped directly {(direct >= 0).sum():,}, "
              f"via root {st['via_root']:,}, unmapped {sum(st['unmapped'].values()):,}")
        print("   rows per class: " + ", ".join(f"{c} {per[c]:,}" for c in m.classes))
    mapped = sum(1 for n in names_all if m.lookup(n) >= 0)
    print(f"overall: {len(names_all)} distinct non-empty names, {mapped} mapped by name, "
          f"{len(names_all) - mapped} not mapped by name")
    for name, n in unmapped_all.most_common():
        print(f"   unmapped: {name!r} ({n} rows)")
    return 1 if unmapped_all and set(unmapped_all) - {"<missing>"} else 0


if __name__ == "__main__":
    sys.exit(main())
