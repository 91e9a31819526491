"""Known-answer tests of nwv.pages: paging, bit-exact round trips, gather, errors."""
import json
import os

import numpy as np
import pytest

from nwv import matching, pages


def _net(seed, shapes=((3, 3, 1, 8), (8,), (7, 5), (5,))):
    rng = np.random.default_rng(seed)
    return [rng.normal(size=s).astype(np.float32) for s in shapes]


@pytest.mark.parametrize("page_size", [1, 7, 10, 100, 1000])
def test_round_trip_is_bit_exact_with_padding(page_size):
    arrays = _net(0)
    arrays[1][:3] = [-0.0, np.float32(1e-45), np.finfo(np.float32).max]  # odd bit patterns
    flat, layout = pages.flatten(arrays, page_size)
    n = 72 + 8 + 35 + 5
    assert flat.dtype == np.float32 and flat.shape == (n,)
    assert layout.n_weights == n and layout.n_pages == -(-n // page_size)
    assert layout.sizes == (72, 8, 35, 5) and layout.offsets == (0, 72, 80, 115)
    paged = pages.to_pages(flat, page_size)
    assert paged.shape == (layout.n_pages, page_size)
    assert not np.any(paged.reshape(-1)[n:])                 # zero padding
    back = pages.from_pages(paged, layout)
    for a, b in zip(arrays, back):
        assert a.shape == b.shape and a.dtype == b.dtype
        assert a.tobytes() == b.tobytes()                    # bit-exact, -0.0 included


def test_layout_follows_variable_order():
    arrays = [np.full((2, 3), 1.0), np.full((3,), 2.0), np.full((1, 1), 3.0)]
    paged, layout = pages.paginate(arrays, 4)
    np.testing.assert_array_equal(paged, [[1, 1, 1, 1], [1, 1, 2, 2], [2, 3, 0, 0]])
    assert layout.shapes == ((2, 3), (3,), (1, 1))


def test_layout_config_round_trip():
    _, layout = pages.flatten(_net(1), 9)
    config = json.loads(json.dumps(layout.get_config()))
    assert pages.PageLayout.from_config(config) == layout
    assert pages.PageLayout.from_config({"shapes": config["shapes"], "page_size": 9}) == layout
    with pytest.raises(ValueError, match="expected n_pages=14"):
        pages.PageLayout.from_config(dict(config, n_pages=3))


def test_gather_weights_reproduces_unshared_networks():
    first, second = _net(2), _net(3, shapes=((4, 6), (6,), (6, 2)))
    (w1, layout1), (w2, layout2) = pages.paginate(first, 10), pages.paginate(second, 10)
    pool, tables, _ = matching.virtualize_pages([(w1, np.ones_like(w1))])
    np.testing.assert_array_equal(tables[0], np.arange(layout1.n_pages))  # identity
    for a, b in zip(first, pages.gather_weights(pool.weights, tables[0], layout1)):
        assert a.tobytes() == b.tobytes()
    # Once a second network shares the pages, the first reads their mean.
    _, pool, _ = matching.match_network(pool, w2, np.ones_like(w2))
    shared = pages.gather_weights(pool.weights, tables[0], layout1)
    assert not all(a.tobytes() == b.tobytes() for a, b in zip(first, shared))
    # A shuffled page table into a bigger pool reads the right pages too.
    perm = np.random.default_rng(0).permutation(20)
    big = np.zeros((20, 10), np.float32)
    big[perm[:layout2.n_pages]] = w2
    for a, b in zip(second, pages.gather_weights(big, perm[:layout2.n_pages], layout2)):
        assert a.tobytes() == b.tobytes()


def test_errors_are_clear():
    _, layout = pages.flatten(_net(4), 10)
    with pytest.raises(ValueError, match="expected page_size to be an integer >= 1"):
        pages.flatten(_net(4), 0)
    with pytest.raises(ValueError, match="expected page_size"):
        pages.to_pages(np.zeros(5), -1)
    bad = _net(4)
    bad[2][1, 1] = np.nan
    with pytest.raises(ValueError, match="expected finite values in array 2"):
        pages.flatten(bad, 10)
    with pytest.raises(ValueError, match="received 1 NaN/inf"):
        pages.to_pages(np.array([1.0, np.inf]), 10)
    with pytest.raises(ValueError, match="expected a 1-D vector"):
        pages.to_pages(np.zeros((2, 2)), 10)
    with pytest.raises(ValueError, match="expected a non-empty list"):
        pages.flatten([], 10)
    with pytest.raises(ValueError, match=r"expected pages of shape \(12, 10\), received"):
        pages.from_pages(np.zeros((11, 10)), layout)
    pool = np.zeros((15, 10), np.float32)
    table = np.arange(12)
    with pytest.raises(ValueError, match=r"expected page indices in \[0, 15\), received"):
        pages.gather_weights(pool, np.where(table == 3, 15, table), layout)
    with pytest.raises(ValueError, match="expected page indices"):
        pages.gather_weights(pool, np.where(table == 3, -1, table), layout)
    with pytest.raises(ValueError, match="expected an integer page table"):
        pages.gather_weights(pool, table.astype(float), layout)
    with pytest.raises(ValueError, match=r"expected a page table of shape \(12,\)"):
        pages.gather_weights(pool, table[:5], layout)
    with pytest.raises(ValueError, match=r"expected a pool of shape \[m, 10\]"):
        pages.gather_weights(np.zeros((15, 9)), table, layout)


def test_reference_networks_page_counts(shared_dir):
    expected = dict(mnist=(45706, 458), cifar10=(45490, 455), svhn=(45490, 455),
                    gtsrb=(66475, 665), gsc=(65531, 656))
    for net, (n_weights, n_pages) in expected.items():
        with np.load(os.path.join(shared_dir, "reference", "nwv", f"{net}.npz")) as npz:
            n_layers = sum(k.startswith("weight_") for k in npz.files)
            arrays = [npz[f"{kind}_{i}"] for i in range(n_layers) for kind in ("weight", "bias")]
        paged, layout = pages.paginate(arrays, 100)
        assert (layout.n_weights, layout.n_pages) == (n_weights, n_pages)
        for a, b in zip(arrays, pages.from_pages(paged, layout)):
            assert a.tobytes() == b.tobytes()
