"""Tests for the synthetic buyer-seller data set generator."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from sklearn.ensemble import HistGradientBoostingClassifier
from sklearn.feature_extraction.text import CountVectorizer
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import StratifiedKFold, cross_val_predict, cross_val_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from threadpoolctl import threadpool_limits

from mmfusion.data.synthetic import (
    CATEGORICAL_COLUMNS,
    ID_COLUMN,
    INFORMATIVE_NUMERIC_COLUMNS,
    LABEL_COLUMN,
    MODALITY_COLUMN,
    NUMERIC_COLUMNS,
    TEXT_COLUMN,
    SyntheticSpec,
    class_names,
    make_synthetic,
)

CV = StratifiedKFold(n_splits=5, shuffle=True, random_state=0)


def n_messages(df: pd.DataFrame) -> pd.Series:
    return df[TEXT_COLUMN].str.count("\n") + 1


def token_proxy(df: pd.DataFrame) -> pd.Series:
    return df[TEXT_COLUMN].str.split().str.len() / 0.75


@pytest.fixture(autouse=True)
def _single_thread():
    """Avoid OpenMP/BLAS oversubscription slow-downs on busy CI machines."""
    with threadpool_limits(limits=1):
        yield


@pytest.fixture(scope="module")
def big() -> pd.DataFrame:
    """6000 samples, frac_both=0: half text-informative, half tab-informative."""
    return make_synthetic(SyntheticSpec(n_samples=6000), seed=7)


def test_deterministic_and_seed_sensitive():
    spec = SyntheticSpec(n_samples=300, frac_both=0.2, label_noise=0.1)
    a, b = make_synthetic(spec, seed=1), make_synthetic(spec, seed=1)
    pd.testing.assert_frame_equal(a, b)
    c = make_synthetic(spec, seed=2)
    assert not a[TEXT_COLUMN].equals(c[TEXT_COLUMN])
    assert not a[NUMERIC_COLUMNS].equals(c[NUMERIC_COLUMNS])


def test_columns_dtypes_ids():
    df = make_synthetic(SyntheticSpec(n_samples=500), seed=0)
    expected = [ID_COLUMN, TEXT_COLUMN, *NUMERIC_COLUMNS, *CATEGORICAL_COLUMNS, LABEL_COLUMN, MODALITY_COLUMN]
    assert list(df.columns) == expected
    for col in NUMERIC_COLUMNS:
        assert df[col].dtype == np.float64
    for col in [ID_COLUMN, TEXT_COLUMN, *CATEGORICAL_COLUMNS, LABEL_COLUMN, MODALITY_COLUMN]:
        assert pd.api.types.is_string_dtype(df[col]), col
        assert df[col].notna().all()
    assert df[ID_COLUMN].is_unique and df[ID_COLUMN].iloc[42] == "s00042"
    assert set(df[MODALITY_COLUMN]) <= {"text", "tab", "both"}
    for line in "\n".join(df[TEXT_COLUMN]).split("\n"):
        assert line.startswith(("Buyer: ", "Seller: "))
    assert df[TEXT_COLUMN].nunique() >= 0.99 * len(df)  # varied dialogues
    assert "{" not in "".join(df[TEXT_COLUMN])  # every slot filled
    # realistic units
    assert (df["seller_rating"].dropna().between(1, 5)).all()
    assert (df["delivery_days"].dropna() >= 0).all() and (df["order_value"].dropna() > 0).all()
    assert df["refund_ratio"].dropna().between(0, 1).all()


@pytest.mark.parametrize("k", [2, 3, 4])
def test_label_sets(k):
    df = make_synthetic(SyntheticSpec(n_samples=400, n_classes=k), seed=0)
    assert set(df[LABEL_COLUMN]) == set(class_names(k))
    assert len(class_names(k)) == k
    assert class_names(2) == ["resolved", "escalate"]
    assert class_names(4) == ["resolved", "damaged", "late", "wrong_item"]


def test_invalid_specs():
    with pytest.raises(ValueError):
        class_names(5)
    with pytest.raises(ValueError):
        make_synthetic(SyntheticSpec(n_classes=1), seed=0)
    with pytest.raises(ValueError):
        make_synthetic(SyntheticSpec(frac_both=1.5), seed=0)


def test_modality_fractions():
    df = make_synthetic(SyntheticSpec(n_samples=4000, frac_both=0.2), seed=3)
    frac = df[MODALITY_COLUMN].value_counts(normalize=True)
    assert frac["both"] == pytest.approx(0.2, abs=0.03)
    assert frac["text"] == pytest.approx(0.4, abs=0.03)
    assert frac["tab"] == pytest.approx(0.4, abs=0.03)
    assert (make_synthetic(SyntheticSpec(n_samples=500), seed=0)[MODALITY_COLUMN] != "both").all()


def test_heavy_tailed_length():
    df = make_synthetic(SyntheticSpec(n_samples=5000), seed=11)
    m = n_messages(df)
    assert m.min() >= 2 and m.max() <= 24
    assert m.median() <= 5
    assert m.max() >= 22
    tok = token_proxy(df)
    assert (tok <= 2 * 64).mean() > 0.6  # most dialogues fit in two 64-token chunks
    assert (tok > 5 * 64).mean() > 0.01  # a tail needs many chunks
    words = df[TEXT_COLUMN].str.split("\n").explode().str.split().str.len() - 1  # minus speaker tag
    assert 12 <= words.mean() <= 25
    short = make_synthetic(SyntheticSpec(n_samples=500, max_messages=6), seed=0)
    assert n_messages(short).max() <= 6


def _surface_features(df: pd.DataFrame) -> np.ndarray:
    base = pd.DataFrame({
        "n_messages": n_messages(df),
        "char_length": df[TEXT_COLUMN].str.len(),
        "n_missing": df[NUMERIC_COLUMNS].isna().sum(axis=1),
    })
    return pd.concat([base, pd.get_dummies(df[CATEGORICAL_COLUMNS], dtype=float)], axis=1).to_numpy(float)


def surface_aurocs(df: pd.DataFrame) -> dict[str, float]:
    x, y = _surface_features(df), (df[MODALITY_COLUMN] == "text").to_numpy()
    models = {
        "logreg": make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000)),
        "hgb": HistGradientBoostingClassifier(max_iter=60, max_depth=3, learning_rate=0.1, random_state=0),
    }
    return {name: cross_val_score(m, x, y, cv=CV, scoring="roc_auc").mean() for name, m in models.items()}


def test_surface_independence(big):
    aurocs = surface_aurocs(big)
    for name, auc in aurocs.items():
        assert abs(auc - 0.5) < 0.05, (name, auc)
    # length statistics per modality match closely
    length = big[TEXT_COLUMN].str.len()
    means = length.groupby(big[MODALITY_COLUMN]).mean()
    assert abs(means["text"] - means["tab"]) < 0.05 * length.std()


def _cv_accuracy(model, x, y) -> float:
    return float((cross_val_predict(model, x, y, cv=CV) == y).mean())


def _tab_accuracy(df: pd.DataFrame) -> float:
    x = df[INFORMATIVE_NUMERIC_COLUMNS]
    x = x.fillna(x.median()).to_numpy()
    return _cv_accuracy(make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000)), x, df[LABEL_COLUMN])


def _text_accuracy(df: pd.DataFrame) -> float:
    # Vocabulary fitted once (unsupervised, no label leakage) to keep the test fast.
    x = CountVectorizer(min_df=2, binary=True).fit_transform(df[TEXT_COLUMN])
    return _cv_accuracy(LogisticRegression(max_iter=1000), x, df[LABEL_COLUMN])


def test_signal_lives_in_the_right_modality(big):
    tab, text = big[big[MODALITY_COLUMN] == "tab"], big[big[MODALITY_COLUMN] == "text"]
    assert _tab_accuracy(tab) > 0.8
    assert abs(_tab_accuracy(text) - 0.5) < 0.06
    assert _text_accuracy(text) > 0.9
    assert abs(_text_accuracy(tab) - 0.5) < 0.06


def test_multiclass_signal():
    df = make_synthetic(SyntheticSpec(n_samples=4000, n_classes=4, frac_both=0.2), seed=5)
    assert _text_accuracy(df[df[MODALITY_COLUMN] != "tab"]) > 0.85
    assert _tab_accuracy(df[df[MODALITY_COLUMN] != "text"]) > 0.6
    assert _tab_accuracy(df[df[MODALITY_COLUMN] == "text"]) < 0.35


def test_null_matches_class_mixture_mean(big):
    """Informative features: same mean for tab- and text-informative rows (no surface shift)."""
    z = big[INFORMATIVE_NUMERIC_COLUMNS]
    z = (z - z.mean()) / z.std()
    diff = z[big[MODALITY_COLUMN] == "tab"].mean() - z[big[MODALITY_COLUMN] == "text"].mean()
    assert (diff.abs() < 0.1).all(), diff
    # categorical marginals identical in expectation
    for col in ["shipping_method", "payment_method"]:
        tab = big.loc[big[MODALITY_COLUMN] == "tab", col].value_counts(normalize=True)
        txt = big.loc[big[MODALITY_COLUMN] == "text", col].value_counts(normalize=True)
        assert (tab - txt).abs().max() < 0.04


def test_label_noise_reduces_agreement():
    spec = SyntheticSpec(n_samples=4000)
    clean = make_synthetic(spec, seed=9)
    noisy = make_synthetic(SyntheticSpec(n_samples=4000, label_noise=0.3), seed=9)
    pd.testing.assert_frame_equal(clean.drop(columns=LABEL_COLUMN), noisy.drop(columns=LABEL_COLUMN))
    agreement = (clean[LABEL_COLUMN] == noisy[LABEL_COLUMN]).mean()
    assert agreement == pytest.approx(1 - 0.3 * 0.5, abs=0.03)


def test_text_signal_zero_gives_chance_text():
    df = make_synthetic(SyntheticSpec(n_samples=3000, text_signal=0.0), seed=4)
    text = df[df[MODALITY_COLUMN] == "text"]
    assert abs(_text_accuracy(text) - 0.5) < 0.06


def test_fast():
    import time

    start = time.process_time()  # CPU time: robust to other jobs on the machine
    make_synthetic(SyntheticSpec(n_samples=10_000), seed=0)
    assert time.process_time() - start < 2.0
