from tide.engine.sampling_params import SamplingParams
from tide.jobs.ordering import MIN_SHARED_CHARS, group_by_prefix
from tide.jobs.rows import PromptRow

PARAMS = SamplingParams()


def row(i: int, prompt) -> PromptRow:
    return PromptRow(i, f"r{i}", prompt, PARAMS)


def test_shared_preambles_are_grouped_with_their_leaders_first():
    a, b = "A" * MIN_SHARED_CHARS, "B" * MIN_SHARED_CHARS
    rows = [row(0, b + " q0"), row(1, a + " q1"), row(2, "lonely"), row(3, b + " q3"), row(4, a + " q4"),
            row(5, a + " q5")]
    assert [r.row for r in group_by_prefix(rows)] == [1, 0, 2, 4, 5, 3]


def test_chat_prompts_group_by_their_messages_in_order():
    system = {"role": "system", "content": "S" * MIN_SHARED_CHARS}
    rows = [row(0, [{"role": "system", "content": "other"}, {"role": "user", "content": "x"}]),
            row(1, [system, {"role": "user", "content": "b"}]), row(2, [system, {"role": "user", "content": "a"}])]
    assert [r.row for r in group_by_prefix(rows)] == [2, 0, 1]  # "S..." sorts before "other"


def test_short_common_prefixes_do_not_form_groups():
    rows = [row(i, f"Tell me about item {i}") for i in (3, 1, 2)]
    assert [r.row for r in group_by_prefix(rows)] == [1, 2, 3]


def test_token_id_prompts_group_by_their_leading_tokens():
    shared = list(range(100, 100 + MIN_SHARED_CHARS // 4))
    rows = [row(0, shared + [5]), row(1, [9, 9, 9]), row(2, shared + [4]), row(3, shared + [6])]
    assert [r.row for r in group_by_prefix(rows)] == [1, 2, 0, 3]  # leaders (by token order), then followers
