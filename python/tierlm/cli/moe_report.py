"""The mixture-of-experts lines of `tierlm generate`: where the experts live (--verbose) and
the expert store's counters after a generation."""

from tierlm.cli.ranges import format_ranges
from tierlm.sizes import format_size


def print_expert_placement(model, out):
    e = model.placement().get("experts")
    if not e:
        return
    homed = sum(map(len, e["host_experts"]))
    total = homed + sum(map(len, e["disk_experts"]))
    print(
        f"experts: {homed} of {total} homed on the host tier ({format_size(e['host_bytes'])}, "
        f"{e['homing']}), "
        f"the rest on the disk tier, read into a {e['policy']} cache of {e['cache_slots']} "
        f"experts ({format_size(e['cache_bytes'])}); one expert {format_size(e['expert_bytes'])}",
        file=out,
    )
    for layer, host, disk in zip(e["layers"], e["host_experts"], e["disk_experts"], strict=True):
        host, disk = format_ranges(host) or "none", format_ranges(disk) or "none"
        print(f"  layer {layer}: host {host}, disk {disk}", file=out)


def print_moe(s, out):
    if not s["moe_lookups"]:
        return
    print(
        f"experts: {s['moe_experts_per_token']:.1f} fetched/token, hit rate "
        f"{s['moe_hit_rate_pct']:.1f}% ({s['moe_host_hits']} homed, {s['moe_cache_hits']} "
        f"cached, {s['moe_misses']} read), {format_size(s['moe_bytes_read_per_token'])}/token "
        f"read, I/O wait {s['moe_io_wait_seconds']:.3f} s",
        file=out,
    )
