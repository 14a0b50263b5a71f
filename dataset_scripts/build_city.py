#!/usr/bin/env python
"""Build a NextLocLLM city dataset folder from raw check-ins / trajectories: `nextlocllm-build-city` from a checkout.

    python dataset_scripts/build_city.py --format foursquare --input nyc_checkins.csv \
        --pois nyc_pois.csv --city nyc --output data/nyc

The command lives in ``nextlocllm_hf/build_city.py``; dataset_scripts/README.md describes the formats and the output.
It needs the package installed (`make install`, or `pip install -e .`): a checkout on `sys.path` is not enough, as
`nextlocllm_hf.modeling` is the top-level `modeling/` folder only through the install (setup.cfg's package_dir).
"""

import sys

from nextlocllm_hf.build_city import main

if __name__ == "__main__":
    sys.exit(main())
