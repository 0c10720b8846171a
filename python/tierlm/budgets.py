"""Default tier budgets, derived from the machine when the user gives none."""

import os
import shutil

# Leave room for the OS, Python and the page cache of whatever else runs.
HOST_FRACTION = 0.75


def available_host_bytes():
    """MemAvailable from /proc/meminfo (falls back to total physical memory)."""
    try:
        with open("/proc/meminfo") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def default_budgets(disk_dir=None):
    """{"host": bytes, "disk": bytes} for this machine."""
    disk_dir = disk_dir or os.getcwd()
    return {
        "host": int(available_host_bytes() * HOST_FRACTION),
        "disk": shutil.disk_usage(disk_dir).free,
    }
