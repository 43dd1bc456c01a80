"""Content negotiation: the weights a client gives in `Accept` and `Accept-Encoding`."""

from __future__ import annotations


def weights(header: str) -> dict[str, float]:
    """Each media range or coding of `header`, lowercased, with its weight (RFC 9110
    §12.4.2: `q`, 1 when absent; one that does not parse counts as 0, "not acceptable")."""
    found: dict[str, float] = {}
    for item in header.split(","):
        name, *parameters = (part.strip() for part in item.split(";"))
        weight = 1.0
        for parameter in parameters:
            key, _, value = parameter.partition("=")
            if key.strip().lower() == "q":
                try:
                    weight = float(value)
                except ValueError:
                    weight = 0.0
        if name:
            found[name.lower()] = weight
    return found
