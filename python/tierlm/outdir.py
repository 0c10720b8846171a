"""The output folder of an export: what may be written or replaced there, and how. An export
builds its package in a staging folder beside OUT and renames it into place; --overwrite only
ever replaces a tierlm package, never a folder of other files or one that holds the source."""

import json
import os
import shutil
import tempfile

from tierlm.errors import InvalidArgumentError
from tierlm.package_format import FORMAT, MANIFEST

# A staging folder holds this file from its first moment, so only folders an export made are
# ever removed as stale; its content is the pid of the export that owns it.
_STAGING_MARK = ".tierlm-staging"


def check_out_dir(out_dir, sources, overwrite):
    """Refuses an OUT that the export must not write: one that holds (or is) a source, a file,
    a non-empty folder without overwrite, or, with overwrite, anything but a package whose
    manifest says it is one."""
    out_real = os.path.realpath(out_dir)
    for source in sources:
        source_real = os.path.realpath(source)
        if source_real == out_real or source_real.startswith(out_real.rstrip(os.sep) + os.sep):
            raise InvalidArgumentError(
                f"{out_dir} holds the source {source}; an export into it would replace its own "
                "input: choose another output directory"
            )
    if not os.path.lexists(out_dir):
        return
    if not os.path.isdir(out_dir) or os.path.islink(out_dir):
        raise InvalidArgumentError(
            f"{out_dir} exists and is not a directory; choose another output directory"
        )
    if not os.listdir(out_dir):
        return
    if not overwrite:
        raise InvalidArgumentError(
            f"{out_dir} already exists; choose another directory or pass overwrite=True "
            "(--overwrite)"
        )
    if not _is_package(out_dir):
        raise InvalidArgumentError(
            f"{out_dir} is not a tierlm package (no {MANIFEST} with format "
            f'"{FORMAT}"), so --overwrite will not replace it: choose another output '
            "directory or remove it yourself"
        )


def _is_package(path):
    try:
        with open(os.path.join(path, MANIFEST)) as f:
            manifest = json.load(f)
    except (OSError, ValueError):
        return False
    return isinstance(manifest, dict) and manifest.get("format") == FORMAT


def make_staging(out_dir):
    """A fresh staging folder beside out_dir (same file system, so the final rename is atomic),
    after removing the ones that exports killed before they finished left there."""
    parent = os.path.dirname(out_dir)
    os.makedirs(parent, exist_ok=True)
    prefix = f".{os.path.basename(out_dir)}.tmp-"
    _remove_stale(parent, prefix)
    tmp = tempfile.mkdtemp(prefix=prefix, dir=parent)
    with open(os.path.join(tmp, _STAGING_MARK), "w") as f:
        f.write(str(os.getpid()))
    umask = os.umask(0o022)
    os.umask(umask)
    os.chmod(tmp, 0o777 & ~umask)  # mkdtemp makes it private; a package is an ordinary dir
    return tmp


def _remove_stale(parent, prefix):
    for name in os.listdir(parent):
        if not (name.startswith(prefix) or name.startswith(prefix.replace(".tmp-", ".old-"))):
            continue
        path = os.path.join(parent, name)
        try:
            with open(os.path.join(path, _STAGING_MARK)) as f:
                pid = int(f.read().strip() or 0)
        except (OSError, ValueError):
            continue  # not ours: leave it
        if pid > 0 and pid != os.getpid() and _alive(pid):
            continue  # another export is still writing it
        shutil.rmtree(path, ignore_errors=True)


def _alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def install(tmp, out_dir):
    """Renames the finished package into place; an old package is moved aside first and
    removed only after the new one is there."""
    os.remove(os.path.join(tmp, _STAGING_MARK))
    old = None
    if os.path.exists(out_dir):
        if not os.listdir(out_dir):
            os.rmdir(out_dir)
        else:
            parent = os.path.dirname(out_dir)
            old = tempfile.mkdtemp(prefix=f".{os.path.basename(out_dir)}.old-", dir=parent)
            os.rmdir(old)
            os.rename(out_dir, old)
            with open(os.path.join(old, _STAGING_MARK), "w") as f:
                f.write(str(os.getpid()))  # so a kill right here leaves nothing for good
    os.rename(tmp, out_dir)
    if old:
        shutil.rmtree(old, ignore_errors=True)


def discard(tmp):
    shutil.rmtree(tmp, ignore_errors=True)
