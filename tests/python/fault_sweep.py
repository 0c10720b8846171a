"""Fault-injection sweep over tierlm's I/O paths (TIERLM_FAULT, tierlm/io/io.hpp).

Each case runs one scenario in a subprocess with TIERLM_FAULT="op=OP,errno=ERR,nth=N" and a
time limit, and passes when
  - the process ends by itself (no signal, no time-out),
  - an injected error ends in one clear error (exit 3) whose message names the file the fault
    hit, and a model whose generation failed generates the fault-free tokens when asked again;
    an injected short count is continued, and the run gives the fault-free result,
  - the package or checkpoint that was there before is byte for byte what it was.
A run in which the fault never fired (N past the scenario's last call of that kind) ends the
sweep over N for that (scenario, op, errno).

    python tests/python/fault_sweep.py                 # every scenario, N = 1, 2, 3, ... to the end
    python tests/python/fault_sweep.py --max-n 40 --scenario resident_load
test_faults.py runs a bounded sample of the same cases in CI.
"""

import argparse
import hashlib
import json
import os
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

ERRNOS = ("EIO", "ENOSPC", "EFBIG", "short")
# what each kind of call can fail with (a read does not run out of space; fsync and fallocate
# move no bytes, so they have no short count)
ERRNOS_OF = {
    "read": ("EIO", "short"),
    "write": ("EIO", "ENOSPC", "EFBIG", "short"),
    "fsync": ("EIO", "ENOSPC"),
    "fallocate": ("ENOSPC", "EIO"),
}
# scenario -> the calls it makes that a fault can hit
SCENARIOS = {
    "export": ("write", "fsync"),
    "resident_load": ("read",),
    "streaming_decode": ("read",),
    "sparse_decode": ("read",),
    "kv_spill_decode": ("read", "write"),
    "kv_spill_evict": ("read", "write"),
    "trainer_swaps": ("read", "write", "fallocate"),
    "checkpoint_save": ("write", "fsync"),
}
# what each scenario must leave as it was: a folder of the work directory
GUARDED = {
    "export": "pkg-out",
    "checkpoint_save": "ckpt",
}
# only calls on these paths count (the save's own files, not the trainer's swaps before it)
PATHS = {
    "checkpoint_save": "/ckpt/",
    "kv_spill_decode": "/tierlm-disk-",
    "kv_spill_evict": "/tierlm-disk-",
}
TIMEOUT = 300  # generous: a loaded 2-core machine runs a trainer case in 20-70 s
ERROR_EXIT = 3
RETRY_EXIT = 4  # a generation after the failed one gave other tokens
NEW_TOKENS = 4
IDS = [5, 17, 3, 101, 42, 7]
# kv_spill_decode: a prompt of several blocks on a 12-layer model whose KV cache keeps two
# blocks in host memory (KV_SPILL) and the rest on disk
KV_IDS = [(7 * i + 3) % 211 for i in range(200)]
KV_SPILL = dict(max_context=256, prefill_chunk=32, kv_host_budget=300 << 10)
# kv_spill_evict: the same prompt through a window policy of 4 blocks, two of them on disk, so
# that every step past the first four blocks evicts and rewrites the spilled blocks in place
# (the reference in memory steps as it does: where a policy evicts follows the steps)
KV_EVICT = dict(kv_policy="window:4+124", prefill_chunk=32, kv_host_budget=300 << 10)


# --- the work directory: models made once, shared by every case ----------------------------


def prepare(work):
    """Builds the packages and the checkpoint the scenarios use (once per work directory)."""
    done = os.path.join(work, "ready.json")
    if os.path.exists(done):
        with open(done) as f:
            return json.load(f)
    import tierlm
    from models import SPILL_SHAPE, package
    from test_model_sparse import all_neuron_predictors

    _, pkg = package("llama", work, dtype="bf16", num_hidden_layers=4)
    hf = pkg.replace("-pkg", "-hf")
    tierlm.export(hf, os.path.join(work, "pkg-out"), dtype="bf16", progress=False)
    _, opt = package("opt", work)
    sparse = opt + "-sparse"
    tierlm.export(opt.replace("-pkg", "-hf"), sparse, progress=False, sparse=True)
    all_neuron_predictors(sparse)
    _, kv_pkg = package("llama", work, name="kvspill", **SPILL_SHAPE)
    model = tierlm.load(pkg)
    info = {
        "hf": hf,
        "kv_pkg": kv_pkg,
        "kv_tokens": tierlm.load(kv_pkg, max_context=256)
        .generate(KV_IDS, max_new_tokens=NEW_TOKENS, stop_at_eos=False)
        .output_ids,
        "kv_evict_tokens": tierlm.load(kv_pkg, kv_policy=KV_EVICT["kv_policy"], prefill_chunk=32)
        .generate(KV_IDS, max_new_tokens=NEW_TOKENS, stop_at_eos=False)
        .output_ids,
        "pkg": pkg,
        "sparse": sparse,
        "minimum": model.placement()["minimum_budget"],
        "tokens": model.generate(IDS, max_new_tokens=NEW_TOKENS, stop_at_eos=False).output_ids,
        "sparse_tokens": tierlm.load(sparse, sparse=True)
        .generate(IDS, max_new_tokens=NEW_TOKENS, stop_at_eos=False)
        .output_ids,
    }
    trainer, _, _ = _trainer(work, fresh=True)
    trainer.save(os.path.join(work, "ckpt"))
    with open(done, "w") as f:
        json.dump(info, f)
    return info


def _trainer(work, fresh=False):
    import tierlm.train as tt
    from train_helpers import HYPER, batches, llama

    model = llama(layers=2)
    plan = tt.offload_plan(model)
    disk = os.path.join(work, "swap")
    os.makedirs(disk, exist_ok=True)
    trainer = tt.offload(model, budget={"host": plan["minimum"]}, disk_dir=disk, **HYPER)
    return trainer, model, batches(model, 2)


# --- scenarios: run in the child, with TIERLM_FAULT set ---------------------------------------


def run_scenario(name, work, info):
    """The scenario's result (compared with a fault-free run); raises on failure."""
    import tierlm

    def tokens(model, ids=IDS):
        """The tokens; after a failed generation the same model must generate them again."""
        try:
            return model.generate(ids, max_new_tokens=NEW_TOKENS, stop_at_eos=False).output_ids
        except Exception:
            again = model.generate(ids, max_new_tokens=NEW_TOKENS, stop_at_eos=False).output_ids
            if again != expected(name, info):
                print("RETRY " + json.dumps(again), flush=True)
                sys.exit(RETRY_EXIT)
            raise

    if name == "export":
        out = os.path.join(work, "pkg-out")
        tierlm.export(info["hf"], out, dtype="bf16", progress=False, overwrite=True)
        tierlm.package.Package.open(out).verify()
        return "verified"
    if name == "resident_load":
        return tokens(tierlm.load(info["pkg"]))
    if name == "streaming_decode":
        model = tierlm.load(info["pkg"], budget={"host": info["minimum"]})
        assert model.placement()["streaming"]
        return tokens(model)
    if name == "sparse_decode":
        return tokens(tierlm.load(info["sparse"], sparse=True))
    if name == "kv_spill_decode":
        disk = os.path.join(work, "kv-disk")
        os.makedirs(disk, exist_ok=True)
        return tokens(tierlm.load(info["kv_pkg"], disk_dir=disk, **KV_SPILL), KV_IDS)
    if name == "kv_spill_evict":
        disk = os.path.join(work, "kv-disk")
        os.makedirs(disk, exist_ok=True)
        return tokens(tierlm.load(info["kv_pkg"], disk_dir=disk, **KV_EVICT), KV_IDS)
    trainer, model, data = _trainer(work)
    if name == "trainer_swaps":
        for batch in data:
            loss = model(input_ids=batch, labels=batch).loss
            trainer.backward(loss)
            trainer.step()
        return "trained"
    if name == "checkpoint_save":
        trainer.save(os.path.join(work, "ckpt"))  # what a save reads and writes, no step first
        return "saved"
    raise ValueError(f"unknown scenario {name}")


def expected(name, info):
    return {
        "resident_load": info["tokens"],
        "streaming_decode": info["tokens"],
        "sparse_decode": info["sparse_tokens"],
        "kv_spill_decode": info["kv_tokens"],
        "kv_spill_evict": info["kv_evict_tokens"],
    }.get(name)


def child(name, work):
    with open(os.path.join(work, "ready.json")) as f:
        info = json.load(f)
    try:
        result = run_scenario(name, work, info)
    except Exception as error:  # the one clear error a fault must end in
        print(f"ERROR {type(error).__name__}: {error}", flush=True)
        sys.exit(ERROR_EXIT)
    print("RESULT " + json.dumps(result), flush=True)


# --- the parent: cases and their checks -------------------------------------------------------


def digest(path):
    """SHA-256 over a folder's files (names and bytes), or None when it does not exist."""
    if not os.path.exists(path):
        return None
    h = hashlib.sha256()
    for root, dirs, files in os.walk(path):
        dirs.sort()
        for name in sorted(files):
            full = os.path.join(root, name)
            h.update(os.path.relpath(full, path).encode())
            with open(full, "rb") as f:
                h.update(f.read())
    return h.hexdigest()


def run_case(work, info, scenario, op, err, n):
    """One case: a dict with the outcome and, when it failed its checks, `defect`."""
    guarded = os.path.join(work, GUARDED[scenario]) if scenario in GUARDED else None
    before = digest(guarded) if guarded else None
    spec = f"op={op},errno={err},nth={n}"
    if scenario in PATHS:
        spec += f",path={PATHS[scenario]}"
    env = dict(os.environ, TIERLM_FAULT=spec)  # TIERLM_IO as set: run once per back end
    cmd = [sys.executable, os.path.abspath(__file__), "--child", scenario, "--work", work]
    case = {"scenario": scenario, "op": op, "errno": err, "n": n}
    start = time.monotonic()
    try:
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=TIMEOUT)
    except subprocess.TimeoutExpired:
        case["defect"] = f"no end within {TIMEOUT} s (hang)"
        return case
    case["seconds"] = round(time.monotonic() - start, 2)
    fired = [line for line in proc.stderr.splitlines() if "TIERLM_FAULT injected" in line]
    case["fired"] = bool(fired)
    out = proc.stdout.strip().splitlines()
    last = out[-1] if out else ""
    if proc.returncode < 0:
        case["defect"] = f"killed by signal {-proc.returncode}: {proc.stderr[-500:]}"
    elif proc.returncode == 0:
        result = json.loads(last.removeprefix("RESULT "))
        want = expected(scenario, info)
        if want is not None and result != want:
            case["defect"] = f"wrong result after the fault: {result} != {want}"
        elif fired and err != "short":
            case["defect"] = f"an injected {err} was swallowed: {fired[0]}"
    elif proc.returncode == ERROR_EXIT:
        case["error"] = last.removeprefix("ERROR ")
        hit = fired[0].rsplit(" of ", 1)[-1] if fired else ""
        if not fired:
            case["defect"] = f"failed without an injected fault: {last}"
        elif err == "short":
            case["defect"] = f"a short count was not continued: {last}"
        elif os.path.basename(hit) not in last:
            case["defect"] = f"the error does not name {hit}: {last}"
    elif proc.returncode == RETRY_EXIT:
        case["defect"] = f"after the failed generation the model gave other tokens: {last}"
    else:
        case["defect"] = f"exit {proc.returncode}: {proc.stderr[-800:]}"
    if guarded and digest(guarded) != before and proc.returncode != 0:
        case["defect"] = f"{guarded} changed although the run failed"
    leftovers = [e for e in os.listdir(work) if ".tmp" in e or e.endswith(".old")]
    if proc.returncode != 0 and leftovers:
        case["defect"] = f"the failed run left {leftovers} in {work}"
    if guarded and scenario == "export" and proc.returncode == 0 and digest(guarded) is None:
        case["defect"] = f"{guarded} is gone"
    return case


def sweep(work, scenarios, errnos, ns, log=print):
    """Runs the cases; N grows over `ns` until the fault no longer fires."""
    info = prepare(work)
    cases = []
    for scenario in scenarios:
        for op in SCENARIOS[scenario]:
            for err in (e for e in errnos if e in ERRNOS_OF[op]):
                for n in ns:
                    case = run_case(work, info, scenario, op, err, n)
                    cases.append(case)
                    log(json.dumps(case))
                    if not case.get("fired", True):
                        break
    return cases


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--work", default="/tmp/tierlm-fault-sweep")
    parser.add_argument("--scenario", action="append", choices=sorted(SCENARIOS))
    parser.add_argument("--errno", action="append", choices=ERRNOS)
    parser.add_argument("--max-n", type=int, default=10**6)
    parser.add_argument("--stride", type=int, default=1, help="test N = 1, 1+s, 1+2s, ...")
    args = parser.parse_args()
    os.makedirs(args.work, exist_ok=True)
    if args.child:
        child(args.child, args.work)
        return
    cases = sweep(
        args.work,
        args.scenario or list(SCENARIOS),
        args.errno or list(ERRNOS),
        range(1, args.max_n + 1, args.stride),
    )
    defects = [c for c in cases if "defect" in c]
    fired = sum(c.get("fired", False) for c in cases)
    print(f"{len(cases)} cases ({fired} with a fault injected), {len(defects)} defects")
    for c in defects:
        print("DEFECT", json.dumps(c))
    sys.exit(1 if defects else 0)


if __name__ == "__main__":
    main()
