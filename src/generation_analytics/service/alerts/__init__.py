"""Alerts: rules over the rollups (`rules`), measured (`measure`), stepped through their states
(`states`) once per tick cluster-wide (`evaluator`), notified by signed webhooks (`webhooks`)."""
