"""`mvc gc --prune-promised`: a lazy clone drops local copies the remote can give back.

It deletes only objects the promisor remote holds, and of those only the ones the
checked-out commit and the index do not need; a later command fetches them again on
demand. Every object the remote does not hold stays, referenced or not, since this copy
may be the last one anywhere. The remote's holdings are listed, not inferred from the
refs, so an object that never reached it (a local commit, an interrupted push) is kept.
"""

from __future__ import annotations

from mvc.errors import MvcError
from mvc.remote.config import get_remote
from mvc.remote.negotiate import remote_tensor_ids
from mvc.remote.receive import tensor_ids_of
from mvc.remote.url import open_transport
from mvc.repo import Repo
from mvc.repo.promised import promisor_remote
from mvc.repo.references import referenced_objects
from mvc.repo.staging import Staging
from mvc.store import GcReport


def checkout_objects(repo: Repo) -> set[str]:
    """Tensor objects of HEAD's commit and of the index."""
    head = repo.head()
    ids = tensor_ids_of(repo, {}, [head]) if head else set()
    staging = Staging(repo.git)
    for path in staging.paths():
        entry = staging.get(path)
        if entry is not None:
            ids.update(referenced_objects(path, repo.read_blob(entry.blob_id)))
    return ids


def prune_promised(repo: Repo) -> GcReport:
    """Delete the local copies the promisor holds that the checkout does not need."""
    remote = promisor_remote(repo)
    if remote is None:
        raise MvcError(
            "--prune-promised needs a lazy clone (a repository with a promisor remote)",
            hint="plain `mvc gc` deletes what nothing references",
        )
    config = get_remote(repo, remote)
    there = remote_tensor_ids(open_transport(config.url, config.endpoint))
    with repo.locked():
        local_only = {oid for oid in repo.store.ids() if oid not in there}
        return repo.store.gc(checkout_objects(repo) | local_only)
