"""The writer matrix (SPEC §5, §9): real writers write through a real mount, read back through it
with the same library, and zarr-python 3 and tensorstore read the backing store after umount.

Writers, each in its own interpreter (cached venvs, tests/legacy.py):

- zarr-python 2.18 through the v2 view;
- zarr-python 3, the newest (the main venv) and the oldest 3.x (``ZARR3_OLDEST``), writing Zarr v3
  through the v3 view and Zarr v2 (``zarr_format=2``) through the v2 view;
- tensorstore's ``zarr3`` driver through the v3 view and its ``zarr`` driver through the v2 view;
- ``xarray.Dataset.to_zarr`` and ``dask.array.to_zarr``: xarray 2024.11 + zarr-python 2.18 through
  the v2 view, the newest xarray + the main venv's zarr-python 3 through the v3 view.

Every writer creates arrays and groups below parents that do not exist yet, sets attributes,
resizes (grows, shrinks), overwrites (``mode="w"``, ``overwrite=True``, ``delete_existing``) and
uses several dtypes. It writes the very same into a plain directory first (the reference); each
step is tried on its own, so one failing step names itself and the rest still runs. Then:
the writer reads the hierarchy (found by walking the mount), attributes and values back through
the mount before umount; after umount the backing store must hold the same nodes as sharded
Zarr v3 (only shards, metadata and the arrays' repack lock files), which zarr-python 3 and
tensorstore read as the reference. An array written through the v2 view with a fill value other
than null also holds that fill value as xarray's ``_FillValue`` attribute there (docs/codecs.md,
"Fill values and xarray"; the expected attribute is computed here after xarray's FillValueCoder,
not by zarrfs), which the v2 view leaves out of ``.zattrs`` again.

xarray (on zarr 3) consolidates the whole hierarchy into the root group's zarr.json, stored with
each array entry replaced by that array's backing (sharded) zarr.json, and shown by the v3 view
with the entries of sharded arrays unsharded: xarray reads the backing store of what it wrote
through the v3 view, the mount before umount, and the v3 view of a sharded store it wrote through
that consolidated metadata (``consolidated=True``, no quiet fallback), and the same without it.

Last, the v2 view's fill values as xarray sees them: a store written sharded by xarray and
zarr-python 3 (and corpus arrays with dimension names) must read the same with xarray 2024.11 +
zarr-python 2.18 through ``--view v2`` as with the newest xarray + zarr-python 3 from the original
(section 3 says how xarray 2024.11 turns a zarr 2 fill_value into _FillValue), in the chunks that
are present: the view shows arrays with dimension names with their _FillValue, else NaN (floats)
or null as fill value, so zarr-python 2 reads absent chunks of them as NaN or as whatever memory
held.

What the zarr-python 3 writers do on the mount (``strace -f -e trace=file``, zarr 3.0.0 and 3.1.6
creating ``grp/sub/arr`` and group ``a/b`` below missing parents, writing chunks, overwriting):

- zarr-python 3.0.0 writes every key in place: ``open(key, O_WRONLY|O_CREAT|O_TRUNC)`` for chunks
  and metadata, and ``open(zarr.json, O_WRONLY|O_CREAT|O_EXCL)`` for set_if_not_exists (the
  implicit parent groups and the root, created concurrently from several threads; EEXIST for one
  that exists). No temporary file, no rename, no link. Missing directories: ``mkdir`` of the
  deepest, ENOENT, then every parent (EEXIST races between threads).
- zarr-python 3.1.6 writes every key as ``<key minus its suffix>.<32 hex>.partial`` beside it
  (``zarr.<hex>.partial`` for ``zarr.json``, ``c/0.<hex>.partial`` for ``c/0``), then
  ``rename(partial, key)``; set_if_not_exists (implicit parent groups, the root group) writes
  the partial file, then ``link(partial, zarr.json)`` (EEXIST when it exists) and
  ``unlink(partial)``. Parents are made by ``mkdir`` from the deepest missing one upwards, again
  from several threads at once. ``zarr_format=2`` does the same with ``.zgroup`` and ``.zattrs``.
- Overwriting (``mode="w"``, ``overwrite=True``): 3.0.0 walks the node's directory and unlinks
  every key by its path (zarr.json first, chunks concurrently), leaving the emptied key
  directories; 3.1.6 removes the node with shutil.rmtree (``unlinkat`` relative to a directory
  descriptor, ``rmdir`` of each emptied directory and of the node's own), then ``mkdir``s it again.
- zarrfs at 98207d7 failed zarr 3.1.6's very first ``link(zarr.<hex>.partial, zarr.json)`` at
  the root of the mount with EXDEV ("array/group below a missing parent"); this file catches it.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import struct
import sys
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import tensorstore as ts
import zarr

from conftest import LOCK_FILE
from corpus import arrays_equal
from legacy import ZARR2_VERSION, venv_python, venv_run, zarr2_python
from test_writes_interop import backing_nodes, read_json, shard_keys

# The oldest zarr-python 3 pip resolves for Python 3.11: 3.0.0 to 3.0.7 are yanked ("zarr.load()
# deletes data"), so a range (zarr>=3,<3.1) resolves to 3.0.8. (3.0.0 itself, pinned, also passes
# but for one step: a shrink and regrow of a Zarr v2 array, where it reads values that differ from
# what it reads back from a plain directory; not chased further, as that release is yanked.)
ZARR3_OLDEST = "3.0.8"
XARRAY_ZARR2 = ["xarray==2024.11.0", f"zarr=={ZARR2_VERSION}", "numpy==2.1.3", "pandas==2.2.3",
                "dask[array]==2024.11.2"]
SHARDS = "2"  # --shards: chunks per shard along every axis, so that arrays get several shards

# --------------------------------------------------------------------------------------
# Interpreters (created once, cached in .cache/ by tests/legacy.py)
# --------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def main_python() -> Path:
    """The main venv: the newest zarr-python 3 and tensorstore."""
    return Path(sys.executable)


@pytest.fixture(scope="session")
def zarr2_venv_python() -> Path:
    return zarr2_python()


@pytest.fixture(scope="session")
def zarr3_oldest_python() -> Path:
    return venv_python([f"zarr=={ZARR3_OLDEST}"], name=f"zarr3-venv-{ZARR3_OLDEST}")


@pytest.fixture(scope="session")
def xarray_zarr2_python() -> Path:
    return venv_python(XARRAY_ZARR2, label="xarray-zarr2")


@pytest.fixture(scope="session")
def xarray_zarr3_python() -> Path:
    """The newest xarray and dask with the main venv's zarr-python 3 (pyproject is left alone)."""
    return venv_python(["xarray", f"zarr=={zarr.__version__}", "dask[array]"], label="xarray-zarr3")


# --------------------------------------------------------------------------------------
# The writers (scripts run by the writer's own interpreter; argv[1] is where to write)
# --------------------------------------------------------------------------------------

# What every writer script starts with: each of its steps (functions decorated with @step) runs
# at once and on its own, and the script's last line of output is {step: traceback} of the steps
# that failed.
STEPS = r'''
import json, traceback
errors = {}


def step(fn):
    try:
        fn()
    except Exception as error:  # every step is tried; the test reports each failure
        errors[fn.__name__] = "".join(traceback.format_exception(error)[-4:])
    return fn
'''


def writer_script(body: str) -> str:
    """A writer: ``STEPS``, its steps, and the report of those that failed."""
    return STEPS + body + "\nprint(json.dumps(errors))\n"


ZARR2_WRITER = writer_script(r'''
import sys
import numcodecs
import numpy as np
import zarr

assert zarr.__version__.startswith("2."), zarr.__version__
root = sys.argv[1]
store = zarr.DirectoryStore(root)


@step
def array_below_missing_parent_groups():
    a = zarr.open_array(store=store, path="grp/sub/arr", mode="w", shape=(20, 30), chunks=(4, 8), dtype="<i2",
                        fill_value=-1)
    a[...] = (np.arange(600) - 300).reshape(20, 30).astype("int16")
    a[2:9, 3:17] = -1
    a.attrs.update({"units": "K", "_ARRAY_DIMENSIONS": ["y", "x"]})
    a.attrs["more"] = [1, 2.5, None]
    a.resize(24, 30)  # rows 20-23: no chunks, the fill value -1


@step
def group_below_missing_parent_groups():
    g = zarr.open_group(store=store, path="a/b", mode="w")
    g.attrs["level"] = 2
    g.attrs.update({"extra": True})
    c = g.create_dataset("c8", shape=(9, 9), chunks=(4, 4), dtype="<c8", fill_value=1 + 2j)
    c[2:7, 3:9] = (np.arange(30) + 1j * np.arange(30)[::-1]).reshape(5, 6)


@step
def array_below_plain_directories():
    a = zarr.open_array(root + "/plain/dirs/arr", mode="w", shape=(7, 3), chunks=(2, 2), dtype="<f8", fill_value=0.0)
    a[...] = np.linspace(-1, 1, 21).reshape(7, 3)


@step
def several_dtypes():
    g = zarr.open_group(store=store, mode="a")
    u1 = g.create_dataset("u1", shape=(20, 30), chunks=(8, 8), dtype="u1", compressor=None)
    u1[...] = (np.arange(600) % 251).reshape(20, 30)
    f4 = g.create_dataset("f4nan", shape=(33,), chunks=(10,), dtype="<f4", fill_value=np.nan,
                          compressor=numcodecs.GZip(level=1))
    f4[5:17] = np.linspace(-1, 1, 12)
    f4[30] = np.inf
    f8 = g.create_dataset("f8", shape=(6, 7, 8), chunks=(3, 3, 3), dtype="<f8", order="F",
                          compressor=numcodecs.Zstd())
    f8[...] = np.random.default_rng(0).standard_normal((6, 7, 8))
    b = g.create_dataset("bool", shape=(17, 13), chunks=(5, 5), dtype=bool, fill_value=False,
                         compressor=numcodecs.Blosc("zstd", clevel=1, shuffle=numcodecs.Blosc.BITSHUFFLE))
    b[...] = (np.arange(221).reshape(17, 13) % 3) == 0
    i8 = g.create_dataset("i8_v2keys", shape=(11, 12), chunks=(4, 4), dtype="<i8", dimension_separator="/")
    i8[...] = np.arange(132).reshape(11, 12) * -(2**40)
    be = g.create_dataset("u2be", shape=(50,), chunks=(7,), dtype=">u2", fill_value=3,
                          compressor=numcodecs.Blosc("lz4", clevel=5, shuffle=numcodecs.Blosc.SHUFFLE))
    be[10:33] = np.arange(23) * 1000


@step
def resize_grow():
    a = zarr.open_array(store=store, path="grow", mode="w", shape=(10, 10), chunks=(4, 4), dtype="<i4",
                        fill_value=-5)
    a[...] = 1
    a.resize(14, 21)
    a[12:14, 17:21] = 2


@step
def resize_shrink():
    a = zarr.open_array(store=store, path="shrink", mode="w", shape=(20, 20), chunks=(5, 5), dtype="<i8",
                        fill_value=0)
    a[...] = np.arange(400).reshape(20, 20)
    a.resize(7, 12)
    a.resize(20, 20)
    a[18:20, 18:20] = 5


@step
def overwrite_array_with_mode_w():
    first = zarr.open_array(store=store, path="replaced", mode="w", shape=(10, 10), chunks=(2, 2), dtype="u1")
    first[...] = 9
    again = zarr.open_array(store=store, path="replaced", mode="w", shape=(7, 5), chunks=(3, 3), dtype="<f8",
                            fill_value=0.5)
    again[1:5, 1:4] = 2.5


@step
def overwrite_group_with_mode_w():
    g = zarr.open_group(store=store, path="over", mode="w")
    g.create_dataset("gone", shape=(40,), chunks=(4,), dtype="<i4")[...] = np.arange(40)
    g = zarr.open_group(store=store, path="over", mode="w")
    g.attrs["generation"] = 2
    b = g.create_dataset("b", shape=(8,), chunks=(8,), dtype="<u4")
    b[...] = 5
    b = g.create_dataset("b", shape=(9, 3), chunks=(2, 2), dtype="<i2", fill_value=4, overwrite=True)
    b[0:3, :] = -1


@step
def root_attributes():
    g = zarr.open_group(store=store, mode="r+")
    g.attrs.update({"title": "writer matrix", "n": 3})
    g.attrs["title"] = "writer matrix, updated"
''')


ZARR3_WRITER = writer_script(r'''
import sys
import numpy as np
import zarr
from zarr.codecs import BytesCodec

root, fmt = sys.argv[1], int(sys.argv[2])
store = zarr.storage.LocalStore(root)


def dims(*names):
    """Dimension names: zarr.json's dimension_names (v3) or the _ARRAY_DIMENSIONS attribute (v2)."""
    return {"dimension_names": list(names)} if fmt == 3 else {}


def dim_attrs(attrs, *names):
    return dict(attrs, _ARRAY_DIMENSIONS=list(names)) if fmt == 2 else attrs


@step
def array_below_missing_parent_groups():
    a = zarr.create_array(store=store, name="grp/sub/arr", shape=(20, 30), chunks=(4, 8), dtype="int16",
                          fill_value=-1, attributes=dim_attrs({"units": "K"}, "y", "x"), zarr_format=fmt,
                          **dims("y", "x"))
    a[...] = (np.arange(600) - 300).reshape(20, 30).astype("int16")
    a[2:9, 3:17] = -1  # back to the fill value: those chunks may be left out or deleted
    a.attrs["more"] = [1, 2.5, None]
    a.resize((24, 30))  # rows 20-23: no chunks, the fill value -1


@step
def group_below_missing_parent_groups():
    zarr.create_group(store=store, path="a/b", attributes={"level": 2}, zarr_format=fmt)
    g = zarr.open_group(store=store, path="a/b", mode="r+", zarr_format=fmt)
    g.attrs.update({"extra": True})
    if fmt == 3:
        c = g.create_array("c8", shape=(9, 9), chunks=(4, 4), dtype="complex64", fill_value=1 + 2j)
        c[2:7, 3:9] = (np.arange(30) + 1j * np.arange(30)[::-1]).reshape(5, 6)
    else:  # zarr-python 3.0.0 cannot read back a Zarr v2 complex array with a fill value
        c = g.create_array("f4", shape=(9, 9), chunks=(4, 4), dtype="float32", fill_value=1.5)
        c[2:7, 3:9] = np.arange(30).reshape(5, 6)


@step
def array_below_plain_directories():
    plain = zarr.storage.LocalStore(root + "/plain/dirs/arr")
    a = zarr.create_array(store=plain, shape=(7, 3), chunks=(2, 2), dtype="float64", fill_value=0.0,
                          zarr_format=fmt)
    a[...] = np.linspace(-1, 1, 21).reshape(7, 3)


@step
def several_dtypes():
    u1 = zarr.create_array(store=store, name="u1", shape=(20, 30), chunks=(8, 8), dtype="uint8", compressors=None,
                           zarr_format=fmt)
    u1[...] = (np.arange(600) % 251).reshape(20, 30)
    f4 = zarr.create_array(store=store, name="f4nan", shape=(33,), chunks=(10,), dtype="float32",
                           fill_value=np.nan, zarr_format=fmt)
    f4[5:17] = np.linspace(-1, 1, 12)
    f4[30] = np.inf
    f8 = zarr.create_array(store=store, name="f8", shape=(6, 7, 8), chunks=(3, 3, 3), dtype="float64",
                           zarr_format=fmt)
    f8[...] = np.random.default_rng(0).standard_normal((6, 7, 8))
    b = zarr.create_array(store=store, name="bool", shape=(17, 13), chunks=(5, 5), dtype="bool", fill_value=False,
                          zarr_format=fmt)
    b[...] = (np.arange(221).reshape(17, 13) % 3) == 0
    i8 = zarr.create_array(store=store, name="i8_v2keys", shape=(11, 12), chunks=(4, 4), dtype="int64",
                           chunk_key_encoding={"name": "v2", "separator": "/" if fmt == 2 else "."},
                           zarr_format=fmt)
    i8[...] = np.arange(132).reshape(11, 12) * -(2**40)
    if fmt == 3:
        be = zarr.create_array(store=store, name="u2be", shape=(50,), chunks=(7,), dtype="uint16", fill_value=3,
                               serializer=BytesCodec(endian="big"), zarr_format=3)
    else:
        be = zarr.create_array(store=store, name="u2be", shape=(50,), chunks=(7,), dtype=">u2", fill_value=3,
                               zarr_format=2)
    be[10:33] = np.arange(23) * 1000


@step
def resize_grow():
    a = zarr.create_array(store=store, name="grow", shape=(10, 10), chunks=(4, 4), dtype="int32", fill_value=-5,
                          zarr_format=fmt)
    a[...] = 1
    a.resize((14, 21))
    a[12:14, 17:21] = 2


@step
def resize_shrink():
    a = zarr.create_array(store=store, name="shrink", shape=(20, 20), chunks=(5, 5), dtype="int64",
                          zarr_format=fmt)
    a[...] = np.arange(400).reshape(20, 20)
    a.resize((7, 12))
    a.resize((20, 20))  # the chunks the shrink dropped read as the fill value now
    a[18:20, 18:20] = 5


@step
def overwrite_array_with_mode_w():
    first = zarr.open_array(store=store, path="replaced", mode="w", shape=(10, 10), chunks=(2, 2), dtype="uint8",
                            zarr_format=fmt)
    first[...] = 9
    again = zarr.open_array(store=store, path="replaced", mode="w", shape=(7, 5), chunks=(3, 3), dtype="float64",
                            fill_value=0.5, zarr_format=fmt)
    again[1:5, 1:4] = 2.5


@step
def overwrite_group_with_mode_w():
    g = zarr.open_group(store=store, path="over", mode="w", zarr_format=fmt)
    g.create_array("gone", shape=(40,), chunks=(4,), dtype="int32")[...] = np.arange(40)
    g = zarr.open_group(store=store, path="over", mode="w", zarr_format=fmt, attributes={"generation": 2})
    b = g.create_array("b", shape=(8,), chunks=(8,), dtype="uint32")
    b[...] = 5
    b = g.create_array("b", shape=(9, 3), chunks=(2, 2), dtype="int16", fill_value=4, overwrite=True)
    b[0:3, :] = -1


@step
def root_attributes():
    g = zarr.open_group(store=store, mode="r+", zarr_format=fmt)
    g.attrs.update({"title": "writer matrix", "n": 3})
    g.attrs["title"] = "writer matrix, updated"
''')


TENSORSTORE_WRITER = writer_script(r'''
import sys
import numpy as np
import tensorstore as ts

root, driver = sys.argv[1], sys.argv[2]  # driver: "zarr3" (v3 view) or "zarr" (v2 view)


def metadata(shape, chunks, dtype, fill, attributes=None, dimension_names=None, key="/", big_endian=False):
    if driver == "zarr3":
        doc = {"shape": list(shape), "data_type": dtype,
               "chunk_grid": {"name": "regular", "configuration": {"chunk_shape": list(chunks)}},
               "chunk_key_encoding": {"name": "default", "configuration": {"separator": key}},
               "codecs": [{"name": "bytes", "configuration": {"endian": "big" if big_endian else "little"}},
                          {"name": "zstd", "configuration": {"level": 1}}],
               "fill_value": fill}
        if attributes is not None:
            doc["attributes"] = attributes
        if dimension_names is not None:
            doc["dimension_names"] = dimension_names
        return doc
    numpy = {"bool": "|b1", "uint8": "|u1"}.get(dtype) or np.dtype(dtype).newbyteorder(">" if big_endian else "<").str
    return {"shape": list(shape), "chunks": list(chunks), "dtype": numpy, "order": "C", "filters": None,
            "compressor": {"id": "zstd", "level": 1}, "fill_value": fill, "dimension_separator": key}


def create(path, doc, **kw):
    spec = {"driver": driver, "kvstore": {"driver": "file", "path": f"{root}/{path}"}, "metadata": doc}
    return ts.open(spec, create=True, **kw).result()


@step
def array_below_missing_parent_directories():
    a = create("grp/sub/arr", metadata((20, 30), (4, 8), "int16", -1, {"units": "K"}, ["y", "x"]))
    values = (np.arange(600) - 300).reshape(20, 30).astype("int16")
    values[2:9, 3:17] = -1
    a.write(values).result()


@step
def several_dtypes():
    create("f4nan", metadata((33,), (10,), "float32", "NaN")).write(
        np.concatenate([np.full(5, np.nan), np.linspace(-1, 1, 12), np.full(16, np.nan)]).astype("float32")).result()
    create("c8", metadata((9, 9), (4, 4), "complex64", [1.0, 2.0]))[2:7, 3:9].write(
        (np.arange(30) + 1j * np.arange(30)[::-1]).reshape(5, 6).astype("complex64")).result()
    create("bool", metadata((17, 13), (5, 5), "bool", False, key=".")).write(
        (np.arange(221).reshape(17, 13) % 3) == 0).result()
    create("u2be", metadata((50,), (7,), "uint16", 3, big_endian=True))[10:33].write(
        (np.arange(23) * 1000).astype("uint16")).result()
    create("u1", metadata((20, 30), (8, 8), "uint8", 0)).write(
        (np.arange(600) % 251).reshape(20, 30).astype("uint8")).result()


@step
def resize_grow():
    a = create("grow", metadata((10, 10), (4, 4), "int32", -5))
    a.write(np.ones((10, 10), "int32")).result()
    a = a.resize(exclusive_max=[14, 21]).result()
    a[12:14, 17:21].write(np.full((2, 4), 2, "int32")).result()


@step
def resize_shrink():
    a = create("shrink", metadata((20, 20), (5, 5), "int64", 0))
    a.write(np.arange(400).reshape(20, 20)).result()
    a = a.resize(exclusive_max=[7, 12]).result()
    a = a.resize(exclusive_max=[20, 20]).result()
    a[18:20, 18:20].write(np.full((2, 2), 5, "int64")).result()


@step
def overwrite_with_delete_existing():
    create("replaced", metadata((10, 10), (2, 2), "uint8", 0)).write(np.full((10, 10), 9, "uint8")).result()
    a = create("replaced", metadata((7, 5), (3, 3), "float64", 0.5), delete_existing=True)
    a[1:5, 1:4].write(np.full((4, 3), 2.5)).result()
''')


XARRAY_WRITER = writer_script(r'''
import sys, warnings
import dask.array as da
import numpy as np
import pandas as pd
import xarray as xr
import zarr

warnings.simplefilter("ignore")
root = sys.argv[1]
v3 = zarr.__version__.startswith("3.")
fmt = {"zarr_format": 3} if v3 else {}


def dataset(n_time, first_day, seed):
    rng = np.random.default_rng(seed)
    temp = (rng.standard_normal((n_time, 4, 5)) * 10 + 280).astype("float32")
    temp[0, 1, :] = np.nan
    temp[-1, 0, 0] = 0.0
    count = rng.integers(-3, 4, size=(n_time, 4, 5)).astype("int16")  # zeros included
    flag = (np.arange(n_time) % 3 * 100).astype("uint8")
    flag[1] = 255
    ds = xr.Dataset(
        {"temp": (("time", "y", "x"), temp, {"units": "K", "long_name": "temperature"}),
         "count": (("time", "y", "x"), count, {"note": "integer, zeros included"}),
         "flag": (("time",), flag)},
        coords={"time": pd.date_range("2024-01-01", periods=n_time, freq="D") + pd.Timedelta(days=first_day),
                "y": np.arange(4.0), "x": np.arange(5)},
        attrs={"title": "xarray writes", "levels": [1, 2, 3]},
    )
    ds["flag"].encoding["_FillValue"] = 255
    return ds


ENCODING = {"temp": {"chunks": (2, 2, 3)}, "count": {"chunks": (2, 4, 5)},
            "flag": {"chunks": (3,), "_FillValue": 255}}


@step
def dataset_below_missing_parent_groups():
    dataset(6, 0, 1).to_zarr(f"{root}/xr.zarr", group="deep/er", mode="w", encoding=ENCODING, **fmt)


@step
def append_resizes_along_time():
    dataset(5, 6, 2).to_zarr(f"{root}/xr.zarr", group="deep/er", append_dim="time")


@step
def overwrite_with_mode_w():
    dataset(3, 0, 3).to_zarr(f"{root}/xr.zarr", group="over", mode="w", **fmt)
    other = xr.Dataset({"v": (("t",), np.arange(7, dtype="float64") - 3)}, coords={"t": np.arange(7) * 10},
                       attrs={"generation": 2})
    other.to_zarr(f"{root}/xr.zarr", group="over", mode="w", **fmt)


@step
def dask_chunked_dataset():
    dataset(8, 100, 4).chunk({"time": 2, "y": 2}).to_zarr(f"{root}/xr.zarr", group="dasked", mode="w", **fmt)


@step
def dask_array_to_zarr():
    x = da.from_array((np.arange(13 * 17, dtype="float64") / 7).reshape(13, 17), chunks=(5, 6))
    da.to_zarr(x, f"{root}/dask.zarr", component="grp/sub/d", overwrite=True, **fmt)
    y = da.from_array(np.arange(30, dtype="int32").reshape(6, 5), chunks=(4, 2))
    da.to_zarr(y, f"{root}/dask.zarr", component="grp/sub/e", overwrite=True, **fmt)
    z = da.from_array(np.arange(9, dtype="uint8"), chunks=(4,))
    da.to_zarr(z, f"{root}/dask.zarr", component="grp/sub/e", overwrite=True, **fmt)  # replaces it
''')


READER = r'''
import json, os, sys, warnings
import numpy as np
import zarr

warnings.simplefilter("ignore")
root, out = sys.argv[1], sys.argv[2]
options = json.loads(sys.argv[3]) if len(sys.argv) > 3 else {}
v3 = zarr.__version__.startswith("3.")
tree, values, errors, datasets = {}, {}, {}, {}


def plain(value):
    """Attributes as JSON (numpy scalars and arrays from xarray included)."""
    return json.loads(json.dumps(value, default=lambda o: o.tolist() if hasattr(o, "tolist") else repr(o)))


for directory, dirs, files in os.walk(root):
    dirs.sort()
    path = os.path.relpath(directory, root)
    path = "" if path == "." else path
    if "zarr.json" in files:
        with open(os.path.join(directory, "zarr.json")) as f:
            fmt, kind = 3, json.load(f).get("node_type")
    elif ".zarray" in files or ".zgroup" in files:
        fmt, kind = 2, "array" if ".zarray" in files else "group"
    else:
        continue
    try:
        if kind == "array":
            node = zarr.open_array(directory, mode="r", **({"zarr_format": fmt} if v3 else {}))
            values["array:" + path] = node[...]
            tree[path] = {"node": "array", "zarr_format": fmt, "shape": list(node.shape), "dtype": node.dtype.str,
                          "fill_value": repr(node.fill_value), "attrs": plain(dict(node.attrs))}
        else:
            node = zarr.open_group(directory, mode="r",
                                   **({"zarr_format": fmt, "use_consolidated": False} if v3 else {}))
            tree[path] = {"node": "group", "zarr_format": fmt, "attrs": plain(dict(node.attrs))}
    except Exception as error:
        errors[path] = f"{type(error).__name__}: {error}"

for group_path in options.get("consolidated", []):  # every array as reached from a group (zarr 3 only)
    try:
        group = zarr.open_group(os.path.join(root, group_path), mode="r")
        for name, node in group.members(max_depth=None):
            if isinstance(node, zarr.Array):
                values[f"consolidated:{group_path}:{name}"] = node[...]
    except Exception as error:
        errors[f"consolidated:{group_path}"] = f"{type(error).__name__}: {error}"

for store_path, group in options.get("xarray", []):
    import xarray as xr

    try:
        ds = xr.open_zarr(os.path.join(root, store_path), group=group, **options.get("open_zarr", {})).load()
        datasets[f"{store_path}:{group}"] = {
            "attrs": plain(ds.attrs),
            "variables": {name: {"dims": list(v.dims), "dtype": v.dtype.str, "attrs": plain(v.attrs)}
                          for name, v in ds.variables.items()}}
        for name, v in ds.variables.items():
            values[f"xarray:{store_path}:{group}:{name}"] = v.values
    except Exception as error:
        errors[f"xarray:{store_path}:{group}"] = f"{type(error).__name__}: {error}"

np.savez(out, **{key.replace("/", "|"): value for key, value in values.items()})
print(json.dumps({"tree": tree, "errors": errors, "datasets": datasets}))
'''


TENSORSTORE_READER = r'''
import json, os, sys
import numpy as np
import tensorstore as ts

root, out = sys.argv[1], sys.argv[2]
tree, values, errors = {}, {}, {}
for directory, dirs, files in os.walk(root):
    dirs.sort()
    path = os.path.relpath(directory, root)
    path = "" if path == "." else path
    names = [n for n in ("zarr.json", ".zarray", ".zgroup") if n in files]
    if not names:
        continue
    with open(os.path.join(directory, names[0])) as f:
        doc = json.load(f)
    if names[0] == ".zgroup" or doc.get("node_type") == "group":
        tree[path] = {"node": "group", "doc": doc}
        continue
    try:
        driver = "zarr3" if names[0] == "zarr.json" else "zarr"
        array = ts.open({"driver": driver, "kvstore": {"driver": "file", "path": directory + "/"}}, open=True,
                        read=True).result()
        values["array:" + path] = array.read().result()
        attrs = doc.get("attributes", {}) if driver == "zarr3" else {}
        tree[path] = {"node": "array", "shape": list(array.shape), "dtype": array.dtype.numpy_dtype.str,
                      "attrs": attrs}
    except Exception as error:
        errors[path] = f"{type(error).__name__}: {error}"
np.savez(out, **{key.replace("/", "|"): value for key, value in values.items()})
print(json.dumps({"tree": tree, "errors": errors, "datasets": {}}))
'''


@dataclass(frozen=True)
class Writer:
    name: str
    python: str  # the fixture giving its interpreter
    view: str  # the view it writes through: v2 writers write Zarr v2, v3 writers Zarr v3
    script: str
    args: tuple[str, ...] = ()
    reader: str = READER
    xarray: tuple[tuple[str, str], ...] = ()  # (store, group) of the datasets written
    # xarray reads them through the consolidated metadata it wrote, or fails (consolidated=True:
    # no quiet fallback to the arrays' own metadata)
    consolidated: bool = False

    @property
    def read_options(self) -> dict:
        options = {"xarray": [list(d) for d in self.xarray]}
        return dict(options, open_zarr={"consolidated": True}) if self.consolidated else options


XARRAY_DATASETS = (("xr.zarr", "deep/er"), ("xr.zarr", "over"), ("xr.zarr", "dasked"))

WRITERS = {w.name: w for w in [
    Writer("zarr-python-2.18", "zarr2_venv_python", "v2", ZARR2_WRITER),
    Writer("zarr-python-3-oldest", "zarr3_oldest_python", "v3", ZARR3_WRITER, ("3",)),
    Writer("zarr-python-3-newest", "main_python", "v3", ZARR3_WRITER, ("3",)),
    Writer("zarr-python-3-oldest-format-2", "zarr3_oldest_python", "v2", ZARR3_WRITER, ("2",)),
    Writer("zarr-python-3-newest-format-2", "main_python", "v2", ZARR3_WRITER, ("2",)),
    Writer("tensorstore-zarr3", "main_python", "v3", TENSORSTORE_WRITER, ("zarr3",), TENSORSTORE_READER),
    Writer("tensorstore-zarr", "main_python", "v2", TENSORSTORE_WRITER, ("zarr",), TENSORSTORE_READER),
    Writer("xarray-dask-zarr2", "xarray_zarr2_python", "v2", XARRAY_WRITER, xarray=XARRAY_DATASETS),
    Writer("xarray-dask-zarr3", "xarray_zarr3_python", "v3", XARRAY_WRITER, xarray=XARRAY_DATASETS,
           consolidated=True),
]}
XARRAY_WRITERS = [name for name, w in WRITERS.items() if w.xarray]


# Runs scripts one after the other in one interpreter (each with its own argv and namespace), so
# that a writer and the reader after it pay for the imports once: {"outputs": [last stdout line]}.
RUN_SCRIPTS = r'''
import contextlib, io, json, sys
outputs = []
for source, argv in json.loads(sys.stdin.read()):
    sys.argv = ["-c", *argv]
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        exec(compile(source, "<script>", "exec"), {"__name__": "__main__"})
    outputs.append(printed.getvalue().strip().splitlines()[-1])
print(json.dumps({"outputs": outputs}))
'''


def run_scripts(python: Path, *scripts: tuple[str, list[str]]) -> list:
    """Run ``(source, argv)`` scripts in one process of ``python``: their last stdout lines, parsed."""
    stdout = venv_run(python, RUN_SCRIPTS, stdin=json.dumps(scripts))
    return [json.loads(line) for line in json.loads(stdout.strip().splitlines()[-1])["outputs"]]


def reading(result: dict, out: Path) -> SimpleNamespace:
    """What a reader script reported, with the values it saved in ``out``: the hierarchy (paths found
    by walking the directory) with attributes, the values (``array:PATH``,
    ``xarray:STORE:GROUP:VARIABLE``, ``consolidated:GROUP:PATH``), the datasets' structure, the errors."""
    with np.load(out) as saved:
        values = {key.replace("|", "/"): saved[key] for key in saved.files}
    return SimpleNamespace(values=values, **result)


def write_and_read(python: Path, writer: Writer, root: Path, out: Path) -> tuple[dict, SimpleNamespace]:
    """Run the writer's steps into ``root``, then its reader: ``({step: traceback} of the steps that
    failed, what the reader found)``."""
    failed, result = run_scripts(python, (writer.script, [str(root), *writer.args]),
                                 (writer.reader, [str(root), str(out), json.dumps(writer.read_options)]))
    return failed, reading(result, out)


def run_reader(python: Path, writer: Writer, root: Path, out: Path, options: dict | None = None) -> SimpleNamespace:
    """What the writer's library reads under ``root`` (``reading``)."""
    (result,) = run_scripts(python, (writer.reader, [str(root), str(out), json.dumps(options or writer.read_options)]))
    return reading(result, out)


@pytest.fixture(scope="module")
def written(request, tmp_path_factory, module_mount) -> SimpleNamespace:
    """One writer's run: into a plain directory, then through a mount; read back; umount."""
    writer = WRITERS[request.param]
    python = request.getfixturevalue(writer.python)
    work = tmp_path_factory.mktemp(writer.name)
    reference, store = work / "reference", work / "store"
    store.mkdir()
    failed, expected = write_and_read(python, writer, reference, work / "reference.npz")
    assert not failed, f"{writer.name} fails on a plain directory (a broken test, not zarrfs): {failed}"
    assert not expected.errors, expected.errors
    mnt = module_mount(store, "--view", writer.view, "--shards", SHARDS)
    errors, mounted = write_and_read(python, writer, mnt.path, work / "mounted.npz")  # read before umount
    mnt.unmount()
    return SimpleNamespace(writer=writer, python=python, work=work, reference=reference, store=store,
                           errors=errors, expected=expected, mounted=mounted, log=mnt.log_text())


def for_writers(names):
    return pytest.mark.parametrize("written", names, indirect=True)


# --------------------------------------------------------------------------------------
# Helpers: the backing store
# --------------------------------------------------------------------------------------


def read_backing(array_dir: Path) -> np.ndarray:
    """The whole array read from the backing store by zarr-python 3 and by tensorstore, which must
    agree (NaN equal to NaN: helpers.read_backing's comparison is not NaN-aware)."""
    by_zarr = zarr.open_array(str(array_dir), mode="r")[...]
    spec = {"driver": "zarr3", "kvstore": {"driver": "file", "path": str(array_dir) + "/"}}
    by_tensorstore = ts.open(spec, open=True, read=True).result().read().result()
    assert arrays_equal(by_zarr, by_tensorstore), f"{array_dir}: zarr-python 3 and tensorstore disagree"
    return by_zarr


def same_values(got: np.ndarray, expected: np.ndarray) -> bool:
    """Equal shapes and values (NaN equal to NaN), the same kind and size of dtype (byte order aside)."""
    got, expected = np.asarray(got), np.asarray(expected)
    return (arrays_equal(got, expected) and got.dtype.kind == expected.dtype.kind
            and got.dtype.itemsize == expected.dtype.itemsize)


def differences(got: dict, expected: dict, keys) -> list[str]:
    """A line per key whose values differ (or are missing), with the first elements that differ."""
    lines = []
    for key in sorted(keys):
        if key not in got:
            lines.append(f"{key}: not read")
            continue
        a, b = np.asarray(got[key]), np.asarray(expected[key])
        if same_values(a, b):
            continue
        if a.shape != b.shape:
            lines.append(f"{key}: shape {a.shape} {a.dtype}, expected {b.shape} {b.dtype}")
            continue
        if a.dtype.kind in "fc" and b.dtype.kind in "fc":
            unequal = ~((a == b) | (np.isnan(a) & np.isnan(b)))
        else:
            unequal = a != b
        where = [tuple(int(i) for i in w) for w in zip(*np.nonzero(unequal))][:3] if a.ndim else [()]
        lines.append(f"{key}: {a.dtype} vs expected {b.dtype}; "
                     + ", ".join(f"at {w}: {a[w]!r} != {b[w]!r}" for w in where))
    return lines


def assert_none(lines: list[str]) -> None:
    """Fails with one line per difference found."""
    assert not lines, "\n".join(lines)


def node_differences(got, expected, where: str) -> list[str]:
    """The nodes written but not ``where``, and those ``where`` but never written."""
    return [*(f"{path!r}: written, not {where}" for path in sorted(set(expected) - set(got))),
            *(f"{path!r}: {where}, never written" for path in sorted(set(got) - set(expected)))]


def dataset_differences(got: dict, expected: dict) -> list[str]:
    """A line per dataset attribute and per variable (dims, dtype, attributes) that differs."""
    lines = []
    for name, dataset in expected.items():
        if name not in got:
            lines.append(f"{name}: not read")
            continue
        if got[name]["attrs"] != dataset["attrs"]:
            lines.append(f"{name}: attributes {got[name]['attrs']} != {dataset['attrs']}")
        for variable, description in dataset["variables"].items():
            shown = got[name]["variables"].get(variable)
            if shown != description:
                lines.append(f"{name}:{variable}: {shown} != {description}")
        for variable in set(got[name]["variables"]) - set(dataset["variables"]):
            lines.append(f"{name}:{variable}: not written")
    return lines


def base64_double(number) -> str:
    return base64.standard_b64encode(struct.pack("<d", float(number))).decode()


def xarray_fill_attribute(fill, dtype: str):
    """The ``_FillValue`` attribute xarray writes into Zarr v3 attributes for a Zarr v2 ``fill_value``
    (as JSON in a ``.zarray``: "NaN", "Infinity", [re, im] ...) of numpy ``dtype``, after
    xarray.backends.zarr.FillValueCoder.encode: booleans and integers as they are, floats as the
    base64 of a little-endian double, complex numbers as a list of two such."""
    kind = np.dtype(dtype).kind
    if kind == "c":
        return [base64_double(part) for part in fill]
    if kind == "f":
        return base64_double(fill)  # float() reads "NaN", "Infinity" and "-Infinity" too
    if kind == "b":
        return bool(fill)
    assert kind in "iu", f"no _FillValue encoding for {dtype}"
    return int(fill)


def v3_attributes(node: dict, zarray: dict | None) -> tuple[dict, list | None]:
    """What a node of the reference tree becomes in Zarr v3: (attributes, dimension_names).

    An array written through the v2 view with a fill value other than null (``zarray``, its
    .zarray as written) also gets that fill value as xarray's ``_FillValue`` attribute, unless it
    has one (docs/codecs.md, "Fill values and xarray"; with or without ``_ARRAY_DIMENSIONS``)."""
    attrs = dict(node.get("attrs", {}))
    if zarray is None:  # not written as a Zarr v2 array
        return attrs, None
    if zarray.get("fill_value") is not None:
        attrs.setdefault("_FillValue", xarray_fill_attribute(zarray["fill_value"], zarray["dtype"]))
    return attrs, attrs.pop("_ARRAY_DIMENSIONS", None)


def all_files(root: Path) -> set[str]:
    """Every file below ``root`` (relative paths), lock files included (conftest.list_files leaves
    them out)."""
    return {os.path.relpath(os.path.join(d, f), root) for d, _, files in os.walk(root) for f in files}


# --------------------------------------------------------------------------------------
# 1. Writing through the mount, reading back through it
# --------------------------------------------------------------------------------------


@for_writers(list(WRITERS))
def test_every_write_step_succeeds_through_the_mount(written):
    assert not written.errors, f"{written.writer.name} through the {written.writer.view} view:\n" + "\n".join(
        f"--- {step}:\n{error}" for step, error in written.errors.items())


@for_writers(list(WRITERS))
def test_the_daemon_logs_no_error(written):
    assert "ERROR" not in written.log and "Traceback" not in written.log and "refused" not in written.log, \
        written.log[-4000:]


@for_writers(list(WRITERS))
def test_the_writer_reads_its_hierarchy_and_attributes_back_through_the_mount(written):
    mounted, expected = written.mounted, written.expected
    assert not mounted.errors, mounted.errors
    assert_none(node_differences(mounted.tree, expected.tree, "found by walking the mount"))
    differ = [f"{path}: {mounted.tree[path]} != {node}" for path, node in expected.tree.items()
              if mounted.tree[path] != as_read_back(node)]
    assert not differ, "\n".join(differ)


def as_read_back(node: dict) -> dict:
    """A node as the mount reads it back: a v2 ``fill_value: null`` has no v3 spelling and
    reads back as the data type's zero, unless the array has dimension names (docs/codecs.md,
    "Metadata read back through the v2 view" and "Fill values and xarray")."""
    if node.get("fill_value") != "None" or node.get("zarr_format") != 2 or "_ARRAY_DIMENSIONS" in node["attrs"]:
        return node
    zero = {"f": "np.float64(0.0)", "c": "np.complex128(0j)", "b": "np.False_"}.get(node["dtype"][1],
                                                                                   f"np.{_int_name(node)}(0)")
    return {**node, "fill_value": zero}


def _int_name(node: dict) -> str:
    kind, size = node["dtype"][1], int(node["dtype"][2:])
    return f"{'u' if kind == 'u' else ''}int{8 * size}"


@for_writers(list(WRITERS))
def test_the_writer_reads_its_values_back_through_the_mount(written):
    keys = [k for k in written.expected.values if k.startswith("array:")]
    assert_none(differences(written.mounted.values, written.expected.values, keys))


@for_writers(XARRAY_WRITERS)
def test_xarray_reads_its_datasets_back_through_the_mount(written):
    mounted, expected = written.mounted, written.expected
    assert not mounted.errors, mounted.errors
    assert_none(dataset_differences(mounted.datasets, expected.datasets))
    keys = [k for k in expected.values if k.startswith("xarray:")]
    assert_none(differences(mounted.values, expected.values, keys))


# --------------------------------------------------------------------------------------
# 2. The backing store after umount
# --------------------------------------------------------------------------------------


@for_writers(list(WRITERS))
def test_the_backing_store_holds_the_same_nodes_as_sharded_zarr_v3(written):
    nodes = backing_nodes(written.store)
    assert_none(node_differences(nodes, written.expected.tree, "in the backing store"))
    lines = []
    for path, node in written.expected.tree.items():
        doc = nodes[path]
        assert doc["zarr_format"] == 3 and doc["node_type"] == node["node"], path
        if node["node"] == "array":
            assert doc["codecs"][0]["name"] == "sharding_indexed", f"{path} is not sharded: {doc['codecs']}"
            assert doc["shape"] == node["shape"], path
        zarray = written.reference / path / ".zarray"
        attrs, dimension_names = v3_attributes(node, read_json(zarray) if zarray.exists() else None)
        if doc.get("attributes", {}) != attrs:
            lines.append(f"{path}: attributes {doc.get('attributes', {})}, expected {attrs}")
        if dimension_names is not None and doc.get("dimension_names") != dimension_names:
            lines.append(f"{path}: dimension_names {doc.get('dimension_names')}, expected {dimension_names}")
    assert_none(lines)


@for_writers(list(WRITERS))
def test_the_backing_store_holds_only_shards_and_metadata(written):
    """Shards, zarr.json and, in array directories only, the repack lock file (part of a finished
    store: made once per array written through a mount, never replaced)."""
    files = all_files(written.store)
    nodes = backing_nodes(written.store)
    accounted = {os.path.join(path, "zarr.json") if path else "zarr.json" for path in nodes}
    for path, doc in nodes.items():
        if doc["node_type"] == "array":
            accounted |= {os.path.join(path, key) if path else key for key in [*shard_keys(doc), LOCK_FILE]}
    if written.writer.xarray and written.writer.view == "v2":
        # xarray's consolidated metadata is a plain file to zarrfs; what it should become is for
        # zarrfs to decide (it describes the unsharded v2 arrays of the view)
        accounted |= {f for f in files if os.path.basename(f) == ".zmetadata"}
    assert files <= accounted, f"not shards nor metadata: {sorted(files - accounted)}"


@for_writers(list(WRITERS))
def test_zarr_python_3_and_tensorstore_read_the_backing_store(written):
    got, failed = {}, {}
    for key in written.expected.values:
        if key.startswith("array:"):
            try:
                got[key] = read_backing(written.store / key.removeprefix("array:"))
            except Exception as error:  # noqa: BLE001 - every array is tried, all failures reported
                failed[key] = f"{type(error).__name__}: {error}"
    assert not failed, failed
    keys = [k for k in written.expected.values if k.startswith("array:")]
    assert_none(differences(got, written.expected.values, keys))


@for_writers([name for name in XARRAY_WRITERS if WRITERS[name].view == "v3"])
def test_xarray_and_consolidated_metadata_read_the_backing_store(written):
    """The group metadata xarray wrote through the view carries consolidated metadata of the
    unsharded arrays it wrote; reading the backing store through it must still give its values."""
    expected = written.expected
    backing = run_reader(written.python, written.writer, written.store, written.work / "backing.npz",
                         dict(written.writer.read_options, consolidated=["xr.zarr"]))
    assert not backing.errors, backing.errors
    reference = run_reader(written.python, written.writer, written.reference, written.work / "reference-c.npz",
                           dict(written.writer.read_options, consolidated=["xr.zarr"]))
    keys = [k for k in reference.values if not k.startswith("array:")]
    assert_none(differences(backing.values, reference.values, keys))
    assert_none(dataset_differences(backing.datasets, expected.datasets))


@for_writers([name for name in XARRAY_WRITERS if WRITERS[name].view == "v3"])
def test_consolidated_metadata_in_the_backing_store_is_each_arrays_backing_zarr_json(written):
    """A group zarr.json written through the v3 view with consolidated metadata is stored with
    each array entry replaced by that array's backing (sharded) zarr.json."""
    nodes = backing_nodes(written.store)
    entries = {os.path.join(group, path) if group else path: entry
               for group, doc in nodes.items()
               for path, entry in ((doc.get("consolidated_metadata") or {}).get("metadata") or {}).items()
               if entry.get("node_type") == "array"}
    assert entries, "xarray consolidated nothing"
    assert_none([f"{path}: consolidated as {entry}, stored as {nodes.get(path)}"
                 for path, entry in sorted(entries.items()) if entry != nodes.get(path)])


# --------------------------------------------------------------------------------------
# 3. Fill values through the v2 view, as xarray sees them
# --------------------------------------------------------------------------------------
#
# xarray 2024.11 (xarray/backends/zarr.py) with zarr-python 2: _get_open_params defaults
# use_zarr_fill_value_as_mask to True unless the group is zarr_format 3 (never with zarr 2), and
# ZarrStore.open_store_variable then sets attributes["_FillValue"] = zarr_array.fill_value whenever
# it is not None (replacing any _FillValue attribute; with fill_value null a _FillValue attribute
# stays as it is, raw); CFMaskCoder.decode (xarray/coding/variables.py) masks those values to NaN,
# promoting integers to float. Writing, ZarrStore.set_variables pops _FillValue into the zarr
# fill_value (None without one). The newest xarray reads Zarr v3 without that: only a _FillValue
# attribute (floats as base64 of a little-endian double) masks. So a v2 view that shows a v3
# array's fill_value as it is makes every element equal to it (time[0] = 0.0 of time = arange(10),
# the zeros of an int array) NaN for xarray; a view that shows another value instead changes
# what zarr-python 2 reads for absent chunks.

FILL_VALUE_WRITER = r'''
import sys, warnings
import numpy as np
import xarray as xr
import zarr

warnings.simplefilter("ignore")
root = sys.argv[1]
store = zarr.storage.LocalStore(root)

# zarr-python 3 on its own: default fill values (0.0, 0), dimension names, sharded
time = zarr.create_array(store=store, name="zarr3/time", shape=(10,), chunks=(2,), shards=(4,), dtype="float64",
                         dimension_names=["time"])
time[...] = np.arange(10.0)
x = zarr.create_array(store=store, name="zarr3/x", shape=(3,), chunks=(3,), shards=(3,), dtype="int64",
                      dimension_names=["x"])
x[...] = np.arange(3)
value = zarr.create_array(store=store, name="zarr3/value", shape=(10, 3), chunks=(2, 3), shards=(4, 3),
                          dtype="float32", dimension_names=["time", "x"], attributes={"units": "m"})
data = (np.arange(30, dtype="float32") - 10).reshape(10, 3)
data[4, 1] = np.nan
value[...] = data
count = zarr.create_array(store=store, name="zarr3/count", shape=(10,), chunks=(5,), shards=(10,), dtype="int16",
                          fill_value=-1, dimension_names=["time"])
count[...] = np.arange(10) - 5
count[7] = -1

# xarray with zarr-python 3: its own fill values and _FillValue attributes, sharded
temp = (np.arange(40, dtype="float32") - 20).reshape(10, 4)
temp[2, 2] = np.nan
ds = xr.Dataset(
    {"temp": (("time", "y"), temp, {"units": "K"}),
     "n": (("time", "y"), (np.arange(40, dtype="int32") % 7).reshape(10, 4)),
     "flag": (("time",), np.array([0, 1, 255, 3, 0, 5, 6, 255, 8, 9], dtype="uint8"))},
    coords={"time": np.arange(10.0), "y": np.arange(4)},
)
ds["flag"].encoding["_FillValue"] = 255
encoding = {name: {"chunks": (2,) * ds[name].ndim, "shards": (4,) * ds[name].ndim} for name in ds.variables}
ds.to_zarr(root, group="xarray", zarr_format=3, mode="w-", encoding=encoding)
print("written")
'''

FILL_VALUE_GROUPS = ["zarr3", "xarray", "corpus"]


def corpus_arrays_with_dimension_names(corpus_store) -> list:
    """Corpus arrays xarray can open: named dimensions, all of them (a null name is no dimension)."""
    store, cases = corpus_store
    chosen = []
    for case in cases:
        names = read_json(store / case.path / "zarr.json").get("dimension_names")
        if names and all(names):
            chosen.append(case)
    return chosen


def absent_elements(array_dir: Path, scratch: Path) -> np.ndarray:
    """True where an array of a plain store has no chunk (an inner chunk absent from its shard):
    zarr-python 3 reads two copies of the array that differ only in their fill value, and only
    those elements differ."""
    doc = read_json(array_dir / "zarr.json")
    kind = np.dtype(doc["data_type"]).kind
    reads = []
    for fill in (1, 2):
        copy = scratch / f"{array_dir.name}-fill-{fill}"
        shutil.copytree(array_dir, copy)
        doc["fill_value"] = {"b": fill == 2, "f": float(fill), "c": [float(fill), 0.0]}.get(kind, fill)
        (copy / "zarr.json").write_text(json.dumps(doc))
        reads.append(zarr.open_array(str(copy), mode="r")[...])
    one, two = reads
    return ~((one == two) | (np.isnan(one) & np.isnan(two))) if kind in "fc" else one != two


@pytest.fixture(scope="module")
def fill_value_store(tmp_path_factory, corpus_store, xarray_zarr3_python) -> SimpleNamespace:
    """A plain sharded store (group ``zarr3`` by zarr-python 3, ``xarray`` by xarray + zarr 3,
    ``corpus``: copies of the corpus arrays with dimension names), what the newest xarray reads
    from it (``original``, through its consolidated metadata, with the arrays zarr-python 3 finds
    through it: ``v3_options``), and where each of its arrays has no chunk (``absent``, keyed like
    xarray's variables)."""
    work = tmp_path_factory.mktemp("fill-values")
    root = work / "store.zarr"
    cases = corpus_arrays_with_dimension_names(corpus_store)
    assert len(cases) >= 2
    for case in cases:
        shutil.copytree(corpus_store[0] / case.path, root / "corpus" / case.name)
    (root / "corpus" / "zarr.json").write_text(json.dumps({"zarr_format": 3, "node_type": "group"}))
    assert "written" in venv_run(xarray_zarr3_python, FILL_VALUE_WRITER, str(root))
    reader = Writer("newest-xarray", "xarray_zarr3_python", "v3", "", reader=READER)
    options = {"xarray": [["", group] for group in FILL_VALUE_GROUPS]}
    v3_options = dict(options, consolidated=[""], open_zarr={"consolidated": True})
    original = run_reader(xarray_zarr3_python, reader, root, work / "original.npz", v3_options)
    assert not original.errors, original.errors
    absent = {f"xarray::{group}:{array.parent.name}": absent_elements(array.parent, work / "absent" / group)
              for group in FILL_VALUE_GROUPS for array in sorted((root / group).glob("*/zarr.json"))}
    return SimpleNamespace(root=root, work=work, original=original, options=options, v3_options=v3_options,
                           reader=reader, absent=absent)


@pytest.fixture(scope="module")
def read_through_v2_view(fill_value_store, module_mount, xarray_zarr2_python) -> SimpleNamespace:
    mnt = module_mount(fill_value_store.root, "--view", "v2", "--read-only")
    reader = Writer("xarray-2024.11", "xarray_zarr2_python", "v2", "", reader=READER)
    return run_reader(xarray_zarr2_python, reader, mnt.path, fill_value_store.work / "v2.npz",
                      fill_value_store.options)


@pytest.mark.parametrize("group", FILL_VALUE_GROUPS)
def test_xarray_on_zarr2_reads_the_v2_view_as_xarray_on_zarr3_reads_the_original(
        fill_value_store, read_through_v2_view, group):
    """Item 12: float coordinates with fill_value 0.0 (time = arange(10)), integers with zeros.

    In chunks that are present only: the v2 view shows arrays with dimension names with the
    ``_FillValue`` attribute as fill value, else NaN for floats and null (zarr-python 2: whatever
    memory held) for the rest, so absent chunks read NaN where xarray reads floats, and anything
    where it reads integers."""
    got, expected = read_through_v2_view, fill_value_store.original
    assert f"xarray::{group}" not in got.errors, got.errors[f"xarray::{group}"]
    names = sorted(expected.datasets[f":{group}"]["variables"])
    assert sorted(got.datasets[f":{group}"]["variables"]) == names
    keys = [f"xarray::{group}:{name}" for name in names]
    present, lines = dict(got.values), []
    for key in keys:
        absent, value = fill_value_store.absent[key], got.values.get(key)
        if value is None or value.shape != absent.shape or not absent.any():
            continue  # differences() names a missing value or another shape
        if value.dtype.kind == "f" and not np.isnan(value[absent]).all():
            lines.append(f"{key}: absent chunks read {value[absent][~np.isnan(value[absent])][:3]}, not NaN")
        present[key] = value.copy()
        present[key][absent] = expected.values[key][absent]
    assert_none(lines + differences(present, expected.values, keys))


@pytest.fixture(scope="module")
def read_through_v3_view(fill_value_store, module_mount, xarray_zarr3_python) -> SimpleNamespace:
    """The newest xarray and zarr-python 3 reading the v3 view: through the root group's
    consolidated metadata (``consolidated``, as ``fill_value_store.original`` was read), and
    xarray without it (``plain``)."""
    mnt = module_mount(fill_value_store.root, "--read-only")
    reader, work = fill_value_store.reader, fill_value_store.work
    consolidated, plain = run_scripts(
        xarray_zarr3_python,
        (reader.reader, [str(mnt.path), str(work / "v3.npz"), json.dumps(fill_value_store.v3_options)]),
        (reader.reader, [str(mnt.path), str(work / "v3-plain.npz"),
                         json.dumps(dict(fill_value_store.options, open_zarr={"consolidated": False}))]))
    return SimpleNamespace(path=mnt.path, consolidated=reading(consolidated, work / "v3.npz"),
                           plain=reading(plain, work / "v3-plain.npz"))


@pytest.mark.parametrize("group", FILL_VALUE_GROUPS)
def test_newest_xarray_reads_the_v3_view_without_consolidated_metadata(fill_value_store, read_through_v3_view,
                                                                      group):
    """The same with ``consolidated=False``: tells the consolidated metadata from the arrays."""
    got, expected = read_through_v3_view.plain, fill_value_store.original
    assert not got.errors, got.errors
    keys = [k for k in expected.values if k.startswith(f"xarray::{group}:")]
    assert keys
    assert_none(differences(got.values, expected.values, keys))


@pytest.mark.parametrize("group", FILL_VALUE_GROUPS)
def test_newest_xarray_reads_the_v3_view_as_it_reads_the_original(fill_value_store, read_through_v3_view, group):
    """xarray consolidates the whole store into the root zarr.json, where the arrays are described
    as they are stored (sharded); through the v3 view they are unsharded. xarray and zarr-python 3
    read through that consolidated metadata (``consolidated=True``: no quiet fallback)."""
    got, expected = read_through_v3_view.consolidated, fill_value_store.original
    assert not {k: e for k, e in got.errors.items() if k in (f"xarray::{group}", "consolidated:")}, got.errors
    keys = [k for k in expected.values if k.startswith((f"xarray::{group}:", f"consolidated::{group}/"))]
    assert keys
    assert_none(differences(got.values, expected.values, keys))


CONSOLIDATED_UNSHARDED = ("chunk_grid", "codecs")  # what the v3 view changes in a sharded array's metadata


def test_the_v3_view_shows_consolidated_entries_of_sharded_arrays_unsharded(fill_value_store, read_through_v3_view):
    """Each consolidated entry of a sharded array reads, through the v3 view, with the chunk grid
    and codecs of that array's own zarr.json there (unsharded), and everything else as stored."""
    stored = read_json(fill_value_store.root / "zarr.json")["consolidated_metadata"]["metadata"]
    shown = read_json(read_through_v3_view.path / "zarr.json")["consolidated_metadata"]["metadata"]
    assert sorted(shown) == sorted(stored)
    arrays = [path for path, entry in sorted(stored.items()) if entry["node_type"] == "array"]
    assert arrays and all(stored[path]["codecs"][0]["name"] == "sharding_indexed" for path in arrays)
    lines = []
    for path in arrays:
        own = read_json(read_through_v3_view.path / path / "zarr.json")
        lines += [f"{path}: consolidated {key} {shown[path].get(key)}, its zarr.json {own.get(key)}"
                  for key in CONSOLIDATED_UNSHARDED if shown[path].get(key) != own.get(key)]
        rest = {key: value for key, value in shown[path].items() if key not in CONSOLIDATED_UNSHARDED}
        if rest != {key: value for key, value in stored[path].items() if key not in CONSOLIDATED_UNSHARDED}:
            lines.append(f"{path}: consolidated as {shown[path]}, stored as {stored[path]}")
    assert_none(lines)
