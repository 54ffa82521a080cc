"""What the graph makes of what real models wrote: every reply of the development set
(`../shared/reference/llm-outputs`), replayed by a model that never fixes anything.

    .venv/bin/python -m benchmarks.real_replies [--max-repairs 3] [--refine-rounds 1]

Per reply: whether a tune was delivered, the model calls (describe included), the repairs asked
for, the faults left in the delivered tune (or why there is none), and the graph's own time with
a zero-latency model and no retrieval or rendering; then the totals, the time as median and p95.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time

from benchmarks.timing import percentile
from img2music.graph.context import Context
from img2music.graph.graph import build_graph
from img2music.graph.state import Input, State, rounds_and_repairs
from img2music.pipeline.runs import STATE_KEYS
from img2music.tools.images import image_data_url, open_image
from tests.realworld import llm_replies
from tests.scripted import ScriptedChatModel
from tests.test_graph import DESCRIPTION, PHOTO

MOST_CALLS = 32  # the model answers this often at most; a bounded run never needs it


def replay(reply: str, state: Input, context: Context) -> tuple[State, int, float]:
    """The final state, the model calls, and the milliseconds the graph took."""
    model = ScriptedChatModel(replies=[DESCRIPTION, *[reply] * MOST_CALLS])
    graph = build_graph(model_for=lambda _: model)
    start = time.perf_counter()
    final = asyncio.run(graph.ainvoke(state, context=context, output_keys=STATE_KEYS))
    return final, len(model.calls), (time.perf_counter() - start) * 1000  # type: ignore[return-value]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--max-repairs", type=int, default=3)
    parser.add_argument("--refine-rounds", type=int, default=1)
    arguments = parser.parse_args()
    state: Input = {"image": image_data_url(open_image(PHOTO), max_pixels=128 * 128)}
    context = Context(explain="none", rag=False, max_repairs=arguments.max_repairs,
                      refine_rounds=arguments.refine_rounds)
    print(f"{'reply':<46} {'delivered':>9} {'calls':>5} {'repairs':>7} {'faults':>6} {'ms':>6}"
          "  first fault, or why no tune")
    delivered = calls = repairs = faults = 0
    times: list[float] = []
    replies = llm_replies()
    for path in replies:
        final, made, milliseconds = replay(path.read_text(encoding="utf-8"), state, context)
        done = final.get("status") == "done"
        asked = rounds_and_repairs(final.get("attempts", []))[1]
        left = final.get("fault_count", 0) if done else 0
        note = (final.get("faults") or [""])[0] if done else final.get("failure", "")
        print(f"{path.name[:46]:<46} {'yes' if done else 'no':>9} {made:>5} {asked:>7} "
              f"{left if done else '-':>6} {milliseconds:>6.0f}  {note[:70]}")
        delivered += done
        calls, repairs, faults = calls + made, repairs + asked, faults + left
        times.append(milliseconds)
    print(f"\ntotal: {delivered} of {len(replies)} replies delivered a tune; {calls} model calls "
          f"({calls / len(replies):.2f} a reply, at most {max_calls(context)} by the limits); "
          f"{repairs} repairs asked; {faults} faults left in the delivered tunes")
    print(f"graph time per reply: median {statistics.median(times):.0f} ms, "
          f"p95 {percentile(times, 0.95):.0f} ms")


def max_calls(context: Context) -> int:
    """Describe, then each round's composition or refinement and its repairs."""
    return 1 + (1 + context.refine_rounds) * (1 + context.max_repairs)


if __name__ == "__main__":
    main()
