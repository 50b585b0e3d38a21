import re

import pytest

from kitchen.train.envs import (
    ArithmeticEnv,
    Env,
    Problem,
    Score,
    is_bare_number,
    parse_final_number,
)

PROMPT_RE = re.compile(r"What is (\d+) ([+\-*]) (\d+)\? Answer with just the number\.")


@pytest.mark.parametrize(
    "text, expected",
    [
        ("The answer is 12.", 12.0),
        ("12\n", 12.0),
        ("12", 12.0),
        ("twelve", None),
        ("", None),
        ("7 + 5 = 12", 12.0),
        ("-3", -3.0),
        ("5 - 8 = \u22123", -3.0),  # unicode minus
        ("7-5", 5.0),  # the hyphen after a digit is an operator, not a sign
        ("1,000", 1000.0),
        ("12.0", 12.0),
        ("12.5 apples", 12.5),
        ("x2", None),
        ("answer:12", 12.0),
        ("**12**", 12.0),
        ("12, no wait, 13", 13.0),
    ],
)
def test_parse_final_number(text, expected):
    assert parse_final_number(text) == expected


def test_is_bare_number():
    assert is_bare_number("12") and is_bare_number(" 12.\n") and is_bare_number("-3")
    assert not is_bare_number("The answer is 12.") and not is_bare_number("twelve")


def _problem(a, op, b):
    return ArithmeticEnv()._problem((a, op, b))


def test_problem_format():
    p = _problem(7, "+", 5)
    assert p.messages == [{"role": "user", "content": "What is 7 + 5? Answer with just the number."}]
    assert p.answer == 12 and p.id == "7+5"
    assert p.to_dict()["answer"] == 12
    sys_env = ArithmeticEnv(system_prompt="You are a calculator.")
    msgs = sys_env._problem((1, "-", 1)).messages
    assert msgs[0] == {"role": "system", "content": "You are a calculator."} and msgs[1]["role"] == "user"


@pytest.mark.parametrize(
    "completion, reward, correct",
    [
        ("The answer is 12.", 1.0, True),
        ("12\n", 1.0, True),
        ("12", 1.0, True),
        ("7 + 5 = 12", 1.0, True),
        ("twelve", 0.0, False),
        ("11", 0.0, False),
        ("12.5", 0.0, False),
        ("12, no wait 13", 0.0, False),
        ("", 0.0, False),
    ],
)
def test_score(completion, reward, correct):
    s = ArithmeticEnv().score(_problem(7, "+", 5), completion)
    assert isinstance(s, Score)
    assert s.reward == reward and s.correct is correct
    assert s.info["answer"] == 12


def test_score_format_bonus():
    env = ArithmeticEnv(format_bonus=0.1)
    p = _problem(7, "+", 5)
    assert env.score(p, "12").reward == pytest.approx(1.1)
    assert env.score(p, "The answer is 12.").reward == pytest.approx(1.0)
    s = env.score(p, "13")
    assert s.reward == pytest.approx(0.1) and s.correct is False and s.info["formatted"] is True
    reward, correct, info = env.score(p, "twelve")  # unpacks like a tuple
    assert (reward, correct, info["parsed"]) == (0.0, False, None)


def test_negative_answer_scored():
    env = ArithmeticEnv(allow_negative=True)
    assert env.score(_problem(3, "-", 8), "3 - 8 = -5").correct


def test_initial_prompts_deterministic_and_well_formed():
    env = ArithmeticEnv()
    a = env.initial_prompts(seed=3, n=50)
    b = env.initial_prompts(seed=3, n=50)
    assert [p.id for p in a] == [p.id for p in b]
    assert [p.id for p in env.initial_prompts(seed=4, n=50)] != [p.id for p in a]
    assert [p.id for p in env.initial_prompts(seed=3, n=10)] == [p.id for p in a[:10]]
    for p in a:
        m = PROMPT_RE.fullmatch(p.messages[-1]["content"])
        assert m, p.messages
        x, op, y = int(m.group(1)), m.group(2), int(m.group(3))
        assert 0 <= x <= 9 and 0 <= y <= 9 and op in "+-"
        assert p.answer == (x + y if op == "+" else x - y)
        assert p.answer >= 0
    assert env.initial_prompts(seed=0, n=0) == []


def test_default_space_and_holdout_split():
    env = ArithmeticEnv()
    # 0..9 with +: 100 problems; with - and non-negative results: 55 -> 155 in all
    assert len(env._train_pool) + len(env._eval_pool) == 155
    assert env.num_eval_problems() == 30
    train_ids = {p.id for s in range(20) for p in env.initial_prompts(seed=s, n=100)}
    ev = env.eval_prompts(n=1000, seed=0)
    eval_ids = [p.id for p in ev]
    assert len(eval_ids) == 30 == len(set(eval_ids))  # capped, distinct
    assert not train_ids & set(eval_ids)
    assert [p.id for p in env.eval_prompts(10, seed=0)] == eval_ids[:10]
    assert [p.id for p in env.eval_prompts(10, seed=0)] == [p.id for p in ArithmeticEnv().eval_prompts(10, seed=0)]


def test_no_holdout_eval_uses_whole_space():
    env = ArithmeticEnv(holdout_fraction=0.0)
    assert len(env.eval_prompts(1000)) == 155
    assert len({p.id for p in env.initial_prompts(0, 2000)}) == 155


def test_options():
    env = ArithmeticEnv(min_operand=2, max_operand=3, ops=["*"], holdout_fraction=0.0)
    answers = {p.id: p.answer for p in env.eval_prompts(100)}
    assert answers == {"2*2": 4, "2*3": 6, "3*2": 6, "3*3": 9}
    neg = ArithmeticEnv(ops="-", allow_negative=True)
    assert any(p.answer < 0 for p in neg.initial_prompts(0, 100))
    assert env.config()["ops"] == ["*"]
    with pytest.raises(ValueError):
        ArithmeticEnv(ops=["/"])
    with pytest.raises(ValueError):
        ArithmeticEnv(min_operand=5, max_operand=1)
    with pytest.raises(ValueError):
        ArithmeticEnv(holdout_fraction=1.0)
    with pytest.raises(ValueError):
        ArithmeticEnv(template="What is {a}?")


def test_large_space_uses_rejection_sampling():
    env = ArithmeticEnv(max_operand=999)  # 2M triples: not enumerated
    assert env.num_eval_problems() is None
    train = env.initial_prompts(seed=1, n=200)
    assert [p.id for p in train] == [p.id for p in env.initial_prompts(seed=1, n=200)]
    ev = env.eval_prompts(50, seed=0)
    assert len(ev) == 50 == len({p.id for p in ev})
    assert not {p.id for p in train} & {p.id for p in ev}
    assert all(env._is_eval((p.metadata["a"], p.metadata["op"], p.metadata["b"])) for p in ev)
    assert all(p.answer >= 0 for p in train + ev)


def test_envs_are_built_by_name_or_target_through_the_one_instantiate_path():
    from kitchen.config.instantiate import build
    from kitchen.errors import ConfigError

    env = build("envs", {"_target_": "kitchen.train.envs.ArithmeticEnv", "max_operand": 5})
    assert isinstance(env, ArithmeticEnv) and env.max_operand == 5
    assert isinstance(build("envs", "arithmetic"), ArithmeticEnv)
    assert isinstance(env, Env)
    assert isinstance(env.initial_prompts(0, 1)[0], Problem)
    with pytest.raises(ConfigError, match="Unknown env 'arithmetc'. Did you mean 'arithmetic'"):
        build("envs", "arithmetc")
    with pytest.raises(ConfigError, match="max_operandd"):
        build("envs", {"_target_": "kitchen.train.envs.ArithmeticEnv", "max_operandd": 5})
