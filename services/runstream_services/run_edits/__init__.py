"""Editable runs (issue 16, item 3): what an edit may change (rules.py) and the RunEditService
that makes and lists edits (service.py)."""
