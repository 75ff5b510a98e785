"""kddet.benchmarks.recipes and .studies: the benchmarks' recipes and seeds, and every variant of every
ablation study a valid config that changes what it says."""

import pytest

from conftest import load_config

from kddet.benchmarks.ablate import out_dir, split_opts, study_seeds
from kddet.benchmarks import results
from kddet.benchmarks.results import choosing_splits
from kddet.benchmarks.recipes import (
    BENCHMARKS,
    FIVE_SEED_MODELS,
    TRANSFERS,
    all_recipes,
    config_of,
    recipe_config,
    recipe_options,
    run_folder,
    seeds_of,
)
from kddet.benchmarks.searches import SEARCHES, VAL, Search
from kddet.benchmarks.studies import STUDIES
from kddet.tuning import load_search_space


def test_the_student_gets_ten_seeds_baselines_and_card_methods_five_the_rest_three():
    assert seeds_of("student") == seeds_of("mobilenet_v2/student") == list(range(1, 11))
    assert seeds_of("student", [1, 2]) == [1, 2]
    assert seeds_of("fitnet") == seeds_of("mobilenet_v2/fitnet") == list(range(1, 11))
    assert seeds_of("virtual_teacher") == seeds_of("chen2017") == [1, 2, 3, 4, 5]
    assert seeds_of("pkt") == [1, 2, 3]
    assert seeds_of("pkt", [7, 7, 8]) == [7, 8]
    recipes = {name for benchmark in BENCHMARKS for name in all_recipes(benchmark)}
    assert set(FIVE_SEED_MODELS) <= recipes
    assert seeds_of("mobilenet_v2/combined_tuned") == [1, 2, 3, 4, 5]


def test_every_recipe_config_is_in_the_table():
    recipes = all_recipes()
    assert "fitnet" in recipes and "chen2017" in recipes
    assert not {"teacher_slim_r18", "student_slim_r8", "Base-Shapes", "Base-Distill"} & set(recipes)


def test_the_pretrained_benchmark_distils_its_mobilenet_v2_student_as_the_scratch_recipes_do():
    recipes = all_recipes("pretrained")
    assert {"fitnet", "fgfi", "nst", "chen2017", "combined", "virtual_teacher", "pkd"} <= set(recipes)
    assert not {"student", "Base-Distill"} & set(recipes)
    student = load_config(BENCHMARKS["pretrained"].student)
    assert student.MODEL.BACKBONE.NAME == "build_mobilenet_v2_fpn_backbone" and student.MODEL.WEIGHTS
    assert student.DATASETS.TEST == ("kddet_shapes_test",)
    # Every recipe but the one made on this benchmark has a scratch namesake it copies, some with
    # settings chosen on this benchmark: three by studies on its test set (card_pretrained,
    # hints_clip_pretrained), the others by searches on its validation set (results/tuning/).
    made_here = {"combined_tuned"}
    assert set(recipes) - set(all_recipes("scratch")) == made_here
    standardised = {"STANDARDIZE_TARGET": True, "STANDARDIZE_STUDENT": True}
    tuned = {
        "nst": {"NST": {"WEIGHT": 78.0}}, "chen2017": {"FITNET": {"WEIGHT": 0.0055}}, "pkd": {"PKD": {"WEIGHT": 4.6}},
        "review_kd": {"REVIEWKD": {"WEIGHT": 1.6}}, "dkd": {"DKD": {"BETA": 0.14}},
        "fgd": {"FGD": {"WEIGHT": 8.0, "STANDARDIZE": True}},
        "mgd": {"MGD": {"WEIGHT": 3.1e-6}}, "fbkd": {"FBKD": {"WEIGHT": 0.11}},
        "fitnet": {"FITNET": {"WEIGHT": 16.0, **standardised, "DECAY_TO_ZERO": True}},
        "fgfi": {"FGFI": {"WEIGHT": 0.038, "FIT_ADAPTERS_IN_WARMUP": True, **standardised}},
        "combined": {"NST": {"WEIGHT": 61.0}, "SP": {"WEIGHT": 370.0}},
    }  # fmt: skip
    for name in recipes:
        pretrained = load_config(recipe_config("pretrained", name))
        if name not in made_here:
            scratch = load_config(recipe_config("scratch", name))
            for node, chosen in tuned.get(name, {}).items():
                for key, value in chosen.items():
                    assert pretrained.KD[node][key] == value != scratch.KD[node][key], (name, key)
                    scratch.KD[node][key] = value
            assert pretrained.KD == scratch.KD, name  # losses, weights and teacher: only the student differs
        assert pretrained.MODEL.BACKBONE == student.MODEL.BACKBONE and pretrained.DATASETS == student.DATASETS
        assert run_folder("pretrained", name) == f"mobilenet_v2/{name}"
        assert seeds_of(run_folder("pretrained", name)) == seeds_of(name)
    assert run_folder("scratch", "student") == "student"


def test_the_headline_recipe_is_fgd_on_the_wide_student_inheriting_and_trains_ten_seeds():
    assert all_recipes("wide") == ["fgd_inheriting"]
    headline = load_config(recipe_config("wide", "fgd_inheriting"))
    wide, narrow = load_config(BENCHMARKS["wide"].student), load_config(BENCHMARKS["pretrained"].student)
    assert (wide.MODEL.FPN.OUT_CHANNELS, wide.MODEL.ROI_BOX_HEAD.FC_DIM) == (128, 512) != (
        narrow.MODEL.FPN.OUT_CHANNELS, narrow.MODEL.ROI_BOX_HEAD.FC_DIM
    )  # fmt: skip
    assert wide.MODEL.BACKBONE == narrow.MODEL.BACKBONE and wide.DATASETS.TEST == ("kddet_shapes_test",)
    headline.MODEL.META_ARCHITECTURE = wide.MODEL.META_ARCHITECTURE
    assert headline.MODEL == wide.MODEL and headline.DATASETS == wide.DATASETS  # the table's student, distilled
    fgd = load_config(recipe_config("pretrained", "fgd")).KD
    assert headline.KD.TEACHER.INIT_STUDENT and not fgd.TEACHER.INIT_STUDENT
    fgd.TEACHER.INIT_STUDENT = True
    assert headline.KD.FGD.WEIGHT == 0.48 != fgd.FGD.WEIGHT  # chosen by the search results/tuning/fgd_inheriting/
    fgd.FGD.WEIGHT = 0.48
    assert fgd.FGD.STANDARDIZE and not headline.KD.FGD.STANDARDIZE  # inheriting, it reads the teacher's raw maps
    fgd.FGD.STANDARDIZE = False
    assert headline.KD == fgd
    assert seeds_of(run_folder("wide", "fgd_inheriting")) == seeds_of("student") == list(range(1, 11))


def test_the_table_names_the_split_that_chose_each_row_by_its_recipe_folder():
    chosen = choosing_splits("pretrained", ["fitnet", "fgd", "combined_tuned", "kd"], "kddet_shapes_test")
    assert chosen == {
        "val": "kddet_shapes_val", "test": "kddet_shapes_test", "searched": ["fitnet", "fgd"],
        "on_test": ["combined_tuned"],
    }  # fmt: skip
    # The pretrained student's FGD search chose nothing for the headline recipe of another folder.
    assert choosing_splits("wide", ["fgd"], "kddet_shapes_test")["searched"] == []


def test_a_recipe_chosen_on_test_stays_so_until_it_carries_its_searchs_choice(monkeypatch, tmp_path):
    search = Search("combined_tuned", "mobilenet_v2/combined_tuned", budget=4)
    monkeypatch.setattr(Search, "space", property(lambda self: tmp_path / self.name / "space.yaml"))
    (tmp_path / "combined_tuned").mkdir()
    (tmp_path / "combined_tuned/chosen.yaml").write_text("KD: {NST: {WEIGHT: 30.0}}\n")
    monkeypatch.setattr(results, "SEARCHES", {"combined_tuned": search})
    assert "combined_tuned" in results.CHOSEN_ON_TEST
    assert choosing_splits("pretrained", ["combined_tuned"], "kddet_shapes_test") == {
        "val": "kddet_shapes_val", "test": "kddet_shapes_test", "searched": [], "on_test": ["combined_tuned"]
    }  # fmt: skip
    monkeypatch.setattr(results, "CHOSEN_ON_TEST", set())
    assert choosing_splits("pretrained", ["combined_tuned"], "kddet_shapes_test")["searched"] == ["combined_tuned"]


@pytest.mark.parametrize("study", sorted(STUDIES))
def test_every_variant_loads_and_changes_what_it_says(study):
    study = STUDIES[study]
    assert study.variants and study.description and "\n" not in study.description
    # The split its table names is the one its baseline is evaluated on, by its config or by option.
    opts = split_opts(study.baseline, study.split)
    assert load_config(study.baseline_config, *map(str, opts)).DATASETS.TEST == (study.split,)
    for variant in study.variants:
        opts = variant.options
        cfg = load_config(config_of(variant.recipe), *map(str, opts))  # an unknown key would raise here
        for key, value in zip(opts[::2], opts[1::2]):
            node = cfg
            for part in key.split("."):
                node = node[part]
            expected = list(value) if isinstance(value, (list, tuple)) and isinstance(node, list) else value
            assert node == expected, (variant.name, key)


def test_the_studies_of_the_old_script_are_all_here_with_their_seeds():
    assert len(STUDIES) == 25
    assert STUDIES["variance"].seeds == STUDIES["variance_pretrained"].seeds == (1, 2, 3, 4, 5)
    assert STUDIES["variance_sources_pretrained"].seeds == tuple(range(1, 11))
    assert STUDIES["balance"].seeds == (1, 2, 3)
    fitnet = STUDIES["fitnet"]
    assert study_seeds(fitnet, "student", ()) == list(range(1, 11))  # the baseline: its table's runs
    assert study_seeds(fitnet, "fitnet", ()) == list(range(1, 11))  # the recipe as committed: its table's too
    assert study_seeds(fitnet, "fitnet", ("KD.FITNET.WEIGHT", 0.1)) == [1, 2, 3]
    assert study_seeds(STUDIES["balance"], "kd", ("KD.KD.WEIGHT", 1.0)) == [1, 2, 3]
    assert study_seeds(fitnet, "fitnet", ("KD.FITNET.WEIGHT", 0.1), [4]) == [4]


def test_a_recipe_as_committed_shares_the_results_tables_runs_and_a_variant_has_its_own(tmp_path):
    assert out_dir(tmp_path, "fitnet", 0, "fitnet", ()) == tmp_path / "full/fitnet"
    assert out_dir(tmp_path, "x", 0, "mobilenet_v2/student", ()) == tmp_path / "full/mobilenet_v2/student"
    assert out_dir(tmp_path, "fitnet", 2, "fitnet", ("KD.FITNET.WEIGHT", 0.1)) == tmp_path / "ablation/fitnet/2"
    # Scored on another split than the table's, a recipe as committed has runs of its own, shared by studies.
    student = "mobilenet_v2/student"
    assert out_dir(tmp_path, "x", 0, student, (), "kddet_shapes_test") == tmp_path / "full/mobilenet_v2/student"
    assert (
        out_dir(tmp_path, "x", 0, student, (), "kddet_shapes_val") == tmp_path / "ablation/kddet_shapes_val" / student
    )
    assert split_opts(student, "kddet_shapes_val") == ["DATASETS.TEST", ("kddet_shapes_val",)]


@pytest.mark.parametrize("study", [name for name in STUDIES if name.endswith("pretrained")])
def test_the_pretrained_studies_compare_the_mobilenet_v2_student_with_itself(study):
    study = STUDIES[study]
    assert study.baseline == "mobilenet_v2/student"
    baseline = load_config(study.baseline_config)
    assert baseline.MODEL.BACKBONE.NAME == "build_mobilenet_v2_fpn_backbone" and not baseline.KD.LOSSES
    for variant in study.variants:
        cfg = load_config(config_of(variant.recipe), *map(str, variant.options))
        assert cfg.MODEL.BACKBONE == baseline.MODEL.BACKBONE and cfg.MODEL.WEIGHTS == baseline.MODEL.WEIGHTS


@pytest.mark.parametrize("study", ["fast_teacher", "fast_teacher_nst"])
def test_a_fast_teacher_study_changes_only_how_the_teacher_computes(study):
    study = STUDIES[study]
    baseline = load_config(study.baseline_config)
    (variant,) = study.variants
    assert variant.recipe == study.baseline
    cfg = load_config(config_of(variant.recipe), *map(str, variant.options))
    assert (cfg.KD.TEACHER.PRECISION, cfg.KD.TEACHER.CHANNELS_LAST) == ("bf16", True)
    cfg.KD.TEACHER.PRECISION, cfg.KD.TEACHER.CHANNELS_LAST = (
        baseline.KD.TEACHER.PRECISION,
        baseline.KD.TEACHER.CHANNELS_LAST,
    )
    assert cfg.dump() == baseline.dump()


@pytest.mark.parametrize("search", SEARCHES.values(), ids=lambda s: s.name)
def test_every_search_tunes_keys_of_its_recipe_on_the_validation_split(search):
    recipe = load_config(search.config)
    dimensions = load_search_space(str(search.space), recipe)  # stops on a key the recipe lacks
    assert dimensions and all(d.key.startswith("KD.") for d in dimensions)
    assert VAL == "kddet_shapes_val" and search.startup_trials < search.budget
    # the recipes of the tables with a pretrained student (results/embedded.md, embedded_wide.md)
    assert search.recipe.split("/")[0] in ("mobilenet_v2", "mobilenet_v2_wide")


def test_the_transfer_rows_run_the_pretrained_recipes_as_shipped_on_the_scratch_student():
    """Each transfer row is its scratch namesake with the pretrained recipe's distillation settings, so
    only the student differs; the headline's also has the headline student's widths. They are rows of
    the scratch table, five seeds each."""
    scratch_student = load_config(BENCHMARKS["scratch"].student)
    shipped = {f"transfer/{name}": recipe_config("pretrained", name) for name in ("fitnet", "fgfi", "nst", "chen2017")}
    shipped["transfer/fgd_inheriting"] = recipe_config("wide", "fgd_inheriting")
    headline = load_config(shipped["transfer/fgd_inheriting"])
    assert all_recipes("scratch")[-len(TRANSFERS) :] == list(TRANSFERS)
    assert set(TRANSFERS) == {*shipped, "transfer/student_wide"}
    assert not set(TRANSFERS) & set(all_recipes("pretrained") + all_recipes("wide"))
    for name in TRANSFERS:
        cfg = load_config(recipe_config("scratch", name), *map(str, recipe_options("scratch", name)))
        assert cfg.MODEL.BACKBONE == scratch_student.MODEL.BACKBONE and not cfg.MODEL.WEIGHTS
        if name in shipped:
            assert cfg.KD == load_config(shipped[name]).KD, name
        if name.endswith(("_wide", "_inheriting")):
            widths = (cfg.MODEL.FPN.OUT_CHANNELS, cfg.MODEL.ROI_BOX_HEAD.FC_DIM)
            assert widths == (headline.MODEL.FPN.OUT_CHANNELS, headline.MODEL.ROI_BOX_HEAD.FC_DIM), name
        assert seeds_of(name) == seeds_of(run_folder("scratch", name)) == [1, 2, 3, 4, 5]
        assert recipe_options("pretrained", name) == ()
