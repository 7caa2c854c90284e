"""The pure parts of an avatar persona's knowledge (:mod:`coachforge_inference.knowledge`): the
search query taken from the conversation's last user turns, the knowledge block's exact text, where
it goes in the engine's messages, and what ``x-coachforge-knowledge`` says for each outcome."""

from __future__ import annotations

import copy
from typing import Any

from coachforge_inference.knowledge import (
    MAX_QUERY_CHARS,
    OUTCOMES,
    Lookup,
    Snippet,
    knowledge_block,
    query_from,
    with_knowledge,
)

CONVERSATION: list[dict[str, Any]] = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "I ran 10k yesterday."},
    {"role": "assistant", "content": "Nice."},
    {"role": "user", "content": [{"type": "text", "text": "How long"}, {"type": "image_url", "image_url": {"url": "x"}},
                                 {"type": "text", "text": "should my taper be?"}]},
    {"role": "assistant", "content": "Two weeks."},
    {"role": "user", "content": "  And my sleep?  "},
]
SNIPPETS = (Snippet("kbchunk-aaa", "training-principles.md",
                    "Training principles > Taper\nCut volume by 40-60 percent.\n"),
            Snippet("kbchunk-bbb", "sleep\nnotes", "Sleep 7-9 hours."))


def test_the_query_is_the_last_user_turns_oldest_first() -> None:
    assert query_from(CONVERSATION, 1) == "And my sleep?"
    assert query_from(CONVERSATION, 2) == "How long\nshould my taper be?\nAnd my sleep?"
    assert query_from(CONVERSATION, 3) == "I ran 10k yesterday.\nHow long\nshould my taper be?\nAnd my sleep?"
    assert query_from(CONVERSATION, 20) == query_from(CONVERSATION, 3)
    # blank user turns are skipped, not counted; no user text at all: no query
    assert query_from([*CONVERSATION, {"role": "user", "content": "   "}], 1) == "And my sleep?"
    assert query_from([{"role": "system", "content": "x"}, {"role": "assistant", "content": "y"}], 1) == ""
    assert query_from("not a list", 1) == "" and query_from(CONVERSATION, 0) == ""
    # a very long conversation keeps the end of its query, within the knowledge service's limit
    long = [{"role": "user", "content": "a" * MAX_QUERY_CHARS}, {"role": "user", "content": "latest words"}]
    query = query_from(long, 2)
    assert len(query) == MAX_QUERY_CHARS and query.endswith("\nlatest words")


def test_the_knowledge_block_is_one_block_per_snippet_in_rank_order() -> None:
    assert knowledge_block(()) == ""
    assert knowledge_block(SNIPPETS) == (
        "Knowledge (cite the source ids you use):\n"
        "[kbchunk-aaa] training-principles.md\n"
        "Training principles > Taper\n"
        "Cut volume by 40-60 percent.\n"
        "\n"
        "[kbchunk-bbb] sleep notes\n"
        "Sleep 7-9 hours.")
    assert knowledge_block(SNIPPETS[::-1]).index("kbchunk-bbb") < knowledge_block(SNIPPETS[::-1]).index("kbchunk-aaa")


def test_the_block_ends_the_leading_system_message_or_is_one_of_its_own() -> None:
    block = knowledge_block(SNIPPETS)
    before = copy.deepcopy(CONVERSATION)
    out = with_knowledge(CONVERSATION, block)
    assert out[0] == {"role": "system", "content": "Be brief.\n\n" + block}
    assert out[1:] == CONVERSATION[1:] and before == CONVERSATION  # the input is not changed

    two = [{"role": "system", "content": "One."}, {"role": "developer", "content": "Two."}, *CONVERSATION[1:]]
    assert with_knowledge(two, block)[:2] == [{"role": "system", "content": "One."},
                                              {"role": "developer", "content": "Two.\n\n" + block}]
    parts = [{"role": "system", "content": [{"type": "text", "text": "Be brief."}]}, *CONVERSATION[1:]]
    assert with_knowledge(parts, block)[0]["content"] == [{"type": "text", "text": "Be brief."},
                                                          {"type": "text", "text": block}]
    no_system = CONVERSATION[1:]
    assert with_knowledge(no_system, block) == [{"role": "system", "content": block}, *no_system]
    late = [*CONVERSATION[1:], {"role": "system", "content": "late"}]  # not at the start: a message of its own
    assert with_knowledge(late, block)[0] == {"role": "system", "content": block}
    assert with_knowledge(CONVERSATION, "") == CONVERSATION


def test_the_header_names_the_chunks_used_or_says_unavailable() -> None:
    assert Lookup("used", SNIPPETS).header == "kbchunk-aaa,kbchunk-bbb"
    assert Lookup("empty").header == "" and Lookup("no_query").header == ""
    for outcome in ("not_found", "unavailable", "error"):
        assert Lookup(outcome).header == "unavailable"
    assert set(OUTCOMES) == {"used", "empty", "no_query", "not_found", "unavailable", "error"}
