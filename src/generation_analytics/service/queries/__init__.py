"""The read path: every AnalyticsService question, one module per question (`service.AnalyticsQueries` answers
them all), plus the pipeline status (`status`)."""
