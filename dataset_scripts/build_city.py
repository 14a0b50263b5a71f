#!/usr/bin/env python
"""Build a NextLocLLM city dataset folder from raw check-ins / trajectories: `nextlocllm-build-city` from a checkout.

    python dataset_scripts/build_city.py --format foursquare --input nyc_checkins.csv \
        --pois nyc_pois.csv --city nyc --output data/nyc

The command lives in ``nextlocllm_hf/build_city.py``; dataset_scripts/README.md describes the formats and the output.
"""

import sys
from pathlib import Path

try:
    import nextlocllm_hf  # noqa: F401
except ImportError:  # running from a checkout without `pip install -e .`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from nextlocllm_hf.build_city import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
