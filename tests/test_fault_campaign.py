"""The fault campaign (fuzz/fault_campaign.py): a bounded run on every backend, and checks that its judge bites."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from fuzz.fault_campaign import Model, build, final_check

import statetransfer as st

CAMPAIGN = str(Path(__file__).resolve().parent.parent / "fuzz" / "fault_campaign.py")


def test_bounded_campaign_all_backends(tmp_path):
    """3 workers per store, SIGKILLed at random: no loss, no false alarm, nothing outside the store touched."""
    figures = tmp_path / "figures.json"
    bounded = ["--ops", "300", "--s3-ops", "100", "--s3-kill-gap", "1,4", "--seed", "7", "--json", str(figures)]
    proc = subprocess.run(
        [sys.executable, CAMPAIGN, *bounded],
        capture_output=True,
        text=True,
        timeout=150,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr[-3000:]
    results = {r["backend"]: r for r in json.loads(figures.read_text())}
    assert set(results) == {"file", "sqlite", "s3"}
    for r in results.values():
        assert r["ops"] >= (100 if r["backend"] == "s3" else 300)
        assert r["kills"] > 0 and r["acknowledged_puts"] > 0 and r["acknowledged_removals"] > 0
        assert (r["lost"], r["false_alarms"], r["outside_touched"], r["planted_touched"]) == (0, 0, 0, 0)
        assert r["final_verify_ok"]
    assert results["file"]["strays"] >= 5  # the planted symlinks and .DS_Store files were seen, never touched


def feed(model: Model, *lines: str) -> None:
    for seq, line in enumerate(lines):
        tag, _, rest = line.partition(" ")
        model.feed(tag, rest + "\n", seq)


def test_judge_counts_a_failed_get_with_no_removal_as_a_loss():
    """A get that found nothing although no removal had begun is a loss; one racing a delete is not."""
    model = Model()
    feed(
        model,
        "w0g1 10.0 10.5 put w0g1-1-s0 -",
        "w0g1 11.0 11.5 put w0g1-2-s1 -",
        "w1g1 12.0 12.0 begin-delete w0g1-2-s1",
        "w2g1 12.1 12.4 get w0g1-2-s1 notfound",
        "w2g1 12.5 12.6 get w0g1-1-s0 notfound",
    )
    assert model.lost_midrun() == {"w0g1-1-s0": "mid-run get: notfound"}


def test_judge_in_flight_removals_and_expiry():
    """A delete killed in flight may or may not have happened; a prune only takes expired snapshots."""
    model = Model()
    feed(
        model,
        "w0g1 10.0 10.5 put w0g1-1-s0 -",
        "w0g1 10.6 10.7 put w0g1-2-s0 11",
        "w1g1 12.0 12.0 begin-delete w0g1-1-s0",
        "w2g1 13.0 13.0 begin-prune",
        "w0g1 14.0 14.2 delete w0g1-1-s0 notfound",
    )
    model.killed("w1g1", 15.0)
    model.killed("w2g1", 15.0)
    assert model.lost_midrun() == {}  # the other delete had begun before it
    assert model.maybe_removed("w0g1-1-s0")
    assert model.maybe_removed("w0g1-2-s0")  # expired, and a prune was in flight
    model.puts["w0g1-3-s0"] = None
    assert not model.maybe_removed("w0g1-3-s0")  # never expires: no prune may take it


async def test_final_check_finds_a_missing_blob(tmp_path):
    """The end-of-run check reports an acknowledged snapshot whose blob vanished behind the store's back."""
    url = f"file://{tmp_path}/store"
    store = st.open_store(url)
    await store.put(build("w0g1-1-s0"))
    await store.put(build("w0g1-2-s3"))
    own = (await store.section_digests("w0g1-2-s3"))["own"]
    (tmp_path / "store" / "blobs" / own[:2] / own).unlink()
    model = Model()
    feed(model, "w0g1 1.0 1.1 put w0g1-1-s0 -", "w0g1 1.2 1.3 put w0g1-2-s3 -")
    result = await final_check(url, model)
    assert list(result["lost"]) == ["w0g1-2-s3"]
    assert not result["final_verify_ok"]
