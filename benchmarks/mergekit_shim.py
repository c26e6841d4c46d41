"""``mergekit-yaml`` with one bug of mergekit 0.1.5 worked around, so it can merge BERT models.

mergekit 0.1.5 checks an optional weight (BERT's ``embeddings.position_ids``) with
``[w.name] + (w.aliases or [])`` while ``aliases`` is a tuple, which raises ``TypeError``
before any merging starts. This script hands ``plan_tensor`` the input weights with their
aliases as lists (the only change) and then runs mergekit-yaml's own entry point, so the
measured process does exactly what ``mergekit-yaml`` does.

Run as ``python benchmarks/mergekit_shim.py CONFIG OUT [mergekit-yaml options]``.
"""

from __future__ import annotations

import sys

import mergekit.plan
from mergekit.scripts.run_yaml import main

_plan_tensor = mergekit.plan.MergePlanner.plan_tensor


def _plan_tensor_with_list_aliases(self, weight, weights_in, models, cfg_reader):  # type: ignore[no-untyped-def]
    fixed = [
        w.model_copy(update={"aliases": list(w.aliases)}) if w.aliases else w for w in weights_in
    ]
    return _plan_tensor(self, weight, fixed, models, cfg_reader)


mergekit.plan.MergePlanner.plan_tensor = _plan_tensor_with_list_aliases

if __name__ == "__main__":
    sys.argv[0] = "mergekit-yaml"
    sys.exit(main())
