"""Loading a package and generating with the native executor.

`tierlm.load(path, budget=...)` returns a Model; the per-token work runs in libtierlm
(tierlm._core.Model), this module only converts prompts, options and results.
"""

import os
from dataclasses import dataclass, field

import numpy as np

from tierlm import _core
from tierlm.budgets import default_budgets
from tierlm.errors import InvalidArgumentError
from tierlm.limits import check
from tierlm.records import as_dict, columns
from tierlm.sizes import parse_size


@dataclass
class GenerateResult:
    """What generate() returns: the new tokens only, their text, and timings."""

    prompt_ids: list
    output_ids: list
    text: str | None
    finish_reason: str
    stats: dict = field(default_factory=dict)


@dataclass
class Token:
    """One streamed token: its id and the text it adds (None without a tokenizer)."""

    id: int
    text: str | None

    def __int__(self):
        return self.id

    def __index__(self):
        return self.id


# The tiers a loaded model holds memory in. The executor keeps weights, KV cache and
# activations in the host tier, and with a kv_host_budget the KV cache's coldest blocks in a
# disk scratch tier; a device tier (CUDA backend) comes with a later issue, and until then its
# budget is refused, not ignored.
LOAD_TIERS = ("host", "disk")


def _budgets(budget):
    """{"host": bytes, "disk": bytes or None} from a dict of sizes, one size (the host budget)
    or None (defaults)."""
    if budget is None:
        budget = {}
    elif not isinstance(budget, dict):
        budget = {"host": budget}
    unused = sorted(set(budget) - set(LOAD_TIERS))
    if unused:
        later = [t for t in unused if t == "device"]
        raise InvalidArgumentError(
            f"budget: tierlm.load uses only the {' and '.join(LOAD_TIERS)} tier budgets, not "
            f"{', '.join(repr(t) for t in unused)}"
            + (
                " (the executor has no device tier yet: weights, KV cache and "
                "activations live in the host tier; a later release adds it)"
                if later
                else ""
            )
            + '; give e.g. budget={"host": "4GiB"}'
        )
    host = budget.get("host")
    host = default_budgets()["host"] if host is None else parse_size(host, "host budget")
    disk = budget.get("disk")
    disk = None if disk is None else check("disk_budget", parse_size(disk, "disk budget"))
    return {"host": check("host_budget", host), "disk": disk}


def _load_tokenizer(tokenizer_dir):
    if not tokenizer_dir:
        return None
    path = os.path.join(tokenizer_dir, "tokenizer.json")
    if not os.path.exists(path):
        return None
    from tokenizers import Tokenizer

    return Tokenizer.from_file(path)


def _sampling(
    max_new_tokens,
    temperature,
    top_k,
    top_p,
    seed,
    stop_at_eos,
    repetition_penalty,
    repetition_last_n,
):
    """Generation options as the native layer takes them (None means the default)."""
    options = _core.GenerateOptions()
    options.max_new_tokens = check("max_new_tokens", max_new_tokens)
    options.temperature = float(temperature)
    options.top_k = check("top_k", top_k or 0)
    options.top_p = float(1.0 if top_p is None else top_p)
    options.seed = check("seed", seed or 0)
    options.stop_at_eos = bool(stop_at_eos)
    options.repetition_penalty = float(1.0 if repetition_penalty is None else repetition_penalty)
    options.repetition_last_n = check(
        "repetition_last_n", 64 if repetition_last_n is None else repetition_last_n
    )
    return options


class _TextStream:
    """The text each streamed token adds, decoding only the last few tokens per step (a whole
    decode per token is quadratic in the length). Text is held back while the tail decodes to
    an incomplete character (U+FFFD) unless the token is the last; the texts of a stream that
    ran to its end, joined, equal the decode of all its tokens."""

    def __init__(self, model):
        self._decode = model.decode
        self._ids = []
        self._start = 0  # the window decoded each step starts here
        self._emitted = 0  # tokens whose text is out (the window's text up to them is)

    def add(self, token, last):
        self._ids.append(token)
        done = self._decode(self._ids[self._start : self._emitted])
        now = self._decode(self._ids[self._start :])
        if len(now) <= len(done) or (now.endswith("\ufffd") and not last):
            return ""
        self._start, self._emitted = self._emitted, len(self._ids)
        return now[len(done) :]


class Model:
    """A loaded package. Use tierlm.load() to make one."""

    def __init__(self, native, budgets):
        self._native = native
        self.budgets = budgets
        self.tokenizer = _load_tokenizer(native.tokenizer_dir)

    @property
    def path(self):
        return self._native.path

    @property
    def config(self):
        return as_dict(self._native.config)

    @property
    def architecture(self):
        return self._native.architecture

    @property
    def dtype(self):
        return self._native.dtype

    @property
    def vocab_size(self):
        return self._native.vocab_size

    @property
    def context_length(self):
        return self._native.context_length

    def encode(self, prompt):
        """Token ids of a string (with the tokenizer's special tokens) or of a list of ids."""
        if isinstance(prompt, str):
            if self.tokenizer is None:
                raise InvalidArgumentError(
                    f"{self.path} has no tokenizer; pass token ids instead of text"
                )
            return list(self.tokenizer.encode(prompt, add_special_tokens=True).ids)
        if isinstance(prompt, np.ndarray):
            prompt = prompt.reshape(-1).tolist()
        try:
            ids = [int(i) for i in prompt]
        except (TypeError, ValueError) as error:
            raise InvalidArgumentError(
                f"prompt must be a string or a list of token ids, got {type(prompt).__name__}"
            ) from error
        return [check("token id", i) for i in ids]

    def decode(self, ids):
        if self.tokenizer is None:
            return None
        return self.tokenizer.decode(list(ids), skip_special_tokens=True)

    def chat_prompt(self, messages, add_generation_prompt=True):
        """Token ids of messages under the package's chat template (rendered as transformers'
        apply_chat_template, tierlm.chat), tokenized without adding special tokens."""
        from tierlm.chat import chat_template, render_chat

        if self.tokenizer is None:
            raise InvalidArgumentError(f"{self.path} has no tokenizer; chat needs one")
        template, special = chat_template(self._native.tokenizer_dir)
        text = render_chat(template, messages, add_generation_prompt, special)
        return list(self.tokenizer.encode(text, add_special_tokens=False).ids)

    def chat(self, messages, **options):
        """Generates the assistant's reply to messages ([{"role": "user", "content": ...}]);
        options are generate()'s. Returns a GenerateResult."""
        return self.generate(self.chat_prompt(messages), **options)

    def generate(
        self,
        prompt,
        max_new_tokens=32,
        temperature=0.0,
        top_k=0,
        top_p=1.0,
        seed=0,
        stop_at_eos=True,
        repetition_penalty=1.0,
        repetition_last_n=64,
    ):
        """Generates after prompt (text or ids); returns a GenerateResult."""
        ids = self.encode(prompt)
        before = self._native.stats()
        out = self._native.generate(
            ids,
            _sampling(
                max_new_tokens,
                temperature,
                top_k,
                top_p,
                seed,
                stop_at_eos,
                repetition_penalty,
                repetition_last_n,
            ),
        )
        model = self._native.stats().since(before)
        stats = self._result_stats(model, out)
        if model.sparse:  # this generation's tokens from the log (the last 65536 kept)
            log = self.sparse_tokens()
            stats["sparse_per_token"] = {
                k: v[max(len(v) - model.sparse_tokens, 0) :] for k, v in log.items()
            }
        return self._result(ids, out, stats)

    def generate_batch(
        self,
        prompts,
        max_new_tokens=32,
        temperature=0.0,
        top_k=0,
        top_p=1.0,
        seed=0,
        stop_at_eos=True,
        repetition_penalty=1.0,
        repetition_last_n=64,
    ):
        """Generates for several prompts (texts or id lists) at once; returns one
        GenerateResult per prompt. Needs a model loaded with max_batch >= len(prompts).
        Decode steps run all unfinished sequences together (one weight read per step);
        prompt i samples with seed + i. stats["decode_tokens_per_s"] is the batch's."""
        ids = [self.encode(p) for p in prompts]
        before = self._native.stats()
        outs = self._native.generate_batch(
            ids,
            _sampling(
                max_new_tokens,
                temperature,
                top_k,
                top_p,
                seed,
                stop_at_eos,
                repetition_penalty,
                repetition_last_n,
            ),
        )
        model = self._native.stats().since(before)
        return [
            self._result(p, out, self._result_stats(model, out))
            for p, out in zip(ids, outs, strict=True)
        ]

    def _result(self, ids, out, stats):
        return GenerateResult(
            prompt_ids=ids,
            output_ids=list(out.output_ids),
            text=self.decode(out.output_ids),
            finish_reason=out.finish_reason,
            stats=stats,
        )

    @staticmethod
    def _result_stats(model, out):
        """The model's stats over the generation (counters of this call; sizes, peaks and
        settings as now) under the generation's own tokens and timings."""
        return {**as_dict(model), **as_dict(out.stats)}

    def stream(
        self,
        prompt,
        max_new_tokens=32,
        temperature=0.0,
        top_k=0,
        top_p=1.0,
        seed=0,
        stop_at_eos=True,
        repetition_penalty=1.0,
        repetition_last_n=64,
    ):
        """Yields a Token per new token as it is generated."""
        ids = self.encode(prompt)
        generator = _core.Generator(
            self._native,
            ids,
            _sampling(
                max_new_tokens,
                temperature,
                top_k,
                top_p,
                seed,
                stop_at_eos,
                repetition_penalty,
                repetition_last_n,
            ),
        )
        text = _TextStream(self) if self.tokenizer is not None else None
        while (token := generator.next()) >= 0:
            yield Token(token, None if text is None else text.add(token, generator.done))

    def logits(self, ids, append=False):
        """Last-position logits (float32 numpy, vocab_size) of ids, from an empty cache; with
        append=True ids run after the tokens already in the cache (a sequence fed piece by
        piece, as perplexity and teacher-forced comparisons do)."""
        return self._native.logits(self.encode(ids), append=bool(append))

    def token_nll(self, ids):
        """-log p(ids[i] | ids[:i]) for i = 1 .. n-1 (float32 numpy), from an empty cache, run in
        prefill chunks through the kv_policy: exp(mean) is the perplexity, past the context
        with an evicting policy (positions counted within the cache)."""
        return self._native.token_nll(self.encode(ids))

    def kv_scores(self, slot=0):
        """The kv_policy's score of each token the cache of `slot` holds (float32 numpy): sirllm
        its decayed token entropy, h2o its accumulated attention mass (summed over layers and
        query heads); empty for the full cache and the window policy."""
        return self._native.kv_scores(int(slot))

    def sparse_tokens(self):
        """Sparse FFN: per token since load (the last 65536), lists of neurons_predicted,
        neurons_read, bytes_read, requests and predictor/io/memory/compute seconds."""
        return columns(self._native.sparse_tokens(), _core.SparseTokenInfo)

    def stats(self):
        """Totals since load: tokens and seconds of prefill/decode, bytes read, tier stats,
        streaming and sparse FFN counters, and the rates derived from them."""
        return as_dict(self._native.stats())

    def placement(self):
        """Where the weights live: {"streaming", "resident_bytes", "section_bytes" (the largest
        streamed matrix), "sections", "chunks" (section-sized reads per forward pass),
        "ring_bytes", "streamed_bytes" (read per forward pass), "minimum_budget",
        "resident_layers", "streamed_layers", "streamed_tensors", "pinned_tensors",
        "row_tensors" (embedding tables read by rows on demand), ...}; for a mixture-of-experts
        model also "experts": {"host_experts", "disk_experts" (per moe layer, the experts homed on
        each tier), "homing" (by a usage profile or outer layers first), "cache_slots", "policy",
        "expert_bytes", ...}."""
        placement = as_dict(self._native.placement())
        experts = self._native.expert_placement()
        if experts.moe:
            placement["experts"] = as_dict(experts)
        return placement

    def expert_usage(self):
        """Mixture of experts: per moe layer, the tokens routed to each expert since load (what
        tierlm.profile_experts stores as the package's usage profile); [] without moe layers."""
        return [list(counts) for counts in self._native.expert_usage()]

    def stream_events(self):
        """One entry per streamed layer, at its begin: {"t", "wait", "layer", "bytes_read"}
        lists (seconds since load, seconds waited for its reads, layer, streamed bytes so far)."""
        return columns(self._native.stream_events(), _core.StreamEvent)

    def memory_buffers(self, seq):
        """The graph's activation and workspace buffers for a batch of seq tokens:
        {"names", "sizes", "starts", "ends"} (lifetimes in op indices, inclusive), the input of
        `tierlm plan`, which stores plans/seq-<seq>.json for the executor to use."""
        out = self._native.memory_buffers(int(seq))
        del out["offsets"]
        return out

    def memory_plan(self):
        """The plan the activation arena uses: buffers with offsets, peak, lower bound, source."""
        return self._native.memory_plan()

    def __repr__(self):
        c = self.config
        return (
            f"tierlm.Model({self.path!r}, {self.architecture}, {self.dtype}, "
            f"{c['num_layers']} layers, hidden {c['hidden_size']})"
        )


def load(
    path,
    budget=None,
    threads=0,
    verify=False,
    max_context=0,
    prefill_chunk=0,
    lock=True,
    max_batch=1,
    ring_sections=0,
    sparse=False,
    sparse_window=4,
    sparse_bundled=True,
    sparse_capacity=0,
    sparse_readahead=False,
    expert_cache="lru",
    expert_prefetch=True,
    kv_dtype="f16",
    kv_policy="",
    kv_host_budget=None,
    disk_dir=None,
):
    """Loads a package (tierlm export's output).

    budget: {"host": "4GiB"} (sizes as bytes or strings), one size for the host tier, or None
    for the machine's default; other tiers' budgets (device, disk) are refused until the
    executor uses those tiers. Numeric options outside their range (tierlm.limits) raise
    InvalidArgumentError naming the option and the range.
    verify: check the CRC-32 of every byte the run will use at load (resident and streamed
    tensors, row-read embeddings, sparse bundles and predictors), and each disk-homed expert
    of a mixture-of-experts model again whenever it is read, before it is used;
    stats()["verify"] says what was checked (tensors, bundles, predictors, bytes, seconds) and
    when.
    max_context: KV cache tokens (default: the model's max_positions).
    max_batch: sequences generate_batch decodes together (each gets its own KV cache).
    When the weights do not fit the host budget (with the KV cache and activations), matrices
    are streamed from the package files through a ring of ring_sections staging sections of
    one matrix each (0 = auto), and the embedding table is read by rows on demand;
    model.placement() says which. A budget below the minimum raises BudgetError.
    sparse: sparse-neuron flash loading (a package exported with --sparse, with predictors):
    the FFN matrices are not loaded; per token only the predicted neurons' bundled rows are
    read into a host-tier neuron cache holding the neurons of the last sparse_window tokens
    (1 = no window); sparse_bundled=False reads each neuron's up and down parts apart without
    coalescing (the paper's ablation); sparse_capacity: cached neurons per layer (0 = auto
    from the predictors' predicted density x window x 1.5, or x 1 token when the window's
    caches would push weights out of residency). Caches, staging and predictors count
    against the host budget. sparse_readahead: at decode, read layer i+1's predicted rows
    (its predictor applied to layer i's input) while layer i computes, so that layer i+1
    reads only the misses; the tokens are the same either way (stats:
    sparse_readahead_recall, sparse_readahead_precision); on an input-channel package, at
    each decode step's attention input, the gate/up columns the FFN input is predicted to keep
    (the attention input times the ratio of the two RMSNorm weights) are read while attention
    computes, and gate/up reads only the kept columns not read ahead.
    On a package calibrated for input-channel sparsity
    (`tierlm sparse calibrate MODEL --out PKG`, manifest "channels"), sparse=True runs every
    linear with a threshold that way instead (LOSSY): per token only the columns of the kept
    input channels are summed, read from disk for the sites not resident (sparse_capacity:
    columns cached per site; 0 = auto: whole sites resident as the budget allows, the rest
    streamed); stats()["sparse_channels"] says so.
    expert_cache: mixture-of-experts models home each expert on the host tier (read at load)
    or on the disk tier (read with O_DIRECT when routed to, into a host-tier expert cache);
    the cache's replacement policy is "lru" or "lfu" (frequency-weighted: use counts that
    halve every 64 steps), or "stream": no cache, every disk-homed expert of a layer read on
    every step, routed or not (dense offload, a baseline). The experts get the host budget the
    other weights leave; a package's usage profile (tierlm.profile_experts) homes the most used.
    expert_prefetch: predict layer i+1's experts by applying its router to layer i's input and
    read the missing ones while layer i computes (stats: moe_prediction_accuracy_pct).
    kv_dtype: the KV cache's element type: "f16" (default), "bf16", "f32", or "q8_0" (int8 in
    blocks of 32 along head_dim with an f16 scale, about half of f16's bytes); attention reads
    it in place, and its bytes count against the host budget (stats()["kv_bytes"]).
    kv_policy: "" (or "full") keeps every token up to the context; "window:S+W" keeps S
    attention sinks and the last W tokens (StreamingLLM); "sirllm:S+W+K[@D]" also keeps the K
    older tokens of highest token entropy -log p(token | prefix), every score decayed by D per
    token appended (SirLLM; D defaults to 0.999); "h2o:S+W+K" the K older tokens of most
    accumulated attention (H2O heavy hitters). The cache holds S+W(+K) tokens at positions
    counted within it, so generation runs past max_positions (RoPE models only;
    stats()["kv_evicted"] counts drops, kv_scores() shows the scores).
    kv_host_budget: the KV cache's share of the host budget (a size; None = all it needs).
    When the cache would need more, it keeps that many bytes of blocks and read-back staging in
    the host tier and moves its oldest blocks to a scratch file of the disk tier, created in
    disk_dir (default: $TMPDIR, else /tmp; unlinked at once, so nothing is left behind) under
    budget["disk"] (default: no limit but the file system's); each layer's blocks are read
    back with O_DIRECT while the layer before computes. Every token stays, so the results are
    those of the cache in memory (stats(): kv_disk_bytes, kv_disk_bytes_read, disk). With a
    kv_policy, evicting rewrites the spilled blocks in place, so the results are those of the
    policy in memory. A disk budget or disk_dir without kv_host_budget is refused.
    """
    budgets = _budgets(budget)
    native = _core.Model.load(
        os.fspath(path),
        budgets["host"],
        threads=check("threads", threads or 0),
        verify=bool(verify),
        max_context=check("max_context", max_context or 0),
        prefill_chunk=check("prefill_chunk", prefill_chunk or 0),
        lock=bool(lock),
        max_batch=check("max_batch", max_batch),
        ring_sections=check("ring_sections", ring_sections or 0),
        sparse=bool(sparse),
        sparse_window=check("sparse_window", sparse_window),
        sparse_bundled=bool(sparse_bundled),
        sparse_capacity=check("sparse_capacity", sparse_capacity or 0),
        sparse_readahead=bool(sparse_readahead),
        expert_cache=str(expert_cache),
        expert_prefetch=bool(expert_prefetch),
        kv_dtype=str(kv_dtype),
        kv_policy=str(kv_policy or ""),
        kv_host_budget=check(
            "kv_host_budget",
            0 if kv_host_budget is None else parse_size(kv_host_budget, "kv_host_budget"),
        ),
        disk_budget=2**64 - 1 if budgets["disk"] is None else budgets["disk"],
        disk_dir="" if disk_dir is None else os.fspath(disk_dir),
    )
    return Model(native, budgets)
