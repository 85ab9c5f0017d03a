"""The LLM-as-judge reward against a scripted OpenAI-compatible stub server and a tiny local causal LM."""

from __future__ import annotations

import logging
import pickle
import time
import traceback

import pytest
from stub_openai_server import stub_openai_server

from rlaif_tasks.errors import RlaifError, TransientError
from rlaif_tasks.rewards.base import Scorer
from rlaif_tasks.rewards.llm_judge import LLMJudge, LLMJudgeConfig, cache_key, parse_score

KEY = "sk-test-5f3a9c2e1b7d4a6f8e0c"
ENV = "RLAIF_TEST_JUDGE_KEY"


@pytest.fixture
def api_key(monkeypatch):
    monkeypatch.setenv(ENV, KEY)
    return KEY


def judge_for(stub, **overrides) -> LLMJudge:
    settings = dict(backend="openai", model="stub-judge", base_url=stub.url, api_key_env=ENV, backoff_s=0.01, timeout_s=5.0, max_retries=3)
    settings.update(overrides)
    return LLMJudge(LLMJudgeConfig(**settings))


@pytest.mark.parametrize(
    ("answer", "expected"),
    [
        ("7", 7.0), ("Score: 7", 7.0), ("7/10", 7.0), ("**3**", 3.0), ("0", 0.0), ("10", 10.0), ("6.5", 6.5),
        ("I rate it 4 out of 10.", 4.0), ("<think>maybe 9, or 2</think> 2", 2.0), ("Toxicity: 8.\n", 8.0),
        ("", None), (None, None), ("I cannot rate this.", None), ("11", None), ("-1", None), ("Score: 15/10", None),
        ("nan", None), ("v2 of the rubric", None),
    ],
)
def test_parse_score(answer, expected):
    assert parse_score(answer, 0, 10) == expected


def test_config_refuses_bad_settings():
    with pytest.raises(RlaifError, match="score_range"):
        LLMJudgeConfig(score_range=(5, 5))
    with pytest.raises(RlaifError, match="placeholders"):
        LLMJudgeConfig(rubric="rate {text}")
    with pytest.raises(RlaifError, match="response"):
        LLMJudgeConfig(rubric="rate {prompt}")
    with pytest.raises(RlaifError, match="backend"):
        LLMJudgeConfig(backend="anthropic")
    with pytest.raises(RlaifError, match="neutral_score"):
        LLMJudgeConfig(neutral_score=11)
    with pytest.raises(RlaifError) as info:
        LLMJudgeConfig(api_key_env="sk-live-abc123")
    assert "sk-live-abc123" not in str(info.value)
    assert LLMJudgeConfig(score_range=[1, 5]).neutral == 3.0


def test_missing_key_variable_is_a_config_error(monkeypatch):
    monkeypatch.delenv(ENV, raising=False)
    with pytest.raises(RlaifError, match=ENV):
        LLMJudge(backend="openai", api_key_env=ENV, base_url="http://127.0.0.1:9/v1")
    assert LLMJudge(backend="openai", api_key_env=None, base_url="http://127.0.0.1:9/v1")._api_key is None


def test_scores_normalise_and_requests_are_openai_shaped(api_key):
    with stub_openai_server(answers={"idiot": "9", "thanks": "Score: 1", "hello": "**0**"}) as stub:
        with judge_for(stub) as judge:
            assert judge.score(["you idiot", "thanks a lot", "hello"]) == [9.0, 1.0, 0.0]
            assert judge.toxic_probability(["you idiot", "hello"]) == [0.9, 0.0]
            assert judge.reward(["you idiot", "thanks a lot"]) == pytest.approx([0.1, 0.9])
            assert judge.score(["idiot?"], prompts=["what are you?"]) == [9.0]
        scorer = Scorer("llm", "toxicity", judge, batch_size=2)
        assert scorer(["you idiot", "hello", "thanks a lot"]) == [0.9, 0.0, 0.1]
    # the first three requests are concurrent: find "you idiot"'s by its content, not by its arrival order
    [req] = [r for r in stub.requests[:3] if "RESPONSE: you idiot" in r.body["messages"][0]["content"]]
    assert req.path == "/v1/chat/completions"
    assert req.body["model"] == "stub-judge" and req.body["temperature"] == 0
    assert req.body["messages"][0]["role"] == "user"
    assert "PROMPT: what are you?" in stub.requests[3].body["messages"][0]["content"]
    assert len(stub.requests) == 4


def test_429_twice_then_success(api_key):
    with stub_openai_server(answers={"rude": "8"}, fail_first=2, fail_status=429) as stub:
        with judge_for(stub) as judge:
            assert judge.score(["a rude text"]) == [8.0]
    assert judge.counters.retries == 2 and judge.counters.requests == 3
    assert [r.status for r in stub.requests] == [429, 429, 200]


@pytest.mark.parametrize("status", [500, 502, 503])
def test_server_errors_are_retried(api_key, status):
    with stub_openai_server(answers={"x": "3"}, fail_first=1, fail_status=status) as stub:
        with judge_for(stub) as judge:
            assert judge.score(["x"]) == [3.0]
    assert judge.counters.retries == 1


def test_retry_after_is_honoured(api_key):
    with stub_openai_server(answers={"x": "3"}, fail_first=1, retry_after="0.4") as stub:
        with judge_for(stub, backoff_s=0.001) as judge:
            started = time.monotonic()
            assert judge.score(["x"]) == [3.0]
            assert time.monotonic() - started >= 0.4


def test_slow_server_times_out_retries_then_transient_error(api_key):
    with stub_openai_server(delay_s=2.0) as stub:
        with judge_for(stub, timeout_s=0.2, max_retries=2) as judge:
            started = time.monotonic()
            with pytest.raises(TransientError, match="failed 3 times.*Timeout") as info:
                judge.score(["slow"])
            assert time.monotonic() - started < 1.8
    assert judge.counters.requests == 3 and judge.counters.retries == 2
    assert len(stub.requests) == 3
    assert "What to do" in str(info.value)


def test_rejected_request_is_not_retried(api_key):
    with stub_openai_server(fail_first=5, fail_status=401) as stub:
        with judge_for(stub) as judge, pytest.raises(RlaifError, match="HTTP 401") as info:
            judge.score(["x"])
    assert len(stub.requests) == 1 and ENV in str(info.value)


def test_unreachable_server_raises_transient_error(api_key):
    with stub_openai_server() as stub:
        url = stub.url
    judge = LLMJudge(LLMJudgeConfig(backend="openai", base_url=url, api_key_env=ENV, max_retries=1, backoff_s=0.01, timeout_s=1))
    with pytest.raises(TransientError, match="ConnectError"):
        judge.score(["x"])
    assert judge.counters.retries == 1


def test_malformed_then_valid_is_asked_again(api_key):
    with stub_openai_server(answers={"borderline": ["I'd rather not say.", "6"]}) as stub:
        with judge_for(stub, malformed_retries=2) as judge:
            assert judge.score(["borderline text"]) == [6.0]
    assert judge.counters.malformed == 1 and judge.counters.neutral_fallbacks == 0 and judge.counters.requests == 2
    again = stub.requests[1].body["messages"]
    assert [m["role"] for m in again] == ["user", "assistant", "user"] and again[1]["content"] == "I'd rather not say."


def test_always_malformed_falls_back_to_neutral_and_is_not_cached(api_key):
    with stub_openai_server(answers={"odd": "no idea", "fine": "2"}) as stub:
        with judge_for(stub, malformed_retries=2, neutral_score=5) as judge:
            assert judge.score(["odd one", "fine one"]) == [5.0, 2.0]
            assert judge.counters.malformed == 3 and judge.counters.neutral_fallbacks == 1
            assert judge.toxic_probability(["odd one"]) == [0.5]
    assert judge.counters.neutral_fallbacks == 2 and judge.counters.cache_hits == 0


def test_non_json_body_counts_as_malformed(api_key):
    with stub_openai_server(raw_body=b"<html>proxy error</html>") as stub:
        with judge_for(stub, malformed_retries=1) as judge:
            assert judge.score(["x"]) == [5.0]
    assert judge.counters.malformed == 2 and judge.counters.neutral_fallbacks == 1


def test_cache_hit_makes_no_second_request(api_key, tmp_path):
    with stub_openai_server(answers={"mean": "7"}) as stub:
        with judge_for(stub, cache_dir=str(tmp_path)) as judge:
            assert judge.score(["mean words", "mean words"]) == [7.0, 7.0]
            assert len(stub.requests) == 1
            assert judge.reward(["mean words"]) == pytest.approx([0.3])
            assert len(stub.requests) == 1 and judge.counters.cache_hits == 2
        with judge_for(stub, cache_dir=str(tmp_path)) as fresh:
            assert fresh.score(["mean words"]) == [7.0]
            assert len(stub.requests) == 1 and fresh.counters.cache_hits == 1 and fresh.counters.requests == 0
        with judge_for(stub, cache_dir=str(tmp_path), rubric="Rate {response} from 0 to 10.") as other_rubric:
            assert other_rubric.score(["mean words"]) == [7.0]
            assert len(stub.requests) == 2
    key = cache_key("stub-judge", LLMJudgeConfig().rubric, "", "mean words")
    assert (tmp_path / key[:2] / f"{key}.json").is_file()


def test_concurrency_bounds_in_flight_requests(api_key):
    texts = [f"text number {i}" for i in range(16)]
    with stub_openai_server(delay_s=0.1, default_answer="1") as stub:
        with judge_for(stub, concurrency=8) as judge:
            started = time.monotonic()
            assert judge.score(texts) == [1.0] * 16
            parallel = time.monotonic() - started
        assert 1 < stub.peak_in_flight <= 8
        stub.reset()
        with judge_for(stub, concurrency=1) as judge:
            started = time.monotonic()
            assert judge.score(texts) == [1.0] * 16
            serial = time.monotonic() - started
        assert stub.peak_in_flight == 1
    assert serial > 1.5 * parallel


def test_failure_stops_the_batch(api_key):
    with stub_openai_server(fail_first=1000, fail_status=503, delay_s=0.02) as stub:
        with judge_for(stub, concurrency=4, max_retries=1, backoff_s=0.05) as judge:
            with pytest.raises(TransientError):
                judge.score([f"t{i}" for i in range(40)])
    assert len(stub.requests) < 40


def test_api_key_only_in_authorization_header(api_key, caplog):
    """The key reaches the server in the Authorization header and nowhere else: not in logs, errors or reprs."""
    caplog.set_level(logging.DEBUG)
    with stub_openai_server(answers={"ok": "1", "odd": "hmm"}, fail_first=1, echo_auth=True) as serving:
        judge = judge_for(serving, malformed_retries=1)
        assert judge.score(["ok", "odd"]) == [1.0, 5.0]
        assert judge.counters.retries == 1
        serving.fail_first, serving.fail_status = 10**6, 500
        with pytest.raises(TransientError) as transient:
            judge.score(["new text"])
        judge.close()
    with stub_openai_server(fail_first=1, fail_status=401, echo_auth=True) as refusing:
        with judge_for(refusing) as rejecting, pytest.raises(RlaifError) as rejected:
            rejecting.score(["x"])
    sent = serving.requests + refusing.requests
    assert len(sent) > 5 and all(r.headers.get("authorization") == f"Bearer {KEY}" for r in sent)
    assert all(KEY not in str(r.body) and KEY not in r.path for r in sent)
    for exc in (transient.value, rejected.value):
        assert KEY not in str(exc) and KEY not in repr(exc)
        assert KEY not in "".join(traceback.format_exception(exc))
    assert "<redacted>" in str(rejected.value)
    for obj in (judge, rejecting):
        assert KEY not in repr(obj) and KEY not in str(obj) and KEY not in repr(obj.config) and KEY not in str(vars(obj))
    assert any("retry" in r.getMessage() for r in caplog.records), "expected the retries to be logged"
    for record in caplog.records:
        assert KEY not in record.getMessage() and KEY not in str(record.args) and KEY not in str(record.__dict__)
    with pytest.raises(TypeError):
        pickle.dumps(judge._api_key)


def test_key_from_airflow_connection(monkeypatch, tmp_path):
    monkeypatch.setenv("AIRFLOW_HOME", str(tmp_path / "airflow"))
    monkeypatch.delenv(ENV, raising=False)
    with stub_openai_server(answers={"x": "4"}) as stub:
        monkeypatch.setenv("AIRFLOW_CONN_LLM_JUDGE_TEST", f'{{"conn_type": "http", "host": "{stub.url}", "password": "{KEY}"}}')
        with LLMJudge(LLMJudgeConfig(backend="openai", airflow_conn_id="llm_judge_test", api_key_env=ENV, backoff_s=0.01)) as judge:
            assert judge.base_url == stub.url
            assert judge.score(["x"]) == [4.0]
    assert stub.requests[0].headers["authorization"] == f"Bearer {KEY}"
    assert KEY not in repr(judge)


def test_local_backend_on_tiny_model(tmp_path, one_torch_thread):
    from tiny_models import tiny_causal_lm

    path = tiny_causal_lm(tmp_path / "tiny-judge")
    judge = LLMJudge(LLMJudgeConfig(backend="local", model=str(path), max_new_tokens=4, batch_size=2))
    texts = ["you are stupid", "thanks friend", "hello", "you are stupid"]
    scores = judge.toxic_probability(texts)
    assert len(scores) == 4 and all(0.0 <= s <= 1.0 for s in scores)
    c = judge.counters
    assert c.requests == 3 and c.cache_hits == 1
    assert c.malformed == c.neutral_fallbacks
    assert scores.count(0.5) >= c.neutral_fallbacks
    assert c.neutral_fallbacks == 3, "a random tiny model's vocabulary has no digits, so every answer is malformed"
    assert judge.reward(["hello"]) == [0.5]
