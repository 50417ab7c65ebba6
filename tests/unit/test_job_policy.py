"""Auto-approve policy: each rule flips the verdict, all failures listed, manual never approves."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from fabstir_tui.config import ConfigError, JobsSection, load_config
from fabstir_tui.engine.jobs.policy import (
    Decision,
    NodeFacts,
    PolicyJob,
    Verdict,
    decide,
    policy_job,
)
from fabstir_tui.engine.jobs.records import JobKey, JobRecord
from fabstir_tui.engine.jobs.states import JobKind, JobState

ALICE = "0x" + "ab" * 20
BOB = "0x" + "cd" * 20
ALICE_MIXED = "0x" + "aB" * 20
NOW = 1_000_000.0

GOOD_JOB = PolicyJob(
    model_id="smollm2",
    client=ALICE,
    max_tokens=256,
    price_per_million=2_000,
    deadline=1_000_600,
)
GOOD_FACTS = NodeFacts(
    loaded_models=frozenset({"smollm2"}), gpu_temp_c=60.0, queue_depth=1, now=NOW
)


def auto(**overrides: Any) -> JobsSection:
    fields: dict[str, Any] = {
        "mode": "auto",
        "price_floor": 2_000,
        "max_tokens_cap": 512,
        "client_allow": [ALICE],
        "gpu_temp_limit_c": 80.0,
        "max_queue_depth": 2,
    }
    fields.update(overrides)
    return JobsSection(**fields)


def job(**changes: Any) -> PolicyJob:
    return PolicyJob(**{**GOOD_JOB.__dict__, **changes})


def facts(**changes: Any) -> NodeFacts:
    return NodeFacts(**{**GOOD_FACTS.__dict__, **changes})


def test_a_job_passing_every_rule_is_approved() -> None:
    assert decide(GOOD_JOB, GOOD_FACTS, auto()) == Decision(Verdict.APPROVE, (), False)


@pytest.mark.parametrize(
    ("the_job", "the_facts", "config", "verdict", "reason"),
    [
        (
            job(model_id="llama-70b"),
            GOOD_FACTS,
            auto(),
            Verdict.LEAVE,
            "model llama-70b is not loaded (loaded: smollm2)",
        ),
        (
            GOOD_JOB,
            facts(loaded_models=frozenset()),
            auto(),
            Verdict.LEAVE,
            "model smollm2 is not loaded (loaded: nothing)",
        ),
        (
            job(price_per_million=1_000),
            GOOD_FACTS,
            auto(),
            Verdict.REJECT,
            "price 1,000/M is below the floor 2,000/M",
        ),
        (
            job(max_tokens=513),
            GOOD_FACTS,
            auto(),
            Verdict.REJECT,
            "max tokens 513 is above the cap 512",
        ),
        (
            job(client=BOB),
            GOOD_FACTS,
            auto(),
            Verdict.REJECT,
            f"client {BOB} is not on the allow list",
        ),
        (
            GOOD_JOB,
            GOOD_FACTS,
            auto(client_deny=[ALICE]),
            Verdict.REJECT,
            f"client {ALICE} is on the deny list",
        ),
        (
            GOOD_JOB,
            facts(gpu_temp_c=80.0),
            auto(),
            Verdict.LEAVE,
            "GPU at 80 °C is not below the limit 80 °C",
        ),
        (
            GOOD_JOB,
            facts(gpu_temp_c=None),
            auto(),
            Verdict.LEAVE,
            "GPU temperature is unknown (limit 80 °C)",
        ),
        (
            GOOD_JOB,
            facts(queue_depth=2),
            auto(),
            Verdict.LEAVE,
            "queue holds 2 jobs, the most is 2",
        ),
        (
            job(price_per_million=None),
            GOOD_FACTS,
            auto(),
            Verdict.LEAVE,
            "the price is not known yet",
        ),
        (
            job(deadline=999_990),
            GOOD_FACTS,
            auto(),
            Verdict.REJECT,
            "the deadline passed 10 s ago",
        ),
    ],
    ids=[
        "model-not-loaded",
        "nothing-loaded",
        "price-below-floor",
        "tokens-above-cap",
        "client-not-allowed",
        "client-denied",
        "gpu-at-limit",
        "gpu-unknown-with-limit",
        "queue-full",
        "price-unknown",
        "deadline-passed",
    ],
)
def test_each_rule_alone_flips_the_decision(
    the_job: PolicyJob, the_facts: NodeFacts, config: JobsSection, verdict: Verdict, reason: str
) -> None:
    assert decide(the_job, the_facts, config) == Decision(verdict, (reason,), False)


def test_boundaries_that_pass() -> None:
    """Price equal to the floor, tokens equal to the cap, one below the queue limit all pass."""
    edge = job(price_per_million=2_000, max_tokens=512)
    assert decide(edge, facts(queue_depth=1, gpu_temp_c=79.9), auto()).verdict is Verdict.APPROVE


def test_no_limits_means_any_price_client_and_unknown_temperature() -> None:
    loose = auto(price_floor=0, client_allow=[], gpu_temp_limit_c=None)
    cheap = job(price_per_million=0, client=BOB)
    assert decide(cheap, facts(gpu_temp_c=None), loose).verdict is Verdict.APPROVE


def test_every_failing_rule_is_listed_and_reject_wins_over_leave() -> None:
    bad = job(model_id="other", price_per_million=5, max_tokens=10_000, client=BOB)
    decision = decide(bad, facts(gpu_temp_c=None, queue_depth=7), auto(client_deny=[BOB]))
    assert decision.verdict is Verdict.REJECT
    assert decision.reasons == (
        "price 5/M is below the floor 2,000/M",
        "max tokens 10,000 is above the cap 512",
        f"client {BOB} is on the deny list",
        f"client {BOB} is not on the allow list",
        "model other is not loaded (loaded: smollm2)",
        "GPU temperature is unknown (limit 80 °C)",
        "queue holds 7 jobs, the most is 2",
    )


def test_manual_mode_leaves_even_a_perfect_job_and_shows_what_auto_would_say() -> None:
    manual = auto(mode="manual")
    assert decide(GOOD_JOB, GOOD_FACTS, manual) == Decision(Verdict.LEAVE, (), False)
    cheap = decide(job(price_per_million=1_999), GOOD_FACTS, manual)
    assert cheap == Decision(Verdict.LEAVE, ("price 1,999/M is below the floor 2,000/M",), False)


def test_manual_mode_still_rejects_a_passed_deadline() -> None:
    late = decide(job(deadline=int(NOW)), GOOD_FACTS, auto(mode="manual"))
    assert late == Decision(Verdict.REJECT, ("the deadline passed 0 s ago",), False)


def test_dry_run_is_marked_on_every_auto_verdict_and_described() -> None:
    dry = auto(dry_run=True)
    approve = decide(GOOD_JOB, GOOD_FACTS, dry)
    reject = decide(job(max_tokens=600), GOOD_FACTS, dry)
    assert (approve.verdict, approve.dry_run) == (Verdict.APPROVE, True)
    assert (reject.verdict, reject.dry_run) == (Verdict.REJECT, True)
    assert approve.describe() == "dry run, would approve: every rule passes"
    assert reject.describe() == "dry run, would reject: max tokens 600 is above the cap 512"
    manual_dry = auto(mode="manual", dry_run=True)
    assert decide(GOOD_JOB, GOOD_FACTS, manual_dry).dry_run is False
    assert decide(job(deadline=1), GOOD_FACTS, manual_dry).dry_run is False


def test_deny_beats_allow() -> None:
    both = auto(client_allow=[ALICE], client_deny=[ALICE])
    decision = decide(GOOD_JOB, GOOD_FACTS, both)
    assert decision == Decision(Verdict.REJECT, (f"client {ALICE} is on the deny list",), False)


def test_addresses_compare_case_insensitively() -> None:
    mixed_config = auto(client_allow=[ALICE_MIXED.upper().replace("0X", "0x")])
    assert decide(job(client=ALICE_MIXED), GOOD_FACTS, mixed_config).verdict is Verdict.APPROVE
    denied = decide(
        job(client=ALICE.upper().replace("0X", "0x")), GOOD_FACTS, auto(client_deny=[ALICE_MIXED])
    )
    assert denied.reasons == (f"client {ALICE} is on the deny list",)


def test_a_job_record_is_read_through_policy_job() -> None:
    record = JobRecord(
        key=JobKey(JobKind.OPEN, 31337, "0x" + "11" * 20, "7"),
        state=JobState.PENDING_APPROVAL,
        model_id="smollm2",
        client=ALICE_MIXED,
        max_tokens=256,
        price="1500",
        deadline=1_000_600,
        prompt_hash=None,
        output_hash=None,
        receipt_root=None,
        tokens_used=None,
        detail=None,
        tx_hashes={},
        created_at=NOW,
        updated_at=NOW,
    )
    assert policy_job(record) == job(client=ALICE_MIXED, price_per_million=1_500)
    decision = decide(record, GOOD_FACTS, auto())
    assert decision == Decision(
        Verdict.REJECT, ("price 1,500/M is below the floor 2,000/M",), False
    )


def test_config_defaults_are_manual_and_permissive() -> None:
    jobs = JobsSection()
    assert (jobs.mode, jobs.dry_run, jobs.price_floor, jobs.prompt_delivery_s) == (
        "manual",
        False,
        0,
        60.0,
    )
    assert (jobs.client_allow, jobs.client_deny, jobs.gpu_temp_limit_c) == ([], [], None)


def test_config_errors_are_readable(tmp_path: Path) -> None:
    cfg = tmp_path / "config.toml"
    cfg.write_text(
        '[jobs]\nmode = "yolo"\nprice_floor = -1\nclient_deny = ["0x1234"]\n', encoding="utf-8"
    )
    with pytest.raises(ConfigError) as excinfo:
        load_config(cfg, env={}, default_file=tmp_path / "none.toml")
    assert str(excinfo.value).splitlines() == [
        f'file {cfg}: jobs.mode = "yolo" is not allowed: must be one of "manual", "auto"',
        f"file {cfg}: jobs.price_floor = -1 is not allowed: must be ≥ 0",
        f'file {cfg}: jobs.client_deny = ["0x1234"] is not allowed: '
        "'0x1234' is not an address (0x followed by 40 hex digits)",
    ]


def test_config_addresses_are_stored_lower_case(tmp_path: Path) -> None:
    env = {"FABSTIR_JOBS__CLIENT_ALLOW": ALICE_MIXED, "FABSTIR_JOBS__MODE": "auto"}
    jobs = load_config(env=env, default_file=tmp_path / "none.toml").config.jobs
    assert (jobs.mode, jobs.client_allow) == ("auto", [ALICE])


MODELS = st.sampled_from(["smollm2", "qwen", "llama"])
CLIENTS = st.sampled_from([ALICE, BOB, ALICE_MIXED])


@settings(max_examples=300, deadline=None)
@given(
    model=MODELS,
    client=CLIENTS,
    max_tokens=st.integers(1, 1_000),
    price=st.integers(0, 5_000),
    deadline=st.integers(999_000, 1_001_000),
    loaded=st.frozensets(MODELS),
    temp=st.none() | st.floats(20, 100),
    depth=st.integers(0, 5),
    floor=st.integers(0, 5_000),
    cap=st.integers(1, 1_000),
    allow=st.lists(CLIENTS, max_size=2),
    deny=st.lists(CLIENTS, max_size=1),
    limit=st.none() | st.floats(50, 90),
    most=st.integers(1, 5),
)
@example(
    "qwen", ALICE_MIXED, 10, 5, 1_000_001, frozenset({"qwen"}), 50.0, 0, 5, 10, [ALICE], [], 60.0, 1
)
def test_approve_implies_every_rule_passes(
    model: str,
    client: str,
    max_tokens: int,
    price: int,
    deadline: int,
    loaded: frozenset[str],
    temp: float | None,
    depth: int,
    floor: int,
    cap: int,
    allow: list[str],
    deny: list[str],
    limit: float | None,
    most: int,
) -> None:
    the_job = PolicyJob(model, client, max_tokens, price, deadline)
    the_facts = NodeFacts(loaded, temp, depth, NOW)
    config = JobsSection(
        mode="auto",
        price_floor=floor,
        max_tokens_cap=cap,
        client_allow=allow,
        client_deny=deny,
        gpu_temp_limit_c=limit,
        max_queue_depth=most,
    )
    decision = decide(the_job, the_facts, config)
    lowered = client.lower()
    every_rule_passes = (
        deadline > NOW
        and model in loaded
        and price >= floor
        and max_tokens <= cap
        and lowered not in {d.lower() for d in deny}
        and (not allow or lowered in {a.lower() for a in allow})
        and (limit is None or (temp is not None and temp < limit))
        and depth < most
    )
    assert (decision.verdict is Verdict.APPROVE) == every_rule_passes
    assert (decision.reasons == ()) == every_rule_passes
    manual = decide(the_job, the_facts, config.model_copy(update={"mode": "manual"}))
    assert manual.verdict is not Verdict.APPROVE
