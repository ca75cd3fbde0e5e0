"""Generating the synthetic data set: `SyntheticSpec` and `make_synthetic` (labels, informative modality, the
tabular features; the dialogues come from `text.render_dialogues`)."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from mmfusion.data.synthetic.schema import (
    CATEGORICAL_COLUMNS,
    CATEGORIES,
    ID_COLUMN,
    INFORMATIVE_NUMERIC_COLUMNS,
    LABEL_COLUMN,
    MODALITIES,
    MODALITY_COLUMN,
    NUMERIC_COLUMNS,
    TEXT_COLUMN,
    class_names,
)
from mmfusion.data.synthetic.text import POOL_NAMES, render_dialogues

# Class prototypes (regular simplex) in the informative latent subspace (seller_rating,
# delivery_days, refund_ratio). Columns sum to zero, so the class mixture has the null's
# mean; each coordinate's values are also symmetric about 0, so odd unit maps keep it.
_PROTOTYPES = {
    2: [[1, -1, -1], [-1, 1, 1]],
    3: [[1, -1, 0], [-1, 0, 1], [0, 1, -1]],
    4: [[1, -1, -1], [-1, -1, 1], [-1, 1, -1], [1, 1, 1]],
}
_LENGTH_MU, _LENGTH_SIGMA = 0.7, 1.0  # n_messages = 2 + floor(LogNormal(mu, sigma))
_CAT_STRENGTH = 0.6  # log-odds boost of class-preferred shipping/payment values
_SHIPPING = (["standard", "express", "economy", "pickup"], [0.45, 0.25, 0.2, 0.1])
_PAYMENT = (["card", "paypal", "bank_transfer", "gift_card", "cash_on_delivery"], [0.45, 0.3, 0.1, 0.05, 0.1])


@dataclass(frozen=True)
class SyntheticSpec:
    """Parameters of the synthetic data set (see `mmfusion.data.synthetic`)."""

    n_samples: int = 2000
    n_classes: int = 2  # 2..4
    frac_both: float = 0.0  # fraction "both"; the rest split evenly text/tab
    text_signal: float = 1.0  # P(key message comes from the true label's pool)
    tab_signal: float = 2.0  # shift of informative latent features, in SDs (Euclidean norm)
    label_noise: float = 0.0  # fraction of labels replaced by a uniform random class
    missing_rate: float = 0.05  # per numeric cell, independent of everything
    max_messages: int = 24


def _validate(spec: SyntheticSpec) -> None:
    class_names(spec.n_classes)
    if spec.n_samples < 1 or spec.max_messages < 2:
        raise ValueError("need n_samples >= 1 and max_messages >= 2")
    for field in ("frac_both", "text_signal", "label_noise", "missing_rate"):
        if not 0.0 <= getattr(spec, field) <= 1.0:
            raise ValueError(f"{field} must be in [0, 1]")


def _sample_rows(rng: np.random.Generator, probs: np.ndarray) -> np.ndarray:
    """One categorical draw per row of an (n, V) probability matrix."""
    cum = np.cumsum(probs, axis=1)
    return np.minimum((rng.random(len(probs))[:, None] > cum[:, :-1]).sum(axis=1), probs.shape[1] - 1)


def _class_conditional(rng: np.random.Generator, values: list[str], base: list[float],
                       label: np.ndarray, k: int, informative: np.ndarray) -> np.ndarray:
    """p_c for informative rows, mean_c(p_c) otherwise (identical marginals)."""
    base = np.asarray(base, dtype=float)
    tilt = np.array([[float(v % k == c) for v in range(len(base))] for c in range(k)])
    p_c = base * np.exp(_CAT_STRENGTH * tilt)
    p_c /= p_c.sum(axis=1, keepdims=True)
    probs = np.where(informative[:, None], p_c[label], p_c.mean(axis=0))
    return np.asarray(values, dtype=object)[_sample_rows(rng, probs)]


def _to_units(z: np.ndarray) -> np.ndarray:
    """Map standard-normal latents to realistic units, monotone per column.

    Informative columns use maps odd-symmetric about the null median, so the class
    mixture keeps the null mean in unit space too.
    """
    return np.column_stack([
        np.round(np.exp(3.7 + 0.8 * z[:, 0]), 2),  # order_value, lognormal dollars
        np.round(3.0 + 2.0 * np.tanh(0.5 * z[:, 1]), 2),  # seller_rating in (1, 5)
        np.round(8.0 + 6.0 * np.tanh(0.45 * z[:, 2])),  # delivery_days in [2, 14]
        np.floor(np.exp(1.0 + 1.1 * z[:, 3])),  # n_prior_orders >= 0
        np.round(0.1 + 0.1 * np.tanh(0.5 * z[:, 4]), 4),  # refund_ratio in (0, 0.2)
    ])


def make_synthetic(spec: SyntheticSpec, seed: int) -> pd.DataFrame:
    """Generate the data set; identical output for identical (spec, seed)."""
    _validate(spec)
    rng = np.random.default_rng(seed)
    n, k = spec.n_samples, spec.n_classes
    names = class_names(k)
    fb = spec.frac_both
    modality = rng.choice(3, size=n, p=[(1 - fb) / 2, (1 - fb) / 2, fb])  # text, tab, both
    text_inf, tab_inf = modality != 1, modality != 0
    label = rng.integers(0, k, n)

    # Tabular: latent N(0, I); tab-informative rows shifted along the class prototype.
    cat_names = list(CATEGORIES)
    category = np.asarray(cat_names, dtype=object)[_sample_rows(
        rng, np.tile([CATEGORIES[c][0] for c in cat_names], (n, 1)))]
    protos = np.asarray(_PROTOTYPES[k], dtype=float)
    protos /= np.linalg.norm(protos, axis=1, keepdims=True)
    z = rng.standard_normal((n, len(NUMERIC_COLUMNS)))
    inf_idx = [NUMERIC_COLUMNS.index(c) for c in INFORMATIVE_NUMERIC_COLUMNS]
    z[:, inf_idx] += spec.tab_signal * protos[label] * tab_inf[:, None]
    numeric = _to_units(z)
    amount = numeric[:, 0].copy()
    numeric[rng.random(numeric.shape) < spec.missing_rate] = np.nan
    shipping = _class_conditional(rng, *_SHIPPING, label, k, tab_inf)
    payment = _class_conditional(rng, *_PAYMENT, label, k, tab_inf)

    # Text: heavy-tailed length, key message at a random Buyer turn.
    n_msg = np.minimum(2 + np.floor(rng.lognormal(_LENGTH_MU, _LENGTH_SIGMA, n)).astype(int),
                       spec.max_messages)
    key_pos = 2 * np.floor(rng.random(n) * ((n_msg + 1) // 2)).astype(int)
    key_class = np.where(rng.random(n) < spec.text_signal, label, rng.integers(0, k, n))
    # Rows where text is uninformative get a label-independent shadow class; its message
    # only sets the target length for the neutral key message.
    key_class = np.where(text_inf, key_class, rng.integers(0, k, n))
    key_pool = np.array([POOL_NAMES.index(c) for c in names])[key_class]
    dialogue = render_dialogues(rng, n_msg, key_pos, key_pool, text_inf, category, amount)

    noisy = rng.random(n) < spec.label_noise
    label = np.where(noisy, rng.integers(0, k, n), label)

    width = max(5, len(str(n - 1)))
    df = pd.DataFrame({
        ID_COLUMN: [f"s{i:0{width}d}" for i in range(n)], TEXT_COLUMN: dialogue,
        **{col: numeric[:, j].astype(np.float64) for j, col in enumerate(NUMERIC_COLUMNS)},
        "category": category, "shipping_method": shipping, "payment_method": payment,
        LABEL_COLUMN: np.asarray(names, dtype=object)[label],
        MODALITY_COLUMN: np.asarray(MODALITIES, dtype=object)[modality],
    })
    return df.astype({c: str for c in [ID_COLUMN, TEXT_COLUMN, *CATEGORICAL_COLUMNS, LABEL_COLUMN, MODALITY_COLUMN]})
