"""`pile-jax study` (pile_jax.study): grid expansion, objective resolution, and the quick
Margin-MSE study end to end on real Cranfield with real MiniLM weights (subprocess, one CPU
device): artifacts, and every cell's reported metrics against metrics recomputed from its runs."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from helpers.cli import user_env
from pile_jax import config as C
from pile_jax.study import expand_cells, resolve_objective, slugify

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_uniform_grid_has_16_cells_with_merged_objectives():
    cfg = C.load_config(os.path.join(ROOT, "configs", "study_uniform.yaml"))
    cells = expand_cells(cfg["study"])
    assert len(cells) == 16
    assert len({c["slug"] for c in cells}) == 16
    one = next(c for c in cells if c["levels"] == {"hard": "on", "soft": "margin_mse", "layers": "on"})
    assert one["objective"]["label_losses"] == {"pairwise_logistic": 1.0}
    assert one["objective"]["distill_losses"] == {"margin_mse": 1.0}
    assert one["objective"]["intermediate"]["hidden"] == 1.0
    off = next(c for c in cells if c["levels"] == {"hard": "off", "soft": "listwise_kl", "layers": "off"})
    assert "label_losses" not in off["objective"] and "intermediate" not in off["objective"]


def test_margin_mse_grid_and_quick_cell_selection():
    cfg = C.load_config(os.path.join(ROOT, "configs", "study_margin_mse.yaml"))
    cells = expand_cells(cfg["study"])
    assert len(cells) == 15
    assert {c["student_spec"]["kind"] for c in cells} == {"cross_encoder", "bert_dot", "colbert", "prett", "tk"}
    quick = C.load_config(os.path.join(ROOT, "configs", "study_margin_mse.yaml"), presets=["quick"])
    names = [c["name"] for c in expand_cells(quick["study"])]
    assert names == quick["study"]["cells"]
    with pytest.raises(C.ConfigError, match="unknown cell"):
        expand_cells(dict(quick["study"], cells=["nope"]))


def test_resolve_objective_teachers_and_intermediate():
    names = ["a", "b"]
    obj, inter, used = resolve_objective({"distill_losses": {"margin_mse": 1.0}, "teacher": "best"},
                                         teacher_names=names, best_teacher="b")
    assert obj["target"] == "teacher" and obj["teacher_index"] == 1 and used == "b" and inter is None
    obj, _, used = resolve_objective({"distill_losses": {"margin_mse": 1.0}, "teacher": "mean"},
                                     teacher_names=names, best_teacher="b")
    assert obj["target"] == "ensemble" and obj["ensemble"] == {"name": "mean"} and used.startswith("mean")
    obj, inter, used = resolve_objective({"label_losses": {"pairwise_logistic": 1.0},
                                          "intermediate": {"weight": 0.5, "hidden": 1.0}},
                                         teacher_names=names, best_teacher="a")
    assert obj["aux_losses"] == {"intermediate": 0.5} and inter == {"hidden": 1.0} and used is None
    from pile_jax.train.objective import Objective

    Objective.from_config(obj)  # a valid objective config
    assert slugify("ce2/hard=on,soft=margin_mse") == "ce2__hard-on_soft-margin_mse"


@pytest.fixture(scope="module")
def quick_study(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("study")
    out = tmp / "study"
    proc = subprocess.run(
        [sys.executable, "-m", "pile_jax.cli", "study", os.path.join(ROOT, "configs", "study_margin_mse.yaml"),
         "--quick", "--out", str(out)],
        cwd=ROOT, env=user_env(tmp, cheap_compile=True), capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return out


def test_quick_study_artifacts(quick_study):
    out = quick_study
    res = json.loads((out / "study.json").read_text())
    for name in ("study.md", "study.png", "log.txt"):
        assert (out / name).stat().st_size > 0
    md = (out / "study.md").read_text()
    assert "| cell |" in md and "latency ms/query" in md
    cells = res["cells"]
    assert list(cells) == res["config"]["study"]["cells"]
    assert {c["kind"] for c in cells.values()} == {"cross_encoder", "bert_dot", "colbert", "prett", "tk"}
    for t in res["teachers"]:
        assert (out / "teachers" / f"{t}.tsv").stat().st_size > 0
    for name, c in cells.items():
        assert name in md
        assert len(c["runs"]) == len(res["seeds"]) == c["metrics"]["ndcg_cut_10"]["n"]
        for fname in c["runs"]:
            rows = (out / fname).read_text().splitlines()
            assert rows and all(len(r.split()) == 6 and r.split()[1] == "Q0" for r in rows)
        assert c["kind"] in res["latency"] or c["student"] in res["latency"]
    for lat in res["latency"].values():
        assert lat["ms_per_query"] > 0 and np.isfinite(lat["ms_per_query"])
    # T1 = a single teacher, T2 = the mean ensemble of all teachers
    assert cells["bert_dot/kd=T1"]["objective"]["target"] == "teacher"
    assert cells["cross_encoder/kd=T2"]["objective"]["ensemble"]["name"] == "mean"


def test_quick_study_metrics_match_run_files(quick_study):
    out = quick_study
    from pile_jax.data import load_collection, read_run
    from pile_jax.train.evaluate import mean_metrics, run_metrics

    res = json.loads((out / "study.json").read_text())
    coll = load_collection("cranfield")
    qids = coll.split_qids("test")[: res["config"]["data"]["max_queries_per_split"]]
    assert res["eval_queries"] == len(qids)
    for name, c in res["cells"].items():
        per_run = []
        for fname in c["runs"]:
            run = {q: dict(v) for q, v in read_run(str(out / fname)).items()}
            ours = mean_metrics(run_metrics(run, coll.qrels, qids=qids))
            for m in ("ndcg_cut_10", "recip_rank", "map", "pnr"):
                assert ours[m] == pytest.approx(res["runs"][fname][m], abs=1e-9), (fname, m)
            per_run.append(ours)
        for m in ("ndcg_cut_10", "recip_rank"):
            vals = [r[m] for r in per_run]
            assert c["metrics"][m]["mean"] == pytest.approx(np.mean(vals), abs=1e-9), (name, m)
            want_std = np.std(vals, ddof=1) if len(vals) > 1 else 0.0
            assert c["metrics"][m]["std"] == pytest.approx(want_std, abs=1e-9), (name, m)


def test_quick_study_exports_every_cell_and_the_export_scores_as_in_the_run(quick_study):
    from pile_jax import rankers
    from pile_jax.data import load_collection, read_run

    out = quick_study
    res = json.loads((out / "study.json").read_text())
    coll = load_collection("cranfield")
    assert len(res["exported_models"]) == len(res["cells"])
    for slug, info in res["exported_models"].items():
        folder = out / "models" / slug
        assert "pile_jax version" in (folder / "README.md").read_text()
        ranker = rankers.load_student(folder)
        run = read_run(out / "runs" / f"{slug}__seed{info['seed']}.trec")
        qid = sorted(run)[0]
        docs = [d for d, _ in run[qid]][:4]
        got = np.asarray(ranker.score_fn(ranker.params, ranker.featurize([coll.queries[qid]], [[coll.docs[d] for d in docs]])))
        np.testing.assert_allclose(got[0], [dict(run[qid])[d] for d in docs], atol=1e-4, err_msg=slug)


def test_resolve_objective_fitted_targets():
    names = ["a", "b", "c"]
    obj, _, used = resolve_objective({"distill_losses": {"margin_mse": 1.0}, "teacher": "weighted_fit"},
                                     teacher_names=names, best_teacher="a", fitted={"weighted_fit": [0.2, 0.8, 0.0]})
    assert obj["ensemble"] == {"name": "weighted_mean", "weights": [0.2, 0.8, 0.0]} and used.startswith("weighted_fit")
    with pytest.raises(C.ConfigError, match="not fitted"):
        resolve_objective({"distill_losses": {"margin_mse": 1.0}, "teacher": "weighted_fit"},
                          teacher_names=names, best_teacher="a")
    obj, _, _ = resolve_objective({"distill_losses": {"margin_mse": 1.0}, "teacher": "pile_carry", "transfer": True,
                                   "ensemble": {"variant": "consensus"}}, teacher_names=names, best_teacher="a")
    assert obj["target"] == "teacher" and obj["teacher_index"] == 0 and "ensemble" not in obj and "transfer" not in obj


def test_pile_study_grid_differs_only_in_the_target():
    from pile_jax.schema import validate

    cfg = C.load_config(os.path.join(ROOT, "configs", "study_pile.yaml"))
    validate(cfg, job="study")
    cells = expand_cells(cfg["study"])
    assert len(cells) >= 11
    for c in cells:   # the same hard-label and distillation terms in every cell
        assert c["objective"]["label_losses"] == {"pairwise_logistic": 1.0}
        assert c["objective"]["distill_losses"] == {"margin_mse": 1.0}
    targets = {c["levels"]["target"] for c in cells}
    assert {"mean", "zscore_mean", "best_teacher", "weighted_fit", "pile_consensus", "pile_responsibility",
            "pile_regularised", "pile_sequential", "mean+transfer"} <= targets
    for preset in ("quick", "capacity"):
        validate(C.load_config(os.path.join(ROOT, "configs", "study_pile.yaml"), presets=[preset]), job="study")


def test_significance_against_scipy_and_holm_by_hand():
    from pile_jax.study import add_significance

    stats = pytest.importorskip("scipy.stats")
    rng = np.random.default_rng(5)
    qids = [f"q{i}" for i in range(30)]
    base = rng.random(30)
    vals = {"mean": base, "x": base + 0.05 + rng.normal(0, 0.1, 30), "y": base + rng.normal(0, 0.1, 30)}
    cells = {f"s/target={k}": {"student": "s", "levels": {"target": k}, "per_query": dict(zip(qids, v.tolist()))}
             for k, v in vals.items()}
    info = add_significance(cells, {"factors": {"target": {}}, "reference": "mean", "test": "paired_t"})
    assert info["family"] == ["s/target=x", "s/target=y"]
    p = {k: float(stats.ttest_rel(vals[k], base).pvalue) for k in ("x", "y")}
    for k in ("x", "y"):
        s = cells[f"s/target={k}"]["significance"]
        assert s["reference"] == "s/target=mean" and s["test"] == "paired_t"
        assert s["p"] == pytest.approx(p[k], rel=1e-8)
    lo, hi = sorted(p.values())
    want = {k: (2 * v if v == lo else max(2 * lo, v)) for k, v in p.items()}
    for k in ("x", "y"):
        assert cells[f"s/target={k}"]["significance"]["p_holm"] == pytest.approx(min(1.0, want[k]), rel=1e-8)
    assert cells["s/target=mean"]["significance"]["p"] is None
