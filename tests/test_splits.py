import pandas as pd
import pytest

from cbgrid import catalog, splits


@pytest.fixture(scope="module")
def sites():
    return catalog.sites()


def test_paper_class_counts_are_reproduced():
    paper_igbp = dict(CRO=(70, 14), CSH=(9, 4), CVM=(4, 2), DBF=(83, 17), DNF=(12, 2), EBF=(21, 4), ENF=(125, 25),
                      GRA=(90, 18), MF=(23, 5), OSH=(36, 7), SNO=(2, 1), URB=(2, 1), WAT=(2, 1), WET=(64, 13), WSA=(12, 2))
    for cls, (n, k) in paper_igbp.items():
        assert splits._n_test(n, "igbp") == k, cls
    for n, k in [(19, 4), (55, 11), (194, 39), (284, 57), (15, 3)]:
        assert splits._n_test(n, "koppen") == k


@pytest.mark.parametrize("by, key", [("igbp", "igbp"), ("koppen", "koppen")])
def test_stratified_split_is_deterministic_and_covers_classes(sites, by, key):
    a = splits.make_split(sites, by=by, seed=3)
    b = splits.make_split(sites.sample(frac=1, random_state=1), by=by, seed=3)
    pd.testing.assert_frame_equal(a, b)
    assert not a.equals(splits.make_split(sites, by=by, seed=4))
    counts = pd.crosstab(a[key], a["set"])
    multi = counts[counts.sum(axis=1) >= 2]
    assert (multi["test"] >= 1).all() and (multi["train"] >= 1).all()
    assert a["fold"].isna().eq(a["set"] == "test").all()


def test_folds_are_stratified_by_koppen(sites):
    df = splits.make_split(sites, by="igbp", seed=0)
    train = df[df["set"] == "train"]
    per_fold = pd.crosstab(train["koppen"], train["fold"])
    assert per_fold.shape[1] == 5
    assert ((per_fold.max(axis=1) - per_fold.min(axis=1)) <= 1).all()
    fs = splits.folds(df)
    assert len(fs) == 5 and all(set(fit).isdisjoint(val) for fit, val in fs)


def test_official_split_uses_published_membership(sites):
    df = splits.make_split(sites, by="official-koppen")
    published = set(catalog.official_test_sites("koppen")["site"])
    assert set(splits.test_sites(df)) == published & set(sites["site"])
    with pytest.raises(ValueError, match="none of the 1 sites"):
        splits.make_split(sites[sites["site"] == "US-AR1"], by="official-igbp")


def test_split_csv_roundtrip_and_errors(tmp_path, sites):
    df = splits.make_split(sites, by="koppen", seed=1)
    p = splits.write_split(df, tmp_path / "k.csv")
    back = splits.read_split(p)
    pd.testing.assert_frame_equal(back.reset_index(drop=True), df.reset_index(drop=True), check_dtype=False)
    bad = df.assign(set="holdout")
    with pytest.raises(ValueError, match="'set' must be 'train' or 'test'"):
        splits.write_split(bad, tmp_path / "bad.csv")
    with pytest.raises(ValueError, match="unknown split 'biome'"):
        splits.make_split(sites, by="biome")
