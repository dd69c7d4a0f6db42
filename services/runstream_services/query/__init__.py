"""The gRPC query service (runstream.v1.QueryService): run search with a filter language, run
details, downsampled metric series, history pages and artifact downloads. One job per module:

- service.py: the servicer; maps each request to statements or a series plan, rows to protos.
- request_fields.py: checks of shared request fields (project, metric kind), page tokens.
- filter_lexer.py / filter.py: the filter language: tokens and caret errors / grammar, AST, checks.
- sql.py: the Binder (every value a bound parameter) and the filter and sort order as SQL.
- sql_runs.py: statements on projects, keys, runs, params, metric summaries, artifacts.
- sql_series.py: statements on metric points: series bounds, min/max buckets, raw points, history.
- series.py: GetMetricSeries planning (raw vs buckets, rollups vs raw points, budgets) and
  reassembly; pure, unit-tested without gRPC or a database.
- downsample.py: numpy min/max assembly and LTTB across many series at once.
"""
