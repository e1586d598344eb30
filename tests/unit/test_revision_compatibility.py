"""The record a newer release's env.py leaves in alembic_version's comment, and how a loader
reads it: only a comment written for the warehouse's very version counts."""

from __future__ import annotations

from loader.load.revision import compatibility_comment, parse_compatibility_comment


def test_the_comment_round_trips_the_chain_head_first() -> None:
    comment = compatibility_comment(["0904_c", "0903_b", "0002_load_ledger"])
    assert comment is not None
    assert parse_compatibility_comment(comment, "0904_c") == {
        "0904_c",
        "0903_b",
        "0002_load_ledger",
    }


def test_a_comment_written_for_another_version_counts_for_nothing() -> None:
    stale = compatibility_comment(["0903_b", "0002_load_ledger"])
    assert parse_compatibility_comment(stale, "0904_c") == {"0904_c"}


def test_no_comment_or_someone_elses_comment_means_only_the_version_itself() -> None:
    assert compatibility_comment([]) is None
    assert parse_compatibility_comment(None, "0002_load_ledger") == {"0002_load_ledger"}
    assert parse_compatibility_comment("owned by the DBA team", "0002_load_ledger") == {
        "0002_load_ledger"
    }
