"""convert --head-type: the output head (or the tied embeddings) at its own type."""

from __future__ import annotations

from pathlib import Path

import pytest
from test_plan import SHAPES, plan_of, write_model

from nntrtool.cli.app import main
from nntrtool.errors import UsageError
from nntrtool.format import NntrFile
from nntrtool.qtypes import Q4_0, Q6_K, Q8_0


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_model(tmp_path_factory.mktemp("head") / "m")


def types(plan) -> dict:
    return {t.name: t.ttype for t in plan.tensors}


def test_untied_head_gets_the_head_type(model: Path) -> None:
    plan = plan_of(model, head_type="q6_k")
    got = types(plan)
    assert got["lm_head.weight"] is Q6_K and got["model.embed_tokens.weight"] is Q4_0
    assert plan.tensor("lm_head.weight").reason == "--head-type q6_k"
    assert plan.to_config()["head_type"] == "q6_k"
    assert plan_of(model).to_config()["head_type"] is None


def test_tied_embeddings_get_the_head_type(tmp_path: Path) -> None:
    tied = write_model(tmp_path / "t", config={"tie_word_embeddings": True})
    assert types(plan_of(tied, head_type="q6_k"))["model.embed_tokens.weight"] is Q6_K
    no_head = write_model(tmp_path / "n", [s for s in SHAPES if s[0] != "lm_head.weight"])
    assert types(plan_of(no_head, head_type="q8_0"))["model.embed_tokens.weight"] is Q8_0


def test_head_type_falls_back_and_wins_over_type(tmp_path: Path, model: Path) -> None:
    narrow = [("model.embed_tokens.weight", (64, 96)), ("lm_head.weight", (64, 96))]
    plan = plan_of(write_model(tmp_path / "n", narrow), head_type="q6_k")
    head = plan.tensor("lm_head.weight")
    assert head.ttype is Q8_0 and head.fallback and "not a multiple of 256" in head.reason
    plan = plan_of(model, head_type="q8_0", type_overrides=("lm_head=q4_0", "embed=q6_k"))
    assert types(plan)["lm_head.weight"] is Q8_0
    assert types(plan)["model.embed_tokens.weight"] is Q6_K


def test_bad_head_type(model: Path) -> None:
    with pytest.raises(UsageError, match="--head-type 'q3_k' is not known"):
        plan_of(model, head_type="q3_k")


def test_cli_writes_the_head_at_its_type(model: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "h.nntr"
    with pytest.raises(SystemExit) as ex:
        main(["convert", str(model), str(out), "--head-type", "q6_k", "-q"])
    assert ex.value.code == 0
    with NntrFile(out) as nf:
        kinds = {e.name: e.ttype for e in nf.tensors}
        assert kinds["lm_head.weight"] is Q6_K
        assert nf.config["nntrtool"]["head_type"] == "q6_k"
    with pytest.raises(SystemExit) as ex:
        main(["verify", str(out), str(model), "-q", "--json"])
    assert ex.value.code == 0
