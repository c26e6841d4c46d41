"""mvc.lineage: audit a merge from its record (layer 5).

- `mvc.lineage.graph.lineage_graph(repo, rev)`: the ancestry DAG with each merge's recipe
  (JSON/DOT/Mermaid).
- `mvc.lineage.blame.blame(repo, rev, "FILE::TENSOR")`: per parent, the share of a tensor
  it contributed.
- `mvc.lineage.verify.verify(repo, rev)`: recompute the merge with the merge's own
  executor, compare hashes.
- `mvc.lineage.unmerge.unmerge(repo, rev, drop)`: the merge without one parent, committed
  on top of it.
- `mvc.lineage.extract.extract(repo, rev, parent, out_dir)`: a parent rebuilt from the
  merge and its masks.
- `mvc.lineage.export.export(repo, rev, "mergekit"|"model-card")`: the recipe for other
  tools.
- `recipe_line(repo, commit_id)`: one line for `mvc log`/`show`.

Import the functions from their modules: a module and its function share a name, so a
package-level alias would be replaced by the module as soon as the module is imported.

Names load lazily: `mvc log` imports this package for `recipe_line`, which must stay cheap.
verify, unmerge and extract compute on numpy, as a CPU merge does (torch only for a GPU
backend, or to read fp8 values).
"""

from __future__ import annotations

from mvc.lazy import lazy_exports
from mvc.lineage.records import recipe_line

_NAMES, __getattr__ = lazy_exports({"mvc.lineage.graph": ("lineage_graph", "to_dot", "to_mermaid")})
__all__ = ["recipe_line", *_NAMES]
