"""The ABC grammar measured: how much real ABC it reads, what it costs, and what it saves.

    .venv/bin/python -m benchmarks.grammar [--stride 1] [--compiles 5] [--compositions 20]

1. Coverage: of the music21 corpus tunes the checker accepts (every `--stride`th), the share the
   grammar reads, widened for tunes written elsewhere (`tune_grammar(read=True)`) and as a model
   may write them (`tune_grammar()`); the same for the real replies in
   ../shared/reference/llm-outputs (their tunes as the compose node extracts and repairs them).
2. Compile time of the answer grammar, for the tiny model's vocabulary, for a real BPE vocabulary
   (open_clip's CLIP tokenizer, 49,408 tokens: the largest on this machine; Keye's has about
   151,000) and for text alone (what `matches` checks an endpoint's answer with), median and p95
   over `--compiles` runs.
3. The mask's time per token with the CLIP vocabulary, at every character of a real answer (the
   graph tests' hymn in D), by part: what a server pays per token before sampling it.
4. The local backend: the tiny random-weight Qwen2-VL composes `--compositions` first attempts
   through the compose and parse-check nodes under the grammar (the shipped one sized to a
   budget of `--budget` tokens, cut there; the tests' short lead, cut at `--tokens`) and
   without it (cut at `--tokens`): tunes with an error at parse-check, tunes a limit cut and the
   grammar closed, and the mask's time per token. A random model writes as much as a grammar
   allows, so many constrained tunes are cut. Random weights say nothing about music; they show
   what the mask, the sizing and the closing guarantee.
5. Model calls per delivered tune on the real replies, replayed by a model that never fixes
   anything (as `benchmarks.real_replies`), without the grammar and with it: a constrained model
   could not have written a reply whose first tune has an error-tier diagnostic, so those drop
   out of the second row.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any
from unittest.mock import patch

import torch
import xgrammar
from langchain_core.callbacks import BaseCallbackHandler
from langchain_core.outputs import LLMResult
from matplotlib import cbook
from open_clip.tokenizer import SimpleTokenizer
from PIL import Image

from benchmarks.real_replies import replay
from benchmarks.timing import latencies, percentile
from img2music.graph import context as run_context
from img2music.graph.context import Context
from img2music.graph.local_vlm import LocalVLM
from img2music.graph.state import Input, rounds_and_repairs
from img2music.tools.abc.budget import lead_bytes
from img2music.tools.abc.check import check_abc
from img2music.tools.abc.controls import grammar_rules
from img2music.tools.abc.extract import extract_abc
from img2music.tools.abc.grammar import answer_grammar, longest_bytes, matches, tune_grammar
from img2music.tools.abc.repair import repair_abc
from img2music.tools.corpus.music21_corpus import iter_corpus_tunes
from img2music.tools.images import image_data_url, open_image
from tests.realworld import llm_replies
from tests.test_constrained import RUN_BUDGET, SHORT_LEAD, compose_and_check
from tests.test_graph import PHOTO, TUNE, answer
from tests.tiny_vlm import build_tiny_vlm


def shares(tunes: list[str]) -> str:
    """How many of the tunes each grammar reads, as a table row's cells."""
    read = sum(matches(tune_grammar(read=True), tune) for tune in tunes)
    written = sum(matches(tune_grammar(), tune) for tune in tunes)
    return (f"{len(tunes):>6} {read:>6} {read / len(tunes):>7.1%} {written:>7} "
            f"{written / len(tunes):>7.1%}")


def coverage(stride: int) -> None:
    print(f"1. coverage: tunes the checker accepts, and those each grammar reads\n"
          f"{'source':<34} {'valid':>6} {'read':>6} {'share':>7} {'written':>7} {'share':>7}")
    corpus = [tune.text for index, tune in enumerate(iter_corpus_tunes()) if index % stride == 0]
    valid = [text for text in corpus if check_abc(text).ok]
    print(f"{f'music21 corpus ({len(corpus)} tunes)':<34} {shares(valid)}")
    replies = []
    for path in llm_replies():
        extracted = extract_abc(path.read_text(encoding="utf-8"))
        if extracted.abc is not None:
            replies.append(repair_abc(extracted.abc, cut_off=extracted.cut_off).abc)
    valid = [tune for tune in replies if check_abc(tune).ok]
    print(f"{f'real model replies ({len(replies)} tunes)':<34} {shares(valid)}")


def clip_vocabulary() -> xgrammar.TokenizerInfo:
    """open_clip's CLIP BPE vocabulary as a byte-level tokenizer's, its end-of-word marks made
    leading spaces (as GPT-2-style vocabularies, Qwen's among them, write words)."""
    encoder: dict[str, int] = SimpleTokenizer().encoder
    vocabulary = [""] * len(encoder)
    for piece, token in encoder.items():
        vocabulary[token] = "\u0120" + piece[:-4] if piece.endswith("</w>") else piece
    return xgrammar.TokenizerInfo(vocabulary, xgrammar.VocabType.BYTE_LEVEL,
                                  stop_token_ids=[encoder["<end_of_text>"]])


def worst_cases() -> None:
    """The longest text each part of the answer admits, in bytes: the worst case in tokens of a
    byte-level tokenizer. What comes before the tune's first closing point (`lead_bytes`) must
    fit a call's budget for every constrained answer to leave a tune; sizing sees to it."""
    sized = {budget: Context(vlm_max_tokens=budget).answer_grammar() for budget in (4096, 8192)}
    grammars = {"shipped": answer_grammar(), "sized to 4,096": sized[4096],
                "sized to 8,192": sized[8192], "short lead (tests)": answer_grammar(SHORT_LEAD)}
    print("\n2a. the longest text each grammar admits, in bytes (worst-case tokens)\n"
          f"{'part':<22} " + " ".join(f"{name:>18}" for name in grammars))
    parts = ("preamble", "motivation", "header-line", "annotation", "measure-item",
             "written-music-line", "root")
    for part in parts:
        print(f"{part:<22} " + " ".join(f"{longest_bytes(grammar, part):>18,.0f}"
                                        for grammar in grammars.values()))
    print(f"{'before the first note':<22} " + " ".join(f"{lead_bytes(grammar):>18,.0f}"
                                                       for grammar in grammars.values()))


def compile_times(vlm: LocalVLM, clip: xgrammar.TokenizerInfo, runs: int) -> None:
    grammar = Context().answer_grammar()  # what a run at the default budget sends
    tiny = xgrammar.TokenizerInfo.from_huggingface(vlm.tokenizer)
    print(f"\n2. compiling the answer grammar ({len(grammar):,} characters), {runs} runs\n"
          f"{'vocabulary':<34} {'median ms':>10} {'p95 ms':>10}")
    for name, info in ((f"tiny model ({tiny.vocab_size} tokens)", tiny),
                       (f"CLIP BPE ({clip.vocab_size:,} tokens)", clip),
                       ("text alone (matches)", xgrammar.TokenizerInfo([]))):
        compiler = xgrammar.GrammarCompiler(info, cache_enabled=False)
        median, p95 = latencies(lambda: compiler.compile_grammar(grammar), runs)  # noqa: B023
        print(f"{name:<34} {median:>10.1f} {p95:>10.1f}")


def mask_times_by_part(clip: xgrammar.TokenizerInfo) -> None:
    text = answer(TUNE)
    matcher = xgrammar.GrammarMatcher(
        xgrammar.GrammarCompiler(clip, cache_enabled=False).compile_grammar(
            Context().answer_grammar()))
    bitmask = xgrammar.allocate_token_bitmask(1, clip.vocab_size)
    fence = text.index("```abc\n")
    music = text.index("\n", text.index("\nK:") + 1) + 1
    closing = text.index("```\n", music)
    times: dict[str, list[float]] = {"free text before the tune": [], "header": [],
                                     "music lines": [], "motivation": []}
    for position, character in enumerate(text):
        started = time.perf_counter()
        matcher.fill_next_token_bitmask(bitmask)
        elapsed = (time.perf_counter() - started) * 1000
        part = ("free text before the tune" if position < fence else "header" if position < music
                else "music lines" if position < closing else "motivation")
        times[part].append(elapsed)
        if not matcher.accept_string(character):
            raise AssertionError(f"the grammar refuses the answer at {position}")
    print(f"\n3. the mask's time per token, CLIP vocabulary, at each character of an answer\n"
          f"{'part':<34} {'chars':>6} {'median ms':>10} {'p95 ms':>10}")
    whole = [elapsed for values in times.values() for elapsed in values]
    for part, values in [*times.items(), ("the whole answer", whole)]:
        print(f"{part:<34} {len(values):>6} {statistics.median(values):>10.2f} "
              f"{percentile(values, 0.95):>10.2f}")


@contextmanager
def one_thread() -> Iterator[None]:
    """The tiny model is quicker on one thread than on two shared with other work."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


class MaskTimes(BaseCallbackHandler):
    """The local model's masking time per token, from each answer it gives."""

    def __init__(self) -> None:
        self.milliseconds: list[float] = []

    def on_llm_end(self, response: LLMResult, **_: Any) -> None:
        for generations in response.generations:
            for generation in generations:
                metadata = getattr(generation, "message", None)
                seconds = metadata.response_metadata.get("mask_seconds", []) if metadata else []
                self.milliseconds += [second * 1000 for second in seconds]


def local_backend(vlm: LocalVLM, compositions: int, budget: int, tokens: int) -> None:
    with Image.open(cbook.get_sample_data("grace_hopper.jpg", asfileobj=False)) as image:
        image_url = image_data_url(image.convert("RGB"), max_pixels=96 * 96)
    print(f"\n4. the tiny random-weight Qwen2-VL, {compositions} compositions each\n"
          f"{'grammar':<30} {'cut at':>7} {'no error':>9} {'closed':>7} {'tokens':>7} "
          f"{'mask median ms':>15} {'mask p95 ms':>12}  errors left")
    runs: list[tuple[str, str, dict[str, str], int, int]] = [
        (f"shipped, sized to {budget:,}", "on", {}, budget, budget),
        ("short lead (the tests')", "on", SHORT_LEAD, RUN_BUDGET, tokens),
        ("none", "off", {}, budget, tokens)]
    for name, grammar, lead, run_budget, cut in runs:
        clean = closed = written = 0
        masks = MaskTimes()
        found: Counter[str] = Counter()
        with patch.object(run_context, "grammar_rules",
                          lambda controls, lead=lead: {**lead, **grammar_rules(controls)}):
            for seed in range(compositions):
                attempt = compose_and_check(vlm, image_url, tokens=cut, budget=run_budget,
                                            callbacks=[masks], seed=seed, vlm_grammar=grammar)
                errors = attempt["check"]["errors"]
                clean += not errors
                closed += any(fix.startswith("closed the tune") for fix in attempt["fixes"])
                written += attempt["output_tokens"]
                found.update(error["message"][:40] for error in errors[:1])
        mask = (f"{statistics.median(masks.milliseconds):>15.3f} "
                f"{percentile(masks.milliseconds, 0.95):>12.3f}" if masks.milliseconds
                else f"{'-':>15} {'-':>12}")
        print(f"{name:<30} {cut:>7} {clean:>4}/{compositions:<4} {closed:>7} "
              f"{written // compositions:>7} "
              f"{mask}  {'; '.join(f'{n}x {what}' for what, n in found.most_common(2))}")


def calls_per_delivered_tune() -> None:
    state: Input = {"image": image_data_url(open_image(PHOTO), max_pixels=128 * 128)}
    context = Context(explain="none", rag=False)
    rows: dict[str, list[tuple[bool, int, int]]] = {"without the grammar": [],
                                                    "with the grammar": []}
    for path in llm_replies():
        final, calls, _ = replay(path.read_text(encoding="utf-8"), state, context)
        attempts: list[Any] = final.get("attempts", [])
        outcome = (final.get("status") == "done", calls, rounds_and_repairs(attempts)[1])
        rows["without the grammar"].append(outcome)
        first = attempts[0]["check"] if attempts else None
        if first is not None and first["error_count"] == 0:
            rows["with the grammar"].append(outcome)
    print(f"\n5. the real replies, replayed by a model that never fixes anything\n"
          f"{'':<22} {'replies':>8} {'delivered':>10} {'calls':>6} {'per tune':>9} "
          f"{'repairs':>8}")
    for name, outcomes in rows.items():
        delivered = sum(done for done, _, _ in outcomes)
        calls = sum(made for _, made, _ in outcomes)
        repairs = sum(asked for _, _, asked in outcomes)
        print(f"{name:<22} {len(outcomes):>8} {delivered:>10} {calls:>6} "
              f"{calls / max(delivered, 1):>9.2f} {repairs:>8}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--stride", type=int, default=1, help="every nth corpus tune")
    parser.add_argument("--compiles", type=int, default=5)
    parser.add_argument("--compositions", type=int, default=20)
    parser.add_argument("--budget", type=int, default=2304,
                        help="the budget the shipped grammar is sized to, in tokens")
    parser.add_argument("--tokens", type=int, default=400,
                        help="most tokens a composition under the short lead or no grammar")
    arguments = parser.parse_args()
    coverage(arguments.stride)
    with one_thread():
        model, processor = build_tiny_vlm()
        vlm = LocalVLM(model, processor, name="tiny")
        clip = clip_vocabulary()
        compile_times(vlm, clip, arguments.compiles)
        worst_cases()
        mask_times_by_part(clip)
        local_backend(vlm, arguments.compositions, arguments.budget, arguments.tokens)
    calls_per_delivered_tune()


if __name__ == "__main__":
    main()
