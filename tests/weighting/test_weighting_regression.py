"""Regression table: every method's output on a few fixed inputs (tests/resources/weighting_values.json),
so a refactor that changes a number is caught. Each method's entry names where its formula is
checked independently (a hand-worked case, a slower reference or the property harness); the test
also checks those tests exist.

Rewrite the table after an intended change (and say why in the commit):
    PYTHONPATH=src python tests/weighting/test_weighting_regression.py --write
"""

from __future__ import annotations

import ast
import json
import sys
from pathlib import Path

import pytest
import torch

from mtlkit.registry import WEIGHTINGS

TABLE = Path(__file__).parents[1] / "resources" / "weighting_values.json"
NAMES = ["a", "b", "c"]

#: where each method's values are checked against the definition (file::test)
TRACES = {
    "equal": ["test_weighting_properties.py::test_loss_method_permutation_equivariance"],
    "uncertainty": ["test_weighting.py::test_uncertainty_formula_by_hand"],
    "dwa": ["test_weighting.py::test_dwa_formula_by_hand"],
    "rlw": ["test_weighting.py::test_rlw_weights_are_seeded_softmax_of_normals"],
    "famo": ["test_weighting.py::test_famo_weights_and_logit_update_by_hand"],
    "imtl_l": ["test_weighting.py::test_imtl_l_formula"],
    "gls": ["test_weighting_new_methods.py::test_gls_by_hand_and_autograd_weights"],
    "stch": ["test_weighting_new_methods.py::test_stch_warm_up_nadir_and_smooth_max_by_hand"],
    "go4align": [
        "test_weighting_new_methods.py::test_go4align_weights_by_hand",
        "test_weighting_new_methods.py::test_kmeans_1d_matches_brute_force",
    ],
    "auto_lambda": [
        "test_weighting_auto_lambda.py::test_lambda_scales_the_base_method_and_adam_moves_it",
        "test_weighting_auto_lambda.py::test_meta_gradient_matches_second_order_autograd_and_finite_differences",
    ],
    "gradnorm": ["test_weighting.py::test_gradnorm_weight_gradient_and_renormalisation_by_hand"],
    "mgda": [
        "test_weighting_methods.py::test_mgda_hand_cases",
        "test_weighting_methods.py::test_mgda_is_min_norm_point_and_nonconflicting",
    ],
    "pcgrad": [
        "test_weighting_methods.py::test_pcgrad_hand_cases",
        "test_weighting_methods.py::test_pcgrad_gramian_form_matches_vector_algorithm",
    ],
    "graddrop": ["test_weighting_methods.py::test_graddrop_hand_cases"],
    "gradvac": ["test_weighting_methods.py::test_gradvac_matches_vector_algorithm_and_reaches_targets"],
    "cagrad": [
        "test_weighting_methods.py::test_cagrad_hand_cases_and_rescale",
        "test_weighting_methods.py::test_cagrad_stays_in_ball_and_maximises_worst_case",
    ],
    "imtl_g": [
        "test_weighting_methods.py::test_imtl_g_hand_cases",
        "test_weighting_methods.py::test_imtl_g_equal_projections_on_unit_gradients",
    ],
    "imtl": ["test_weighting.py::test_imtl_hybrid_scales_gradients_and_writes_scale_gradient"],
    "nash_mtl": [
        "test_weighting_methods.py::test_nash_fixed_point",
        "test_weighting.py::test_nash_class_follows_authors_normalisation_and_clip",
    ],
    "aligned_mtl": [
        "test_weighting_methods.py::test_aligned_hand_cases",
        "test_weighting_methods.py::test_aligned_matrix_has_equal_singular_values",
    ],
    "upgrad": [
        "test_weighting_methods.py::test_upgrad_hand_cases",
        "test_weighting_methods.py::test_upgrad_nonconflicting_and_matches_projection_reference",
    ],
    "db_mtl": ["test_weighting_methods.py::test_db_mtl_balances_norms_and_ignores_loss_scale"],
    "moco": ["test_weighting_new_methods.py::test_moco_first_steps_by_hand"],
    "sdmgrad": ["test_weighting_new_methods.py::test_sdmgrad_inner_loop_reaches_the_regularised_min_norm_point"],
    "modo": ["test_weighting_new_methods.py::test_modo_step_by_hand_and_simplex_projection"],
    "fairgrad": ["test_weighting_new_methods.py::test_fairgrad_solves_alpha_fair_condition"],
    "config": ["test_weighting_new_methods.py::test_config_hand_cases_and_pinv_reference"],
    "dualproj": ["test_weighting_new_methods.py::test_dualproj_matches_primal_projection"],
    "krum": ["test_weighting_new_methods.py::test_krum_by_hand_and_brute_force"],
    "trimmed_mean": ["test_weighting_new_methods.py::test_trimmed_mean_matches_sorted_reference"],
    "excess_mtl": ["test_weighting_new_methods.py::test_excess_mtl_two_steps_by_hand_and_gradient_scale_free"],
}


def _inputs() -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """The fixed inputs: (K x D gradients, K losses) for gradient methods; losses alone for the others."""
    gen = torch.Generator().manual_seed(2024)
    return {
        "random": (torch.randn(3, 5, generator=gen, dtype=torch.float64), torch.tensor([0.9, 1.7, 0.4])),
        "conflict": (
            torch.tensor([[1.0, 0.0, 0.5], [-0.8, 1.0, 0.0], [0.2, -0.6, 1.0]], dtype=torch.float64),
            torch.tensor([2.0, 0.5, 1.0]),
        ),
        "orthogonal_scaled": (
            torch.tensor([[3.0, 0.0, 0.0], [0.0, 0.5, 0.0], [0.0, 0.0, 1.0]], dtype=torch.float64),
            torch.tensor([1.0, 1.0, 1.0]),
        ),
    }


def compute() -> dict[str, dict[str, dict[str, list[float]]]]:
    """Each method's output (fresh instance, one call) on each fixed input, rounded for the file."""
    return {
        name: {
            case: {key: [round(v, 10) for v in values] for key, values in fields.items()}
            for case, fields in compute_one(name).items()
        }
        for name in WEIGHTINGS.names()
    }


def test_every_method_has_a_traced_table_entry():
    table = json.loads(TABLE.read_text())
    assert sorted(table["values"]) == WEIGHTINGS.names()
    assert sorted(TRACES) == WEIGHTINGS.names()
    for name, traces in TRACES.items():
        assert table["traces"][name] == traces
        for trace in traces:
            file, func = trace.split("::")
            tree = ast.parse((Path(__file__).parent / file).read_text())
            assert func in {n.name for n in ast.walk(tree) if isinstance(n, ast.FunctionDef)}, trace


@pytest.mark.parametrize("name", WEIGHTINGS.names())
def test_values_match_the_table(name):
    expected = json.loads(TABLE.read_text())["values"][name]
    got = compute_one(name)
    for case, fields in expected.items():
        for key, values in fields.items():
            assert got[case][key] == pytest.approx(values, rel=1e-5, abs=1e-6), (name, case, key)


#: closed forms on the orthogonal rows of norms (3, 0.5, 1) with unit losses, worked by hand
ORTHOGONAL_UPDATES = {
    "equal": None,
    "mgda": [1 / 3, 1 / 3, 1 / 3],  # loss+ with unit losses = l2: min-norm point of the unit vectors
    "imtl_g": [0.3, 0.3, 0.3],  # d = c (1, 1, 1) with sum_k c / n_k = 1
    "config": [1.5, 1.5, 1.5],  # g_u = (1, 1, 1) / sqrt3, length (3 + 0.5 + 1) / sqrt3
    "dualproj": [1.0, 1 / 6, 1 / 3],  # no conflict: the mean
    "upgrad": [1.0, 1 / 6, 1 / 3],  # no conflict: the mean
    "fairgrad": [1.0, 1.0, 1.0],  # alpha = 1: w_k n_k^2 = 1 / w_k, d_k = w_k n_k = 1
    "nash_mtl": [3**-0.5] * 3,  # equal components sqrt(||M||_F), clipped to norm 1
    "aligned_mtl": [0.5, 0.5, 0.5],  # sigma_min sum_k g_k / ||g_k||
    "krum": [0.0, 0.5, 0.0],  # nearest-neighbour distances 9.25, 1.25, 1.25: tie to the lower index
    "trimmed_mean": [0.0, 0.0, 0.0],  # coordinate-wise median of (3, 0, 0), (0, 0.5, 0), (0, 0, 1)
}


@pytest.mark.parametrize("name", [n for n in ORTHOGONAL_UPDATES if n in WEIGHTINGS])
def test_orthogonal_entries_match_closed_forms(name):
    values = json.loads(TABLE.read_text())["values"][name]["orthogonal_scaled"]
    if name == "equal":
        assert values["total"] == pytest.approx([3.0]) and values["weights"] == [1.0, 1.0, 1.0]
        return
    assert values["update"] == pytest.approx(ORTHOGONAL_UPDATES[name], rel=1e-6, abs=1e-9)


def compute_one(name: str) -> dict[str, dict[str, list[float]]]:
    """``compute()`` for one method."""
    cls = WEIGHTINGS.get(name)
    rows = {}
    for case, (g, losses) in _inputs().items():
        method = cls(NAMES)
        if method.needs_gradients:
            d = method.aggregate(g.clone(), losses.double())
            rows[case] = {"update": [float(v) for v in d], "weights": [float(v) for v in method.last_weights]}
        else:
            total = method.combine(losses.clone().requires_grad_(True))
            rows[case] = {"total": [float(total.detach())], "weights": [float(v) for v in method.last_weights]}
    return rows


if __name__ == "__main__":
    if "--write" in sys.argv:
        TABLE.parent.mkdir(parents=True, exist_ok=True)
        data = {
            "about": "each method's output on fixed inputs (fresh instance, one call); see "
            "tests/weighting/test_weighting_regression.py for the inputs and 'traces' for where each "
            "method's formula is checked independently",
            "traces": TRACES,
            "values": compute(),
        }
        TABLE.write_text(json.dumps(data, indent=1) + "\n")
        print(f"wrote {TABLE}")
