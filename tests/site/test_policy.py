"""The site policy: every key parsed strictly, every refusal reason stated in plain words."""

from __future__ import annotations

import hashlib
import re
import tomllib
from dataclasses import FrozenInstanceError
from decimal import ROUND_FLOOR, Decimal
from pathlib import Path
from typing import Any

import dp_accounting
import pytest

from fedcare.cli import main
from fedcare.cli.policy import POLICY_FILE_HELP
from fedcare.common.config import STRATEGIES, RunConfig
from fedcare.common.errors import ConfigError
from fedcare.privacy import PrivacyLedger
from fedcare.privacy.accounting import RoundSpend
from fedcare.privacy.ledger import LedgerEntry
from fedcare.privacy.statement import format_epsilon
from fedcare.site.policy import (
    BUILT_IN_SOURCE,
    MEANINGS,
    POLICY_FILENAME,
    SIMULATION_SOURCE,
    SitePolicy,
    check_run,
    check_spend,
    default_policy,
    describe,
    effective_budget,
    load_policy,
    parse_policy,
    permissive_policy,
    policy_path_for,
    policy_warnings,
    project_hash,
)

HASH_A = "a" * 64
HASH_B = "0123456789abcdef" * 4


def problems_of(mapping: dict[str, Any]) -> tuple[str, ...]:
    with pytest.raises(ConfigError) as err:
        parse_policy(mapping, where="site-policy.toml")
    return err.value.problems


def spend(policy: SitePolicy | None = None, **numbers: float) -> list[str]:
    """check_spend with harmless numbers, overridden by ``numbers``."""
    args: dict[str, Any] = {"noise_multiplier": 1.0, "run_epsilon": 1.0, "lifetime_before": 0.0,
                            "lifetime_after": 1.0, "lifetime_budget": 5.0, "delta": 1e-3,
                            "accountant": "rdp", **numbers}
    return check_spend(policy or default_policy(), **args)


# ------------------------------------------------------------------ parsing


def test_empty_file_gives_the_documented_defaults() -> None:
    policy = parse_policy({}, where="p.toml")

    assert (policy.require_dp, policy.min_noise_multiplier, policy.max_epsilon_per_run,
            policy.max_delta, policy.lifetime_epsilon_budget, policy.allowed_bundles,
            policy.max_rounds, policy.allowed_strategies, policy.require_secure_aggregation,
            policy.allow_evaluation_metrics, policy.allow_fine_tuning) == (
        True, 0.3, 3.0, 1e-3, 5.0, "any", 100, STRATEGIES, False, True, True)
    assert policy.source == "p.toml" and not policy.simulation
    assert policy == SitePolicy(source="p.toml")


def test_policy_is_frozen() -> None:
    with pytest.raises(FrozenInstanceError):
        default_policy().max_rounds = 5  # type: ignore[misc]


@pytest.mark.parametrize(("key", "value", "expected"), [
    ("require-dp", False, False),
    ("min-noise-multiplier", 0, 0.0),
    ("min-noise-multiplier", 1.1, 1.1),
    ("max-epsilon-per-run", 2, 2.0),
    ("max-delta", 1e-5, 1e-5),
    ("lifetime-epsilon-budget", 8, 8.0),
    ("allowed-bundles", "any", "any"),
    ("allowed-bundles", [HASH_A, HASH_B], (HASH_A, HASH_B)),
    ("allowed-bundles", [HASH_B.upper()], (HASH_B,)),
    ("max-rounds", 1, 1),
    ("allowed-strategies", ["fedavg", "krum"], ("fedavg", "krum")),
    ("require-secure-aggregation", True, True),
    ("allow-evaluation-metrics", False, False),
    ("allow-fine-tuning", False, False),
])
def test_good_value_is_accepted(key: str, value: object, expected: object) -> None:
    policy = parse_policy({key: value}, where="p.toml")

    stored = getattr(policy, key.replace("-", "_"))
    assert stored == expected and type(stored) is type(expected)


@pytest.mark.parametrize(("key", "value", "shown"), [
    ("require-dp", 1, "1"),
    ("require-dp", "true", '"true"'),
    ("min-noise-multiplier", -0.1, "-0.1"),
    ("min-noise-multiplier", float("inf"), "inf"),
    ("min-noise-multiplier", "0.5", '"0.5"'),
    ("min-noise-multiplier", True, "true"),
    ("max-epsilon-per-run", 0, "0"),
    ("max-epsilon-per-run", float("nan"), "nan"),
    ("max-delta", 0, "0"),
    ("max-delta", 1, "1"),
    ("max-delta", 1.5, "1.5"),
    ("lifetime-epsilon-budget", -1, "-1"),
    ("lifetime-epsilon-budget", float("inf"), "inf"),
    ("allowed-bundles", "all", '"all"'),
    ("allowed-bundles", [], "[]"),
    ("allowed-bundles", ["abc"], '["abc"]'),
    ("allowed-bundles", [HASH_A, HASH_A.upper()], f'["{HASH_A}", "{HASH_A.upper()}"]'),
    ("allowed-bundles", HASH_A, f'"{HASH_A}"'),
    ("max-rounds", 0, "0"),
    ("max-rounds", 10.0, "10.0"),
    ("max-rounds", True, "true"),
    ("allowed-strategies", "fedavg", '"fedavg"'),
    ("allowed-strategies", [], "[]"),
    ("allowed-strategies", ["fedavg", "fedfoo"], '["fedavg", "fedfoo"]'),
    ("allowed-strategies", ["krum", "krum"], '["krum", "krum"]'),
    ("require-secure-aggregation", "no", '"no"'),
    ("allow-evaluation-metrics", 0, "0"),
    ("allow-fine-tuning", None, "None"),
])
def test_bad_value_is_rejected_naming_key_and_value(key: str, value: object,
                                                     shown: str) -> None:
    problems = problems_of({key: value})

    assert len(problems) == 1
    assert problems[0].startswith(f"site-policy.toml: {key} must be ")
    assert problems[0].endswith(f"; got {shown}")


def test_unknown_key_is_rejected_with_its_name_and_the_known_keys() -> None:
    (problem,) = problems_of({"max-round": 3})

    assert problem.startswith("site-policy.toml: unknown key 'max-round'; known keys: ")
    assert "max-rounds" in problem


def test_all_problems_are_reported_at_once() -> None:
    problems = problems_of({"require-dp": "yes", "max-delta": 2, "bogus": 1, "max-rounds": 0,
                            "format": "other"})

    assert len(problems) == 5
    assert {p.split(":")[1].split()[0] for p in problems} == {
        "require-dp", "max-delta", "unknown", "max-rounds", "format"}


@pytest.mark.parametrize(("header", "ok"), [
    ({"format": "fedcare-site-policy", "version": 1}, True),
    ({"format": "fedcare-site-policy"}, True),
    ({"version": 2}, False),
    ({"version": True}, False),
    ({"format": "fedcare-privacy-ledger"}, False),
])
def test_optional_format_and_version_must_match(header: dict[str, Any], ok: bool) -> None:
    if ok:
        assert parse_policy(header, where="p") == SitePolicy(source="p")
    else:
        with pytest.raises(ConfigError, match="must be"):
            parse_policy(header, where="p")


def test_constructing_a_bad_policy_directly_is_refused() -> None:
    with pytest.raises(ConfigError, match="max-delta must be a number in"):
        SitePolicy(max_delta=0.0)


def test_to_mapping_round_trips() -> None:
    policy = SitePolicy(allowed_bundles=(HASH_A,), allowed_strategies=("fedavg",), max_rounds=7)

    assert parse_policy(policy.to_mapping(), where=BUILT_IN_SOURCE) == policy


# ------------------------------------------------------------------ loading


def test_load_policy_reads_a_toml_file(tmp_path: Path) -> None:
    path = tmp_path / "site-policy.toml"
    path.write_text('format = "fedcare-site-policy"\nversion = 1\nmax-rounds = 20\n'
                    f'allowed-bundles = ["{HASH_A}"]\n')

    policy = load_policy(path)

    assert (policy.max_rounds, policy.allowed_bundles, policy.source) == (
        20, (HASH_A,), str(path))


def test_load_policy_none_is_the_built_in_default() -> None:
    assert load_policy(None) == default_policy()
    assert default_policy().source == BUILT_IN_SOURCE


def test_missing_policy_file_is_an_error_naming_the_path(tmp_path: Path) -> None:
    path = tmp_path / "nope.toml"
    expected = f"{path} must be an existing file; got no such file"

    with pytest.raises(ConfigError, match=re.escape(expected)):
        load_policy(path)


def test_unreadable_policy_is_an_error_naming_the_path(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=re.escape(f"{tmp_path} must be a readable file")):
        load_policy(tmp_path)  # a folder


def test_invalid_toml_is_an_error_naming_the_path(tmp_path: Path) -> None:
    path = tmp_path / "p.toml"
    path.write_text("max-rounds = = 3\n")

    with pytest.raises(ConfigError, match=re.escape(f"{path}: must be valid TOML")):
        load_policy(path)


def test_duplicate_key_in_toml_is_an_error(tmp_path: Path) -> None:
    path = tmp_path / "p.toml"
    path.write_text("max-rounds = 3\nmax-rounds = 4\n")

    with pytest.raises(ConfigError, match="must be valid TOML"):
        load_policy(path)


def test_a_table_is_not_a_policy_key(tmp_path: Path) -> None:
    path = tmp_path / "p.toml"
    path.write_text("[policy]\nmax-rounds = 3\n")

    with pytest.raises(ConfigError, match="unknown key 'policy'"):
        load_policy(path)


def test_policy_path_prefers_the_explicit_file(tmp_path: Path) -> None:
    (tmp_path / POLICY_FILENAME).write_text("")
    explicit = tmp_path / "elsewhere.toml"

    assert policy_path_for(tmp_path, explicit) == explicit


def test_policy_path_falls_back_to_the_state_dir_file(tmp_path: Path) -> None:
    (tmp_path / POLICY_FILENAME).write_text("")

    assert policy_path_for(tmp_path, None) == tmp_path / POLICY_FILENAME


def test_policy_path_is_none_without_any_file(tmp_path: Path) -> None:
    assert policy_path_for(tmp_path, None) is None


# ------------------------------------------------------------------ describe


def test_describe_lists_every_key_value_and_the_source() -> None:
    text = describe(default_policy())

    assert text.splitlines()[0] == "# site policy in force: built-in default"
    assert "require-dp                 = true " in text
    assert "max-delta                  = 0.001 " in text
    assert 'allowed-bundles            = "any" ' in text
    assert sum(1 for line in text.splitlines() if not line.startswith("#")) == len(MEANINGS) + 2
    assert 'format                     = "fedcare-site-policy"' in text


def test_describe_is_a_valid_policy_file_for_the_same_policy() -> None:
    policy = SitePolicy(allowed_bundles=(HASH_A,), max_rounds=12, require_dp=False)

    assert parse_policy(tomllib.loads(describe(policy)), where=BUILT_IN_SOURCE) == policy


def test_the_default_policy_has_no_warnings() -> None:
    assert policy_warnings(default_policy()) == []


def test_weakening_settings_are_warned_about() -> None:
    policy = SitePolicy(require_dp=False, min_noise_multiplier=0, max_epsilon_per_run=6.0)

    assert [w.split(" ")[0] for w in policy_warnings(policy)] == [
        "require-dp", "min-noise-multiplier", "max-epsilon-per-run"]
    assert policy_warnings(policy)[2] == ("max-epsilon-per-run = 6.0 is above "
                                         "lifetime-epsilon-budget = 5.0: the lifetime budget "
                                         "binds first")


def test_the_simulation_policy_is_not_warned_about() -> None:
    assert policy_warnings(permissive_policy(RunConfig(dp_mode="off"))) == []


# ------------------------------------------------------------------ check_run


def test_default_policy_accepts_the_default_run() -> None:
    assert check_run(default_policy(), RunConfig(), bundle_hash=HASH_A) == []


@pytest.mark.parametrize(("policy", "changes", "reason"), [
    (SitePolicy(), {"dp_mode": "off"},
     'policy: dp-mode must not be off (require-dp = true); got "off"'),
    (SitePolicy(min_noise_multiplier=0.5), {"dp_mode": "noise-multiplier",
                                            "noise_multiplier": 0.4},
     "policy: noise-multiplier must be >= 0.5 (min-noise-multiplier = 0.5); got 0.4"),
    (SitePolicy(max_epsilon_per_run=2), {"target_epsilon": 2.5},
     "policy: target-epsilon must be <= 2 (max-epsilon-per-run = 2.0); got 2.5 "
     "(this run, delta=1e-03, PLD)"),
    (SitePolicy(max_delta=1e-5), {"delta": 1e-4},
     "policy: delta must be <= 1e-05 (max-delta = 1e-05); got 0.0001"),
    (SitePolicy(max_rounds=5), {"num_rounds": 6},
     "policy: num-rounds must be <= 5 (max-rounds = 5); got 6"),
    (SitePolicy(allowed_strategies=("fedavg", "fedprox")), {"strategy": "krum"},
     'policy: strategy must be one of allowed-strategies (allowed-strategies = '
     '["fedavg", "fedprox"]); got "krum"'),
    (SitePolicy(require_secure_aggregation=True), {},
     'policy: secure-aggregation must not be none (require-secure-aggregation = true); '
     'got "none"'),
    (SitePolicy(allow_fine_tuning=False), {"personalisation": "offset", "finetune_epochs": 2},
     "policy: finetune-epochs must be 0 (allow-fine-tuning = false); got 2"),
    (SitePolicy(), {"malicious_sites": "0,1"},
     'policy: malicious-sites must be empty at a deployed site (simulated attacks and faults '
     'run only in simulations); got "0,1"'),
    (SitePolicy(), {"fail_sites": "2"},
     'policy: fail-sites must be empty at a deployed site (simulated attacks and faults '
     'run only in simulations); got "2"'),
])
def test_each_static_reason(policy: SitePolicy, changes: dict[str, Any], reason: str) -> None:
    assert check_run(policy, RunConfig(**changes), bundle_hash=HASH_A) == [reason]


@pytest.mark.parametrize(("policy", "changes"), [
    (SitePolicy(min_noise_multiplier=0.5), {"dp_mode": "noise-multiplier",
                                            "noise_multiplier": 0.5}),
    (SitePolicy(max_epsilon_per_run=2), {"target_epsilon": 2.0}),
    (SitePolicy(max_delta=1e-5), {"delta": 1e-5}),
    (SitePolicy(max_rounds=5), {"num_rounds": 5}),
    (SitePolicy(require_dp=False), {"dp_mode": "off", "delta": 0.5}),  # no DP: delta moot
    (SitePolicy(max_epsilon_per_run=0.5), {"dp_mode": "noise-multiplier"}),  # check_spend's job
    (SitePolicy(allow_fine_tuning=False), {"personalisation": "offset"}),
])
def test_limits_are_inclusive_and_only_apply_where_they_mean_something(
        policy: SitePolicy, changes: dict[str, Any]) -> None:
    assert check_run(policy, RunConfig(**changes), bundle_hash=HASH_A) == []


def test_pinned_bundles_refuse_another_hash() -> None:
    policy = SitePolicy(allowed_bundles=(HASH_A,))

    assert check_run(policy, RunConfig(), bundle_hash=HASH_B) == [
        f'policy: bundle hash must be one of allowed-bundles (1 pinned hash); got "{HASH_B}"']


def test_pinned_bundles_accept_a_listed_hash_in_any_case() -> None:
    policy = SitePolicy(allowed_bundles=(HASH_A, HASH_B))

    assert check_run(policy, RunConfig(), bundle_hash=HASH_B.upper()) == []


def test_pinned_bundles_refuse_an_unknown_hash() -> None:
    policy = SitePolicy(allowed_bundles=(HASH_A, HASH_B))

    for unknown in ("", None):
        assert check_run(policy, RunConfig(), bundle_hash=unknown) == [  # type: ignore[arg-type]
            'policy: bundle hash must be one of allowed-bundles (2 pinned hashes); got "" '
            "(no bundle hash: unknown)"]


def test_any_bundle_accepts_an_unknown_hash() -> None:
    assert check_run(default_policy(), RunConfig(), bundle_hash="") == []


def test_every_reason_is_reported_at_once() -> None:
    policy = SitePolicy(allowed_bundles=(HASH_A,), max_rounds=3, allowed_strategies=("fedavg",))
    config = RunConfig(dp_mode="off", num_rounds=4, strategy="krum", fail_sites="0")

    reasons = check_run(policy, config, bundle_hash=HASH_B)

    assert [r.split()[1] for r in reasons] == [
        "bundle", "dp-mode", "num-rounds", "strategy", "fail-sites"]


def test_permissive_policy_allows_whatever_a_simulation_asks() -> None:
    config = RunConfig(dp_mode="off", num_rounds=500, strategy="krum", malicious_sites="0",
                       fail_sites="1", delta=0.2, epsilon_budget=9.0, target_epsilon=9.0,
                       personalisation="offset", finetune_epochs=3)

    policy = permissive_policy(config)

    assert check_run(policy, config, bundle_hash="") == []
    assert check_run(policy, config.replace(dp_mode="target-epsilon"), bundle_hash="") == []
    assert (policy.source, policy.simulation, policy.lifetime_epsilon_budget) == (
        SIMULATION_SOURCE, True, 9.0)


def test_permissive_policy_spends_exactly_the_run_budget() -> None:
    config = RunConfig(epsilon_budget=2.0, target_epsilon=1.0)
    policy = permissive_policy(config)

    assert spend(policy, noise_multiplier=0.01, run_epsilon=2.0, lifetime_after=2.0,
                 lifetime_budget=effective_budget(policy, config.epsilon_budget)) == []
    assert len(spend(policy, run_epsilon=1.0, lifetime_after=2.01,
                     lifetime_budget=effective_budget(policy, config.epsilon_budget))) == 1


# ------------------------------------------------------------------ check_spend


def test_spend_within_every_limit_is_accepted() -> None:
    assert spend(noise_multiplier=0.3, run_epsilon=3.0, lifetime_after=5.0) == []


def test_noise_below_the_floor_is_refused() -> None:
    assert spend(noise_multiplier=0.25) == [
        "policy: noise multiplier must be >= 0.3 (min-noise-multiplier = 0.3); got 0.25 "
        "(what this site would train with in this run)"]


def test_run_epsilon_above_the_per_run_cap_is_refused() -> None:
    assert spend(run_epsilon=3.2, lifetime_after=3.2) == [
        "policy: eps of this run must be <= 3 (max-epsilon-per-run = 3); got 3.20 "
        "(this run, delta=1e-03, RDP)"]


def test_lifetime_above_the_budget_is_refused_with_what_is_left() -> None:
    reasons = spend(run_epsilon=1.0, lifetime_before=3.65, lifetime_after=4.31,
                    lifetime_budget=4.0, delta=1e-3, accountant="rdp")

    assert reasons == [
        "budget: this run needs eps 1.00 (this run, delta=1e-03, RDP); lifetime at this site "
        "would go from 3.65 to 4.31, above its budget 4.00 (0.35 left)"]


def test_epsilons_round_up_and_what_is_left_rounds_down() -> None:
    (reason,) = spend(run_epsilon=0.991, lifetime_before=1.001, lifetime_after=1.992,
                      lifetime_budget=1.9, accountant="pld")

    assert "needs eps 1.00 (this run, delta=1e-03, PLD)" in reason
    assert "from 1.01 to 2.00, above its budget 1.90 (0.89 left)" in reason


def test_an_exhausted_budget_shows_nothing_left() -> None:
    (reason,) = spend(lifetime_before=5.5, lifetime_after=6.5, lifetime_budget=5.0)

    assert reason.endswith("above its budget 5.00 (0.00 left)")


def test_every_spend_reason_at_once_and_nan_fails_closed() -> None:
    nan = float("nan")

    reasons = spend(noise_multiplier=nan, run_epsilon=nan, lifetime_after=nan)

    assert [r.split(":")[0] for r in reasons] == ["policy", "policy", "budget"]


def test_effective_budget_is_the_lower_of_site_and_consortium() -> None:
    policy = SitePolicy(lifetime_epsilon_budget=4.0)

    assert effective_budget(policy, 2.5) == 2.5
    assert effective_budget(policy, 10.0) == 4.0


@pytest.mark.parametrize("budget", [0, -1.0, float("nan"), True])
def test_effective_budget_refuses_a_bad_consortium_budget(budget: float) -> None:
    with pytest.raises(ValueError, match="consortium_budget must be a number > 0; got "):
        effective_budget(default_policy(), budget)


# ------------------------------------------------------------------ project hash


def make_project(root: Path) -> Path:
    """A minimal Flower project folder, as `flwr run` / `flwr build` accept it."""
    folder = root / "demo-app"
    (folder / "demo").mkdir(parents=True)
    (folder / "pyproject.toml").write_text(
        '[project]\nname = "demo-app"\nversion = "1.0.0"\n\n'
        '[tool.flwr.app]\npublisher = "fedcare-tests"\n\n'
        '[tool.flwr.app.components]\nserverapp = "demo.apps:server"\n'
        'clientapp = "demo.apps:client"\n\n'
        '[tool.flwr.app.config]\nnum-rounds = 3\n\n'
        '[tool.flwr.federations]\ndefault = "local"\n\n'
        '[tool.flwr.federations.local]\noptions.num-supernodes = 2\n')
    (folder / "demo" / "__init__.py").write_text("")
    (folder / "demo" / "apps.py").write_text("server = object()\nclient = object()\n")
    (folder / "notes.txt").write_text("not shipped: Flower packs .py, .toml and .md only\n")
    return folder


def test_project_hash_equals_the_hash_of_flowers_own_build(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from flwr.cli.build import build  # the `flwr build` command itself

    folder = make_project(tmp_path)
    out = tmp_path / "out"
    out.mkdir()
    monkeypatch.chdir(out)
    build(app=folder)
    (fab,) = out.glob("*.fab")

    digest = project_hash(folder)

    assert digest == hashlib.sha256(fab.read_bytes()).hexdigest()
    assert fab.name.endswith(f".{digest[:8]}.fab")  # Flower names the file by the same hash


def test_project_hash_changes_when_a_shipped_file_changes(tmp_path: Path) -> None:
    folder = make_project(tmp_path)
    before = project_hash(folder)

    (folder / "demo" / "apps.py").write_text("server = object()\nclient = 'evil'\n")

    assert project_hash(folder) != before


def test_project_hash_ignores_what_flower_does_not_ship(tmp_path: Path) -> None:
    folder = make_project(tmp_path)
    before = project_hash(folder)

    (folder / "notes.txt").write_text("edited\n")
    (folder / "demo" / "__pycache__").mkdir()
    (folder / "demo" / "__pycache__" / "apps.py").write_text("cached = 1\n")
    toml = folder / "pyproject.toml"
    toml.write_text(toml.read_text().replace("num-supernodes = 2", "num-supernodes = 9"))

    assert project_hash(folder) == before


def test_project_hash_needs_a_project_folder(tmp_path: Path) -> None:
    expected = "must be a project folder with a pyproject.toml"

    with pytest.raises(ConfigError, match=re.escape(expected)):
        project_hash(tmp_path)


# ------------------------------------------------------------------ CLI


def run_check(path: Path, text: str, capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    """Write ``text`` to ``path``, run `fedcare policy check PATH`: exit code and stdout."""
    path.write_text(text)
    code = main(["policy", "check", str(path)])
    return code, capsys.readouterr().out


def test_cli_policy_check_prints_a_valid_policy(tmp_path: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "site-policy.toml"

    code, out = run_check(path, "max-rounds = 20\nrequire-secure-aggregation = true\n", capsys)

    assert code == 0
    assert f"# site policy in force: {path}" in out
    assert "max-rounds                 = 20 " in out
    assert "require-secure-aggregation = true " in out
    assert out.endswith(f"{path}: valid site policy\n")
    assert "WARNING" not in out


def test_cli_policy_check_warns_about_a_weakening_setting(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out = run_check(tmp_path / "p.toml", "require-dp = false\n", capsys)

    assert code == 0
    assert "# WARNING: require-dp = false: this site trains WITHOUT differential privacy" in out


def test_cli_policy_check_lists_every_problem(tmp_path: Path,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "site-policy.toml"

    code, out = run_check(path, 'max-rounds = 0\nrequire-dp = "yes"\ncolour = "blue"\n', capsys)

    assert code == 1
    assert f"{path}: NOT a valid site policy; 3 problem(s):" in out
    assert f"{path}: max-rounds must be a whole number >= 1; got 0" in out
    assert f'{path}: require-dp must be true or false; got "yes"' in out
    assert f"{path}: unknown key 'colour'" in out
    assert "Traceback" not in out


def test_cli_policy_check_missing_file(tmp_path: Path,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["policy", "check", str(tmp_path / "none.toml")])

    assert code == 1
    assert "must be an existing file; got no such file" in capsys.readouterr().out


def test_cli_policy_show_refuses_a_missing_state_dir(tmp_path: Path,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    missing = tmp_path / "state"

    code = main(["policy", "show", "--state-dir", str(missing)])

    assert code == 1
    assert "--state-dir must be an existing folder" in capsys.readouterr().err
    assert not missing.exists()


def test_cli_policy_show_default_policy_and_no_spend(tmp_path: Path,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["policy", "show", "--state-dir", str(tmp_path)])

    out = capsys.readouterr().out
    assert code == 0
    assert out.startswith("# site policy in force: built-in default\n")
    assert "lifetime at this site (0 runs): eps 0.00; budget 5.00, all of it left" in out
    assert not (tmp_path / "privacy-ledger.json").exists()  # nothing written


def test_cli_policy_show_uses_the_state_dir_policy_file(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / POLICY_FILENAME).write_text("lifetime-epsilon-budget = 2\n")

    code = main(["policy", "show", "--state-dir", str(tmp_path)])

    out = capsys.readouterr().out
    assert code == 0
    assert f"# site policy in force: {tmp_path / POLICY_FILENAME}\n" in out
    assert "budget 2.00, all of it left" in out


def test_cli_policy_show_reports_a_bad_policy_file(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "p.toml"
    bad.write_text("max-delta = 2\n")

    code = main(["policy", "show", "--state-dir", str(tmp_path), "--policy", str(bad)])

    assert code == 1
    assert f"{bad}: max-delta must be a number in (0, 1); got 2" in capsys.readouterr().err


def _record(ledger: PrivacyLedger, run_id: str, server_round: int) -> None:
    entry = LedgerEntry.now(run_id=run_id, server_round=server_round, spend=SPEND,
                            clip_norm=1.0, num_examples=200)
    ledger.record(entry, delta=1e-3, budget=100.0)


SPEND = RoundSpend(sampling_rate=0.1, noise_multiplier=1.5, steps=20)


def _expected_epsilon(rounds: int, delta: float, accountant: str) -> float:
    """dp-accounting directly (not fedcare's composition): the same events, composed."""
    event = dp_accounting.SelfComposedDpEvent(
        event=dp_accounting.PoissonSampledDpEvent(
            sampling_probability=0.1,
            event=dp_accounting.GaussianDpEvent(noise_multiplier=1.5)),
        count=20 * rounds)
    acc: dp_accounting.PrivacyAccountant = (
        dp_accounting.rdp.RdpAccountant() if accountant == "rdp"
        else dp_accounting.pld.PLDAccountant())
    return float(acc.compose(event).get_epsilon(delta))


def test_cli_policy_show_lifetime_spend_and_what_is_left(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    ledger = PrivacyLedger(tmp_path, site="hospital-a")
    _record(ledger, "run-1", 1)
    _record(ledger, "run-1", 2)
    _record(ledger, "run-2", 1)
    (tmp_path / POLICY_FILENAME).write_text("lifetime-epsilon-budget = 4\nmax-delta = 1e-4\n")

    code = main(["policy", "show", "--state-dir", str(tmp_path)])

    out = capsys.readouterr().out
    assert code == 0
    assert "privacy spent at site 'hospital-a': 3 round(s) in 2 run(s)" in out
    for accountant in ("rdp", "pld"):
        eps = _expected_epsilon(3, 1e-4, accountant)
        left = Decimal(repr(4.0 - eps)).quantize(Decimal("0.01"), rounding=ROUND_FLOOR)
        assert (f"lifetime at this site (2 runs): eps {format_epsilon(eps)} at delta=1e-04 "
                f"({accountant.upper()}, add/remove-one, Poisson sampling q=0.1); "
                f"budget 4.00, {left} left") in out


def test_cli_policy_show_refuses_a_damaged_ledger(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "privacy-ledger.json").write_text('{"site": "hospital-a", "entries": [')

    code = main(["policy", "show", "--state-dir", str(tmp_path)])

    assert code == 1
    assert "privacy ledger" in capsys.readouterr().err


def test_cli_policy_hash_prints_the_bundle_hash(tmp_path: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    folder = make_project(tmp_path)

    code = main(["policy", "hash", str(folder)])

    assert code == 0
    assert capsys.readouterr().out == f"{project_hash(folder)}\n"


def test_cli_policy_hash_without_a_project(tmp_path: Path,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["policy", "hash", str(tmp_path)])

    assert code == 1
    assert "must be a project folder with a pyproject.toml" in capsys.readouterr().err


def test_cli_help_names_the_policy_file() -> None:
    assert POLICY_FILE_HELP == POLICY_FILENAME


def test_every_key_has_a_meaning() -> None:
    assert set(MEANINGS) == set(default_policy().to_mapping())


# ------------------------------------------------------------------ docs

DOC = Path(__file__).resolve().parents[2] / "docs" / "site-policy.md"


def test_docs_table_states_every_key_with_its_real_default() -> None:
    rows = {line.split("|")[1].strip(" `"): line.split("|")[2]
            for line in DOC.read_text().splitlines() if line.startswith("| `")}
    defaults = default_policy().to_mapping()

    assert set(rows) == set(defaults)
    for key, cell in rows.items():
        written = re.search(r"`([^`]+)`", cell)
        assert written, key
        assert tomllib.loads(f"x = {written.group(1)}")["x"] == defaults[key], key


def test_docs_example_policy_is_valid() -> None:
    example = re.search(r"```toml\n(.*?)```", DOC.read_text(), re.S)
    assert example

    policy = parse_policy(tomllib.loads(example.group(1)), where="docs example")

    assert policy.allowed_bundles != "any" and policy.require_secure_aggregation
