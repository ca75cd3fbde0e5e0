"""Deterministic synthetic buyer-seller messaging data set (text + tabular).

Each sample has a ground-truth informative modality (``true_modality``): the label is
carried by one "key" message of the dialogue (``text``), by a shift of a few numeric
features plus class-conditional shipping/payment methods (``tab``), or by both.
Surface features (message count, character length, missing cells, categories) are
independent of the informative modality by construction. ``category`` is independent of
the label too, because the item named in the dialogue is drawn from it.

    schema.py    column names, MODALITIES, class_names, the product categories
    generate.py  SyntheticSpec, make_synthetic: labels, informative modality, the tabular features
    text.py      the message templates and render_dialogues
"""

from mmfusion.data.synthetic.generate import SyntheticSpec, make_synthetic
from mmfusion.data.synthetic.schema import (
    CATEGORICAL_COLUMNS,
    ID_COLUMN,
    INFORMATIVE_NUMERIC_COLUMNS,
    LABEL_COLUMN,
    MODALITIES,
    MODALITY_COLUMN,
    NUMERIC_COLUMNS,
    TEXT_COLUMN,
    class_names,
)

__all__ = [
    "CATEGORICAL_COLUMNS", "ID_COLUMN", "INFORMATIVE_NUMERIC_COLUMNS", "LABEL_COLUMN", "MODALITIES", "MODALITY_COLUMN", "NUMERIC_COLUMNS",
    "TEXT_COLUMN", "SyntheticSpec", "class_names", "make_synthetic",
]
