"""The action parser on hostile replies: a table of cases, huge inputs, and hypothesis properties."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from atom.env.actions import ACTION_KINDS, Action, parse_actions, render_action


def C(text: str) -> Action:
    return Action("create", text)


def R(text: str) -> Action:
    return Action("read", text)


def U(i: int, text: str) -> Action:
    return Action("update", text, i)


def D(i: int) -> Action:
    return Action("delete", "", i)


def S(text: str) -> Action:
    return Action("scratchpad", text)


def A(text: str) -> Action:
    return Action("answer", text)


CASES = [
    # (reply, expected actions, expected invalid counts)
    ("", [], {}),
    ("I will just think about it. Nothing to store.", [], {}),
    ("a < b, <3 and 5 > 4; <br> is a line break", [], {}),
    ("<create>Paris is in France</create>", [C("Paris is in France")], {}),
    ("<read>capital of France</read>", [R("capital of France")], {}),
    ('<update id="7">new text</update>', [U(7, "new text")], {}),
    ('<delete id="7"/>', [D(7)], {}),
    ('<delete id="7"></delete>', [D(7)], {}),
    ("<scratchpad>q1: Paris</scratchpad>", [S("q1: Paris")], {}),
    ("<scratchpad></scratchpad>", [S("")], {}),
    ("<scratchpad/>", [S("")], {}),
    ("<answer>Paris</answer>", [A("Paris")], {}),
    (
        "think first <create>a</create> then <read>b</read> <update id=1>c</update> <delete id=2/> "
        "<scratchpad>d</scratchpad> <answer>e</answer>",
        [C("a"), R("b"), U(1, "c"), D(2), S("d"), A("e")],
        {},
    ),
    ("<create>  padded \n </create>", [C("padded")], {}),
    # id syntax: quotes, spaces around '=', leading zeros
    (
        "<update id='3'>x</update><update id = \"4\">y</update><update ID=005 >z</update>",
        [U(3, "x"), U(4, "y"), U(5, "z")],
        {},
    ),
    ('<delete id = 9 /><DELETE Id="10" />', [D(9), D(10)], {}),
    # mixed case tag names
    ("<CREATE>x</Create><Read>y</READ>", [C("x"), R("y")], {}),
    # ids that are not non-negative ASCII decimal integers
    ("<update>x</update>", [], {"update": 1}),
    ('<update id="abc">x</update>', [], {"update": 1}),
    ('<update id="-1">x</update>', [], {"update": 1}),
    ('<update id="7.5">x</update>', [], {"update": 1}),
    ("<update id=1e3>x</update>", [], {"update": 1}),
    ('<update id="٣">x</update>', [], {"update": 1}),
    ('<update id="">x</update>', [], {"update": 1}),
    ("<update id=\"3'>x</update>", [], {"update": 1}),
    ('<update id="1" id="2">x</update>', [], {"update": 1}),
    ('<update id="%s">x</update>' % ("9" * 19), [], {"update": 1}),
    ("<delete/><delete id=x/>", [], {"delete": 2}),
    # attributes on the kinds that take none
    ('<create id="3">x</create>', [], {"create": 1}),
    # empty bodies
    (
        "<create></create><read>  </read><update id=1></update><answer>\n</answer>",
        [],
        {"create": 1, "read": 1, "update": 1, "answer": 1},
    ),
    ("<create/><answer/>", [], {"create": 1, "answer": 1}),
    ('<delete id="7">because</delete>', [], {"delete": 1}),
    # truncated mid-tag and missing close tags
    ("<crea", [], {"create": 1}),
    ("<create>abc", [], {"create": 1}),
    ('<update id="3">x', [], {"update": 1}),
    ('<update id="3', [], {"update": 1}),
    ("<create>a</create> <re", [C("a")], {"read": 1}),
    ("<create>a</crea", [], {"create": 1}),
    ("<create>a <read>q</read>", [], {"create": 1}),  # unclosed: takes the rest, the read is not executed
    ("<create>fact <answer>x</answer> more", [], {"create": 1}),
    ('<delete id="7"><create>x</create>', [C("x")], {"delete": 1}),  # a delete swallows nothing
    ("x <a b", [], {}),
    # nested action tags: the outer is invalid and nothing inside runs
    ('<scratchpad>next: <delete id="3"/></scratchpad><read>q</read>', [R("q")], {"scratchpad": 1}),
    ("<create>A <read>q</read> B</create>", [], {"create": 1}),
    ("<create>A<create>B</create>C</create>", [], {"create": 2}),
    ("<create>a</read></create>", [], {"create": 1}),
    # stray close tags
    ("</create>", [], {"create": 1}),
    ("<create>a</create></create></answer>", [C("a")], {"create": 1, "answer": 1}),
    # unknown tags: self-closing or paired count; unpaired prose tags do not; they are transparent
    ("<foo>bar</foo>", [], {"unknown": 1}),
    ("<foo/><Foo x=1/>", [], {"unknown": 2}),
    ("<br> text </p>", [], {}),
    ("<memory><create>x</create></memory>", [C("x")], {"unknown": 1}),
    ("<create>the <b>bold</b> fact</create>", [C("the <b>bold</b> fact")], {}),
    ("<created>x</created>", [], {"unknown": 1}),
    ("< create>x</ create>", [], {}),
    # reasoning is ignored
    ("<think><create>a</create></think><read>b</read>", [R("b")], {}),
    ("<THINK>x</think>\n<answer>y</answer>", [A("y")], {}),
    ("<think>plan <create>a</create> and no close", [], {}),
    ("reasoning from the template <create>a</create></think><create>b</create>", [C("b")], {}),
    ("<create>a <think>hm</think>b</create>", [C("a b")], {}),
    ("<think>a</think><create>b</create></think><create>c</create>", [C("b"), C("c")], {}),
    ("<cre<think>x</think>ate>z</create>", [C("z")], {}),  # removal of the span joins the open tag
    ("<thi<think></think>nk><create>q</create>", [], {}),  # a think tag joined the same way swallows the rest
    # non-ASCII and emoji bodies
    ("<create>Zürich – 東京 🎉</create>", [C("Zürich – 東京 🎉")], {}),
    ("<answer>Ἀθῆναι</answer>", [A("Ἀθῆναι")], {}),
]


@pytest.mark.parametrize("reply,actions,invalid", CASES)
def test_parse_table(reply: str, actions: list[Action], invalid: dict[str, int]) -> None:
    result = parse_actions(reply)
    assert result.actions == actions
    assert dict(result.invalid) == invalid
    assert result.num_invalid == sum(invalid.values())


def test_bodies_are_truncated_not_invalid() -> None:
    result = parse_actions("<create>" + "x" * 50 + "</create><answer>" + "ab " * 10 + "</answer>", max_text_chars=10)
    assert result.actions == [C("x" * 10), A("ab ab ab a")]
    assert not result.invalid
    result = parse_actions("<create>ab" + " " * 20 + "c</create>", max_text_chars=5)
    assert result.actions == [C("ab")]  # the cut is stripped again


@pytest.mark.parametrize("bad", [None, 17, b"<create>x</create>", ["<create>x</create>"], object()])
def test_non_str_input_is_empty(bad: object) -> None:
    result = parse_actions(bad)  # type: ignore[arg-type]
    assert result.actions == [] and not result.invalid


@pytest.mark.parametrize("limit", [0, -1, 1.5, True])
def test_bad_max_text_chars(limit: object) -> None:
    with pytest.raises(ValueError, match="max_text_chars"):
        parse_actions("<create>x</create>", max_text_chars=limit)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "reply,count,invalid",
    [
        ("<create>" * 125_000, 0, {"create": 1}),
        ("</create>" * 110_000, 0, {"create": 110_000}),
        ("<create>fact</create>" * 50_000, 50_000, {}),
        ('<delete id="1">' * 70_000, 0, {"delete": 70_000}),
        ("<a>" * 330_000, 0, {}),
        ("<" + "a" * 1_000_000, 0, {}),  # not a prefix of "answer"
        ("x" * 1_000_000 + "<answ", 0, {"answer": 1}),
        ("<update id=" + "1" * 1_000_000 + ">x</update>", 0, {"update": 1}),
        ("<think>" * 145_000, 0, {}),
        ("<think></think>" * 70_000, 0, {}),
        ("<create>" + "é" * 1_000_000 + "</create>", 1, {}),
    ],
)
def test_megabyte_inputs(reply: str, count: int, invalid: dict[str, int]) -> None:
    assert len(reply) >= 990_000
    result = parse_actions(reply)
    assert len(result.actions) == count
    assert dict(result.invalid) == invalid
    assert all(len(a.text) <= 2000 for a in result.actions)


def test_render_canonical_forms() -> None:
    assert render_action(C("x")) == "<create>x</create>"
    assert render_action(U(7, "y")) == '<update id="7">y</update>'
    assert render_action(D(7)) == '<delete id="7"/>'
    assert render_action(S("")) == "<scratchpad></scratchpad>"


@pytest.mark.parametrize("action", [C(" x"), C(""), A("a <read>b</read>"), S("<think>x</think>"), R("x </create>")])
def test_render_rejects_unparseable_text(action: Action) -> None:
    with pytest.raises(ValueError, match="cannot render"):
        render_action(action)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"kind": "remember", "text": "x"},
        {"kind": "update", "text": "x"},
        {"kind": "update", "text": "x", "id": -1},
        {"kind": "delete", "id": True},
        {"kind": "create", "text": "x", "id": 3},
        {"kind": "delete", "text": "x", "id": 3},
    ],
)
def test_action_validates_its_fields(kwargs: dict) -> None:
    with pytest.raises(ValueError, match="Action"):
        Action(**kwargs)


# -- properties ----------------------------------------------------------------------------------------------

# fmt: off
FRAGMENTS = [
    "<create>", "</create>", "<read>", "</read>", '<update id="3">', "</update>", '<delete id="4"/>',
    "<delete id=5>", "</delete>", "<scratchpad>", "</scratchpad>", "<scratchpad/>", "<answer>", "</answer>",
    "<think>", "</think>", "<foo>", "</foo>", "<bar/>", "<crea", "<upd", 'id="', "<", ">", "/>", "/", "=",
    '"', "'", " ", "\n", "x", "7", "é", "🎉", "a < b", "<3", "<CREATE>", "</Answer>", "id=-1",
]
# fmt: on
tag_soup = st.lists(st.sampled_from(FRAGMENTS) | st.text(max_size=5), max_size=40).map("".join)
SETTINGS = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _check_result(reply: str, max_chars: int) -> None:
    result = parse_actions(reply, max_text_chars=max_chars)
    assert set(result.invalid) <= set(ACTION_KINDS) | {"unknown"}
    assert all(n > 0 for n in result.invalid.values())
    for action in result.actions:
        assert action.kind in ACTION_KINDS
        assert len(action.text) <= max_chars and action.text == action.text.strip()
        # every parsed action is canonical: it renders and parses back to itself
        assert parse_actions(render_action(action), max_text_chars=max_chars).actions == [action]


@SETTINGS
@given(st.text(), st.integers(1, 50))
def test_never_raises_on_text(reply: str, max_chars: int) -> None:
    _check_result(reply, max_chars)


@SETTINGS
@given(tag_soup, st.integers(1, 50))
def test_never_raises_on_tag_soup(reply: str, max_chars: int) -> None:
    _check_result(reply, max_chars)


@SETTINGS
@given(st.lists(tag_soup | st.text(), max_size=3).map("".join))
def test_parse_is_idempotent(reply: str) -> None:
    """Rendering the parsed actions and parsing again yields the same actions (the parser is idempotent)."""
    actions = parse_actions(reply).actions
    assert parse_actions(" ".join(render_action(a) for a in actions)).actions == actions


body = st.text(max_size=60).map(str.strip).filter(bool)
actions_st = st.one_of(
    st.builds(Action, st.sampled_from(["create", "read", "answer"]), body),
    st.builds(Action, st.just("scratchpad"), body | st.just("")),
    st.builds(Action, st.just("update"), body, st.integers(0, 10**18 - 1)),
    st.builds(lambda i: Action("delete", "", i), st.integers(0, 10**18 - 1)),
)


@SETTINGS
@given(st.lists(actions_st, max_size=6), st.sampled_from(["", " ", "\n", " reasoning <br> "]))
def test_render_round_trips(actions: list[Action], sep: str) -> None:
    rendered = []
    for action in actions:
        try:
            rendered.append(render_action(action))
        except ValueError:
            assume(False)
    assert parse_actions(sep.join(rendered)).actions == actions
