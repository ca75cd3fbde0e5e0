"""The synthetic data set's schema: its columns, label names and product categories."""
from __future__ import annotations

TEXT_COLUMN = "dialogue"
NUMERIC_COLUMNS = ["order_value", "seller_rating", "delivery_days", "n_prior_orders", "refund_ratio"]
INFORMATIVE_NUMERIC_COLUMNS = ["seller_rating", "delivery_days", "refund_ratio"]
CATEGORICAL_COLUMNS = ["category", "shipping_method", "payment_method"]
LABEL_COLUMN = "label"
ID_COLUMN = "id"
MODALITY_COLUMN = "true_modality"
MODALITIES = ("text", "tab", "both")

_BINARY_NAMES = ["resolved", "escalate"]
_MULTI_NAMES = ["resolved", "damaged", "late", "wrong_item"]

CATEGORIES = {  # category -> (marginal probability, item names)
    "electronics": (0.22, "wireless earbuds|phone charger|bluetooth speaker|smart watch|laptop stand|USB hub|desk lamp|power bank"),
    "clothing": (0.20, "wool jumper|denim jacket|pair of trainers|rain coat|linen shirt|leather belt|winter scarf|summer dress"),
    "home": (0.18, "ceramic vase|coffee grinder|set of towels|cast iron pan|wall clock|bedside table|throw blanket|kettle"),
    "books": (0.12, "cookbook|hardback novel|travel guide|box set of comics|language workbook|photo album|poetry collection|atlas"),
    "toys": (0.10, "building block set|puzzle|plush bear|remote control car|board game|wooden train|kite|doll house"),
    "beauty": (0.10, "face serum|hair dryer|perfume|makeup brush set|nail kit|beard trimmer|hand cream set|shampoo bundle"),
    "sports": (0.08, "yoga mat|pair of dumbbells|bike helmet|tennis racket|running vest|water bottle|camping stove|skipping rope"),
}
ITEMS = {cat: items.split("|") for cat, (_, items) in CATEGORIES.items()}


def class_names(n_classes: int) -> list[str]:
    """Label names: ["resolved", "escalate"] for 2 classes, else the first k of
    ["resolved", "damaged", "late", "wrong_item"]."""
    if not 2 <= n_classes <= 4:
        raise ValueError(f"n_classes must be in 2..4, got {n_classes}")
    return list(_BINARY_NAMES) if n_classes == 2 else _MULTI_NAMES[:n_classes]
