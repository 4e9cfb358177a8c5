from __future__ import annotations

from crowdforge.agents.register import lineage_summary


def test_the_federated_member_is_tagged_with_sites_rounds_secagg_epsilon_and_hash() -> None:
    federated = {"enabled": True, "sites": ["north", "south"], "rounds": 5, "rounds_applied": 4,
                 "strategy": "fedavg", "secagg": True, "epsilon": 7.9912, "delta": 1e-5, "aggregate_sha256": "ab" * 32}
    tags = lineage_summary({"federated": federated})
    assert tags["federated.sites"] == "north,south"
    assert tags["federated.rounds"] == "5" and tags["federated.rounds_applied"] == "4"
    assert tags["federated.secagg"] == "true"
    assert tags["federated.epsilon"] == "7.991" and tags["federated.delta"] == "1e-05"
    assert tags["federated.aggregate_sha256"] == "ab" * 32
    no_dp = lineage_summary({"federated": {**federated, "epsilon": None}})
    assert no_dp["federated.epsilon"] == "none (no DP)" and no_dp["federated.delta"] == "none"
    assert not any(k.startswith("federated.") for k in lineage_summary({"federated": {"enabled": False}}))
