"""Requests per chunk, and the daemon's CPU, of zarr-python 2.18 writing and then reading an
array through a fresh ``--view v2`` mount (issue 14's profile of legacy writers and readers).

    .venv/bin/python bench/zarr2_requests.py [CHUNK_SIDE]     # 64 (4 KiB, as D2) or 256 (64 KiB, as D1)
"""
import json, os, shutil, subprocess, sys, tempfile
from pathlib import Path
REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))
from legacy import zarr2_python  # noqa: E402  (the venv the tests use, cached in .cache/)
Z2 = str(zarr2_python())
ZARRFS = [sys.executable, "-m", "zarrfs"]
work = tempfile.mkdtemp(prefix="z2rw-"); store, mnt = f"{work}/store", f"{work}/mnt"
os.makedirs(store); os.makedirs(mnt)
def mount(): subprocess.run([*ZARRFS, "mount", store, mnt, "--view", "v2"], check=True)
def umount(): subprocess.run([*ZARRFS, "umount", mnt], check=True)
def status(): return json.load(open(f"{mnt}/.zarrfs/status"))
def cpu(pid):
    f = open(f"/proc/{pid}/stat").read().split(")")[1].split()
    return (int(f[11]) + int(f[12])) / os.sysconf("SC_CLK_TCK")
SIDE = int(sys.argv[1]) if len(sys.argv) > 1 else 64
N = 64 if SIDE <= 64 else 32  # chunks per axis
WRITE = f"""
import zarr, numpy as np, time, sys
a = zarr.open_array(sys.argv[1] + '/arr', mode='w', shape=({N*SIDE},{N*SIDE}), chunks=({SIDE},{SIDE}), dtype='u1', compressor=None)
t = time.monotonic(); a[...] = np.random.default_rng(1).integers(1, 255, size=a.shape, dtype='u1'); print(time.monotonic() - t)
"""
READ = """
import zarr, time, sys
a = zarr.open_array(sys.argv[1] + '/arr', mode='r')
t = time.monotonic(); a[...]; print(time.monotonic() - t)
"""
for what, script in (("write", WRITE), ("read", READ)):
    mount()
    try:
        s0 = status(); pid = s0["pid"]; c0 = cpu(pid)
        out = subprocess.run([Z2, "-c", script, mnt], check=True, capture_output=True, text=True).stdout
        s1 = status(); c1 = cpu(pid)
        per = {k: round((v - s0["requests"].get(k, 0)) / N**2, 2) for k, v in s1["requests"].items() if v != s0["requests"].get(k, 0)}
        print(f"{what}: {N*N} chunks, zarr2 {float(out):.2f} s, daemon CPU {c1-c0:.2f} s; requests per chunk {per}")
    finally:
        umount()
shutil.rmtree(work)
