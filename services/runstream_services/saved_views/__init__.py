"""Saved views of the dashboard per project (issue 16, item 4): SavedViewService, its rules and
its SQL."""
