"""Where each unit's fp32 parameters and Adam moments live, host or disk, under the host
budget, and the budget plan (minimum, all-host) that choice is made against."""

from tierlm.errors import BudgetError
from tierlm.sizes import format_size
from tierlm.train.units import pages


def plan_units(units, itemsize, rank=0):
    """{"root", "transient_max", "minimum", "all_host"}: host-tier bytes of the resident root,
    of the largest block's transient state, and the budgets below which training cannot run
    and above which every unit stays on the host."""
    root = units[0]
    blocks = units[1:]
    root_bytes = root.host_bytes(itemsize, rank)
    transient_max = max([b.transient_bytes(itemsize, rank) for b in blocks] + [0])
    grad_max = max([pages(u.n_train * 4) for u in units] + [0])
    all_host = root_bytes + sum(b.host_bytes(itemsize, rank) for b in blocks) + grad_max
    # The root's gradient is held for the whole backward, beside one block's transient.
    minimum = root_bytes + pages(root.n_train * 4) + transient_max
    all_host = max(all_host + pages(root.n_train * 4), minimum)
    return dict(
        root=root_bytes + pages(root.n_train * 4),
        transient_max=transient_max,
        minimum=minimum,
        all_host=all_host,
    )


def check_budget(plan, host_budget):
    if host_budget < plan["minimum"]:
        raise BudgetError(
            f"offload: host budget {format_size(host_budget)} ({host_budget} bytes) is below "
            f"the minimum this model needs, {format_size(plan['minimum'])} "
            f"({plan['minimum']} bytes: root unit {format_size(plan['root'])} "
            f"resident + the largest block's transient "
            f"{format_size(plan['transient_max'])}); raise budget['host'] to at "
            "least that"
        )


def spread(k, n):
    """k of the indices 0..n-1, evenly spaced: no two adjacent while 2k <= n, both ends
    free while 2k < n."""
    step = n / k if k else 1.0  # >= 1, so flooring keeps them distinct
    return [int((j + 0.5) * step) for j in range(min(k, n))]


def place_blocks(blocks, plan, host_budget, itemsize, rank, pipeline_depth):
    """Sets each block's home. All host when everything fits. Otherwise as many host blocks
    as fit beside room for pipeline_depth + 1 disk blocks' transient state (the block in
    backward, the one whose AdamW step and write-back are in flight, the next one
    prefetched), with the disk blocks spread evenly over the model: a contiguous run of them
    would put the whole step's disk traffic behind a fraction of its compute. Fewer host
    blocks when the budget is tight, then a shallower pipeline."""
    for u in blocks:
        u.home = "host"
    if plan["all_host"] <= host_budget or not blocks:
        return
    grad_max = max(pages(b.n_train * 4) for b in blocks)
    n = len(blocks)
    for depth in range(pipeline_depth, -1, -1):
        for n_disk in range(1, n + 1):
            disk = set(spread(n_disk, n))
            resident = plan["root"] + sum(
                b.host_bytes(itemsize, rank) for i, b in enumerate(blocks) if i not in disk
            )
            transient = max([blocks[i].transient_bytes(itemsize, rank) for i in disk] + [grad_max])
            if resident + (1 + depth) * transient <= host_budget:
                for i in disk:
                    blocks[i].home = "disk"
                return
    for u in blocks:  # unreachable above the minimum budget (checked before)
        u.home = "disk"
