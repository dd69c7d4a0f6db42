"""Alerts (issue 16, item 5): rules per project (rules.py), stored durably (store.py), evaluated
on the stored data by the writer's process (evaluator.py), delivered by signed webhook
(webhook.py), managed through the AlertService (service.py)."""
