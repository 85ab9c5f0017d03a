"""Throughput of the LLM judge's OpenAI backend: one request at a time vs `concurrency` in flight.

A remote judge spends its time waiting on the network and the provider, not on this machine, so
the stub server (tests/stub_openai_server.py) answers every request after a fixed delay that models
that latency; requests/s then shows what bounded concurrency buys. Each round judges fresh texts
(no cache hits) with a fresh judge; the table gives the median round and the spread. Writes the
`llm-judge` section of docs/benchmarks.md.

    .venv/bin/python bench/bench_llm_judge.py [--texts 64] [--delay-ms 50] [--rounds 3] [--concurrency 1 8] [--no-write]
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "bench"))
sys.path.insert(0, str(ROOT))

from common import write_section  # noqa: E402
from stub_openai_server import stub_openai_server  # noqa: E402

from rlaif_tasks.rewards.llm_judge import LLMJudge, LLMJudgeConfig  # noqa: E402

DOC = ROOT / "docs" / "benchmarks.md"
HEADER = "# Benchmarks: LLM judge\n\nEach section is written by the script it names; re-run the script to refresh it.\n"


def one_round(url: str, concurrency: int, texts: list[str]) -> tuple[float, int]:
    config = LLMJudgeConfig(backend="openai", model="stub-judge", base_url=url, api_key_env=None, concurrency=concurrency, timeout_s=30)
    with LLMJudge(config) as judge:
        started = time.perf_counter()
        scores = judge.score(texts)
        seconds = time.perf_counter() - started
    assert len(scores) == len(texts) and judge.counters.malformed == 0, judge.counters
    return seconds, judge.counters.requests


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--texts", type=int, default=64, help="texts judged per round")
    parser.add_argument("--delay-ms", type=float, default=50.0, help="the stub's fixed delay per request")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()

    rows = []
    with stub_openai_server(delay_s=args.delay_ms / 1000, default_answer="3") as stub:
        one_round(stub.url, 1, ["warm-up"])
        for concurrency in args.concurrency:
            rates, peaks = [], []
            for r in range(args.rounds):
                stub.reset()
                texts = [f"c{concurrency} round {r} text {i}" for i in range(args.texts)]
                seconds, requests = one_round(stub.url, concurrency, texts)
                rates.append(requests / seconds)
                peaks.append(stub.peak_in_flight)
            rows.append((concurrency, statistics.median(rates), min(rates), max(rates), max(peaks)))
            print(f"concurrency {concurrency}: {', '.join(f'{x:.1f}' for x in rates)} requests/s", flush=True)

    base = rows[0][1]
    ideal = 1000 / args.delay_ms
    table = [
        "| concurrency | requests/s (median) | min - max over rounds | peak in flight at the stub | speed-up vs concurrency " + f"{rows[0][0]} |",
        "|---:|---:|---:|---:|---:|",
    ]
    for concurrency, median, low, high, peak in rows:
        table.append(f"| {concurrency} | {median:.1f} | {low:.1f} - {high:.1f} | {peak} | {median / base:.2f}x |")
    command = "`.venv/bin/python bench/bench_llm_judge.py" + "".join(f" {a}" for a in sys.argv[1:]) + "`"
    body = "\n".join([
        "## LLM judge (OpenAI backend): requests/s at concurrency " + " vs ".join(str(c) for c in args.concurrency),
        "",
        f"`bench/bench_llm_judge.py` — command: {command}; {os.cpu_count()} CPU cores, Python {platform.python_version()}, "
        f"{time.strftime('%Y-%m-%d')}.",
        "",
        f"`LLMJudge.score` on {args.texts} distinct texts per round (no cache hits), a fresh judge per round, "
        f"{args.rounds} rounds per setting, against tests/stub_openai_server.py on 127.0.0.1, which answers each request "
        f"after a fixed {args.delay_ms:g} ms to stand in for a remote endpoint's latency (one request at a time can then "
        f"reach at most {ideal:.0f} requests/s). Requests/s = HTTP requests sent / wall time of the `score` call.",
        "",
        *table,
        "",
        f"The serial rate is bounded by the latency ({ideal:.0f}/s minus client and server overhead); with N requests "
        "in flight the bound is N times that, less the thread pool and HTTP overhead on this machine. Against a real "
        "provider the rate limit (429, retried with back-off) caps what higher concurrency buys.",
    ])
    print("\n" + "\n".join(table))
    if not args.no_write:
        if not DOC.exists():
            DOC.write_text(HEADER, encoding="utf-8")
        print(f"wrote {write_section('llm-judge', body, path=DOC)}")


if __name__ == "__main__":
    main()
