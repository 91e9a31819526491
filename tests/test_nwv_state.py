"""nwv.state: the pool directory round-trips bit for bit, every corruption is reported
naming its file, and a crash at any point of a save leaves a loadable state."""
import json
import os

import numpy as np
import pytest

from nwv import state
from nwv.state import NetworkRecord, PoolDirState

P = 4


def _record(name, shapes, table, seed):
    rng = np.random.default_rng(seed)
    n_weights = sum(int(np.prod(s)) for s in shapes)
    n_pages = -(-n_weights // P)
    return NetworkRecord(name=name, task="mnist", model="tiny", model_overrides={"k": 1},
                         variable_names=tuple(f"l{i}/w" for i in range(len(shapes))),
                         variable_shapes=tuple(shapes), page_table=np.asarray(table, np.int32),
                         fisher=rng.gamma(0.5, size=(n_pages, P)).astype(np.float32),
                         fisher_source="computed:expected:8")


def _state(seed=0, with_b=True):
    rng = np.random.default_rng(seed)
    nets = {"a": _record("a", [(3, 2), (2,)], [0, 1], seed)}          # 8 weights, 2 pages
    if with_b:
        nets["b"] = _record("b", [(5,), (3, 2)], [2, 0, 1], seed + 1)  # 11 weights, 3 pages
    return PoolDirState(P, rng.normal(size=(3, P)).astype(np.float32), nets)


def _assert_same(a, b):
    assert a.page_size == b.page_size and a.pool.tobytes() == b.pool.tobytes()
    assert list(a.networks) == list(b.networks)
    for name in a.networks:
        ra, rb = a.networks[name], b.networks[name]
        assert ra.page_table.tobytes() == rb.page_table.tobytes()
        assert ra.fisher.tobytes() == rb.fisher.tobytes()
        assert (ra.task, ra.model, ra.model_overrides, ra.variable_shapes, ra.variable_names,
                ra.fisher_source) == (rb.task, rb.model, rb.model_overrides,
                                      rb.variable_shapes, rb.variable_names, rb.fisher_source)


def test_round_trip_and_manifest(tmp_path):
    saved = _state()
    manifest = state.save_state(tmp_path, saved)
    _assert_same(state.load_state(tmp_path), saved)
    on_disk = json.load(open(tmp_path / "manifest.json"))
    assert on_disk == manifest and on_disk["version"] == state.FORMAT_VERSION
    assert on_disk["networks"]["b"]["weights"] == 11 and on_disk["networks"]["b"]["pages"] == 3
    assert sorted(os.listdir(tmp_path)) == [".commit.lock", ".writer.lock", "a.fisher.npy",
                                            "a.vnn", "b.fisher.npy", "b.vnn",
                                            "manifest.json", "pool.npy"]
    assert np.load(tmp_path / "pool.npy").tobytes() == saved.pool.tobytes()
    only_a = state.load_state(tmp_path, ["a"], with_fisher=False)
    assert list(only_a.networks) == ["a"] and only_a.networks["a"].fisher is None
    pool_state = saved.pool_state()              # matching view: summed Fisher, occupancy
    np.testing.assert_array_equal(pool_state.occupancy, [2, 2, 1])
    np.testing.assert_allclose(pool_state.fisher[2], saved.networks["b"].fisher[0])


def test_page_table_format():
    table = np.array([5, 0, 7], np.int32)
    blob = state.encode_page_table(table)
    assert blob[:8] == b"NWVPTBL1" and len(blob) == 16 + 12
    np.testing.assert_array_equal(state.decode_page_table(blob), table)
    with pytest.raises(ValueError, match="t.vnn: truncated"):
        state.decode_page_table(blob[:-1], "t.vnn")
    with pytest.raises(ValueError, match="starting with"):
        state.decode_page_table(b"garbage!" + blob[8:], "t.vnn")


def test_removed_network_files_are_deleted(tmp_path):
    state.save_state(tmp_path, _state())
    state.save_state(tmp_path, _state(with_b=False))
    assert not (tmp_path / "b.vnn").exists() and not (tmp_path / "b.fisher.npy").exists()
    assert list(state.load_state(tmp_path).networks) == ["a"]


def _rewrite(folder, file, blob, entry_of):
    """Writes `blob` to `file` and fixes its manifest checksum (content errors only)."""
    (folder / file).write_bytes(blob)
    manifest = json.load(open(folder / "manifest.json"))
    entry = entry_of(manifest)
    entry.update(bytes=len(blob), sha256=state._sha256(blob))
    (folder / "manifest.json").write_text(json.dumps(manifest))


def _edit_manifest(folder, edit):
    manifest = json.load(open(folder / "manifest.json"))
    edit(manifest)
    (folder / "manifest.json").write_text(json.dumps(manifest))


def _corrupt_pool_truncated(d):
    blob = (d / "pool.npy").read_bytes()
    (d / "pool.npy").write_bytes(blob[:-5])


def _corrupt_pool_flipped(d):
    blob = bytearray((d / "pool.npy").read_bytes())
    blob[-1] ^= 0xFF
    (d / "pool.npy").write_bytes(bytes(blob))


def _pool_with_nan(d):
    pool = np.load(d / "pool.npy")
    pool[1, 2] = np.nan
    _rewrite(d, "pool.npy", state._npy_bytes(pool), lambda m: m["pool"])


def _table_out_of_range(d):
    _rewrite(d, "b.vnn", state.encode_page_table([2, 0, 3]),
             lambda m: m["networks"]["b"]["page_table"])


def _table_too_short(d):
    _rewrite(d, "b.vnn", state.encode_page_table([2, 0]),
             lambda m: m["networks"]["b"]["page_table"])


def _table_bad_magic(d):
    blob = b"NOTATABL" + (d / "a.vnn").read_bytes()[8:]
    _rewrite(d, "a.vnn", blob, lambda m: m["networks"]["a"]["page_table"])


def _fisher_negative(d):
    fisher = np.load(d / "a.fisher.npy")
    fisher[0, 0] = -1.0
    _rewrite(d, "a.fisher.npy", state._npy_bytes(fisher),
             lambda m: m["networks"]["a"]["fisher"])


def _unknown_version(d):
    _edit_manifest(d, lambda m: m.update(version=99))


def _shapes_disagree_with_counts(d):
    _edit_manifest(d, lambda m: m["networks"]["a"].update(variable_shapes=[[3, 3], [2]]))


def _pool_shape_in_manifest(d):
    _edit_manifest(d, lambda m: m.update(pool_pages=4))


def _missing_table(d):
    os.remove(d / "b.vnn")


def _missing_manifest(d):
    os.remove(d / "manifest.json")


def _bad_json(d):
    (d / "manifest.json").write_text("{not json")


@pytest.mark.parametrize("corrupt,error,message", [
    (_corrupt_pool_truncated, ValueError, r"pool\.npy: truncated"),
    (_corrupt_pool_flipped, ValueError, r"pool\.npy: checksum mismatch"),
    (_pool_with_nan, ValueError, r"pool\.npy: the pool holds 1 NaN"),
    (_table_out_of_range, ValueError, r"b\.vnn: page index outside the pool"),
    (_table_too_short, ValueError, r"b\.vnn: expected a page table of 3 entries"),
    (_table_bad_magic, ValueError, r"a\.vnn: expected a page table starting with"),
    (_fisher_negative, ValueError, r"a\.fisher\.npy: expected finite non-negative Fisher"),
    (_unknown_version, ValueError, r"manifest\.json: unknown manifest version 99"),
    (_shapes_disagree_with_counts, ValueError, r"network 'a' lists 8 weights in 2 pages"),
    (_pool_shape_in_manifest, ValueError, r"pool\.npy: expected a float32 pool of shape"),
    (_missing_table, FileNotFoundError, r"b\.vnn: missing"),
    (_missing_manifest, FileNotFoundError, r"manifest\.json is missing"),
    (_bad_json, ValueError, r"manifest\.json: not a readable JSON"),
])
def test_corrupt_state_is_reported_naming_the_file(tmp_path, corrupt, error, message):
    state.save_state(tmp_path, _state())
    corrupt(tmp_path)
    with pytest.raises(error, match=message):
        state.load_state(tmp_path)


def test_shapes_that_disagree_with_the_model(tmp_path):
    import keras

    from nwv.runtime import check_model

    state.save_state(tmp_path, _state())
    record = state.load_state(tmp_path).networks["a"]
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
    check_model(record, model)                      # (3, 2) kernel, (2,) bias: fits
    wider = keras.Sequential([keras.Input((3,)), keras.layers.Dense(3)])
    with pytest.raises(ValueError, match=r"network 'a' expects variable shapes"):
        check_model(record, wider)


def test_unknown_network_and_bad_names(tmp_path):
    state.save_state(tmp_path, _state())
    with pytest.raises(KeyError, match="no network 'c'"):
        state.load_state(tmp_path, ["c"])
    for bad in ["../x", ".hidden", "a b", "x.next", ""]:
        with pytest.raises(ValueError, match="expected a network name"):
            state.check_name(bad)
    broken = _state()
    broken.pool[0, 0] = np.inf
    with pytest.raises(ValueError, match="NaN/inf"):
        state.save_state(tmp_path / "new", broken)
    assert not (tmp_path / "new" / "manifest.json").exists()


def _count_replaces(monkeypatch, folder, new):
    calls = []
    real = os.replace
    monkeypatch.setattr(os, "replace", lambda a, b: (calls.append(b), real(a, b))[1])
    state.save_state(folder, new)
    monkeypatch.setattr(os, "replace", real)
    return calls


def test_crash_at_any_replace_leaves_a_loadable_state(tmp_path, monkeypatch):
    old, new = _state(0), _state(1, with_b=False)
    new.pool = new.pool[:2]
    _count_replaces(monkeypatch, tmp_path / "probe", old)
    calls = _count_replaces(monkeypatch, tmp_path / "probe", new)   # replaces of an update
    assert len(calls) >= 5                                            # some after the commit
    commit = calls.index(str(tmp_path / "probe" / "manifest.json"))
    real = os.replace
    for crash_at in range(len(calls)):
        folder = tmp_path / f"crash{crash_at}"
        state.save_state(folder, old)
        count = [0]

        def flaky(src, dst):
            count[0] += 1
            if count[0] == crash_at + 1:
                raise OSError("simulated power loss")
            return real(src, dst)

        monkeypatch.setattr(os, "replace", flaky)
        with pytest.raises(OSError, match="simulated"):
            state.save_state(folder, new)
        monkeypatch.setattr(os, "replace", real)
        _assert_same(state.load_state(folder), old if crash_at <= commit else new)
        state.save_state(folder, new)                     # the next save cleans up
        _assert_same(state.load_state(folder), new)
        assert not [f for f in os.listdir(folder) if f.endswith(".next") or (
            f.startswith(".") and not f.endswith(".lock"))]
