import numpy as np
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
    with pytest.raises(ValueError, match="'set' must be 'train', 'test' or 'excluded'"):
        splits.write_split(bad, tmp_path / "bad.csv")
    with pytest.raises(ValueError, match="unknown split 'biome'"):
        splits.make_split(sites, by="biome")


def _site_table(n=474, seed=0):
    """A site table shaped like the published v2 one: the 474 site codes, skewed class sizes."""
    rng = np.random.default_rng(seed)
    codes = catalog.carbonbench_sites()["site_code"].tolist()[:n]
    igbp = rng.choice(["ENF", "DBF", "GRA", "CRO", "WET", "OSH", "EBF", "MF", "SAV", "WSA", "CSH", "CVM", "SNO", "URB"],
                      n, p=[.22, .15, .16, .12, .11, .06, .04, .04, .03, .02, .02, .01, .01, .01])
    koppen = rng.choice(list("ABCDE"), n, p=[.04, .1, .34, .49, .03])
    return pd.DataFrame({"site": codes, "igbp": igbp, "koppen": koppen})


def _restated_split_targets(site_meta, split_type, random_state=56):
    """split_targets() of the reference, restated on its own site_meta frame (site, Koppen, IGBP)."""
    from sklearn.model_selection import train_test_split

    if split_type == "IGBP":
        igbp_counts = site_meta.IGBP.value_counts()
        rare_igbp = igbp_counts[igbp_counts <= 10].index.tolist()
        test_sites = []
        for igbp in rare_igbp:
            test_sites.extend(site_meta[site_meta.IGBP == igbp].sample(igbp_counts[igbp] // 2, random_state=random_state).site)
        remaining = site_meta[~site_meta.IGBP.isin(rare_igbp)]
        test_sites.extend(train_test_split(remaining.site, test_size=0.2, stratify=remaining.IGBP,
                                           random_state=random_state)[1])
        return set(test_sites)
    return set(train_test_split(site_meta.site, test_size=0.2, stratify=site_meta.Koppen, random_state=random_state)[1])


@pytest.mark.parametrize("by", ["koppen", "igbp"])
def test_reference_method_is_the_reference_algorithm(by):
    table = _site_table()
    df = splits.make_split(table.sample(frac=1, random_state=3), by=by, method="reference")
    meta = table.rename(columns={"koppen": "Koppen", "igbp": "IGBP"}).groupby("site").agg(
        {"Koppen": "first", "IGBP": "first"}).reset_index()
    assert set(splits.test_sites(df)) == _restated_split_targets(meta, "Koppen" if by == "koppen" else "IGBP")
    assert (df["seed"] == 56).all() and df["fold"].notna().eq(df["set"] == "train").all()
    if by == "koppen":  # the published Köppen list's size: ceil(0.2 * 474) held-out sites
        assert len(splits.test_sites(df)) == 95
    # other seeds do not change the reference membership
    assert splits.test_sites(splits.make_split(table, by=by, method="reference", seed=9)) == splits.test_sites(df)
    # the algorithm's own seed draws another split of the same algorithm, recorded as the seed
    other = splits.make_split(table, by=by, method="reference", reference_seed=57)
    assert set(splits.test_sites(other)) == _restated_split_targets(meta, "Koppen" if by == "koppen" else "IGBP",
                                                                     random_state=57)
    assert set(splits.test_sites(other)) != set(splits.test_sites(df)) and (other["seed"] == 57).all()


def test_reference_method_errors_name_the_problem():
    table = _site_table(30).assign(koppen=["A"] + ["C"] * 29)
    with pytest.raises(ValueError, match="cannot stratify these 30 sites"):
        splits.make_split(table, by="koppen", method="reference")
    with pytest.raises(ValueError, match="unknown split method 'random'"):
        splits.make_split(table, by="koppen", method="random")


@pytest.mark.parametrize("by", ["official-koppen", "official-igbp"])
def test_official_split_never_trains_on_a_held_out_site(by, monkeypatch):
    """The published lists are the reference split's test sites that got a score: with a list
    made that way (3 held-out sites unscored), the unscored ones are excluded, never trained."""
    table = _site_table()
    held = splits.reference_test_sites(table, by.removeprefix("official-"))
    unscored = sorted(held)[:3]
    listed = pd.DataFrame({"site": [s for s in held if s not in unscored]})
    monkeypatch.setattr(catalog, "official_test_sites", lambda split: listed)
    extra = pd.DataFrame({"site": ["ZZ-New"], "igbp": ["ENF"], "koppen": ["D"]})  # outside the benchmark: trains
    df = splits.make_split(pd.concat([table, extra]), by=by)
    assert set(splits.test_sites(df)) == set(listed["site"])
    assert sorted(df.loc[df["set"] == "excluded", "site"]) == unscored
    assert not set(splits.train_sites(df)) & set(held)
    assert "ZZ-New" in splits.train_sites(df)
    assert df.loc[df["set"] != "train", "fold"].isna().all()
    assert splits.summary(df).loc["Total", "excluded"] == 3


def test_official_split_on_the_published_lists(sites):
    """On any store, every listed site of the store is a test site and no reference-held-out
    benchmark site trains."""
    for by in ("official-koppen", "official-igbp"):
        df = splits.make_split(sites, by=by)
        listed = set(catalog.official_test_sites(by)["site"])
        assert set(splits.test_sites(df)) == listed & set(sites["site"])
        bench = set(catalog.carbonbench_sites()["site_code"])
        table = splits.site_table(sites)
        held = set(splits.reference_test_sites(table[table["site"].isin(bench)], by.removeprefix("official-")))
        assert not set(splits.train_sites(df)) & held
