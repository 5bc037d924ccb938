"""Text frontend: normalisation, G2P per language, symbol ids, text splitting (upstream v2 rules)."""
